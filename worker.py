"""The worker service's entry point: `python worker.py` and `ncpi worker` are the same thing.
The service itself is ncpi_workflow/service/worker.py."""

from ncpi_workflow.service.worker import (  # noqa: F401  (the names tests and operators use)
    WORKFLOW_RUNNER,
    WORKFLOWS,
    main,
    running_worker,
    scheduled_jobs,
    serve,
    worker_liveness,
)

if __name__ == "__main__":
    main()
