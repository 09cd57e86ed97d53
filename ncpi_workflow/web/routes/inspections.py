"""An inspection: report details, report-level deadlines, the revisit and each recommendation;
forms to open the revisit early, record a delivery and move a report-level deadline."""

from __future__ import annotations

from datetime import datetime, timezone

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import RedirectResponse

from ncpi_workflow.app import inspector_actions, read_models
from ncpi_workflow.app.temporal_calls import INSPECTION
from ncpi_workflow.errors import UserError
from ncpi_workflow.formatting import local_date
from ncpi_workflow.uploads import ACCEPTED_WORDS, UploadRefused, check_upload, clean_filename
from ncpi_workflow.views import calendar_now, words
from ncpi_workflow.web.auth import Principal, checked_form, may_act, services, signed_in
from ncpi_workflow.web.forms import (
    HAPPENED_WORDS,
    DateProblem,
    Refusal,
    date_from,
    field_for,
    happened_on,
    happened_reason,
    text,
)
from ncpi_workflow.web.presenting import audit_entries, history_entries, live_view, recorded_deadline, tracked_deadline
from ncpi_workflow.web.rendering import render
from ncpi_workflow.web.timeline import events_of, timeline_svg

router = APIRouter()

ITEM_NAMES = {"action_plan": "Force action plan", "pcc_response": "PCC's published response",
              "immediate_update": "Update on immediate recommendations"}


async def _page(request: Request, inspection_id: str, status_code: int = 200, refusal: Refusal | None = None):
    svc = services(request)
    try:
        page = await read_models.inspection_page(svc.sessions, inspection_id)
    except LookupError:
        raise HTTPException(404) from None
    view, unavailable = await live_view(svc, INSPECTION, inspection_id)
    if view is not None:
        state = view.state
        recorded = await read_models.recorded_dates(svc.sessions, INSPECTION, inspection_id)
        deadlines = [tracked_deadline(d, recorded) for d in state.deadlines]
        history = history_entries(view, recorded)
        phase, cycle = state.phase.value, state.cycle
        revisit = {"opened_at": state.revisit_opened_at, "trigger": state.revisit_trigger, "by": state.revisit_by,
                   "recorded_at": recorded.revisits.get(state.cycle)}
        next_action, next_at = view.next_action, view.next_action_at
    else:
        deadlines = [recorded_deadline(d) for d in page.deadlines]
        history = audit_entries(page.audit)
        insp = page.inspection
        phase, cycle = insp.phase, insp.cycle
        latest = next((r for r in reversed(page.revisits) if r.cycle == insp.cycle), None)
        revisit = {"opened_at": latest.opened_at if latest else None, "trigger": latest.trigger if latest else None,
                   "by": latest.triggered_by if latest else None, "recorded_at": latest.recorded_at if latest else None}
        next_action, next_at = insp.next_action, insp.next_action_at
    # The calendar's today: under a time scale the follow-up's, from its live view.
    today = local_date(calendar_now(view)) if view is not None else local_date(datetime.now(timezone.utc))
    timeline = timeline_svg(events_of(page.all_deadlines, page.notifications, page.decisions, page.revisits), today,
                            f"Timeline of the follow-up of {page.force.name}'s inspection")
    open_items = [d["key"] for d in deadlines if d["key"] in ITEM_NAMES and d["met_at"] is None]
    movable = [d["key"] for d in deadlines if d["met_at"] is None and (d["key"] in ITEM_NAMES or d["key"] == "revisit_by")]
    context = refusal.context() if refusal else {}
    from ncpi_workflow.app import force_portal

    context["links"] = await force_portal.links_for(svc.sessions, inspection_id)  # the force's links, each revocable
    from ncpi_workflow import revisit_reports

    # Areas for improvement, post-inspection review reports, the action plan's and PCC response's receipt.
    context.update(await revisit_reports.inspection_extras(svc.sessions, inspection_id, page.deadlines, page.audit))
    return render(
        request, "inspection.html", status_code, title=f"{page.force.name}: inspection published {page.inspection.published_on:%-d %B %Y}",
        page=page, deadlines=deadlines, history=history, phase=phase, cycle=cycle, revisit=revisit,
        next_action=next_action, next_at=next_at, live=view is not None, unavailable=unavailable,
        open_items=open_items, movable=movable, item_names=ITEM_NAMES, timeline=timeline,
        accepted_words=ACCEPTED_WORDS, **context,
    )


@router.get("/inspections/{inspection_id}")
async def inspection(request: Request, inspection_id: str, user: Principal = Depends(signed_in)):
    return await _page(request, inspection_id)


async def _exists(request: Request, inspection_id: str) -> None:
    from ncpi_workflow.models import Inspection

    async with services(request).sessions() as session:
        if await session.get(Inspection, inspection_id) is None:
            raise HTTPException(404)


def _done(request: Request, inspection_id: str, message: str) -> RedirectResponse:
    request.session["flash"] = message
    return RedirectResponse(f"/inspections/{inspection_id}", status_code=303)


