"""The statutory clocks: every deadline, reminder and escalation of a report, computed purely.

Nothing here reads a file, the network or the current time, so the same functions run unchanged
inside Temporal workflows. The bank-holiday calendar is data (`WorkingCalendar.bank_holidays`),
built once outside workflows by `england_and_wales_calendar` and carried as input, so a newer
`holidays` package can never change the dates of a workflow already running.

Rules (design brief): periods run from the publication date P; calendar months clamp to month end;
a force's due date on a non-working day moves to the next working day, the inspectorate's own limit
(revisit-by) to the previous one; messages go out on working days, inside working hours,
Europe/London.
"""


from dataclasses import dataclass, field, replace
from datetime import date, datetime, time, timedelta, timezone
from enum import StrEnum
from functools import cached_property
from typing import Iterable, Sequence
from zoneinfo import ZoneInfo

from ncpi_workflow.policy import CalendarPolicy, Period, Policy


class Timeframe(StrEnum):
    IMMEDIATELY = "immediately"
    WITHIN_THREE_MONTHS = "within_three_months"
    WITHIN_SIX_MONTHS = "within_six_months"


class DeadlineKind(StrEnum):
    IMMEDIATE_UPDATE = "immediate_update"
    ACTION_PLAN = "action_plan"
    PCC_RESPONSE = "pcc_response"
    RECOMMENDATION = "recommendation"
    EVIDENCE = "evidence"
    REVISIT_BY = "revisit_by"


class Party(StrEnum):
    """Who owes a deadline; it decides which way a non-working day moves it and who is reminded."""

    FORCE = "force"
    PCC = "pcc"
    INSPECTORATE = "inspectorate"


class MessageKind(StrEnum):
    PUBLISHED = "published"
    REMINDER = "reminder"
    DUE_TODAY = "due_today"
    OVERDUE = "overdue"
    ESCALATION = "escalation"
    REVISIT_NOTICE = "revisit_notice"
    REVISIT_OPENS = "revisit_opens"
    """The revisit-by limit's own timer: at it the inspection workflow opens the revisit (it sends
    REVISIT_OPENED, not this). `plan_report` shows the REVISIT_OPENED notice in its place."""
    REVISIT_OPENED = "revisit_opened"
    EVIDENCE_REQUEST = "evidence_request"


PARTY_CONTACT = {Party.FORCE: "liaison_officer", Party.PCC: "pcc", Party.INSPECTORATE: "inspectors"}
PUBLISHED_RECIPIENTS = ("liaison_officer", "chief_officer", "pcc")
REVISIT_OPENED_RECIPIENTS = ("liaison_officer", "chief_officer", "inspectors")
EVIDENCE_REQUEST_RECIPIENTS = ("liaison_officer",)

DEADLINE_LABELS = {
    DeadlineKind.IMMEDIATE_UPDATE: "Update on recommendations to be acted on immediately",
    DeadlineKind.ACTION_PLAN: "Force action plan",
    DeadlineKind.PCC_RESPONSE: "Police and Crime Commissioner's published response",
    DeadlineKind.RECOMMENDATION: "Recommendation",
    DeadlineKind.EVIDENCE: "Evidence for recommendation",
    DeadlineKind.REVISIT_BY: "Revisit (post-inspection review) no later than",
}


