"""The worker service's scheduled jobs: the inspectors' daily digest and the reconciler.

Every worker replica runs the same APScheduler schedule (`build_scheduler`). A job runs only on the
replica that wins `claim`: an INSERT into `job_runs` keyed on (job, due time), so with any number
of replicas each job still runs once per due time.

- `send_digest`: each working day at 08:00 Europe/London, one email to the inspectors' mailbox:
  revisits due within 30 days, overdue items, decisions awaited. Read from the records (the status
  projection and the deadlines), never from workflow queries.
- `reconcile`: every few minutes (NCPI_RECONCILE_MINUTES, default 5), every open recommendation and
  inspection in the records must have a running workflow: one terminated, failed, timed out or
  missing behind our back is restarted under its business ID with its state rebuilt from the
  records; a status projection row that disagrees with its running workflow is repaired; every
  notification left pending longer than NCPI_OUTBOX_PENDING_MINUTES (15) with no delivery in
  progress is delivered again; a running workflow whose workflow task keeps failing is recorded as
  stuck (`stuck_workflows`, for `ncpi status`) and logged at ERROR with its error, once.
  Every repair is logged and written to the audit trail (actor "reconciler").
- `deployment_problems`: what `ncpi health` reports besides reachability: the SMTP relay's state
  as each worker last found it, notifications pending past the policy age, stuck workflows.
"""

from __future__ import annotations

from ncpi_workflow.jobs.claims import claim, default_owner, due_time, run_once
from ncpi_workflow.jobs.common import DIGEST_JOB, RECONCILE_JOB, RUNNING, pending_age
from ncpi_workflow.jobs.digest import delivery_workflow_id, digest_sections, send_digest
from ncpi_workflow.jobs.health import (
    deployment_problems,
    describe_workflow,
    stuck_workflows,
    task_attempts,
    task_failure,
    workflow_status,
)
from ncpi_workflow.jobs.reconciler import reconcile
from ncpi_workflow.jobs.schedule import build_scheduler, reconcile_minutes
from ncpi_workflow.models import JobRun

__all__ = [
    "DIGEST_JOB",
    "RECONCILE_JOB",
    "JobRun",
    "build_scheduler",
    "claim",
    "default_owner",
    "delivery_workflow_id",
    "deployment_problems",
    "describe_workflow",
    "digest_sections",
    "due_time",
    "reconcile",
    "reconcile_minutes",
    "run_once",
    "send_digest",
    "stuck_workflows",
    "task_attempts",
    "task_failure",
    "workflow_status",
    "RUNNING",
    "pending_age",
]
