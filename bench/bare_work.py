"""The same-work baselines' activities: the I/O our workflows do, done by plain SQL and a plain SMTP
client, with none of our code (no models, no store, no rendering, no Mailer).

- `bare_write` (a local activity, like our `record_event`): ONE transaction that writes an event's
  rows: `rows` record and audit rows (alternately in `bare_record` and `bare_audit`), the event's
  outbox rows (each with its message's bytes, already built, as ours carries the message rendered
  when recorded) and the workflow's projection row (newer versions only); idempotent by its keys
  (INSERT ... ON CONFLICT DO NOTHING), so a retried call adds nothing. Returns the outbox rows' ids.
- `bare_deliver` (an activity, like our `deliver_notification`): leases the outbox row and reads its
  bytes in one statement, sends them over one reused SMTP connection (aiosmtplib, as ours), marks it sent.
- `bare_decide` (a local activity for the same-work Update): a decision's rows in one transaction:
  the decision record and its audit row, the register entry and its audit row, the decision email's
  outbox row and its audit row, and the projection.

Kept apart from bench/bare.py so the workflow sandbox never imports SQLAlchemy or aiosmtplib.
"""

from __future__ import annotations

import asyncio
import os
import socket
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from temporalio import activity

SENDER = "bare@bench.invalid"
RECIPIENT = "force@bench.invalid"
# About the size of one of our rendered messages (a plain and an HTML part): the bytes stored and sent.
BODY = "\r\n".join(["Recommendation R1 of the inspection of the force: a follow-up notice from the bench."] * 24)


@dataclass
class BareWrite:
    """One event's writes: `key` makes them idempotent (the workflow ID and the event's place in it)."""

    key: str
    workflow_id: str
    rows: int = 2  # record and audit rows
    emails: int = 0  # outbox rows
    version: int = 1  # the projection's version (a newer one only overwrites an older one)
    phase: str = ""  # the projection's phase: what the driver polls for


@dataclass
class BareWritten:
    outbox_ids: list[int] = field(default_factory=list)


def message_bytes(key: str) -> bytes:
    """A message as our outbox row holds it once rendered: headers, a plain part, an HTML part."""
    boundary = "=-bare-bench-boundary"
    return (
        f"From: {SENDER}\r\nTo: {RECIPIENT}\r\nSubject: Follow-up notice {key}\r\nMessage-ID: <{key}@bench.invalid>\r\n"
        f"MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=\"{boundary}\"\r\n\r\n"
        f"--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{BODY}\r\n"
        f"--{boundary}\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<html><body>\r\n<p>{BODY}</p>\r\n</body></html>\r\n"
        f"--{boundary}--\r\n"
    ).encode()


def _now() -> datetime:
    return datetime.now(timezone.utc)


def schema(dialect: str) -> list[str]:
    identity = "BIGSERIAL PRIMARY KEY" if dialect == "postgresql" else "INTEGER PRIMARY KEY AUTOINCREMENT"
    stamp = "TIMESTAMPTZ" if dialect == "postgresql" else "TIMESTAMP"
    blob = "BYTEA" if dialect == "postgresql" else "BLOB"
    return [
        f"CREATE TABLE IF NOT EXISTS bare_record (id {identity}, key TEXT NOT NULL UNIQUE, workflow_id TEXT NOT NULL, "
        f"kind TEXT NOT NULL, detail TEXT, at {stamp} NOT NULL)",
        f"CREATE TABLE IF NOT EXISTS bare_audit (id {identity}, key TEXT NOT NULL UNIQUE, entity_id TEXT NOT NULL, "
        f"action TEXT NOT NULL, detail TEXT, at {stamp} NOT NULL)",
        "CREATE INDEX IF NOT EXISTS bare_audit_entity ON bare_audit (entity_id)",
        f"CREATE TABLE IF NOT EXISTS bare_outbox (id {identity}, key TEXT NOT NULL UNIQUE, workflow_id TEXT NOT NULL, "
        f"recipient TEXT NOT NULL, subject TEXT NOT NULL, data {blob} NOT NULL, status TEXT NOT NULL, "
        f"lease_owner TEXT, lease_until {stamp}, sent_at {stamp}, scheduled_for {stamp} NOT NULL)",
        f"CREATE TABLE IF NOT EXISTS bare_projection (workflow_id TEXT PRIMARY KEY, version INTEGER NOT NULL, "
        f"phase TEXT NOT NULL, updated_at {stamp} NOT NULL)",
        "CREATE INDEX IF NOT EXISTS bare_projection_phase ON bare_projection (phase)",
    ]


def create_engine(url: str):
    """SQLAlchemy's async engine with its defaults, and on SQLite the pragmas any WAL writer sets
    (as ours: WAL, a busy timeout so that writers queue for the one write lock)."""
    from sqlalchemy import event
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(url)
    if engine.dialect.name == "sqlite":
        def pragmas(dbapi_connection, _record) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        event.listen(engine.sync_engine, "connect", pragmas)
    return engine


async def create_schema(url: str) -> None:
    from sqlalchemy import text

    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            for statement in schema(engine.dialect.name):
                await conn.execute(text(statement))
    finally:
        await engine.dispose()


async def count_rows(url: str) -> dict:
    """What the same-work baseline wrote: rows per table, and outbox rows by status."""
    from sqlalchemy import text

    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            counts = {t: await conn.scalar(text(f"SELECT count(*) FROM {t}"))
                      for t in ("bare_record", "bare_audit", "bare_outbox", "bare_projection")}
            counts["bare_outbox_sent"] = await conn.scalar(text("SELECT count(*) FROM bare_outbox WHERE status = 'sent'"))
    finally:
        await engine.dispose()
    return counts


