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

import asyncio
import logging
import os
import socket
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Any, Awaitable, Callable

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import WorkflowExecutionStatus
from temporalio.api.enums.v1 import WorkflowTaskFailedCause
from temporalio.api.workflowservice.v1 import (
    DescribeWorkflowExecutionRequest,
    DescribeWorkflowExecutionResponse,
    GetWorkflowExecutionHistoryReverseRequest,
)
from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from ncpi_workflow.clocks import (
    DEADLINE_LABELS,
    DeadlineKind,
    Party,
    TimeScale,
    Timeframe,
    WorkingCalendar,
    calendar_for_report,
    england_and_wales_calendar,
    recommendation_deadline,
    report_deadlines,
)
from ncpi_workflow.errors import UserError
from ncpi_workflow.formatting import LONDON, as_utc_if_naive, local_date, long_date
from ncpi_workflow.lifecycle import (
    EvidenceItem,
    ForceClaim,
    HistoryEntry,
    InspectionInput,
    InspectionPhase,
    InspectionState,
    InspectionView,
    Outcome,
    Phase,
    RecommendationInput,
    RecommendationState,
    RecommendationView,
    Revision,
    TrackedDeadline,
    inspection_workflow_id,
    recommendation_workflow_id,
)
from ncpi_workflow.models import (
    Deadline,
    DeadlineRevision,
    Decision,
    Evidence,
    EvidenceRequest,
    Force,
    Inspection,
    JobRun,
    Notification,
    Recommendation,
    RelayStatus,
    Revisit,
    StuckWorkflow,
    utcnow,
)
from ncpi_workflow.policy import Policy, load_policy
from ncpi_workflow.publishing import inspection_input_from_records
from ncpi_workflow.settings import Settings
from ncpi_workflow.store import append_audit, insert_if_absent, resolve_recipients

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
    "task_failure",
]

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


# ---------------------------------------------------------------- claiming a due time


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


# ---------------------------------------------------------------- the daily digest


def delivery_workflow_id(notification_id: int) -> str:
    """The NotificationDelivery workflow that delivers a notification no follow-up workflow owns."""
    return f"ncpi/notification/{notification_id}/deliver"


def _item(force_code: str, inspection_id: str, what: str, when: date | datetime | None) -> dict[str, Any]:
    if isinstance(when, datetime):
        when = as_utc_if_naive(when)
    return {"force_code": force_code, "inspection_id": inspection_id, "what": what,
            "when": when.isoformat() if when is not None else None}


def _latest_by_key(rows) -> dict[str, Deadline]:
    latest: dict[str, Deadline] = {}
    for row in rows:
        if row.key not in latest or row.cycle > latest[row.key].cycle:
            latest[row.key] = row
    return latest


def _cycle_note(cycle: int) -> str:
    return f" (follow-up cycle {cycle})" if cycle > 1 else ""


async def digest_sections(session: AsyncSession, today: date) -> dict[str, list[dict[str, Any]]]:
    """The digest's three lists on `today` (a London date), from the projection and deadline tables.

    - revisits_due: inspections following up whose revisit-by date (latest cycle) is within 30 days;
    - overdue: open clocks past their date and not met: report-level deadlines of inspections not
      closed, a recommendation's own deadline while the force still owes its update (the workflow's
      reminders stop once the force claims it implemented, or once the revisit opens), evidence
      requested and not sent, and a revisit-by date passed with the revisit not opened;
    - decisions_awaited: recommendations under review or with evidence requested.
    """
    inspections = {
        i.id: i
        for i in (await session.scalars(select(Inspection).where(Inspection.phase != InspectionPhase.CLOSED.value))).all()
    }
    recommendations = (
        await session.scalars(select(Recommendation).where(Recommendation.phase != Phase.CLOSED.value))
    ).all()
    involved = set(inspections) | {r.inspection_id for r in recommendations}
    deadlines = (await session.scalars(select(Deadline).where(Deadline.inspection_id.in_(involved)))).all() if involved else []
    force_of = dict((await session.execute(
        select(Inspection.id, Inspection.force_code).where(Inspection.id.in_(involved))
    )).all()) if involved else {}
    revisits: dict[str, Revisit] = {}
    if involved:
        for revisit in (await session.scalars(select(Revisit).where(Revisit.inspection_id.in_(involved)))).all():
            if revisit.inspection_id not in revisits or revisit.cycle > revisits[revisit.inspection_id].cycle:
                revisits[revisit.inspection_id] = revisit

    report_level: dict[str, list[Deadline]] = {}
    own: dict[str, list[Deadline]] = {}
    for d in deadlines:
        if d.recommendation_id is None:
            report_level.setdefault(d.inspection_id, []).append(d)
        else:
            own.setdefault(d.recommendation_id, []).append(d)

    horizon = today + timedelta(days=REVISIT_HORIZON_DAYS)
    revisits_due, overdue, awaited = [], [], []
    for inspection in inspections.values():
        latest = _latest_by_key(report_level.get(inspection.id, []))
        for key, d in latest.items():
            if d.met_at is not None:
                continue
            if d.kind == DeadlineKind.REVISIT_BY.value:
                if inspection.phase != InspectionPhase.FOLLOWING_UP.value:
                    continue  # the revisit is open: the limit was kept
                label = DEADLINE_LABELS[DeadlineKind.REVISIT_BY] + _cycle_note(d.cycle)
                if today <= d.current_due <= horizon:
                    revisits_due.append(_item(inspection.force_code, inspection.id, label, d.current_due))
                elif d.current_due < today:
                    overdue.append(_item(inspection.force_code, inspection.id,
                                         f"Revisit not yet opened{_cycle_note(d.cycle)}: it was due no later than", d.current_due))
            elif d.current_due < today:
                try:
                    label = DEADLINE_LABELS[DeadlineKind(d.kind)]
                except ValueError:
                    label = key
                overdue.append(_item(inspection.force_code, inspection.id, f"{label} was due", d.current_due))

    for rec in recommendations:
        force_code = force_of.get(rec.inspection_id, rec.inspection_id.split("-", 1)[0])
        latest = _latest_by_key(own.get(rec.id, []))
        mine = latest.get(f"recommendation:{rec.ref}")
        evidence = latest.get(f"evidence:{rec.ref}")
        owes_update = rec.phase in (Phase.PUBLISHED.value, Phase.FORCE_NOTIFIED.value, Phase.IN_PROGRESS.value) \
            and rec.force_claim != ForceClaim.IMPLEMENTED.value
        if owes_update and mine is not None and mine.met_at is None and mine.current_due < today:
            overdue.append(_item(force_code, rec.inspection_id,
                                 f"Recommendation {rec.ref}{_cycle_note(mine.cycle)}: the force's update was due", mine.current_due))
        if rec.phase == Phase.EVIDENCE_REQUESTED.value:
            evidence_due = evidence.current_due if evidence is not None and evidence.cycle == rec.cycle else None
            if evidence_due is not None and evidence_due < today and evidence.met_at is None:
                overdue.append(_item(force_code, rec.inspection_id, f"Evidence for recommendation {rec.ref} was due", evidence_due))
                what = f"Recommendation {rec.ref}: no evidence by its date; the inspectorate may decide without it"
            elif evidence_due is not None:
                what = f"Recommendation {rec.ref}: evidence requested, due"
            else:
                what = f"Recommendation {rec.ref}: evidence requested"
            awaited.append(_item(force_code, rec.inspection_id, what, evidence_due))
        elif rec.phase == Phase.UNDER_REVIEW.value:
            revisit = revisits.get(rec.inspection_id)
            if revisit is not None:
                awaited.append(_item(force_code, rec.inspection_id, f"Recommendation {rec.ref}: evidence in, under review since",
                                     revisit.opened_at))
            else:
                awaited.append(_item(force_code, rec.inspection_id, f"Recommendation {rec.ref}: evidence in, under review", None))

    def by_when(item):
        return (item["when"] or "9999", item["force_code"], item["inspection_id"], item["what"])

    return {
        "revisits_due": sorted(revisits_due, key=by_when),
        "overdue": sorted(overdue, key=by_when),
        "decisions_awaited": sorted(awaited, key=lambda i: (i["force_code"], i["inspection_id"], i["what"])),
    }


