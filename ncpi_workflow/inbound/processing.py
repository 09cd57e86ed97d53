"""What becomes of one email received at the reply address: recorded, triaged or automatic.

`Receiver.receive(data, ...)` is the one entry point of both channels (`ncpi inbound smtp`,
`ncpi inbound imap`):

1. The message is claimed by its Message-ID (`inbound_messages`, unique): the same email delivered
   twice, or by both channels, is processed once; the second delivery is accepted and ignored.
2. **Automatic mail** (out-of-office, delivery reports, mailing lists: see parsing.py) is kept as
   `automatic` with its reason, shown in the triage list marked as automatic, and nothing else:
   nothing recorded, never answered.
3. A reply is **recorded** only when its reply token is valid (`resolve_link(..., "reply", now)`)
   and its sender's address is one of that force's contacts. Everything else is **triaged**, with
   the reason, and nothing is recorded: no or several tokens, an unknown, expired or revoked
   token, an unknown sender, force A's address on force B's token, a reply about several
   recommendations that names none of them, a report-level item (action plan, PCC response: an
   inspector records those), or a reply the workflow refuses.
4. Recording: the text is the force's progress note (`app.force_responses.submit_progress`) with
   the claim its first line states ("implemented", "in progress", "not started"), else the
   recommendation's current claim (in progress when it has none); each attachment goes through
   `uploads.check_upload` and `app.force_responses.submit_evidence`; a refused one stores nothing
   and its reason goes into the acknowledgement. The actor is "<sender> (reply, link #<id>)".
5. An acknowledgement is sent to the sender (kind `reply_acknowledgement`, `Auto-Submitted:
   auto-replied`) for a recorded reply, and for one whose every attachment was refused.

A failure that may pass (Temporal or the database unreachable, no answer from the worker) raises
`TryLater` with the claim released, so the SMTP server answers 451 and the IMAP poller leaves the
message unread, and the next delivery tries again.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from ncpi_workflow.errors import UserError
from ncpi_workflow.inbound.parsing import (
    ParsedReply,
    claim_from,
    first_web_address,
    items_named,
    parse_reply,
    references,
    subject_reference,
    without_tokens,
)
from ncpi_workflow.lifecycle import NAME_MAX, TEXT_MAX, ForceClaim, printable
from ncpi_workflow.models import Contact, InboundMessage, InboundOutcome, Recommendation
from ncpi_workflow.store import insert_if_absent

log = logging.getLogger("ncpi.inbound")

TEXT_KEPT = 4_000
"""Characters of a reply's own text kept with its inbound_messages row (the triage list's copy)."""

REPORT_ITEMS = {"action_plan": "the force action plan", "pcc_response": "the PCC's response",
                "immediate_update": "the update on recommendations to be acted on immediately"}


class TryLater(Exception):
    """Nothing was recorded and the message should be delivered again later (a 4xx, left unread)."""


@dataclass
class AttachmentResult:
    filename: str
    size_bytes: int
    outcome: str
    """recorded, refused, or not_recorded (the reply was triaged)."""
    reason: str = ""
    sha256: str | None = None

    def record(self) -> dict[str, Any]:
        return {"filename": self.filename, "size_bytes": self.size_bytes, "outcome": self.outcome,
                "reason": self.reason, "sha256": self.sha256}


@dataclass
class Received:
    outcome: str
    """recorded, triaged, automatic, or duplicate (already received: nothing done)."""
    reason: str = ""
    row_id: int | None = None
    message_id: str = ""
    recommendation_ids: list[str] = field(default_factory=list)
    progress_recorded: bool = False
    attachments: list[AttachmentResult] = field(default_factory=list)
    acknowledgement_id: int | None = None
    item: str | None = None
    """The report-level item the reply delivered (action_plan, pcc_response, immediate_update)."""
    delivered: str | None = None
    """What delivered it: the document's name or the web address."""


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _transient(exc: BaseException) -> bool:
    text = str(exc)
    return text.startswith(("cannot reach Temporal", "no answer about", "database")) or isinstance(exc, OperationalError)


