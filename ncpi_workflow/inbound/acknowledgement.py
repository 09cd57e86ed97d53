"""The acknowledgement of a recorded reply: an outbox notification of kind `reply_acknowledgement`.

It goes through the outbox like every other email (a `notifications` row, delivered by the
`deliver_notification` activity through a `NotificationDelivery` workflow, re-delivered by the
reconciler if that start is lost, listed by `ncpi outbox`). It is rendered once, by
`emails.render_email` like every kind (`reply_acknowledgement` is one of `emails.KINDS`), from
`templates/email/reply_acknowledgement.{txt,html}.j2` (overridable by NCPI_TEMPLATES_DIR like every
template), and stored as the row's bytes, so the delivery sends exactly those: its headers differ
from the notices' in two ways, `Auto-Submitted: auto-replied` (RFC 3834: an answer to a message,
which no well-behaved responder answers) and `In-Reply-To`/`References` naming the reply. It has
no Reply-To: replying to an acknowledgement reaches no reply token, so it can only be triaged.
Automatic mail and triaged replies are never acknowledged.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING

from ncpi_workflow import emails, formatting
from ncpi_workflow.inbound.parsing import ParsedReply
from ncpi_workflow.mailer import build_message, flatten, message_id_for
from ncpi_workflow.models import Contact, Notification
from ncpi_workflow.store import insert_if_absent

if TYPE_CHECKING:
    from ncpi_workflow.inbound.processing import Received, Receiver

log = logging.getLogger("ncpi.inbound")

KIND = "reply_acknowledgement"
DELIVERY_WORKFLOW = "NotificationDelivery"


def acknowledgement_key(row_id: int) -> str:
    return f"ncpi/inbound/{row_id}/acknowledgement"


def delivery_workflow_id(notification_id: int) -> str:
    return f"ncpi/notification/{notification_id}/acknowledgement"


def _without_name(reason: str, filename: str) -> str:
    """An upload refusal names its file ("x.pdf: is a program..."): shown after the name, once."""
    from ncpi_workflow.lifecycle import printable

    for prefix in (f"{filename}: ", f"{printable(filename)}: "):
        if reason.startswith(prefix):
            return reason[len(prefix):]
    return reason


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    if n < 1024 * 1024:
        return f"{n / 1024:.0f} KB"
    return f"{n / (1024 * 1024):.1f} MB"


def render(ctx: emails.EmailContext, acknowledgement: dict, templates_dir=None) -> emails.RenderedEmail:
    """The acknowledgement rendered like every kind: `emails.render_email` over the context with
    its `acknowledgement` facts (the subject ends with the reference, as every email's does)."""
    ctx = dataclasses.replace(ctx, kind=KIND, acknowledgement=acknowledgement)
    return emails.render_email(ctx, templates_dir)


def build(settings, ctx: emails.EmailContext, acknowledgement: dict, to: list[str], key: str, in_reply_to: str | None,
          now) -> tuple:
    """The acknowledgement's message (an EmailMessage) and its Message-ID."""
    rendered = render(ctx, acknowledgement, settings.templates_dir)
    message_id = message_id_for(key, settings.mail_from)
    message = build_message(
        mail_from=settings.mail_from, reply_to=None, to=to, subject=rendered.subject, text=rendered.text,
        html=rendered.html, message_id=message_id, reference=key, date=now,
    )
    message.replace_header("Auto-Submitted", "auto-replied")  # RFC 3834: an answer to a message
    if in_reply_to:
        message["In-Reply-To"] = in_reply_to
        message["References"] = in_reply_to
    return message, message_id


async def queue_acknowledgement(
    receiver: "Receiver", row_id: int, parsed: ParsedReply, link, contact: Contact, rec_id: str, result: "Received"
) -> int | None:
    """Record the acknowledgement in the outbox and start its delivery; its outbox row ID."""
    from ncpi_workflow.email_context import email_context
    from ncpi_workflow.inbound.processing import storable

    settings = receiver.settings
    now = receiver.clock()
    key = acknowledgement_key(row_id)
    recorded = [a for a in result.attachments if a.outcome == "recorded"]
    refused = [a for a in result.attachments if a.outcome == "refused"]
    from ncpi_workflow.inbound.processing import REPORT_ITEMS

    ref = rec_id.rsplit("-", 1)[-1] if rec_id else None
    about = f"recommendation {ref}" if ref else REPORT_ITEMS.get(result.item or "", "the report")
    delivered = None
    if result.item and result.outcome == "recorded":
        delivered = result.delivered
        recorded = []  # the document is the item itself, not evidence
        subject = f"Received: {about} ({link.scope.inspection_id})"
    elif result.progress_recorded or recorded:
        subject = f"Received: your update on {about} ({link.scope.inspection_id})"
    else:
        subject = f"Not recorded: your email about {about} ({link.scope.inspection_id})"
    claim_words = result.reason.partition("(")[2].partition(")")[0] if result.progress_recorded else ""
    acknowledgement = {
        "ref": ref, "about": about, "item": delivered, "received": formatting.short_datetime(now) + " (UK time)",
        "original_subject": storable(parsed.subject, 300), "progress": result.progress_recorded,
        "claim": claim_words, "recorded": [{"filename": a.filename, "size": _size(a.size_bytes)} for a in recorded],
        "refused": [{"filename": a.filename, "reason": _without_name(a.reason, a.filename)} for a in refused],
    }
    row = Notification(
        idempotency_key=key, kind=KIND, inspection_id=link.scope.inspection_id, recommendation_id=rec_id,
        recipients={"to": [contact.email], "roles": [contact.role]}, subject=subject,
        context={"inbound_message": row_id, **{k: v for k, v in acknowledgement.items() if k != "received"}},
        status="pending", attempts=0, scheduled_for=now,
    )
    async with receiver.sessions() as session:
        ctx = await email_context(session, row)
    ctx.reference = key
    in_reply_to = None if parsed.message_id.endswith("@ncpi-inbound.invalid>") else parsed.message_id
    message, message_id = build(settings, ctx, acknowledgement, [contact.email], key, in_reply_to, now)
    async with receiver.sessions.begin() as session:
        await insert_if_absent(
            session, Notification, ["idempotency_key"],
            idempotency_key=key, kind=KIND, inspection_id=row.inspection_id, recommendation_id=rec_id,
            recipients=row.recipients, subject=str(message["Subject"]), context=row.context, status="pending", attempts=0,
            scheduled_for=now, rendered=flatten(message), message_id=message_id,
        )
        from sqlalchemy import select

        notification_id = await session.scalar(select(Notification.id).where(Notification.idempotency_key == key))
    await start_delivery(receiver, notification_id)
    return notification_id


async def start_delivery(receiver: "Receiver", notification_id: int) -> None:
    """Start the delivery workflow; if Temporal does not take it, the reconciler delivers the row
    once it has been pending for NCPI_OUTBOX_PENDING_MINUTES."""
    from temporalio.common import WorkflowIDReusePolicy
    from temporalio.exceptions import WorkflowAlreadyStartedError

    try:
        await receiver.client.start_workflow(
            DELIVERY_WORKFLOW, notification_id, id=delivery_workflow_id(notification_id),
            task_queue=receiver.settings.task_queue, id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
        )
    except WorkflowAlreadyStartedError:
        pass
    except Exception as exc:  # noqa: BLE001 - the row stays pending; the reconciler sends it
        log.warning("acknowledgement %s: delivery not started (%s); the reconciler will send it", notification_id, exc)
