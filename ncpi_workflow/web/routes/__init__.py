"""One module per user task: what a route does is parse the form, call ncpi_workflow.app, and show the result."""
