"""Running the product: the worker service (and, beside it, the scheduled jobs and `ncpi dev`)."""
