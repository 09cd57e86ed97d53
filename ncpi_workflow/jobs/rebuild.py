"""A follow-up's state rebuilt from the records, for restarting a workflow that was terminated,
failed or lost behind our back."""

from __future__ import annotations

from datetime import datetime, time, timezone

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from ncpi_workflow.clocks import (
    DeadlineKind,
    Party,
    Timeframe,
    WorkingCalendar,
    recommendation_deadline,
    report_deadlines,
)
from ncpi_workflow.formatting import as_utc_if_naive
from ncpi_workflow.lifecycle import (
    EvidenceItem,
    ForceClaim,
    HistoryEntry,
    InspectionPhase,
    InspectionState,
    Outcome,
    Phase,
    RecommendationInput,
    RecommendationState,
    Revision,
    TrackedDeadline,
    inspection_workflow_id,
    recommendation_workflow_id,
)
from ncpi_workflow.models import (
    Deadline,
    DeadlineRevision,
    Decision,
    Evidence,
    EvidenceRequest,
    Force,
    Inspection,
    Notification,
    Recommendation,
    Revisit,
)
from ncpi_workflow.jobs.common import ORPHAN_KINDS, RECONCILER
from ncpi_workflow.jobs.digest import _latest_by_key
from ncpi_workflow.jobs.health import _Clocks



def _utc(instant: datetime | None) -> datetime | None:
    return as_utc_if_naive(instant) if instant is not None else None


def _published_at(inspection: Inspection, calendar: WorkingCalendar) -> datetime:
    return calendar.next_send_time(calendar.at(inspection.published_on, time(0, 0)))


async def _handled(session: AsyncSession, workflow_id: str, **where) -> list[str]:
    """Message keys the workflow already sent: its outbox keys without the workflow ID prefix."""
    prefix = f"{workflow_id}/"
    clauses = [getattr(Notification, k) == v if v is not None else getattr(Notification, k).is_(None) for k, v in where.items()]
    keys = (await session.scalars(select(Notification.idempotency_key).where(*clauses))).all()
    return [k[len(prefix):] for k in keys if k.startswith(prefix)]


async def _undelivered(session: AsyncSession, **where) -> list[int]:
    clauses = [getattr(Notification, k) == v if v is not None else getattr(Notification, k).is_(None) for k, v in where.items()]
    return list((await session.scalars(
        select(Notification.id).where(*clauses, Notification.status == "pending", Notification.kind.not_in(ORPHAN_KINDS))
        .order_by(Notification.id)
    )).all())


async def _revisions(session: AsyncSession, deadline_id: int) -> list[Revision]:
    rows = (await session.scalars(
        select(DeadlineRevision).where(DeadlineRevision.deadline_id == deadline_id).order_by(DeadlineRevision.id)
    )).all()
    return [Revision(r.previous_due, r.new_due, r.reason, r.changed_by, _utc(r.changed_at)) for r in rows]


def _history(clocks: _Clocks, why: str) -> list[HistoryEntry]:
    return [HistoryEntry(at=clocks.time_scale.to_calendar(datetime.now(timezone.utc)), event="restarted by the reconciler",
                         by=RECONCILER, detail=why)]


def _cycle_start(decisions: list[Decision], cycle: int, fallback: datetime) -> datetime:
    """When a cycle after the first began: the decision (or re-opening) that closed the one before."""
    times = [_utc(t) for d in decisions if d.cycle == cycle - 1 for t in (d.decided_at, d.reopened_at) if t is not None]
    return max(times) if times else fallback


