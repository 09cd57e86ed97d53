"""The outbox: every notification, filterable by state, kind and force; re-send a failed one."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse

from ncpi_workflow.app import outbox as outbox_app
from ncpi_workflow.errors import UserError
from ncpi_workflow.forces import load_forces
from ncpi_workflow.web.auth import Principal, checked_form, may_act, services, signed_in
from ncpi_workflow.web.forms import Refusal
from ncpi_workflow.web.rendering import render

router = APIRouter()

SHOWN = 500


async def _page(request: Request, status: str | None, kind: str | None, force: str | None,
                status_code: int = 200, refusal: Refusal | None = None):
    svc = services(request)
    where = outbox_app.OutboxFilter(status=status or None, kind=kind or None, force=(force or "").upper() or None)
    try:
        records = await outbox_app.list_records(svc.sessions, where, limit=SHOWN + 1)
    except UserError as exc:
        return render(request, "error.html", 400, title="This page cannot be shown", message=str(exc))
    forces = load_forces(svc.settings.forces_file)
    context = refusal.context() if refusal else {}
    return render(
        request, "outbox.html", status_code, title="Outbox", records=records[:SHOWN], more=len(records) > SHOWN,
        shown=SHOWN, where=where, statuses=outbox_app.OUTBOX_STATUSES, kinds=await outbox_app.kinds(svc.sessions),
        forces=sorted(forces.values(), key=lambda f: f.name), **context,
    )


@router.get("/outbox")
async def outbox(request: Request, status: str | None = None, kind: str | None = None, force: str | None = None,
                 user: Principal = Depends(signed_in)):
    return await _page(request, status, kind, force)


@router.post("/outbox/{notification_id}/resend")
async def resend(request: Request, notification_id: int, user: Principal = Depends(may_act)):
    form = await checked_form(request)
    back = {k: form.get(k) or None for k in ("status", "kind", "force")}
    svc = services(request)
    try:
        to = await outbox_app.resend(svc.settings, await svc.client(), svc.sessions, notification_id, by=user.email)
    except UserError as exc:
        refusal = Refusal("resend").add(f"resend-{notification_id}", str(exc))
        return await _page(request, back["status"], back["kind"], back["force"], 400, refusal)
    request.session["flash"] = f"Re-sending notification {notification_id} to {', '.join(to)}."
    from urllib.parse import urlencode

    query = urlencode({k: v for k, v in back.items() if v})
    return RedirectResponse("/outbox" + (f"?{query}" if query else ""), status_code=303)
