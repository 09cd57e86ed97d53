"""The force portal's use cases: what a link in an email lets its holder see and do.

A link (ncpi_workflow/access_links.py) covers one force and exactly the items its email is about: one
recommendation, a report-level item (the action plan, the PCC's response, the update on "immediately"
recommendations), or a whole report. Everything here takes the resolved link and refuses anything
outside its scope as if it did not exist (LookupError: the page answers 404). Every action goes
through the same Update, with its validator, as the CLI and the inspectors' web app, as
"<force> liaison (link #<id>)", and every use is recorded on the link (`record_link_use`).

What the force sees is what the inspectorate has already told it, or is its own: its items' deadlines
(their dates, never the reason or who moved them), the emails sent to its contacts (kind, subject, when),
its own claims, notes and files, evidence requests, decisions as they were emailed to it (outcome, date,
reasons), the public register's status and comment, re-openings. Never shown: the inspectorate's notes on a
delivery it recorded, the reasons and authors of deadline revisions, who at the inspectorate acted, the
audit trail and workflow history, notifications to the inspectorate, delivery errors and addresses.
"""

from __future__ import annotations

import logging
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import selectinload

from ncpi_workflow import access_links
from ncpi_workflow.access_links import LinkInvalid, ResolvedLink
from ncpi_workflow.errors import UserError
from ncpi_workflow.models import (
    AccessLink,
    AuditEvent,
    Contact,
    Deadline,
    Decision,
    Evidence,
    EvidenceRequest,
    Force,
    Inspection,
    Notification,
    ProgressUpdate,
    Recommendation,
    RegisterStatusEntry,
)

log = logging.getLogger("ncpi.portal")

PURPOSE = "portal"
ITEMS = ("action_plan", "pcc_response", "immediate_update")
ITEM_NAMES = {
    "action_plan": "The force's action plan",
    "pcc_response": "The Police and Crime Commissioner's published response",
    "immediate_update": "The update on the recommendations to act on immediately",
}
ITEM_SHORT = {"action_plan": "action plan", "pcc_response": "PCC's response", "immediate_update": "update"}
FORCE_ROLES = {"liaison_officer", "chief_officer", "pcc"}
FRESH_LINK_KIND = "portal_link"
FRESH_LINKS_PER_DAY = 5
"""Fresh links one link may ask for in 24 hours."""
URL_MAX = 2_000
CLAIMS = (("not_started", "Not started"), ("in_progress", "In progress"), ("implemented", "Implemented"))

KIND_WORDS = {
    "published": "Report published", "reminder": "Reminder", "due_today": "Due today", "overdue": "Overdue",
    "escalation": "Escalation", "evidence_request": "Evidence requested", "decision": "Decision",
    "further_follow_up": "Further follow-up", "reopened": "Re-opened", "revisit_outcome": "Revisit outcome",
    "revisit_opened": "Revisit opened", FRESH_LINK_KIND: "A fresh link", "reply_acknowledgement": "Reply received",
}


def actor(link: ResolvedLink) -> str:
    """Who acts through a link, in the audit trail and every record: the link it came from."""
    return access_links.link_actor(link)


async def open_link(sessions, raw_token: str | None, now: datetime | None = None) -> ResolvedLink:
    """The link a token names, or LinkInvalid (unknown, expired, revoked, malformed)."""
    now = now or datetime.now(timezone.utc)
    if not raw_token or len(raw_token) > 200:
        raise LinkInvalid("malformed")
    async with sessions() as session:
        return await access_links.resolve_link(session, raw_token, PURPOSE, now)


async def record_use(sessions, link: ResolvedLink, action: str, detail: str = "") -> None:
    async with sessions.begin() as session:
        await access_links.record_link_use(session, link, action, detail)


def covers_recommendation(link: ResolvedLink, recommendation_id: str) -> bool:
    return recommendation_id in link.scope.recommendation_ids


def covers_item(link: ResolvedLink, item: str) -> bool:
    return item in ITEMS and item in link.scope.items


# ---------------------------------------------------------------- what the force sees


def _force_facing(n: Notification) -> bool:
    roles = set((n.recipients or {}).get("roles") or [])
    return bool(roles & FORCE_ROLES) and n.status == "sent" and n.kind != "delivery_failed"


