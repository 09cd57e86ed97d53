"""What people read: the status listing, the live view of one follow-up, the all-forces dashboard,
and the records behind the force, inspection and recommendation pages.

Listings read the database projection that activities keep (never every workflow); the live view
of one follow-up is its workflow's "state" Query.

The dashboard's policy (one definition, used by every front end):

- **open**: a recommendation not closed;
- **overdue**: an open recommendation whose clock is running and past its due date -- its own
  deadline while it is published, force notified or in progress and the force has not claimed it
  implemented, or its evidence deadline while evidence is requested -- plus a report-level item
  (action plan, PCC response, update on immediate recommendations) not yet received by its due
  date, or a revisit still not open after its limit;
- **next deadline**: the earliest due date, today or later, among those same running clocks and
  the revisit limits of inspections whose revisit is not open yet;
- **revisits due**: inspections whose revisit is not open and whose limit falls within the next
  30 days;
- **RAG**: red when anything is overdue; amber when a deadline or a revisit falls within 30 days;
  green otherwise.

The aggregate reads projected columns, not the deadlines of every row: `recommendations.clock_due`
(the due date of the clock that runs now) and `deadlines.waiting_due` (an awaited report-level
item's), which every projection and deadline write refreshes (`refresh_recommendation_clocks`,
`refresh_report_items`, run by activities/records.py). "Today" is the policy calendar's, at the
product's clock, through the follow-ups' time scale (`calendar_today`).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, exists, func, literal, literal_column, null, or_, select, update
from sqlalchemy.orm import selectinload

from ncpi_workflow.app.temporal_calls import parse_target, query_state
from ncpi_workflow.clocks import TimeScale
from ncpi_workflow.errors import UserError
from ncpi_workflow.formatting import local_date
from ncpi_workflow.lifecycle import ForceClaim, InspectionPhase, InspectionView, Phase, inspection_workflow_id
from ncpi_workflow.models import (
    AuditEvent,
    Deadline,
    Decision,
    Evidence,
    EvidenceRequest,
    Finding,
    Force,
    Inspection,
    Notification,
    ProgressUpdate,
    Recommendation,
    RegisterStatusEntry,
    Revisit,
)
from ncpi_workflow.views import status_records, status_row_count, status_rows, status_summary, stream_status_json

SOON_DAYS = 30
""""Within 30 days": the horizon of amber and of revisits due."""

RUNNING_PHASES = (Phase.PUBLISHED.value, Phase.FORCE_NOTIFIED.value, Phase.IN_PROGRESS.value)
"""Phases in which a recommendation's own deadline is the force's to meet."""
REPORT_ITEMS = ("action_plan", "pcc_response", "immediate_update")
OPEN_PHASES = tuple(p.value for p in Phase if p not in (Phase.CLOSED, Phase.PUBLISHED))
"""The phases the dashboard filters on (published is the instant before the force is notified)."""

RED, AMBER, GREEN = "red", "amber", "green"


# ---------------------------------------------------------------- `ncpi status`, `ncpi show`


async def status(sessions, force_code: str | None = None):
    """The rows of `ncpi status` (`views.status_rows`): one per recommendation, in listing order."""
    async with sessions() as session:
        return await status_rows(session, force_code)


async def stuck_workflows(sessions) -> dict[str, str]:
    """{workflow ID: error} of follow-ups whose workflow task keeps failing (the reconciler's last pass)."""
    from ncpi_workflow.models import StuckWorkflow

    async with sessions() as session:
        return dict((await session.execute(select(StuckWorkflow.workflow_id, StuckWorkflow.error))).all())


async def status_listing(sessions, force_code: str | None = None) -> list[dict[str, Any]]:
    """The records of `ncpi status --json` (stuck follow-ups marked)."""
    return status_records(await status(sessions, force_code), await stuck_workflows(sessions))


@dataclass(frozen=True)
class StatusPage:
    """The default text of `ncpi status`: the summary, then one page of the listing's rows."""

    today: date
    summary: list[dict[str, Any]]
    rows: list
    page: int
    pages: int
    total_rows: int


async def status_page(sessions, force_code: str | None = None, *, page: int = 1, page_size: int = 50,
                      today: date) -> StatusPage:
    """The summary (`views.status_summary`, counted from `today`) and page `page` (from 1) of
    `page_size` rows of the listing. A page past the last is a UserError naming --page."""
    if page < 1:
        raise UserError(f"--page: {page} is not a page number (1 or more)")
    if page_size < 1:
        raise UserError(f"--page-size: {page_size} is not 1 or more")
    async with sessions() as session:
        total = await status_row_count(session, force_code)
        pages = max(1, -(-total // page_size))
        if page > pages:
            raise UserError(f"--page: {page} is past the last page ({pages:,} of {page_size:,} rows)")
        summary = await status_summary(session, force_code, today=today)
        rows = await status_rows(session, force_code, limit=page_size, offset=(page - 1) * page_size)
    return StatusPage(today, summary, rows, page, pages, total)


async def stream_status_listing(sessions, write, force_code: str | None = None) -> None:
    """`ncpi status --json`: status_json(status_listing(...)) written through `write` a chunk at a time."""
    stuck = await stuck_workflows(sessions)
    async with sessions() as session:
        await stream_status_json(session, write, force_code, stuck)


async def show(settings, client, target_id: str):
    """('inspection' | 'recommendation', its live view from the workflow's "state" Query)."""
    kind, business_id = parse_target(target_id)
    return kind, await query_state(settings, client, kind, business_id)


@dataclass(frozen=True)
class RecordedDates:
    """When each back-dated action of one follow-up was recorded, from the records (the workflow's
    state holds when it happened). Only actions recorded at another instant than they happened."""

    actions: dict[tuple[datetime, str], datetime] = field(default_factory=dict)
    """(when it happened, who) -> when it was recorded: progress, evidence, decisions, register
    statuses, revisits (a history entry at that instant by that person is the action)."""
    met: dict[tuple[str, int], datetime] = field(default_factory=dict)
    """(deadline key, cycle) -> when its receipt was recorded."""
    revisits: dict[int, datetime] = field(default_factory=dict)
    """cycle -> when the revisit's opening was recorded."""
    evidence: dict[str, datetime] = field(default_factory=dict)
    """sha256 -> when the file's receipt was recorded."""

    def action(self, at: datetime | None, by: str | None) -> datetime | None:
        """When the action at `at` by `by` was recorded (a receipt, whose record names nobody: by anyone)."""
        if at is None:
            return None
        return self.actions.get((_utc(at), by or "")) or self.actions.get((_utc(at), "*"))

    def any_at(self, at: datetime | None) -> datetime | None:
        """When the back-dated action at `at` was recorded, whoever took it (a deadline met, a closure by it)."""
        instant = _utc(at)
        return next((recorded for (happened, _), recorded in self.actions.items() if happened == instant), None)


def _utc(instant: datetime | None) -> datetime | None:
    from datetime import timezone

    if instant is None:
        return None
    return instant.replace(tzinfo=timezone.utc) if instant.tzinfo is None else instant.astimezone(timezone.utc)


def _backdated(at: datetime | None, recorded_at: datetime | None) -> bool:
    return at is not None and recorded_at is not None and _utc(at) != _utc(recorded_at)


async def recorded_dates(sessions, kind: str, business_id: str) -> RecordedDates:
    """The recorded instants of a follow-up's back-dated actions (`RecordedDates`), for `ncpi show`."""
    from ncpi_workflow.app.temporal_calls import RECOMMENDATION

    dates = RecordedDates()
    async with sessions() as session:
        if kind == RECOMMENDATION:
            where = {"rec": business_id}
            for model, at, by in ((ProgressUpdate, ProgressUpdate.submitted_at, ProgressUpdate.submitted_by),
                                  (Decision, Decision.decided_at, Decision.decided_by),
                                  (RegisterStatusEntry, RegisterStatusEntry.set_at, RegisterStatusEntry.set_by)):
                for happened, who, recorded in (await session.execute(
                        select(at, by, model.recorded_at).where(model.recommendation_id == where["rec"]))).all():
                    if _backdated(happened, recorded):
                        dates.actions[(_utc(happened), who)] = _utc(recorded)
            for happened, who, sha256, recorded in (await session.execute(
                    select(Evidence.submitted_at, Evidence.submitted_by, Evidence.sha256, Evidence.recorded_at)
                    .where(Evidence.recommendation_id == business_id))).all():
                if _backdated(happened, recorded):
                    dates.actions[(_utc(happened), who)] = _utc(recorded)
                    dates.evidence[sha256] = _utc(recorded)
        else:
            for key, cycle, happened, recorded in (await session.execute(
                    select(Deadline.key, Deadline.cycle, Deadline.met_at, Deadline.met_recorded_at)
                    .where(Deadline.inspection_id == business_id, Deadline.recommendation_id.is_(None)))).all():
                if _backdated(happened, recorded):
                    dates.met[(key, cycle)] = _utc(recorded)
                    dates.actions[(_utc(happened), "*")] = _utc(recorded)
            for cycle, happened, who, recorded in (await session.execute(
                    select(Revisit.cycle, Revisit.opened_at, Revisit.triggered_by, Revisit.recorded_at)
                    .where(Revisit.inspection_id == business_id))).all():
                if _backdated(happened, recorded):
                    dates.revisits[cycle] = _utc(recorded)
                    dates.actions[(_utc(happened), who)] = _utc(recorded)
    return dates


# ---------------------------------------------------------------- the all-forces dashboard


@dataclass(frozen=True)
class ForceSummary:
    code: str
    name: str
    region: str
    inspections: int
    open_recommendations: int
    overdue_recommendations: int
    overdue_items: int
    """Report-level items not received by their due date, and revisits not open after their limit."""
    next_deadline: date | None
    revisits_due: int
    rag: str

    @property
    def overdue(self) -> int:
        return self.overdue_recommendations + self.overdue_items


@dataclass(frozen=True)
class Dashboard:
    today: date
    forces: list[ForceSummary]
    programmes: list[str]
    programme: str | None = None
    phase: str | None = None
    sort: str = "force"
    descending: bool = False


SORT_KEYS = {
    "force": lambda f: (f.name,),
    "open": lambda f: (f.open_recommendations, f.name),
    "overdue": lambda f: (f.overdue, f.name),
    "next_deadline": lambda f: (f.next_deadline is None, f.next_deadline or date.max, f.name),
    "revisits": lambda f: (f.revisits_due, f.name),
    "rag": lambda f: ({RED: 0, AMBER: 1, GREEN: 2}[f.rag], f.name),
}


def rag_for(overdue: int, next_deadline: date | None, revisits_due: int, today: date) -> str:
    if overdue:
        return RED
    if revisits_due or (next_deadline is not None and next_deadline <= today + timedelta(days=SOON_DAYS)):
        return AMBER
    return GREEN


# The projected columns the aggregate reads, and the statements that keep them. Every write that can
# change one (a projection, a deadline opened, moved or met) runs the matching refresh in its own
# transaction (activities/records.py); migration 0006 backfilled the rows written before them. Rows
# never refreshed yet (a report just published, before its workflows' first projections) have no
# `force_code`: the aggregate reads their deadlines directly, as it read every row before.


def _running(r):
    """Whether a recommendation's clock runs: its own deadline while published, force notified or in
    progress and the force has not claimed it implemented; its evidence deadline while evidence is requested."""
    return or_(
        and_(r.c.phase.in_(RUNNING_PHASES), or_(r.c.force_claim.is_(None), r.c.force_claim != ForceClaim.IMPLEMENTED.value)),
        r.c.phase == Phase.EVIDENCE_REQUESTED.value,
    )


def _clock_kind(r):
    return case((r.c.phase == Phase.EVIDENCE_REQUESTED.value, "evidence"), else_="recommendation")


def refresh_recommendation_clocks(*where):
    """UPDATE of `recommendations.clock_due` (the due date of the clock that runs now, else NULL) and
    `force_code` for the rows matching `where`, from their phase, claim and cycle, their deadline rows
    and their inspection."""
    r = Recommendation.__table__
    d = Deadline.__table__
    i = Inspection.__table__
    due = (
        select(func.min(d.c.current_due))
        .where(d.c.recommendation_id == r.c.id, d.c.cycle == r.c.cycle, d.c.kind == _clock_kind(r))
        .scalar_subquery()
    )
    force = select(i.c.force_code).where(i.c.id == r.c.inspection_id).scalar_subquery()
    return update(r).where(*where).values(clock_due=case((_running(r), due), else_=null()), force_code=force)


def projected_clock_values(phase: str, force_claim: str | None, cycle: int) -> dict:
    """The values `refresh_recommendation_clocks` sets, for a row about to take this phase, claim and cycle:
    for the UPDATE that writes a recommendation's projection to set them too, in the same statement (SET
    reads the row as it was, so the new phase, claim and cycle are given here, not read from the row)."""
    r = Recommendation.__table__
    d = Deadline.__table__
    i = Inspection.__table__
    running = (phase in RUNNING_PHASES and force_claim != ForceClaim.IMPLEMENTED.value) or phase == Phase.EVIDENCE_REQUESTED.value
    kind = "evidence" if phase == Phase.EVIDENCE_REQUESTED.value else "recommendation"
    due = (
        select(func.min(d.c.current_due))
        .where(d.c.recommendation_id == r.c.id, d.c.cycle == cycle, d.c.kind == kind)
        .scalar_subquery()
    )
    force = select(i.c.force_code).where(i.c.id == r.c.inspection_id).scalar_subquery()
    return {"clock_due": due if running else null(), "force_code": force}


def _item_waiting(d, phase, cycle):
    """Whether a report-level deadline row is awaited, given its inspection's phase and cycle."""
    return and_(
        phase != InspectionPhase.CLOSED.value,
        or_(
            and_(d.c.key.in_(REPORT_ITEMS), d.c.met_at.is_(None)),
            and_(d.c.key == "revisit_by", d.c.cycle == cycle, phase == InspectionPhase.FOLLOWING_UP.value),
        ),
    )


def refresh_report_items(*where):
    """UPDATE of `deadlines.waiting_due` and `force_code` for the report-level rows matching `where`:
    the due date while the item is awaited (an action plan, PCC response or update on immediate
    recommendations not received; the revisit limit of the current cycle while the revisit is not
    open), of an inspection not closed; NULL otherwise."""
    d = Deadline.__table__
    i = Inspection.__table__
    phase = select(i.c.phase).where(i.c.id == d.c.inspection_id).scalar_subquery()
    cycle = select(i.c.cycle).where(i.c.id == d.c.inspection_id).scalar_subquery()
    force = select(i.c.force_code).where(i.c.id == d.c.inspection_id).scalar_subquery()
    return (
        update(d)
        .where(d.c.key.in_((*REPORT_ITEMS, "revisit_by")), *where)
        .values(waiting_due=case((_item_waiting(d, phase, cycle), d.c.current_due), else_=null()), force_code=force)
    )


def _sql_literal(value: str):
    # A literal, not a bound parameter, so that both databases can use the partial indexes
    # (`phase != 'closed'`) under a prepared statement's generic plan.
    return literal_column(f"'{value}'")


def dashboard_query(today: date, programme: str | None = None, phase: str | None = None):
    """One statement: every force with its aggregates over the projected columns (`clock_due` of
    open recommendations, `waiting_due` of report-level items, each with its force, each read
    through a partial index without a join), plus the rows not projected yet, read the long way."""
    r = Recommendation.__table__
    i = Inspection.__table__
    d = Deadline.__table__
    f = Force.__table__
    soon = today + timedelta(days=SOON_DAYS)

    def inspection_filter(inspection, correlated: bool = False):
        """The filters on an inspection: correlated (EXISTS per row) where few rows are read."""
        conditions = []
        if programme:
            conditions.append(inspection.c.programme == programme)
        if phase:
            rr = r.alias("in_phase")
            conditions.append(
                exists().where(rr.c.inspection_id == inspection.c.id, rr.c.phase == phase) if correlated
                else inspection.c.id.in_(select(rr.c.inspection_id).where(rr.c.phase == phase))
            )
        return conditions

    def of_filtered_inspections(column):
        """The filters on the inspection a row names (`column`), checked per row (EXISTS on an index)."""
        conditions = []
        if programme:
            fi = i.alias("filtered")
            conditions.append(exists().where(fi.c.id == column, fi.c.programme == programme))
        if phase:
            rr = r.alias("in_phase")
            conditions.append(exists().where(rr.c.inspection_id == column, rr.c.phase == phase))
        return conditions

    open_rec = r.c.phase != _sql_literal(Phase.CLOSED.value)
    if phase:
        # A recommendation in the phase is of an inspection with one in it: only a programme narrows further.
        rec_where = [open_rec, r.c.phase == phase]
        if programme:
            fi = i.alias("filtered")
            rec_where.append(r.c.inspection_id.in_(select(fi.c.id).where(fi.c.programme == programme)))
    elif programme:
        fi = i.alias("filtered")
        rec_where = [open_rec, r.c.inspection_id.in_(select(fi.c.id).where(fi.c.programme == programme))]
    else:
        rec_where = [open_rec]
    recs = (
        select(
            r.c.force_code.label("force"),
            func.count().label("open"),
            func.sum(case((r.c.clock_due < today, 1), else_=0)).label("overdue"),
            func.min(case((r.c.clock_due >= today, r.c.clock_due))).label("next_due"),
        )
        .where(*rec_where)
        .group_by(r.c.force_code)
        .subquery("recs")
    )

    item = d.alias("item")
    items = (
        select(
            item.c.force_code.label("force"),
            func.sum(case((item.c.waiting_due < today, 1), else_=0)).label("overdue"),
            func.min(case((item.c.waiting_due >= today, item.c.waiting_due))).label("next_due"),
            func.sum(case((and_(item.c.key == "revisit_by", item.c.waiting_due >= today, item.c.waiting_due <= soon), 1),
                          else_=0)).label("revisits"),
        )
        .where(item.c.waiting_due.isnot(None), *of_filtered_inspections(item.c.inspection_id))
        .group_by(item.c.force_code)
        .subquery("items")
    )

    # Not refreshed yet: open recommendations without a force, each with its running clock's row.
    fr = r.alias("fresh_rec")
    fi = i.alias("fresh_rec_inspection")
    clock = d.alias("clock")
    fresh_where = [fr.c.force_code.is_(None), fr.c.phase != Phase.CLOSED.value, *inspection_filter(fi, correlated=True)]
    if phase:
        fresh_where.append(fr.c.phase == phase)
    fresh_recs = (
        select(
            fi.c.force_code.label("force"),
            func.count().label("open"),
            func.sum(case((and_(_running(fr), clock.c.current_due < today), 1), else_=0)).label("overdue"),
            func.min(case((and_(_running(fr), clock.c.current_due >= today), clock.c.current_due))).label("next_due"),
        )
        .select_from(
            fr.join(fi, fi.c.id == fr.c.inspection_id).outerjoin(
                clock, and_(clock.c.recommendation_id == fr.c.id, clock.c.cycle == fr.c.cycle, clock.c.kind == _clock_kind(fr))
            )
        )
        .where(*fresh_where)
        .group_by(fi.c.force_code)
        .subquery("fresh_recs")
    )
    # ... and the report-level items of inspections not projected yet.
    ii = i.alias("fresh_inspection")
    fitem = d.alias("fresh_item")
    fresh_items = (
        select(
            ii.c.force_code.label("force"),
            func.sum(case((fitem.c.current_due < today, 1), else_=0)).label("overdue"),
            func.min(case((fitem.c.current_due >= today, fitem.c.current_due))).label("next_due"),
            func.sum(case((and_(fitem.c.key == "revisit_by", fitem.c.current_due >= today, fitem.c.current_due <= soon), 1),
                          else_=0)).label("revisits"),
        )
        .select_from(fitem.join(ii, ii.c.id == fitem.c.inspection_id))
        .where(
            ii.c.projection_version == literal_column("0"),
            fitem.c.force_code.is_(None),
            fitem.c.key.in_((*REPORT_ITEMS, "revisit_by")),
            _item_waiting(fitem, ii.c.phase, ii.c.cycle),
            *inspection_filter(ii, correlated=True),
        )
        .group_by(ii.c.force_code)
        .subquery("fresh_items")
    )

    ci = i.alias("counted")
    if phase:
        # The inspections with a recommendation in the phase, from those recommendations.
        cr = r.alias("counted_rec")
        counted = (
            select(ci.c.force_code.label("force"), func.count(cr.c.inspection_id.distinct()).label("inspections"))
            .select_from(cr.join(ci, ci.c.id == cr.c.inspection_id))
            .where(cr.c.phase == phase, *([ci.c.programme == programme] if programme else []))
            .group_by(ci.c.force_code)
            .subquery("counted")
        )
    else:
        counted = (
            select(ci.c.force_code.label("force"), func.count().label("inspections"))
            .where(*inspection_filter(ci))
            .group_by(ci.c.force_code)
            .subquery("counted")
        )

    zero = literal(0)
    return (
        select(
            f.c.code, f.c.name, f.c.region,
            func.coalesce(counted.c.inspections, zero),
            func.coalesce(recs.c.open, zero) + func.coalesce(fresh_recs.c.open, zero),
            func.coalesce(recs.c.overdue, zero) + func.coalesce(fresh_recs.c.overdue, zero),
            func.coalesce(items.c.overdue, zero) + func.coalesce(fresh_items.c.overdue, zero),
            recs.c.next_due,
            items.c.next_due,
            func.coalesce(items.c.revisits, zero) + func.coalesce(fresh_items.c.revisits, zero),
            fresh_recs.c.next_due,
            fresh_items.c.next_due,
        )
        .select_from(
            f.outerjoin(recs, recs.c.force == f.c.code)
            .outerjoin(items, items.c.force == f.c.code)
            .outerjoin(fresh_recs, fresh_recs.c.force == f.c.code)
            .outerjoin(fresh_items, fresh_items.c.force == f.c.code)
            .outerjoin(counted, counted.c.force == f.c.code)
        )
        .order_by(f.c.name)
    )


def _as_date(value) -> date | None:
    if value is None or isinstance(value, date):
        return value
    return date.fromisoformat(str(value)[:10])  # SQLite hands back MIN() of a date column as text


async def dashboard(
    sessions,
    *,
    today: date,
    programme: str | None = None,
    phase: str | None = None,
    sort: str = "force",
    descending: bool = False,
) -> Dashboard:
    """Every force at a glance (the 43 of the reference data, with or without inspections)."""
    if phase is not None and phase not in OPEN_PHASES:
        raise UserError(f"phase: {phase!r} is not one of: {', '.join(OPEN_PHASES)}")
    if sort not in SORT_KEYS:
        raise UserError(f"sort: {sort!r} is not one of: {', '.join(SORT_KEYS)}")
    async with sessions() as session:
        connection = await session.connection()
        rows = (await connection.execute(dashboard_query(today, programme, phase))).all()
        programmes = list((await connection.execute(select(Inspection.programme).distinct().order_by(Inspection.programme))).scalars())
    forces = []
    for code, name, region, inspections, open_, overdue, overdue_items, rec_next, item_next, revisits, *fresh in rows:
        candidates = [d for d in map(_as_date, (rec_next, item_next, *fresh)) if d is not None]
        next_deadline = min(candidates) if candidates else None
        forces.append(
            ForceSummary(
                code=code, name=name, region=region, inspections=int(inspections), open_recommendations=int(open_),
                overdue_recommendations=int(overdue), overdue_items=int(overdue_items), next_deadline=next_deadline,
                revisits_due=int(revisits), rag=rag_for(int(overdue) + int(overdue_items), next_deadline, int(revisits), today),
            )
        )
    forces.sort(key=SORT_KEYS[sort], reverse=descending)
    return Dashboard(today, forces, programmes, programme, phase, sort, descending)


# ---------------------------------------------------------------- the dashboard's today

SCALE_QUERY_TIMEOUT_SECONDS = 2.0
"""How long the dashboard waits for a follow-up to tell its time scale before it reads the wall clock."""

SCALE_RETRY_SECONDS = 60.0
"""After a follow-up did not answer, the wall clock is used for this long before it is asked again."""

_time_scales: dict[str, TimeScale] = {}
"""Inspection ID -> the time scale its follow-up runs on (fixed for the life of the follow-up)."""
_unanswered: dict[str, float] = {}
"""Inspection ID -> when (time.monotonic) its follow-up last failed to answer."""


async def follow_up_time_scale(sessions, client_for) -> TimeScale:
    """The time scale of the newest follow-up not closed, from its workflow's live view (one Query,
    once per follow-up); real time (the identity) when there is none, when its report was recorded
    without a workflow, or while Temporal does not answer.

    Under `NCPI_TIME_SCALE` (and `ncpi dev`, `--anchor-now`) a follow-up's calendar runs on its own
    mapping from the clock, known only to its workflow; at real time every follow-up's is the identity."""
    async with sessions() as session:
        newest = (await session.execute(
            select(Inspection.id, Inspection.workflow_id).where(Inspection.phase != InspectionPhase.CLOSED.value)
            .order_by(Inspection.published_on.desc(), Inspection.id.desc()).limit(1)
        )).first()
    if newest is None or newest.workflow_id is None:
        return TimeScale()
    inspection_id = newest.id
    if inspection_id in _time_scales:
        return _time_scales[inspection_id]
    failed = _unanswered.get(inspection_id)
    if failed is not None and time.monotonic() - failed < SCALE_RETRY_SECONDS:
        return TimeScale()
    async def ask():
        client = await client_for()
        return await client.get_workflow_handle(inspection_workflow_id(inspection_id)).query("state", result_type=InspectionView)

    try:
        view = await asyncio.wait_for(ask(), SCALE_QUERY_TIMEOUT_SECONDS)  # connecting included
    except Exception:  # Temporal away, no worker, the workflow gone: the wall clock, for a while
        _unanswered[inspection_id] = time.monotonic()
        return TimeScale()
    scale = getattr(view, "time_scale", None) or TimeScale()
    _time_scales[inspection_id] = scale
    _unanswered.pop(inspection_id, None)
    return scale


async def calendar_today(sessions, client_for, now: datetime) -> date:
    """The policy calendar's today (Europe/London) at the product's clock instant `now`, through the
    follow-ups' time scale: what "overdue" and "within 30 days" on the dashboard count from."""
    scale = await follow_up_time_scale(sessions, client_for)
    return local_date(scale.to_calendar(now))


# ---------------------------------------------------------------- a force


@dataclass(frozen=True)
class InspectionSummary:
    id: str
    title: str
    programme: str
    published_on: date
    phase: str
    cycle: int
    next_action: str | None
    next_action_at: Any
    recommendations: int
    open_recommendations: int
    revisit_by: date | None


@dataclass(frozen=True)
class ForcePage:
    force: Force
    inspections: list[InspectionSummary]


async def force_page(sessions, code: str) -> ForcePage:
    code = code.strip().upper()
    async with sessions() as session:
        force = await session.get(Force, code, options=[selectinload(Force.contacts)])
        if force is None:
            raise LookupError(f"no force {code}")
        r = Recommendation.__table__
        d = Deadline.__table__
        counts = (
            select(
                r.c.inspection_id,
                func.count().label("total"),
                func.sum(case((r.c.phase != Phase.CLOSED.value, 1), else_=0)).label("open"),
            )
            .group_by(r.c.inspection_id)
            .subquery()
        )
        revisit = (
            select(d.c.inspection_id, func.max(d.c.current_due).label("due"))
            .where(d.c.key == "revisit_by")
            .group_by(d.c.inspection_id)
            .subquery()
        )
        rows = (
            await session.execute(
                select(Inspection, counts.c.total, counts.c.open, revisit.c.due)
                .outerjoin(counts, counts.c.inspection_id == Inspection.id)
                .outerjoin(revisit, revisit.c.inspection_id == Inspection.id)
                .where(Inspection.force_code == code)
                .order_by(Inspection.published_on.desc())
            )
        ).all()
    return ForcePage(
        force,
        [
            InspectionSummary(
                insp.id, insp.title, insp.programme, insp.published_on, insp.phase, insp.cycle, insp.next_action,
                insp.next_action_at, int(total or 0), int(open_ or 0), _as_date(due),
            )
            for insp, total, open_, due in rows
        ],
    )


# ---------------------------------------------------------------- an inspection


@dataclass(frozen=True)
class InspectionPage:
    inspection: Inspection
    force: Force
    findings: list[Finding]
    recommendations: list[Recommendation]
    deadlines: list[Deadline]
    """Report-level deadlines (every cycle), with their revisions."""
    revisits: list[Revisit]
    audit: list[AuditEvent] = field(default_factory=list)
    all_deadlines: list[Deadline] = field(default_factory=list)
    """Every deadline of the report, its recommendations' too (for the timeline)."""
    notifications: list[Notification] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)


def _report_order(ref: str) -> tuple[int, str]:
    return (len(ref), ref)


async def inspection_page(sessions, inspection_id: str) -> InspectionPage:
    async with sessions() as session:
        inspection = await session.get(Inspection, inspection_id)
        if inspection is None:
            raise LookupError(f"no inspection {inspection_id}")
        force = await session.get(Force, inspection.force_code)
        findings = list(await session.scalars(select(Finding).where(Finding.inspection_id == inspection_id).order_by(Finding.id)))
        recommendations = sorted(
            await session.scalars(select(Recommendation).where(Recommendation.inspection_id == inspection_id)),
            key=lambda rec: _report_order(rec.ref),
        )
        deadlines = list(
            await session.scalars(
                select(Deadline)
                .options(selectinload(Deadline.revisions))
                .where(Deadline.inspection_id == inspection_id, Deadline.recommendation_id.is_(None))
                .order_by(Deadline.cycle, Deadline.current_due)
            )
        )
        revisits = list(await session.scalars(select(Revisit).where(Revisit.inspection_id == inspection_id).order_by(Revisit.cycle)))
        audit = list(
            await session.scalars(
                select(AuditEvent)
                .where(AuditEvent.entity_type == "inspection", AuditEvent.entity_id == inspection_id)
                .order_by(AuditEvent.occurred_at, AuditEvent.id)
            )
        )
        all_deadlines = list(await session.scalars(select(Deadline).where(Deadline.inspection_id == inspection_id)))
        notifications = list(await session.scalars(
            select(Notification).where(Notification.inspection_id == inspection_id).order_by(Notification.id)))
        decisions = list(await session.scalars(
            select(Decision).join(Recommendation, Recommendation.id == Decision.recommendation_id)
            .where(Recommendation.inspection_id == inspection_id).order_by(Decision.decided_at)))
    return InspectionPage(inspection, force, findings, recommendations, deadlines, revisits, audit,
                          all_deadlines, notifications, decisions)


# ---------------------------------------------------------------- a recommendation


@dataclass(frozen=True)
class RecommendationPage:
    recommendation: Recommendation
    inspection: Inspection
    force: Force
    finding: Finding | None
    deadlines: list[Deadline]
    progress: list[ProgressUpdate]
    evidence_requests: list[EvidenceRequest]
    evidence: list[Evidence]
    decisions: list[Decision]
    register: list[RegisterStatusEntry]
    notifications: list[Notification]
    audit: list[AuditEvent] = field(default_factory=list)


async def recommendation_page(sessions, recommendation_id: str) -> RecommendationPage:
    async with sessions() as session:
        rec = await session.get(Recommendation, recommendation_id)
        if rec is None:
            raise LookupError(f"no recommendation {recommendation_id}")
        inspection = await session.get(Inspection, rec.inspection_id)
        force = await session.get(Force, inspection.force_code)
        finding = await session.get(Finding, rec.finding_id) if rec.finding_id is not None else None

        async def rows(model, *where, order_by):
            return list(await session.scalars(select(model).where(*where).order_by(*order_by)))

        deadlines = list(
            await session.scalars(
                select(Deadline).options(selectinload(Deadline.revisions))
                .where(Deadline.recommendation_id == recommendation_id)
                .order_by(Deadline.cycle, Deadline.kind.desc())
            )
        )
        page = RecommendationPage(
            recommendation=rec,
            inspection=inspection,
            force=force,
            finding=finding,
            deadlines=deadlines,
            progress=await rows(ProgressUpdate, ProgressUpdate.recommendation_id == recommendation_id,
                                order_by=(ProgressUpdate.submitted_at, ProgressUpdate.id)),
            evidence_requests=await rows(EvidenceRequest, EvidenceRequest.recommendation_id == recommendation_id,
                                         order_by=(EvidenceRequest.cycle, EvidenceRequest.id)),
            evidence=await rows(Evidence, Evidence.recommendation_id == recommendation_id,
                                order_by=(Evidence.submitted_at, Evidence.id)),
            decisions=await rows(Decision, Decision.recommendation_id == recommendation_id, order_by=(Decision.cycle,)),
            register=await rows(RegisterStatusEntry, RegisterStatusEntry.recommendation_id == recommendation_id,
                                order_by=(RegisterStatusEntry.set_at, RegisterStatusEntry.id)),
            notifications=await rows(Notification, Notification.recommendation_id == recommendation_id,
                                     order_by=(Notification.scheduled_for, Notification.id)),
            audit=await rows(AuditEvent, AuditEvent.entity_type == "recommendation", AuditEvent.entity_id == recommendation_id,
                             order_by=(AuditEvent.occurred_at, AuditEvent.id)),
        )
    return page


async def evidence_file(sessions, evidence_id: int) -> Evidence:
    async with sessions() as session:
        row = await session.get(Evidence, evidence_id)
    if row is None:
        raise LookupError(f"no evidence {evidence_id}")
    return row