@dataclass(frozen=True)
class WorkingCalendar:
    """Working days and hours: weekdays that are not bank holidays, in one time zone."""

    timezone: str = "Europe/London"
    bank_holidays: tuple[date, ...] = ()
    working_day_start: time = time(9, 0)
    working_day_end: time = time(17, 0)
    send_at: time = time(9, 0)
    covers_until: date | None = None
    """The last day whose bank holidays this calendar knows. None in calendars recorded before the
    field existed: `known_until` then derives it from the holidays listed."""

    @cached_property
    def _holidays(self) -> frozenset[date]:
        return frozenset(self.bank_holidays)

    def known_until(self) -> date:
        """The last day whose bank holidays are known: `covers_until`, else 31 December of the
        latest year listed (date.min for a calendar that lists none and says nothing)."""
        if self.covers_until is not None:
            return self.covers_until
        if not self.bank_holidays:
            return date.min
        return date(max(self.bank_holidays).year, 12, 31)

    def needs_extension(self, day: date, margin_days: int = 400) -> bool:
        """True when `day` plus the margin runs past the days whose bank holidays are known."""
        return day + timedelta(days=margin_days) > self.known_until()

    def refreshed(self, refresh: "CalendarRefresh") -> "WorkingCalendar":
        """This calendar with an operator's refresh merged in: every holiday of either, known until
        the later of the two. Pure: a workflow can call it in a signal handler."""
        holidays = tuple(sorted(set(self.bank_holidays) | set(refresh.bank_holidays)))
        return replace(self, bank_holidays=holidays, covers_until=max(self.known_until(), refresh.covers_until))

    @cached_property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def is_working_day(self, day: date) -> bool:
        return day.weekday() < 5 and day not in self._holidays

    def next_working_day(self, day: date) -> date:
        """`day` itself if it is a working day, else the first working day after it."""
        while not self.is_working_day(day):
            day += timedelta(days=1)
        return day

    def previous_working_day(self, day: date) -> date:
        """`day` itself if it is a working day, else the last working day before it."""
        while not self.is_working_day(day):
            day -= timedelta(days=1)
        return day

    def add_working_days(self, day: date, n: int) -> date:
        """The working day n working days after (n > 0) or before (n < 0) `day`."""
        step = timedelta(days=1 if n > 0 else -1)
        remaining = abs(n)
        while remaining:
            day += step
            if self.is_working_day(day):
                remaining -= 1
        return day

    def at(self, day: date, clock: time) -> datetime:
        """The instant, in UTC, of a wall-clock time on a day in the calendar's time zone."""
        return datetime.combine(day, clock, tzinfo=self.zone).astimezone(timezone.utc)

    def local(self, instant: datetime) -> datetime:
        return instant.astimezone(self.zone)

    def is_working_time(self, instant: datetime) -> bool:
        local = self.local(instant)
        return self.is_working_day(local.date()) and self.working_day_start <= local.time() < self.working_day_end

    def next_send_time(self, instant: datetime) -> datetime:
        """The first moment at or after `instant` when messages go out (send_at on a working day)."""
        local = self.local(instant)
        day = local.date()
        if local.time() > self.send_at or not self.is_working_day(day):
            day = self.add_working_days(day, 1) if local.time() > self.send_at else self.next_working_day(day)
        return self.at(day, self.send_at)


def _england_and_wales_holidays(years: Sequence[int]) -> set[date]:
    import holidays  # only here: workflows receive the calendar as data

    return set(holidays.country_holidays("GB", subdiv="ENG", years=list(years)))


def england_and_wales_calendar(policy: CalendarPolicy, years: Iterable[int]) -> WorkingCalendar:
    """The England and Wales bank-holiday calendar for the given years, from the `holidays` package,
    with the policy's extra bank holidays; it knows the holidays up to 31 December of the last year."""
    years = sorted(set(years))
    observed = _england_and_wales_holidays(years) | set(policy.extra_bank_holidays)
    return WorkingCalendar(
        timezone=policy.timezone,
        bank_holidays=tuple(sorted(observed)),
        working_day_start=policy.working_day_start,
        working_day_end=policy.working_day_end,
        send_at=policy.send_at,
        covers_until=date(years[-1], 12, 31) if years else None,
    )


def extend_calendar(calendar: WorkingCalendar, policy: CalendarPolicy | None, through: date) -> WorkingCalendar:
    """`calendar` extended to know the bank holidays up to 31 December of `through`'s year.

    Not for workflow code (it reads the `holidays` package): workflows get it from the
    `extend_calendar` activity, so the result is recorded in their history. The time zone and
    working hours stay as they are; the holidays are those of the `holidays` package for every year
    from the first the calendar already had, plus the policy's extra ones, plus any the calendar
    listed that neither knows (one an operator added). A calendar never shrinks: `covers_until` is
    the later of its old value and 31 December of `through`'s year.
    """
    first = min(calendar.bank_holidays).year if calendar.bank_holidays else through.year
    covers_until = max(date(through.year, 12, 31), calendar.known_until())
    observed = _england_and_wales_holidays(range(min(first, covers_until.year), covers_until.year + 1))
    observed |= set(calendar.bank_holidays)
    if policy is not None:
        observed |= set(policy.extra_bank_holidays)
    return replace(calendar, bank_holidays=tuple(sorted(observed)), covers_until=covers_until)


