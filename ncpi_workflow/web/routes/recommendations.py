"""A recommendation: its verbatim text, deadlines and revisions, the force's claims, evidence,
decisions, the register trail, notifications and the full history; forms to decide, re-open,
withdraw, move a deadline and set the register status."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import FileResponse, RedirectResponse

from ncpi_workflow.app import inspector_actions, read_models
from ncpi_workflow.app.temporal_calls import RECOMMENDATION
from ncpi_workflow.errors import UserError
from ncpi_workflow.formatting import outcome_words
from ncpi_workflow.lifecycle import SETTABLE_REGISTER_STATUSES, Outcome
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
from ncpi_workflow.web.rendering import render, security_headers

router = APIRouter()

OUTCOMES = [(o.value, outcome_words(o.value)) for o in Outcome]
OUTCOME_HINTS = {
    "achieved": "Closes it.",
    "partially_achieved": "A further follow-up cycle with a new deadline.",
    "not_achieved": "A further follow-up cycle, escalated to the chief officer, PCC and lead HM Inspector.",
    "superseded": "Closes it: covered by a later inspection.",
    "withdrawn": "Closes it: no longer asked of the force.",
}


async def _page(request: Request, rec_id: str, status_code: int = 200, refusal: Refusal | None = None):
    svc = services(request)
    try:
        page = await read_models.recommendation_page(svc.sessions, rec_id)
    except LookupError:
        raise HTTPException(404) from None
    view, unavailable = await live_view(svc, RECOMMENDATION, rec_id)
    rec = page.recommendation
    if view is not None:
        s = view.state
        recorded = await read_models.recorded_dates(svc.sessions, RECOMMENDATION, rec_id)
        deadlines = [tracked_deadline(d, recorded) for d in (s.deadline, s.evidence_deadline) if d is not None]
        history = history_entries(view, recorded)
        state = {"phase": s.phase.value, "cycle": s.cycle, "force_claim": s.force_claim, "outcome": s.outcome,
                 "register_status": view.register_status, "next_action": view.next_action, "next_at": view.next_action_at,
                 "closed_at": s.closed_at}
        current_keys = [d["key"] for d in deadlines if d["met_at"] is None]
    else:
        deadlines = [recorded_deadline(d) for d in page.deadlines]
        history = audit_entries(page.audit)
        state = {"phase": rec.phase, "cycle": rec.cycle, "force_claim": rec.force_claim, "outcome": rec.outcome,
                 "register_status": rec.register_status, "next_action": rec.next_action, "next_at": rec.next_action_at,
                 "closed_at": None}
        current = [d for d in page.deadlines if d.cycle == rec.cycle]
        current_keys = ["evidence" if d.kind == "evidence" else "recommendation" for d in current]
    closed = str(state["phase"]) == "closed"
    forms = {"decision", "withdraw", "deadline", "register"} if not closed else {"reopen"}
    if refusal is not None:
        forms.add(refusal.form)  # the refused form stays, so the error summary's link has its field
    deadline_keys = []
    for key in current_keys:
        short = "evidence" if key.startswith("evidence") else "recommendation"
        if short not in deadline_keys:
            deadline_keys.append(short)
    context = refusal.context() if refusal else {}
    from ncpi_workflow.app import force_portal

    links = await force_portal.links_for(svc.sessions, rec_id)  # the force's links, each revocable
    from ncpi_workflow import revisit_reports

    context["reinspection"] = await revisit_reports.recommendation_reviews(svc.sessions, rec_id)  # the PIR reports' findings
    return render(
        request, "recommendation.html", status_code, title=f"Recommendation {rec.ref}: {page.force.name}", links=links,
        page=page, state=state, deadlines=deadlines, history=history, live=view is not None, unavailable=unavailable,
        forms=forms, outcomes=OUTCOMES, outcome_hints=OUTCOME_HINTS, deadline_keys=deadline_keys or ["recommendation"],
        register_statuses=[str(s) for s in SETTABLE_REGISTER_STATUSES], **context,
    )


@router.get("/recommendations/{rec_id}")
async def recommendation(request: Request, rec_id: str, user: Principal = Depends(signed_in)):
    return await _page(request, rec_id)


async def _exists(request: Request, rec_id: str) -> None:
    from ncpi_workflow.models import Recommendation

    async with services(request).sessions() as session:
        if await session.get(Recommendation, rec_id) is None:
            raise HTTPException(404)


def _done(request: Request, rec_id: str, message: str) -> RedirectResponse:
    request.session["flash"] = message
    return RedirectResponse(f"/recommendations/{rec_id}", status_code=303)


@router.post("/recommendations/{rec_id}/decision")
async def decide(request: Request, rec_id: str, user: Principal = Depends(may_act)):
    form = await checked_form(request)
    await _exists(request, rec_id)
    outcome, rationale = text(form, "outcome"), text(form, "rationale")
    refusal = Refusal("decision", values={"outcome": outcome, "rationale": rationale})
    on = happened_on(form, refusal, "decision-on-day")
    if not outcome:
        refusal.add("decision-outcome", "Select the outcome")
    if not rationale:
        refusal.add("decision-rationale", "Enter the rationale for the decision")
    if refusal.errors:
        return await _page(request, rec_id, 400, refusal)
    svc = services(request)
    try:
        view = await inspector_actions.record_decision(svc.settings, await svc.client(), rec_id, outcome, rationale,
                                                       by=user.email, on=on)
    except UserError as exc:
        rules = [(w, "decision-on-day") for w in HAPPENED_WORDS] + [("rationale", "decision-rationale")]
        return await _page(request, rec_id, 400, refusal.add(field_for(str(exc), rules, "decision-outcome"), happened_reason(str(exc))))
    s = view.state
    decided = f" It was decided on {on.day} {on:%B %Y}." if on is not None else ""
    if s.phase.value == "closed":
        message = f"Decision recorded: {outcome_words(outcome)}. The recommendation is closed.{decided}"
    else:
        message = (f"Decision recorded: {outcome_words(outcome)}. A further follow-up cycle ({s.cycle}) runs to "
                   f"{s.deadline.due:%-d %B %Y}.{decided}")
    return _done(request, rec_id, message)


async def _reason_action(request: Request, rec_id: str, user: Principal, name: str, action, done: str):
    form = await checked_form(request)
    await _exists(request, rec_id)
    reason = text(form, "reason")
    refusal = Refusal(name, values={"reason": reason})
    field_id = f"{name}-reason"
    if not reason:
        return await _page(request, rec_id, 400, refusal.add(field_id, "Enter the reason"))
    svc = services(request)
    try:
        view = await action(svc.settings, await svc.client(), rec_id, reason, by=user.email)
    except UserError as exc:
        return await _page(request, rec_id, 400, refusal.add(field_id, str(exc)))
    return _done(request, rec_id, done.format(view=view, state=view.state))


@router.post("/recommendations/{rec_id}/reopen")
async def reopen(request: Request, rec_id: str, user: Principal = Depends(may_act)):
    return await _reason_action(request, rec_id, user, "reopen", inspector_actions.reopen,
                                "Re-opened: cycle {state.cycle}, due {state.deadline.due:%-d %B %Y}.")


@router.post("/recommendations/{rec_id}/withdraw")
async def withdraw(request: Request, rec_id: str, user: Principal = Depends(may_act)):
    return await _reason_action(request, rec_id, user, "withdraw", inspector_actions.withdraw,
                                "Withdrawn: the recommendation is closed.")


@router.post("/recommendations/{rec_id}/deadline")
async def revise_deadline(request: Request, rec_id: str, user: Principal = Depends(may_act)):
    form = await checked_form(request)
    await _exists(request, rec_id)
    key, reason = text(form, "deadline") or "recommendation", text(form, "reason")
    values = {"deadline": key, "reason": reason, **{f"new_due-{p}": text(form, f"new_due-{p}") for p in ("day", "month", "year")}}
    refusal = Refusal("deadline", values=values)
    try:
        new_due = date_from(form, "new_due")
    except DateProblem as exc:
        refusal.add("deadline-new_due-day", str(exc))
    if not reason:
        refusal.add("deadline-reason", "Enter why the deadline moves")
    if refusal.errors:
        return await _page(request, rec_id, 400, refusal)
    svc = services(request)
    try:
        moved = await inspector_actions.revise_deadline(svc.settings, await svc.client(), rec_id, key, new_due, reason, by=user.email)
    except UserError as exc:
        field = field_for(str(exc), [("reason", "deadline-reason"), ("no open deadline", "deadline-key")], "deadline-new_due-day")
        return await _page(request, rec_id, 400, refusal.add(field, str(exc)))
    return _done(request, rec_id, f"The {key} deadline moved from {moved.previous_due:%-d %B %Y} to {moved.due:%-d %B %Y}.")


@router.post("/recommendations/{rec_id}/register")
async def register_status(request: Request, rec_id: str, user: Principal = Depends(may_act)):
    form = await checked_form(request)
    await _exists(request, rec_id)
    status, comment = text(form, "status"), text(form, "comment")
    refusal = Refusal("register", values={"status": status, "comment": comment})
    on = happened_on(form, refusal, "register-on-day")
    if not status:
        refusal.add("register-status", "Select the register status")
    if not comment:
        refusal.add("register-comment", "Enter the public comment")
    if refusal.errors:
        return await _page(request, rec_id, 400, refusal)
    svc = services(request)
    try:
        await inspector_actions.set_register_status(svc.settings, await svc.client(), rec_id, status, comment,
                                                    by=user.email, on=on)
    except UserError as exc:
        rules = [(w, "register-on-day") for w in HAPPENED_WORDS] + [("comment", "register-comment")]
        return await _page(request, rec_id, 400, refusal.add(field_for(str(exc), rules, "register-status"), happened_reason(str(exc))))
    judged = f" (judged on {on.day} {on:%B %Y})" if on is not None else ""
    return _done(request, rec_id, f"Register status set: {status}{judged}.")


@router.get("/evidence/{evidence_id}")
async def evidence_download(request: Request, evidence_id: int, user: Principal = Depends(signed_in)):
    svc = services(request)
    try:
        row = await read_models.evidence_file(svc.sessions, evidence_id)
    except LookupError:
        raise HTTPException(404) from None
    store = Path(svc.settings.evidence_dir).resolve()
    path = Path(row.storage_path).resolve()
    if store not in path.parents or not path.is_file():
        raise HTTPException(404, "the evidence file is not in the store")
    response = FileResponse(path, media_type="application/octet-stream", filename=row.filename)
    security_headers(response)
    return response
