"""SMTP delivery with aiosmtplib: one connection reused across a burst, an optional rate limit,
and a clear line between three kinds of failure:

- `PermanentDeliveryError`: the server refused this message for good (5xx to it, a refused
  recipient). Retrying will not help; the notification is recorded as failed.
- `TransientDeliveryError`: this message did not go now (4xx, a dropped connection). Retried.
- `RelayFault` (a kind of transient error): the relay as a whole refuses or cannot be reached: our
  login refused (535), TLS failing (an untrusted certificate, no STARTTLS), the relay unreachable.
  A fault of the configuration or of the relay, never of any one message: every delivery is held
  and retried, nothing is marked failed. The Mailer keeps the fault process-wide: it logs it at
  ERROR once per episode (not per message), tries the relay again at most every
  `fault_probe_seconds` while it lasts (holding deliveries in between without connecting, so a
  wrong password does not knock hundreds of times), and reports the relay's state through
  `relay_report` for the delivery activity to record where `ncpi health` can read it.

Messages are rendered once and kept as bytes (`flatten`), 7-bit clean (quoted-printable where a
part is not short ASCII lines), so the bytes sent are the bytes stored, whatever the relay supports.
"""

from __future__ import annotations

import asyncio
import email.policy
import hashlib
import logging
import ssl
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from email import message_from_bytes
from email.message import EmailMessage
from email.utils import format_datetime, formataddr, getaddresses

import aiosmtplib

from ncpi_workflow.settings import Settings

log = logging.getLogger("ncpi.mailer")


class _WirePolicy(email.policy.EmailPolicy):
    """The SMTP policy, with the Subject folded so that its first line carries text.

    The email package folds a Subject that fits on one continuation line but not after "Subject: "
    (70 to 77 characters) as `Subject:` CRLF SP text, which a parser reads back with a leading
    space. A plain ASCII subject is folded here instead at its spaces, filling each line up to
    78 characters (a word longer than that stays whole, within RFC 5322's 998); unfolded, it is
    the subject exactly. Anything else (non-ASCII, needing encoded words) is folded as before."""

    def fold_binary(self, name, value):
        if name.lower() == "subject":
            lines = _fold_plain(name, str(value), self.max_line_length or 78)
            if lines is not None:
                return "".join(line + self.linesep for line in lines).encode("ascii")
        return super().fold_binary(name, value)


def _fold_plain(name: str, value: str, width: int) -> list[str] | None:
    """`Name: value` folded before single spaces (never a line of spaces alone), or None when the
    value is not plain printable ASCII words (left to the email package)."""
    if (not value or not value.isascii() or not value.isprintable() or value != value.strip()
            or "=?" in value):
        return None
    tokens = value.split(" ")
    lines = [f"{name}: {tokens[0]}"]
    for token in tokens[1:]:
        if token and len(lines[-1]) + 1 + len(token) > width:
            lines.append(" " + token)
        else:
            lines[-1] += " " + token
    if max(len(line) for line in lines) > 998:
        return None
    return lines


WIRE_POLICY = _WirePolicy(linesep="\r\n", cte_type="7bit")
"""CRLF line ends, 7-bit (email.policy.SMTP with cte_type 7bit): the stored bytes go out as they
are to any relay."""


class PermanentDeliveryError(Exception):
    """The server refused for good (5xx, rejected recipient): retrying will not help."""

    def __init__(self, answer: str):
        super().__init__(answer)
        self.answer = answer


class TransientDeliveryError(Exception):
    """Connection refused, timeout, 4xx: worth retrying later."""


class RelayFault(TransientDeliveryError):
    """The relay as a whole refuses or cannot be reached: hold every delivery and retry."""

    AUTHENTICATION = "authentication"
    TLS = "tls"
    CONNECTION = "connection"

    def __init__(self, category: str, reason: str):
        super().__init__(reason)
        self.category = category
        self.reason = reason


@dataclass(frozen=True)
class RelayReport:
    """The relay's state as this process found it, to be recorded (see models.RelayStatus)."""

    relay: str
    state: str
    """"ok" or "failing"."""
    category: str | None
    reason: str | None
    since: datetime


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
    ca_file: str | None = None
    """PEM CA certificates the relay's certificate must chain to (NCPI_SMTP_CA_FILE); None: the system's."""
    fault_probe_seconds: float = 30.0

    @classmethod
    def from_settings(cls, s: Settings) -> "SmtpConfig":
        return cls(s.smtp_host, s.smtp_port, s.smtp_username, s.smtp_password, s.smtp_starttls, s.smtp_tls,
                   s.smtp_timeout, s.smtp_rate_limit, s.smtp_idle_seconds,
                   str(s.smtp_ca_file) if s.smtp_ca_file else None, s.smtp_fault_probe_seconds)

    @property
    def relay(self) -> str:
        return f"{self.host}:{self.port}"


