"""Who is signed in, what they may do, CSRF and the sign-in throttle.

`current_user` is the one place the identity of a request comes from: today the local accounts
of `ncpi_workflow.users` behind a signed session cookie; an OIDC sign-in would replace this
function and the sign-in routes, and nothing else. Every other check builds on it:
`signed_in` (anonymous visitors are sent to /sign-in), `may_act` (inspector or admin, else 403),
`admin_only` (admin, else 403).
"""

from __future__ import annotations

import hmac
import secrets
from collections import deque
from dataclasses import dataclass
from typing import Callable

from fastapi import Depends, Request

from ncpi_workflow import users
from ncpi_workflow.users import CAN_ACT, CAN_ADMINISTER


@dataclass(frozen=True)
class Principal:
    """The signed-in user as the rest of the app sees them: an email (the actor of every action) and a role."""

    id: int
    email: str
    role: str

    @property
    def can_act(self) -> bool:
        return self.role in CAN_ACT

    @property
    def is_admin(self) -> bool:
        return self.role in CAN_ADMINISTER


class SignInRequired(Exception):
    def __init__(self, next_url: str):
        super().__init__(next_url)
        self.next_url = next_url


class Forbidden(Exception):
    """A signed-in user whose role does not allow this: 403."""


class CsrfRefused(Exception):
    """A POST without the session's CSRF token: 403."""


def services(request: Request):
    return request.app.state.services


_UNSET = object()


async def current_user(request: Request) -> Principal | None:
    """The signed-in user, or None. A disabled or deleted account ends its session here."""
    cached = getattr(request.state, "user", _UNSET)
    if cached is not _UNSET:
        return cached
    principal = None
    uid = request.session.get("uid")
    if uid is not None:
        user = await users.get_user(services(request).sessions, int(uid))
        if user is None or user.disabled:
            request.session.clear()
        else:
            principal = Principal(user.id, user.email, user.role)
    request.state.user = principal
    return principal


def _here(request: Request) -> str:
    return request.url.path + (f"?{request.url.query}" if request.url.query else "")


async def signed_in(request: Request, user: Principal | None = Depends(current_user)) -> Principal:
    if user is None:
        raise SignInRequired(_here(request) if request.method == "GET" else "/")
    return user


async def may_act(user: Principal = Depends(signed_in)) -> Principal:
    if not user.can_act:
        raise Forbidden()
    return user


async def admin_only(user: Principal = Depends(signed_in)) -> Principal:
    if not user.is_admin:
        raise Forbidden()
    return user


# ---------------------------------------------------------------- CSRF

CSRF_FIELD = "csrf_token"


def csrf_token(request: Request) -> str:
    """The session's CSRF token (made on first use), for a hidden field in every form."""
    token = request.session.get("csrf")
    if not token:
        token = request.session["csrf"] = secrets.token_urlsafe(32)
    return token


async def checked_form(request: Request, **limits):
    """The POSTed form, once its CSRF token matches the session's (compared in constant time)."""
    form = await request.form(**limits)
    sent = form.get(CSRF_FIELD)
    expected = request.session.get("csrf")
    if not (isinstance(sent, str) and expected and hmac.compare_digest(sent.encode(), expected.encode())):
        raise CsrfRefused()
    return form


def safe_next(url: str | None) -> str:
    """Only a path of this site: never another host (no open redirect)."""
    if not url or not url.startswith("/") or url.startswith("//") or "\\" in url:
        return "/"
    return url


# ---------------------------------------------------------------- the sign-in throttle


class SignInThrottle:
    """At most `limit` failed sign-ins per email and client address in `window` seconds; then
    refused (429) until the oldest failure leaves the window. A success clears the count.
    In the memory of this process: each web replica counts its own."""

    def __init__(self, clock: Callable[[], float], limit: int = 5, window: float = 15 * 60, max_keys: int = 100_000):
        self.clock = clock
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        self._failures: dict[tuple[str, str], deque[float]] = {}

    def _recent(self, key: tuple[str, str]) -> deque[float]:
        failures = self._failures.get(key)
        if failures is None:
            return deque()
        cutoff = self.clock() - self.window
        while failures and failures[0] <= cutoff:
            failures.popleft()
        if not failures:
            del self._failures[key]
        return failures

    def retry_after(self, email: str, client: str) -> float | None:
        """Seconds until another attempt is allowed, or None when it is allowed now."""
        failures = self._recent((email, client))
        if len(failures) < self.limit:
            return None
        return max(failures[0] + self.window - self.clock(), 1.0)

    def failed(self, email: str, client: str) -> None:
        key = (email, client)
        if key not in self._failures and len(self._failures) >= self.max_keys:
            self._failures.pop(next(iter(self._failures)))  # the oldest key goes first
        self._failures.setdefault(key, deque()).append(self.clock())

    def succeeded(self, email: str, client: str) -> None:
        self._failures.pop((email, client), None)
