"""The force portal: `/portal/<token>`, the page of exactly what a link in an email covers, with forms
to state a claim with a progress note, send evidence, and send the action plan or the PCC's response
(a document or a web address); and "ask for a fresh link".

No sign-in: the token in the address is the credential (ncpi_workflow/access_links.py). A token that
opens nothing (unknown, malformed, expired, revoked, of another purpose) gets the same 404 page,
which shows nothing of any force; an item outside the link's scope (another recommendation, another
force's) is a 404 too. Portal responses carry no session cookie (the session middleware skips
/portal), `Referrer-Policy: no-referrer` and `Cache-Control: no-store` (PortalHeaders), so the token
leaves no trace in another site's logs or a shared cache. Forms carry a CSRF token bound to the link
(an HMAC of its token's hash with the app's key), not to a session.

Every action goes through ncpi_workflow.app.force_portal (the same Updates and validators as the CLI),
as "<force> liaison (link #<id>)", and every use is recorded on the link.

Also here, for inspectors: revoking a link (`POST /links/<id>/revoke`, inspector role) and downloading
a document a force sent with its action plan or PCC response.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from datetime import datetime, timezone
from pathlib import Path

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import FileResponse, RedirectResponse
from starlette.datastructures import MutableHeaders, UploadFile
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ncpi_workflow.access_links import LinkInvalid, ResolvedLink
from ncpi_workflow.app import force_portal
from ncpi_workflow.errors import UserError
from ncpi_workflow.uploads import ACCEPTED_WORDS, UploadRefused, check_upload
from ncpi_workflow.web.auth import Principal, checked_form, may_act, services, signed_in
from ncpi_workflow.web.forms import Refusal, field_for, text
from ncpi_workflow.web.rendering import render, security_headers

log = logging.getLogger("ncpi.portal")
router = APIRouter()

PREFIX = "/portal"
CSRF_FIELD = "csrf_token"
FORM_OVERHEAD = 256 * 1024
"""What a form may hold beside its file: the fields and the multipart framing."""
DONE = {
    "progress": "Your claim and progress note have been recorded. Thank you.",
    "evidence": "Your evidence has been received. Thank you.",
    "item": "It has been received: its reminders stop. Thank you.",
}


class PortalHeaders:
    """Every response under /portal: no referrer (the token is in the address), never cached, not indexed."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not (scope["path"] == PREFIX or scope["path"].startswith(PREFIX + "/")):
            await self.app(scope, receive, send)
            return

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["Referrer-Policy"] = "no-referrer"
                headers["Cache-Control"] = "no-store"
                headers["X-Robots-Tag"] = "noindex, nofollow"
                if "set-cookie" in headers:
                    del headers["set-cookie"]
            await send(message)

        await self.app(scope, receive, send_wrapper)


# ---------------------------------------------------------------- the link, its CSRF token, its pages


def _now(request: Request) -> datetime:
    return datetime.fromtimestamp(services(request).clock(), tz=timezone.utc)


def _key(request: Request) -> bytes:
    key = getattr(request.app.state, "portal_key", None)
    if key is None:
        from ncpi_workflow.access_links import link_key

        key = request.app.state.portal_key = link_key(services(request).settings)
    return key


def csrf_for(key: bytes, token: str) -> str:
    """The CSRF token of a link's forms: bound to the link (its token's hash), not to a session."""
    digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()
    return hmac.new(key, b"ncpi-portal-csrf:v1:" + digest.encode(), hashlib.sha256).hexdigest()


def portal_csrf(request: Request, token: str) -> str:
    return csrf_for(_key(request), token)


def _csrf_ok(request: Request, token: str, form) -> bool:
    sent = form.get(CSRF_FIELD)
    return isinstance(sent, str) and hmac.compare_digest(sent.encode(), portal_csrf(request, token).encode())