def one_line(text: object, limit: int = 300) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _causes(exc: BaseException) -> list[BaseException]:
    chain, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    return chain


AUTH_CODES = {530, 534, 535, 538}
"""Authentication required / too weak / credentials invalid / encryption required for it."""


def relay_fault(exc: BaseException, config: SmtpConfig) -> RelayFault:
    """What went wrong opening a session with the relay (connect, TLS, EHLO, AUTH), in one line."""
    relay = config.relay
    chain = _causes(exc)
    for e in chain:
        if isinstance(e, ssl.SSLCertVerificationError):
            hint = "" if config.ca_file else "; if it is signed by a private CA, name that CA in NCPI_SMTP_CA_FILE"
            return RelayFault(RelayFault.TLS, f"the TLS certificate of relay {relay} is not trusted: "
                                              f"{e.verify_message or e.reason or e}{hint}")
    for e in chain:
        if isinstance(e, ssl.SSLError):
            return RelayFault(RelayFault.TLS, f"TLS with relay {relay} failed: {one_line(e.reason or e)}")
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError) or (
        isinstance(exc, aiosmtplib.SMTPResponseException) and exc.code in AUTH_CODES
    ):
        return RelayFault(RelayFault.AUTHENTICATION, f"relay {relay} refused the login as {config.username!r}: "
                                                     f"{exc.code} {one_line(exc.message)} (check NCPI_SMTP_USERNAME and NCPI_SMTP_PASSWORD)")
    text = str(exc)
    if isinstance(exc, aiosmtplib.SMTPException) and "AUTH" in text.upper() and "not supported" in text:
        return RelayFault(RelayFault.AUTHENTICATION, f"relay {relay} offers no login ({one_line(text)}): does it need STARTTLS first?")
    if isinstance(exc, aiosmtplib.SMTPException) and "STARTTLS" in text.upper():
        return RelayFault(RelayFault.TLS, f"relay {relay}: {one_line(text)}")
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return RelayFault(RelayFault.CONNECTION, f"relay {relay} refused the session: {exc.code} {one_line(exc.message)}")
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)) and not text:
        text = "timed out"
    return RelayFault(RelayFault.CONNECTION, f"cannot reach relay {relay}: {one_line(text or type(exc).__name__)}")


