"""How the CLI shows follow-up state: text for people, JSON for tools.

Workflow views (the "state" Query) are dumped with pydantic, the same way the data converter sends
them. The status projection is read as plain rows (no ORM objects: it lists every recommendation)
and its text and JSON are built from the same rows; the outbox is turned into plain dictionaries
first, so that its text and JSON say the same thing.
"""

from __future__ import annotations

import functools
import json
import re
from datetime import date, datetime, time, timezone
from typing import TYPE_CHECKING, Any, Callable, Iterable

from pydantic import TypeAdapter

from ncpi_workflow.formatting import LONDON, long_date, short_datetime
from ncpi_workflow.lifecycle import (
    InspectionView,
    RecommendationView,
    TrackedDeadline,
    printable,
)

if TYPE_CHECKING:
    from sqlalchemy import Row
    from sqlalchemy.ext.asyncio import AsyncSession

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


def both_dates(at: datetime | None, recorded_at: datetime | None) -> str:
    """When an action happened, and when it was recorded if that was another day (a back-dated action):
    "22 March 2017 (recorded 2 December 2026)"; otherwise `when(at)`."""
    if at is None:
        return "-"
    if recorded_at is None:
        return when(at)
    happened, recorded = utc(at).astimezone(LONDON).date(), utc(recorded_at).astimezone(LONDON).date()
    if happened == recorded:
        return when(at)
    return f"{happened:%-d %B %Y} (recorded {recorded:%-d %B %Y})"


def london_iso(instant: datetime | None) -> str | None:
    return utc(instant).astimezone(LONDON).isoformat() if instant is not None else None




def calendar_now(view: InspectionView | RecommendationView, clock_now: datetime | None = None) -> datetime:
    """The policy calendar's "now" at the moment of showing the view.

    The Query's own `calendar_now` comes from workflow.now(), which stands still at the workflow's
    last task; with the view's time scale the current wall clock is mapped onto the calendar
    instead. Views from workflows that do not send their time scale fall back to `calendar_now`.
    """
    scale = getattr(view, "time_scale", None)
    if scale is None:
        return view.calendar_now
    return scale.to_calendar(clock_now or datetime.now(timezone.utc))


def dump(view: InspectionView | RecommendationView) -> dict[str, Any]:
    """The view as JSON, its `calendar_now` the calendar's now at the moment of showing it."""
    document = TypeAdapter(type(view)).dump_python(view, mode="json")
    if getattr(view, "time_scale", None) is not None:
        document["calendar_now"] = calendar_now(view).isoformat()
    return document


# ---------------------------------------------------------------- workflow views (`ncpi show`)


def _deadline_lines(deadline: TrackedDeadline, recorded=None) -> list[str]:
    name = DEADLINE_NAMES.get(deadline.key, words(deadline.key))
    verb = "" if deadline.key == "revisit_by" else " due"
    line = f"  {name}{verb} {long_date(deadline.due)}"
    if deadline.due != deadline.original_due:
        line += f" (originally {long_date(deadline.original_due)})"
    if deadline.cycle > 1:
        line += f", cycle {deadline.cycle}"
    if deadline.met_at is not None:
        met_recorded = (recorded.met.get((deadline.key, deadline.cycle)) or recorded.any_at(deadline.met_at)) if recorded is not None else None
        line += f"; met {both_dates(deadline.met_at, met_recorded)}"
    lines = [line]
    for r in deadline.revisions:
        lines.append(
            f"    revised {when(r.at)} by {r.by}: {r.previous_due.isoformat()} -> {r.new_due.isoformat()} ({r.reason})"
        )
    return lines


_RECORDED_NOTE = re.compile(r" \(recorded (\d{4}-\d{2}-\d{2})\)$")


def history_recorded(entry, recorded=None) -> tuple[str, datetime | None]:
    """A history entry's detail without the workflow's " (recorded YYYY-MM-DD)" note of a back-dated action,
    and when it was recorded: from the records (`recorded`) when they know, else from that note. The date
    column says it once ("22 March 2017 (recorded 2 December 2026)"), not the detail again."""
    detail = entry.detail or ""
    noted = _RECORDED_NOTE.search(detail)
    at = recorded.action(entry.at, entry.by) if recorded is not None else None
    if noted is not None:
        detail = detail[:noted.start()]
        if at is None:
            at = datetime.combine(date.fromisoformat(noted[1]), time(12, 0), LONDON)
    return detail, at