def _email(n: Notification) -> dict[str, Any]:
    return {"at": n.sent_at or n.scheduled_for or n.created_at, "what": f"Email: {KIND_WORDS.get(n.kind, n.kind.replace('_', ' '))}",
            "detail": n.subject}


def _deadline(d: Deadline) -> dict[str, Any]:
    return {
        "key": d.key, "kind": d.kind, "cycle": d.cycle, "due": d.current_due, "original_due": d.original_due, "met_at": d.met_at,
        "moves": [{"at": r.changed_at, "previous_due": r.previous_due, "new_due": r.new_due} for r in d.revisions],
    }


@dataclass
class Overview:
    force: Force
    inspection: Inspection
    recommendations: list[dict[str, Any]] = field(default_factory=list)
    items: list[dict[str, Any]] = field(default_factory=list)


async def _inspection(session, link: ResolvedLink) -> tuple[Force, Inspection]:
    inspection = await session.get(Inspection, link.scope.inspection_id)
    if inspection is None or inspection.force_code != link.scope.force_code:
        raise LookupError("the link's inspection is not the force's")
    return await session.get(Force, inspection.force_code), inspection


def _deadline_for(deadlines: list[Deadline], recommendation_id: str | None, kind: str | None = None, key: str | None = None):
    chosen = [d for d in deadlines if d.recommendation_id == recommendation_id and (kind is None or d.kind == kind)
              and (key is None or d.key == key)]
    return max(chosen, key=lambda d: d.cycle) if chosen else None


async def overview(sessions, link: ResolvedLink) -> Overview:
    """Every item the link covers, in short."""
    async with sessions() as session:
        force, inspection = await _inspection(session, link)
        recs = list(await session.scalars(select(Recommendation).where(
            Recommendation.inspection_id == inspection.id, Recommendation.id.in_(link.scope.recommendation_ids))))
        deadlines = list(await session.scalars(select(Deadline).where(Deadline.inspection_id == inspection.id)))
    page = Overview(force, inspection)
    for rec in sorted(recs, key=lambda r: (len(r.ref), r.ref)):
        latest = _deadline_for(deadlines, rec.id, kind="recommendation")
        page.recommendations.append({"id": rec.id, "ref": rec.ref, "text": rec.text, "timeframe": rec.timeframe,
                                     "phase": rec.phase, "claim": rec.force_claim, "due": latest.current_due if latest else None})
    for item in ITEMS:
        if item in link.scope.items:
            d = _deadline_for(deadlines, None, key=item)
            if d is not None:
                page.items.append({"key": item, "name": ITEM_NAMES[item], "due": d.current_due, "received": d.met_at})
    return page


@dataclass
class RecommendationPortal:
    force: Force
    inspection: Inspection
    recommendation: Recommendation
    deadlines: list[dict[str, Any]]
    progress: list[ProgressUpdate]
    evidence: list[Evidence]
    history: list[dict[str, Any]]