@dataclass(frozen=True)
class CalendarExtension:
    """The `extend_calendar` activity's input: the calendar a workflow holds and the day it must reach."""

    calendar: WorkingCalendar
    through: date


@dataclass(frozen=True)
class CalendarRefresh:
    """The `refresh_calendar` signal (`ncpi calendar refresh`): the bank holidays known now, covering
    at least the years 2000 to five years ahead, to be merged into a running workflow's calendar."""

    bank_holidays: tuple[date, ...]
    covers_until: date


def refresh_for(policy: CalendarPolicy, today: date, first_year: int = 2000, years_ahead: int = 5) -> CalendarRefresh:
    """The bank holidays from `first_year` to `years_ahead` years after `today`'s year, as a refresh."""
    fresh = england_and_wales_calendar(policy, range(first_year, today.year + years_ahead + 1))
    return CalendarRefresh(fresh.bank_holidays, fresh.covers_until)


def calendar_for_report(policy: Policy, published: date) -> WorkingCalendar:
    """A calendar long enough for every clock of a report, its further cycles and overdue ladder."""
    return england_and_wales_calendar(policy.calendar, range(published.year - 1, published.year + 4))


@dataclass(frozen=True)
class Deadline:
    key: str
    kind: DeadlineKind
    party: Party
    nominal: date
    """P plus the policy's period, before moving off a non-working day."""
    due: date
    due_at: datetime
    """The end of the working day on `due`, in UTC."""
    recommendation_ref: str | None = None
    reminded: bool = True
    """False for the report-level immediate update: each immediate recommendation carries its own reminders."""

    @property
    def moved(self) -> bool:
        return self.nominal != self.due

    @property
    def label(self) -> str:
        base = DEADLINE_LABELS[self.kind]
        return f"{base} {self.recommendation_ref}" if self.recommendation_ref else base


@dataclass(frozen=True)
class Message:
    at: datetime
    """When it goes out, in UTC; always on a working day inside working hours."""
    kind: MessageKind
    deadline_key: str
    recipients: tuple[str, ...]
    working_days: int = 0
    """Working days before the deadline (positive) or overdue (negative)."""
    rung: str | None = None


@dataclass(frozen=True)
class Timeline:
    published: date
    published_at: datetime
    deadlines: tuple[Deadline, ...]
    """The clocks that start at publication (the ones written to the records when it is published)."""
    messages: tuple[Message, ...] = field(default=())
    revisit_opens_at: datetime | None = None
    """If nobody triggers it earlier: when the revisit opens by itself (send time on the revisit-by date)."""
    evidence_deadlines: tuple[Deadline, ...] = ()
    """The evidence each open recommendation is then asked for (key `evidence:<ref>`)."""

    def deadline(self, key: str) -> Deadline:
        return next(d for d in (*self.deadlines, *self.evidence_deadlines) if d.key == key)


def timeframe_period(policy: Policy, timeframe: Timeframe) -> Period:
    return {
        Timeframe.IMMEDIATELY: policy.deadlines.immediate_update,
        Timeframe.WITHIN_THREE_MONTHS: policy.deadlines.within_three_months,
        Timeframe.WITHIN_SIX_MONTHS: policy.deadlines.within_six_months,
    }[Timeframe(timeframe)]


def make_deadline(
    key: str,
    kind: DeadlineKind,
    party: Party,
    start: date,
    period: Period,
    calendar: WorkingCalendar,
    recommendation_ref: str | None = None,
    reminded: bool = True,
) -> Deadline:
    nominal = start + period.as_relativedelta()
    due = calendar.previous_working_day(nominal) if party is Party.INSPECTORATE else calendar.next_working_day(nominal)
    return Deadline(
        key=key,
        kind=kind,
        party=party,
        nominal=nominal,
        due=due,
        due_at=calendar.at(due, calendar.working_day_end),
        recommendation_ref=recommendation_ref,
        reminded=reminded,
    )