def _history_lines(history, recorded=None) -> list[str]:
    lines = []
    for entry in history:
        detail, recorded_at = history_recorded(entry, recorded)
        shown = both_dates(entry.at, recorded_at)
        line = f"  {shown:<22} {entry.event}"
        if entry.by and entry.by != "system":
            line += f" (by {entry.by})"
        if detail:
            line += f": {detail}"
        lines.append(line)
    return lines or ["  -"]


def _next_line(action: str | None, at: datetime | None) -> str:
    if not action:
        return "Next: nothing further"
    return f"Next: {action}" + (f", {when(at)}" if at else "")


def render_recommendation(view: RecommendationView, recorded=None) -> list[str]:
    """`recorded`: the records' `read_models.RecordedDates`, to show when back-dated actions were recorded."""
    s = view.state
    lines = [
        f"{view.recommendation_id} (workflow {view.workflow_id})",
        f"Phase: {words(s.phase)}, cycle {s.cycle}; public register: {view.register_status}",
        f"Force's claim: {words(s.force_claim)}; outcome: {words(s.outcome)}",
        "Deadlines:",
        *_deadline_lines(s.deadline, recorded),
    ]
    if s.evidence_deadline is not None:
        lines += _deadline_lines(s.evidence_deadline, recorded)
    lines.append(_next_line(view.next_action, view.next_action_at))
    if s.closed_at is not None:
        lines.append(f"Closed: {both_dates(s.closed_at, recorded.any_at(s.closed_at) if recorded is not None else None)}")
    lines.append("Evidence:")
    if s.evidence:
        for e in s.evidence:
            lines.append(
                f"  {printable(e.filename)} ({e.size_bytes:,} bytes, sha256 {e.sha256[:12]}), cycle {e.cycle}, by {e.by}, "
                f"{both_dates(e.at, recorded.evidence.get(e.sha256) if recorded is not None else None)}"
            )
    else:
        lines.append("  -")
    lines.append("History:")
    lines += _history_lines(s.history, recorded)
    lines.append(f"(calendar now {when(calendar_now(view))}, Europe/London)")
    return lines


def render_inspection(view: InspectionView, recorded=None) -> list[str]:
    s = view.state
    lines = [
        f"{view.inspection_id} (workflow {view.workflow_id})",
        f"Phase: {words(s.phase)}, cycle {s.cycle}",
        "Deadlines:",
    ]
    for deadline in s.deadlines:
        lines += _deadline_lines(deadline, recorded)
    if s.revisit_opened_at is not None:
        revisit_recorded = recorded.revisits.get(s.cycle) if recorded is not None else None
        lines.append(f"Revisit: opened {both_dates(s.revisit_opened_at, revisit_recorded)} ({s.revisit_trigger}, by {s.revisit_by})")
    lines.append(_next_line(view.next_action, view.next_action_at))
    if s.closed_at is not None:
        lines.append(f"Closed: {when(s.closed_at)}")
    lines.append("Open recommendations: " + (", ".join(s.open_recommendations) or "none"))
    if s.settled:
        lines.append("Decided this cycle: " + ", ".join(f"{r} {words(o)}" for r, o in s.settled.items()))
    lines.append("History:")
    lines += _history_lines(s.history, recorded)
    lines.append(f"(calendar now {when(calendar_now(view))}, Europe/London)")
    return lines


# ---------------------------------------------------------------- the database projection (`ncpi status`)


def status_query(force_code: str | None = None):
    """The SELECT behind `status_rows` (and `stream_status_rows`): the listing's columns, in listing order."""
    from sqlalchemy import func, select

    from ncpi_workflow.models import Inspection, Recommendation

    query = (
        select(
            Inspection.id, Inspection.force_code, Inspection.published_on, Inspection.phase, Inspection.cycle,
            Inspection.next_action, Inspection.next_action_at,
            Recommendation.id.label("recommendation_id"), Recommendation.ref, Recommendation.timeframe,
            Recommendation.phase.label("recommendation_phase"), Recommendation.cycle.label("recommendation_cycle"),
            Recommendation.force_claim, Recommendation.outcome, Recommendation.register_status,
            Recommendation.next_action.label("recommendation_next_action"),
            Recommendation.next_action_at.label("recommendation_next_action_at"),
        )
        .outerjoin(Recommendation, Recommendation.inspection_id == Inspection.id)
        .order_by(Inspection.published_on, Inspection.id, func.length(Recommendation.ref), Recommendation.ref)
    )
    if force_code:
        query = query.where(Inspection.force_code == force_code)
    return query


