"""The triage list: what came in by email and was not recorded (`ncpi inbox`, the web app's /inbox).

Triaged replies (unknown sender, missing / expired / revoked token, another force's token, a reply
that names no single recommendation, a reply the workflow refused) and automatic mail (out-of-office,
delivery reports, mailing lists: marked `automatic`, never answered) are listed newest first, and so
is a message whose processing was interrupted (`processing` for more than ten minutes). Recorded
replies are listed too with `everything=True` (`ncpi inbox --all`).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import and_, or_, select

from ncpi_workflow.models import InboundMessage, InboundOutcome, utcnow
from ncpi_workflow.views import london_iso

INTERRUPTED_AFTER = timedelta(minutes=10)


def _record(row: InboundMessage) -> dict[str, Any]:
    return {
        "id": row.id, "received_at": london_iso(row.received_at), "channel": row.channel,
        "outcome": "interrupted" if row.outcome == InboundOutcome.PROCESSING.value else row.outcome,
        "reason": row.reason or ("processing was interrupted; check the recommendation's history" if row.outcome == "processing" else ""),
        "from": row.mail_from, "to": row.to_addresses, "subject": row.subject, "message_id": row.message_id,
        "force_code": row.force_code, "link_id": row.link_id, "recommendation_ids": list(row.recommendation_ids or []),
        "attachments": list(row.attachments or []), "text": row.text_excerpt,
        "acknowledgement_id": row.acknowledgement_id,
    }


async def list_inbox(sessions, *, everything: bool = False, outcome: str | None = None, limit: int | None = 500) -> list[dict[str, Any]]:
    query = select(InboundMessage)
    if outcome is not None:
        query = query.where(InboundMessage.outcome == outcome)
    elif not everything:
        stale = utcnow() - INTERRUPTED_AFTER
        query = query.where(or_(
            InboundMessage.outcome.in_([InboundOutcome.TRIAGED.value, InboundOutcome.AUTOMATIC.value]),
            and_(InboundMessage.outcome == InboundOutcome.PROCESSING.value, InboundMessage.received_at < stale),
        ))
    query = query.order_by(InboundMessage.received_at.desc(), InboundMessage.id.desc())
    if limit is not None:
        query = query.limit(limit)
    async with sessions() as session:
        return [_record(row) for row in (await session.scalars(query)).all()]


def render_lines(records: list[dict[str, Any]]) -> list[str]:
    from ncpi_workflow.lifecycle import printable

    lines = []
    for r in records:
        when = (r["received_at"] or "")[:16].replace("T", " ")
        lines.append(f"{r['id']:>5}  {when}  {r['outcome']:<11} {printable(r['from'] or '-'):<36} {printable(r['subject'] or '(no subject)')[:60]}")
        if r["reason"]:
            lines.append(f"       reason: {printable(r['reason'])}")
        for a in r["attachments"]:
            lines.append(f"       attachment: {printable(a.get('filename', ''))} ({a.get('size_bytes', 0):,} bytes, {a.get('outcome')})"
                         + (f": {printable(a['reason'])}" if a.get("reason") else ""))
    return lines
