"""What the scheduled jobs share: their names, limits and the workflow statuses they act on."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.api.enums.v1 import WorkflowExecutionStatus

from ncpi_workflow.settings import Settings


log = logging.getLogger("ncpi.jobs")

Sessions = async_sessionmaker[AsyncSession]

DIGEST_JOB = "digest"
RECONCILE_JOB = "reconcile"
RECONCILER = "reconciler"
"""The audit trail's actor for every repair the reconciler makes."""

RECONCILE_MINUTES_ENV = "NCPI_RECONCILE_MINUTES"
RECONCILE_MINUTES_DEFAULT = 5.0
DIGEST_HOUR = 8
DIGEST_GRACE = timedelta(hours=4)
"""A digest whose 08:00 run was held up (a blocked event loop, a slow start) still goes out by noon."""
REVISIT_HORIZON_DAYS = 30
QUERY_TIMEOUT = timedelta(seconds=5)
RPC_TIMEOUT = timedelta(seconds=10)
RELAY_REPORT_FRESH = timedelta(minutes=15)
"""A worker's word on the relay older than this is not believed (the worker may be gone): a failing
relay is recorded again every minute while deliveries are held."""
STUCK_SCAN_AT_ONCE = 20
_CRON_LOOKBACK = timedelta(days=8)
_INTERVAL_EPOCH = datetime(2000, 1, 1, tzinfo=timezone.utc)
"""Interval jobs fire on a grid counted from here, so every replica's schedule has the same due times."""

RUNNING = WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_RUNNING
COMPLETED = WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_COMPLETED
RESTARTABLE = {
    WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_FAILED: "failed",
    WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_CANCELED: "cancelled",
    WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_TERMINATED: "terminated",
    WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_TIMED_OUT: "timed out",
}
"""Closed, but not by finishing its follow-up: the process must go on."""

ORPHAN_KINDS = ("digest", "delivery_failed")
"""Notifications no follow-up workflow delivers (a digest's own delivery workflow, or an alert sent
from inside another delivery): a restarted follow-up never resumes them. The reconciler delivers
them, as it delivers any other notification left pending past the policy age."""


def pending_age(settings: Settings) -> timedelta:
    """NCPI_OUTBOX_PENDING_MINUTES: a notification pending longer than this, with no delivery in
    progress, is delivered by the reconciler; `ncpi health` counts those pending past it."""
    return timedelta(minutes=settings.outbox_pending_minutes)


