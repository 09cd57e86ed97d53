"""The follow-up policy: how long each clock runs, when reminders go out, who is told when overdue.

`Policy` is plain frozen dataclasses so that it can travel as Temporal workflow input unchanged;
`load_policy` is the only part that reads a file.
"""


import tomllib
from dataclasses import dataclass, field
from datetime import date, datetime, time
from pathlib import Path
from typing import Any

from dateutil.relativedelta import relativedelta

from ncpi_workflow.errors import UserError

CONTACT_ROLES = ("liaison_officer", "chief_officer", "pcc")
"""The force contact roles held in config/forces.yaml."""

RECIPIENT_ROLES = CONTACT_ROLES + ("lead_hm_inspector", "inspectors")
"""Every role a message can be addressed to: the force's contacts and the inspectorate's staff."""


@dataclass(frozen=True)
class Period:
    """A span measured from the publication date: days, weeks and calendar months."""

    days: int = 0
    weeks: int = 0
    months: int = 0

    def as_relativedelta(self) -> relativedelta:
        return relativedelta(months=self.months, weeks=self.weeks, days=self.days)

    def describe(self) -> str:
        parts = [
            f"{n} {unit}{'' if n == 1 else 's'}"
            for n, unit in ((self.months, "month"), (self.weeks, "week"), (self.days, "day"))
            if n
        ]
        return " ".join(parts) or "0 days"


@dataclass(frozen=True)
class DeadlinePolicy:
    immediate_update: Period = Period(days=28)
    action_plan: Period = Period(weeks=6)
    pcc_response: Period = Period(days=56)
    within_three_months: Period = Period(months=3)
    within_six_months: Period = Period(months=6)
    revisit_by: Period = Period(months=6)
    further_follow_up: Period = Period(months=3)


@dataclass(frozen=True)
class CalendarPolicy:
    timezone: str = "Europe/London"
    bank_holidays: str = "england-and-wales"
    working_day_start: time = time(9, 0)
    working_day_end: time = time(17, 0)
    send_at: time = time(9, 0)
    extra_bank_holidays: tuple[date, ...] = ()
    """Bank holidays the `holidays` package does not (yet) know, e.g. one announced for a royal event."""


@dataclass(frozen=True)
class ReminderPolicy:
    working_days_before: tuple[int, ...] = (10, 3)
    on_the_day: bool = True
    overdue_every_working_days: int = 5
    overdue_reminders: int = 4


@dataclass(frozen=True)
class EscalationRung:
    rung: str
    after_working_days_overdue: int
    notify: tuple[str, ...]


@dataclass(frozen=True)
class RevisitPolicy:
    notice_working_days_before: tuple[int, ...] = (20, 10)
    notify: tuple[str, ...] = ("inspectors",)


@dataclass(frozen=True)
class ReviewPolicy:
    evidence_due_working_days: int = 10
    """Working days the force has to send evidence once the revisit asks for it."""
    reopen_window: Period = Period(months=12)
    """How long a closed recommendation can still be re-opened in its own workflow."""


DEFAULT_ESCALATION = (
    EscalationRung("chief_officer", 5, ("liaison_officer", "chief_officer")),
    EscalationRung("chief_officer_and_pcc", 10, ("liaison_officer", "chief_officer", "pcc")),
    EscalationRung("lead_hm_inspector", 20, ("liaison_officer", "chief_officer", "pcc", "lead_hm_inspector")),
)


@dataclass(frozen=True)
class Policy:
    deadlines: DeadlinePolicy = field(default_factory=DeadlinePolicy)
    calendar: CalendarPolicy = field(default_factory=CalendarPolicy)
    reminders: ReminderPolicy = field(default_factory=ReminderPolicy)
    escalation: tuple[EscalationRung, ...] = DEFAULT_ESCALATION
    revisit: RevisitPolicy = field(default_factory=RevisitPolicy)
    review: ReviewPolicy = field(default_factory=ReviewPolicy)

    def rung_for(self, working_days_overdue: int) -> EscalationRung | None:
        """The highest rung reached after this many working days overdue, if any."""
        reached = [r for r in self.escalation if r.after_working_days_overdue <= working_days_overdue]
        return max(reached, key=lambda r: r.after_working_days_overdue, default=None)


def _period(where: str, raw: Any) -> Period:
    if not isinstance(raw, dict) or not raw or set(raw) - {"days", "weeks", "months"}:
        raise ValueError(f"{where}: expected a table of days, weeks and/or months, got {raw!r}")
    for unit, n in raw.items():
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"{where}.{unit}: expected a whole number of {unit} >= 0, got {n!r}")
    return Period(**raw)


def _time(where: str, raw: Any) -> time:
    try:
        return time.fromisoformat(raw)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: expected a time such as \"09:00\", got {raw!r}") from None


def _dates(where: str, raw: Any) -> tuple[date, ...]:
    """TOML dates (2022-09-19) or ISO strings ("2022-09-19"), sorted, each once."""
    if not isinstance(raw, list):
        raise ValueError(f"{where}: expected a list of dates such as 2022-09-19, got {raw!r}")
    days = set()
    for item in raw:
        if isinstance(item, str):
            try:
                item = date.fromisoformat(item)
            except ValueError:
                raise ValueError(f"{where}: {item!r} is not a date such as 2022-09-19") from None
        if not isinstance(item, date) or isinstance(item, datetime):
            raise ValueError(f"{where}: {item!r} is not a date such as 2022-09-19")
        days.add(item)
    return tuple(sorted(days))


