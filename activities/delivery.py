"""Delivering the outbox by email, exactly once in effect.

`deliver_notification` sends a recorded notification unless it was already sent, and marks it
sent. Transient failures raise, and Temporal retries them with backoff for as long as it takes;
a permanent refusal is recorded as failed with the server's answer and the inspectors are told.

The one window no design closes: the server accepts the message and the worker dies before the row
is marked sent. The retried activity then sends again, with the same Message-ID (derived from the
notification's idempotency key), so the repeat is recognisable as the same message.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity

from ncpi_workflow.emails import DecisionFacts, EmailContext, EmailTemplateError, RecommendationFacts, render_email
from ncpi_workflow.mailer import Mailer, PermanentDeliveryError, TransientDeliveryError, build_message, message_id_for
from ncpi_workflow.models import Deadline, Decision, Inspection, Notification, Recommendation, utcnow
from ncpi_workflow.store import append_audit, insert_if_absent


@dataclass(frozen=True)
class DeliverySettings:
    mail_from: str
    reply_to: str | None
    inspectors_email: str
    templates_dir: Path | None


SENT, FAILED = "sent", "failed"


class DeliveryActivities:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], mailer: Mailer, settings: DeliverySettings):
        self.sessions = sessions
        self.mailer = mailer
        self.settings = settings

    def all(self) -> list:
        return [self.deliver_notification]

    @activity.defn
    async def deliver_notification(self, notification_id: int) -> str:
        """Send one outbox notification by email unless already sent. Returns its final status."""
        async with self.sessions() as session:
            notification = await session.get(Notification, notification_id)
            if notification is None:
                raise LookupError(f"no notification {notification_id}")
            if notification.status == SENT:
                return SENT  # a retry after success
            failed = notification.status == FAILED
            # A failure already reported was recorded with its alert, which may not have gone out yet.
            alert_id = await self._pending_alert(session, notification) if failed else None
            context = None if failed else await email_context(session, notification)
        if failed:
            if alert_id is not None:
                await self._deliver_alert(alert_id)
            return FAILED
        return await self._send(notification_id, context)

    async def _send(self, notification_id: int, context: EmailContext) -> str:
        context.reply_to = self.settings.reply_to
        try:
            rendered = render_email(context, self.settings.templates_dir)
        except EmailTemplateError as exc:
            # A broken template or missing data: retrying cannot help, so it is a permanent failure.
            return await self._fail(notification_id, f"template error: {exc}", message_id=None)
        # Count the attempt first, then send holding no database connection: a burst of deliveries
        # waiting their turn on the shared SMTP connection would otherwise hold the whole connection
        # pool, and every other activity of the worker would wait for it.
        async with self.sessions.begin() as session:
            notification = await session.get(Notification, notification_id)
            notification.attempts += 1
            message_id = message_id_for(notification.idempotency_key, self.settings.mail_from)
            message = build_message(
                mail_from=self.settings.mail_from, reply_to=self.settings.reply_to, to=list(notification.recipients["to"]),
                subject=rendered.subject, text=rendered.text, html=rendered.html, message_id=message_id,
                reference=notification.idempotency_key,
            )
        try:
            await self.mailer.send(message)
        except TransientDeliveryError as exc:
            await self._record(notification_id, last_error=str(exc))
            raise  # Temporal retries with backoff
        except PermanentDeliveryError as exc:
            return await self._fail(notification_id, exc.answer, message_id)
        await self._record(notification_id, status=SENT, sent_at=utcnow(), message_id=message_id, last_error=None)
        return SENT

    async def _record(self, notification_id: int, **values) -> None:
        async with self.sessions.begin() as session:
            await session.execute(update(Notification).where(Notification.id == notification_id).values(**values))

    async def _fail(self, notification_id: int, answer: str, message_id: str | None) -> str:
        """Record a permanent failure with the server's answer, then tell the inspectors.

        FAILED, its audit row and the inspectors' alert are one transaction: a retry that finds
        FAILED can rely on the alert having been recorded, and delivers it if it is still pending."""
        async with self.sessions.begin() as session:
            notification = await session.get(Notification, notification_id)
            notification.status = FAILED
            notification.last_error = answer
            notification.message_id = message_id
            await append_audit(
                session, actor="system", action="notification.failed", entity_type="notification",
                entity_id=str(notification.id), detail={"answer": answer, "to": notification.recipients["to"]},
                idempotency_key=f"{notification.idempotency_key}/failed",
            )
            alert_id = await self._record_alert(session, notification)
        if alert_id is not None:
            await self._deliver_alert(alert_id)
        return FAILED

    def _alert_key(self, failed: Notification) -> str:
        return f"{failed.idempotency_key}/delivery_failed"

    async def _record_alert(self, session: AsyncSession, failed: Notification) -> int | None:
        """Record a delivery_failed notice to the inspectors' mailbox (once; never about itself)."""
        if failed.kind == "delivery_failed":
            return None
        key = self._alert_key(failed)
        await insert_if_absent(
            session, Notification, ["idempotency_key"],
            idempotency_key=key, kind="delivery_failed", inspection_id=failed.inspection_id,
            recommendation_id=failed.recommendation_id,
            recipients={"to": [self.settings.inspectors_email], "roles": ["inspectors"]},
            subject=f"Email not delivered: {failed.subject}",
            context={"failed_id": failed.id}, status="pending", attempts=0, scheduled_for=utcnow(),
        )
        return await session.scalar(select(Notification.id).where(Notification.idempotency_key == key))

    async def _pending_alert(self, session: AsyncSession, failed: Notification) -> int | None:
        return await session.scalar(
            select(Notification.id).where(Notification.idempotency_key == self._alert_key(failed), Notification.status == "pending")
        )

    async def _deliver_alert(self, alert_id: int) -> None:
        try:
            await self.deliver_notification(alert_id)
        except TransientDeliveryError:
            pass  # stays pending: `ncpi outbox` shows it, and the reconciliation job re-sends pending mail


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
    inspection = await session.get(Inspection, n.inspection_id)
    from ncpi_workflow.models import Force

    force = await session.get(Force, inspection.force_code)
    recs = (await session.scalars(
        select(Recommendation).where(Recommendation.inspection_id == inspection.id).order_by(Recommendation.id)
    )).all()
    deadlines = (await session.scalars(select(Deadline).where(Deadline.inspection_id == inspection.id))).all()

    def facts(rec: Recommendation) -> RecommendationFacts:
        own = sorted((d for d in deadlines if d.recommendation_id == rec.id and d.kind == "recommendation"), key=lambda d: d.cycle)
        latest = own[-1] if own else None
        return RecommendationFacts(
            ref=rec.ref, text=rec.text, timeframe=rec.timeframe,
            due=latest.current_due if latest else None, original_due=latest.original_due if latest else None,
            phase=rec.phase, outcome=rec.outcome, illustrative=rec.illustrative,
        )

    recommendation = next((facts(r) for r in recs if r.id == n.recommendation_id), None)
    report_deadlines = {d.key: d.current_due for d in deadlines if d.recommendation_id is None and d.cycle == 1}
    decision = None
    if n.kind in ("decision", "further_follow_up") or ctx.get("rung") == "not_achieved":
        decision = await _decision_facts(session, n)
    failed = None
    if n.kind == "delivery_failed":
        original = await session.get(Notification, ctx.get("failed_id"))
        failed = {"id": original.id, "kind": original.kind, "subject": original.subject,
                  "to": original.recipients.get("to", []), "error": original.last_error or ""}
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
