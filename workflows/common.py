"""What both follow-up workflows share: activity options, waiting on the policy clock, notifying."""

from __future__ import annotations

import asyncio
import copy
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import date, datetime, timedelta
from typing import AsyncIterator, Awaitable, Callable

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, FailureError

with workflow.unsafe.imports_passed_through():
    from ncpi_workflow.clocks import CalendarExtension, CalendarRefresh, TimeScale, WorkingCalendar
    from ncpi_workflow.lifecycle import (
        RECORD_REJECTED,
        Due,
        EventWrite,
        EventWritten,
        occurred_instant,
        HistoryEntry,
        NotificationRequest,
        Revision,
        TrackedDeadline,
        clock_timeout,
        message_subject,
    )

# Records must land however long the database is away: retry for ever, backing off to a minute.
RECORD_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), backoff_coefficient=2.0, maximum_interval=timedelta(minutes=1))
RECORD_TIMEOUT = timedelta(seconds=30)


# Records and projections are short database writes: as local activities they run in the worker that
# runs the workflow, without a round trip through the server each (an Update that wrote three records
# took three). Histories from before this change keep their activities on replay.
LOCAL_RECORDS_PATCH = "records-as-local-activities"


async def run_activity(name: str, argument, result_type=None):
    """A record or projection. One the database refuses for good (a value too long, against a constraint)
    fails at once with the reason, as an ApplicationError: in an Update handler the Update fails with it
    (the caller reads one line) and the workflow carries on; it is never retried for ever."""
    try:
        if workflow.patched(LOCAL_RECORDS_PATCH):
            return await workflow.execute_local_activity(
                name, argument, start_to_close_timeout=RECORD_TIMEOUT, retry_policy=RECORD_RETRY, result_type=result_type
            )
        return await workflow.execute_activity(
            name, argument, start_to_close_timeout=RECORD_TIMEOUT, retry_policy=RECORD_RETRY, result_type=result_type
        )
    except ActivityError as exc:
        cause = exc.cause
        if isinstance(cause, ApplicationError) and cause.type == RECORD_REJECTED:
            raise ApplicationError(cause.message, type=RECORD_REJECTED, non_retryable=True) from None
        raise


# Histories from before it kept counting a revised deadline's reminders from when the deadline opened,
# and sent at once a reminder dated before the revision.
REVISION_REMINDS_FROM_NOW_PATCH = "revised-deadline-reminds-from-the-revision"


def revise(deadline, new_due, reason: str, by: str, now: datetime, entries: list[HistoryEntry]) -> None:
    """Move a deadline: the original and every revision are kept; its reminders count from now."""
    deadline.revisions.append(Revision(deadline.due, new_due, reason, by, now))
    history(entries, now, "deadline revised", by, f"{deadline.key}: {deadline.due.isoformat()} -> {new_due.isoformat()} ({reason})")
    deadline.due = new_due
    if workflow.patched(REVISION_REMINDS_FROM_NOW_PATCH):
        deadline.opened_at = now


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
    """The policy calendar's 'now': wall time at time scale 1, a compressed replay otherwise.

    This is the clock of the current activation, and it is not the same on replay: see `step_now`.
    Validators, queries and projections may read it; nothing that decides what a workflow does may."""
    return time_scale.to_calendar(workflow.now())


# What `workflow.now()` is, in the Python SDK (sdk-core): the latest of the start times of the workflow
# tasks processed so far and of each local activity's "completion time", which is the clock when the
# activity was scheduled plus how long it ran (recorded in its marker). A replay sees the same markers
# but not the same task starts: a task that runs local activities for longer than 80% of the task
# timeout is "heartbeated" (completed with no commands and a new task started at once), and a task
# that timed out is retried; a replay folds those tasks into one and delivers their jobs at the start
# time of the last of them. So the clock a signal or Update handler, or the main loop, reads before its
# local activities can be seconds later on replay than it was when the workflow ran (the stuck
# `ncpi/NWA/2024-03-07/R1`: its evidence deadline was computed 8.5 s later on replay, at time scale
# 200,000 twenty days later, and its next message was "due at once" instead of "in 34 ms"). And a retried
# task after a timeout reads a later clock than the attempt that wrote its local activities' rows.
# Histories from before this change read `workflow.now()` where they needed it and sent a message at once
# when its time had passed; they replay that way.
CLOCK_PATCH = "clock-from-history"
MIN_TIMER = timedelta(milliseconds=1)
"""The shortest wait: a message whose time has passed is sent after a timer this short, never at once."""


