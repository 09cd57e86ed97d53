"""Hand-built register documents for the figures' tests (issue 14 §4); no tests of its own.

The documents are made of ncpi_workflow.register's own dataclasses when that module exists; until
then (REGISTER and METRICS were built at the same time) of stand-ins with the contract's fields.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import date

try:
    from ncpi_workflow.register import RegisterDocument, RegisterInspection, RegisterRecommendation  # noqa: F401
    REAL_REGISTER = True
except ImportError:  # pragma: no cover - only while register.py does not exist
    REAL_REGISTER = False

    @dataclass
    class RegisterRecommendation:  # type: ignore[no-redef]
        id: str
        inspection_id: str
        ref: str
        force_code: str
        force_name: str
        report_title: str
        report_url: str
        published_on: date
        text: str
        timeframe: str
        themes: list
        status: str
        trail: list
        due_on: date | None
        closed_on: date | None
        outcome: str | None
        open: bool
        overdue_days: int | None

    @dataclass
    class RegisterInspection:  # type: ignore[no-redef]
        id: str
        force_code: str
        force_name: str
        title: str
        url: str
        programme: str
        published_on: date
        action_plan_due_on: date | None
        action_plan_received_on: date | None
        pcc_response_due_on: date | None
        pcc_response_received_on: date | None
        revisit_by: date | None
        revisit_opened_on: date | None

    @dataclass
    class RegisterDocument:  # type: ignore[no-redef]
        generated_on: date
        recommendations: list = field(default_factory=list)
        inspections: list = field(default_factory=list)


FORCE_NAMES = {"CUM": "Cumbria Constabulary", "KEN": "Kent Police", "DUR": "Durham Constabulary"}


def _make(cls, values: dict):
    """cls(**values), giving any further field of the real class its empty value."""
    for f in dataclasses.fields(cls):
        if f.name not in values and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            values[f.name] = None
    return cls(**values)


def rec(force: str, published: date, n: int = 1, *, timeframe: str = "within_three_months", closed_on: date | None = None,
        outcome: str | None = None, overdue_days: int | None = None, themes=(), due_on: date | None = None):
    inspection_id = f"{force}-{published.isoformat()}"
    is_open = closed_on is None and outcome not in ("achieved", "withdrawn", "superseded")
    return _make(RegisterRecommendation, dict(
        id=f"{inspection_id}-R{n}", inspection_id=inspection_id, ref=f"R{n}", force_code=force,
        force_name=FORCE_NAMES[force], report_title=f"{FORCE_NAMES[force]}: child protection",
        report_url="https://www.justiceinspectorates.gov.uk/hmicfrs/", published_on=published,
        text=f"Recommendation {n}", timeframe=timeframe, themes=list(themes),
        status="being progressed" if is_open else "no further action needed", trail=[], due_on=due_on,
        closed_on=closed_on, outcome=outcome, open=is_open, overdue_days=overdue_days,
    ))


def inspection(force: str, published: date, *, plan_due=None, plan_received=None, pcc_due=None, pcc_received=None,
               revisit_opened=None):
    return _make(RegisterInspection, dict(
        id=f"{force}-{published.isoformat()}", force_code=force, force_name=FORCE_NAMES[force],
        title=f"{FORCE_NAMES[force]}: child protection", url="https://www.justiceinspectorates.gov.uk/hmicfrs/",
        programme="NCPI", published_on=published, action_plan_due_on=plan_due, action_plan_received_on=plan_received,
        pcc_response_due_on=pcc_due, pcc_response_received_on=pcc_received, revisit_by=None,
        revisit_opened_on=revisit_opened,
    ))


def document(today: date, recommendations=(), inspections=()):
    return _make(RegisterDocument, dict(generated_on=today, recommendations=list(recommendations),
                                        inspections=list(inspections)))
