"""`ncpi inbound imap`: polls an IMAP mailbox (aioimaplib) and records the replies found there.

For production, where the reply address is a mailbox on the organisation's mail service. Every
NCPI_IMAP_POLL_SECONDS it logs in to NCPI_IMAP_HOST (implicit TLS on 993 by default; the server's
certificate is always verified, against NCPI_IMAP_CA_FILE when given, else the system's trust
store, like the SMTP side), selects NCPI_IMAP_MAILBOX, and reads each unseen message without
marking it (BODY.PEEK). A message processed (recorded, triaged, automatic or already received) is
then flagged \\Seen and, with NCPI_IMAP_PROCESSED_MAILBOX, moved there (created if missing). A
message that could not be processed now (Temporal or the database away) is left unseen and read
again at the next poll. Idempotent by Message-ID: a message seen twice (flags reset, copied back,
received by SMTP as well) is recorded once.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from dataclasses import dataclass

from ncpi_workflow.errors import UserError
from ncpi_workflow.inbound.processing import Receiver, TryLater

log = logging.getLogger("ncpi.inbound")



@dataclass(frozen=True)
class PollResult:
    seen: int = 0
    processed: int = 0
    deferred: int = 0


def tls_context(settings) -> ssl.SSLContext:
    if settings.imap_ca_file is not None:
        try:
            return ssl.create_default_context(cafile=str(settings.imap_ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise UserError(f"NCPI_IMAP_CA_FILE {settings.imap_ca_file}: cannot be read as PEM certificates ({exc})") from None
    return ssl.create_default_context()


def _check(response, what: str) -> None:
    if response.result != "OK":
        text = b" ".join(line for line in response.lines if isinstance(line, (bytes, bytearray))).decode("utf-8", "replace")
        raise UserError(f"IMAP {what} refused: {response.result} {' '.join(text.split())[:200]}")


async def connect(settings):
    import aioimaplib

    if not settings.imap_host:
        raise UserError("NCPI_IMAP_HOST is not set: name the IMAP server of the reply mailbox")
    if not settings.imap_username or settings.imap_password is None:
        raise UserError("NCPI_IMAP_USERNAME and NCPI_IMAP_PASSWORD must be set for the reply mailbox")
    port = settings.imap_port or (993 if settings.imap_tls else 143)
    where = f"{settings.imap_host}:{port}"
    if settings.imap_tls:
        client = aioimaplib.IMAP4_SSL(settings.imap_host, port, timeout=settings.imap_timeout, ssl_context=tls_context(settings))
    else:
        client = aioimaplib.IMAP4(settings.imap_host, port, timeout=settings.imap_timeout)
    try:
        await asyncio.wait_for(client.wait_hello_from_server(), settings.imap_timeout)
    except ssl.SSLError as exc:
        raise UserError(f"IMAP {where}: TLS failed ({exc.reason or exc}); check NCPI_IMAP_CA_FILE") from None
    except (OSError, asyncio.TimeoutError) as exc:
        raise UserError(f"IMAP {where}: cannot connect ({exc or 'timed out'})") from None
    response = await client.login(settings.imap_username, settings.imap_password)
    if response.result != "OK":
        raise UserError(f"IMAP {where} refused the login as {settings.imap_username!r} "
                        "(check NCPI_IMAP_USERNAME and NCPI_IMAP_PASSWORD)")
    return client


_SIZE = re.compile(rb"RFC822\.SIZE (\d+)")


def _size(lines) -> int | None:
    for line in lines:
        if isinstance(line, (bytes, bytearray)):
            found = _SIZE.search(bytes(line))
            if found:
                return int(found.group(1))
    return None


def _message_bytes(lines) -> bytes | None:
    for line in lines:
        if isinstance(line, bytearray):
            return bytes(line)
    return None


async def poll_once(settings, receiver: Receiver, client=None) -> PollResult:
    """One pass over the mailbox's unseen messages."""
    own = client is None
    client = client or await connect(settings)
    seen = processed = deferred = 0
    try:
        _check(await client.select(settings.imap_mailbox), f"SELECT {settings.imap_mailbox}")
        response = await client.uid_search("UNSEEN", charset=None)
        _check(response, "SEARCH UNSEEN")
        uids = [uid for line in response.lines[:1] for uid in bytes(line).split() if uid.isdigit()]
        moved = []
        for uid in uids:
            uid_text = uid.decode()
            sized = await client.uid("fetch", uid_text, "(RFC822.SIZE)")
            _check(sized, f"FETCH {uid_text} size")
            size = _size(sized.lines)
            oversized = size is not None and size > settings.inbound_max_bytes
            part = "BODY.PEEK[HEADER]" if oversized else "BODY.PEEK[]"
            fetched = await client.uid("fetch", uid_text, f"({part})")
            _check(fetched, f"FETCH {uid_text}")
            data = _message_bytes(fetched.lines)
            if data is None:
                continue
            seen += 1
            try:
                if oversized:
                    await receiver.receive_oversized(data, size, channel="imap")
                else:
                    await receiver.receive(data, channel="imap")
            except TryLater as exc:
                log.warning("inbound imap: message UID %s deferred to the next poll: %s", uid_text, exc)
                deferred += 1
                continue
            except Exception:  # noqa: BLE001 - one bad message must not stop the others
                log.exception("inbound imap: message UID %s deferred to the next poll after an unexpected error", uid_text)
                deferred += 1
                continue
            processed += 1
            _check(await client.uid("store", uid_text, "+FLAGS", r"(\Seen)"), f"STORE {uid_text}")
            moved.append(uid_text)
        if moved and settings.imap_processed_mailbox:
            await _move(client, ",".join(moved), settings.imap_processed_mailbox)
    finally:
        if own:
            try:
                await client.logout()
            except Exception:  # noqa: BLE001 - a connection already gone
                pass
    return PollResult(seen, processed, deferred)