def recommendation_deadline(
    ref: str, timeframe: Timeframe, published: date, policy: Policy, calendar: WorkingCalendar
) -> Deadline:
    return make_deadline(
        f"recommendation:{ref}",
        DeadlineKind.RECOMMENDATION,
        Party.FORCE,
        published,
        timeframe_period(policy, timeframe),
        calendar,
        recommendation_ref=ref,
    )


def report_deadlines(
    published: date, timeframes: Sequence[tuple[str, Timeframe]], policy: Policy, calendar: WorkingCalendar
) -> tuple[Deadline, ...]:
    """The report-level clocks and each recommendation's deadline, in due order."""
    d = policy.deadlines
    deadlines = []
    if any(Timeframe(t) is Timeframe.IMMEDIATELY for _, t in timeframes):
        deadlines.append(
            make_deadline(
                "immediate_update",
                DeadlineKind.IMMEDIATE_UPDATE,
                Party.FORCE,
                published,
                d.immediate_update,
                calendar,
                reminded=False,
            )
        )
    deadlines.append(make_deadline("action_plan", DeadlineKind.ACTION_PLAN, Party.FORCE, published, d.action_plan, calendar))
    deadlines.append(make_deadline("pcc_response", DeadlineKind.PCC_RESPONSE, Party.PCC, published, d.pcc_response, calendar))
    deadlines.extend(recommendation_deadline(ref, t, published, policy, calendar) for ref, t in timeframes)
    deadlines.append(make_deadline("revisit_by", DeadlineKind.REVISIT_BY, Party.INSPECTORATE, published, d.revisit_by, calendar))
    return tuple(sorted(deadlines, key=lambda x: (x.due, x.kind is DeadlineKind.REVISIT_BY)))


def _unique(roles: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(roles))


def deadline_messages(
    deadline: Deadline, policy: Policy, calendar: WorkingCalendar, not_before: datetime
) -> tuple[Message, ...]:
    """Reminders before and on the day, then overdue reminders riding the escalation ladder.

    Messages earlier than `not_before` (the publication notice, or a revision) are left out.
    For the inspectorate's revisit-by limit: notices to the inspectors, then the automatic opening.
    """
    if not deadline.reminded:
        return ()
    messages: list[Message] = []
    send = calendar.send_at

    if deadline.party is Party.INSPECTORATE:
        for n in policy.revisit.notice_working_days_before:
            day = calendar.add_working_days(deadline.due, -n)
            messages.append(Message(calendar.at(day, send), MessageKind.REVISIT_NOTICE, deadline.key, policy.revisit.notify, n))
        messages.append(Message(calendar.at(deadline.due, send), MessageKind.REVISIT_OPENS, deadline.key, policy.revisit.notify))
    else:
        contact = PARTY_CONTACT[deadline.party]
        r = policy.reminders
        for n in r.working_days_before:
            day = calendar.add_working_days(deadline.due, -n)
            messages.append(Message(calendar.at(day, send), MessageKind.REMINDER, deadline.key, (contact,), n))
        if r.on_the_day:
            messages.append(Message(calendar.at(deadline.due, send), MessageKind.DUE_TODAY, deadline.key, (contact,)))
        overdue_steps = {k * r.overdue_every_working_days for k in range(1, r.overdue_reminders + 1)}
        overdue_steps |= {rung.after_working_days_overdue for rung in policy.escalation}
        previous_rung = None
        for n in sorted(overdue_steps):
            at = calendar.at(calendar.add_working_days(deadline.due, n), send)
            rung = policy.rung_for(n)
            # A new rung escalates; later overdue reminders keep telling everyone that rung reached.
            kind = MessageKind.ESCALATION if rung is not None and rung != previous_rung else MessageKind.OVERDUE
            recipients = _unique((contact, *rung.notify)) if rung else (contact,)
            messages.append(Message(at, kind, deadline.key, recipients, -n, rung.rung if rung else None))
            previous_rung = rung
    return tuple(m for m in messages if m.at >= not_before)


def evidence_deadline(ref: str, requested_at: datetime, policy: Policy, calendar: WorkingCalendar) -> Deadline:
    """The force's evidence deadline when the revisit asks at `requested_at`: that day plus the
    policy's working days (always a working day, so it never moves)."""
    due = calendar.add_working_days(calendar.local(requested_at).date(), policy.review.evidence_due_working_days)
    return Deadline(
        key=f"evidence:{ref}",
        kind=DeadlineKind.EVIDENCE,
        party=Party.FORCE,
        nominal=due,
        due=due,
        due_at=calendar.at(due, calendar.working_day_end),
        recommendation_ref=ref,
    )