async def recommendation(sessions, link: ResolvedLink, recommendation_id: str) -> RecommendationPortal:
    if not covers_recommendation(link, recommendation_id):
        raise LookupError("not covered by this link")
    async with sessions() as session:
        force, inspection = await _inspection(session, link)
        rec = await session.get(Recommendation, recommendation_id)
        if rec is None or rec.inspection_id != inspection.id:
            raise LookupError("not this force's recommendation")

        async def rows(model, *where, order_by):
            return list(await session.scalars(select(model).where(*where).order_by(*order_by)))

        deadlines = list(await session.scalars(
            select(Deadline).options(selectinload(Deadline.revisions)).where(Deadline.recommendation_id == rec.id)
            .order_by(Deadline.cycle, Deadline.kind.desc())))
        progress = await rows(ProgressUpdate, ProgressUpdate.recommendation_id == rec.id, order_by=(ProgressUpdate.submitted_at, ProgressUpdate.id))
        evidence = await rows(Evidence, Evidence.recommendation_id == rec.id, order_by=(Evidence.submitted_at, Evidence.id))
        requests = await rows(EvidenceRequest, EvidenceRequest.recommendation_id == rec.id, order_by=(EvidenceRequest.requested_at,))
        decisions = await rows(Decision, Decision.recommendation_id == rec.id, order_by=(Decision.decided_at,))
        register = await rows(RegisterStatusEntry, RegisterStatusEntry.recommendation_id == rec.id,
                              order_by=(RegisterStatusEntry.set_at, RegisterStatusEntry.id))
        emails = await rows(Notification, or_(
            Notification.recommendation_id == rec.id,
            # The report's own notices that concern every recommendation.
            and_(Notification.inspection_id == inspection.id, Notification.recommendation_id.is_(None),
                 Notification.kind.in_(("published", "revisit_outcome")))),
            order_by=(Notification.scheduled_for, Notification.id))
    history: list[dict[str, Any]] = [_email(n) for n in emails if _force_facing(n)]
    history += [{"at": p.submitted_at, "what": f"Your claim: {p.claim.replace('_', ' ')}", "detail": p.text, "by": p.submitted_by} for p in progress]
    history += [{"at": e.submitted_at, "what": "Evidence sent", "detail": e.filename, "by": e.submitted_by} for e in evidence]
    history += [{"at": r.requested_at, "what": "Evidence requested", "detail": f"Due {r.due:%-d %B %Y}"} for r in requests]
    for d in decisions:
        history.append({"at": d.decided_at, "what": f"Decision: {d.outcome.replace('_', ' ')}", "detail": d.rationale})
        if d.reopened_at is not None:
            history.append({"at": d.reopened_at, "what": "Re-opened", "detail": d.reopen_reason or ""})
    history += [{"at": r.set_at, "what": f"Public register: {r.status}", "detail": r.comment} for r in register]
    for d in deadlines:
        for r in d.revisions:
            history.append({"at": r.changed_at, "what": "Deadline moved",
                            "detail": f"{'Evidence' if d.kind == 'evidence' else 'Recommendation'} deadline from "
                                      f"{r.previous_due:%-d %B %Y} to {r.new_due:%-d %B %Y}"})
    history.sort(key=lambda h: _utc(h["at"]))
    return RecommendationPortal(force, inspection, rec, [_deadline(d) for d in deadlines], progress, evidence, history)


@dataclass
class ItemPortal:
    force: Force
    inspection: Inspection
    item: str
    name: str
    deadlines: list[dict[str, Any]]
    received: list[dict[str, Any]]
    history: list[dict[str, Any]]

    @property
    def open(self) -> bool:
        return any(d["met_at"] is None for d in self.deadlines)


async def item(sessions, link: ResolvedLink, key: str) -> ItemPortal:
    if not covers_item(link, key):
        raise LookupError("not covered by this link")
    async with sessions() as session:
        force, inspection = await _inspection(session, link)
        deadlines = list(await session.scalars(
            select(Deadline).options(selectinload(Deadline.revisions))
            .where(Deadline.inspection_id == inspection.id, Deadline.recommendation_id.is_(None), Deadline.key == key)
            .order_by(Deadline.cycle)))
        if not deadlines:
            raise LookupError("the report has no such item")
        received = list(await session.scalars(select(AuditEvent).where(
            AuditEvent.entity_type == "inspection", AuditEvent.entity_id == inspection.id,
            AuditEvent.action == f"{key}.received").order_by(AuditEvent.occurred_at)))
        emails = list(await session.scalars(select(Notification).where(
            Notification.inspection_id == inspection.id, Notification.recommendation_id.is_(None)).order_by(Notification.scheduled_for)))
    shown_received = []
    history = []
    for event in received:
        detail = event.detail or {}
        # The inspectorate's own note on a receipt it recorded is internal; the force's own words are its own.
        own = "liaison (link #" in (event.actor or "") or "(reply, link #" in (event.actor or "")
        entry = {"at": event.occurred_at, "filename": detail.get("filename"), "url": detail.get("url"),
                 "note": detail.get("note") if own else "", "by": event.actor if own else "the inspectorate"}
        shown_received.append(entry)
        history.append({"at": event.occurred_at, "what": "Received",
                        "detail": entry["filename"] or entry["url"] or "", "by": entry["by"]})
    history += [_email(n) for n in emails if _force_facing(n) and ((n.context or {}).get("deadline") == key or n.kind == "published")]
    for d in deadlines:
        for r in d.revisions:
            history.append({"at": r.changed_at, "what": "Deadline moved", "detail": f"From {r.previous_due:%-d %B %Y} to {r.new_due:%-d %B %Y}"})
    history.sort(key=lambda h: _utc(h["at"]))
    return ItemPortal(force, inspection, key, ITEM_NAMES[key], [_deadline(d) for d in deadlines], shown_received, history)


