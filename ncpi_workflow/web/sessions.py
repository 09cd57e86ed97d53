"""Signed, expiring session cookies (pure ASGI middleware, after Starlette's SessionMiddleware).

The session is a small dict signed with the secret key (itsdangerous; nothing is encrypted, so it
holds only the user's id, timestamps and the CSRF token). It ends after `idle_seconds` without a
request and `absolute_seconds` after signing in, by the app's own clock. The cookie is HttpOnly
and SameSite=Lax always, and Secure when the request came over HTTPS or the settings say a TLS
proxy is in front.
"""

from __future__ import annotations

import hashlib
import json
from base64 import urlsafe_b64decode, urlsafe_b64encode
from http.cookies import SimpleCookie
from typing import Callable

from itsdangerous import BadSignature, Signer
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

COOKIE = "ncpi_session"
SEEN = "_seen"
SINCE = "since"
"""When the user signed in (seconds since the epoch, by the app's clock)."""
EXPIRED = "session_expired"
"""Set on the request scope when a session ended by age at this request."""


class SignedSessionMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        secret_key: str,
        *,
        idle_seconds: float,
        absolute_seconds: float,
        secure_always: bool = False,
        clock: Callable[[], float],
        skip_prefixes: tuple[str, ...] = (),
    ):
        self.app = app
        self.signer = Signer(secret_key, salt="ncpi-web-session", digest_method=hashlib.sha256)
        self.idle = idle_seconds
        self.absolute = absolute_seconds
        self.secure_always = secure_always
        self.clock = clock
        self.skip = skip_prefixes

    def _load(self, raw: str | None) -> dict:
        if not raw:
            return {}
        try:
            payload = self.signer.unsign(raw.encode("ascii"))
            data = json.loads(urlsafe_b64decode(payload))
        except (BadSignature, ValueError, UnicodeError):
            return {}
        return data if isinstance(data, dict) else {}

    def _dump(self, data: dict) -> str:
        payload = urlsafe_b64encode(json.dumps(data, separators=(",", ":")).encode())
        return self.signer.sign(payload).decode("ascii")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(self.skip):
            await self.app(scope, receive, send)
            return
        cookies = SimpleCookie()
        for name, value in scope.get("headers", []):
            if name == b"cookie":
                try:
                    cookies.load(value.decode("latin-1"))
                except Exception:  # a malformed cookie header: no session
                    pass
        raw = cookies[COOKIE].value if COOKIE in cookies else None
        session = self._load(raw)
        now = self.clock()
        if session:
            seen, since = session.get(SEEN, 0), session.get(SINCE)
            too_idle = now - float(seen) > self.idle
            too_old = since is not None and now - float(since) > self.absolute
            if too_idle or too_old:
                if session.get("uid") is not None:
                    scope[EXPIRED] = True
                session = {}
        scope["session"] = session
        secure = self.secure_always or scope.get("scheme") == "https"

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                data = scope["session"]
                if data:
                    data[SEEN] = now
                    cookie = f"{COOKIE}={self._dump(data)}; Path=/; Max-Age={int(self.absolute)}; HttpOnly; SameSite=Lax"
                    headers.append("Set-Cookie", cookie + ("; Secure" if secure else ""))
                elif raw is not None:
                    cookie = f"{COOKIE}=; Path=/; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT; HttpOnly; SameSite=Lax"
                    headers.append("Set-Cookie", cookie + ("; Secure" if secure else ""))
            await send(message)

        await self.app(scope, receive, send_wrapper)