async def status_rows(session: AsyncSession, force_code: str | None = None, *, limit: int | None = None,
                      offset: int = 0) -> list[Row]:
    """Every recommendation with its inspection's projection, in listing order, from one query.

    Order: publication day, inspection, then R1, R2, ..., R10 (not R1, R10, R2). An inspection without
    recommendations is one row whose recommendation columns are None. Only the columns the listing
    shows are read: loading ORM objects costs more than the query itself at 100,000 rows.
    `limit` and `offset` give one page of those rows (`ncpi status --page`).
    """
    query = status_query(force_code)
    if limit is not None:
        query = query.limit(limit).offset(offset)
    # On the session's connection, not session.execute: the ORM's per-row processing of plain columns
    # costs as much again as building the rows.
    connection = await session.connection()
    return (await connection.execute(query)).all()


async def status_row_count(session: AsyncSession, force_code: str | None = None) -> int:
    """How many rows `status_rows` gives (a recommendation each, and one per inspection without any)."""
    from sqlalchemy import func, select

    from ncpi_workflow.models import Inspection, Recommendation

    query = select(func.count()).select_from(Inspection).outerjoin(Recommendation, Recommendation.inspection_id == Inspection.id)
    if force_code:
        query = query.where(Inspection.force_code == force_code)
    connection = await session.connection()
    return int((await connection.execute(query)).scalar_one())


STATUS_STREAM_CHUNK = 2000
"""Rows fetched at a time by `stream_status_rows` (a server-side cursor on both databases)."""


async def stream_status_rows(session: AsyncSession, force_code: str | None = None, chunk: int = STATUS_STREAM_CHUNK):
    """`status_rows`, `chunk` rows at a time from a server-side cursor (`AsyncConnection.stream`): an
    async iterator of lists of rows, never holding more than one chunk."""
    connection = await session.connection()
    result = await connection.stream(status_query(force_code).execution_options(yield_per=chunk))
    try:
        async for part in result.partitions(chunk):
            yield part
    finally:
        await result.close()


async def status_summary(session: AsyncSession, force_code: str | None = None, *, today: date) -> list[dict[str, Any]]:
    """Per force with published inspections (or only `force_code`), in code order: reports,
    recommendations open and closed, overdue, revisits due -- "overdue" and "revisits due" as the
    dashboard defines them (app/read_models.py), counted from `today`."""
    from sqlalchemy import case, func, select

    from ncpi_workflow.app.read_models import dashboard_query
    from ncpi_workflow.models import Inspection, Recommendation

    connection = await session.connection()
    counts = (
        select(
            Inspection.force_code,
            func.count(func.distinct(Inspection.id)),
            func.count(Recommendation.id),
            func.sum(case((Recommendation.phase == "closed", 1), else_=0)),
        )
        .outerjoin(Recommendation, Recommendation.inspection_id == Inspection.id)
        .group_by(Inspection.force_code)
    )
    if force_code:
        counts = counts.where(Inspection.force_code == force_code)
    by_force = {code: (int(reports), int(total), int(closed or 0)) for code, reports, total, closed in (await connection.execute(counts)).all()}
    if not by_force:
        return []
    summary = []
    for code, name, _region, _inspections, _open, overdue, overdue_items, _rn, _in, revisits, *_fresh in (
        await connection.execute(dashboard_query(today))
    ).all():
        if code not in by_force:
            continue
        reports, total, closed = by_force[code]
        summary.append({
            "force": code, "name": name, "reports": reports, "open": total - closed, "closed": closed,
            "overdue": int(overdue or 0) + int(overdue_items or 0), "revisits_due": int(revisits or 0),
        })
    summary.sort(key=lambda f: f["force"])
    return summary