def _page(request: Request, template: str, token: str, status_code: int = 200, **context):
    return render(request, template, status_code, token=token, portal_csrf=portal_csrf(request, token),
                  portal_home=f"{PREFIX}/{token}", accepted_words=ACCEPTED_WORDS, **context)


def not_found(request: Request, token: str | None = None):
    """The one answer for every token that opens nothing, and every item outside a link: nothing of any force."""
    well_formed = bool(token) and bool(force_portal.TOKEN.fullmatch(token or ""))
    context = {"fresh_form": well_formed}
    if well_formed:
        context.update(token=token, portal_csrf=portal_csrf(request, token))
    return render(request, "portal_not_found.html", 404, title="This link does not work", **context)


async def _link(request: Request, token: str) -> ResolvedLink | None:
    try:
        return await force_portal.open_link(services(request).sessions, token, _now(request))
    except LinkInvalid:
        return None


def _single(link: ResolvedLink) -> tuple[str, str] | None:
    scope = link.scope
    if len(scope.recommendation_ids) == 1 and not scope.items:
        return "recommendation", scope.recommendation_ids[0]
    if len(scope.items) == 1 and not scope.recommendation_ids:
        return "item", scope.items[0]
    return None


def _here(token: str, link: ResolvedLink, kind: str, key: str) -> str:
    """The page a form of this item is on: the link's own page when it covers only this item."""
    if _single(link) == (kind, key):
        return f"{PREFIX}/{token}"
    return f"{PREFIX}/{token}/{'recommendations' if kind == 'recommendation' else 'items'}/{key}"


async def _recommendation_page(request, token, link, rec_id, status_code=200, refusal: Refusal | None = None, done=None):
    svc = services(request)
    try:
        page = await force_portal.recommendation(svc.sessions, link, rec_id)
    except LookupError:
        return not_found(request, token)
    context = refusal.context() if refusal else {}
    rec = page.recommendation
    return _page(request, "portal_recommendation.html", token, status_code, title=f"Recommendation {rec.ref}: {page.force.name}",
                 page=page, claims=force_portal.CLAIMS, here=_here(token, link, "recommendation", rec_id),
                 back=None if _single(link) else f"{PREFIX}/{token}", done=DONE.get(done or ""),
                 closed=rec.phase == "closed", **context)


async def _item_page(request, token, link, key, status_code=200, refusal: Refusal | None = None, done=None):
    svc = services(request)
    try:
        page = await force_portal.item(svc.sessions, link, key)
    except LookupError:
        return not_found(request, token)
    context = refusal.context() if refusal else {}
    return _page(request, "portal_item.html", token, status_code, title=f"{page.name}: {page.force.name}", page=page,
                 here=_here(token, link, "item", key), back=None if _single(link) else f"{PREFIX}/{token}",
                 done=DONE.get(done or ""), **context)


@router.get(PREFIX)
@router.get(PREFIX + "/")
async def no_token(request: Request):
    return not_found(request)


@router.get(PREFIX + "/{token}")
async def portal_home(request: Request, token: str, done: str | None = None):
    link = await _link(request, token)
    if link is None:
        return not_found(request, token)
    svc = services(request)
    await force_portal.record_use(svc.sessions, link, "portal.viewed")
    single = _single(link)
    if single and single[0] == "recommendation":
        return await _recommendation_page(request, token, link, single[1], done=done)
    if single:
        return await _item_page(request, token, link, single[1], done=done)
    try:
        page = await force_portal.overview(svc.sessions, link)
    except LookupError:
        return not_found(request, token)
    return _page(request, "portal.html", token, title=f"{page.force.name}: {page.inspection.title}", page=page)


@router.get(PREFIX + "/{token}/recommendations/{rec_id}")
async def portal_recommendation(request: Request, token: str, rec_id: str, done: str | None = None):
    link = await _link(request, token)
    if link is None or not force_portal.covers_recommendation(link, rec_id):
        return not_found(request, token)
    await force_portal.record_use(services(request).sessions, link, "portal.viewed", rec_id)
    return await _recommendation_page(request, token, link, rec_id, done=done)