async def recommendation_state(
    session: AsyncSession, rec: Recommendation, inspection: Inspection, clocks: _Clocks, why: str
) -> RecommendationState:
    """A recommendation workflow's state rebuilt from the records: the projection (phase, cycle,
    claim, outcome), its deadline and evidence clocks with their revisions, the evidence received,
    the messages already sent (the outbox) and those still to deliver."""
    workflow_id = recommendation_workflow_id(rec.id)
    calendar = clocks.calendar
    published_at = _published_at(inspection, calendar)
    decisions = list((await session.scalars(select(Decision).where(Decision.recommendation_id == rec.id))).all())
    rows = (await session.scalars(select(Deadline).where(Deadline.recommendation_id == rec.id))).all()
    handled = await _handled(session, workflow_id, recommendation_id=rec.id)

    def current(key: str) -> Deadline | None:
        mine = sorted((d for d in rows if d.key == key), key=lambda d: d.cycle)
        return next((d for d in mine if d.cycle == rec.cycle), mine[-1] if mine else None)

    row = current(f"recommendation:{rec.ref}")
    if row is not None:
        deadline = TrackedDeadline(
            key="recommendation", kind=DeadlineKind.RECOMMENDATION, party=Party.FORCE, original_due=row.original_due,
            due=row.current_due, opened_at=published_at if row.cycle == 1 else _cycle_start(decisions, row.cycle, published_at),
            cycle=row.cycle, met_at=_utc(row.met_at), revisions=await _revisions(session, row.id), handled=list(handled),
        )
    else:
        base = recommendation_deadline(rec.ref, Timeframe(rec.timeframe), inspection.published_on, clocks.policy, calendar)
        deadline = TrackedDeadline(
            key="recommendation", kind=DeadlineKind.RECOMMENDATION, party=Party.FORCE, original_due=base.due, due=base.due,
            opened_at=published_at, cycle=1, handled=list(handled),
        )

    requests = {r.id: r for r in (await session.scalars(select(EvidenceRequest).where(EvidenceRequest.recommendation_id == rec.id))).all()}
    evidence_rows = (await session.scalars(select(Evidence).where(Evidence.recommendation_id == rec.id).order_by(Evidence.id))).all()
    evidence = []
    for e in evidence_rows:
        request = requests.get(e.evidence_request_id)
        if request is not None:
            cycle = request.cycle
        else:  # sent before that cycle's request: after the requests of earlier cycles
            earlier = [r.cycle for r in requests.values() if _utc(r.requested_at) <= _utc(e.submitted_at)]
            cycle = min(rec.cycle, max(earlier, default=0) + 1)
        evidence.append(EvidenceItem(e.id, e.filename, e.sha256, e.size_bytes, e.submitted_by, _utc(e.submitted_at), cycle))

    evidence_deadline = None
    ev_row = current(f"evidence:{rec.ref}")
    if ev_row is not None and ev_row.cycle == rec.cycle and rec.phase in (
        Phase.EVIDENCE_REQUESTED.value, Phase.EVIDENCE_SUBMITTED.value, Phase.UNDER_REVIEW.value
    ):
        revisit = await session.scalar(
            select(Revisit).where(Revisit.inspection_id == inspection.id).order_by(Revisit.cycle.desc()).limit(1)
        )
        request = next((r for r in requests.values() if r.cycle == rec.cycle), None)
        opened = _utc(revisit.opened_at) if revisit is not None else _utc(request.requested_at) if request else published_at
        sent = [e.at for e in evidence if e.cycle == rec.cycle]
        evidence_deadline = TrackedDeadline(
            key="evidence", kind=DeadlineKind.EVIDENCE, party=Party.FORCE, original_due=ev_row.original_due,
            due=ev_row.current_due, opened_at=opened, cycle=rec.cycle, met_at=min(sent) if sent else None,
            revisions=await _revisions(session, ev_row.id), handled=list(handled),
        )

    return RecommendationState(
        phase=Phase(rec.phase),
        cycle=rec.cycle,
        deadline=deadline,
        force_claim=ForceClaim(rec.force_claim) if rec.force_claim else None,
        outcome=Outcome(rec.outcome) if rec.outcome else None,
        review_open=rec.phase in (Phase.EVIDENCE_REQUESTED.value, Phase.UNDER_REVIEW.value),
        evidence_deadline=evidence_deadline,
        evidence=evidence,
        history=_history(clocks, why),
        projection_version=rec.projection_version,
        undelivered=await _undelivered(session, recommendation_id=rec.id),
    )


