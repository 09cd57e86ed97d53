"""A loopback SMTP server that keeps every message: the embedded default for one machine, and the
real SMTP peer of the tests. It never relays anything anywhere.

For the relay drills it can also behave like a government relay: STARTTLS (or implicit TLS) with a
given certificate, and AUTH LOGIN/PLAIN required over TLS with a set of accounts. It records every
login attempt, so a test can see how often the product knocked with a wrong password."""

from __future__ import annotations

import email
import email.policy
import ssl
import threading
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


@dataclass
class Captured:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    tls: bool = False
    """Whether the message came over TLS (STARTTLS or implicit)."""
    login: str | None = None
    """The account the client authenticated as, if it did."""

    @property
    def message(self) -> EmailMessage:
        return email.message_from_bytes(self.data, policy=email.policy.default)


class CaptureHandler:
    """Accepts and keeps messages; optionally refuses some recipients (for failure drills)."""

    def __init__(self, folder: Path | None = None):
        self.folder = folder
        self.messages: list[Captured] = []
        self.refuse: dict[str, str] = {}
        """Recipient address -> SMTP answer, e.g. '550 5.1.1 No such mailbox'."""
        self.transactions = 0
        self.accounts: Accounts | None = None
        self._lock = threading.Lock()
        self._next_file = 1
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
            # A restarted capture carries on numbering: earlier messages are never overwritten.
            numbers = [int(p.stem) for p in folder.glob("*.eml") if p.stem.isdigit()]
            self._next_file = max(numbers, default=0) + 1

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        transport = getattr(server, "transport", None)
        tls = bool(getattr(session, "ssl", None)) or (transport is not None and transport.get_extra_info("ssl_object") is not None)
        login = session.auth_data if getattr(session, "authenticated", False) else None
        captured = Captured(envelope.mail_from, list(envelope.rcpt_tos), envelope.content, tls,
                            login if isinstance(login, str) else None)
        with self._lock:
            self.messages.append(captured)
            self.transactions += 1
            number, self._next_file = self._next_file, self._next_file + 1
        if self.folder is not None:
            (self.folder / f"{number:06d}.eml").write_bytes(envelope.content)
        return "250 Message accepted for delivery"


class Accounts:
    """An aiosmtpd authenticator over a dict of user -> password; every attempt is kept in `logins`."""

    def __init__(self, users: dict[str, str]):
        self.users = dict(users)
        self.logins: list[tuple[str, bool]] = []
        self._lock = threading.Lock()

    def __call__(self, server, session, envelope, mechanism, auth_data) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        user = auth_data.login.decode(errors="replace")
        ok = self.users.get(user) == auth_data.password.decode(errors="replace")
        with self._lock:
            self.logins.append((user, ok))
        return AuthResult(success=ok, handled=False, auth_data=user if ok else None)


def start_capture(
    host: str = "127.0.0.1", port: int = 8025, folder: Path | None = None, *,
    tls_context: ssl.SSLContext | None = None, implicit_tls: bool = False, users: dict[str, str] | None = None,
) -> tuple[Controller, CaptureHandler]:
    """Start the capture server. With `tls_context` it offers STARTTLS and requires it before
    anything else (or, with `implicit_tls`, speaks TLS from the first byte, as on port 465); with
    `users` it requires AUTH with one of those accounts, over TLS only (`handler.accounts.logins`)."""
    handler = CaptureHandler(folder)
    kwargs = {}
    if users is not None:
        handler.accounts = Accounts(users)
        # aiosmtpd counts only STARTTLS as TLS; on an implicit-TLS socket every byte is encrypted anyway.
        kwargs.update(authenticator=handler.accounts, auth_required=True, auth_require_tls=not implicit_tls)
    if tls_context is not None and implicit_tls:
        kwargs["ssl_context"] = tls_context
    elif tls_context is not None:
        kwargs.update(tls_context=tls_context, require_starttls=True)
    controller = Controller(handler, hostname=host, port=port, **kwargs)
    controller.start()
    return controller, handler
