"""An outbox notification rendered when its event is recorded, not when it is first delivered.

The recording activities (activities/records.py: `record_event` for a whole event, and
`record_notification`) call `OutboxRenderer.prepare` for their notification requests BEFORE they open
their write transaction: in a read session of its own it resolves the recipients, reads the email's
context (ncpi_workflow.email_context, as the delivery does), plans the access links, renders both
templates and builds the message's exact bytes (link placeholders where the tokens go; the tokens
are filled in only as it is sent, as before). Inside the write transaction, for each notification
row it inserted, the activity calls `store`, which keeps those bytes with the row, with the
Message-ID, and issues the links' rows, exactly as the delivery's lease transaction does when it
renders. The delivery then only leases, sends and marks sent.

**An event's emails: rendered once, from the rows as the event leaves them.** `record_event` passes
its whole write (`prepare(..., after=write)`): the rows an email shows are read once per inspection
(`read_email_records`: the inspection, its force, recommendations and deadline rows) and the event's
own writes applied to them in memory (`after_event`: the recommendation's phase and outcome from its
projection when newer, the deadline rows it opens, moves and meets), then rendered. The transaction
stores that rendering as it is, inserting the row with the recipients it was rendered for: it reads
nothing again. So the email is what the delivery would render from the rows the event committed,
except for a change another writer commits to those same rows between the read and the commit (a
few milliseconds: another recommendation of the inspection decided at that moment, contacts reloaded)
which it does not show; the delivery's own rendering, at its first attempt, was likewise a snapshot
of whatever was committed by then.

**Without an event (`record_notification`), byte-identical to the delivery's rendering.** `store`
reads the email's context again in the caller's transaction and keeps the prepared bytes only when
that context, the recipients and the links' scope and expiry are what was rendered. Otherwise (the
transaction changed what the email shows, contacts changed meanwhile, or `prepare` could not render:
a template error, a role nobody holds) the row is stored unrendered and the delivery renders it at
its first attempt as before, a template error there becoming the delivery's permanent failure as it
always was. Only the Date header says when (the moment it was rendered, as before) and the links'
random salts differ.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from types import SimpleNamespace
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from activities.delivery import DeliverySettings
from sqlalchemy import select, update

from ncpi_workflow.access_links import LinkPlan, plan_links_for, plan_links_from
from ncpi_workflow.email_context import (
    EmailRecords, _decision_facts, context_from_records, email_context, read_email_records,
)
from ncpi_workflow.emails import DecisionFacts, EmailContext, EmailTemplateError, render_email
from ncpi_workflow.formatting import local_date
from ncpi_workflow.lifecycle import EventWrite, NotificationRequest
from ncpi_workflow.mailer import build_message, flatten, message_id_for
from ncpi_workflow.models import Decision, Notification
from ncpi_workflow.store import resolve_recipients

log = logging.getLogger("ncpi.rendering")


@dataclass
class Prepared:
    """One notification's message, rendered before its row exists (opaque to the caller)."""

    idempotency_key: str
    recipients: dict[str, list[str]]
    context: EmailContext
    """As rendered: the links' placeholders and expiry in it."""
    plan: LinkPlan | None
    message_id: str
    data: bytes
    after_event: bool = False
    """Rendered from the rows as the event leaves them (`prepare(..., after=write)`): the event's
    transaction stores it as it is, reading nothing (see `after_event`)."""