@router.post("/inspections/{inspection_id}/revisit")
async def open_revisit(request: Request, inspection_id: str, user: Principal = Depends(may_act)):
    form = await checked_form(request)
    await _exists(request, inspection_id)
    refusal = Refusal("revisit")
    on = happened_on(form, refusal, "revisit-on-day")
    if refusal.errors:
        return await _page(request, inspection_id, 400, refusal)
    svc = services(request)
    try:
        result = await inspector_actions.trigger_revisit(svc.settings, await svc.client(), inspection_id, by=user.email, on=on)
    except UserError as exc:
        field = field_for(str(exc), [(w, "revisit-on-day") for w in HAPPENED_WORDS], "open-revisit")
        return await _page(request, inspection_id, 400, refusal.add(field, happened_reason(str(exc))))
    opened = f" on {on.day} {on:%B %Y}" if on is not None else ""
    return _done(request, inspection_id, f"The revisit is open (cycle {result.cycle}){opened}. Every open recommendation is "
                                         "asked for evidence or is under review.")


DELIVERY_FIELDS = [("note", "delivery-note"), ("address", "delivery-url"), ("document", "delivery-document")]


@router.post("/inspections/{inspection_id}/deliveries")
async def record_delivery(request: Request, inspection_id: str, user: Principal = Depends(may_act)):
    """Receipt of a report-level item, optionally with the document received (checked as a portal
    upload is, then kept by SHA-256) or its web address: `inspector_actions.record_delivery_received`,
    the path `ncpi deliver --document/--url` takes."""
    import asyncio

    from ncpi_workflow.web.routes.portal import browser_filename

    svc = services(request)
    limit = svc.settings.evidence_max_bytes
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit + 64 * 1024:  # refused before the file is spooled
        await _exists(request, inspection_id)
        refusal = Refusal("delivery").add("delivery-document", f"The file is over the {limit:,}-byte limit")
        return await _page(request, inspection_id, 413, refusal)
    form = await checked_form(request, max_files=1, max_fields=10)
    await _exists(request, inspection_id)
    item, note, url = text(form, "item"), text(form, "note"), text(form, "url")
    upload = form.get("document")
    has_file = not isinstance(upload, str) and upload is not None and bool(upload.filename)
    refusal = Refusal("delivery", values={"item": item, "note": note, "url": url})
    on = happened_on(form, refusal, "delivery-on-day")
    if not item:
        refusal.add("delivery-item", "Select what was received")
    if has_file and url:
        refusal.add("delivery-url", "Give the document or its web address, not both")
    if refusal.errors:
        return await _page(request, inspection_id, 400, refusal)
    checked = None
    if has_file:
        try:
            if upload.size is not None and upload.size > limit:  # its whole size, as check_upload words it
                shown = clean_filename(browser_filename(upload.filename))
                raise UploadRefused(f"{shown}: the file is {upload.size:,} bytes, over the {limit:,}-byte limit")
            content = await upload.read(limit + 1)
            checked = await asyncio.to_thread(check_upload, content, browser_filename(upload.filename), svc.settings)
        except UploadRefused as exc:  # nothing kept: the reason names the file
            return await _page(request, inspection_id, 400, refusal.add("delivery-document", exc.reason, sentence=False))
    try:
        await inspector_actions.record_delivery_received(svc.settings, await svc.client(), inspection_id, item,
                                                         by=user.email, note=note, document=checked, url=url or None, on=on)
    except UserError as exc:
        field = field_for(str(exc), [(w, "delivery-on-day") for w in HAPPENED_WORDS] + DELIVERY_FIELDS, "delivery-item")
        return await _page(request, inspection_id, 400, refusal.add(field, happened_reason(str(exc))))
    finally:
        if checked is not None:
            checked.discard()
    what = f" with {checked.filename}" if checked is not None else (" with its web address" if url else "")
    what += f", received {on.day} {on:%B %Y}" if on is not None else ""
    return _done(request, inspection_id, f"{ITEM_NAMES.get(item, words(item))}: receipt recorded{what}; its reminders stop.")


DEADLINE_FIELDS = [("reason", "report-deadline-reason"), ("no open deadline", "report-deadline-key"),
                   ("already met", "report-deadline-key")]


@router.post("/inspections/{inspection_id}/deadlines")
async def revise_deadline(request: Request, inspection_id: str, user: Principal = Depends(may_act)):
    form = await checked_form(request)
    await _exists(request, inspection_id)
    key, reason = text(form, "deadline"), text(form, "reason")
    values = {"deadline": key, "reason": reason, **{f"new_due-{p}": text(form, f"new_due-{p}") for p in ("day", "month", "year")}}
    refusal = Refusal("report-deadline", values=values)
    if not key:
        refusal.add("report-deadline-key", "Select the deadline to move")
    try:
        new_due = date_from(form, "new_due")
    except DateProblem as exc:
        refusal.add("report-deadline-new_due-day", str(exc))
    if not reason:
        refusal.add("report-deadline-reason", "Enter why the deadline moves")
    if refusal.errors:
        return await _page(request, inspection_id, 400, refusal)
    svc = services(request)
    try:
        moved = await inspector_actions.revise_deadline(svc.settings, await svc.client(), inspection_id, key, new_due, reason, by=user.email)
    except UserError as exc:
        field = field_for(str(exc), DEADLINE_FIELDS, "report-deadline-new_due-day")
        return await _page(request, inspection_id, 400, refusal.add(field, str(exc)))
    return _done(request, inspection_id, f"{ITEM_NAMES.get(key, words(key)).capitalize()} moved from "
                                         f"{moved.previous_due:%-d %B %Y} to {moved.due:%-d %B %Y}.")
