"""Form helpers: values out of a POST, dates from a GOV.UK date input, and refusals as a GOV.UK
error summary whose links go to the field at fault."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date


@dataclass
class Refusal:
    """What a page needs to show a refused form: the summary and the message at each field."""

    form: str
    errors: list[dict] = field(default_factory=list)
    field_errors: dict[str, str] = field(default_factory=dict)
    values: dict[str, str] = field(default_factory=dict)

    def add(self, field_id: str, message: str, sentence: bool = True) -> "Refusal":
        """`sentence`: show a validator's reason as a sentence (capital first letter), as GOV.UK error
        messages are; a problem line naming a file keeps its exact text."""
        if sentence and message[:1].islower():
            message = message[0].upper() + message[1:]
        self.errors.append({"text": message, "href": f"#{field_id}"})
        self.field_errors.setdefault(field_id, message)
        return self

    def context(self) -> dict:
        return {"errors": self.errors, "field_errors": self.field_errors, "values": self.values, "refused_form": self.form}


def field_for(message: str, rules: list[tuple[str, str]], default: str) -> str:
    """The field a validator's reason is about: the first rule whose words appear in it."""
    lowered = message.lower()
    for words, field_id in rules:
        if words in lowered:
            return field_id
    return default


def text(form, name: str) -> str:
    value = form.get(name)
    return value.strip() if isinstance(value, str) else ""


class DateProblem(ValueError):
    pass


def date_from(form, prefix: str, what: str = "the new date") -> date:
    """A date from the three fields of a GOV.UK date input (`prefix-day`, `-month`, `-year`)."""
    parts = [text(form, f"{prefix}-{p}") for p in ("day", "month", "year")]
    if not any(parts):
        raise DateProblem(f"Enter {what}")
    if not all(parts):
        missing = [name for name, value in zip(("day", "month", "year"), parts) if not value]
        raise DateProblem(f"{what[:1].upper()}{what[1:]} must include a {' and '.join(missing)}")
    try:
        day, month, year = (int(p) for p in parts)
        if year < 1000:
            raise ValueError
        return date(year, month, day)
    except ValueError:
        raise DateProblem(f"{what[:1].upper()}{what[1:]} must be a real date, for example 27 3 2027") from None


HAPPENED = "on"
"""The name prefix of the optional "Date it happened" input of the inspectors' action forms (back-dating)."""


def happened_on(form, refusal: Refusal, field_id: str) -> date | None:
    """The optional "Date it happened" (`on-day`, `-month`, `-year`): None when left blank (it happened
    now); a bad date is added to `refusal` at `field_id` (the day field) and gives None. The values
    typed are kept in the refusal, so the form shows them again."""
    parts = {f"{HAPPENED}-{p}": text(form, f"{HAPPENED}-{p}") for p in ("day", "month", "year")}
    refusal.values.update(parts)
    if not any(parts.values()):
        return None
    try:
        return date_from(form, HAPPENED, "the date it happened")
    except DateProblem as exc:
        refusal.add(field_id, str(exc))
        return None


def happened_reason(message: str) -> str:
    """A workflow's refusal of a back-dating day, worded for the form: the validators name the CLI's
    option ("--on 2027-01-01 is in the future ..."); the page names its field."""
    import re

    found = re.match(r"--on (\d{4})-(\d{2})-(\d{2})\b", message)
    if not found:
        return message
    day = date(int(found[1]), int(found[2]), int(found[3]))
    return f"The date it happened ({day.day} {day:%B %Y})" + message[found.end():]


HAPPENED_WORDS = ("--on ", "the date it happened", "before its revisit", "before the revisit")
"""Words of a refusal that is about the day given (field_for rules for the date field)."""
