"""How the CLI shows follow-up state: text for people, JSON for tools.

Workflow views (the "state" Query) are dumped with pydantic, the same way the data converter sends
them; database rows (the status projection, the outbox) are turned into plain dictionaries first so
that the text and the JSON say the same thing.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Iterable

from pydantic import TypeAdapter

from ncpi_workflow.formatting import LONDON, long_date, short_datetime
from ncpi_workflow.lifecycle import (
    REGISTER_STATUS,
    InspectionView,
    Phase,
    RecommendationView,
    TrackedDeadline,
)

DEADLINE_NAMES = {
    "immediate_update": "update on immediate recommendations",
    "action_plan": "force action plan",
    "pcc_response": "PCC's published response",
    "revisit_by": "revisit no later than",
    "recommendation": "recommendation",
    "evidence": "evidence",
}


def words(value: Any) -> str:
    """'evidence_requested' -> 'evidence requested'; None -> '-'."""
    if value is None:
        return "-"
    return str(getattr(value, "value", value)).replace("_", " ")


def utc(instant: datetime | None) -> datetime | None:
    """Datetimes read back from SQLite are naive; every one we write is UTC."""
    if instant is None:
        return None
    return instant if instant.tzinfo is not None else instant.replace(tzinfo=timezone.utc)


def when(instant: datetime | None) -> str:
    return short_datetime(utc(instant), LONDON) if instant is not None else "-"


def london_iso(instant: datetime | None) -> str | None:
    return utc(instant).astimezone(LONDON).isoformat() if instant is not None else None


def register_status(phase: str) -> str:
    try:
        return REGISTER_STATUS[Phase(phase)]
    except ValueError:
        return phase


def dump(view: InspectionView | RecommendationView) -> dict[str, Any]:
    return TypeAdapter(type(view)).dump_python(view, mode="json")


# ---------------------------------------------------------------- workflow views (`ncpi show`)


def _deadline_lines(deadline: TrackedDeadline) -> list[str]:
    name = DEADLINE_NAMES.get(deadline.key, words(deadline.key))
    verb = "" if deadline.key == "revisit_by" else " due"
    line = f"  {name}{verb} {long_date(deadline.due)}"
    if deadline.due != deadline.original_due:
        line += f" (originally {long_date(deadline.original_due)})"
    if deadline.cycle > 1:
        line += f", cycle {deadline.cycle}"
    if deadline.met_at is not None:
        line += f"; met {when(deadline.met_at)}"
    lines = [line]
    for r in deadline.revisions:
        lines.append(
            f"    revised {when(r.at)} by {r.by}: {r.previous_due.isoformat()} -> {r.new_due.isoformat()} ({r.reason})"
        )
    return lines


def _history_lines(history) -> list[str]:
    lines = []
    for entry in history:
        line = f"  {when(entry.at):<22} {entry.event}"
        if entry.by and entry.by != "system":
            line += f" (by {entry.by})"
        if entry.detail:
            line += f": {entry.detail}"
        lines.append(line)
    return lines or ["  -"]


def _next_line(action: str | None, at: datetime | None) -> str:
    if not action:
        return "Next: nothing further"
    return f"Next: {action}" + (f", {when(at)}" if at else "")


def render_recommendation(view: RecommendationView) -> list[str]:
    s = view.state
    lines = [
        f"{view.recommendation_id} (workflow {view.workflow_id})",
        f"Phase: {words(s.phase)}, cycle {s.cycle}; public register: {view.register_status}",
        f"Force's claim: {words(s.force_claim)}; outcome: {words(s.outcome)}",
        "Deadlines:",
        *_deadline_lines(s.deadline),
    ]
    if s.evidence_deadline is not None:
        lines += _deadline_lines(s.evidence_deadline)
    lines.append(_next_line(view.next_action, view.next_action_at))
    if s.closed_at is not None:
        lines.append(f"Closed: {when(s.closed_at)}")
    lines.append("Evidence:")
    if s.evidence:
        for e in s.evidence:
            lines.append(
                f"  {e.filename} ({e.size_bytes:,} bytes, sha256 {e.sha256[:12]}), cycle {e.cycle}, by {e.by}, {when(e.at)}"
            )
    else:
        lines.append("  -")
    lines.append("History:")
    lines += _history_lines(s.history)
    lines.append(f"(calendar now {when(view.calendar_now)}, Europe/London)")
    return lines


def render_inspection(view: InspectionView) -> list[str]:
    s = view.state
    lines = [
        f"{view.inspection_id} (workflow {view.workflow_id})",
        f"Phase: {words(s.phase)}, cycle {s.cycle}",
        "Deadlines:",
    ]
    for deadline in s.deadlines:
        lines += _deadline_lines(deadline)
    if s.revisit_opened_at is not None:
        lines.append(f"Revisit: opened {when(s.revisit_opened_at)} ({s.revisit_trigger}, by {s.revisit_by})")
    lines.append(_next_line(view.next_action, view.next_action_at))
    if s.closed_at is not None:
        lines.append(f"Closed: {when(s.closed_at)}")
    lines.append("Open recommendations: " + (", ".join(s.open_recommendations) or "none"))
    if s.settled:
        lines.append("Decided this cycle: " + ", ".join(f"{r} {words(o)}" for r, o in s.settled.items()))
    lines.append("History:")
    lines += _history_lines(s.history)
    lines.append(f"(calendar now {when(view.calendar_now)}, Europe/London)")
    return lines


# ---------------------------------------------------------------- the database projection (`ncpi status`)


def ordered(recommendations: Iterable[Any]) -> list[Any]:
    """R1, R2, ..., R10 (not R1, R10, R2)."""
    return sorted(recommendations, key=lambda r: (len(r.ref), r.ref))


def status_records(inspections: Iterable[Any]) -> list[dict[str, Any]]:
    """One record per recommendation, with its inspection's projection, in inspection order."""
    records = []
    for insp in inspections:
        for rec in ordered(insp.recommendations):
            records.append(
                {
                    "inspection_id": insp.id,
                    "force": insp.force_code,
                    "published": insp.published_on.isoformat(),
                    "inspection_phase": insp.phase,
                    "inspection_cycle": insp.cycle,
                    "inspection_next_action": insp.next_action,
                    "inspection_next_action_at": london_iso(insp.next_action_at),
                    "recommendation_id": rec.id,
                    "ref": rec.ref,
                    "timeframe": rec.timeframe,
                    "phase": rec.phase,
                    "register_status": register_status(rec.phase),
                    "cycle": rec.cycle,
                    "force_claim": rec.force_claim,
                    "outcome": rec.outcome,
                    "next_action": rec.next_action,
                    "next_action_at": london_iso(rec.next_action_at),
                }
            )
    return records