async def _move(client, uid_set: str, mailbox: str) -> None:
    await client.create(mailbox)  # "already exists" is fine
    if client.has_capability("MOVE"):
        _check(await client.uid("move", uid_set, mailbox), f"MOVE to {mailbox}")
        return
    _check(await client.uid("copy", uid_set, mailbox), f"COPY to {mailbox}")
    _check(await client.uid("store", uid_set, "+FLAGS", r"(\Deleted)"), "STORE \\Deleted")
    _check(await client.expunge(), "EXPUNGE")


async def serve(settings, stop: asyncio.Event | None = None, *, once: bool = False) -> PollResult | None:
    """`ncpi inbound imap`: poll until `stop` is set (or once). A failing poll is logged and retried."""
    from ncpi_workflow import db
    from ncpi_workflow.app.temporal_calls import connect as temporal_connect

    stop = stop or asyncio.Event()
    client = await temporal_connect(settings)
    async with db.open_database(settings.database_url) as sessions:
        receiver = Receiver(settings, sessions, client)
        if once:
            return await poll_once(settings, receiver)
        while not stop.is_set():
            try:
                result = await poll_once(settings, receiver)
                if result.seen:
                    log.info("inbound imap: %d message(s), %d processed, %d deferred", result.seen, result.processed, result.deferred)
            except UserError as exc:
                log.error("inbound imap: %s; trying again in %g s", exc, settings.imap_poll_seconds)
            except (OSError, asyncio.TimeoutError) as exc:
                log.error("inbound imap: connection failed (%s); trying again in %g s", exc, settings.imap_poll_seconds)
            except Exception:  # noqa: BLE001 - the poller keeps polling
                log.exception("inbound imap: the poll failed; trying again in %g s", settings.imap_poll_seconds)
            try:
                await asyncio.wait_for(stop.wait(), settings.imap_poll_seconds)
            except asyncio.TimeoutError:
                pass
    return None
