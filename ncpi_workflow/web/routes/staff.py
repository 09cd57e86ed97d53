"""Users (admins only): the accounts, adding one, disabling one. The same functions as `ncpi users`."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse

from ncpi_workflow import users
from ncpi_workflow.errors import UserError
from ncpi_workflow.web.auth import Principal, admin_only, checked_form, services
from ncpi_workflow.web.forms import Refusal, field_for, text
from ncpi_workflow.web.rendering import render

router = APIRouter()


async def _page(request: Request, status_code: int = 200, refusal: Refusal | None = None):
    accounts = await users.list_users(services(request).sessions)
    context = refusal.context() if refusal else {}
    return render(request, "users.html", status_code, title="Users", accounts=accounts, roles=users.ROLES,
                  min_password=users.MIN_PASSWORD_LENGTH, **context)


@router.get("/users")
async def user_list(request: Request, user: Principal = Depends(admin_only)):
    return await _page(request)


@router.post("/users")
async def add(request: Request, user: Principal = Depends(admin_only)):
    form = await checked_form(request)
    email, role, password = text(form, "email"), text(form, "role"), form.get("password") or ""
    refusal = Refusal("add-user", values={"email": email, "role": role})
    if not email:
        refusal.add("user-email", "Enter the email address")
    if not role:
        refusal.add("user-role", "Select the role")
    if not password:
        refusal.add("user-password", "Enter a password")
    if refusal.errors:
        return await _page(request, 400, refusal)
    try:
        added = await users.add_user(services(request).sessions, email, role, password, by=user.email)
    except UserError as exc:
        field = field_for(str(exc), [("password", "user-password"), ("role", "user-role")], "user-email")
        return await _page(request, 400, refusal.add(field, str(exc)))
    request.session["flash"] = f"Added {added.email} ({added.role})."
    return RedirectResponse("/users", status_code=303)


@router.post("/users/{user_id}/disable")
async def disable(request: Request, user_id: int, user: Principal = Depends(admin_only)):
    await checked_form(request)
    svc = services(request)
    target = await users.get_user(svc.sessions, user_id)
    refusal = Refusal("disable")
    if target is None:
        return await _page(request, 404, refusal.add(f"disable-{user_id}", f"No user {user_id}"))
    if target.id == user.id:
        return await _page(request, 400, refusal.add(f"disable-{user_id}", "You cannot disable your own account"))
    try:
        await users.disable_user(svc.sessions, target.email, by=user.email)
    except UserError as exc:
        return await _page(request, 400, refusal.add(f"disable-{user_id}", str(exc)))
    request.session["flash"] = f"Disabled {target.email}: it cannot sign in, and its sessions have ended."
    return RedirectResponse("/users", status_code=303)