def _positive_ints(where: str, raw: Any) -> tuple[int, ...]:
    if not isinstance(raw, list) or not all(isinstance(n, int) and n > 0 for n in raw):
        raise ValueError(f"{where}: expected a list of whole numbers > 0, got {raw!r}")
    return tuple(sorted(set(raw), reverse=True))


def _roles(where: str, raw: Any) -> tuple[str, ...]:
    if not isinstance(raw, list) or not raw or any(r not in RECIPIENT_ROLES for r in raw):
        raise ValueError(f"{where}: expected a list of roles among {', '.join(RECIPIENT_ROLES)}, got {raw!r}")
    return tuple(raw)


def policy_from_mapping(data: dict[str, Any]) -> Policy:
    """Build a Policy from the parsed TOML, raising ValueError naming the key at fault."""
    unknown = set(data) - {"deadlines", "calendar", "reminders", "escalation", "revisit", "review"}
    if unknown:
        raise ValueError(f"unknown section(s): {', '.join(sorted(unknown))}")
    defaults = Policy()
    d = data.get("deadlines", {})
    deadline_names = DeadlinePolicy.__dataclass_fields__
    for key in d:
        if key not in deadline_names:
            raise ValueError(f"deadlines.{key}: unknown deadline; known: {', '.join(deadline_names)}")
    deadlines = DeadlinePolicy(**{k: _period(f"deadlines.{k}", v) for k, v in d.items()})

    c = data.get("calendar", {})
    if c.get("bank_holidays", "england-and-wales") != "england-and-wales":
        raise ValueError(f"calendar.bank_holidays: only 'england-and-wales' is supported, got {c['bank_holidays']!r}")
    calendar = CalendarPolicy(
        timezone=c.get("timezone", defaults.calendar.timezone),
        working_day_start=_time("calendar.working_day_start", c.get("working_day_start", "09:00")),
        working_day_end=_time("calendar.working_day_end", c.get("working_day_end", "17:00")),
        send_at=_time("calendar.send_at", c.get("send_at", "09:00")),
        extra_bank_holidays=_dates("calendar.extra_bank_holidays", c.get("extra_bank_holidays", [])),
    )
    if not calendar.working_day_start <= calendar.send_at < calendar.working_day_end:
        raise ValueError("calendar.send_at: must fall inside working hours")
    try:
        from zoneinfo import ZoneInfo

        ZoneInfo(calendar.timezone)
    except Exception:
        raise ValueError(f"calendar.timezone: unknown time zone {calendar.timezone!r}") from None

    r = data.get("reminders", {})
    reminders = ReminderPolicy(
        working_days_before=_positive_ints(
            "reminders.working_days_before", r.get("working_days_before", list(defaults.reminders.working_days_before))
        ),
        on_the_day=bool(r.get("on_the_day", True)),
        overdue_every_working_days=_positive_ints(
            "reminders.overdue_every_working_days", [r.get("overdue_every_working_days", 5)]
        )[0],
        overdue_reminders=int(r.get("overdue_reminders", 4)),
    )

    escalation = defaults.escalation
    if "escalation" in data:
        rungs = []
        for i, raw in enumerate(data["escalation"]):
            where = f"escalation[{i}]"
            after = raw.get("after_working_days_overdue")
            if not isinstance(after, int) or after <= 0:
                raise ValueError(f"{where}.after_working_days_overdue: expected a whole number > 0, got {after!r}")
            if not raw.get("rung"):
                raise ValueError(f"{where}.rung: a name is required")
            rungs.append(EscalationRung(str(raw["rung"]), after, _roles(f"{where}.notify", raw.get("notify"))))
        escalation = tuple(sorted(rungs, key=lambda rung: rung.after_working_days_overdue))

    v = data.get("revisit", {})
    revisit = RevisitPolicy(
        notice_working_days_before=_positive_ints(
            "revisit.notice_working_days_before",
            v.get("notice_working_days_before", list(defaults.revisit.notice_working_days_before)),
        ),
        notify=_roles("revisit.notify", v.get("notify", list(defaults.revisit.notify))),
    )
    w = data.get("review", {})
    review = ReviewPolicy(
        evidence_due_working_days=_positive_ints(
            "review.evidence_due_working_days", [w.get("evidence_due_working_days", defaults.review.evidence_due_working_days)]
        )[0],
        reopen_window=_period("review.reopen_window", w["reopen_window"]) if "reopen_window" in w else defaults.review.reopen_window,
    )
    return Policy(deadlines, calendar, reminders, escalation, revisit, review)


def load_policy(path: Path) -> Policy:
    """Read a policy file; a UserError names the file, the key and the reason."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: policy file not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid TOML: {exc}") from None
    try:
        return policy_from_mapping(data)
    except (ValueError, TypeError, AttributeError) as exc:
        raise UserError(f"{path}: {exc}") from None
