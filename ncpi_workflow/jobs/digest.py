"""The inspectors' daily digest: revisits due within 30 days, overdue items, decisions awaited, read
from the records (never from workflow queries), sent each working day at 08:00 Europe/London."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError

from ncpi_workflow.clocks import (
    DEADLINE_LABELS,
    DeadlineKind,
    WorkingCalendar,
    england_and_wales_calendar,
)
from ncpi_workflow.formatting import as_utc_if_naive, local_date, long_date
from ncpi_workflow.lifecycle import (
    ForceClaim,
    InspectionPhase,
    Phase,
)
from ncpi_workflow.models import (
    Deadline,
    Inspection,
    Notification,
    Recommendation,
    Revisit,
)
from ncpi_workflow.policy import load_policy
from ncpi_workflow.settings import Settings
from ncpi_workflow.store import append_audit, insert_if_absent, resolve_recipients
from ncpi_workflow.jobs.common import REVISIT_HORIZON_DAYS, Sessions, log



def delivery_workflow_id(notification_id: int) -> str:
    """The NotificationDelivery workflow that delivers a notification no follow-up workflow owns."""
    return f"ncpi/notification/{notification_id}/deliver"


def _item(force_code: str, inspection_id: str, what: str, when: date | datetime | None) -> dict[str, Any]:
    if isinstance(when, datetime):
        when = as_utc_if_naive(when)
    return {"force_code": force_code, "inspection_id": inspection_id, "what": what,
            "when": when.isoformat() if when is not None else None}


def _latest_by_key(rows) -> dict[str, Deadline]:
    latest: dict[str, Deadline] = {}
    for row in rows:
        if row.key not in latest or row.cycle > latest[row.key].cycle:
            latest[row.key] = row
    return latest


def _cycle_note(cycle: int) -> str:
    return f" (follow-up cycle {cycle})" if cycle > 1 else ""


async def digest_sections(session: AsyncSession, today: date) -> dict[str, list[dict[str, Any]]]:
    """The digest's three lists on `today` (a London date), from the projection and deadline tables.

    - revisits_due: inspections following up whose revisit-by date (latest cycle) is within 30 days;
    - overdue: open clocks past their date and not met: report-level deadlines of inspections not
      closed, a recommendation's own deadline while the force still owes its update (the workflow's
      reminders stop once the force claims it implemented, or once the revisit opens), evidence
      requested and not sent, and a revisit-by date passed with the revisit not opened;
    - decisions_awaited: recommendations under review or with evidence requested.
    """
    inspections = {
        i.id: i
        for i in (await session.scalars(select(Inspection).where(Inspection.phase != InspectionPhase.CLOSED.value))).all()
    }
    recommendations = (
        await session.scalars(select(Recommendation).where(Recommendation.phase != Phase.CLOSED.value))
    ).all()
    involved = set(inspections) | {r.inspection_id for r in recommendations}
    deadlines = (await session.scalars(select(Deadline).where(Deadline.inspection_id.in_(involved)))).all() if involved else []
    force_of = dict((await session.execute(
        select(Inspection.id, Inspection.force_code).where(Inspection.id.in_(involved))
    )).all()) if involved else {}
    revisits: dict[str, Revisit] = {}
    if involved:
        for revisit in (await session.scalars(select(Revisit).where(Revisit.inspection_id.in_(involved)))).all():
            if revisit.inspection_id not in revisits or revisit.cycle > revisits[revisit.inspection_id].cycle:
                revisits[revisit.inspection_id] = revisit

    report_level: dict[str, list[Deadline]] = {}
    own: dict[str, list[Deadline]] = {}
    for d in deadlines:
        if d.recommendation_id is None:
            report_level.setdefault(d.inspection_id, []).append(d)
        else:
            own.setdefault(d.recommendation_id, []).append(d)

    horizon = today + timedelta(days=REVISIT_HORIZON_DAYS)
    revisits_due, overdue, awaited = [], [], []
    for inspection in inspections.values():
        latest = _latest_by_key(report_level.get(inspection.id, []))
        for key, d in latest.items():
            if d.met_at is not None:
                continue
            if d.kind == DeadlineKind.REVISIT_BY.value:
                if inspection.phase != InspectionPhase.FOLLOWING_UP.value:
                    continue  # the revisit is open: the limit was kept
                label = DEADLINE_LABELS[DeadlineKind.REVISIT_BY] + _cycle_note(d.cycle)
                if today <= d.current_due <= horizon:
                    revisits_due.append(_item(inspection.force_code, inspection.id, label, d.current_due))
                elif d.current_due < today:
                    overdue.append(_item(inspection.force_code, inspection.id,
                                         f"Revisit not yet opened{_cycle_note(d.cycle)}: it was due no later than", d.current_due))
            elif d.current_due < today:
                try:
                    label = DEADLINE_LABELS[DeadlineKind(d.kind)]
                except ValueError:
                    label = key
                overdue.append(_item(inspection.force_code, inspection.id, f"{label} was due", d.current_due))

    for rec in recommendations:
        force_code = force_of.get(rec.inspection_id, rec.inspection_id.split("-", 1)[0])
        latest = _latest_by_key(own.get(rec.id, []))
        mine = latest.get(f"recommendation:{rec.ref}")
        evidence = latest.get(f"evidence:{rec.ref}")
        owes_update = rec.phase in (Phase.PUBLISHED.value, Phase.FORCE_NOTIFIED.value, Phase.IN_PROGRESS.value) \
            and rec.force_claim != ForceClaim.IMPLEMENTED.value
        if owes_update and mine is not None and mine.met_at is None and mine.current_due < today:
            overdue.append(_item(force_code, rec.inspection_id,
                                 f"Recommendation {rec.ref}{_cycle_note(mine.cycle)}: the force's update was due", mine.current_due))
        if rec.phase == Phase.EVIDENCE_REQUESTED.value:
            evidence_due = evidence.current_due if evidence is not None and evidence.cycle == rec.cycle else None
            if evidence_due is not None and evidence_due < today and evidence.met_at is None:
                overdue.append(_item(force_code, rec.inspection_id, f"Evidence for recommendation {rec.ref} was due", evidence_due))
                what = f"Recommendation {rec.ref}: no evidence by its date; the inspectorate may decide without it"
            elif evidence_due is not None:
                what = f"Recommendation {rec.ref}: evidence requested, due"
            else:
                what = f"Recommendation {rec.ref}: evidence requested"
            awaited.append(_item(force_code, rec.inspection_id, what, evidence_due))
        elif rec.phase == Phase.UNDER_REVIEW.value:
            revisit = revisits.get(rec.inspection_id)
            if revisit is not None:
                awaited.append(_item(force_code, rec.inspection_id, f"Recommendation {rec.ref}: evidence in, under review since",
                                     revisit.opened_at))
            else:
                awaited.append(_item(force_code, rec.inspection_id, f"Recommendation {rec.ref}: evidence in, under review", None))

    def by_when(item):
        return (item["when"] or "9999", item["force_code"], item["inspection_id"], item["what"])

    return {
        "revisits_due": sorted(revisits_due, key=by_when),
        "overdue": sorted(overdue, key=by_when),
        "decisions_awaited": sorted(awaited, key=lambda i: (i["force_code"], i["inspection_id"], i["what"])),
    }


def _working_calendar(settings: Settings, around: date) -> WorkingCalendar:
    policy = load_policy(settings.policy)
    return england_and_wales_calendar(policy.calendar, range(around.year - 1, around.year + 2))


async def _start_delivery(client: Client, settings: Settings, notification_id: int, reuse: WorkflowIDReusePolicy) -> bool:
    try:
        await client.start_workflow(
            "NotificationDelivery", notification_id, id=delivery_workflow_id(notification_id),
            task_queue=settings.task_queue, id_reuse_policy=reuse, id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
        )
    except WorkflowAlreadyStartedError:
        return False
    return True


async def send_digest(sessions: Sessions, client: Client, settings: Settings, now: datetime) -> int | None:
    """Record the inspectors' digest for the London day of `now` and start its delivery.

    Idempotent: the notification's key is digest/<date>, and its delivery workflow ID refuses a
    second start, so calling again the same day returns the same notification ID and sends nothing
    more. Returns None on a weekend or bank holiday (England and Wales), when there is no digest."""
    if now.tzinfo is None:
        raise ValueError("send_digest needs an aware datetime")
    today = local_date(now)
    if not _working_calendar(settings, today).is_working_day(today):
        log.info("no digest on %s: not a working day", today.isoformat())
        return None
    key = f"digest/{today.isoformat()}"
    inspectorate = {"inspectors": settings.inspectors_email, "lead_hm_inspector": settings.lead_hm_inspector_email}
    async with sessions.begin() as session:
        notification_id = await session.scalar(select(Notification.id).where(Notification.idempotency_key == key))
        if notification_id is None:
            sections = await digest_sections(session, today)
            recipients = await resolve_recipients(session, "ALL", ["inspectors"], inspectorate)
            inserted = await insert_if_absent(
                session, Notification, ["idempotency_key"],
                idempotency_key=key, kind="digest", inspection_id=None, recommendation_id=None,
                recipients=recipients, subject=f"Inspection follow-up: daily digest for {long_date(today)}",
                context={"date": today.isoformat(), **sections}, status="pending", attempts=0,
                scheduled_for=now.astimezone(timezone.utc),
            )
            notification_id = await session.scalar(select(Notification.id).where(Notification.idempotency_key == key))
            if inserted:
                await append_audit(
                    session, actor="system", action="notification.digest", entity_type="notification",
                    entity_id=str(notification_id),
                    detail={"key": key, "to": recipients["to"], **{name: len(items) for name, items in sections.items()}},
                    idempotency_key=f"{key}/audit",
                )
    if await _start_delivery(client, settings, notification_id, WorkflowIDReusePolicy.REJECT_DUPLICATE):
        log.info("digest for %s: notification %s, delivery started", today.isoformat(), notification_id)
    return notification_id
