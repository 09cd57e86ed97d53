"""The application layer: one module per use case, shared by every front end (CLI, web, later the
force portal and inbound email).

Each use case is an async function taking what it needs (settings, a session factory, a Temporal
client) and returning plain results, or raising `ncpi_workflow.errors.UserError` with a one-line
reason. Front ends parse, call one function here, and present the result; they hold no business
steps of their own. Nothing here imports the top-level `worker` or `workflows` packages.

- `temporal_calls`     connecting to Temporal, Queries and Updates, and the mapping of their errors
- `publishing`         validating and publishing a report (a file, or uploaded bytes)
- `inspector_actions`  revisit, decide, re-open, withdraw, revise a deadline, record a delivery, register status
- `force_responses`    the force's progress and evidence
- `outbox`             listing notifications and re-sending a failed one
- `read_models`        status listing, the live view of one follow-up, the all-forces dashboard, records pages
"""