@router.get(PREFIX + "/{token}/items/{key}")
async def portal_item(request: Request, token: str, key: str, done: str | None = None):
    link = await _link(request, token)
    if link is None or not force_portal.covers_item(link, key):
        return not_found(request, token)
    await force_portal.record_use(services(request).sessions, link, "portal.viewed", key)
    return await _item_page(request, token, link, key, done=done)


# ---------------------------------------------------------------- forms


class _TooLarge(Exception):
    pass


async def _form(request: Request, max_bytes: int, files: int):
    """The POSTed form, refusing a body larger than `max_bytes` (by its Content-Length, and by counting
    what arrives when it has none) before the file is spooled anywhere."""
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > max_bytes:
        raise _TooLarge()
    received = 0

    async def receive() -> Message:
        nonlocal received
        message = await request.receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > max_bytes:
                raise _TooLarge()
        return message

    counted = Request(request.scope, receive=receive)
    return await counted.form(max_files=files, max_fields=10, max_part_size=64 * 1024)


def _refused_csrf(request: Request):
    return render(request, "portal_message.html", 403, title="This form has expired",
                  message="The form was not sent from this link's page. Go back to the link in your email, reload the page "
                          "and try again.")


async def _upload(request: Request, upload, field_id: str, refusal: Refusal):
    """A checked upload (ncpi_workflow.uploads), or None with the reason added to the refusal."""
    settings = services(request).settings
    if not isinstance(upload, UploadFile) or not upload.filename:
        return None
    limit = settings.evidence_max_bytes
    content = await upload.read(limit + 1)  # one byte more than the limit is enough to know
    if len(content) > limit:  # its size is not known, only that it is larger: the limit is what is said
        refusal.add(field_id, f"The file is larger than {_limit_words(limit)}, the limit ({limit:,} bytes)")
        return None
    try:
        return await asyncio.to_thread(check_upload, content, browser_filename(upload.filename), settings)
    except UploadRefused as exc:
        refusal.add(field_id, exc.reason, sentence=False)
        return None


def browser_filename(name: str) -> str:
    """A file name as the user's file had it: browsers send a line feed, carriage return and double
    quote in a form's file name as %0A, %0D and %22 (the HTML standard), so a name with a line break
    arrives escaped; it is judged as it was (and refused)."""
    return name.replace("%0A", "\n").replace("%0a", "\n").replace("%0D", "\r").replace("%0d", "\r").replace("%22", '"')


def _limit_words(limit: int) -> str:
    return f"{limit / (1024 * 1024):g} MB" if limit >= 1024 * 1024 else f"{limit:,} bytes"


PROGRESS_FIELDS = [("progress text", "progress-text"), ("claim", "progress-claim")]


@router.post(PREFIX + "/{token}/recommendations/{rec_id}/progress")
async def post_progress(request: Request, token: str, rec_id: str):
    link = await _link(request, token)
    if link is None or not force_portal.covers_recommendation(link, rec_id):
        return not_found(request, token)
    try:
        form = await _form(request, FORM_OVERHEAD, files=0)
    except _TooLarge:
        return await _recommendation_page(request, token, link, rec_id, 413,
                                          Refusal("progress").add("progress-text", "The progress note is too long"))
    if not _csrf_ok(request, token, form):
        return _refused_csrf(request)
    claim, note = text(form, "claim"), text(form, "text")
    refusal = Refusal("progress", values={"claim": claim, "text": note})
    if not claim:
        refusal.add("progress-claim", "Select how far the recommendation has got")
    if not note:
        refusal.add("progress-text", "Enter a progress note: what has been done, and what is still to do")
    if refusal.errors:
        return await _recommendation_page(request, token, link, rec_id, 400, refusal)
    svc = services(request)
    try:
        await force_portal.state_progress(svc.settings, await svc.client(), svc.sessions, link, rec_id, claim, note)
    except UserError as exc:
        field = field_for(str(exc), PROGRESS_FIELDS, "progress-claim")
        return await _recommendation_page(request, token, link, rec_id, 400, refusal.add(field, str(exc)))
    return RedirectResponse(_here(token, link, "recommendation", rec_id) + "?done=progress", status_code=303)