def masked_addresses(addresses: tuple[str, ...] | list[str]) -> str:
    seen: list[str] = []
    for address in addresses:
        clean = without_tokens(address.strip().strip("<>")).lower()
        if clean and clean not in seen:
            seen.append(clean)
    return ", ".join(seen)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def shown_name(filename: str) -> str:
    """A file name as kept and shown: one line (control characters escaped), no token, within 255."""
    return _clip(printable(without_tokens(filename)), 255)


def unreadable(data: bytes, exc: BaseException) -> ParsedReply:
    """What is known of bytes the parser failed on: enough for a triaged row (a digest as Message-ID)."""
    import hashlib

    return ParsedReply(
        message_id=f"<sha256-{hashlib.sha256(data).hexdigest()}@ncpi-inbound.invalid>", sender="", sender_problem=None,
        subject="", recipients=(), tokens=(), malformed_token=False, automatic=None, text="",
        unreadable=f"not readable as an email: {type(exc).__name__}: {exc}",
    )


def actor_for(sender: str, link_id: int) -> str:
    """The audit trail's actor of a reply: "<sender> (reply, link #<id>)" within NAME_MAX."""
    suffix = f" (reply, link #{link_id})"
    return _clip(sender, NAME_MAX - len(suffix)) + suffix


def storable(text: str, limit: int) -> str:
    """Text as both databases keep it alike (PostgreSQL refuses NUL and lone surrogates; SQLite takes
    anything): control characters other than line breaks and tabs dropped, no token, within `limit`."""
    return _clip(_clean_note(without_tokens(text)), limit)


def _clean_note(text: str) -> str:
    # The validators refuse control characters other than line breaks and tabs: drop them.
    return "".join(ch for ch in text if ch in "\n\t" or ((ch.isprintable() or ch == " ") and not "\ud800" <= ch <= "\udfff")).strip()