def _normal(value: Any) -> Any:
    """A context's value for comparison: an instant as aware UTC (SQLite gives naive UTC back)."""
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)
    if isinstance(value, dict):
        return {k: _normal(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_normal(v) for v in value]
    return value


def _same_context(a: EmailContext, b: EmailContext) -> bool:
    return _normal(dataclasses.asdict(a)) == _normal(dataclasses.asdict(b))


def _with_links(context: EmailContext, plan: LinkPlan | None) -> None:
    """As the delivery does (DeliveryActivities._plan_links): the links' placeholders into the context."""
    if plan is not None:
        context.portal_url = plan.portal_url
        context.reply_to = plan.reply_to or context.reply_to
        context.link_expires = local_date(plan.expires_at)


def after_event(records: EmailRecords, write: EventWrite) -> EmailRecords:
    """The rows an email is rendered from as the event `write` leaves them, from the rows as read before
    its transaction: what record_event writes that an email shows (the recommendation's phase and outcome
    from its projection, when newer; the deadline rows it opens, moves and meets). Changed in place."""
    if write.recommendation_projection is not None:
        p = write.recommendation_projection
        for rec in records.recommendations:
            if rec.id == p.recommendation_id and (rec.projection_version or 0) < p.version:
                rec.phase, rec.outcome, rec.projection_version = p.phase, p.outcome, p.version

    def row(inspection_id, key, cycle):
        return next((d for d in records.deadlines
                     if d.inspection_id == inspection_id and d.key == key and d.cycle == cycle), None)

    def opened(inspection_id, recommendation_id, key, kind, cycle, original_due, current_due):
        if inspection_id == records.inspection.id and row(inspection_id, key, cycle) is None:
            records.deadlines.append(SimpleNamespace(
                id=None, inspection_id=inspection_id, recommendation_id=recommendation_id, key=key, kind=kind,
                cycle=cycle, original_due=original_due, current_due=current_due, met_at=None))

    if write.deadline_revision is not None:
        r = write.deadline_revision
        opened(r.inspection_id, r.recommendation_id, r.key, r.kind, r.cycle, r.original_due, r.previous_due)
        if (moved := row(r.inspection_id, r.key, r.cycle)) is not None:
            moved.current_due = r.new_due
    for r in write.deadlines_opened:
        opened(r.inspection_id, r.recommendation_id, r.key, r.kind, r.cycle, r.due, r.due)
    for r in write.deadlines_met:
        if (met := row(r.inspection_id, r.key, r.cycle)) is not None and met.met_at is None:
            met.met_at = r.at
    return records


class OutboxRenderer:
    """Renders outbox notifications at record time (see the module's doc). Built from the worker's
    sessions and the same DeliverySettings its delivery activity uses."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], settings: DeliverySettings,
                 inspectorate: dict[str, str] | None = None):
        self.sessions = sessions
        self.settings = settings
        self.inspectorate = inspectorate
        """The inspectorate's addresses by role (InspectorateAddresses.by_role); the caller's when None."""
        self.kept = 0
        self.left_unrendered = 0
        """Counts, for measurement: renderings stored, and rows left for the delivery to render."""

    async def prepare(self, requests: list[NotificationRequest], inspectorate: dict[str, str] | None = None,
                      after: EventWrite | None = None) -> list[Prepared | None]:
        """One item per request, in order: its rendered message, or None (the delivery renders it).

        `after`: the event these notifications are part of (record_event). Each is then rendered ONCE,
        here, from the rows as that event leaves them (read once per inspection, the event's writes applied:
        `after_event`), and its transaction stores it without reading anything again. Without it, each is
        rendered from the rows as they are, and `store` checks them again inside the transaction."""
        by_role = inspectorate if inspectorate is not None else (self.inspectorate or {})
        out: list[Prepared | None] = []
        records: dict[str, EmailRecords | None] = {}
        async with self.sessions() as session:
            for request in requests:
                try:
                    if after is None:
                        out.append(await self._prepare_one(session, request, by_role))
                        continue
                    if request.inspection_id is not None and request.inspection_id not in records:
                        read = await read_email_records(session, request.inspection_id)
                        records[request.inspection_id] = after_event(read, after)
                    out.append(await self._prepare_one(session, request, by_role, records.get(request.inspection_id), after))
                except EmailTemplateError as exc:
                    log.info("notification %s not rendered at record time (%s): its delivery renders it",
                             request.idempotency_key, exc)
                    out.append(None)
                except LookupError:
                    out.append(None)  # the recording activity reports a missing role itself
        return out

    async def _prepare_one(self, session: AsyncSession, request: NotificationRequest, by_role: dict[str, str],
                           records: EmailRecords | None = None, after: EventWrite | None = None) -> Prepared | None:
        if request.kind == "delivery_failed":
            return None  # about another row; recorded by the delivery, not an event
        recipients = await resolve_recipients(session, request.inspection_id, request.recipients, by_role)
        row = SimpleNamespace(
            id=None, idempotency_key=request.idempotency_key, kind=request.kind, inspection_id=request.inspection_id,
            recommendation_id=request.recommendation_id, recipients=recipients, subject=request.subject,
            context=dict(request.context or {}), scheduled_for=request.scheduled_for, created_at=request.scheduled_for,
            last_error=None,
        )
        if records is None:
            context = await email_context(session, row)
        else:
            context = context_from_records(records, row, await self._decision(session, row, after))
        context.reply_to = self.settings.reply_to
        plan = None
        if self.settings.links is not None:
            if records is None:
                plan = await plan_links_for(session, row, self.settings.links)
            else:
                plan = plan_links_from(records.inspection, records.deadlines, [r.id for r in records.recommendations],
                                       row, self.settings.links)
            _with_links(context, plan)
        rendered = render_email(context, self.settings.templates_dir)
        message_id = message_id_for(request.idempotency_key, self.settings.mail_from)
        data = flatten(build_message(
            mail_from=self.settings.mail_from, reply_to=context.reply_to, to=list(recipients["to"]),
            subject=rendered.subject, text=rendered.text, html=rendered.html, message_id=message_id,
            reference=request.idempotency_key,
        ))
        return Prepared(request.idempotency_key, recipients, context, plan, message_id, data, after_event=records is not None)

    @staticmethod
    async def _decision(session: AsyncSession, row, after: EventWrite | None) -> DecisionFacts | None:
        """The decision an email of this event shows, as `email_context` reads it: from its own facts (every
        event's email carries them), else the Decision row of its cycle, which this event may be writing."""
        ctx = row.context or {}
        if not (row.kind in ("decision", "further_follow_up") or ctx.get("rung") == "not_achieved"):
            return None
        d = after.decision if after is not None else None
        if "rationale" not in ctx and d is not None and d.recommendation_id == row.recommendation_id and ctx.get("cycle"):
            cycle = ctx["cycle"] - 1 if row.kind == "further_follow_up" else ctx["cycle"]
            if d.cycle == cycle and not (row.kind == "further_follow_up" and str(ctx.get("why", "")).startswith("re-opened")):
                existing = await session.scalar(select(Decision.id).where(
                    Decision.recommendation_id == d.recommendation_id, Decision.cycle == d.cycle))
                if existing is None:  # this event writes it (a retried event finds the first attempt's)
                    return DecisionFacts(d.outcome, d.rationale, d.by, d.at)
        return await _decision_facts(session, row)

    async def store(self, session: AsyncSession, notification_id: int, prepared: Prepared | None) -> bool:
        """Inside the caller's write transaction, for a notification row it has just inserted: keep the
        prepared rendering and its Message-ID and issue its links, when it is still what the delivery
        would render (see the module's doc). True when kept; False: the row stays unrendered."""
        if prepared is None:
            self.left_unrendered += 1
            return False
        if prepared.after_event:
            # Rendered from the rows as this event leaves them, for the row this transaction has just
            # inserted with the prepared recipients: its links and its bytes, written without a read.
            data = prepared.data
            if prepared.plan is not None:
                prepared.plan.notification_id = notification_id
                data = await prepared.plan.issue(session, data)
            await session.execute(update(Notification).where(Notification.id == notification_id)
                                  .values(rendered=data, message_id=prepared.message_id))
            self.kept += 1
            return True
        row = await session.get(Notification, notification_id, populate_existing=True)
        if (row is None or row.rendered is not None or row.status != "pending"
                or row.idempotency_key != prepared.idempotency_key or row.recipients != prepared.recipients):
            self.left_unrendered += 1
            return False
        now = await email_context(session, row)
        now.reply_to = self.settings.reply_to
        plan = prepared.plan
        if self.settings.links is not None:
            fresh = await plan_links_for(session, row, self.settings.links, notification_id=notification_id)
            if (fresh is None) != (plan is None) or (fresh is not None and (
                    fresh.scope != plan.scope or fresh.expires_at != plan.expires_at
                    or [p.purpose for p in fresh.planned] != [p.purpose for p in plan.planned])):
                self.left_unrendered += 1
                return False
        _with_links(now, plan)
        if not _same_context(now, prepared.context):
            log.debug("notification %s: its event changed what it shows; the delivery renders it", notification_id)
            self.left_unrendered += 1
            return False
        data = prepared.data
        if plan is not None:
            plan.notification_id = notification_id
            data = await plan.issue(session, data)  # the links' rows, stored with the rendering
        row.rendered = data
        row.message_id = prepared.message_id
        await session.flush()
        self.kept += 1
        return True