def clock_from_history() -> bool:
    return workflow.patched(CLOCK_PATCH)


async def step_now(time_scale: TimeScale) -> datetime:
    """The calendar 'now' of one step (a main-loop iteration, an Update, a signal that acts), read once at
    its start and kept in history: a local activity returns the clock it was given, so a replay (or a
    worker that takes the workflow over) reads the very instant the step was first run at, whatever
    its own task's start time. Every decision of the step is taken from this instant."""
    if not clock_from_history():
        return calendar_now(time_scale)
    at = await workflow.execute_local_activity(
        "read_clock", workflow.now(), start_to_close_timeout=RECORD_TIMEOUT, retry_policy=RECORD_RETRY, result_type=datetime
    )
    return time_scale.to_calendar(at)


async def wait_until(time_scale: TimeScale, condition: Callable[[], bool], until: datetime | None) -> bool:
    """Wait for `condition` or the calendar instant `until`. True when the condition came first.

    An instant already past is waited for too, with the shortest timer: whether to wait or to act at once
    is then never decided from this activation's clock (which a replay sees later), and what comes after
    the wait runs in a workflow task of its own, after the one that chose it was completed (a retried task
    then repeats the same choice instead of making another)."""
    if condition():
        return True
    if until is None:
        await workflow.wait_condition(condition)
        return True
    timeout = clock_timeout(time_scale, until, workflow.now())
    if timeout <= timedelta(0):
        if not clock_from_history():
            return False
        timeout = MIN_TIMER
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
# The delivery activity heartbeats every 5 s while it waits for the SMTP connection, sends and records:
# a killed worker's deliveries are retried elsewhere after this, not after DELIVERY_TIMEOUT. Histories
# from before it scheduled the activity without one (and replay so).
DELIVERY_HEARTBEAT_TIMEOUT = timedelta(seconds=20)
DELIVERY_HEARTBEAT_PATCH = "delivery-heartbeat-timeout"


def delivery_options() -> dict:
    """The delivery activity's options (in the Outbox and the resend workflow)."""
    heartbeat = DELIVERY_HEARTBEAT_TIMEOUT if workflow.patched(DELIVERY_HEARTBEAT_PATCH) else None
    return dict(start_to_close_timeout=DELIVERY_TIMEOUT, retry_policy=DELIVERY_RETRY, heartbeat_timeout=heartbeat)


class Outbox:
    """Records notifications (awaited: the record must exist before the workflow moves on) and
    delivers them in the background, so an SMTP outage never holds up an inspector's Update."""

    def __init__(self) -> None:
        self.deliveries: dict[int, asyncio.Task] = {}
        self.event: "Event | None" = None
        """The event being gathered (see `Events`): a notification joins its write, delivered once written."""

    def resume(self, notification_ids: list[int]) -> None:
        """Deliveries handed over by the previous run (see `settle`)."""
        for notification_id in notification_ids:
            self._deliver(notification_id)

    def _deliver(self, notification_id: int) -> None:
        self.deliveries = {i: d for i, d in self.deliveries.items() if not d.done()}
        self.deliveries[notification_id] = workflow.start_activity(
            "deliver_notification", notification_id, **delivery_options()
        )

    async def notify(self, request: NotificationRequest) -> None:
        if self.event is not None:
            self.event.write.notifications.append(request)
            return
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


# ---------------------------------------------------------------- one transaction per event
# An event (an Update, a signal that acts, a deadline's message) wrote each record, notification and the
# projection in a local activity (a transaction) of its own, and an Update that told the inspection
# awaited the server's confirmation of its signal. Behind this patch an event gathers what it writes and
# writes it in ONE local activity, `record_event` (one transaction: all or nothing), then starts its
# deliveries, upserts its search attributes and sends its signals without awaiting them (the run waits
# for them before continuing as new or completing). Histories from before it replay as they ran.
EVENT_PATCH = "one-transaction-per-event"

