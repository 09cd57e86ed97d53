"""The post-inspection review as a thing: its report (a `programme: PIR` report file) recorded
against the reviewed inspection's revisit, with its fieldwork dates, inspectors, title, address,
publication date, the file's SHA-256 and the re-inspection findings on each recommendation; and the
reads the inspectors' pages make of it, of a report's areas for improvement and of the report-level
items received (action plan, PCC response).

`ncpi publish` of a PIR report calls `record_review`: it starts no follow-up. The revisit of the
cycle it reports on must have been held, or be the current cycle's (then, if it is not open yet, it
is opened back-dated to the review's fieldwork start, through the app layer's `trigger_revisit(...,
on=)`, so the workflow's own rules apply). A file that refers to an unknown inspection or
recommendation, or whose dates are impossible, is refused with one line naming the file, the line,
the field and the reason, and nothing is written or opened.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import Any

from sqlalchemy import select

from ncpi_workflow.errors import UserError
from ncpi_workflow.models import (
    AreaForImprovement,
    AuditEvent,
    Deadline,
    Inspection,
    Recommendation,
    Revisit,
    RevisitFinding,
    RevisitReport,
)
from ncpi_workflow.report import LoadedReport

REPORT_ITEMS = ("action_plan", "pcc_response", "immediate_update")


@dataclass(frozen=True)
class RecordedReview:
    inspection_id: str
    cycle: int
    created: bool
    """False when the same file was recorded before (nothing changed)."""
    opened_revisit: bool
    """True when recording it opened the revisit (back-dated to the fieldwork start)."""
    findings: int


def _where(loaded: LoadedReport, loc: tuple[Any, ...]) -> str:
    from ncpi_workflow.report import _format_loc
    from ncpi_workflow.yamlsafe import line_for, load_located

    try:
        _, lines = load_located(loaded.path, max_bytes=max(loaded.path.stat().st_size, 1))
        line = line_for(lines, loc)
    except (OSError, UserError):
        line = None
    return f"{loaded.path}:{line}: {_format_loc(loc)}" if line else f"{loaded.path}: {_format_loc(loc)}"


def _refuse(loaded: LoadedReport, loc: tuple[Any, ...], reason: str) -> UserError:
    return UserError(f"{_where(loaded, loc)}: {reason}; nothing was recorded")


def _ref_order(ref: str) -> tuple[int, str]:
    return (len(ref), ref)


async def _check_against_records(sessions, loaded: LoadedReport, today: date) -> tuple[Inspection, dict[str, str]]:
    """The reviewed inspection and its recommendations (ref -> ID), or a UserError: what a file
    alone cannot tell (the inspection exists, the refs are its own, the dates are possible)."""
    report = loaded.report
    if report.published > today:  # the fieldwork ends on or before publication (the format's rule)
        raise _refuse(loaded, ("published",), f"{report.published} is in the future (today is {today})")
    async with sessions() as session:
        inspection = await session.get(Inspection, report.follows)
        if inspection is None:
            raise _refuse(loaded, ("follows",), f"no published inspection {report.follows} (`ncpi status` lists them)")
        recs = {r.ref: r.id for r in (await session.scalars(
            select(Recommendation).where(Recommendation.inspection_id == inspection.id))).all()}
    for i, finding in enumerate(report.revisit_findings):
        if finding.recommendation not in recs:
            known = ", ".join(sorted(recs, key=_ref_order))
            raise _refuse(loaded, ("revisit_findings", i, "recommendation"),
                          f"{inspection.id} has no recommendation {finding.recommendation} (it has {known})")
    return inspection, recs


async def record_review(settings, client, loaded: LoadedReport, *, by: str = "cli", today: date | None = None) -> RecordedReview:
    """Record a post-inspection review's report against the reviewed inspection's revisit (module
    docstring). The same file again changes nothing; another file for the same revisit is refused."""
    from ncpi_workflow import db
    from ncpi_workflow.app.inspector_actions import trigger_revisit
    from ncpi_workflow.app.temporal_calls import INSPECTION, database_errors, query_state
    from ncpi_workflow.lifecycle import InspectionPhase, check_name
    from ncpi_workflow.store import append_audit

    report = loaded.report
    if not report.is_review:
        raise UserError(f"{loaded.path}: not a post-inspection review's report (programme: PIR)")
    try:
        check_name(by, "who records it (by)")
    except ValueError as exc:
        raise UserError(str(exc)) from None
    with database_errors(settings):
        async with db.open_database(settings.database_url) as sessions:
            view = None
            if today is None:
                # The follow-up's own calendar day (a time-scaled follow-up's, too).
                from ncpi_workflow.formatting import local_date

                async with sessions() as session:
                    known = await session.get(Inspection, report.follows) is not None
                if known:
                    from ncpi_workflow.clocks import TimeScale

                    # The wall clock through the follow-up's time scale (the identity at real time), and
                    # never before the calendar instant its workflow has already reached (on a
                    # time-skipping test server, whose clock is not the wall's, that instant alone).
                    view = await query_state(settings, client, INSPECTION, report.follows)
                    scale = getattr(view, "time_scale", None) or TimeScale()
                    today = max(local_date(view.calendar_now), local_date(scale.to_calendar(datetime.now(timezone.utc))))
                else:
                    today = local_date(datetime.now(timezone.utc))
            inspection, recs = await _check_against_records(sessions, loaded, today)
            if view is None:
                view = await query_state(settings, client, INSPECTION, inspection.id)
            state = view.state
            given = next((f.cycle for f in report.revisit_findings if f.cycle is not None), None)
            cycle = given or state.cycle
            loc = ("revisit_findings", next((i for i, f in enumerate(report.revisit_findings) if f.cycle), 0), "cycle")
            if cycle > state.cycle:
                raise _refuse(loaded, loc, f"the follow-up of {inspection.id} is in cycle {state.cycle}; cycle {cycle} has not begun")
            async with sessions() as session:
                existing = await session.scalar(select(RevisitReport).where(
                    RevisitReport.inspection_id == inspection.id, RevisitReport.cycle == cycle))
                revisit = await session.scalar(select(Revisit).where(Revisit.inspection_id == inspection.id, Revisit.cycle == cycle))
            if existing is not None:
                if existing.report_sha256 == loaded.sha256:
                    return RecordedReview(inspection.id, cycle, False, False, len(report.revisit_findings))
                raise UserError(f"{loaded.path}: the review of cycle {cycle} of {inspection.id} is already recorded from a "
                                f"different file (sha256 {existing.report_sha256[:12]}); a recorded review is not replaced")
            opened = False
            if revisit is None:
                if cycle != state.cycle or state.phase is not InspectionPhase.FOLLOWING_UP:
                    raise _refuse(loaded, loc if given else ("follows",),
                                  f"no revisit of cycle {cycle} of {inspection.id} was held")
                if cycle > 1:
                    from ncpi_workflow.formatting import local_date

                    async with sessions() as session:
                        previous = await session.scalar(
                            select(Revisit).where(Revisit.inspection_id == inspection.id, Revisit.cycle == cycle - 1))
                    if previous is not None and local_date(previous.opened_at) > report.fieldwork.start:
                        raise _refuse(loaded, ("fieldwork", "start"),
                                      f"the review's fieldwork ({report.fieldwork.start}) starts before the revisit of cycle "
                                      f"{cycle - 1} opened ({local_date(previous.opened_at)}): it cannot be cycle {cycle}'s")
                # Opened as on the first day of the review's fieldwork (the workflow judges the date).
                await trigger_revisit(settings, client, inspection.id, by, on=report.fieldwork.start)
                opened = True
                async with sessions() as session:
                    revisit = await session.scalar(
                        select(Revisit).where(Revisit.inspection_id == inspection.id, Revisit.cycle == cycle))
            from sqlalchemy.exc import IntegrityError

            try:
                async with sessions.begin() as session:
                    row = RevisitReport(
                        inspection_id=inspection.id, cycle=cycle, revisit_id=revisit.id if revisit is not None else None,
                        title=report.title, source_url=str(report.source_url), published_on=report.published,
                        fieldwork_start=report.fieldwork.start, fieldwork_end=report.fieldwork.end,
                        inspectors=list(report.inspectors), illustrative=report.illustrative, report_sha256=loaded.sha256,
                        recorded_by=by,
                    )
                    row.findings = [RevisitFinding(recommendation_id=recs[f.recommendation], text=f.findings)
                                    for f in report.revisit_findings]
                    session.add(row)
                    await session.flush()
                    await append_audit(
                        session, actor=by, action="revisit_report.recorded", entity_type="inspection", entity_id=inspection.id,
                        detail={"cycle": cycle, "sha256": loaded.sha256, "file": loaded.path.name, "title": report.title,
                                "published_on": report.published.isoformat(), "findings": len(report.revisit_findings)},
                        idempotency_key=f"{inspection.id}/revisit-report/{cycle}",
                    )
            except IntegrityError:
                # Recorded meanwhile by another caller (UNIQUE(inspection_id, cycle)): the same file is that record.
                async with sessions() as session:
                    existing = await session.scalar(select(RevisitReport).where(
                        RevisitReport.inspection_id == inspection.id, RevisitReport.cycle == cycle))
                if existing is None:
                    raise
                if existing.report_sha256 != loaded.sha256:
                    raise UserError(f"{loaded.path}: the review of cycle {cycle} of {inspection.id} was recorded meanwhile from "
                                    f"a different file (sha256 {existing.report_sha256[:12]})") from None
                return RecordedReview(inspection.id, cycle, False, opened, len(report.revisit_findings))
    return RecordedReview(inspection.id, cycle, True, opened, len(report.revisit_findings))


# ---------------------------------------------------------------- reads for the inspectors' pages


@dataclass(frozen=True)
class ReviewFinding:
    recommendation_id: str
    ref: str
    text: str


@dataclass(frozen=True)
class Review:
    cycle: int
    title: str
    url: str
    published_on: date
    fieldwork_start: date
    fieldwork_end: date
    inspectors: list[str]
    illustrative: bool
    sha256: str
    recorded_by: str
    recorded_at: datetime
    findings: list[ReviewFinding] = field(default_factory=list)


@dataclass(frozen=True)
class ReceivedItem:
    """A report-level item (action plan, PCC response, immediate update) of one cycle: due, received, what."""

    key: str
    cycle: int
    due: date
    received_at: datetime | None
    filename: str | None = None
    sha256: str | None = None
    url: str | None = None
    note: str | None = None
    by: str | None = None
    recorded_at: datetime | None = None
    """When its receipt was recorded (back-dated with `--on`: another day than `received_at`)."""


def _review(row: RevisitReport, refs: dict[str, str]) -> Review:
    return Review(
        row.cycle, row.title, row.source_url, row.published_on, row.fieldwork_start, row.fieldwork_end, list(row.inspectors or []),
        row.illustrative, row.report_sha256, row.recorded_by, row.recorded_at,
        sorted((ReviewFinding(f.recommendation_id, refs.get(f.recommendation_id, f.recommendation_id), f.text) for f in row.findings),
               key=lambda f: _ref_order(f.ref)),
    )


async def reviews_of(session, inspection_id: str) -> list[Review]:
    """The recorded reviews of an inspection, by cycle."""
    from sqlalchemy.orm import selectinload

    rows = (await session.scalars(select(RevisitReport).options(selectinload(RevisitReport.findings))
                                  .where(RevisitReport.inspection_id == inspection_id).order_by(RevisitReport.cycle))).all()
    refs = {r.id: r.ref for r in (await session.scalars(select(Recommendation).where(Recommendation.inspection_id == inspection_id))).all()}
    return [_review(row, refs) for row in rows]


async def areas_of(session, inspection_id: str) -> list[AreaForImprovement]:
    rows = (await session.scalars(select(AreaForImprovement).where(AreaForImprovement.inspection_id == inspection_id))).all()
    return sorted(rows, key=lambda a: (len(a.ref), a.ref))


def received_items(deadlines: list[Deadline], audit: list[AuditEvent]) -> list[ReceivedItem]:
    """Each report-level item's due date, when it was received (the deadline's met_at: the day it
    happened, back-dated or not) and the document (name and SHA-256) or address received with it."""
    received: dict[str, list[AuditEvent]] = {}
    for event in audit:  # in time order: the n-th receipt of an item is that of its n-th cycle
        item = event.action.removesuffix(".received")
        if event.action.endswith(".received") and item in REPORT_ITEMS:
            received.setdefault(item, []).append(event)
    out = []
    seen: dict[str, int] = {}
    for d in sorted((d for d in deadlines if d.key in REPORT_ITEMS), key=lambda d: (d.cycle, REPORT_ITEMS.index(d.key))):
        index = seen.get(d.key, 0)
        seen[d.key] = index + 1
        events = received.get(d.key, [])
        event = events[index] if d.met_at is not None and index < len(events) else None
        detail = (event.detail or {}) if event is not None else {}
        out.append(ReceivedItem(d.key, d.cycle, d.current_due, d.met_at, detail.get("filename"), detail.get("sha256"),
                                detail.get("url"), detail.get("note") or None, event.actor if event is not None else None,
                                getattr(d, "met_recorded_at", None)))
    return out


async def inspection_extras(sessions, inspection_id: str, deadlines: list[Deadline], audit: list[AuditEvent]) -> dict[str, Any]:
    """What the inspection page shows of this module: areas for improvement, reviews, items received."""
    async with sessions() as session:
        return {"areas": await areas_of(session, inspection_id), "reviews": await reviews_of(session, inspection_id),
                "received_items": received_items(deadlines, audit)}


async def recommendation_reviews(sessions, recommendation_id: str) -> list[tuple[Review, ReviewFinding]]:
    """The re-inspection findings on one recommendation, with the review each comes from, by cycle."""
    async with sessions() as session:
        rec = await session.get(Recommendation, recommendation_id)
        if rec is None:
            return []
        return [(review, finding) for review in await reviews_of(session, rec.inspection_id)
                for finding in review.findings if finding.recommendation_id == recommendation_id]


__all__ = ["RecordedReview", "Review", "ReviewFinding", "ReceivedItem", "record_review", "reviews_of", "areas_of",
           "received_items", "inspection_extras", "recommendation_reviews", "record_review_upload"]


async def record_review_upload(settings, client, filename: str | None, content: bytes, *, by: str) -> RecordedReview:
    """`record_review` of an uploaded file (the web app's publish form): problems and refusals name
    the uploaded file, not the temporary copy it is checked from."""
    from ncpi_workflow.app.publishing import checked_upload

    with checked_upload(settings, filename, content) as (name, path, checked):
        try:
            return await record_review(settings, client, checked.loaded, by=by)
        except UserError as exc:
            text = str(exc)
            raise UserError(name + text[len(str(path)):] if text.startswith(str(path)) else text) from None
