"""All forces at a glance."""

from __future__ import annotations

from datetime import datetime, timezone
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request

from ncpi_workflow.app import read_models
from ncpi_workflow.errors import UserError
from ncpi_workflow.views import words
from ncpi_workflow.web.auth import Principal, services, signed_in
from ncpi_workflow.web.rendering import render
from ncpi_workflow.web.services import london_today

router = APIRouter()

COLUMNS = [
    ("force", "Force", False),
    ("open", "Open recommendations", True),
    ("overdue", "Overdue", True),
    ("next_deadline", "Next deadline", False),
    ("revisits", "Revisits due within 30 days", True),
    ("rag", "Status", False),
]


@router.get("/")
async def all_forces(
    request: Request,
    programme: str | None = None,
    phase: str | None = None,
    sort: str = "force",
    order: str = "asc",
    user: Principal = Depends(signed_in),
):
    svc = services(request)
    programme = programme or None
    phase = phase or None
    if svc.today is london_today:
        # The product's clock (the app's), through the follow-ups' time scale: the calendar's today.
        now = datetime.fromtimestamp(svc.clock(), timezone.utc)
        today = await read_models.calendar_today(svc.sessions, svc.client, now)
    else:
        today = svc.today()  # fixed by the app's maker (tests, demonstrations)
    try:
        board = await read_models.dashboard(
            svc.sessions, today=today, programme=programme, phase=phase, sort=sort, descending=order == "desc"
        )
    except UserError as exc:
        return render(request, "error.html", 400, title="This page cannot be shown", message=str(exc))

    def sort_link(key: str) -> str:
        descending = not board.descending if board.sort == key else key in ("open", "overdue", "revisits")
        query = {k: v for k, v in (("programme", programme), ("phase", phase)) if v}
        query.update(sort=key, order="desc" if descending else "asc")
        return "/?" + urlencode(query)

    columns = [
        {
            "key": key, "label": label, "numeric": numeric, "href": sort_link(key),
            "aria_sort": ("descending" if board.descending else "ascending") if board.sort == key else "none",
        }
        for key, label, numeric in COLUMNS
    ]
    totals = {
        "open": sum(f.open_recommendations for f in board.forces),
        "overdue": sum(f.overdue for f in board.forces),
        "revisits": sum(f.revisits_due for f in board.forces),
        "red": sum(f.rag == "red" for f in board.forces),
        "amber": sum(f.rag == "amber" for f in board.forces),
    }
    programme_items = [{"value": "", "text": "All programmes"}] + [
        {"value": p, "text": p, "selected": board.programme == p} for p in board.programmes
    ]
    phase_items = [{"value": "", "text": "All phases"}] + [
        {"value": p, "text": words(p).capitalize(), "selected": board.phase == p} for p in read_models.OPEN_PHASES
    ]
    return render(
        request, "dashboard.html", title="All forces", board=board, columns=columns, totals=totals,
        programme_items=programme_items, phase_items=phase_items, soon_days=read_models.SOON_DAYS,
    )