def render_status_summary(summary: list[dict[str, Any]], today: date) -> list[str]:
    """The summary table `ncpi status` prints first: a line per force, then the totals."""
    columns = ("reports", "open", "closed", "overdue", "revisits_due")
    heads = ("reports", "open", "closed", "overdue", "revisits due")
    totals = {c: sum(f[c] for f in summary) for c in columns}
    label = max([len(f"{f['force']}  {f['name']}") for f in summary] + [len("total")])
    widths = [max(len(h), *(len(f"{f[c]:,}") for f in summary), len(f"{totals[c]:,}")) for c, h in zip(columns, heads)]

    def line(name: str, values) -> str:
        return f"{name:<{label}}  " + "  ".join(f"{v:>{w}}" for v, w in zip(values, widths))

    lines = [f"Summary ({long_date(today)}; overdue and revisits due as on the dashboard)",
             line("force", heads)]
    lines += [line(f"{f['force']}  {f['name']}", [f"{f[c]:,}" for c in columns]) for f in summary]
    lines.append(line("total", [f"{totals[c]:,}" for c in columns]))
    return lines


def _remembered(function: Callable[[Any], str | None]) -> Callable[[Any], str | None]:
    # A listing repeats a few hundred instants and phases over thousands of rows: convert each once.
    return functools.lru_cache(maxsize=None)(function)


def _stuck_notes(stuck: dict[str, str] | None):
    """(inspection's note, recommendation's note) lookups from {workflow ID: error} (`stuck_workflows`)."""
    from ncpi_workflow.lifecycle import inspection_workflow_id, recommendation_workflow_id

    stuck = stuck or {}
    if not stuck:
        return (lambda _: None), (lambda _: None)
    return (lambda insp_id: stuck.get(inspection_workflow_id(insp_id))), (lambda rec_id: stuck.get(recommendation_workflow_id(rec_id)))


def stuck_note(error: str) -> str:
    return "STUCK: " + " ".join(error.split())


class StatusRecords:
    """Builds the records of `status_records` from rows given in any number of pieces (the
    inspection a piece starts in carries over from the piece before). Its caches are bounded, so that
    a streamed listing holds only the piece at hand."""

    def __init__(self, stuck: dict[str, str] | None = None, *, cache: int | None = None):
        self.iso = functools.lru_cache(maxsize=cache)(london_iso)
        self.inspection_stuck, self.recommendation_stuck = _stuck_notes(stuck)
        self.shown = self.inspection = None

    def records(self, rows: Iterable[Row]) -> list[dict[str, Any]]:
        iso, inspection_stuck, recommendation_stuck = self.iso, self.inspection_stuck, self.recommendation_stuck
        shown, inspection = self.shown, self.inspection
        records = []
        for (insp_id, force_code, published_on, insp_phase, insp_cycle, insp_next, insp_next_at,
             rec_id, ref, timeframe, phase, cycle, force_claim, outcome, register_status, next_action, next_action_at) in rows:
            if insp_id != shown:
                shown = insp_id
                inspection = {
                    "inspection_id": insp_id,
                    "force": force_code,
                    "published": published_on.isoformat(),
                    "inspection_phase": insp_phase,
                    "inspection_cycle": insp_cycle,
                    "inspection_next_action": insp_next,
                    "inspection_next_action_at": iso(insp_next_at),
                }
                error = inspection_stuck(insp_id)
                if error:
                    inspection["inspection_stuck"] = " ".join(error.split())
            if rec_id is None:
                continue
            record = {
                    **inspection,
                    "recommendation_id": rec_id,
                    "ref": ref,
                    "timeframe": timeframe,
                    "phase": phase,
                    "register_status": register_status,
                    "cycle": cycle,
                    "force_claim": force_claim,
                    "outcome": outcome,
                    "next_action": next_action,
                    "next_action_at": iso(next_action_at),
            }
            error = recommendation_stuck(rec_id)
            if error:
                record["stuck"] = " ".join(error.split())
            records.append(record)
        self.shown, self.inspection = shown, inspection
        return records