# Messages of one instant in the order the workflows send them: the report notice first; the
# revisit's opening before the evidence requests it causes.
_SAME_INSTANT_ORDER = {MessageKind.PUBLISHED: 0, MessageKind.REVISIT_OPENED: 2, MessageKind.EVIDENCE_REQUEST: 3}


def plan_report(
    published: date,
    timeframes: Sequence[tuple[str, Timeframe]],
    policy: Policy,
    calendar: WorkingCalendar,
) -> Timeline:
    """The whole timeline of a report if nobody acts: every message the workflows send, in time order.

    Nobody acting, the revisit opens by itself at the revisit-by limit (REVISIT_OPENED). From that
    instant the recommendations' own deadline messages stop: each recommendation is asked for
    evidence instead (EVIDENCE_REQUEST), and the evidence deadline gets its reminders, due-today,
    overdue and escalation messages like any force deadline. Its messages count from just after the
    request (one at the very instant of the request would repeat it). Report-level deadlines keep
    their messages whatever the revisit does.
    """
    published_at = calendar.next_send_time(calendar.at(published, time(0, 0)))
    deadlines = report_deadlines(published, timeframes, policy, calendar)
    revisit = next(d for d in deadlines if d.kind is DeadlineKind.REVISIT_BY)
    opens_at = max(calendar.at(revisit.due, calendar.send_at), published_at)
    messages = [Message(published_at, MessageKind.PUBLISHED, "published", PUBLISHED_RECIPIENTS)]
    for deadline in deadlines:
        for message in deadline_messages(deadline, policy, calendar, not_before=published_at):
            if message.kind is MessageKind.REVISIT_OPENS:
                message = replace(message, kind=MessageKind.REVISIT_OPENED, recipients=REVISIT_OPENED_RECIPIENTS)
            elif deadline.kind is DeadlineKind.RECOMMENDATION and message.at >= opens_at:
                continue  # the revisit has opened: evidence is asked for instead
            messages.append(message)
    evidence = tuple(evidence_deadline(ref, opens_at, policy, calendar) for ref, _ in timeframes)
    for deadline in evidence:
        messages.append(Message(opens_at, MessageKind.EVIDENCE_REQUEST, deadline.key, EVIDENCE_REQUEST_RECIPIENTS))
        messages.extend(m for m in deadline_messages(deadline, policy, calendar, not_before=opens_at) if m.at > opens_at)
    messages.sort(key=lambda m: (m.at, _SAME_INSTANT_ORDER.get(m.kind, 1), m.deadline_key, m.kind))
    return Timeline(published, published_at, deadlines, tuple(messages), opens_at, evidence)


@dataclass(frozen=True)
class TimeScale:
    """Maps the policy calendar onto a faster clock, for demonstrations and end-to-end checks.

    A calendar instant t becomes clock_origin + (t - calendar_origin) / factor: with factor 1 and the
    same origin it is the identity; with factor 10,000 six months pass in about 26 minutes.
    """

    factor: float = 1.0
    calendar_origin: datetime = datetime(2000, 1, 1, tzinfo=timezone.utc)
    clock_origin: datetime = datetime(2000, 1, 1, tzinfo=timezone.utc)

    def __post_init__(self) -> None:
        if not self.factor > 0:
            raise ValueError(f"time scale must be > 0, got {self.factor}")

    def to_clock(self, calendar_instant: datetime) -> datetime:
        if self.factor == 1 and self.calendar_origin == self.clock_origin:
            return calendar_instant
        return self.clock_origin + (calendar_instant - self.calendar_origin) / self.factor

    def to_calendar(self, clock_instant: datetime) -> datetime:
        if self.factor == 1 and self.calendar_origin == self.clock_origin:
            return clock_instant
        return self.calendar_origin + (clock_instant - self.clock_origin) * self.factor

    def duration(self, calendar_span: timedelta) -> timedelta:
        """How long a span of the policy calendar lasts on the clock."""
        return calendar_span / self.factor