def _utc(value) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    return datetime(value.year, value.month, value.day, tzinfo=timezone.utc)


# ---------------------------------------------------------------- what the force does


async def state_progress(settings, client, sessions, link: ResolvedLink, recommendation_id: str, claim: str, text: str):
    """The force's own claim and progress note: the same Update and validator as `ncpi progress`."""
    from ncpi_workflow.app import force_responses

    if not covers_recommendation(link, recommendation_id):
        raise LookupError("not covered by this link")
    view = await force_responses.submit_progress(settings, client, recommendation_id, claim, text, by=actor(link))
    await record_use(sessions, link, "portal.progress", f"{recommendation_id}: {claim}")
    return view


async def send_evidence(settings, client, sessions, link: ResolvedLink, recommendation_id: str, checked, description: str | None):
    """A checked upload (ncpi_workflow.uploads) as evidence: kept by SHA-256, then the Update."""
    from ncpi_workflow.app import force_responses

    if not covers_recommendation(link, recommendation_id):
        raise LookupError("not covered by this link")
    done = await force_responses.submit_evidence(settings, client, recommendation_id, checked.path, by=actor(link),
                                                 description=description or None, filename=checked.filename, checked=checked)
    await record_use(sessions, link, "portal.evidence", f"{recommendation_id}: {checked.filename} ({checked.sha256[:12]})")
    return done


def check_url(url: str) -> str:
    url = url.strip()
    if len(url) > URL_MAX:
        raise UserError(f"the address is {len(url):,} characters; at most {URL_MAX:,} are kept")
    if re.search(r"[\s\x00-\x1f\x7f]", url) or not re.match(r"^https?://[^/\s?#@]+\.[^/\s?#@]+", url, re.I):
        raise UserError("enter the document's address as a web address starting https://, for example "
                        "https://www.example.police.uk/action-plan")
    return url


async def send_item(settings, client, sessions, link: ResolvedLink, key: str, *, checked=None, url: str | None = None, note: str = ""):
    """The action plan, the PCC's response or the immediate update, as a document (a checked upload,
    kept by SHA-256) or a web address: `inspector_actions.record_delivery_received`, as an inspector's
    is recorded (the workflow asked first, so a delivery it would refuse leaves nothing in the store;
    then the inspection's `record_delivery` Update, with its validator)."""
    from ncpi_workflow.app import inspector_actions

    if not covers_item(link, key):
        raise LookupError("not covered by this link")
    if (checked is None) == (not url):
        raise UserError("send either a document or a web address")
    view = await inspector_actions.record_delivery_received(
        settings, client, link.scope.inspection_id, key, by=actor(link), note=note, document=checked, url=url or None,
    )
    await record_use(sessions, link, f"portal.{key}", checked.filename if checked is not None else url)
    return view


# ---------------------------------------------------------------- a fresh link


TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")