@router.post(PREFIX + "/{token}/recommendations/{rec_id}/evidence")
async def post_evidence(request: Request, token: str, rec_id: str):
    link = await _link(request, token)
    if link is None or not force_portal.covers_recommendation(link, rec_id):
        return not_found(request, token)
    svc = services(request)
    limit = svc.settings.evidence_max_bytes
    try:
        form = await _form(request, limit + FORM_OVERHEAD, files=1)
    except _TooLarge:
        refusal = Refusal("evidence").add("evidence-file", f"The file is over the {_limit_words(limit)} limit ({limit:,} bytes)")
        return await _recommendation_page(request, token, link, rec_id, 413, refusal)
    if not _csrf_ok(request, token, form):
        return _refused_csrf(request)
    description = text(form, "description")
    refusal = Refusal("evidence", values={"description": description})
    upload = form.get("evidence")
    if not isinstance(upload, UploadFile) or not upload.filename:
        refusal.add("evidence-file", "Select the file of evidence to send")
        return await _recommendation_page(request, token, link, rec_id, 400, refusal)
    checked = await _upload(request, upload, "evidence-file", refusal)
    if checked is None:
        return await _recommendation_page(request, token, link, rec_id, 400, refusal)
    try:
        await force_portal.send_evidence(svc.settings, await svc.client(), svc.sessions, link, rec_id, checked, description)
    except UserError as exc:
        field = field_for(str(exc), [("description", "evidence-description")], "evidence-file")
        return await _recommendation_page(request, token, link, rec_id, 400, refusal.add(field, str(exc)))
    finally:
        checked.discard()
    return RedirectResponse(_here(token, link, "recommendation", rec_id) + "?done=evidence", status_code=303)


@router.post(PREFIX + "/{token}/items/{key}")
async def post_item(request: Request, token: str, key: str):
    link = await _link(request, token)
    if link is None or not force_portal.covers_item(link, key):
        return not_found(request, token)
    svc = services(request)
    limit = svc.settings.evidence_max_bytes
    try:
        form = await _form(request, limit + FORM_OVERHEAD, files=1)
    except _TooLarge:
        refusal = Refusal("item").add("item-document", f"The file is over the {_limit_words(limit)} limit ({limit:,} bytes)")
        return await _item_page(request, token, link, key, 413, refusal)
    if not _csrf_ok(request, token, form):
        return _refused_csrf(request)
    url, note = text(form, "url"), text(form, "note")
    upload = form.get("document")
    has_file = isinstance(upload, UploadFile) and bool(upload.filename)
    refusal = Refusal("item", values={"url": url, "note": note})
    if not has_file and not url:
        refusal.add("item-document", "Choose the document to send, or enter the web address where it is published")
    elif has_file and url:
        refusal.add("item-url", "Send the document or its web address, not both")
    elif url:
        try:
            url = force_portal.check_url(url)
        except UserError as exc:
            refusal.add("item-url", str(exc))
    if refusal.errors:
        return await _item_page(request, token, link, key, 400, refusal)
    checked = await _upload(request, upload, "item-document", refusal) if has_file else None
    if has_file and checked is None:
        return await _item_page(request, token, link, key, 400, refusal)
    try:
        await force_portal.send_item(svc.settings, await svc.client(), svc.sessions, link, key, checked=checked,
                                     url=None if checked else url, note=note)
    except UserError as exc:
        field = field_for(str(exc), [("note", "item-note"), ("address", "item-url")], "item-document" if checked else "item-url")
        return await _item_page(request, token, link, key, 400, refusal.add(field, str(exc)))
    finally:
        if checked is not None:
            checked.discard()
    return RedirectResponse(_here(token, link, "item", key) + "?done=item", status_code=303)