class Receiver:
    """Receives replies for one deployment: its settings, database and Temporal client."""

    def __init__(self, settings, sessions, client, *, clock: Callable[[], datetime] = _utcnow):
        self.settings = settings
        self.sessions = sessions
        self.client = client
        self.clock = clock

    # ------------------------------------------------------------ entry point

    async def receive(
        self, data: bytes, *, channel: str, envelope_from: str | None = None, envelope_to: list[str] | tuple[str, ...] = ()
    ) -> Received:
        try:
            parsed = parse_reply(data, reply_to=self.settings.reply_to, envelope_from=envelope_from, envelope_to=envelope_to)
        except Exception as exc:  # noqa: BLE001 - bytes no parser makes sense of: triaged, never retried for ever
            log.exception("inbound %s: a message could not be read", channel)
            parsed = unreadable(data, exc)
        row_id = await self._claim(parsed, channel)
        if row_id is None:
            log.info("inbound %s: %s already received; ignored", channel, printable(parsed.message_id))
            return Received("duplicate", "already received", message_id=parsed.message_id)
        try:
            if parsed.unreadable:
                result = Received(InboundOutcome.TRIAGED.value, parsed.unreadable)
            else:
                result = await self._judge(parsed, row_id)
        except TryLater:
            await self._release(row_id)
            raise
        except Exception as exc:  # a defect, or a message nothing can make sense of: triaged, never lost
            log.exception("inbound %s: %s could not be processed", channel, printable(parsed.message_id))
            result = Received(InboundOutcome.TRIAGED.value, f"could not be processed: {printable(str(exc))[:300]}")
        result.row_id = row_id
        result.message_id = parsed.message_id
        await self._finish(row_id, parsed, result)
        log.info("inbound %s: %s from %s: %s%s", channel, printable(parsed.message_id), printable(parsed.sender),
                 result.outcome, f" ({result.reason})" if result.reason else "")
        return result

    async def receive_oversized(self, header: bytes, size: int, *, channel: str) -> Received:
        """A message over NCPI_INBOUND_MAX_BYTES found in a mailbox (the SMTP server refuses those
        itself): only its header is read, and it is triaged with the reason; nothing is recorded."""
        parsed = parse_reply(header + b"\r\n\r\n", reply_to=self.settings.reply_to)
        row_id = await self._claim(parsed, channel)
        if row_id is None:
            return Received("duplicate", "already received", message_id=parsed.message_id)
        result = Received(InboundOutcome.TRIAGED.value,
                          f"the message is {size:,} bytes, over the {self.settings.inbound_max_bytes:,}-byte limit "
                          "(NCPI_INBOUND_MAX_BYTES): nothing read or recorded", row_id=row_id, message_id=parsed.message_id)
        await self._finish(row_id, parsed, result)
        log.info("inbound %s: %s from %s: triaged (too large: %d bytes)", channel, printable(parsed.message_id),
                 printable(parsed.sender), size)
        return result

    # ------------------------------------------------------------ the row

    async def _claim(self, parsed: ParsedReply, channel: str) -> int | None:
        try:
            async with self.sessions.begin() as session:
                inserted = await insert_if_absent(
                    session, InboundMessage, ["message_id"],
                    message_id=parsed.message_id, channel=channel,
                    mail_from=storable(parsed.sender, 320),
                    to_addresses=storable(masked_addresses(parsed.recipients), 10_000), subject=storable(parsed.subject, 1000),
                    received_at=self.clock(), outcome=InboundOutcome.PROCESSING.value, reason="",
                    recommendation_ids=[], text_excerpt=storable(parsed.text, TEXT_KEPT),
                    attachments=[{"filename": shown_name(a.filename), "size_bytes": a.size_bytes,
                                  "outcome": "not_recorded", "reason": "", "sha256": None} for a in parsed.attachments],
                )
                if not inserted:
                    return None
                return await session.scalar(select(InboundMessage.id).where(InboundMessage.message_id == parsed.message_id))
        except SQLAlchemyError as exc:
            raise TryLater(f"database: {exc}") from None

    async def _release(self, row_id: int) -> None:
        try:
            async with self.sessions.begin() as session:
                await session.execute(delete(InboundMessage).where(InboundMessage.id == row_id))
        except SQLAlchemyError:
            log.warning("inbound: could not release message row %s; it stays 'processing'", row_id)

    async def _finish(self, row_id: int, parsed: ParsedReply, result: Received) -> None:
        attachments = [a.record() for a in result.attachments] or [
            {"filename": shown_name(a.filename), "size_bytes": a.size_bytes, "outcome": "not_recorded",
             "reason": "", "sha256": None} for a in parsed.attachments
        ]
        async with self.sessions.begin() as session:
            await session.execute(
                update(InboundMessage).where(InboundMessage.id == row_id).values(
                    outcome=result.outcome, reason=storable(result.reason, 2000),
                    recommendation_ids=list(result.recommendation_ids), attachments=attachments,
                    acknowledgement_id=result.acknowledgement_id,
                )
            )

    async def _set_link(self, row_id: int, force_code: str, link_id: int) -> None:
        async with self.sessions.begin() as session:
            await session.execute(update(InboundMessage).where(InboundMessage.id == row_id)
                                  .values(force_code=force_code, link_id=link_id))

    # ------------------------------------------------------------ judging

    async def _judge(self, parsed: ParsedReply, row_id: int) -> Received:
        triaged = InboundOutcome.TRIAGED.value
        if parsed.automatic:
            return Received(InboundOutcome.AUTOMATIC.value, parsed.automatic)
        if not parsed.tokens:
            about = subject_reference(parsed.subject)  # the subject's tag: what it is about, for triage only
            named = f"; its subject names {about[1] or about[0]}" if about else ""
            rec_ids = [about[1]] if about and about[1] else []
            if parsed.malformed_token:
                return Received(triaged, f"the reply address carries a malformed reply token{named}", recommendation_ids=rec_ids)
            return Received(triaged, f"no reply token in the address it was sent to{named}", recommendation_ids=rec_ids)
        if len(parsed.tokens) > 1:
            return Received(triaged, f"sent to {len(parsed.tokens)} different reply addresses; one reply answers one email")
        if parsed.sender_problem or not parsed.sender:
            return Received(triaged, f"sender not accepted: {parsed.sender_problem or 'no From address'}")

        from ncpi_workflow.access_links import LinkInvalid, resolve_link

        try:
            async with self.sessions() as session:
                try:
                    link = await resolve_link(session, parsed.tokens[0], "reply", self.clock())
                except LinkInvalid as exc:
                    return Received(triaged, f"reply link {exc.reason}")
                force = link.scope.force_code
                contact = await session.scalar(
                    select(Contact).where(Contact.force_code == force, func.lower(Contact.email) == parsed.sender)
                )
                if contact is None:
                    other = await session.scalar(
                        select(Contact.force_code).where(func.lower(Contact.email) == parsed.sender).limit(1)
                    )
                    if other is not None:
                        reason = f"sender {parsed.sender} is a contact of force {other}, not of {force} (the reply link's force)"
                    else:
                        reason = f"unknown sender {parsed.sender}: not one of force {force}'s contacts"
                    await self._set_link(row_id, force, link.link_id)
                    return Received(triaged, reason)
                known = {r.id: r.ref for r in (await session.scalars(
                    select(Recommendation).where(Recommendation.id.in_(list(link.scope.recommendation_ids)))
                )).all()}
        except SQLAlchemyError as exc:
            raise TryLater(f"database: {exc}") from None
        await self._set_link(row_id, force, link.link_id)

        item = self._item(parsed, link)
        if item is not None:
            return await self._deliver_item(parsed, link, contact, item, row_id)
        targets, why = self._targets(parsed, link, known)
        if not targets:
            return Received(triaged, why)
        if not parsed.text.strip() and not parsed.attachments:
            return Received(triaged, "the reply has no text and no attachment", recommendation_ids=targets)
        return await self._record(parsed, link, contact, targets[0], row_id)

    @staticmethod
    def _item(parsed: ParsedReply, link) -> str | None:
        """The report-level item (action plan, PCC response, immediate update) a reply delivers: the
        link's only item when it covers no recommendation, or the one the first line or subject names."""
        scope = link.scope
        if not scope.items:
            return None
        named = items_named(parsed.first_line) or items_named(parsed.subject)
        if not scope.recommendation_ids:
            if len(scope.items) == 1:
                return scope.items[0]
            mine = [i for i in scope.items if i in named]
            return mine[0] if len(mine) == 1 else None
        # An email about recommendations and items (the publication notice): an item only when the
        # first line names it and no R-number.
        mine = [i for i in scope.items if i in items_named(parsed.first_line)]
        return mine[0] if len(mine) == 1 and not references(parsed.first_line)[1] else None

    def _targets(self, parsed: ParsedReply, link, known: dict[str, str]) -> tuple[list[str], str]:
        """The one recommendation a reply is about, or none and why."""
        scope = link.scope
        subject_inspections, subject_refs = references(parsed.subject)
        line_inspections, line_refs = references(parsed.first_line)
        named_inspections = (subject_inspections | line_inspections) - {scope.inspection_id}
        if named_inspections:
            return [], (f"names {', '.join(sorted(named_inspections))}, but the reply link is for "
                        f"{scope.inspection_id}")
        in_scope = [rec_id for rec_id in scope.recommendation_ids if rec_id in known]
        if len(in_scope) == 1:
            return in_scope, ""
        if not in_scope:
            items = [REPORT_ITEMS.get(item, item) for item in scope.items] or ["the report"]
            return [], (f"the email concerned {' and '.join(items)} of {scope.inspection_id} and the reply names "
                        "none of them: say which on the first line (e.g. 'Action plan')")
        by_ref = {known[rec_id]: rec_id for rec_id in in_scope}
        named = [by_ref[ref] for ref in sorted(line_refs or subject_refs) if ref in by_ref]
        if len(named) == 1:
            return named, ""
        refs = ", ".join(sorted(by_ref, key=lambda r: int(r[1:]) if r[1:].isdigit() else 0))
        return [], (f"the email concerned several recommendations ({refs}) and the reply names "
                    f"{'several' if named else 'none'} of them: give one R-number in the subject or the first line")

    # ------------------------------------------------------------ recording

    async def _deliver_item(self, parsed: ParsedReply, link, contact: Contact, item: str, row_id: int) -> Received:
        """The action plan, the PCC's response or the immediate update, by email: the attached document
        (the first that passes the upload checks) or else the first web address in the text, through
        the inspection's `record_delivery` Update with its validator, the text as its note."""
        from ncpi_workflow.access_links import record_link_use
        from ncpi_workflow.app.inspector_actions import record_delivery
        from ncpi_workflow.app.temporal_calls import INSPECTION, query_state
        from ncpi_workflow.evidence_files import keep_file
        from ncpi_workflow.uploads import UploadRefused, check_upload

        triaged = InboundOutcome.TRIAGED.value
        by = actor_for(parsed.sender, link.link_id)
        inspection_id = link.scope.inspection_id
        label = REPORT_ITEMS.get(item, item)
        note = _clean_note(without_tokens(parsed.text))
        if len(note) > TEXT_MAX:
            return Received(triaged, f"the reply's text is {len(note):,} characters; at most {TEXT_MAX:,} are recorded")
        result = Received(InboundOutcome.RECORDED.value, item=item)
        document = None
        for attachment in parsed.attachments:
            shown = shown_name(attachment.filename)
            if document is not None:
                result.attachments.append(AttachmentResult(shown, attachment.size_bytes, "refused",
                                                           f"one document records {label}; send another separately"))
                continue
            try:
                document = await asyncio.to_thread(check_upload, attachment.data, attachment.filename, self.settings)
            except UploadRefused as exc:
                result.attachments.append(AttachmentResult(shown, attachment.size_bytes, "refused", printable(exc.reason)))
        url = None if document is not None else first_web_address(note)
        try:
            if document is None and url is None:
                result.outcome = triaged
                result.reason = (f"nothing recorded: a reply about {label} needs the document attached, or its web "
                                 "address in the text")
                if result.attachments:
                    result.acknowledgement_id = await self._acknowledge(row_id, parsed, link, contact, None, result)
                return result
            try:
                current = await query_state(self.settings, self.client, INSPECTION, inspection_id)
                deadline = next((d for d in current.state.deadlines if d.key == item), None)
                if deadline is not None and deadline.met_at is not None:
                    return Received(triaged, f"not recorded: {label} was already received on {deadline.met_at:%Y-%m-%d}",
                                    item=item)
                if document is not None:
                    await asyncio.to_thread(keep_file, document.path, self.settings.evidence_dir, self.settings.evidence_max_bytes)
                await record_delivery(
                    self.settings, self.client, inspection_id, item, by=by, note=note,
                    sha256=document.sha256 if document is not None else None,
                    filename=document.filename if document is not None else None, url=url,
                )
            except UserError as exc:
                if _transient(exc):
                    raise TryLater(str(exc)) from None
                return Received(triaged, f"not recorded: {exc}", item=item)
        finally:
            if document is not None:
                document.discard()
        if document is not None:
            result.attachments.insert(0, AttachmentResult(shown_name(document.filename), document.size_bytes, "recorded",
                                                          sha256=document.sha256))
        result.delivered = shown_name(document.filename) if document is not None else url
        result.reason = f"{label} received ({result.delivered})"
        async with self.sessions.begin() as session:
            await record_link_use(session, link, "reply", f"email {parsed.message_id[:200]}: {item}", actor=by)
        result.acknowledgement_id = await self._acknowledge(row_id, parsed, link, contact, None, result)
        return result

    async def _acknowledge(self, row_id, parsed, link, contact, rec_id, result) -> int | None:
        from ncpi_workflow.inbound.acknowledgement import queue_acknowledgement

        return await queue_acknowledgement(self, row_id, parsed, link, contact, rec_id, result)

    async def _record(self, parsed: ParsedReply, link, contact: Contact, rec_id: str, row_id: int) -> Received:
        from ncpi_workflow.access_links import record_link_use
        from ncpi_workflow.app.force_responses import submit_evidence, submit_progress
        from ncpi_workflow.app.temporal_calls import RECOMMENDATION, query_state
        from ncpi_workflow.uploads import UploadRefused, check_upload

        by = actor_for(parsed.sender, link.link_id)
        note = _clean_note(without_tokens(parsed.text))
        result = Received(InboundOutcome.RECORDED.value, recommendation_ids=[rec_id])
        if len(note) > TEXT_MAX:
            return Received(InboundOutcome.TRIAGED.value,
                            f"the reply's text is {len(note):,} characters; at most {TEXT_MAX:,} are recorded",
                            recommendation_ids=[rec_id])
        if note:
            claim = claim_from(parsed.first_line)
            if claim is None:
                try:
                    view = await query_state(self.settings, self.client, RECOMMENDATION, rec_id)
                except UserError as exc:
                    if _transient(exc):
                        raise TryLater(str(exc)) from None
                    return Received(InboundOutcome.TRIAGED.value, f"not recorded: {exc}", recommendation_ids=[rec_id])
                current = getattr(view.state, "force_claim", None)
                claim = getattr(current, "value", current) or ForceClaim.IN_PROGRESS.value
            try:
                await submit_progress(self.settings, self.client, rec_id, claim, note, by)
            except UserError as exc:
                if _transient(exc):
                    raise TryLater(str(exc)) from None
                return Received(InboundOutcome.TRIAGED.value, f"not recorded: {exc}", recommendation_ids=[rec_id])
            result.progress_recorded = True
            result.reason = f"progress note ({claim.replace('_', ' ')})"
        description = _clip(f"By email from {parsed.sender}: {without_tokens(parsed.subject)}", TEXT_MAX)
        for attachment in parsed.attachments:
            shown = shown_name(attachment.filename)
            try:
                checked = await asyncio.to_thread(check_upload, attachment.data, attachment.filename, self.settings)
            except UploadRefused as exc:
                result.attachments.append(AttachmentResult(shown, attachment.size_bytes, "refused", printable(exc.reason)))
                continue
            try:
                submitted = await submit_evidence(self.settings, self.client, rec_id, checked.path, by,
                                                  description=description, filename=checked.filename, checked=checked)
            except UserError as exc:
                if _transient(exc) and not result.progress_recorded and not any(a.outcome == "recorded" for a in result.attachments):
                    raise TryLater(str(exc)) from None
                result.attachments.append(AttachmentResult(shown_name(checked.filename), attachment.size_bytes, "refused",
                                                           printable(str(exc))))
            else:
                result.attachments.append(AttachmentResult(shown_name(checked.filename), attachment.size_bytes, "recorded",
                                                           sha256=submitted.stored.sha256))
            finally:
                checked.discard()
        recorded = [a for a in result.attachments if a.outcome == "recorded"]
        refused = [a for a in result.attachments if a.outcome == "refused"]
        parts = [result.reason] if result.reason else []
        if recorded:
            parts.append(f"{len(recorded)} evidence file{'s' if len(recorded) != 1 else ''}")
        if refused:
            parts.append(f"{len(refused)} attachment{'s' if len(refused) != 1 else ''} refused")
        if not result.progress_recorded and not recorded:
            result.outcome = InboundOutcome.TRIAGED.value
            parts.insert(0, "nothing recorded")
        result.reason = "; ".join(parts)
        async with self.sessions.begin() as session:
            if result.outcome == InboundOutcome.RECORDED.value:
                await record_link_use(session, link, "reply", f"email {parsed.message_id[:200]}", actor=by)
        result.acknowledgement_id = await self._acknowledge(row_id, parsed, link, contact, rec_id, result)
        return result
