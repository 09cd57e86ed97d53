"""Claiming a job's due time: one INSERT into `job_runs` per (job, due time), so that with any
number of worker replicas each scheduled job runs once."""

from __future__ import annotations

import os
import socket
from datetime import datetime, timedelta, timezone
from typing import Awaitable, Callable

from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import update

from ncpi_workflow.models import (
    JobRun,
    utcnow,
)
from ncpi_workflow.store import insert_if_absent
from ncpi_workflow.jobs.common import Sessions, _CRON_LOOKBACK, log



def default_owner() -> str:
    """hostname:pid, the `claimed_by` of this replica's job runs."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _utc_minute(instant: datetime) -> datetime:
    if instant.tzinfo is None:
        raise ValueError(f"a due time must carry its time zone, got {instant!r}")
    return instant.astimezone(timezone.utc).replace(second=0, microsecond=0)


async def claim(sessions: Sessions, job: str, due_at: datetime, owner: str) -> bool:
    """Claim one run of `job` for `due_at` (truncated to the minute, compared in UTC).

    True for exactly one caller per (job, due time), whichever replica's INSERT lands first; every
    other caller, concurrent or later, gets False."""
    async with sessions.begin() as session:
        return await insert_if_absent(
            session, JobRun, ["job", "due_at"], job=job, due_at=_utc_minute(due_at), claimed_by=owner, started_at=utcnow()
        )


async def _finish(sessions: Sessions, job: str, due_at: datetime, outcome: str) -> None:
    async with sessions.begin() as session:
        await session.execute(
            update(JobRun)
            .where(JobRun.job == job, JobRun.due_at == _utc_minute(due_at))
            .values(finished_at=utcnow(), outcome=outcome[:2000])
        )


async def run_once(
    sessions: Sessions, job: str, due_at: datetime, owner: str, body: Callable[[], Awaitable[str | None]]
) -> bool:
    """Run `body` if this replica wins the claim on (job, due_at); record when it finished and how.

    Returns whether this replica ran it. The body's exception is recorded, then raised."""
    if not await claim(sessions, job, due_at, owner):
        log.debug("job %s due %s: claimed by another replica", job, _utc_minute(due_at).isoformat())
        return False
    try:
        outcome = await body()
    except Exception as exc:
        await _finish(sessions, job, due_at, f"failed: {type(exc).__name__}: {exc}")
        raise
    await _finish(sessions, job, due_at, outcome or "done")
    return True


def due_time(trigger: CronTrigger | IntervalTrigger, now: datetime) -> datetime:
    """The trigger's latest scheduled run time at or before `now`, truncated to the minute (UTC).

    Every replica computes the same value for the same scheduled run, however late its event loop
    gets round to it, which is what `claim` keys on."""
    if isinstance(trigger, IntervalTrigger):
        start = trigger.start_date.timestamp()
        periods = (now.timestamp() - start) // trigger.interval_length
        return _utc_minute(datetime.fromtimestamp(start + periods * trigger.interval_length, tz=timezone.utc))
    latest = None
    fire = trigger.get_next_fire_time(None, now - _CRON_LOOKBACK)
    while fire is not None and fire <= now:
        latest = fire
        fire = trigger.get_next_fire_time(fire, fire + timedelta(microseconds=1))
    return _utc_minute(latest or now)
