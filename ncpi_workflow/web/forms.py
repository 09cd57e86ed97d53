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


def date_from(form, prefix: str) -> date:
    """A date from the three fields of a GOV.UK date input (`prefix-day`, `-month`, `-year`)."""
    parts = [text(form, f"{prefix}-{p}") for p in ("day", "month", "year")]
    if not any(parts):
        raise DateProblem("Enter the new date")
    if not all(parts):
        missing = [name for name, value in zip(("day", "month", "year"), parts) if not value]
        raise DateProblem(f"The new date must include a {' and '.join(missing)}")
    try:
        day, month, year = (int(p) for p in parts)
        if year < 1000:
            raise ValueError
        return date(year, month, day)
    except ValueError:
        raise DateProblem("The new date must be a real date, for example 27 3 2027") from None
