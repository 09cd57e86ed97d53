"""/metrics: the figures and their pictures for signed-in users (viewers too), computed from the
public register document alone (ncpi_workflow/metrics.py), the same as `ncpi metrics`."""

from __future__ import annotations

from datetime import datetime, timezone

from fastapi import APIRouter, Depends, Request

from ncpi_workflow.app import read_models
from ncpi_workflow.charts import KIND_LABELS, all_charts
from ncpi_workflow.forces import load_forces
from ncpi_workflow.metrics import (
    BANDS, ITEM_KINDS, TIMEFRAMES, checked_filters, compute_metrics, percent, scope_words,
)
from ncpi_workflow.register import build_register
from ncpi_workflow.web.auth import Principal, services, signed_in
from ncpi_workflow.web.rendering import render
from ncpi_workflow.web.services import london_today

router = APIRouter()
FIELDS = {"start": "from", "end": "to", "force": "force", "theme": "theme"}


async def _today(svc):
    if svc.today is london_today:
        # The product's clock through the follow-ups' time scale, as the dashboard and /register.
        now = datetime.fromtimestamp(svc.clock(), timezone.utc)
        return await read_models.calendar_today(svc.sessions, svc.client, now)
    return svc.today()


@router.get("/metrics")
async def metrics_page(request: Request, user: Principal = Depends(signed_in)):
    svc = services(request)
    query = request.query_params
    values = {key: (query.get(name) or "").strip()[:200] for key, name in FIELDS.items()}
    today = await _today(svc)
    async with svc.sessions() as session:
        doc = await build_register(session, today=today)
    forces = load_forces(svc.settings.forces_file)
    errors = []
    field_errors = {}
    try:
        start, end, force, theme = checked_filters(
            values["start"] or None, values["end"] or None, values["force"] or None, values["theme"] or None,
            known_forces=set(forces), known_themes=set(doc.themes),
            names={"start": "Published from", "end": "Published to", "force": "Force", "theme": "Theme"},
        )
    except ValueError as exc:
        message = str(exc)
        label = message.split(":", 1)[0]
        field = {"Published from": "from", "Published to": "to", "Force": "force", "Theme": "theme"}.get(label, "from")
        errors.append({"text": message, "href": f"#{field}"})
        field_errors[field] = message
        start = end = force = theme = None
    context = dict(
        title="Figures", nav="metrics", values=values, errors=errors, field_errors=field_errors,
        force_items=[{"value": "", "text": "All forces"}] + [
            {"value": code, "text": forces[code].name, "selected": values["force"] == code}
            for code in sorted(forces, key=lambda c: forces[c].name)
        ],
        theme_items=[{"value": "", "text": "All themes"}] + [
            {"value": code, "text": label, "selected": values["theme"] == code} for code, label in doc.themes.items()
        ],
        bands=[b for b, _, _ in BANDS], kinds=[(k, KIND_LABELS[k]) for k in ITEM_KINDS], timeframes=TIMEFRAMES,
        percent=percent, number=lambda v: "No data" if v is None else f"{v:g}",
        theme_labels=doc.themes,
    )
    if errors:
        return render(request, "metrics.html", 400, m=None, charts={}, **context)
    m = compute_metrics(doc, start=start, end=end, force=force, theme=theme)
    charts = {c.name: c for c in all_charts(m)}
    rows = [("National", None, m.national)] + [(f.name, f.code, f.figures) for f in m.forces]
    return render(request, "metrics.html", m=m, charts=charts, rows=rows, scope=scope_words(m), **context)