_EVENT_PARTS = {
    "record_progress": "progress", "record_evidence": "evidence", "record_evidence_request": "evidence_request",
    "record_decision": "decision", "record_reopen": "reopen", "record_deadline_revision": "deadline_revision",
    "record_revisit": "revisit",
}
_EVENT_LISTS = {
    "open_deadline": "deadlines_opened", "mark_deadline_met": "deadlines_met", "record_register_status": "register",
    "audit": "audits",
}


# Histories from before it upserted every projection's search attributes, changed or not (a command and an
# event in history each time, and the server's visibility write).
SEARCH_ATTRIBUTES_PATCH = "search-attributes-when-changed"


def upsert_search_attributes(updates: list) -> None:
    """Upsert those of these search attribute updates that change what the workflow has (its
    `typed_search_attributes`: from its start, or its run's, and every upsert since); none changed, no
    command. Histories from before the patch upsert them all, as they did."""
    if not updates:
        return
    if workflow.patched(SEARCH_ATTRIBUTES_PATCH):
        current = workflow.info().typed_search_attributes
        updates = [update for update in updates if current.get(update.key) != update.value]
        if not updates:
            return
    workflow.upsert_search_attributes(updates)


class Event:
    """What one event writes, gathered while its handler runs."""

    def __init__(self) -> None:
        self.write = EventWrite()
        self.written: EventWritten | None = None
        self.search_attributes: list | None = None
        self.after: list[Callable[[], None]] = []
        """Run once the event is written (signals to send)."""


def snapshot(state):
    """A copy of a workflow's state to put back should its event's write be refused: what an event changes
    in place is copied (its lists and dicts, its deadlines), what it only appends to or replaces is shared
    (history entries, register steps, evidence items are never changed once appended). A deep copy of
    the whole state would cost time growing with its history on every event."""
    saved = copy.copy(state)
    for name, value in vars(state).items():
        if isinstance(value, TrackedDeadline):
            setattr(saved, name, copy.deepcopy(value))
        elif isinstance(value, list):
            setattr(saved, name, [copy.deepcopy(v) if isinstance(v, TrackedDeadline) else v for v in value])
        elif isinstance(value, dict):
            setattr(saved, name, dict(value))
    return saved


class Events:
    """A workflow's events: gathered (see EVENT_PATCH) or, in histories from before, written part by part."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox
        self.current: Event | None = None
        self.busy = False
        """An event is being gathered or written (a handler waiting on its outcome waits for it to end)."""
        self.signals: list[asyncio.Task] = []

    async def record(self, name: str, argument, result_type=None):
        """A record: part of the event being gathered (None returned; the ids come with `Event.written`), or
        its own activity outside one."""
        event = self.current
        if event is None:
            return await run_activity(name, argument, result_type=result_type)
        if name in _EVENT_LISTS:
            getattr(event.write, _EVENT_LISTS[name]).append(argument)
        else:
            assert getattr(event.write, _EVENT_PARTS[name]) is None, f"{name} twice in one event"
            setattr(event.write, _EVENT_PARTS[name], argument)
        return None

    def project(self, kind: str, projection, search_attributes: list | None = None) -> bool:
        """The projection of the event being gathered (the last one computed wins); False outside an event."""
        event = self.current
        if event is None:
            return False
        setattr(event.write, f"{kind}_projection", projection)
        event.search_attributes = search_attributes
        return True

    @asynccontextmanager
    async def event(self, guarded: bool, keep: Callable[[], object], restore: Callable[[object], None]) -> AsyncIterator[Event | None]:
        """One event, written in one transaction when its body is done. `guarded`: the workflow holds its
        lock around actions (no other handler interleaves). If the write fails (a record refused for good),
        nothing of it is in the database and `restore` puts back what `keep` took before the body ran: the
        workflow's state is as before the event. Yields None (nothing gathered) in histories from before."""
        if self.current is not None:
            yield self.current  # inside an event already: part of it
            return
        if not (guarded and workflow.patched(EVENT_PATCH)):
            yield None
            return
        saved = keep()
        event = self.current = self.outbox.event = Event()
        self.busy = True
        try:
            try:
                yield event
            finally:
                self.current = self.outbox.event = None
            if not event.write.empty():
                event.written = await run_activity("record_event", event.write, result_type=EventWritten)
        except BaseException:
            restore(saved)
            raise
        finally:
            self.busy = False
        for notification_id in event.written.notification_ids if event.written else ():
            self.outbox._deliver(notification_id)
        upsert_search_attributes(event.search_attributes)
        for after in event.after:
            after()

    async def signal(self, workflow_id: str, name: str, argument) -> None:
        """Signal another workflow: in an event, once it is written and without waiting for the server's
        confirmation (see `sent`); otherwise awaited, as histories from before did."""
        handle = workflow.get_external_workflow_handle(workflow_id)
        if self.current is None:
            await handle.signal(name, argument)
            return
        self.current.after.append(lambda: self.signals.append(asyncio.create_task(self._send(handle, name, argument))))

    @staticmethod
    async def _send(handle, name: str, argument) -> None:
        try:
            await handle.signal(name, argument)
        except FailureError as exc:
            # The other workflow is gone (terminated, or never there): the event is recorded either way.
            workflow.logger.error("signal %s to %s failed: %s", name, handle.id, exc)

    async def sent(self) -> None:
        """Before continuing as new or completing: every signal started is confirmed by the server."""
        while self.signals:
            pending, self.signals = self.signals, []
            await asyncio.gather(*pending)