def _working_calendar(settings: Settings, around: date) -> WorkingCalendar:
    policy = load_policy(settings.policy)
    return england_and_wales_calendar(policy.calendar, range(around.year - 1, around.year + 2))


async def _start_delivery(client: Client, settings: Settings, notification_id: int, reuse: WorkflowIDReusePolicy) -> bool:
    try:
        await client.start_workflow(
            "NotificationDelivery", notification_id, id=delivery_workflow_id(notification_id),
            task_queue=settings.task_queue, id_reuse_policy=reuse, id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
        )
    except WorkflowAlreadyStartedError:
        return False
    return True


async def send_digest(sessions: Sessions, client: Client, settings: Settings, now: datetime) -> int | None:
    """Record the inspectors' digest for the London day of `now` and start its delivery.

    Idempotent: the notification's key is digest/<date>, and its delivery workflow ID refuses a
    second start, so calling again the same day returns the same notification ID and sends nothing
    more. Returns None on a weekend or bank holiday (England and Wales), when there is no digest."""
    if now.tzinfo is None:
        raise ValueError("send_digest needs an aware datetime")
    today = local_date(now)
    if not _working_calendar(settings, today).is_working_day(today):
        log.info("no digest on %s: not a working day", today.isoformat())
        return None
    key = f"digest/{today.isoformat()}"
    inspectorate = {"inspectors": settings.inspectors_email, "lead_hm_inspector": settings.lead_hm_inspector_email}
    async with sessions.begin() as session:
        notification_id = await session.scalar(select(Notification.id).where(Notification.idempotency_key == key))
        if notification_id is None:
            sections = await digest_sections(session, today)
            recipients = await resolve_recipients(session, "ALL", ["inspectors"], inspectorate)
            inserted = await insert_if_absent(
                session, Notification, ["idempotency_key"],
                idempotency_key=key, kind="digest", inspection_id=None, recommendation_id=None,
                recipients=recipients, subject=f"Inspection follow-up: daily digest for {long_date(today)}",
                context={"date": today.isoformat(), **sections}, status="pending", attempts=0,
                scheduled_for=now.astimezone(timezone.utc),
            )
            notification_id = await session.scalar(select(Notification.id).where(Notification.idempotency_key == key))
            if inserted:
                await append_audit(
                    session, actor="system", action="notification.digest", entity_type="notification",
                    entity_id=str(notification_id),
                    detail={"key": key, "to": recipients["to"], **{name: len(items) for name, items in sections.items()}},
                    idempotency_key=f"{key}/audit",
                )
    if await _start_delivery(client, settings, notification_id, WorkflowIDReusePolicy.REJECT_DUPLICATE):
        log.info("digest for %s: notification %s, delivery started", today.isoformat(), notification_id)
    return notification_id


# ---------------------------------------------------------------- reconciliation: workflow status


async def describe_workflow(client: Client, workflow_id: str) -> DescribeWorkflowExecutionResponse | None:
    """The raw description of the workflow's latest run; None when the server has no such workflow.

    Raw DescribeWorkflowExecution: the SDK's describe() decodes search attributes, and the
    time-skipping test server's Datetime values do not decode."""
    try:
        return await client.workflow_service.describe_workflow_execution(
            DescribeWorkflowExecutionRequest(namespace=client.namespace, execution=WorkflowExecution(workflow_id=workflow_id)),
            retry=True, timeout=RPC_TIMEOUT,
        )
    except RPCError as exc:
        if exc.status is RPCStatusCode.NOT_FOUND:
            return None
        raise