async def request_fresh_link(settings, sessions, client, raw_token: str, email: str, now: datetime | None = None) -> int | None:
    """Email a fresh portal link, of the same scope, to `email` when it is one of the link's force's own
    contacts and the link is genuine and not revoked (it may have expired: that is when one asks).
    The email is an outbox notification like any other (kind `portal_link`, to that contact's role),
    so its delivery issues its links as every force-facing email's does (`access_links.plan_links`),
    is retried, audited and shown in the outbox. Returns its id, or None; callers answer the same either way."""
    from ncpi_workflow.store import append_audit

    now = now or datetime.now(timezone.utc)
    email = (email or "").strip()
    if not isinstance(raw_token, str) or not TOKEN.fullmatch(raw_token) or not email or len(email) > 320:
        return None
    async with sessions.begin() as session:
        row = await session.scalar(select(AccessLink).where(AccessLink.token_hash == access_links.token_hash(raw_token)))
        if row is None or row.purpose != PURPOSE or row.revoked_at is not None:
            return None
        old = ResolvedLink(link_id=row.id, purpose=row.purpose,
                           scope=access_links.LinkScope(row.force_code, row.inspection_id, tuple(row.recommendation_ids or ()),
                                                        tuple(row.items or ())),
                           expires_at=row.expires_at, notification_id=row.notification_id)
        contact = await session.scalar(select(Contact).where(
            Contact.force_code == row.force_code, func.lower(Contact.email) == email.lower()))
        if contact is None:
            await access_links.record_link_use(session, old, "fresh_link_refused", "not one of the force's contacts")
            return None
        recent = await session.scalar(select(func.count()).select_from(Notification).where(
            Notification.idempotency_key.like(f"portal-link/{row.id}/%"),
            Notification.created_at >= now - timedelta(hours=24)))
        if recent >= FRESH_LINKS_PER_DAY:  # a link cannot be used to flood a contact's mailbox
            await access_links.record_link_use(session, old, "fresh_link_refused", f"{recent} sent in 24 hours already")
            return None
        inspection = await session.get(Inspection, row.inspection_id)
        recs, items = list(row.recommendation_ids or ()), list(row.items or ())
        # Shaped so that the delivery's link has the same scope: one recommendation, one item, or the report.
        one_rec = recs[0] if len(recs) == 1 and not items else None
        one_item = items[0] if len(items) == 1 and not recs else None
        about = (f"recommendation {one_rec.rsplit('-', 1)[-1]}" if one_rec
                 else ITEM_SHORT[one_item] if one_item else "the report")
        context: dict[str, Any] = {"asked_with_link": row.id}
        if one_item:
            context["deadline"] = one_item
        notification = Notification(
            idempotency_key=f"portal-link/{row.id}/{uuid.uuid4().hex}", kind=FRESH_LINK_KIND, inspection_id=inspection.id,
            recommendation_id=one_rec, recipients={"roles": [contact.role], "to": [contact.email]},
            subject=f"Your link to answer the inspectorate: {about} ({inspection.id})",
            context=context, scheduled_for=now,
        )
        session.add(notification)
        await session.flush()
        await access_links.record_link_use(session, old, "fresh_link_sent", f"notification {notification.id} to {contact.role}")
        await append_audit(session, actor=actor(old), action="notification.fresh_link", entity_type="notification",
                           entity_id=str(notification.id), detail={"to": contact.email, "asked_with_link": row.id})
        notification_id = notification.id
    await _deliver(settings, client, notification_id)
    return notification_id


async def _deliver(settings, client, notification_id: int) -> None:
    """Start its delivery now; if Temporal cannot be reached, the reconciler delivers it later (as every pending row)."""
    from temporalio.common import WorkflowIDReusePolicy

    if client is None:
        return
    try:
        await client.start_workflow(
            "NotificationDelivery", notification_id, id=f"ncpi/notification/{notification_id}/portal-link",
            task_queue=settings.task_queue, id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        )
    except Exception as exc:  # the row stays pending: the reconciler delivers it
        log.warning("fresh link notification %s: delivery not started now (%s); the reconciler will deliver it",
                    notification_id, type(exc).__name__)


# ---------------------------------------------------------------- inspectors: the links of an item


async def links_for(sessions, target: str) -> list[dict[str, Any]]:
    """The links of an inspection or of one recommendation, as `ncpi links list` describes them (never a token)."""
    now = datetime.now(timezone.utc)
    async with sessions() as session:
        try:
            rows = await access_links.links_for(session, target)
        except LookupError:
            return []
    return [access_links.describe(r, now) for r in rows]


async def revoke(sessions, link_id: int, by: str) -> dict[str, Any]:
    """Revoke a link (LookupError when there is none); returns it as `links_for` describes it."""
    async with sessions.begin() as session:
        await access_links.revoke_link(session, link_id, by)
    async with sessions() as session:
        row = await session.get(AccessLink, link_id)
        return access_links.describe(row, datetime.now(timezone.utc))
