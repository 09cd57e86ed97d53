"""The facts an email's templates need, read from its outbox row and the records it points at.

Used by the delivery activity at an email's first rendering and by the inbound path for its
acknowledgements: one reading of the records for every email, kept below both.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from types import SimpleNamespace

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from ncpi_workflow.emails import DecisionFacts, EmailContext, RecommendationFacts
from ncpi_workflow.models import Deadline, Decision, Inspection, Notification, Recommendation


async def email_context(session: AsyncSession, n: Notification) -> EmailContext:
    """Everything the templates need, from the outbox row and the records it points at.

    A notification about no inspection (the inspectors' daily digest) gets placeholders for the
    report's fields, as the worked digest example has, and the digest's lists from its context."""
    ctx = n.context or {}
    if n.inspection_id is None:
        from ncpi_workflow.emails import DigestItem
        from ncpi_workflow.formatting import local_date

        def when(value: str | None) -> date | datetime | None:
            if not value:
                return None
            return date.fromisoformat(value) if len(value) == 10 else datetime.fromisoformat(value)

        scheduled_for = n.scheduled_for or n.created_at
        digest = {}
        if n.kind == "digest":
            digest = {
                section: [DigestItem(i["force_code"], i["inspection_id"], i["what"], when(i.get("when"))) for i in ctx.get(section) or []]
                for section in ("revisits_due", "overdue", "decisions_awaited")
            }
        return EmailContext(
            kind=n.kind, subject=n.subject, force_code="ALL", force_name="All forces", inspection_id="",
            inspection_title="Daily digest" if n.kind == "digest" else n.subject,
            published=date.fromisoformat(ctx["date"]) if ctx.get("date") else local_date(scheduled_for),
            source_url="", scheduled_for=scheduled_for, recipients=list(n.recipients.get("roles", [])),
            digest=digest, reference=n.idempotency_key,
        )
    records = await read_email_records(session, n.inspection_id)
    decision = None
    if n.kind in ("decision", "further_follow_up") or ctx.get("rung") == "not_achieved":
        decision = await _decision_facts(session, n)
    failed = None
    if n.kind == "delivery_failed":
        original = await session.get(Notification, ctx.get("failed_id"))
        failed = {"id": original.id, "kind": original.kind, "subject": original.subject,
                  "to": original.recipients.get("to", []), "error": original.last_error or ""}
    return context_from_records(records, n, decision, failed)


@dataclass
class EmailRecords:
    """The rows an email of an inspection is rendered from (`read_email_records`), as plain snapshots: a
    caller may change them to the rows as an event is about to leave them (activities/rendering.py) without
    touching a session."""

    inspection: SimpleNamespace
    force: SimpleNamespace
    recommendations: list[SimpleNamespace]
    """Ordered by id."""
    deadlines: list[SimpleNamespace]


_INSPECTION = ("id", "force_code", "title", "published_on", "source_url")
_FORCE = ("code", "name")
_RECOMMENDATION = ("id", "ref", "text", "timeframe", "phase", "outcome", "illustrative", "projection_version")
_DEADLINE = ("id", "inspection_id", "recommendation_id", "key", "kind", "cycle", "original_due", "current_due", "met_at")


def _snapshot(row, names) -> SimpleNamespace:
    return SimpleNamespace(**{name: getattr(row, name) for name in names})


async def read_email_records(session: AsyncSession, inspection_id: str) -> EmailRecords:
    """Every row the emails of one inspection (and their access links) are rendered from: four reads."""
    inspection = await session.get(Inspection, inspection_id)
    from ncpi_workflow.models import Force

    force = await session.get(Force, inspection.force_code)
    recs = (await session.scalars(
        select(Recommendation).where(Recommendation.inspection_id == inspection.id).order_by(Recommendation.id)
    )).all()
    deadlines = (await session.scalars(select(Deadline).where(Deadline.inspection_id == inspection.id))).all()
    return EmailRecords(_snapshot(inspection, _INSPECTION), _snapshot(force, _FORCE),
                        [_snapshot(r, _RECOMMENDATION) for r in recs], [_snapshot(d, _DEADLINE) for d in deadlines])


def context_from_records(records: EmailRecords, n, decision: DecisionFacts | None = None,
                         failed: dict | None = None) -> EmailContext:
    """An email's context from its row (or the row it is about to be) and the records it is rendered from;
    `decision` and `failed` as `email_context` reads them. No database access."""
    ctx = n.context or {}
    inspection, force, recs, deadlines = records.inspection, records.force, records.recommendations, records.deadlines

    def facts(rec) -> RecommendationFacts:
        own = sorted((d for d in deadlines if d.recommendation_id == rec.id and d.kind == "recommendation"), key=lambda d: d.cycle)
        latest = own[-1] if own else None
        return RecommendationFacts(
            ref=rec.ref, text=rec.text, timeframe=rec.timeframe,
            due=latest.current_due if latest else None, original_due=latest.original_due if latest else None,
            phase=rec.phase, outcome=rec.outcome, illustrative=rec.illustrative,
        )

    recommendation = next((facts(r) for r in recs if r.id == n.recommendation_id), None)
    report_deadlines = {d.key: d.current_due for d in deadlines if d.recommendation_id is None and d.cycle == 1}
    due = date.fromisoformat(ctx["due"]) if ctx.get("due") else None
    deadline_key = ctx.get("deadline")
    label = None
    if deadline_key:
        from ncpi_workflow.clocks import DEADLINE_LABELS, DeadlineKind

        if deadline_key in ("recommendation", "evidence") and recommendation:
            label = f"{'Evidence for recommendation' if deadline_key == 'evidence' else 'Recommendation'} {recommendation.ref}"
        elif deadline_key in {k.value for k in DeadlineKind}:
            label = DEADLINE_LABELS[DeadlineKind(deadline_key)]
    ref_of = {r.id: r.ref for r in recs}
    reopened = {}
    if n.kind == "reopened":
        reopened = dict(reopen_reason=ctx.get("reason"), reopened_by=ctx.get("by"),
                        reopened_at=_instant(ctx.get("at")) or n.scheduled_for or n.created_at)
    return EmailContext(
        kind=n.kind, subject=n.subject, force_code=force.code, force_name=force.name,
        inspection_id=inspection.id, inspection_title=inspection.title, published=inspection.published_on,
        source_url=inspection.source_url, scheduled_for=n.scheduled_for or n.created_at,
        recipients=list(n.recipients.get("roles", [])), deadline_label=label, deadline_key=deadline_key, due=due,
        working_days=ctx.get("working_days"), rung=ctx.get("rung"), cycle=ctx.get("cycle") or 1,
        recommendation=recommendation, recommendations=[facts(r) for r in recs], report_deadlines=report_deadlines,
        decision=decision,
        outcomes={ref_of.get(k, k): v for k, v in (ctx.get("outcomes") or {}).items()},
        revisit_trigger=ctx.get("trigger"), failed_notification=failed,
        reference=n.idempotency_key, triggered_by=ctx.get("by"),
        evidence_what=f"Evidence that recommendation {recommendation.ref} has been implemented"
        if n.kind == "evidence_request" and recommendation else None,
        **reopened,
    )


def _instant(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


async def _decision_facts(session: AsyncSession, n: Notification) -> DecisionFacts | None:
    """The decision a notification is about, from the facts recorded with it.

    Rows recorded before their payload carried the facts fall back to the Decision row of the
    notification's own cycle, never simply the newest: a later decision (or a concurrent one) is
    another event."""
    ctx = n.context or {}
    if "rationale" in ctx:
        return DecisionFacts(ctx.get("outcome"), ctx["rationale"], ctx.get("by"), _instant(ctx.get("at")) or n.scheduled_for or n.created_at)
    if not n.recommendation_id or not ctx.get("cycle"):
        return None
    if n.kind == "further_follow_up" and str(ctx.get("why", "")).startswith("re-opened"):
        return None  # a re-opening, not a decision: the old decision is not what this cycle is about
    # A further follow-up's cycle is the new one; the decision that started it closed the one before.
    cycle = ctx["cycle"] - 1 if n.kind == "further_follow_up" else ctx["cycle"]
    row = await session.scalar(select(Decision).where(Decision.recommendation_id == n.recommendation_id, Decision.cycle == cycle))
    return DecisionFacts(row.outcome, row.rationale, row.decided_by, row.decided_at) if row is not None else None