def _classify(exc: Exception, config: SmtpConfig) -> Exception:
    """A failure while sending one message over an open session."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        answers = "; ".join(f"{r.recipient}: {r.code} {r.message}" for r in exc.recipients)
        permanent = all(r.code >= 500 for r in exc.recipients)
        return PermanentDeliveryError(answers) if permanent else TransientDeliveryError(answers)
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        if exc.code in AUTH_CODES:
            return relay_fault(exc, config)  # "authentication required" at MAIL FROM: the relay, not the message
        answer = f"{exc.code} {exc.message}"
        return PermanentDeliveryError(answer) if exc.code >= 500 else TransientDeliveryError(answer)
    return TransientDeliveryError(f"{type(exc).__name__}: {exc}")


SMTP_ERRORS = (aiosmtplib.SMTPException, ConnectionError, OSError, asyncio.TimeoutError)


class Mailer:
    """Sends messages over one SMTP connection, opened on demand and kept for the next message.

    Concurrent senders share it in turn (a lock): a morning with hundreds of reminders is one
    connection, not hundreds. A sender may hold its turn past the relay's answer (`turn`) until it
    has recorded the outcome, so that at most its one message is accepted and not yet recorded. An idle connection is closed after `idle_seconds`. One Mailer per
    worker process: it holds the relay's state for the whole process (see the module's doc).
    """

    RECORD_AGAIN_SECONDS = 60.0
    """While the relay fails, its state is recorded again this often (so `ncpi health` sees it is current)."""

    def __init__(self, config: SmtpConfig):
        self.config = config
        self._client: aiosmtplib.SMTP | None = None
        self._lock = asyncio.Lock()
        self._last_sent = 0.0
        self._idle_closer: asyncio.TimerHandle | None = None
        self._tls_context: ssl.SSLContext | None = None
        self.connections_opened = 0
        self.fault: RelayFault | None = None
        """The relay-wide fault in force, if any."""
        self.state_since = datetime.now(timezone.utc)
        self._probed_at = 0.0
        self._unrecorded = True  # a process's first word about the relay is news too
        self._recorded_at = 0.0

    # -- the relay's state

    def relay_report(self) -> RelayReport | None:
        """The state to record now, or None when the recorded one is still current."""
        due = self.fault is not None and time.monotonic() - self._recorded_at >= self.RECORD_AGAIN_SECONDS
        if not (self._unrecorded or due):
            return None
        fault = self.fault
        return RelayReport(self.config.relay, "failing" if fault else "ok", fault.category if fault else None,
                           fault.reason if fault else None, self.state_since)

    def recorded(self, report: RelayReport) -> None:
        """`report` is in the database now."""
        current = self.fault
        if (report.state == "failing") == (current is not None) and (current is None or current.reason == report.reason):
            self._unrecorded = False
        self._recorded_at = time.monotonic()

    def _failing(self, fault: RelayFault) -> None:
        self._probed_at = time.monotonic()
        previous = self.fault
        self.fault = fault
        if previous is None or previous.category != fault.category:
            if previous is None:
                self.state_since = datetime.now(timezone.utc)
            log.error("SMTP relay fault (%s): %s. Every delivery is held and retried until it is fixed; "
                      "nothing is marked failed for it.", fault.category, fault.reason)
        if previous is None or previous.reason != fault.reason:
            self._unrecorded = True

    def _working(self) -> None:
        if self.fault is not None:
            log.warning("SMTP relay %s accepts messages again (after %s since %s): held deliveries go out.",
                        self.config.relay, self.fault.category, self.state_since.isoformat(timespec="seconds"))
            self.fault = None
            self.state_since = datetime.now(timezone.utc)
            self._unrecorded = True

    def _hold_if_failing(self) -> None:
        fault = self.fault
        if fault is not None and time.monotonic() - self._probed_at < self.config.fault_probe_seconds:
            raise RelayFault(fault.category, fault.reason)

    # -- the connection

    def tls_context(self) -> ssl.SSLContext | None:
        """The relay's trust: NCPI_SMTP_CA_FILE's CAs when set (for this connection only: the rest of
        the process keeps its trust store), aiosmtplib's default (the system's) otherwise."""
        if self.config.ca_file and self._tls_context is None:
            try:
                self._tls_context = ssl.create_default_context(cafile=self.config.ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise RelayFault(RelayFault.TLS, f"cannot load NCPI_SMTP_CA_FILE {self.config.ca_file}: {one_line(exc)}") from None
        return self._tls_context

    async def _connection(self) -> aiosmtplib.SMTP:
        if self._client is not None and self._client.is_connected:
            return self._client
        c = self.config
        client = aiosmtplib.SMTP(
            hostname=c.host, port=c.port, timeout=c.timeout, use_tls=c.tls, start_tls=c.starttls if not c.tls else False,
            username=c.username, password=c.password, tls_context=self.tls_context(),
        )
        try:
            await client.connect()
        except SMTP_ERRORS as exc:
            client.close()
            raise relay_fault(exc, c) from None
        self.connections_opened += 1
        self._client = client
        return client

    async def send(self, message: EmailMessage, *, not_after: float | None = None) -> None:
        """Send one message; raises PermanentDeliveryError or TransientDeliveryError (RelayFault among them)."""
        await self._send(lambda client: client.send_message(message), not_after)

    async def send_bytes(self, data: bytes, sender: str, recipients: list[str], *, not_after: float | None = None,
                         turn: "SmtpTurn | None" = None) -> None:
        """Send a message exactly as these bytes (see `flatten`), to these envelope recipients.

        `not_after` (time.monotonic()): give up, transiently, if the connection only becomes free
        later than that (the caller's lease on the message would have run out). With `turn` (see
        `turn`), on the connection the caller already holds, which it keeps afterwards."""
        transmit = lambda client: client.sendmail(sender, recipients, data)  # noqa: E731
        if turn is not None:
            turn.check(self)
            await self._transmit(transmit)
            return
        await self._send(transmit, not_after)

    async def turn(self, *, not_after: float | None = None) -> "SmtpTurn":
        """The connection, for this caller alone until it calls `release()`.

        A sender that must make the outcome of its message durable (marked sent in the database)
        before the connection carries another message holds its turn until it has: a worker killed
        at any moment then leaves at most the one message in flight on the connection accepted by
        the relay but not recorded. Waiting for the turn can be cancelled; `not_after` as in
        `send_bytes`."""
        await self._lock.acquire()
        if not_after is not None and time.monotonic() > not_after:
            self._lock.release()
            raise TransientDeliveryError("waited too long for the SMTP connection; it will be retried")
        return SmtpTurn(self)

    async def _send(self, transmit, not_after: float | None) -> None:
        turn = await self.turn(not_after=not_after)
        try:
            await self._transmit(transmit)
        finally:
            turn.release()

    async def _transmit(self, transmit) -> None:
        """One message over the connection; the caller holds the lock."""
        self._hold_if_failing()
        if self.config.rate_limit > 0:
            wait = self._last_sent + 1.0 / self.config.rate_limit - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        try:
            try:
                client = await self._connection()
            except RelayFault as fault:
                self._failing(fault)
                raise
            try:
                refused, _ = await transmit(client)
            except SMTP_ERRORS as exc:
                classified = _classify(exc, self.config)
                if isinstance(classified, RelayFault):
                    self._failing(classified)
                if isinstance(classified, TransientDeliveryError):
                    await self._drop()  # a broken connection is not reused
                else:
                    await self._reset()
                raise classified from None
        finally:
            self._last_sent = time.monotonic()
        self._working()
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


class SmtpTurn:
    """One sender's turn on the Mailer's connection (`Mailer.turn`): messages sent with it
    (`Mailer.send_bytes(..., turn=...)`) go over the shared connection, and no other sender's does
    until `release()`."""

    def __init__(self, mailer: Mailer):
        self._mailer = mailer
        self._held = True

    def check(self, mailer: Mailer) -> None:
        if mailer is not self._mailer or not self._held:
            raise RuntimeError("this turn on the SMTP connection is not held (released, or another Mailer's)")

    def release(self) -> None:
        if self._held:
            self._held = False
            self._mailer._lock.release()


def _cte(text: str) -> str | None:
    """7bit for short ASCII lines (the email package's choice), quoted-printable for anything else,
    never 8bit (the stored bytes must suit every relay) nor base64 (spam filters frown on it)."""
    if text.isascii() and max((len(line) for line in text.splitlines()), default=0) <= 78:
        return None
    return "quoted-printable"


def build_message(
    *, mail_from: str, reply_to: str | None, to: list[str], subject: str, text: str, html: str, message_id: str,
    reference: str, date: datetime | None = None,
) -> EmailMessage:
    message = EmailMessage()
    message["From"] = formataddr(("HMICFRS inspection follow-up", mail_from))
    message["To"] = ", ".join(to)
    if reply_to:
        message["Reply-To"] = reply_to
    message["Subject"] = subject
    # RFC 5322: when the message was ready to send. A message is rendered once, at its first delivery
    # attempt, and every retry or resend sends those same bytes, this Date with them.
    message["Date"] = format_datetime(date or datetime.now(timezone.utc))
    message["Message-ID"] = message_id
    message["X-NCPI-Reference"] = reference
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no auto-replies to automated mail
    message.set_content(text, cte=_cte(text))
    message.add_alternative(html, subtype="html", cte=_cte(html))
    return message


def flatten(message: EmailMessage) -> bytes:
    """The message as it goes on the wire (CRLF, 7-bit), and as it is kept with its outbox row."""
    return message.as_bytes(policy=WIRE_POLICY)


def message_recipients(data: bytes) -> list[str]:
    """The addresses of the To header of a flattened message."""
    header = message_from_bytes(data, policy=email.policy.SMTP).get_all("To", [])
    return [address for _, address in getaddresses([str(h) for h in header])]


def with_recipients(data: bytes, to: list[str]) -> bytes:
    """The same bytes with only the To header replaced (a resend to the contacts' corrected
    addresses): the body, the Date and the Message-ID stay as they were first sent."""
    end = data.find(b"\r\n\r\n")
    head, body = (data[: end + 2], data[end + 2:]) if end >= 0 else (data, b"")
    lines = head.split(b"\r\n")
    out, skipping = [], False
    for line in lines:
        if line[:1] in (b" ", b"\t") and skipping:
            continue  # a folded continuation of the old To
        skipping = line.lower().startswith(b"to:")
        if skipping:
            out.append(WIRE_POLICY.fold_binary("To", ", ".join(to)).rstrip(b"\r\n"))
        else:
            out.append(line)
    return b"\r\n".join(out) + body
