"""How dates, times and roles are written for people: British English, Europe/London."""

from __future__ import annotations

from datetime import date, datetime, timezone
from zoneinfo import ZoneInfo

LONDON = ZoneInfo("Europe/London")

ROLE_NAMES = {
    "liaison_officer": "liaison officer",
    "chief_officer": "chief officer",
    "pcc": "PCC",
    "lead_hm_inspector": "lead HM Inspector",
    "inspectors": "inspectors",
}


def long_date(day: date) -> str:
    """'Thursday 9 March 2017'."""
    return f"{day:%A} {day.day} {day:%B %Y}"


def short_datetime(instant: datetime, zone: ZoneInfo = LONDON) -> str:
    """'Thu 9 Mar 2017 09:00' in the given zone (London by default)."""
    local = instant.astimezone(zone)
    return f"{local:%a} {local.day} {local:%b %Y %H:%M}"


def roles(names: tuple[str, ...] | list[str]) -> str:
    return ", ".join(ROLE_NAMES.get(n, n) for n in names)


def timeframe(value: str) -> str:
    return value.replace("_", " ")


OUTCOME_WORDS = {
    "achieved": "achieved",
    "partially_achieved": "partially achieved",
    "not_achieved": "not achieved",
    "superseded": "superseded",
    "withdrawn": "withdrawn",
}


def outcome_words(value: str) -> str:
    """'partially_achieved' -> 'partially achieved'."""
    return OUTCOME_WORDS.get(value, value.replace("_", " "))


def role_name(value: str) -> str:
    """'lead_hm_inspector' -> 'lead HM Inspector'."""
    return ROLE_NAMES.get(value, value.replace("_", " "))


def and_list(items: tuple[str, ...] | list[str]) -> str:
    """'a', 'a and b', 'a, b and c' (British style: no serial comma)."""
    items = [str(i) for i in items]
    if len(items) <= 1:
        return "".join(items)
    return f"{', '.join(items[:-1])} and {items[-1]}"


def role_list(names: tuple[str, ...] | list[str]) -> str:
    """('liaison_officer', 'chief_officer', 'pcc') -> 'liaison officer, chief officer and PCC'."""
    return and_list([role_name(n) for n in dict.fromkeys(names)])


def as_utc_if_naive(instant: datetime) -> datetime:
    """An instant with its zone; a naive one is taken as UTC (how the records store instants:
    SQLite hands `DateTime(timezone=True)` columns back without a zone)."""
    return instant.replace(tzinfo=timezone.utc) if instant.tzinfo is None else instant


def local_date(value: date | datetime, zone: ZoneInfo = LONDON) -> date:
    """The calendar day of a date or instant, in the given zone (London by default)."""
    if isinstance(value, datetime):
        return as_utc_if_naive(value).astimezone(zone).date()
    if isinstance(value, date):
        return value
    raise TypeError(f"expected a date, got {value!r}")


def long_date_london(value: date | datetime) -> str:
    """long_date for a date, or for the London calendar day of an instant."""
    return long_date(local_date(value))


def when_words(value: date | datetime | None) -> str:
    """A date written long, an instant as a short London date and time, or 'no date'."""
    if value is None:
        return "no date"
    if isinstance(value, datetime):
        return short_datetime(as_utc_if_naive(value))
    return long_date(value)


def working_days_phrase(n: int | None) -> str:
    """10 -> 'in 10 working days'; 1 -> 'in 1 working day'; 0 -> 'today'; -3 -> '3 working days overdue'."""
    if n is None:
        return ""
    if n == 0:
        return "today"
    unit = "working day" if abs(n) == 1 else "working days"
    return f"in {n} {unit}" if n > 0 else f"{-n} {unit} overdue"
