"""How dates, times and roles are written for people: British English, Europe/London."""

from __future__ import annotations

from datetime import date, datetime
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