def status_records(rows: Iterable[Row], stuck: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """One record per recommendation (rows from `status_rows`), with its inspection's projection.

    `stuck` ({workflow ID: error}, the reconciler's `stuck_workflows`) adds a key to the records of
    a follow-up whose workflow task keeps failing, and to those only, so that every other record
    is exactly as before: "stuck" (the recommendation's workflow) and "inspection_stuck" (its
    inspection's), each the error in one line."""
    return StatusRecords(stuck).records(rows)


def status_json(records: list[dict[str, Any]]) -> str:
    """`json.dumps(records, indent=2)`, byte for byte, in about half the time.

    With `indent` the json module falls back to its pure-Python encoder (1.3 s for 100,000 records).
    Without it, the C encoder puts each item of a record on its own line given these separators, and
    only the braces between records need moving. That needs flat records (no nested lists or
    objects); and since an encoded string never holds a raw line break, the close-brace, separator,
    open-brace sequence can only be the boundary between two records.
    """
    if not records:
        return "[]"
    flat = json.dumps(records, separators=(",\n    ", ": "))
    return "[\n  {\n    " + flat[2:-2].replace("},\n    {", "\n  },\n  {\n    ") + "\n  }\n]"


async def stream_status_json(session: AsyncSession, write: Callable[[str], Any], force_code: str | None = None,
                             stuck: dict[str, str] | None = None, chunk: int = STATUS_STREAM_CHUNK) -> None:
    """Writes `status_json(status_records(status_rows(...), stuck))`, byte for byte, through `write`,
    a chunk of rows at a time (`stream_status_rows`): memory does not grow with the listing.

    `json.dumps(list, indent=2)` is "[\n", the items (each indented by two) joined by ",\n", then
    "\n]"; `status_json` of one chunk's records is that for the chunk, so its inside is the chunk's
    part of the whole."""
    builder = StatusRecords(stuck, cache=4096)
    started = False
    async for rows in stream_status_rows(session, force_code, chunk):
        records = builder.records(rows)
        if not records:
            continue
        write(("[\n" if not started else ",\n") + status_json(records)[2:-2])
        started = True
    write("\n]" if started else "[]")


def render_status(rows: Iterable[Row], force_names: dict[str, str], stuck: dict[str, str] | None = None) -> list[str]:
    """The text of `ncpi status` from `status_rows`: a heading per inspection, a line per recommendation.
    A follow-up whose workflow is stuck (`stuck`, {workflow ID: error}) ends its line "STUCK: <error>"."""
    inspection_stuck, recommendation_stuck = _stuck_notes(stuck)
    at = _remembered(when)
    wording = _remembered(words)
    lines: list[str] = []
    shown = None
    for (insp_id, force_code, published_on, insp_phase, insp_cycle, insp_next, insp_next_at,
         rec_id, ref, timeframe, phase, cycle, force_claim, outcome, register_status, next_action, next_action_at) in rows:
        if insp_id != shown:
            shown = insp_id
            if lines:
                lines.append("")
            head = (
                f"{insp_id}  {force_names.get(force_code, force_code)}, published {long_date(published_on)}: "
                f"{wording(insp_phase)}, cycle {insp_cycle}"
            )
            if insp_next:
                head += f"; next: {insp_next}" + (f", {at(insp_next_at)}" if insp_next_at else "")
            error = inspection_stuck(insp_id)
            if error:
                head += "; " + stuck_note(error)
            lines.append(head)
        if rec_id is None:
            continue
        line = (
            f"  {rec_id:<20} {wording(timeframe):<20} {wording(phase):<19} cycle {cycle}  "
            f"{register_status:<25}"
        )
        extras = []
        if force_claim:
            extras.append(f"force claims {wording(force_claim)}")
        if outcome:
            extras.append(f"outcome {wording(outcome)}")
        if next_action:
            extras.append(f"next: {next_action}" + (f", {at(next_action_at)}" if next_action_at else ""))
        error = recommendation_stuck(rec_id)
        if error:
            extras.append(stuck_note(error))
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
            "last_error": n.last_error,
        }
        for n in notifications
    ]


def render_outbox(records: list[dict[str, Any]]) -> list[str]:
    """One line per notification; one more, indented, with its last error when it has one (a
    failure's answer, or why a pending one is held)."""
    from ncpi_workflow.emails import KINDS

    # The kind column fits every kind there is (and any longer one listed), so the columns after it line up.
    kind_width = max([len(k) for k in KINDS] + [len(r["kind"]) for r in records])
    lines = []
    for r in records:
        scheduled = short_datetime(datetime.fromisoformat(r["scheduled_for"])) if r["scheduled_for"] else "-"
        line = f"{r['id']:>5}  {scheduled:<22} {r['kind']:<{kind_width}} {r['status']:<8} {', '.join(r['to'])}  {r['subject']}"
        lines.append(line.replace("\r", " ").replace("\n", " "))
        if r.get("last_error"):
            lines.append(f"{'':>7}last error: {' '.join(r['last_error'].split())}")
    return lines