async def workflow_status(client: Client, workflow_id: str) -> WorkflowExecutionStatus | None:
    """The status of the workflow's latest run; None when the server has no such workflow."""
    response = await describe_workflow(client, workflow_id)
    return response.workflow_execution_info.status if response is not None else None


def task_attempts(response: DescribeWorkflowExecutionResponse | None) -> int:
    """How many times the running workflow's pending workflow task has been tried (0: none pending)."""
    if response is None or response.workflow_execution_info.status != RUNNING or not response.HasField("pending_workflow_task"):
        return 0
    return response.pending_workflow_task.attempt


def _one_line(text: str, limit: int = 500) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


async def task_failure(client: Client, workflow_id: str, run_id: str = "") -> str:
    """Why the workflow's task keeps failing: its history's last WorkflowTaskFailed (cause and
    message) or WorkflowTaskTimedOut, newest first, in one line."""
    execution = WorkflowExecution(workflow_id=workflow_id, run_id=run_id)
    token = b""
    for _ in range(20):  # newest first: the failure is near the end
        try:
            page = await client.workflow_service.get_workflow_execution_history_reverse(
                GetWorkflowExecutionHistoryReverseRequest(namespace=client.namespace, execution=execution,
                                                          maximum_page_size=100, next_page_token=token),
                retry=True, timeout=RPC_TIMEOUT,
            )
        except RPCError as exc:
            return f"workflow task failing (its history could not be read: {_one_line(exc.message, 200)})"
        for event in page.history.events:
            if event.HasField("workflow_task_failed_event_attributes"):
                failed = event.workflow_task_failed_event_attributes
                cause = WorkflowTaskFailedCause.Name(failed.cause).removeprefix("WORKFLOW_TASK_FAILED_CAUSE_")
                return _one_line(f"{cause}: {failed.failure.message or 'no message'}")
            if event.HasField("workflow_task_timed_out_event_attributes"):
                return "workflow task timed out (no worker completed it in time)"
        token = page.next_page_token
        if not token:
            break
    return "workflow task failing (no failure in its history yet)"


@dataclass
class Stuck:
    workflow_id: str
    workflow_type: str
    attempts: int
    error: str
    since: datetime | None = None


async def _stuck_from(client: Client, response: DescribeWorkflowExecutionResponse, min_attempts: int) -> Stuck | None:
    attempts = task_attempts(response)
    if attempts < min_attempts:
        return None
    info = response.workflow_execution_info
    error = await task_failure(client, info.execution.workflow_id, info.execution.run_id)
    return Stuck(info.execution.workflow_id, info.type.name, attempts, error)


async def stuck_workflows(client: Client, settings: Settings) -> list[Stuck]:
    """Every running workflow on the task queue whose workflow task has been tried at least
    NCPI_STUCK_TASK_ATTEMPTS times, from Temporal now (visibility, then one describe each)."""
    query = f'TaskQueue="{settings.task_queue}" AND ExecutionStatus="Running"'
    ids = [w.id async for w in client.list_workflows(query, rpc_timeout=RPC_TIMEOUT)]
    gate = asyncio.Semaphore(STUCK_SCAN_AT_ONCE)

    async def check(workflow_id: str) -> Stuck | None:
        async with gate:
            response = await describe_workflow(client, workflow_id)
            return await _stuck_from(client, response, settings.stuck_task_attempts) if response is not None else None

    found = await asyncio.gather(*(check(i) for i in ids))
    return sorted((s for s in found if s is not None), key=lambda s: s.workflow_id)


@dataclass
class Problems:
    """What `ncpi health` reports besides reachability."""

    relay: list[RelayStatus]
    """Worker processes that found the relay failing, recently."""
    relay_ok: list[RelayStatus]
    pending_past_age: int
    oldest_pending: datetime | None
    never_attempted: int
    held_by_relay: int
    age: timedelta
    stuck: list[Stuck]
    stuck_source: str
    """"temporal" (scanned now) or "reconciler" (its last pass)."""

    @property
    def count(self) -> int:
        return bool(self.relay) + bool(self.pending_past_age) + len(self.stuck)


async def deployment_problems(sessions: Sessions, client: Client | None, settings: Settings) -> Problems:
    """The relay's state from `relay_status`, the outbox's overdue pending rows, and the stuck
    workflows: scanned in Temporal when `client` is given, else the reconciler's last findings."""
    now = utcnow()
    age = pending_age(settings)
    async with sessions() as session:
        rows = (await session.scalars(select(RelayStatus).order_by(RelayStatus.reporter))).all()
        fresh = [r for r in rows if as_utc_if_naive(r.checked_at) >= now - RELAY_REPORT_FRESH]
        overdue = (Notification.status == "pending", Notification.created_at < now - age)
        count, oldest = (await session.execute(
            select(func.count(), func.min(Notification.created_at)).where(*overdue)
        )).one()
        never = await session.scalar(select(func.count()).where(*overdue, Notification.attempts == 0))
        held = await session.scalar(select(func.count()).where(*overdue, Notification.last_error.like("held: %")))
        recorded = (await session.scalars(select(StuckWorkflow).order_by(StuckWorkflow.workflow_id))).all()
    if client is not None:
        stuck, source = await stuck_workflows(client, settings), "temporal"
        since = {r.workflow_id: r.since for r in recorded}
        for s in stuck:
            s.since = since.get(s.workflow_id)
    else:
        stuck = [Stuck(r.workflow_id, r.workflow_type or "", r.attempts, r.error, r.since) for r in recorded]
        source = "reconciler"
    return Problems(
        relay=[r for r in fresh if r.state == "failing"], relay_ok=[r for r in fresh if r.state == "ok"],
        pending_past_age=count or 0, oldest_pending=as_utc_if_naive(oldest) if oldest else None,
        never_attempted=never or 0, held_by_relay=held or 0, age=age, stuck=stuck, stuck_source=source,
    )


