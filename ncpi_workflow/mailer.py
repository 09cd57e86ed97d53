"""SMTP delivery with aiosmtplib: one connection reused across a burst, an optional rate limit,
and a clear line between failures worth retrying and failures that never will succeed."""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from email.message import EmailMessage
from email.utils import format_datetime, formataddr

import aiosmtplib

from ncpi_workflow.settings import Settings


class PermanentDeliveryError(Exception):
    """The server refused for good (5xx, rejected recipient): retrying will not help."""

    def __init__(self, answer: str):
        super().__init__(answer)
        self.answer = answer


class TransientDeliveryError(Exception):
    """Connection refused, timeout, 4xx: worth retrying later."""


def message_id_for(idempotency_key: str, mail_from: str) -> str:
    """A Message-ID derived from the notification's key: a repeat of the same notification (the one
    unavoidable window) carries the same Message-ID, so mail clients can collapse it."""
    domain = mail_from.rpartition("@")[2] or "ncpi-followup.invalid"
    return f"<{hashlib.sha256(idempotency_key.encode()).hexdigest()[:40]}@{domain}>"


@dataclass(frozen=True)
class SmtpConfig:
    host: str
    port: int
    username: str | None
    password: str | None
    starttls: bool
    tls: bool
    timeout: float
    rate_limit: float
    idle_seconds: float

    @classmethod
    def from_settings(cls, s: Settings) -> "SmtpConfig":
        return cls(s.smtp_host, s.smtp_port, s.smtp_username, s.smtp_password, s.smtp_starttls, s.smtp_tls,
                   s.smtp_timeout, s.smtp_rate_limit, s.smtp_idle_seconds)


def _classify(exc: Exception) -> Exception:
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        answers = "; ".join(f"{r.recipient}: {r.code} {r.message}" for r in exc.recipients)
        permanent = all(r.code >= 500 for r in exc.recipients)
        return PermanentDeliveryError(answers) if permanent else TransientDeliveryError(answers)
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        answer = f"{exc.code} {exc.message}"
        return PermanentDeliveryError(answer) if exc.code >= 500 else TransientDeliveryError(answer)
    return TransientDeliveryError(f"{type(exc).__name__}: {exc}")


class Mailer:
    """Sends messages over one SMTP connection, opened on demand and kept for the next message.

    Concurrent senders share it in turn (a lock): a morning with hundreds of reminders is one
    connection, not hundreds. An idle connection is closed after `idle_seconds`.
    """

    def __init__(self, config: SmtpConfig):
        self.config = config
        self._client: aiosmtplib.SMTP | None = None
        self._lock = asyncio.Lock()
        self._last_sent = 0.0
        self._idle_closer: asyncio.TimerHandle | None = None
        self.connections_opened = 0

    async def _connection(self) -> aiosmtplib.SMTP:
        if self._client is not None and self._client.is_connected:
            return self._client
        c = self.config
        client = aiosmtplib.SMTP(
            hostname=c.host, port=c.port, timeout=c.timeout, use_tls=c.tls, start_tls=c.starttls if not c.tls else False,
            username=c.username, password=c.password,
        )
        await client.connect()
        self.connections_opened += 1
        self._client = client
        return client

    async def send(self, message: EmailMessage) -> None:
        """Send one message; raises PermanentDeliveryError or TransientDeliveryError."""
        async with self._lock:
            if self.config.rate_limit > 0:
                wait = self._last_sent + 1.0 / self.config.rate_limit - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
            try:
                client = await self._connection()
                refused, _ = await client.send_message(message)
            except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPConnectError, ConnectionError, OSError,
                    asyncio.TimeoutError, aiosmtplib.SMTPTimeoutError, aiosmtplib.SMTPException) as exc:
                classified = _classify(exc)
                if isinstance(classified, TransientDeliveryError):
                    await self._drop()  # a broken connection is not reused
                else:
                    await self._reset()
                raise classified from exc
            finally:
                self._last_sent = time.monotonic()
            self._schedule_idle_close()
            if refused:
                # Some recipients took it and some were refused: a retry would repeat it to the first,
                # so this is final, and the answer says who did not get it.
                answers = "; ".join(f"{address}: {r.code} {r.message}" for address, r in refused.items())
                raise PermanentDeliveryError(f"refused for {answers} (delivered to the other recipients)")

    async def _reset(self) -> None:
        # After a refused message the session must be reset before the next one.
        if self._client is not None and self._client.is_connected:
            try:
                await self._client.rset()
            except aiosmtplib.SMTPException:
                await self._drop()

    def _schedule_idle_close(self) -> None:
        if self._idle_closer is not None:
            self._idle_closer.cancel()
        loop = asyncio.get_running_loop()
        self._idle_closer = loop.call_later(self.config.idle_seconds, lambda: loop.create_task(self._close_if_idle()))

    async def _close_if_idle(self) -> None:
        async with self._lock:
            if time.monotonic() - self._last_sent >= self.config.idle_seconds:
                await self._quit()

    async def _drop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    async def close(self) -> None:
        async with self._lock:
            await self._quit()

    async def _quit(self) -> None:
        if self._idle_closer is not None:
            self._idle_closer.cancel()
        client, self._client = self._client, None
        if client is not None and client.is_connected:
            try:
                await client.quit()
            except (aiosmtplib.SMTPException, OSError):
                client.close()


def build_message(
    *, mail_from: str, reply_to: str | None, to: list[str], subject: str, text: str, html: str, message_id: str,
    reference: str,
) -> EmailMessage:
    message = EmailMessage()
    message["From"] = formataddr(("HMICFRS inspection follow-up", mail_from))
    message["To"] = ", ".join(to)
    if reply_to:
        message["Reply-To"] = reply_to
    message["Subject"] = subject
    message["Date"] = format_datetime(datetime.now(timezone.utc))  # RFC 5322 requires it; the time of sending
    message["Message-ID"] = message_id
    message["X-NCPI-Reference"] = reference
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no auto-replies to automated mail
    message.set_content(text)
    message.add_alternative(html, subtype="html")
    return message
