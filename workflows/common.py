"""What both follow-up workflows share: activity options, waiting on the policy clock, notifying."""

from __future__ import annotations

import asyncio
from datetime import date, datetime, timedelta
from typing import Callable

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from ncpi_workflow.clocks import CalendarExtension, CalendarRefresh, TimeScale, WorkingCalendar
    from ncpi_workflow.lifecycle import Due, HistoryEntry, NotificationRequest, clock_timeout, message_subject

# Records must land however long the database is away: retry for ever, backing off to a minute.
RECORD_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), backoff_coefficient=2.0, maximum_interval=timedelta(minutes=1))
RECORD_TIMEOUT = timedelta(seconds=30)


# Records and projections are short database writes: as local activities they run in the worker that
# runs the workflow, without a round trip through the server each (an Update that wrote three records
# took three). Histories from before this change keep their activities on replay.
LOCAL_RECORDS_PATCH = "records-as-local-activities"


async def run_activity(name: str, argument, result_type=None):
    if workflow.patched(LOCAL_RECORDS_PATCH):
        return await workflow.execute_local_activity(
            name, argument, start_to_close_timeout=RECORD_TIMEOUT, retry_policy=RECORD_RETRY, result_type=result_type
        )
    return await workflow.execute_activity(
        name, argument, start_to_close_timeout=RECORD_TIMEOUT, retry_policy=RECORD_RETRY, result_type=result_type
    )


# Histories from before one action at a time let handlers interleave at their awaits.
ONE_AT_A_TIME_PATCH = "one-action-at-a-time"


class one_at_a_time:
    """The workflow's lock, held by every Update, signal and main-loop step that awaits, so that two
    actions never interleave (temporalio/samples-python message_passing/safe_message_handlers).
    Replaying a history from before it, it holds nothing, as that history did."""

    def __init__(self) -> None:
        self.guards = workflow.patched(ONE_AT_A_TIME_PATCH)
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> None:
        if self.guards:
            await self._lock.acquire()

    async def __aexit__(self, *exc) -> None:
        if self.guards:
            self._lock.release()


def refuse_unless(check: Callable[[], None]) -> None:
    """Judge an action again once it holds the workflow's lock: an action before it may have changed
    the state its validator saw. A refusal fails this Update only, with the validator's reason."""
    try:
        check()
    except ValueError as exc:
        raise ApplicationError(str(exc), type="ActionRefused", non_retryable=True) from None


# Histories from before the calendar was kept ahead never extended it.
CALENDAR_PATCH = "calendar-kept-ahead"
CALENDAR_MARGIN_DAYS = 400
"""Extend the bank holidays once fewer than this many days of them are known ahead."""
CALENDAR_AHEAD_DAYS = 3 * 366


class CalendarKeeper:
    """The working-day calendar a workflow computes with. Bank holidays are data carried in the
    workflow's input; before they run out, an activity fetches more, and its result is recorded in
    history, so a replay computes the same dates."""

    def __init__(self, calendar: WorkingCalendar) -> None:
        self.calendar = calendar

    async def keep_ahead(self, horizon: date) -> bool:
        """Extend the calendar if it ends too soon after `horizon` (today, or the latest deadline in
        use, whichever is later). True when it did."""
        if not (self.calendar.needs_extension(horizon, CALENDAR_MARGIN_DAYS) and workflow.patched(CALENDAR_PATCH)):
            return False
        self.calendar = await run_activity(
            "extend_calendar", CalendarExtension(self.calendar, horizon + timedelta(days=CALENDAR_AHEAD_DAYS)),
            result_type=WorkingCalendar,
        )
        return True

    def refresh(self, fresh: CalendarRefresh) -> None:
        """Merge newly announced bank holidays (a signal is in history, so replays see the same)."""
        self.calendar = self.calendar.refreshed(fresh)


def calendar_now(time_scale: TimeScale) -> datetime:
    """The policy calendar's 'now': wall time at time scale 1, a compressed replay otherwise."""
    return time_scale.to_calendar(workflow.now())


