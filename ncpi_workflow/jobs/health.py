"""What the reconciler and `ncpi health` read off Temporal and the records: workflow status, stuck
workflows (a workflow task that keeps failing), the relay's state and old pending notifications."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import WorkflowExecutionStatus
from temporalio.api.enums.v1 import WorkflowTaskFailedCause
from temporalio.api.workflowservice.v1 import (
    DescribeWorkflowExecutionRequest,
    DescribeWorkflowExecutionResponse,
    GetWorkflowExecutionHistoryReverseRequest,
)
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from ncpi_workflow.clocks import (
    TimeScale,
    WorkingCalendar,
    calendar_for_report,
)
from ncpi_workflow.formatting import as_utc_if_naive
from ncpi_workflow.lifecycle import (
    InspectionInput,
    RecommendationInput,
    inspection_workflow_id,
    recommendation_workflow_id,
)
from ncpi_workflow.models import (
    Inspection,
    Notification,
    Recommendation,
    RelayStatus,
    StuckWorkflow,
    utcnow,
)
from ncpi_workflow.policy import Policy, load_policy
from ncpi_workflow.settings import Settings
from ncpi_workflow.jobs.common import RELAY_REPORT_FRESH, RPC_TIMEOUT, RUNNING, STUCK_SCAN_AT_ONCE, Sessions, log, pending_age



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