async def _first_input(client: Client, workflow_id: str, input_type: type) -> Any | None:
    """The input of the workflow's latest run (its first history event), or None."""
    try:
        async for event in client.get_workflow_handle(workflow_id).fetch_history_events(page_size=1, rpc_timeout=RPC_TIMEOUT):
            if not event.HasField("workflow_execution_started_event_attributes"):
                return None
            payloads = event.workflow_execution_started_event_attributes.input.payloads
            [value] = await client.data_converter.decode(payloads, [input_type])
            return value
    except Exception as exc:  # RPCError, or a payload an older version wrote
        log.debug("no input for %s: %s", workflow_id, exc)
    return None


@dataclass
class _Clocks:
    policy: Policy
    calendar: WorkingCalendar
    time_scale: TimeScale
    source: str


async def _clocks(
    client: Client, settings: Settings, inspection: Inspection, recommendations: list[Recommendation], prefer: str | None
) -> _Clocks | None:
    """The policy, calendar and time scale the report's workflows run on: from the inputs of the
    workflows themselves when the server still has one, since a restart must keep the clocks its
    follow-up started with; from the settings only at real time. None when they cannot be known."""
    candidates = [(inspection_workflow_id(inspection.id), InspectionInput)]
    candidates += [(recommendation_workflow_id(r.id), RecommendationInput) for r in recommendations]
    candidates.sort(key=lambda c: c[0] != prefer)
    for workflow_id, input_type in candidates:
        found = await _first_input(client, workflow_id, input_type)
        if found is not None:
            return _Clocks(found.policy, found.calendar, found.time_scale, workflow_id)
    if settings.time_scale != 1:
        return None  # a compressed clock's origin is known only to the workflows
    policy = load_policy(settings.policy)
    return _Clocks(policy, calendar_for_report(policy, inspection.published_on), TimeScale(), "settings")


# ---------------------------------------------------------------- reconciliation: state from the records


def _utc(instant: datetime | None) -> datetime | None:
    return as_utc_if_naive(instant) if instant is not None else None


def _published_at(inspection: Inspection, calendar: WorkingCalendar) -> datetime:
    return calendar.next_send_time(calendar.at(inspection.published_on, time(0, 0)))


async def _handled(session: AsyncSession, workflow_id: str, **where) -> list[str]:
    """Message keys the workflow already sent: its outbox keys without the workflow ID prefix."""
    prefix = f"{workflow_id}/"
    clauses = [getattr(Notification, k) == v if v is not None else getattr(Notification, k).is_(None) for k, v in where.items()]
    keys = (await session.scalars(select(Notification.idempotency_key).where(*clauses))).all()
    return [k[len(prefix):] for k in keys if k.startswith(prefix)]


async def _undelivered(session: AsyncSession, **where) -> list[int]:
    clauses = [getattr(Notification, k) == v if v is not None else getattr(Notification, k).is_(None) for k, v in where.items()]
    return list((await session.scalars(
        select(Notification.id).where(*clauses, Notification.status == "pending", Notification.kind.not_in(ORPHAN_KINDS))
        .order_by(Notification.id)
    )).all())


async def _revisions(session: AsyncSession, deadline_id: int) -> list[Revision]:
    rows = (await session.scalars(
        select(DeadlineRevision).where(DeadlineRevision.deadline_id == deadline_id).order_by(DeadlineRevision.id)
    )).all()
    return [Revision(r.previous_due, r.new_due, r.reason, r.changed_by, _utc(r.changed_at)) for r in rows]


def _history(clocks: _Clocks, why: str) -> list[HistoryEntry]:
    return [HistoryEntry(at=clocks.time_scale.to_calendar(datetime.now(timezone.utc)), event="restarted by the reconciler",
                         by=RECONCILER, detail=why)]


def _cycle_start(decisions: list[Decision], cycle: int, fallback: datetime) -> datetime:
    """When a cycle after the first began: the decision (or re-opening) that closed the one before."""
    times = [_utc(t) for d in decisions if d.cycle == cycle - 1 for t in (d.decided_at, d.reopened_at) if t is not None]
    return max(times) if times else fallback