def history(entries: list[HistoryEntry], at: datetime, event: str, by: str = "system", detail: str = "") -> None:
    entries.append(HistoryEntry(at=at, event=event, by=by, detail=detail))


# ---------------------------------------------------------------- back-dating and adoption
# Nothing here runs for a request without `on`, or a follow-up without adoption: histories from before
# them issue the same commands.

CAUGHT_UP, DID, WAIT = None, "did", "wait"
"""What one step of catching up did: nothing left in the past, one event, or waiting for another workflow."""


def occurred(calendar: WorkingCalendar, on: date | None, now: datetime) -> tuple[datetime, datetime | None]:
    """The instant an action happened and, when back-dated, when it was recorded (None: not back-dated).
    `on` equal to today is not back-dating: the action's instant is the step's now."""
    if on is None or on == now.astimezone(calendar.zone).date():
        return now, None
    return occurred_instant(calendar, on), now


def recorded_note(calendar: WorkingCalendar, recorded_at: datetime | None) -> str:
    return f" (recorded {recorded_at.astimezone(calendar.zone).date().isoformat()})" if recorded_at is not None else ""


def before_adoption(adopted_at: datetime | None, at: datetime) -> bool:
    return adopted_at is not None and at < adopted_at


async def notify_unless_before_adoption(
    outbox: "Outbox", request: NotificationRequest, adopted_at: datetime | None, entries: list[HistoryEntry]
) -> bool:
    """Record and send a notification, unless it is scheduled before the follow-up was adopted: then a
    history entry says so and nothing is recorded or sent. True when it was sent."""
    if before_adoption(adopted_at, request.scheduled_for):
        history(entries, request.scheduled_for, f"{request.kind} not sent (before adoption)", detail=request.subject)
        return False
    await outbox.notify(request)
    return True


def skip_before_adoption(due: Due, entries: list[HistoryEntry]) -> None:
    """A deadline's message due before adoption: handled, in history, not recorded nor sent."""
    deadline, message = due.deadline, due.message
    for skipped in due.superseded:
        deadline.handled.append(deadline.message_key(skipped))
    deadline.handled.append(deadline.message_key(message))
    detail = f"{deadline.key} due {deadline.due.isoformat()}" + (f", rung {message.rung}" if message.rung else "")
    history(entries, message.at, f"{message.kind.value} not sent (before adoption)", detail=detail)


def earliest_before(deadlines, policy, calendar: WorkingCalendar, before: datetime) -> Due | None:
    """The earliest message not yet handled of these deadlines that is due before an instant."""
    best: Due | None = None
    for deadline in deadlines:
        for message in deadline.messages(policy, calendar):
            if deadline.message_key(message) in deadline.handled:
                continue
            if message.at < before and (best is None or message.at < best.message.at):
                best = Due(deadline, message, [])
    return best