INSERT_RECORD = ("INSERT INTO bare_record (key, workflow_id, kind, detail, at) VALUES (:key, :wf, :kind, :detail, :at) "
                 "ON CONFLICT (key) DO NOTHING")
INSERT_AUDIT = ("INSERT INTO bare_audit (key, entity_id, action, detail, at) VALUES (:key, :wf, :kind, :detail, :at) "
                "ON CONFLICT (key) DO NOTHING")
INSERT_OUTBOX = ("INSERT INTO bare_outbox (key, workflow_id, recipient, subject, data, status, scheduled_for) "
                 "VALUES (:key, :wf, :to, :subject, :data, 'pending', :at) ON CONFLICT (key) DO NOTHING")
OUTBOX_ID = "SELECT id FROM bare_outbox WHERE key = :key"
PROJECT = ("INSERT INTO bare_projection (workflow_id, version, phase, updated_at) VALUES (:wf, :version, :phase, :at) "
           "ON CONFLICT (workflow_id) DO UPDATE SET version = excluded.version, phase = excluded.phase, "
           "updated_at = excluded.updated_at WHERE bare_projection.version < excluded.version")
LEASE = ("UPDATE bare_outbox SET lease_owner = :owner, lease_until = :until WHERE id = :id AND status = 'pending' "
         "AND (lease_until IS NULL OR lease_until < :now OR lease_owner = :owner) RETURNING recipient, data")
MARK_SENT = ("UPDATE bare_outbox SET status = 'sent', sent_at = :now, lease_owner = NULL, lease_until = NULL "
             "WHERE id = :id AND status != 'sent'")
STATUS = "SELECT status FROM bare_outbox WHERE id = :id"


class BareWork:
    """The same-work activities on one engine and one reused SMTP connection."""

    def __init__(self, database_url: str, smtp_port: int | None, smtp_host: str = "127.0.0.1"):
        self.engine = create_engine(database_url)
        self.smtp_host, self.smtp_port = smtp_host, smtp_port
        self._smtp = None
        self._smtp_lock = asyncio.Lock()
        self.owner = f"{socket.gethostname()}:{os.getpid()}"

    def all(self) -> list:
        return [self.bare_write, self.bare_decide, self.bare_deliver]

    async def close(self) -> None:
        if self._smtp is not None:
            try:
                await self._smtp.quit()
            except Exception:  # noqa: BLE001 - closing at exit
                pass
        await self.engine.dispose()

    async def _write(self, conn, write: BareWrite, kinds: list[str]) -> list[int]:
        from sqlalchemy import text

        at = _now()
        for n in range(write.rows):
            kind = kinds[n // 2 % len(kinds)]
            statement = INSERT_RECORD if n % 2 == 0 else INSERT_AUDIT
            await conn.execute(text(statement), {"key": f"{write.key}/{n}", "wf": write.workflow_id, "kind": kind,
                                                 "detail": f'{{"event": "{write.key}", "part": {n}}}', "at": at})
        ids = []
        for n in range(write.emails):
            key = f"{write.key}/email-{n}"
            await conn.execute(text(INSERT_OUTBOX), {"key": key, "wf": write.workflow_id, "to": RECIPIENT,
                                                     "subject": f"Follow-up notice {key}", "data": message_bytes(key), "at": at})
            # The email's audit row, as ours writes one for each notification it puts in the outbox.
            await conn.execute(text(INSERT_AUDIT), {"key": f"{key}/audit", "wf": write.workflow_id, "kind": "notification",
                                                    "detail": f'{{"to": "{RECIPIENT}"}}', "at": at})
            ids.append(await conn.scalar(text(OUTBOX_ID), {"key": key}))
        if write.phase:
            await conn.execute(text(PROJECT), {"wf": write.workflow_id, "version": write.version, "phase": write.phase, "at": at})
        return ids

    @activity.defn(name="bare_write")
    async def bare_write(self, write: BareWrite) -> BareWritten:
        async with self.engine.begin() as conn:
            return BareWritten(await self._write(conn, write, ["event"]))

    @activity.defn(name="bare_decide")
    async def bare_decide(self, write: BareWrite) -> BareWritten:
        """A decision's rows: the decision and the register entry (each with its audit row), its email's
        outbox row (and audit row), the projection; one transaction."""
        async with self.engine.begin() as conn:
            return BareWritten(await self._write(conn, write, ["decision", "register"]))

    async def _connection(self):
        import aiosmtplib

        if self._smtp is None or not self._smtp.is_connected:
            self._smtp = aiosmtplib.SMTP(hostname=self.smtp_host, port=self.smtp_port, start_tls=False, use_tls=False)
            await self._smtp.connect()
        return self._smtp

    @activity.defn(name="bare_deliver")
    async def bare_deliver(self, outbox_id: int) -> str:
        from sqlalchemy import text

        now = _now()
        async with self.engine.begin() as conn:
            leased = (await conn.execute(text(LEASE), {"owner": self.owner, "until": now + timedelta(minutes=5),
                                                       "now": now, "id": outbox_id})).first()
            if leased is None:
                return await conn.scalar(text(STATUS), {"id": outbox_id})  # sent already
        recipient, data = leased
        async with self._smtp_lock:  # one connection, one message at a time on it
            try:
                await (await self._connection()).sendmail(SENDER, [recipient], bytes(data))
            except Exception:
                self._smtp = None  # a fresh connection on the retry
                raise
        async with self.engine.begin() as conn:
            await conn.execute(text(MARK_SENT), {"now": _now(), "id": outbox_id})
        return "sent"