async def recommendation_state(
    session: AsyncSession, rec: Recommendation, inspection: Inspection, clocks: _Clocks, why: str
) -> RecommendationState:
    """A recommendation workflow's state rebuilt from the records: the projection (phase, cycle,
    claim, outcome), its deadline and evidence clocks with their revisions, the evidence received,
    the messages already sent (the outbox) and those still to deliver."""
    workflow_id = recommendation_workflow_id(rec.id)
    calendar = clocks.calendar
    published_at = _published_at(inspection, calendar)
    decisions = list((await session.scalars(select(Decision).where(Decision.recommendation_id == rec.id))).all())
    rows = (await session.scalars(select(Deadline).where(Deadline.recommendation_id == rec.id))).all()
    handled = await _handled(session, workflow_id, recommendation_id=rec.id)

    def current(key: str) -> Deadline | None:
        mine = sorted((d for d in rows if d.key == key), key=lambda d: d.cycle)
        return next((d for d in mine if d.cycle == rec.cycle), mine[-1] if mine else None)

    row = current(f"recommendation:{rec.ref}")
    if row is not None:
        deadline = TrackedDeadline(
            key="recommendation", kind=DeadlineKind.RECOMMENDATION, party=Party.FORCE, original_due=row.original_due,
            due=row.current_due, opened_at=published_at if row.cycle == 1 else _cycle_start(decisions, row.cycle, published_at),
            cycle=row.cycle, met_at=_utc(row.met_at), revisions=await _revisions(session, row.id), handled=list(handled),
        )
    else:
        base = recommendation_deadline(rec.ref, Timeframe(rec.timeframe), inspection.published_on, clocks.policy, calendar)
        deadline = TrackedDeadline(
            key="recommendation", kind=DeadlineKind.RECOMMENDATION, party=Party.FORCE, original_due=base.due, due=base.due,
            opened_at=published_at, cycle=1, handled=list(handled),
        )

    requests = {r.id: r for r in (await session.scalars(select(EvidenceRequest).where(EvidenceRequest.recommendation_id == rec.id))).all()}
    evidence_rows = (await session.scalars(select(Evidence).where(Evidence.recommendation_id == rec.id).order_by(Evidence.id))).all()
    evidence = []
    for e in evidence_rows:
        request = requests.get(e.evidence_request_id)
        if request is not None:
            cycle = request.cycle
        else:  # sent before that cycle's request: after the requests of earlier cycles
            earlier = [r.cycle for r in requests.values() if _utc(r.requested_at) <= _utc(e.submitted_at)]
            cycle = min(rec.cycle, max(earlier, default=0) + 1)
        evidence.append(EvidenceItem(e.id, e.filename, e.sha256, e.size_bytes, e.submitted_by, _utc(e.submitted_at), cycle))

    evidence_deadline = None
    ev_row = current(f"evidence:{rec.ref}")
    if ev_row is not None and ev_row.cycle == rec.cycle and rec.phase in (
        Phase.EVIDENCE_REQUESTED.value, Phase.EVIDENCE_SUBMITTED.value, Phase.UNDER_REVIEW.value
    ):
        revisit = await session.scalar(
            select(Revisit).where(Revisit.inspection_id == inspection.id).order_by(Revisit.cycle.desc()).limit(1)
        )
        request = next((r for r in requests.values() if r.cycle == rec.cycle), None)
        opened = _utc(revisit.opened_at) if revisit is not None else _utc(request.requested_at) if request else published_at
        sent = [e.at for e in evidence if e.cycle == rec.cycle]
        evidence_deadline = TrackedDeadline(
            key="evidence", kind=DeadlineKind.EVIDENCE, party=Party.FORCE, original_due=ev_row.original_due,
            due=ev_row.current_due, opened_at=opened, cycle=rec.cycle, met_at=min(sent) if sent else None,
            revisions=await _revisions(session, ev_row.id), handled=list(handled),
        )

    return RecommendationState(
        phase=Phase(rec.phase),
        cycle=rec.cycle,
        deadline=deadline,
        force_claim=ForceClaim(rec.force_claim) if rec.force_claim else None,
        outcome=Outcome(rec.outcome) if rec.outcome else None,
        review_open=rec.phase in (Phase.EVIDENCE_REQUESTED.value, Phase.UNDER_REVIEW.value),
        evidence_deadline=evidence_deadline,
        evidence=evidence,
        history=_history(clocks, why),
        projection_version=rec.projection_version,
        undelivered=await _undelivered(session, recommendation_id=rec.id),
    )


async def inspection_state(
    session: AsyncSession, inspection: Inspection, recommendations: list[Recommendation], clocks: _Clocks, why: str
) -> InspectionState:
    """An inspection workflow's state rebuilt from the records: phase and cycle (projection), its
    report-level clocks, the recommendations still open, the revisit in progress and its decisions,
    the messages already sent and those still to deliver."""
    workflow_id = inspection_workflow_id(inspection.id)
    calendar = clocks.calendar
    published_at = _published_at(inspection, calendar)
    planned = report_deadlines(
        inspection.published_on, [(r.ref, Timeframe(r.timeframe)) for r in recommendations], clocks.policy, calendar
    )
    planned = [d for d in planned if d.kind is not DeadlineKind.RECOMMENDATION]
    rows = (await session.scalars(
        select(Deadline).where(Deadline.inspection_id == inspection.id, Deadline.recommendation_id.is_(None))
    )).all()
    latest = _latest_by_key(rows)
    decisions = list((await session.scalars(
        select(Decision).where(Decision.recommendation_id.in_([r.id for r in recommendations]))
    )).all()) if recommendations else []
    handled = await _handled(session, workflow_id, inspection_id=inspection.id, recommendation_id=None)
    default_party = {DeadlineKind.PCC_RESPONSE.value: Party.PCC, DeadlineKind.REVISIT_BY.value: Party.INSPECTORATE}

    deadlines = []
    keys = [d.key for d in planned] + sorted(k for k in latest if k not in {d.key for d in planned})
    for key in keys:
        plan = next((d for d in planned if d.key == key), None)
        row = latest.get(key)
        if row is None:
            deadlines.append(TrackedDeadline(key=key, kind=plan.kind, party=plan.party, original_due=plan.due, due=plan.due,
                                             opened_at=published_at, reminded=plan.reminded, handled=list(handled)))
            continue
        deadlines.append(TrackedDeadline(
            key=key, kind=DeadlineKind(row.kind), party=plan.party if plan else default_party.get(row.kind, Party.FORCE),
            original_due=row.original_due, due=row.current_due,
            opened_at=published_at if row.cycle == 1 else _cycle_start(decisions, row.cycle, published_at),
            cycle=row.cycle, reminded=plan.reminded if plan else True, met_at=_utc(row.met_at),
            revisions=await _revisions(session, row.id), handled=list(handled),
        ))

    phase = InspectionPhase(inspection.phase)
    settled: dict[str, str] = {}
    revisit = None
    if phase is InspectionPhase.REVISIT_OPEN:
        revisit = await session.scalar(
            select(Revisit).where(Revisit.inspection_id == inspection.id, Revisit.cycle == inspection.cycle)
        )
        opened = _utc(revisit.opened_at) if revisit is not None else None
        settled = {  # decisions of this revisit (not a withdrawal before it) that still stand
            d.recommendation_id: d.outcome for d in decisions
            if d.cycle == inspection.cycle and d.reopened_at is None and (opened is None or _utc(d.decided_at) >= opened)
        }
    open_recommendations = [r.id for r in recommendations if r.phase != Phase.CLOSED.value or r.id in settled]
    return InspectionState(
        phase=phase,
        cycle=inspection.cycle,
        deadlines=deadlines,
        open_recommendations=open_recommendations,
        settled=settled,
        revisit_opened_at=_utc(revisit.opened_at) if revisit else None,
        revisit_trigger=revisit.trigger if revisit else None,
        revisit_by=revisit.triggered_by if revisit else None,
        history=_history(clocks, why),
        projection_version=inspection.projection_version,
        undelivered=await _undelivered(session, inspection_id=inspection.id, recommendation_id=None),
    )