def import_refused(entries: list[HistoryEntry], workflow_id: str, at: datetime, what: str, reason: str, by: str = "system") -> None:
    """An imported action the workflow's own checks refuse: in history and the worker's log, never a failure."""
    workflow.logger.error("%s: import refused: %s: %s", workflow_id, what, reason)
    history(entries, at, "import refused", by, f"{what}: {reason}")


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
    try:
        await outbox.notify(
            NotificationRequest(
                idempotency_key=f"{workflow_id}/{key}", kind=message.kind.value, inspection_id=inspection_id,
                recommendation_id=recommendation_id, recipients=message.recipients,
                subject=message_subject(message.kind, label, deadline.due, force_name), scheduled_for=message.at,
                context={"deadline": deadline.key, "due": deadline.due.isoformat(), "rung": message.rung,
                         "working_days": message.working_days, "cycle": cycle},
            )
        )
    except ApplicationError as exc:
        if exc.type != RECORD_REJECTED:
            raise
        # Retrying cannot record it: say so (the worker's log has it at ERROR too) and carry on with the
        # deadline's next message rather than stop the follow-up.
        deadline.handled.append(key)
        workflow.logger.error("%s: %s not recorded: %s", workflow_id, key, exc.message)
        history(entries, message.at, f"{message.kind.value} not recorded", detail=exc.message)
        return
    deadline.handled.append(key)
    detail = f"{deadline.key} due {deadline.due.isoformat()}" + (f", rung {message.rung}" if message.rung else "")
    history(entries, message.at, f"{message.kind.value} sent", detail=detail)


class ProjectionVersions:
    """Versions of a workflow's writes to its database projection, so that the newest write wins.

    A counter kept in the workflow's state is not enough: a workflow task that timed out, or a worker
    killed in the middle of one, has written its projections, and the retried task counts again from
    the same number (its writes are skipped as "not newer") while the first attempt's activities may
    still land after it (stale content under a newer number). The history grows with every task and
    every attempt, so a version made of (run of the continue-as-new chain, history length at the
    write, order within the task) always grows with what the workflow knew when it wrote.

    The projection columns are 32-bit integers on PostgreSQL: 7 bits of run (runs are counted from 1,
    above every counter written before this change), 16 of history length (a history holds at most
    51,200 events), 8 of order within one task."""

    RUN = 1 << 24
    EVENT = 1 << 8
    MAX_RUN = (1 << 7) - 1

    @classmethod
    def next_run(cls, run: int, last_version: int) -> int:
        """The run number of a new run, from the state it carries: one more than the run that wrote the
        latest projection it knows of (a counter of old histories is below the first run)."""
        return min(max(run, last_version // cls.RUN) + 1, cls.MAX_RUN)

    def __init__(self, run: int) -> None:
        self.run = min(max(run, 1), self.MAX_RUN)
        self._length = -1
        self._order = 0

    def next(self) -> int:
        length = min(workflow.info().get_current_history_length(), self.RUN // self.EVENT - 1)
        if length != self._length:
            self._length, self._order = length, 0
        else:
            self._order = min(self._order + 1, self.EVENT - 1)
        return self.run * self.RUN + length * self.EVENT + self._order


async def send_due_and_project(
    event: Callable, send: Callable[[Due], Awaitable[None]], project: Callable[[], Awaitable[None]],
    active_deadlines: Callable[[], list], due: Due,
) -> None:
    """A deadline's message and the projection after it: one event (either workflow's). Should the event's
    write be refused for good, it is sent as histories from before sent it (its notification alone:
    refused, it is marked not recorded and the follow-up carries on), then projected."""
    batched = False
    try:
        async with event() as scope:
            batched = scope is not None
            await send(due)
            await project()
        return
    except ApplicationError as exc:
        if not batched or exc.type != RECORD_REJECTED:
            raise
    # The state is as before the event: the same message, on the restored deadline.
    deadline = next((d for d in active_deadlines() if d.key == due.deadline.key and d.cycle == due.deadline.cycle), None)
    if deadline is None:
        return
    await send(replace(due, deadline=deadline))
    await project()
