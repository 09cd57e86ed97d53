"""The workflow stuck for good (issue 11): why its history no longer replays, and that the same
scenario recorded today replays as it ran.

What `workflow.now()` is in the Python SDK (sdk-core): the latest of the start times of the workflow
tasks processed so far and of each local activity's completion time (the clock when it was scheduled
plus how long it ran, kept in its marker). A task whose local activities outlast 80% of the task
timeout is heartbeated: completed with no commands and a new task started at once. A replay folds
those tasks (and timed-out attempts) into one and delivers their jobs at the start time of the last
of them; the recorded run saw the first. So a handler that reads the clock before its local activities
reads it later on replay, and decides otherwise. The workflows now take each step's clock from
history (a local activity hands back the clock it was given: `workflows.common.step_now`) and never
decide between "send at once" and "start a timer" (`wait_until` always starts a timer).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import time
import uuid
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import select, update
from temporalio import activity, workflow
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHistory
from temporalio.worker import (
    Interceptor,
    Replayer,
    StartLocalActivityInput,
    UnsandboxedWorkflowRunner,
    Worker,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
    WorkflowOutboundInterceptor,
)

from activities.calendar import CalendarActivities
from activities.records import InspectorateAddresses, RecordActivities
from ncpi_workflow import db
from ncpi_workflow.clocks import TimeScale
from ncpi_workflow.models import Notification
from ncpi_workflow.policy import load_policy
from ncpi_workflow.settings import Settings
from ncpi_workflow.temporal import DATA_CONVERTER
from tests.lifecycle_support import write_report
from worker import WORKFLOW_RUNNER, WORKFLOWS

FIXTURE = Path(__file__).parent / "fixtures" / "stuck-workflow-history.json"
ADDRESSES = InspectorateAddresses("inspectors@inspectorate.example", "lead@inspectorate.example")


def _events() -> list[dict]:
    return json.loads(FIXTURE.read_text())["events"]


def _attributes(event: dict) -> dict:
    return next((v for k, v in event.items() if k.endswith("Attributes")), {})


def _time(event: dict) -> datetime:
    return datetime.fromisoformat(event["eventTime"][:26].rstrip("Z") + "+00:00")


def _marker_time(event: dict) -> datetime:
    details = _attributes(event)["details"]["data"]["payloads"][0]["data"]
    complete = json.loads(base64.b64decode(details))["complete_time"]
    return datetime.fromtimestamp(complete["seconds"] + complete["nanos"] / 1e9, timezone.utc)


async def _replay(history: WorkflowHistory, workflows=WORKFLOWS, runner=WORKFLOW_RUNNER):
    replayer = Replayer(workflows=workflows, workflow_runner=runner, data_converter=DATA_CONVERTER)
    return (await replayer.replay_workflow(history, raise_on_replay_failure=False)).replay_failure


def _heartbeats(events: list[dict]) -> list[int]:
    """Workflow tasks completed with no commands and followed at once by another: WFT heartbeats."""
    out = []
    for i, event in enumerate(events[:-1]):
        if event["eventType"] == "EVENT_TYPE_WORKFLOW_TASK_COMPLETED" and events[i + 1]["eventType"] == "EVENT_TYPE_WORKFLOW_TASK_SCHEDULED":
            out.append(int(event["eventId"]))
    return out


# ---------------------------------------------------------------- the recorded history


async def test_the_stuck_history_fails_to_replay_where_it_stuck():
    """Recorded without the clock patch, it replays the old way, and fails the way the worker did:
    what went wrong is in the history itself (next test), and no code can replay it."""
    failure = await _replay(WorkflowHistory.from_json("ncpi/NWA/2024-03-07/R1", FIXTURE.read_text()))
    assert failure is not None
    assert "No command scheduled for event HistoryEvent(id: 94, TimerStarted)" in str(failure)


def test_the_history_shows_the_handler_ran_at_another_clock_than_its_replay():
    events = _events()
    by_id = {int(e["eventId"]): e for e in events}
    signal = next(e for e in events if _attributes(e).get("signalName") == "open_review")
    assert int(signal["eventId"]) == 62
    # Tasks 63-79: heartbeats (no commands, a new task at once) and timed-out attempts, until the task
    # completed at 80 with the handler's first local-activity markers (81-83).
    assert {65, 71, 77} <= set(_heartbeats(events))
    assert by_id[68]["eventType"] == by_id[74]["eventType"] == "EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT"
    first_record = by_id[81]
    assert first_record["eventType"] == "EVENT_TYPE_MARKER_RECORDED"
    # The handler's first record completed, on the workflow's clock, between the start of task 76 (the
    # worker that ran it) and the start of task 79, the heartbeat whose start time a replay gives it:
    # it ran before 79 started, at 76's clock, and a replay runs it 8.5 s later.
    assert _time(by_id[76]) < _marker_time(first_record) < _time(by_id[79])
    shift = _time(by_id[79]) - _time(by_id[76])
    scale = json.loads(base64.b64decode(_attributes(events[0])["input"]["payloads"][0]["data"]))["time_scale"]["factor"]
    assert shift > timedelta(seconds=8) and (shift * scale).days >= 19, "twenty calendar days at time scale 200,000"


# ---------------------------------------------------------------- the mechanism, on the dev server

TASK_TIMEOUT = timedelta(seconds=2)
"""Short, so that a local activity outlasts 80% of it (1.6 s) and the task is heartbeated."""
SLOW = 2.5


@dataclass
class ProbeAction:
    history_clock: bool
    until: datetime


@activity.defn(name="probe_slow_record")
async def probe_slow_record() -> None:
    await asyncio.sleep(SLOW)


@workflow.defn(name="ClockProbe", sandboxed=False)
class ClockProbe:
    """A handler that reads the clock, runs a slow local activity, and then decides on what it read."""

    def __init__(self) -> None:
        self.done = False

    @workflow.run
    async def run(self) -> None:
        await workflow.wait_condition(lambda: self.done)

    @workflow.signal
    async def act(self, action: ProbeAction) -> None:
        if action.history_clock:
            from workflows.common import step_now

            now = await step_now(TimeScale())
        else:
            now = workflow.now()
        await workflow.execute_local_activity(probe_slow_record, start_to_close_timeout=timedelta(seconds=30))
        if now < action.until:
            await workflow.sleep(0.01)  # a command only when the handler's clock said "not yet"
        self.done = True


@pytest.mark.parametrize("history_clock", [False, True], ids=["task-clock", "clock-from-history"])
async def test_a_clock_read_before_a_heartbeated_task_differs_on_replay(dev_server_env, history_clock):
    client = dev_server_env.client
    queue = f"clock-probe-{uuid.uuid4()}"
    async with Worker(
        client, task_queue=queue, workflows=[ClockProbe], workflow_runner=UnsandboxedWorkflowRunner(),
        activities=[probe_slow_record, RecordActivities(None, ADDRESSES).read_clock],
    ):
        handle = await client.start_workflow(ClockProbe.run, id=f"clock-probe/{uuid.uuid4()}", task_queue=queue, task_timeout=TASK_TIMEOUT)
        # Half-way between the start of the task that runs the handler and the heartbeat's task (1.6 s on).
        until = datetime.now(timezone.utc) + timedelta(seconds=0.8)
        await handle.signal(ClockProbe.act, ProbeAction(history_clock, until))
        await asyncio.wait_for(handle.result(), 30)
    history = await handle.fetch_history()
    assert _heartbeats_in(history), "the slow local activity had its task heartbeated"
    failure = await _replay(history, workflows=[ClockProbe], runner=UnsandboxedWorkflowRunner())
    if history_clock:
        assert failure is None, failure
    else:
        assert failure is not None and "Nondeterminism" in str(failure)


# ---------------------------------------------------------------- the real workflows, on the dev server


def _delivery(sessions, delivered: list[int]):
    @activity.defn(name="deliver_notification")
    async def deliver_notification(notification_id: int) -> str:
        """Stands for the email worker: marks the row sent."""
        async with sessions.begin() as session:
            await session.execute(update(Notification).where(Notification.id == notification_id).values(status="sent"))
        delivered.append(notification_id)
        return "sent"

    return deliver_notification


def _slowed(records: RecordActivities, name: str, seconds: float, when=lambda record: True):
    real = getattr(records, name)

    async def slowed(record):
        if when(record):
            await asyncio.sleep(seconds)
        return await real(record)

    # Its argument and result types are the real activity's (the activity's own definition is not copied).
    functools.update_wrapper(slowed, real, assigned=("__name__", "__qualname__", "__doc__", "__annotations__"), updated=())
    return activity.defn(name=name)(slowed)


def _worker(client, queue, sessions, policy, *, delivered, slow: dict[str, float] | None = None, interceptors=(),
            cache=True, replace: dict | None = None):
    """A worker of today's workflows (unsandboxed, for the interceptors) and record activities, some of
    them slowed down or replaced, and a delivery that marks rows sent."""
    records = RecordActivities(sessions, ADDRESSES)
    slow, replace = slow or {}, replace or {}
    activities = [a for a in records.all() if a.__name__ not in slow and a.__name__ not in replace]
    activities += [_slowed(records, name, seconds) for name, seconds in slow.items()] + list(replace.values())
    return Worker(
        client, task_queue=queue, workflows=WORKFLOWS, workflow_runner=UnsandboxedWorkflowRunner(),
        activities=activities + CalendarActivities(policy.calendar).all() + [_delivery(sessions, delivered)],
        interceptors=list(interceptors), max_cached_workflows=1000 if cache else 0,
    )


async def _settings(tmp_path, **overrides) -> Settings:
    url = f"sqlite+aiosqlite:///{tmp_path / 'ncpi.db'}"
    from tests.conftest import migrate

    await migrate(url)  # db.upgrade: a new SQLite file is a copy of the session's migrated template
    return Settings(database_url=url, data_dir=tmp_path / "data", **overrides)


async def _records(tmp_path, force: str, published: date, recommendations):
    """The records of a report written as `ncpi publish` writes them, with no workflow started."""
    from ncpi_workflow.clocks import calendar_for_report, plan_report
    from ncpi_workflow.forces import load_forces
    from ncpi_workflow.report import load_report
    from ncpi_workflow.store import insert_report, load_reference_forces

    settings = await _settings(tmp_path)
    url = settings.database_url
    forces = load_forces(settings.forces_file)
    loaded = load_report(write_report(tmp_path, force, published, recommendations), known_forces=set(forces), max_bytes=settings.report_max_bytes)
    policy = load_policy(settings.policy)
    calendar = calendar_for_report(policy, published)
    timeline = plan_report(published, [(r.ref, r.timeframe) for r in loaded.report.recommendations], policy, calendar)
    async with db.open_database(url) as sessions:
        async with sessions.begin() as session:
            await load_reference_forces(session, forces)
            await insert_report(session, loaded, timeline, actor="test")
    return settings, policy, calendar, forces[force].name


async def _eventually(check, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = await check()
            if result:
                return result
        except Exception:  # noqa: BLE001 - a query racing a task: ask again
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise AssertionError("not in time")
        await asyncio.sleep(0.2)


async def test_an_evidence_request_whose_records_outlast_the_task_replays_as_it_ran(dev_server_env, tmp_path):
    """The stuck scenario on today's code: as in the recorded history, a reminder's delivery has just
    completed (a workflow task with nothing to do), then the revisit opens while the evidence request's
    records take longer than 80% of the task timeout. A worker with no cache (its answer is a replay)
    must see the evidence deadline the workflow set, and the history must replay."""
    from ncpi_workflow.clocks import Timeframe, recommendation_deadline
    from ncpi_workflow.lifecycle import OpenReview, RecommendationInput, RecommendationView, tracked
    from workflows.recommendation import RecommendationWorkflow

    published = date(2024, 3, 7)
    settings, policy, calendar, force_name = await _records(tmp_path, "NWA", published, [("R1", "within_three_months")])
    published_at = calendar.next_send_time(calendar.at(published, datetime.min.time()))
    deadline = recommendation_deadline("R1", Timeframe.WITHIN_THREE_MONTHS, published, policy, calendar)
    first_reminder = tracked(deadline, published_at).messages(policy, calendar)[0].at
    factor = 50_000.0  # 1.6 s of clock is 22 hours of calendar
    # The calendar starts a day before the first reminder: it goes out 1.7 s after the start.
    scale = TimeScale(factor, published_at, datetime.now(timezone.utc) - (first_reminder - timedelta(days=1) - published_at) / factor)
    client = dev_server_env.client
    queue = f"stuck-{uuid.uuid4()}"
    workflow_id = f"ncpi/NWA/2024-03-07/R1/{uuid.uuid4()}"
    delivered: list[int] = []
    async with db.open_database(settings.database_url) as sessions:
        # The evidence request's records: on their own, or in its event's one write (one-transaction-per-event).
        slow_event = _slowed(RecordActivities(sessions, ADDRESSES), "record_event", SLOW, when=lambda write: write.evidence_request is not None)
        async with _worker(client, queue, sessions, policy, delivered=delivered, slow={"record_evidence_request": SLOW},
                           replace={"record_event": slow_event}):
            handle = await client.start_workflow(
                RecommendationWorkflow.run,
                RecommendationInput(
                    inspection_id="NWA-2024-03-07", recommendation_id="NWA-2024-03-07-R1", ref="R1", force_code="NWA",
                    force_name=force_name, timeframe="within_three_months", published=published, policy=policy,
                    calendar=calendar, time_scale=scale, parent_workflow_id="ncpi/NWA/2024-03-07",
                ),
                id=workflow_id, task_queue=queue, task_timeout=TASK_TIMEOUT,
            )
            view = lambda: handle.query("state", result_type=RecommendationView, rpc_timeout=timedelta(seconds=5))  # noqa: E731
            await _eventually(lambda: _idle_after_delivery(handle, delivered), 30)
            await handle.signal(RecommendationWorkflow.open_review, OpenReview(1, scale.to_calendar(datetime.now(timezone.utc))))
            live = await _eventually(lambda: _requested(view), 60)
        # Another worker, with an empty cache: it answers from a replay of the history.
        async with _worker(client, queue, sessions, policy, delivered=delivered, cache=False):
            replayed = await _eventually(view)
        history = await handle.fetch_history()
        await handle.terminate()
    assert _heartbeats_in(history), "the evidence request's records had the task heartbeated"
    assert replayed.state.evidence_deadline == live.state.evidence_deadline
    assert [(h.at, h.event) for h in replayed.state.history] == [(h.at, h.event) for h in live.state.history]
    assert await _replay(history) is None


async def _idle_after_delivery(handle, delivered) -> bool:
    """A delivery has completed, and the workflow task that followed it had nothing to do."""
    events = (await handle.fetch_history()).events
    kinds = [e.event_type for e in events[-4:]]
    return bool(delivered) and kinds == [
        EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED, EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED,
        EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED, EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED,
    ]


async def _requested(view):
    v = await view()
    return v if any(h.event == "evidence requested" for h in v.state.history) else None


COMMAND_EVENTS = {
    EventType.EVENT_TYPE_MARKER_RECORDED, EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES,
    EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED, EventType.EVENT_TYPE_TIMER_STARTED,
}


def _heartbeats_in(history) -> list[int]:
    """Workflow tasks followed at once by another, with nothing that happened in between (only what the
    task itself wrote, local activities' markers): the SDK heartbeating a task while local activities run."""
    events = history.events
    out = []
    for i, event in enumerate(events):
        if event.event_type != EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
            continue
        j = i + 1
        while j < len(events) and events[j].event_type in COMMAND_EVENTS:
            j += 1
        if j < len(events) and events[j].event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED:
            out.append(event.event_id)
    return out


class FailTheTaskAfterTwoRecords(Interceptor):
    """Loses the inspection's workflow task in which its second notification was recorded: the row is
    written, the task fails 1.5 s later (the calendar has moved on: a retry reads a later clock)."""

    def __init__(self) -> None:
        self.records = 0
        self.failed = False

    def workflow_interceptor_class(self, input: WorkflowInterceptorClassInput):
        outer = self

        class Outbound(WorkflowOutboundInterceptor):
            def start_local_activity(self, input: StartLocalActivityInput):
                if workflow.info().workflow_type == "InspectionFollowUp" and not workflow.unsafe.is_replaying():
                    if outer.records >= 2 and not outer.failed:
                        outer.failed = True
                        time.sleep(1.5)
                        raise RuntimeError("injected: this workflow task is lost")
                    # A notification recorded on its own, or with its event (one-transaction-per-event).
                    if input.activity in ("record_notification", "record_event"):
                        outer.records += 1
                return super().start_local_activity(input)

        class Inbound(WorkflowInboundInterceptor):
            def init(self, outbound: WorkflowOutboundInterceptor) -> None:
                super().init(Outbound(outbound))

        return Inbound


DAILY_REMINDERS = """
[reminders]
working_days_before = [10, 3]
on_the_day = true
overdue_every_working_days = 1
overdue_reminders = 40
"""


async def test_a_retried_task_delivers_the_rows_its_first_attempt_recorded(dev_server_env, tmp_path):
    """A report whose action plan is overdue, with a reminder every working day (half a second at time
    scale 200,000). The task that records one is lost after the row is written; the retried task, 1.5 s
    (three calendar days) later, must deliver that row, not choose a later reminder and leave it
    pending for ever."""
    from ncpi_workflow.publishing import publish

    default = Path(Settings().policy).read_text()
    policy_file = tmp_path / "policy.toml"
    policy_file.write_text(default.split("[reminders]")[0] + DAILY_REMINDERS + "[[escalation]]" + default.split("[[escalation]]", 1)[1])
    published = date(2023, 9, 4)  # the action plan is due on 16 October 2023; no bank holiday until Christmas
    factor = 200_000.0
    settings = await _settings(tmp_path, policy=policy_file, time_scale=factor, task_queue=f"orphans-{uuid.uuid4()}")
    policy = load_policy(policy_file)
    client = dev_server_env.client
    failing = FailTheTaskAfterTwoRecords()
    delivered: list[int] = []
    async with db.open_database(settings.database_url) as sessions:
        async with _worker(client, settings.task_queue, sessions, policy, delivered=delivered, interceptors=[failing]):
            # 50 days after publication on the calendar: eight working days past the action plan's deadline.
            result = await publish(settings, client, write_report(tmp_path, "CUM", published, [("R1", "within_six_months")]),
                                   anchor=datetime.now(timezone.utc) - timedelta(days=50) / factor)
            handle = client.get_workflow_handle(result.workflow_id)
            await _eventually(lambda: _async(failing.failed), 30)
            await asyncio.sleep(4)  # a few more reminders on the clock after the retry
            async with sessions() as session:
                # Every row recorded by now is delivered soon after, by the task that recorded it or its retry
                # (rows recorded later may still be on their way when the test looks).
                recorded = (await session.scalars(select(Notification.id))).all()

            async def undelivered():
                async with sessions() as session:
                    rows = await session.scalars(
                        select(Notification.idempotency_key).where(Notification.id.in_(recorded), Notification.status == "pending")
                    )
                    return list(rows)

            try:
                await _eventually(lambda: _negated(undelivered), 10)
            except AssertionError:
                pass
            pending = await undelivered()
            await client.get_workflow_handle(f"{result.workflow_id}/R1").terminate()
            await handle.terminate()
    assert failing.failed
    assert len(recorded) > 3, "reminders went on after the retry"
    assert not pending, f"recorded and never delivered: {pending}"


async def _negated(check):
    return not await check()


async def _async(value):
    return value