async def wait_until(time_scale: TimeScale, condition: Callable[[], bool], until: datetime | None) -> bool:
    """Wait for `condition` or the calendar instant `until`. True when the condition came first."""
    if condition():
        return True
    if until is None:
        await workflow.wait_condition(condition)
        return True
    timeout = clock_timeout(time_scale, until, workflow.now())
    if timeout <= timedelta(0):
        return False
    try:
        await workflow.wait_condition(condition, timeout=timeout)
        return True
    except asyncio.TimeoutError:
        return condition()


# Email delivery retries until the server takes the message (transient failures: refused, timeouts,
# 4xx). Permanent refusals are not raised: the activity records them and tells the inspectors.
DELIVERY_RETRY = RetryPolicy(initial_interval=timedelta(seconds=5), backoff_coefficient=2.0, maximum_interval=timedelta(minutes=10))
DELIVERY_TIMEOUT = timedelta(minutes=2)
DELIVERY_PATIENCE = timedelta(minutes=1)


class Outbox:
    """Records notifications (awaited: the record must exist before the workflow moves on) and
    delivers them in the background, so an SMTP outage never holds up an inspector's Update."""

    def __init__(self) -> None:
        self.deliveries: dict[int, asyncio.Task] = {}

    def resume(self, notification_ids: list[int]) -> None:
        """Deliveries handed over by the previous run (see `settle`)."""
        for notification_id in notification_ids:
            self._deliver(notification_id)

    def _deliver(self, notification_id: int) -> None:
        self.deliveries = {i: d for i, d in self.deliveries.items() if not d.done()}
        self.deliveries[notification_id] = workflow.start_activity(
            "deliver_notification", notification_id, start_to_close_timeout=DELIVERY_TIMEOUT, retry_policy=DELIVERY_RETRY
        )

    async def notify(self, request: NotificationRequest) -> None:
        self._deliver(await run_activity("record_notification", request, result_type=int))

    async def settle(self, patience: timedelta | None = DELIVERY_PATIENCE) -> list[int]:
        """Before continue-as-new: let deliveries in progress finish (they usually take a moment),
        then hand over those still waiting for the SMTP server, for the next run to resume."""
        pending = lambda: all(d.done() for d in self.deliveries.values())  # noqa: E731
        try:
            await workflow.wait_condition(pending, timeout=patience)
        except asyncio.TimeoutError:
            pass
        return [i for i, d in self.deliveries.items() if not d.done()]

    async def drain(self) -> None:
        """Before completing: every delivery must end."""
        await asyncio.gather(*self.deliveries.values())


def history(entries: list[HistoryEntry], at: datetime, event: str, by: str = "system", detail: str = "") -> None:
    entries.append(HistoryEntry(at=at, event=event, by=by, detail=detail))


def update_key(workflow_id: str) -> str:
    """An idempotency key for the current Update: the same Update retried by a client keeps its ID."""
    info = workflow.current_update_info()
    assert info is not None, "update_key is for Update handlers"
    return f"{workflow_id}/update/{info.id}"


async def send_due_message(
    outbox: Outbox, workflow_id: str, due: Due, *, label: str, inspection_id: str, recommendation_id: str | None,
    force_name: str, cycle: int, entries: list[HistoryEntry],
) -> None:
    """Send a deadline's next message (reminder, due today, overdue, escalation, revisit notice);
    the older ones it supersedes are marked handled without being sent."""
    deadline, message = due.deadline, due.message
    for skipped in due.superseded:
        deadline.handled.append(deadline.message_key(skipped))
    key = deadline.message_key(message)
    await outbox.notify(
        NotificationRequest(
            idempotency_key=f"{workflow_id}/{key}", kind=message.kind.value, inspection_id=inspection_id,
            recommendation_id=recommendation_id, recipients=message.recipients,
            subject=message_subject(message.kind, label, deadline.due, force_name), scheduled_for=message.at,
            context={"deadline": deadline.key, "due": deadline.due.isoformat(), "rung": message.rung,
                     "working_days": message.working_days, "cycle": cycle},
        )
    )
    deadline.handled.append(key)
    detail = f"{deadline.key} due {deadline.due.isoformat()}" + (f", rung {message.rung}" if message.rung else "")
    history(entries, message.at, f"{message.kind.value} sent", detail=detail)
