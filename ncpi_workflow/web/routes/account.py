"""Health, signing in and out."""

from __future__ import annotations

import math

from fastapi import APIRouter, Depends, Request
from fastapi.responses import PlainTextResponse, RedirectResponse

from ncpi_workflow import users
from ncpi_workflow.web.auth import Principal, checked_form, current_user, safe_next, services
from ncpi_workflow.web.forms import Refusal, text
from ncpi_workflow.web.rendering import render, security_headers
from ncpi_workflow.web.sessions import EXPIRED, SINCE

router = APIRouter()


@router.get("/healthz", include_in_schema=False)
async def healthz() -> PlainTextResponse:
    response = PlainTextResponse("ok\n")
    security_headers(response)
    return response


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


@router.get("/sign-in")
async def sign_in_page(request: Request, next: str | None = None, user: Principal | None = Depends(current_user)):
    if user is not None:
        return RedirectResponse(safe_next(next), status_code=303)
    expired = bool(request.scope.get(EXPIRED))
    return render(request, "sign_in.html", title="Sign in", next=safe_next(next), expired=expired)


@router.post("/sign-in")
async def sign_in(request: Request):
    form = await checked_form(request)
    email, password = text(form, "email"), form.get("password") or ""
    target = safe_next(text(form, "next"))
    svc = services(request)
    key = email.lower()
    refusal = Refusal("sign-in", values={"email": email})
    if not email:
        refusal.add("email", "Enter your email address")
    if not password:
        refusal.add("password", "Enter your password")
    if refusal.errors:
        return render(request, "sign_in.html", 400, title="Sign in", next=target, **refusal.context())
    wait = svc.throttle.retry_after(key, _client(request))
    if wait is not None:
        minutes = math.ceil(wait / 60)
        refusal.add("email", f"Too many failed sign-in attempts for this email address. Try again in {minutes} "
                             f"minute{'s' if minutes != 1 else ''}.")
        response = render(request, "sign_in.html", 429, title="Sign in", next=target, **refusal.context())
        response.headers["Retry-After"] = str(math.ceil(wait))
        return response
    user = await users.authenticate(svc.sessions, email, password)
    if user is None:
        svc.throttle.failed(key, _client(request))
        refusal.add("email", "Enter a correct email address and password (a disabled account cannot sign in)")
        return render(request, "sign_in.html", 400, title="Sign in", next=target, **refusal.context())
    svc.throttle.succeeded(key, _client(request))
    request.session.clear()  # a fresh session (and CSRF token) on signing in
    request.session.update({"uid": user.id, SINCE: svc.clock()})
    return RedirectResponse(target, status_code=303)


@router.post("/sign-out")
async def sign_out(request: Request):
    await checked_form(request)
    request.session.clear()
    return RedirectResponse("/sign-in", status_code=303)