def render_status(inspections: Iterable[Any], force_names: dict[str, str]) -> list[str]:
    lines: list[str] = []
    for insp in inspections:
        if lines:
            lines.append("")
        head = (
            f"{insp.id}  {force_names.get(insp.force_code, insp.force_code)}, published {long_date(insp.published_on)}: "
            f"{words(insp.phase)}, cycle {insp.cycle}"
        )
        if insp.next_action:
            head += f"; next: {insp.next_action}" + (f", {when(insp.next_action_at)}" if insp.next_action_at else "")
        lines.append(head)
        for rec in ordered(insp.recommendations):
            line = (
                f"  {rec.id:<20} {words(rec.timeframe):<20} {words(rec.phase):<19} cycle {rec.cycle}  "
                f"{register_status(rec.phase):<25}"
            )
            extras = []
            if rec.force_claim:
                extras.append(f"force claims {words(rec.force_claim)}")
            if rec.outcome:
                extras.append(f"outcome {words(rec.outcome)}")
            if rec.next_action:
                extras.append(f"next: {rec.next_action}" + (f", {when(rec.next_action_at)}" if rec.next_action_at else ""))
            lines.append((line + "  " + "; ".join(extras)).rstrip())
    return lines


# ---------------------------------------------------------------- the outbox (`ncpi outbox`)


def outbox_records(notifications: Iterable[Any]) -> list[dict[str, Any]]:
    return [
        {
            "id": n.id,
            "scheduled_for": london_iso(n.scheduled_for),
            "kind": n.kind,
            "status": n.status,
            "inspection_id": n.inspection_id,
            "recommendation_id": n.recommendation_id,
            "to": list((n.recipients or {}).get("to", [])),
            "subject": n.subject,
            "attempts": n.attempts,
            "sent_at": london_iso(n.sent_at),
        }
        for n in notifications
    ]


def render_outbox(records: list[dict[str, Any]]) -> list[str]:
    lines = []
    for r in records:
        scheduled = short_datetime(datetime.fromisoformat(r["scheduled_for"])) if r["scheduled_for"] else "-"
        lines.append(f"{r['id']:>5}  {scheduled:<22} {r['kind']:<17} {r['status']:<8} {', '.join(r['to'])}  {r['subject']}")
    return lines
