"""The schedule every worker replica runs (APScheduler): the digest and the reconciler."""

from __future__ import annotations

import os
from datetime import datetime, timezone

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from temporalio.client import Client

from ncpi_workflow.errors import UserError
from ncpi_workflow.formatting import LONDON
from ncpi_workflow.settings import Settings
from ncpi_workflow.jobs.claims import default_owner, due_time, run_once
from ncpi_workflow.jobs.common import DIGEST_GRACE, DIGEST_HOUR, DIGEST_JOB, RECONCILE_JOB, RECONCILE_MINUTES_DEFAULT, RECONCILE_MINUTES_ENV, Sessions, _INTERVAL_EPOCH, log
from ncpi_workflow.jobs import digest
from ncpi_workflow.jobs.reconciler import reconcile



def reconcile_minutes() -> float:
    """NCPI_RECONCILE_MINUTES (default 5): how often the reconciler runs."""
    raw = os.environ.get(RECONCILE_MINUTES_ENV, "").strip()
    if not raw:
        return RECONCILE_MINUTES_DEFAULT
    try:
        minutes = float(raw)
    except ValueError:
        raise UserError(f"settings: {RECONCILE_MINUTES_ENV}: expected a number of minutes, got {raw!r}") from None
    if not minutes > 0:
        raise UserError(f"settings: {RECONCILE_MINUTES_ENV}: Input should be greater than 0")
    return minutes


def build_scheduler(sessions: Sessions, client: Client, settings: Settings, *, owner: str | None = None) -> AsyncIOScheduler:
    """The worker's schedule (not started): `scheduler.start()` inside the running event loop,
    `scheduler.shutdown()` on exit.

    - "digest": Monday to Friday at 08:00 Europe/London (bank holidays skipped by send_digest);
    - "reconcile": every NCPI_RECONCILE_MINUTES minutes (default 5), on a grid shared by all replicas.

    Each firing computes its due time from its trigger and runs only if this replica claims it."""
    owner = owner or default_owner()
    minutes = reconcile_minutes()
    scheduler = AsyncIOScheduler(timezone=LONDON)
    digest_trigger = CronTrigger(day_of_week="mon-fri", hour=DIGEST_HOUR, minute=0, timezone=LONDON)
    reconcile_trigger = IntervalTrigger(minutes=minutes, start_date=_INTERVAL_EPOCH, timezone=timezone.utc)

    async def digest_job() -> None:
        due = due_time(digest_trigger, datetime.now(timezone.utc))

        async def body() -> str:
            notification_id = await digest.send_digest(sessions, client, settings, due)
            return "not a working day" if notification_id is None else f"notification {notification_id}"

        try:
            await run_once(sessions, DIGEST_JOB, due, owner, body)
        except Exception:
            log.exception("the digest due %s failed", due.isoformat())

    async def reconcile_job() -> None:
        due = due_time(reconcile_trigger, datetime.now(timezone.utc))

        async def body() -> str:
            repairs = await reconcile(sessions, client, settings)
            return f"{len(repairs)} repairs" + (": " + " | ".join(repairs) if repairs else "")

        try:
            await run_once(sessions, RECONCILE_JOB, due, owner, body)
        except Exception:
            log.exception("the reconciliation due %s failed", due.isoformat())

    common = {"coalesce": True, "max_instances": 1, "replace_existing": True}
    scheduler.add_job(digest_job, digest_trigger, id=DIGEST_JOB, name="inspectors' daily digest",
                      misfire_grace_time=int(DIGEST_GRACE.total_seconds()), **common)
    scheduler.add_job(reconcile_job, reconcile_trigger, id=RECONCILE_JOB, name="reconcile workflows and records",
                      misfire_grace_time=max(60, int(minutes * 60)), **common)
    return scheduler