async def inspection_state(
    session: AsyncSession, inspection: Inspection, recommendations: list[Recommendation], clocks: _Clocks, why: str
) -> InspectionState:
    """An inspection workflow's state rebuilt from the records: phase and cycle (projection), its
    report-level clocks, the recommendations still open, the revisit in progress and its decisions,
    the messages already sent and those still to deliver."""
    workflow_id = inspection_workflow_id(inspection.id)
    calendar = clocks.calendar
    published_at = _published_at(inspection, calendar)
    planned = report_deadlines(
        inspection.published_on, [(r.ref, Timeframe(r.timeframe)) for r in recommendations], clocks.policy, calendar
    )
    planned = [d for d in planned if d.kind is not DeadlineKind.RECOMMENDATION]
    rows = (await session.scalars(
        select(Deadline).where(Deadline.inspection_id == inspection.id, Deadline.recommendation_id.is_(None))
    )).all()
    latest = _latest_by_key(rows)
    decisions = list((await session.scalars(
        select(Decision).where(Decision.recommendation_id.in_([r.id for r in recommendations]))
    )).all()) if recommendations else []
    handled = await _handled(session, workflow_id, inspection_id=inspection.id, recommendation_id=None)
    default_party = {DeadlineKind.PCC_RESPONSE.value: Party.PCC, DeadlineKind.REVISIT_BY.value: Party.INSPECTORATE}

    deadlines = []
    keys = [d.key for d in planned] + sorted(k for k in latest if k not in {d.key for d in planned})
    for key in keys:
        plan = next((d for d in planned if d.key == key), None)
        row = latest.get(key)
        if row is None:
            deadlines.append(TrackedDeadline(key=key, kind=plan.kind, party=plan.party, original_due=plan.due, due=plan.due,
                                             opened_at=published_at, reminded=plan.reminded, handled=list(handled)))
            continue
        deadlines.append(TrackedDeadline(
            key=key, kind=DeadlineKind(row.kind), party=plan.party if plan else default_party.get(row.kind, Party.FORCE),
            original_due=row.original_due, due=row.current_due,
            opened_at=published_at if row.cycle == 1 else _cycle_start(decisions, row.cycle, published_at),
            cycle=row.cycle, reminded=plan.reminded if plan else True, met_at=_utc(row.met_at),
            revisions=await _revisions(session, row.id), handled=list(handled),
        ))

    phase = InspectionPhase(inspection.phase)
    settled: dict[str, str] = {}
    revisit = None
    if phase is InspectionPhase.REVISIT_OPEN:
        revisit = await session.scalar(
            select(Revisit).where(Revisit.inspection_id == inspection.id, Revisit.cycle == inspection.cycle)
        )
        opened = _utc(revisit.opened_at) if revisit is not None else None
        settled = {  # decisions of this revisit (not a withdrawal before it) that still stand
            d.recommendation_id: d.outcome for d in decisions
            if d.cycle == inspection.cycle and d.reopened_at is None and (opened is None or _utc(d.decided_at) >= opened)
        }
    open_recommendations = [r.id for r in recommendations if r.phase != Phase.CLOSED.value or r.id in settled]
    return InspectionState(
        phase=phase,
        cycle=inspection.cycle,
        deadlines=deadlines,
        open_recommendations=open_recommendations,
        settled=settled,
        revisit_opened_at=_utc(revisit.opened_at) if revisit else None,
        revisit_trigger=revisit.trigger if revisit else None,
        revisit_by=revisit.triggered_by if revisit else None,
        history=_history(clocks, why),
        projection_version=inspection.projection_version,
        undelivered=await _undelivered(session, inspection_id=inspection.id, recommendation_id=None),
    )


async def _recommendation_input(
    session: AsyncSession, rec: Recommendation, inspection: Inspection, clocks: _Clocks, carried: RecommendationState | None
) -> RecommendationInput:
    force = await session.get(Force, inspection.force_code)
    return RecommendationInput(
        inspection_id=inspection.id, recommendation_id=rec.id, ref=rec.ref, force_code=inspection.force_code,
        force_name=force.name if force is not None else inspection.force_code, timeframe=rec.timeframe,
        published=inspection.published_on, policy=clocks.policy, calendar=clocks.calendar, time_scale=clocks.time_scale,
        parent_workflow_id=inspection_workflow_id(inspection.id), carried=carried,
    )
