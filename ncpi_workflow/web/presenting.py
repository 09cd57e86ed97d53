"""Workflow views and records turned into what the pages show, the same shape from either source:
the live "state" Query when Temporal answers, the database's records otherwise."""

from __future__ import annotations

import asyncio
from typing import Any

from ncpi_workflow.errors import UserError

PAGE_QUERY_SECONDS = 5.0
"""A page waits this long for a workflow's state before showing the records alone."""


async def live_view(services, kind: str, business_id: str):
    """(the workflow's view, None) or (None, the one-line reason it is not available)."""
    from ncpi_workflow.app.temporal_calls import query_state

    try:
        client = await services.client()
        view = await asyncio.wait_for(query_state(services.settings, client, kind, business_id), PAGE_QUERY_SECONDS)
        return view, None
    except asyncio.TimeoutError:
        return None, f"no answer from the workflow of {business_id} within {PAGE_QUERY_SECONDS:g} s (is a worker running?)"
    except UserError as exc:
        return None, str(exc)


def tracked_deadline(d, recorded=None) -> dict[str, Any]:
    """`recorded`: the records' `read_models.RecordedDates` (when a back-dated receipt was recorded)."""
    return {
        "key": d.key, "due": d.due, "original_due": d.original_due, "met_at": d.met_at, "cycle": d.cycle,
        "met_recorded_at": (recorded.met.get((d.key, d.cycle)) or recorded.any_at(d.met_at)) if recorded is not None else None,
        "revisions": [
            {"at": r.at, "by": r.by, "previous_due": r.previous_due, "new_due": r.new_due, "reason": r.reason}
            for r in d.revisions
        ],
    }


def recorded_deadline(d) -> dict[str, Any]:
    return {
        "key": d.key, "due": d.current_due, "original_due": d.original_due, "met_at": d.met_at, "cycle": d.cycle,
        "met_recorded_at": getattr(d, "met_recorded_at", None),
        "revisions": [
            {"at": r.changed_at, "by": r.changed_by, "previous_due": r.previous_due, "new_due": r.new_due, "reason": r.reason}
            for r in d.revisions
        ],
    }


def history_entries(view, recorded=None) -> list[dict[str, Any]]:
    """`recorded`: `read_models.RecordedDates`, to show when each back-dated action was recorded."""
    from ncpi_workflow.views import history_recorded

    entries = []
    for h in view.state.history:
        detail, recorded_at = history_recorded(h, recorded)
        entries.append({"at": h.at, "event": h.event, "by": h.by, "detail": detail, "recorded_at": recorded_at})
    return entries


def audit_entries(events) -> list[dict[str, Any]]:
    out = []
    for e in events:
        detail = e.detail or {}
        shown = "; ".join(f"{k.replace('_', ' ')}: {v}" for k, v in detail.items() if v not in (None, "", [], {}))
        out.append({"at": e.occurred_at, "event": e.action.replace(".", " ").replace("_", " "), "by": e.actor, "detail": shown,
                    "recorded_at": None})
    return out
