"""The shape of a workflow, read from its history: the Steps that `BareFollowUp` replays, and the
counts that show the bare baseline has the same shape as ours."""

from __future__ import annotations

import json
from collections import Counter

from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHistory

from bench.bare import Step

BACKGROUND_ACTIVITIES = {"deliver_notification"}
LOCAL_ACTIVITY_MARKER = "core_local_activity"
NOT_WRITES = {"read_clock"}  # local activities that hand back the workflow's clock and touch no database


def local_activity_type(event) -> str:
    """The activity type a local activity's marker records ("" when it cannot be read)."""
    try:
        payloads = event.marker_recorded_event_attributes.details["data"].payloads
        return json.loads(payloads[0].data).get("activity_type", "")
    except (KeyError, IndexError, ValueError, AttributeError):
        return ""


def steps_from_history(history: WorkflowHistory, background: set[str] = BACKGROUND_ACTIVITIES) -> list[Step]:
    """Cut the history at every event that sets the workflow going (start, a timer firing, a signal,
    an accepted Update) and count the work done after each one.

    A timer is kept as the instant it was set for, counted from the event that set off the step that
    started it: our timers aim at instants of the policy calendar, so time spent working before they
    start does not lengthen them, and the baseline's must not either."""
    pending: dict[int, tuple[int, float]] = {}  # TimerStarted event id -> (step index, seconds after its trigger)
    steps: list[Step] = []
    triggered_at: list[float] = []

    def begin(step: Step, event) -> None:
        steps.append(step)
        triggered_at.append(event.event_time.ToNanoseconds() / 1e9)

    for event in history.events:
        kind = event.event_type
        if kind == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED:
            begin(Step("start"), event)
        elif kind == EventType.EVENT_TYPE_TIMER_STARTED:
            fires_at = event.event_time.ToNanoseconds() / 1e9 + \
                event.timer_started_event_attributes.start_to_fire_timeout.ToTimedelta().total_seconds()
            pending[event.event_id] = (len(steps) - 1, fires_at - triggered_at[-1])
        elif kind == EventType.EVENT_TYPE_TIMER_FIRED:
            step_index, seconds = pending.pop(event.timer_fired_event_attributes.started_event_id)
            begin(Step("timer", timer_seconds=round(seconds, 6), timer_from_step=step_index), event)
        elif kind == EventType.EVENT_TYPE_TIMER_CANCELED:
            pending.pop(event.timer_canceled_event_attributes.started_event_id, None)
        elif kind == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED:
            begin(Step("signal", event.workflow_execution_signaled_event_attributes.signal_name), event)
        elif kind == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED:
            begin(Step("update", event.workflow_execution_update_accepted_event_attributes.accepted_request.input.name), event)
        elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            if event.activity_task_scheduled_event_attributes.activity_type.name in background:
                steps[-1].background_activities += 1
            else:
                steps[-1].activities += 1
        elif kind == EventType.EVENT_TYPE_MARKER_RECORDED and event.marker_recorded_event_attributes.marker_name == LOCAL_ACTIVITY_MARKER:
            steps[-1].local_activities += 1
            if local_activity_type(event) not in NOT_WRITES:
                steps[-1].writes += 1
        elif kind == EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED:
            steps[-1].children += 1
        elif kind == EventType.EVENT_TYPE_SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_INITIATED:
            steps[-1].signals += 1
    return steps


COUNTED = {
    EventType.EVENT_TYPE_TIMER_STARTED: "timers",
    EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED: "activities",
    EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED: "child_starts",
    EventType.EVENT_TYPE_SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_INITIATED: "signals_sent",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED: "signals_received",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED: "updates",
    EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED: "workflow_tasks",
}


def shape_counts(history: WorkflowHistory) -> dict[str, int]:
    """Timers, activities (local ones apart), child starts, signals, Updates and workflow tasks in one history."""
    counts = Counter(COUNTED[e.event_type] for e in history.events if e.event_type in COUNTED)
    counts["local_activities"] = sum(
        1 for e in history.events
        if e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED and e.marker_recorded_event_attributes.marker_name == LOCAL_ACTIVITY_MARKER
    )
    counts["events"] = len(history.events)
    return dict(sorted(counts.items()))


def timeline(history: WorkflowHistory) -> list[tuple[str, float]]:
    """Each step's trigger and the workflow's end, in seconds after its start: where the time went."""
    marks = {
        EventType.EVENT_TYPE_TIMER_FIRED: "timer",
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED: "signal",
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED: "update",
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED: "end",
    }
    started = history.events[0].event_time.ToNanoseconds() / 1e9
    return [(marks[e.event_type], round(e.event_time.ToNanoseconds() / 1e9 - started, 2))
            for e in history.events if e.event_type in marks]