async def _recommendation_input(
    session: AsyncSession, rec: Recommendation, inspection: Inspection, clocks: _Clocks, carried: RecommendationState | None
) -> RecommendationInput:
    force = await session.get(Force, inspection.force_code)
    return RecommendationInput(
        inspection_id=inspection.id, recommendation_id=rec.id, ref=rec.ref, force_code=inspection.force_code,
        force_name=force.name if force is not None else inspection.force_code, timeframe=rec.timeframe,
        published=inspection.published_on, policy=clocks.policy, calendar=clocks.calendar, time_scale=clocks.time_scale,
        parent_workflow_id=inspection_workflow_id(inspection.id), carried=carried,
    )


# ---------------------------------------------------------------- reconciliation: the pass


def _abort_if_unreachable(exc: Exception) -> None:
    """Temporal down: stop the pass (one failure recorded, not one per workflow); the next pass retries."""
    if isinstance(exc, RPCError) and exc.status in (RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED):
        raise exc


def _words(value: Any) -> str:
    return str(getattr(value, "value", value))


class _Pass:
    """One reconciliation pass: what it found and what it did."""

    def __init__(self, sessions: Sessions, client: Client, settings: Settings):
        self.sessions = sessions
        self.client = client
        self.settings = settings
        self.repairs: list[str] = []
        self.fresh_parents: set[str] = set()
        self.restarted_parents: set[str] = set()
        self.stuck: dict[str, Stuck] = {}

    async def _status(self, workflow_id: str) -> tuple[WorkflowExecutionStatus | None, bool]:
        """The workflow's status, and whether it is stuck (running, its task failing again and again)."""
        response = await describe_workflow(self.client, workflow_id)
        if response is None:
            return None, False
        stuck = await _stuck_from(self.client, response, self.settings.stuck_task_attempts)
        if stuck is not None:
            self.stuck[workflow_id] = stuck
        return response.workflow_execution_info.status, stuck is not None

    async def _record(self, line: str, *, action: str, entity_type: str, entity_id: str, detail: dict[str, Any]) -> None:
        log.warning("reconciler: %s", line)
        async with self.sessions.begin() as session:
            await append_audit(session, actor=RECONCILER, action=action, entity_type=entity_type, entity_id=entity_id,
                               detail={"repair": line, **detail})
        self.repairs.append(line)

    async def _start(self, workflow: str, argument: Any, workflow_id: str) -> str | None:
        try:
            handle = await self.client.start_workflow(
                workflow, argument, id=workflow_id, task_queue=self.settings.task_queue,
                id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE, id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
            )
        except WorkflowAlreadyStartedError:
            return None  # someone (an operator, another replica) got there first: it runs
        return handle.result_run_id

    # -- inspections

    async def inspections(self) -> None:
        async with self.sessions() as session:
            inspections = (await session.scalars(select(Inspection).order_by(Inspection.id))).all()
        for inspection in inspections:
            try:
                await self._inspection(inspection.id)
            except Exception as exc:
                _abort_if_unreachable(exc)
                log.exception("reconciler: inspection %s not reconciled", inspection.id)

    async def _inspection(self, inspection_id: str) -> None:
        workflow_id = inspection_workflow_id(inspection_id)
        status, stuck = await self._status(workflow_id)
        if stuck:
            return  # reported; a query would only wait for a task that keeps failing
        async with self.sessions() as session:
            inspection = await session.get(Inspection, inspection_id)
        if status == RUNNING or status == COMPLETED:
            await self._compare_inspection(inspection_id, workflow_id, closed_run=status == COMPLETED)
            return
        if status is not None and status not in RESTARTABLE:
            log.info("reconciler: %s is %s: left alone", workflow_id, WorkflowExecutionStatus.Name(status))
            return
        if inspection.phase == InspectionPhase.CLOSED.value:
            return  # closed in the records: nothing left to follow up
        await self._restart_inspection(inspection_id, workflow_id, RESTARTABLE[status] if status else "missing")

    async def _restart_inspection(self, inspection_id: str, workflow_id: str, was: str) -> None:
        async with self.sessions() as session:
            inspection = await session.get(Inspection, inspection_id)
            recommendations = list((await session.scalars(
                select(Recommendation).where(Recommendation.inspection_id == inspection_id).order_by(Recommendation.id)
            )).all())
        clocks = await _clocks(self.client, self.settings, inspection, recommendations, prefer=workflow_id)
        if clocks is None:
            log.error("reconciler: %s is %s but cannot be restarted: its time scale is unknown", workflow_id, was)
            return
        children = [await workflow_status(self.client, recommendation_workflow_id(r.id)) for r in recommendations]
        # Fresh (as publish starts it) only if it never got past publication: no child ever started.
        # Otherwise with its state carried over, which skips publication: no second notice, no child
        # started twice (the recommendations are reconciled one by one).
        fresh = inspection.projection_version == 0 and all(c is None for c in children)
        why = f"workflow {was}"
        async with self.sessions() as session:
            inspection = await session.get(Inspection, inspection_id)
            carried = None if fresh else await inspection_state(session, inspection, recommendations, clocks, why)
            argument = await inspection_input_from_records(
                session, inspection_id, policy=clocks.policy, calendar=clocks.calendar, time_scale=clocks.time_scale,
                carried=carried,
            )
        run_id = await self._start("InspectionFollowUp", argument, workflow_id)
        if run_id is None:
            return
        (self.fresh_parents if fresh else self.restarted_parents).add(inspection_id)
        line = (f"restarted {workflow_id} (was {was}) "
                + ("from publication" if fresh else f"in phase {inspection.phase}, cycle {inspection.cycle}"))
        await self._record(line, action="workflow.restarted", entity_type="inspection", entity_id=inspection_id,
                           detail={"workflow_id": workflow_id, "run_id": run_id, "was": was, "fresh": fresh,
                                   "phase": inspection.phase, "cycle": inspection.cycle, "clocks_from": clocks.source})

    async def _compare_inspection(self, inspection_id: str, workflow_id: str, closed_run: bool) -> None:
        async with self.sessions() as session:
            inspection = await session.get(Inspection, inspection_id)
        if closed_run and inspection.phase == InspectionPhase.CLOSED.value:
            return
        view = await self._query(workflow_id, InspectionView)
        if view is None:
            return
        state = view.state
        if state.projection_version == 0:
            return  # still publishing: it has not projected anything yet
        async with self.sessions.begin() as session:
            row = await session.get(Inspection, inspection_id, populate_existing=True)
            if row.projection_version < state.projection_version:
                return  # the workflow's own projection is on its way
            have = {"phase": row.phase, "cycle": row.cycle, "next_action": row.next_action}
            want = {"phase": _words(state.phase), "cycle": state.cycle, "next_action": view.next_action}
            if have == want:
                return
            result = await session.execute(
                update(Inspection)
                .where(Inspection.id == inspection_id, Inspection.projection_version == row.projection_version)
                .values(phase=want["phase"], cycle=want["cycle"], next_action=want["next_action"],
                        next_action_at=view.next_action_at, projection_version=state.projection_version)
            )
            if result.rowcount != 1:
                return
        await self._record(self._diff_line(inspection_id, have, want), action="projection.repaired",
                           entity_type="inspection", entity_id=inspection_id,
                           detail={"workflow_id": workflow_id, "from": have, "to": want})

    # -- recommendations

    async def recommendations(self) -> None:
        async with self.sessions() as session:
            ids = (await session.scalars(select(Recommendation.id).order_by(Recommendation.id))).all()
        for rec_id in ids:
            try:
                await self._recommendation(rec_id)
            except Exception as exc:
                _abort_if_unreachable(exc)
                log.exception("reconciler: recommendation %s not reconciled", rec_id)

    async def _recommendation(self, rec_id: str) -> None:
        workflow_id = recommendation_workflow_id(rec_id)
        status, stuck = await self._status(workflow_id)
        if stuck:
            return
        async with self.sessions() as session:
            rec = await session.get(Recommendation, rec_id)
            inspection = await session.get(Inspection, rec.inspection_id)
        if status == RUNNING or status == COMPLETED:
            await self._compare_recommendation(rec_id, workflow_id, closed_run=status == COMPLETED)
            return
        if status is not None and status not in RESTARTABLE:
            log.info("reconciler: %s is %s: left alone", workflow_id, WorkflowExecutionStatus.Name(status))
            return
        if rec.phase == Phase.CLOSED.value:
            return
        never_ran = rec.projection_version == 0 and status is None
        if never_ran and inspection.id in self.fresh_parents:
            return  # its inspection, restarted from publication, starts it
        if never_ran and inspection.id not in self.restarted_parents and inspection.projection_version == 0:
            if await workflow_status(self.client, inspection_workflow_id(inspection.id)) == RUNNING:
                return  # its inspection is still publishing: it starts its recommendations itself
        await self._restart_recommendation(rec_id, workflow_id, RESTARTABLE[status] if status else "missing", fresh=never_ran)

    async def _restart_recommendation(self, rec_id: str, workflow_id: str, was: str, fresh: bool) -> None:
        async with self.sessions() as session:
            rec = await session.get(Recommendation, rec_id)
            inspection = await session.get(Inspection, rec.inspection_id)
            siblings = list((await session.scalars(
                select(Recommendation).where(Recommendation.inspection_id == inspection.id).order_by(Recommendation.id)
            )).all())
        clocks = await _clocks(self.client, self.settings, inspection, siblings, prefer=workflow_id)
        if clocks is None:
            log.error("reconciler: %s is %s but cannot be restarted: its time scale is unknown", workflow_id, was)
            return
        why = f"workflow {was}"
        async with self.sessions() as session:
            rec = await session.get(Recommendation, rec_id)
            inspection = await session.get(Inspection, rec.inspection_id)
            carried = None if fresh else await recommendation_state(session, rec, inspection, clocks, why)
            argument = await _recommendation_input(session, rec, inspection, clocks, carried)
        run_id = await self._start("RecommendationFollowUp", argument, workflow_id)
        if run_id is None:
            return
        line = f"restarted {workflow_id} (was {was}) " + (
            "from publication" if fresh else f"in phase {rec.phase}, cycle {rec.cycle}")
        await self._record(line, action="workflow.restarted", entity_type="recommendation", entity_id=rec_id,
                           detail={"workflow_id": workflow_id, "run_id": run_id, "was": was, "fresh": fresh,
                                   "phase": rec.phase, "cycle": rec.cycle, "clocks_from": clocks.source,
                                   "undelivered": carried.undelivered if carried else []})

    async def _compare_recommendation(self, rec_id: str, workflow_id: str, closed_run: bool) -> None:
        async with self.sessions() as session:
            rec = await session.get(Recommendation, rec_id)
        if closed_run and rec.phase == Phase.CLOSED.value:
            return
        view = await self._query(workflow_id, RecommendationView)
        if view is None:
            return
        state = view.state
        if state.projection_version == 0:
            return
        async with self.sessions.begin() as session:
            row = await session.get(Recommendation, rec_id, populate_existing=True)
            if row.projection_version < state.projection_version:
                return  # the workflow's own projection is on its way
            have = {"phase": row.phase, "cycle": row.cycle, "next_action": row.next_action}
            want = {"phase": _words(state.phase), "cycle": state.cycle, "next_action": view.next_action}
            if have == want:
                return
            result = await session.execute(
                update(Recommendation)
                .where(Recommendation.id == rec_id, Recommendation.projection_version == row.projection_version)
                .values(phase=want["phase"], cycle=want["cycle"], next_action=want["next_action"],
                        next_action_at=view.next_action_at,
                        force_claim=_words(state.force_claim) if state.force_claim else None,
                        outcome=_words(state.outcome) if state.outcome else None,
                        projection_version=state.projection_version)
            )
            if result.rowcount != 1:
                return
        await self._record(self._diff_line(rec_id, have, want), action="projection.repaired",
                           entity_type="recommendation", entity_id=rec_id,
                           detail={"workflow_id": workflow_id, "from": have, "to": want})

    # -- shared

    async def _query(self, workflow_id: str, result_type: type):
        try:
            return await self.client.get_workflow_handle(workflow_id).query(
                "state", result_type=result_type, rpc_timeout=QUERY_TIMEOUT
            )
        except Exception as exc:  # no answer this time (a continue-as-new in flight, no worker): next pass
            log.info("reconciler: no state from %s this time: %s", workflow_id, exc)
            return None

    @staticmethod
    def _diff_line(entity_id: str, have: dict[str, Any], want: dict[str, Any]) -> str:
        changes = "; ".join(f"{k} {have[k]!r} -> {want[k]!r}" for k in have if have[k] != want[k])
        return f"repaired the projection of {entity_id}: {changes}"

    # -- notifications nobody is delivering

    async def orphans(self) -> None:
        """Deliver every notification pending past the policy age that no delivery is working on:
        never attempted (its workflow judged it superseded on a retried task, or died between
        recording and delivering), or not attempted for that long, its lease run out, and no
        delivery workflow of its own running. Delivery leases the row, so even a delivery still
        alive somewhere cannot send it at the same time."""
        now = datetime.now(timezone.utc)
        cutoff = now - pending_age(self.settings)
        async with self.sessions() as session:
            rows = (await session.execute(
                select(Notification.id, Notification.kind, Notification.attempts)
                .where(Notification.status == "pending", Notification.created_at < cutoff,
                       or_(Notification.last_attempt_at.is_(None), Notification.last_attempt_at < cutoff),
                       or_(Notification.lease_until.is_(None), Notification.lease_until < now))
                .order_by(Notification.id)
            )).all()
        from ncpi_workflow.lifecycle import resend_workflow_id

        for notification_id, kind, attempts in rows:
            try:
                statuses = [await workflow_status(self.client, w)
                            for w in (delivery_workflow_id(notification_id), resend_workflow_id(notification_id))]
                if RUNNING in statuses:
                    continue
                if not await _start_delivery(self.client, self.settings, notification_id, WorkflowIDReusePolicy.ALLOW_DUPLICATE):
                    continue
                never = " never attempted" if not attempts else f" last attempted over {self.settings.outbox_pending_minutes:g} min ago"
                await self._record(f"re-delivering pending notification {notification_id} ({kind})",
                                   action="notification.redelivered", entity_type="notification",
                                   entity_id=str(notification_id), detail={"kind": kind, "attempts": attempts, "why": never.strip()})
            except Exception as exc:
                _abort_if_unreachable(exc)
                log.exception("reconciler: notification %s not re-delivered", notification_id)
        async with self.sessions() as session:
            overdue = (Notification.status == "pending", Notification.created_at < cutoff)
            count = await session.scalar(select(func.count()).where(*overdue))
            held = await session.scalar(select(func.count()).where(*overdue, Notification.last_error.like("held: %")))
        if count:
            log.warning("reconciler: %d notification%s pending for more than %g min (%d held by a relay fault); "
                        "`ncpi health` reports them", count, "s" if count != 1 else "", self.settings.outbox_pending_minutes, held)

    # -- stuck workflows

    async def save_stuck(self) -> None:
        """Record this pass's stuck workflows (for `ncpi status`) and forget those that recovered;
        a workflow newly stuck is logged at ERROR once, not on every pass."""
        now = utcnow()
        async with self.sessions.begin() as session:
            known = {r.workflow_id: r for r in (await session.scalars(select(StuckWorkflow))).all()}
            for workflow_id, stuck in self.stuck.items():
                row = known.get(workflow_id)
                if row is None:
                    log.error("reconciler: workflow %s (%s) is stuck: its workflow task has failed %d times: %s",
                              workflow_id, stuck.workflow_type, stuck.attempts, stuck.error)
                    session.add(StuckWorkflow(workflow_id=workflow_id, workflow_type=stuck.workflow_type,
                                              attempts=stuck.attempts, error=stuck.error, since=now, checked_at=now))
                else:
                    row.attempts, row.error, row.checked_at = stuck.attempts, stuck.error, now
            recovered = [w for w in known if w not in self.stuck]
            if recovered:
                await session.execute(delete(StuckWorkflow).where(StuckWorkflow.workflow_id.in_(recovered)))
                for workflow_id in recovered:
                    log.warning("reconciler: workflow %s is no longer stuck", workflow_id)


async def reconcile(sessions: Sessions, client: Client, settings: Settings) -> list[str]:
    """Make Temporal and the records agree. Returns one line per repair (also logged and audited).

    Every inspection not closed and every recommendation not closed in the records must have a
    running workflow: a terminated, failed, cancelled, timed-out or missing one is restarted under
    its business ID with its clocks (policy, calendar, time scale) from its own last run's input and
    its state from the records, so it carries on where it stopped: no notice or reminder sent again
    (the outbox's keys are marked handled; the outbox refuses a second row anyway), no child started
    twice, pending deliveries resumed. A running workflow whose status projection differs (phase,
    cycle, next action) has the projection row repaired from its "state" query. A running workflow
    whose workflow task has been tried NCPI_STUCK_TASK_ATTEMPTS times is left alone and recorded
    as stuck, with the last failure from its history (`stuck_workflows`). Every notification
    pending past NCPI_OUTBOX_PENDING_MINUTES that nobody is delivering is delivered again."""
    run = _Pass(sessions, client, settings)
    await run.inspections()
    await run.recommendations()
    await run.orphans()
    await run.save_stuck()
    return run.repairs


# ---------------------------------------------------------------- the schedule


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
            notification_id = await send_digest(sessions, client, settings, due)
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