@router.post(PREFIX + "/{token}/fresh-link")
async def post_fresh_link(request: Request, token: str):
    """The same answer whatever the address and whatever the token: it reveals nothing."""
    try:
        form = await _form(request, 16 * 1024, files=0)
    except (_TooLarge, ClientDisconnect):
        return not_found(request, token)
    if not force_portal.TOKEN.fullmatch(token):
        return not_found(request)
    if not _csrf_ok(request, token, form):
        return _refused_csrf(request)
    svc = services(request)
    email = text(form, "email")
    if not email or "@" not in email:
        refusal = Refusal("fresh", values={"email": email}).add("fresh-email", "Enter your email address, for example name@force.police.uk")
        link = await _link(request, token)
        if link is None:
            return render(request, "portal_not_found.html", 400, title="This link does not work", fresh_form=True, token=token,
                          portal_csrf=portal_csrf(request, token), **refusal.context())
        return await portal_home_refused(request, token, link, refusal)
    try:
        client = await svc.client()
    except UserError:
        client = None  # the reconciler delivers it
    try:
        await force_portal.request_fresh_link(svc.settings, svc.sessions, client, token, email, _now(request))
    except Exception:  # never tell the asker more than the same answer
        log.exception("portal: a fresh link could not be recorded")
    link = await _link(request, token)
    return render(request, "portal_fresh_link.html", 200, title="Check your email",
                  home=f"{PREFIX}/{token}" if link is not None else None)


async def portal_home_refused(request: Request, token: str, link: ResolvedLink, refusal: Refusal):
    single = _single(link)
    if single and single[0] == "recommendation":
        return await _recommendation_page(request, token, link, single[1], 400, refusal)
    if single:
        return await _item_page(request, token, link, single[1], 400, refusal)
    page = await force_portal.overview(services(request).sessions, link)
    return _page(request, "portal.html", token, 400, title=f"{page.force.name}: {page.inspection.title}", page=page,
                 **refusal.context())


# ---------------------------------------------------------------- inspectors: revoke a link, a document received


@router.post("/links/{link_id}/revoke")
async def revoke_link(request: Request, link_id: int, user: Principal = Depends(may_act)):
    from ncpi_workflow.web.auth import safe_next

    form = await checked_form(request)
    try:
        await force_portal.revoke(services(request).sessions, link_id, by=user.email)
    except LookupError:
        raise HTTPException(404) from None
    back = safe_next(text(form, "next"))
    request.session["flash"] = f"Link #{link_id} is revoked: it opens nothing from now on."
    return RedirectResponse(back + "#links", status_code=303)


@router.get("/inspections/{inspection_id}/documents/{sha256}")
async def document_download(request: Request, inspection_id: str, sha256: str, user: Principal = Depends(signed_in)):
    """A document a force sent for a report-level item (action plan, PCC response), from the evidence store."""
    from sqlalchemy import select

    from ncpi_workflow.evidence_files import stored_path
    from ncpi_workflow.models import AuditEvent

    svc = services(request)
    async with svc.sessions() as session:
        events = list(await session.scalars(select(AuditEvent).where(
            AuditEvent.entity_type == "inspection", AuditEvent.entity_id == inspection_id,
            AuditEvent.action.like("%.received"))))
    event = next((e for e in events if (e.detail or {}).get("sha256") == sha256), None)
    if event is None:
        raise HTTPException(404)
    store = Path(svc.settings.evidence_dir).resolve()
    path = stored_path(store, sha256).resolve()
    if store not in path.parents or not path.is_file():
        raise HTTPException(404, "the document is not in the store")
    response = FileResponse(path, media_type="application/octet-stream", filename=event.detail.get("filename") or sha256)
    security_headers(response)
    return response
