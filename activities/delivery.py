"""Delivering the outbox by email, exactly once in effect.

`deliver_notification` sends a recorded notification unless it was already sent, and marks it
sent. Transient failures raise, and Temporal retries them with backoff for as long as it takes;
a permanent refusal is recorded as failed with the server's answer and the inspectors are told.

- **Rendered once, as the event is recorded.** The recording activity renders the message and
  stores its exact bytes (RFC 5322, CRLF, 7-bit) with the outbox row, its Message-ID and its access
  links, in the event's transaction (activities/rendering.py: it keeps them only if they are what
  this activity would render from the committed rows). The delivery's hot path then only leases
  the row and reads those bytes in one statement, sends, and marks sent (`_send_rendered`): no
  context read, no templates, no MIME. A row stored unrendered (recorded by an older worker, before
  this change, or one the recording could not render: a template error) is rendered by the first
  delivery attempt as before, in the transaction that counts the attempt, before anything is sent.
  Every retry and every `ncpi outbox resend` sends the stored bytes under the same Message-ID (a
  resend to corrected addresses changes the To header only).
- **One deliverer at a time.** A row is leased (`lease_owner`, `lease_until`) for the attempt that
  sends it: the workflow's delivery and the reconciler's, or two retries on two workers, never
  send it at once. Deliveries that start together in one worker are leased together, each row for
  its own attempt, by one `UPDATE ... RETURNING` of up to `LEASE_BATCH` rows (`_LeaseBatcher`),
  built once as a Core statement and run on a connection held for the burst; on SQLite without an
  fsync of its own (why that is safe: `_LeaseBatcher`). A burst of N rendered messages is so 1 + N
  statements (`tests/test_prerendered_delivery.py` counts them), where it was 2N transactions.
- **Marked sent at once.** As soon as the server accepts, the outcome goes into the activity's
  heartbeat details (kept by Temporal) and the row is marked sent by one statement in autocommit
  (its own transaction, durable: on SQLite it keeps the fsync), on a connection held for the burst
  (`_HeldConnection`; on PostgreSQL from a pool of its own: no pool to queue in). If the database cannot take it, the attempt
  keeps trying for `mark_sent_patience` and then fails; its retry finds the outcome in the
  heartbeat details and records it, sending nothing again.
- **One message at risk per connection.** The attempt keeps its turn on the worker's SMTP
  connection (`Mailer.turn`) from the send until the row is marked sent (or the refusal recorded):
  the connection carries no other message while one is accepted and not yet durable.
- **Heartbeats.** Under the workflow's heartbeat timeout (20 s; none in histories from before it),
  the attempt heartbeats every 5 s while it waits for the connection, sends and records, with the
  outcome as its details once it has one: a killed worker's deliveries are retried after the
  heartbeat timeout, not the 2-minute start-to-close timeout.
- **Relay faults hold.** A relay-wide failure (`RelayFault`: login refused, TLS, unreachable) is
  never a failure of the message: the row stays pending with the reason as its last error, the
  activity fails retryably (one line, no traceback), and the relay's state is recorded in
  `relay_status` for `ncpi health`.

The one window no design closes: the server accepts the message and the worker dies before the
outcome is durable (the mark-sent commit; with the database away, the heartbeat reaching Temporal).
The retried activity then sends again, byte for byte the same, with the same Message-ID (derived
from the notification's idempotency key), so the repeat is recognisable as the same message: at
most one per open SMTP connection per crash, the message in flight on it.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from email.utils import getaddresses
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import Integer, String, bindparam, case, or_, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker
from temporalio import activity
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

from ncpi_workflow.access_links import LinkPlan, LinkSettings, fill_link_tokens, plan_links
from ncpi_workflow.emails import EmailContext, EmailTemplateError, render_email
from ncpi_workflow.mailer import (
    Mailer,
    PermanentDeliveryError,
    RelayFault,
    SmtpTurn,
    TransientDeliveryError,
    build_message,
    flatten,
    message_id_for,
    message_recipients,
    one_line,
    with_recipients,
)
from ncpi_workflow.email_context import email_context
from ncpi_workflow.models import Notification, RelayStatus, utcnow
from ncpi_workflow.store import append_audit, insert_if_absent

log = logging.getLogger("ncpi.delivery")


def default_reporter() -> str:
    """hostname:pid: this worker process, in `relay_status`."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class DeliverySettings:
    mail_from: str
    reply_to: str | None
    inspectors_email: str
    templates_dir: Path | None
    mark_sent_patience: float = 20.0
    """Seconds one attempt keeps trying to record "sent" when the database does not answer."""
    lease_seconds: float = 300.0
    """How long one attempt may hold a row it is sending (it gives up sending past most of it)."""
    relay_retry_seconds: float = 60.0
    """While the relay fails as a whole, a held delivery is tried again this often (not on the growing
    backoff of other failures), so that it goes out within about a minute of the fix."""
    reporter: str = field(default_factory=default_reporter)
    links: LinkSettings | None = None
    """Access links (ncpi_workflow/access_links.py): every force-facing email gets a portal link and a
    plus-addressed Reply-To, issued with its rendering; the tokens go in only as it is sent. None: no links."""


SENT, FAILED, PENDING = "sent", "failed", "pending"

HELD = "DeliveryHeld"
"""The ApplicationError type of a delivery that did not go now and is retried: a relay fault, a
transient refusal, another deliverer holding the row, the database away."""


def _held(message: str, *, retry_in: float | None = None) -> ApplicationError:
    # BENIGN: the SDK logs it at DEBUG, not a traceback per message per retry; we log one line.
    return ApplicationError(
        message, type=HELD, category=ApplicationErrorCategory.BENIGN,
        next_retry_delay=timedelta(seconds=retry_in) if retry_in else None,
    )


def _sent_before(notification_id: int) -> dict[str, Any] | None:
    """The outcome an earlier attempt of this activity kept in its heartbeat: sent, not yet recorded."""
    if not activity.in_activity():
        return None
    for details in activity.info().heartbeat_details or ():
        if isinstance(details, dict) and details.get("notification_id") == notification_id and details.get("message_id"):
            return details
    return None


HEARTBEAT_EVERY = 5.0
"""Seconds between an attempt's heartbeats (at most; a quarter of the heartbeat timeout if that is shorter)."""


class _Heartbeat:
    """The attempt's heartbeat, every few seconds for as long as it runs (waiting for its turn on the
    SMTP connection, sending, recording), so a killed worker's deliveries are retried elsewhere
    after the heartbeat timeout and not the whole start-to-close timeout. Its details are always
    the latest outcome (an earlier attempt's, carried over, until this one has its own): a beat
    never erases "accepted, not yet recorded". Without a heartbeat timeout (a workflow that
    scheduled the activity before it had one) it only sends the outcome, as before."""

    def __init__(self) -> None:
        self.details: list[Any] = []
        self._task: asyncio.Task | None = None
        if not activity.in_activity():
            return
        info = activity.info()
        self.details = list(info.heartbeat_details or ())
        if info.heartbeat_timeout:
            every = min(HEARTBEAT_EVERY, max(0.2, info.heartbeat_timeout.total_seconds() / 4))
            self._task = asyncio.create_task(self._beat(every))

    async def _beat(self, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            activity.heartbeat(*self.details)

    def outcome(self, outcome: dict[str, Any]) -> None:
        """The server accepted the message: into the details at once (Temporal keeps them; the SDK
        sends them at once, or at the end of its throttle interval, and before the attempt ends)."""
        self.details = [outcome]
        if activity.in_activity():
            activity.heartbeat(outcome)

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()


_beats: contextvars.ContextVar[_Heartbeat | None] = contextvars.ContextVar("ncpi_delivery_heartbeat", default=None)


def _attempt_deadline(margin: float) -> float | None:
    """time.monotonic() by which this attempt must have started sending: `margin` seconds before its
    start-to-close timeout, so that a retry (which holds the same lease) never sends it alongside."""
    if not activity.in_activity():
        return None
    info = activity.info()
    if not info.start_to_close_timeout or info.started_time is None:
        return None
    started = info.started_time if info.started_time.tzinfo else info.started_time.replace(tzinfo=timezone.utc)
    left = (started + info.start_to_close_timeout - datetime.now(timezone.utc)).total_seconds()
    return time.monotonic() + left - margin


async def _unless_started(sent: asyncio.Future):
    """The outcome of a send under way. A cancellation (the attempt's timeout, the worker stopping)
    does not cut it short: the message may be on the wire, so it finishes and is recorded first, and
    this attempt ends with what it did; a retry never overlaps it."""
    try:
        return await asyncio.shield(sent)
    except asyncio.CancelledError:
        await asyncio.wait([sent])
        if sent.cancelled():
            raise
        return sent.result()


_NO_SYNC = {"synchronize_session": False}
"""For an UPDATE in a session that holds no objects: nothing to bring up to date in Python."""


_NOTIFICATIONS = Notification.__table__

LEASE_BATCH = 64
"""At most this many rows leased by one statement (`_LeaseBatcher`): deliveries that start together
(a morning's burst) are leased together, one `UPDATE ... RETURNING` for up to this many."""


def _lease_statement(size: int):
    """The lease of `size` rendered, pending rows, each for its own deliverer (a CASE on the id), in one
    statement that returns what the send needs. Built once per size: SQLAlchemy's compiled cache then
    serves every execution, and no ORM is involved."""
    t = _NOTIFICATIONS
    ids = [bindparam(f"id_{j}", type_=Integer) for j in range(size)]
    owners = [bindparam(f"owner_{j}", type_=String) for j in range(size)]
    owner = owners[0] if size == 1 else case(*[(t.c.id == i, o) for i, o in zip(ids, owners)])
    now = bindparam("now_", type_=t.c.last_attempt_at.type)
    return (
        update(t)
        .where(t.c.id.in_(ids), t.c.status == PENDING, t.c.rendered.is_not(None),
               or_(t.c.lease_until.is_(None), t.c.lease_until < now, t.c.lease_owner == owner))
        .values(lease_owner=owner, lease_until=bindparam("until_", type_=t.c.lease_until.type),
                attempts=t.c.attempts + 1, last_attempt_at=now)
        .returning(t.c.id, t.c.rendered, t.c.recipients, t.c.message_id, t.c.idempotency_key)
    )


_LEASE_STATEMENTS: dict[int, Any] = {}


def _lease_statement_for(size: int):
    statement = _LEASE_STATEMENTS.get(size)
    if statement is None:
        statement = _LEASE_STATEMENTS[size] = _lease_statement(size)
    return statement


_MARK_SENT = (
    update(_NOTIFICATIONS)
    .where(_NOTIFICATIONS.c.id == bindparam("id_", type_=Integer), _NOTIFICATIONS.c.status != SENT)
    .values(status=SENT, sent_at=bindparam("sent_at_", type_=_NOTIFICATIONS.c.sent_at.type),
            message_id=bindparam("message_id_", type_=String), last_error=None, lease_owner=None, lease_until=None)
)
"""Marking one row sent: one statement, built once, run in autocommit (a single statement is atomic by
itself: no BEGIN and COMMIT round trips)."""


class _HeldConnection:
    """A database connection held for a burst of deliveries (from the first statement until no delivery
    of this process is in flight), in autocommit: each statement is its own transaction, with no pool
    checkout, BEGIN or COMMIT round trip per message. Statements on it run one at a time (`lock`; on
    SQLite the lease's and the mark's connections share one lock, so that they never wait for each
    other in SQLite's busy handler, which sleeps). A statement that fails drops the connection
    (invalidated: a database restart leaves it dead); the next one connects again through the session
    factory.

    `relaxed_sqlite`: on SQLite, this connection commits with `PRAGMA synchronous=NORMAL` (no fsync of
    the WAL per commit; restored when the connection goes back to the pool). See `_LeaseBatcher`."""

    def __init__(self, factory, lock: asyncio.Lock, *, relaxed_sqlite: bool = False):
        self._factory = factory  # a callable: the tests swap the activities' session factories
        self.lock = lock
        self._relaxed = relaxed_sqlite
        self._session: AsyncSession | None = None
        self._connection: AsyncConnection | None = None
        self._restore: Any = None

    async def _connect(self) -> AsyncConnection:
        if self._connection is None:
            session = self._factory()()
            try:
                connection = await session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
                if self._relaxed and connection.dialect.name == "sqlite":
                    self._restore = (await connection.exec_driver_sql("PRAGMA synchronous")).scalar()
                    await connection.exec_driver_sql("PRAGMA synchronous=NORMAL")
            except BaseException:
                await session.invalidate()
                raise
            self._session, self._connection = session, connection
        return self._connection

    async def execute(self, statement, parameters: dict[str, Any]):
        """Run one statement; its rows (RETURNING) as a list, else its rowcount."""
        async with self.lock:
            try:
                connection = await self._connect()
                result = await connection.execute(statement, parameters)
                return result.all() if result.returns_rows else result.rowcount
            except BaseException as exc:
                await self._drop(invalidate=not isinstance(exc, asyncio.CancelledError))
                raise

    async def _drop(self, *, invalidate: bool) -> None:
        session, self._session, self._connection = self._session, None, None
        if session is None:
            return
        try:
            if invalidate:
                await session.invalidate()
            else:
                await session.close()
        except Exception:
            pass  # a dead connection: nothing to give back

    async def release(self) -> None:
        """Back to the pool (the burst is over), its synchronous setting restored."""
        async with self.lock:
            if self._connection is not None and self._restore is not None:
                try:
                    await self._connection.exec_driver_sql(f"PRAGMA synchronous={int(self._restore)}")
                except Exception:
                    await self._drop(invalidate=True)
                    return
            await self._drop(invalidate=False)


class _LeaseBatcher:
    """Leases for the hot path, batched: deliveries that ask while a lease statement is in flight (or
    in the same turn of the event loop) are leased together by the next one, up to `LEASE_BATCH` rows
    in one `UPDATE ... RETURNING` on the burst's held connection. A lone delivery waits for no one: its
    statement starts at once.

    On SQLite that connection commits without fsync (`synchronous=NORMAL`, WAL): safe because a lease
    only ever keeps a second deliverer away. A commit not yet on disk survives the worker's crash (it is
    in the WAL, in the operating system's cache); only an OS crash or a power cut loses it, and that
    also stops every process holding a lease, since SQLite's deliverers all run on the machine that
    holds the file: the lost lease then means only a retry (its attempt count may be one short). A
    later durable commit (the mark sent, which keeps the default fsync) syncs the WAL with every frame
    before it. The mark sent is what must be durable, and is."""

    def __init__(self, held: _HeldConnection, lease_seconds: float):
        self.held = held
        self.lease_seconds = lease_seconds
        self._waiting: list[tuple[int, str, asyncio.Future]] = []
        self._running: asyncio.Task | None = None
        self.statements = 0

    async def lease(self, notification_id: int, owner: str):
        """The row's (rendered, recipients, message_id, idempotency_key) once leased to `owner`; None if
        it is not a pending rendered row free for `owner` (nothing changed then)."""
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((notification_id, owner, future))
        if self._running is None:
            self._running = asyncio.create_task(self._run())
        return await future

    async def _run(self) -> None:
        try:
            await asyncio.sleep(0)  # those that start in this same turn of the loop join the first batch
            while self._waiting:
                batch, seen, rest = [], set(), []
                for item in self._waiting:
                    if item[2].done():
                        continue  # cancelled while waiting: not leased
                    if len(batch) < LEASE_BATCH and item[0] not in seen:
                        batch.append(item)
                        seen.add(item[0])
                    else:
                        rest.append(item)  # the same row twice goes in the next statement
                self._waiting = rest
                if batch:
                    await self._lease(batch)
        finally:
            self._running = None
            for _, _, future in self._waiting:  # only if this task itself was cancelled
                if not future.done():
                    future.cancel()
            self._waiting = []

    async def _lease(self, batch: list[tuple[int, str, asyncio.Future]]) -> None:
        now = utcnow()
        parameters: dict[str, Any] = {"now_": now, "until_": now + timedelta(seconds=self.lease_seconds)}
        for j, (notification_id, owner, _) in enumerate(batch):
            parameters[f"id_{j}"] = notification_id
            parameters[f"owner_{j}"] = owner
        try:
            self.statements += 1
            rows = await self.held.execute(_lease_statement_for(len(batch)), parameters)
        except Exception as exc:
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        by_id = {row[0]: tuple(row[1:]) for row in rows}
        for notification_id, _, future in batch:
            if not future.done():
                future.set_result(by_id.get(notification_id))


def _to_header(data: bytes) -> list[str]:
    """`mailer.message_recipients` of a flattened message, reading its header block only (parsing the
    whole message, both parts, cost more than the rest of a delivery's hot path)."""
    end = data.find(b"\r\n\r\n")
    head = data if end < 0 else data[: end + 2]
    value, inside = [], False
    for line in head.split(b"\r\n"):
        if inside and line[:1] in (b" ", b"\t"):
            value.append(line)
        elif line[:3].lower() == b"to:" and not value:
            value.append(line[3:])
            inside = True
        else:
            inside = False
    raw = b" ".join(value)
    if not value or b"=?" in raw or not raw.isascii():
        return message_recipients(data if end < 0 else data[: end + 4])  # encoded words, no To: the full parser
    return [address for _, address in getaddresses([raw.decode("ascii")])]


MARK_POOL_SIZE = 2
"""Connections of the pool that marks messages sent (and records the relay's state): the SMTP
connection carries one message at a time until it is marked, so one mark is in progress at a time."""


def _mark_engine_sessions(sessions: async_sessionmaker[AsyncSession]) -> async_sessionmaker[AsyncSession]:
    """A session factory on the same database with a small pool of its own: marking a message sent
    never waits for a connection behind the worker's other activities, and, kept open, the
    connection costs no connect per message (the mark holds the SMTP connection). A connection left
    dead by a database restart fails one try of `_mark_sent`, which invalidates the pool and retries."""
    from ncpi_workflow import db

    bind = sessions.kw.get("bind")
    if bind is None or bind.url.get_backend_name() == "sqlite":
        return sessions  # SQLite has one writer whatever the pool: a pool of its own only adds churn
    engine = db.create_engine(bind.url.render_as_string(hide_password=False), pool_size=MARK_POOL_SIZE, max_overflow=2)
    return db.session_factory(engine)


class DeliveryActivities:
    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], mailer: Mailer, settings: DeliverySettings,
        mark_sessions: async_sessionmaker[AsyncSession] | None = None,
    ):
        self.sessions = sessions
        self.mailer = mailer
        self.settings = settings
        self.mark_sessions = mark_sessions or _mark_engine_sessions(sessions)
        """Where "sent" and the relay's state are written: a connection of their own."""
        self._recording_relay = False
        sqlite = sessions.kw.get("bind") is not None and sessions.kw["bind"].dialect.name == "sqlite"
        lease_lock = asyncio.Lock()
        self._lease_connection = _HeldConnection(lambda: self.sessions, lease_lock, relaxed_sqlite=True)
        self._mark_connection = _HeldConnection(lambda: self.mark_sessions, lease_lock if sqlite else asyncio.Lock())
        self._leases = _LeaseBatcher(self._lease_connection, settings.lease_seconds)
        self._in_flight = 0

    def all(self) -> list:
        return [self.deliver_notification]

    async def _release_held(self) -> None:
        try:
            if self._in_flight == 0:
                await self._lease_connection.release()
            if self._in_flight == 0:
                await self._mark_connection.release()
        except Exception as exc:  # a connection that cannot be given back is dropped; nothing to report
            log.debug("held delivery connection not released cleanly: %s", one_line(exc, 200))

    @activity.defn
    async def deliver_notification(self, notification_id: int) -> str:
        """Send one outbox notification by email unless already sent. Returns its final status."""
        beat = _Heartbeat()
        token = _beats.set(beat)
        self._in_flight += 1
        try:
            return await self._deliver(notification_id)
        except (SQLAlchemyError, OSError) as exc:
            log.warning("delivery of notification %s waits for the database: %s", notification_id, one_line(exc, 200))
            raise _held(f"the database is not available: {one_line(exc, 200)}") from None
        except asyncio.CancelledError:
            if activity.in_activity() and activity.is_worker_shutdown():
                # Retried at once by another worker, not after the backoff its attempt count has grown
                # to (a delivery held by a relay fault for a while has many attempts behind it).
                raise _held("the worker stopped before this delivery finished; retried", retry_in=1.0) from None
            raise
        finally:
            beat.stop()
            _beats.reset(token)
            self._in_flight -= 1
            if self._in_flight == 0:
                await self._release_held()  # the burst is over: its held connections go back to the pool

    async def _deliver(self, notification_id: int) -> str:
        outcome = _sent_before(notification_id)
        if outcome is not None:
            # The server accepted it in an earlier attempt, which could not record it: record it now.
            await self._mark_sent(notification_id, outcome)
            return SENT
        status = await self._send_rendered(notification_id)
        if status is not None:
            return status
        async with self.sessions() as session:
            notification = await session.get(Notification, notification_id)
            if notification is None:
                raise LookupError(f"no notification {notification_id}")
            if notification.status == SENT:
                return SENT  # a retry after success
            failed = notification.status == FAILED
            # A failure already reported was recorded with its alert, which may not have gone out yet.
            alert_id = await self._pending_alert(session, notification) if failed else None
            context = None if failed or notification.rendered is not None else await email_context(session, notification)
        if failed:
            if alert_id is not None:
                await self._deliver_alert(alert_id)
            return FAILED
        return await self._send(notification_id, context)

    async def _plan_links(self, notification_id: int, context: EmailContext) -> LinkPlan | None:
        """The portal and reply links of a force-facing email (ncpi_workflow.access_links): their
        provisional placeholders go into the context to be rendered. None for any other email."""
        from ncpi_workflow.formatting import local_date

        async with self.sessions() as session:
            plan = await plan_links(session, notification_id, self.settings.links)
        if plan is not None:
            context.portal_url = plan.portal_url
            context.reply_to = plan.reply_to or context.reply_to
            context.link_expires = local_date(plan.expires_at)
        return plan

    def _lease_owner(self) -> str:
        if activity.in_activity():
            info = activity.info()
            return f"{info.workflow_id}/{info.workflow_run_id}/{info.activity_id}"[:300]
        return f"{self.settings.reporter}/{id(self)}"

    async def _send(self, notification_id: int, context: EmailContext | None) -> str:
        links = None  # access links: planned for this rendering, issued in the transaction that stores it
        if context is not None:
            context.reply_to = self.settings.reply_to
            if self.settings.links is not None:
                links = await self._plan_links(notification_id, context)
            try:
                rendered = render_email(context, self.settings.templates_dir)
            except EmailTemplateError as exc:
                # A broken template or missing data: retrying cannot help, so it is a permanent failure.
                return await self._fail(notification_id, f"template error: {exc}", message_id=None)
        owner = self._lease_owner()
        # The message's bytes are built before the write transaction: on SQLite a burst of deliveries
        # would otherwise take turns holding the database's one write lock while they build MIME.
        prepared = None
        if context is not None:
            async with self.sessions() as session:
                row = await session.get(Notification, notification_id)
                prepared_id = row.message_id or message_id_for(row.idempotency_key, self.settings.mail_from)
                prepared = flatten(build_message(
                    mail_from=self.settings.mail_from, reply_to=context.reply_to,
                    to=list(row.recipients["to"]), subject=rendered.subject, text=rendered.text,
                    html=rendered.html, message_id=prepared_id, reference=row.idempotency_key,
                ))
        now = utcnow()
        # Lease the row and count the attempt, store the rendering (first attempt only), then send
        # holding no database connection: a burst of deliveries waiting their turn on the shared
        # SMTP connection would otherwise hold the whole connection pool.
        async with self.sessions.begin() as session:
            leased = await session.execute(
                update(Notification)
                .where(Notification.id == notification_id, Notification.status == PENDING,
                       or_(Notification.lease_until.is_(None), Notification.lease_until < now, Notification.lease_owner == owner))
                .values(lease_owner=owner, lease_until=now + timedelta(seconds=self.settings.lease_seconds),
                        attempts=Notification.attempts + 1, last_attempt_at=now)
            )
            notification = await session.get(Notification, notification_id, populate_existing=True)
            if leased.rowcount != 1:
                status, holder, until = notification.status, notification.lease_owner, notification.lease_until
            else:
                status = None
                message_id = notification.message_id or message_id_for(notification.idempotency_key, self.settings.mail_from)
                data = notification.rendered
                if data is None:
                    if prepared is None:  # rendered by another attempt that then lost its row: render again
                        raise _held(f"notification {notification_id} lost its rendering; retried")
                    data = prepared
                    if links is not None:
                        data = await links.issue(session, data)  # the links' rows, stored with the rendering
                to = list(notification.recipients["to"])
                if _to_header(data) != to:
                    data = with_recipients(data, to)  # a resend to the contacts' corrected addresses
                if data != notification.rendered:
                    notification.rendered = data
                    notification.message_id = message_id
        if status is not None:
            if status in (SENT, FAILED):
                return status  # delivered (or refused) by the other deliverer meanwhile
            raise _held(f"notification {notification_id} is being delivered by {holder} (lease until {until}); retried later")
        return await self._send_leased(notification_id, owner, message_id, data, to)

    def _not_after(self) -> float:
        """time.monotonic() by which this attempt must have its turn on the SMTP connection."""
        not_after = time.monotonic() + max(1.0, self.settings.lease_seconds - 60.0)
        deadline = _attempt_deadline(self.settings.mark_sent_patience + 10.0)
        return not_after if deadline is None else min(not_after, deadline)

    async def _send_rendered(self, notification_id: int) -> str | None:
        """The hot path, for a row rendered already (at record time, activities/rendering.py, or by an
        earlier attempt): lease the row and read its bytes in one statement (no read before it, no
        context, no rendering), then send and mark sent. None: not such a row now (not pending, leased
        by another, or not rendered) and nothing was changed: the general path deals with it."""
        owner = self._lease_owner()
        leased = await self._leases.lease(notification_id, owner)  # batched with the burst's other leases
        if leased is None:
            return None
        data, recipients, message_id, key = leased
        message_id = message_id or message_id_for(key, self.settings.mail_from)
        to = list(recipients["to"])
        if _to_header(data) != to:
            data = with_recipients(data, to)  # a resend to the contacts' corrected addresses (the lease is ours)
            async with self.sessions.begin() as session:
                await session.execute(update(Notification).where(Notification.id == notification_id)
                                      .values(rendered=data, message_id=message_id))
        return await self._send_leased(notification_id, owner, message_id, data, to)

    async def _send_leased(self, notification_id: int, owner: str, message_id: str, data: bytes, to: list[str]) -> str:
        """Send a leased row's bytes and record the outcome."""
        if self.settings.links is not None:
            # Access links: the raw tokens replace their placeholders only now, in what goes to the relay;
            # they are never stored, and the same stored bytes always give the same sent bytes.
            data = fill_link_tokens(data, self.settings.links.key)
        try:
            turn = await self.mailer.turn(not_after=self._not_after())
            # From here the turn is given back only once the outcome is durable (or cannot be made
            # so): shielded, so that a cancelled attempt (its timeout, a worker shutting down) still
            # records what the relay said before the connection carries anyone else's message.
            sent = asyncio.ensure_future(self._send_on(turn, notification_id, message_id, data, to))
            failed_alert = await _unless_started(sent)
        except RelayFault as fault:
            await self._record(notification_id, owner, last_error=f"held: {fault.reason}")
            await self._record_relay()
            raise _held(f"held: {fault.reason}", retry_in=self.settings.relay_retry_seconds) from None
        except TransientDeliveryError as exc:
            log.warning("notification %s not delivered this time, retried: %s", notification_id, one_line(exc, 200))
            await self._record(notification_id, owner, last_error=one_line(exc, 1000))
            await self._record_relay()
            raise _held(one_line(exc, 1000)) from None
        if failed_alert is not None:
            failed, alert_id = failed_alert
            if alert_id is not None:
                await self._deliver_alert(alert_id)
            return FAILED
        await self._record_relay()
        return SENT

    async def _send_on(self, turn: SmtpTurn, notification_id: int, message_id: str, data: bytes,
                       to: list[str]) -> tuple[str, int | None] | None:
        """Send over our turn of the SMTP connection and make the outcome durable before giving the
        turn back: None once marked sent, (FAILED, the alert's id) once a refusal is recorded.

        So at most one message per connection (this one) is ever accepted by the relay and not yet
        recorded. The cost is the mark-sent round trip per message, which was made anyway."""
        try:
            try:
                await self.mailer.send_bytes(data, self.settings.mail_from, to, turn=turn)
            except PermanentDeliveryError as exc:
                return FAILED, await self._record_failure(notification_id, exc.answer, message_id)
            outcome = {"notification_id": notification_id, "message_id": message_id, "sent_at": utcnow().isoformat()}
            beat = _beats.get()
            if beat is not None:
                beat.outcome(outcome)  # the heartbeat details: kept by Temporal should the database not take it
            elif activity.in_activity():
                activity.heartbeat(outcome)
            await self._mark_sent(notification_id, outcome)
            return None
        finally:
            turn.release()

    async def _mark_sent(self, notification_id: int, outcome: dict[str, Any]) -> None:
        """Record "sent" in a short transaction of its own, retrying for `mark_sent_patience`."""
        deadline = time.monotonic() + self.settings.mark_sent_patience
        delay = 0.1
        while True:
            try:
                await self._mark_connection.execute(_MARK_SENT, {
                    "id_": notification_id, "sent_at_": datetime.fromisoformat(outcome["sent_at"]),
                    "message_id_": outcome["message_id"]})
                return
            except (SQLAlchemyError, OSError) as exc:
                if time.monotonic() + delay > deadline:
                    log.warning("notification %s was accepted by the server but cannot be marked sent yet (%s); "
                                "the retry records it and sends nothing again", notification_id, one_line(exc, 200))
                    raise _held(f"sent, not yet recorded: {one_line(exc, 200)}") from None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _record(self, notification_id: int, owner: str, **values) -> None:
        """After an attempt that did not send: its error, and the lease given back."""
        async with self.sessions.begin() as session:
            await session.execute(update(Notification).where(Notification.id == notification_id).values(**values))
            await session.execute(
                update(Notification).where(Notification.id == notification_id, Notification.lease_owner == owner)
                .values(lease_owner=None, lease_until=None)
            )

    async def _record_relay(self) -> None:
        """Write the relay's state as this process found it, when it changed (or is due again)."""
        report = self.mailer.relay_report()
        if report is None or self._recording_relay:
            return  # current, or being written by another delivery of this process right now
        self._recording_relay = True
        try:
            await self._write_relay(report)
        finally:
            self._recording_relay = False

    async def _write_relay(self, report) -> None:
        now = utcnow()
        values = dict(relay=report.relay, state=report.state, category=report.category, reason=report.reason,
                      since=report.since, checked_at=now)
        try:
            async with self.mark_sessions.begin() as session:
                if not await insert_if_absent(session, RelayStatus, ["reporter"], reporter=self.settings.reporter, **values):
                    await session.execute(update(RelayStatus).where(RelayStatus.reporter == self.settings.reporter).values(**values))
                if report.state == "ok":
                    # The relay takes our messages: another process's fault with it is over, or that
                    # process, still failing, says so again within a minute.
                    await session.execute(
                        update(RelayStatus)
                        .where(RelayStatus.relay == report.relay, RelayStatus.state == "failing",
                               RelayStatus.reporter != self.settings.reporter)
                        .values(state="ok", category=None, reason=None, since=now, checked_at=now)
                    )
        except (SQLAlchemyError, OSError) as exc:
            log.warning("cannot record the SMTP relay's state (%s): %s", report.state, one_line(exc, 200))
            return
        self.mailer.recorded(report)

    async def _fail(self, notification_id: int, answer: str, message_id: str | None) -> str:
        """Record a permanent failure with the server's answer, then tell the inspectors.

        FAILED, its audit row and the inspectors' alert are one transaction: a retry that finds
        FAILED can rely on the alert having been recorded, and delivers it if it is still pending."""
        alert_id = await self._record_failure(notification_id, answer, message_id)
        if alert_id is not None:
            await self._deliver_alert(alert_id)
        return FAILED

    async def _record_failure(self, notification_id: int, answer: str, message_id: str | None) -> int | None:
        """FAILED with the answer, its audit row and the alert recorded (not sent): the alert's id."""
        async with self.sessions.begin() as session:
            notification = await session.get(Notification, notification_id)
            notification.status = FAILED
            notification.last_error = answer
            notification.message_id = message_id
            notification.lease_owner = notification.lease_until = None
            await append_audit(
                session, actor="system", action="notification.failed", entity_type="notification",
                entity_id=str(notification.id), detail={"answer": answer, "to": notification.recipients["to"]},
                idempotency_key=f"{notification.idempotency_key}/failed",
            )
            return await self._record_alert(session, notification)

    def _alert_key(self, failed: Notification) -> str:
        return f"{failed.idempotency_key}/delivery_failed"

    async def _record_alert(self, session: AsyncSession, failed: Notification) -> int | None:
        """Record a delivery_failed notice to the inspectors' mailbox (once; never about itself)."""
        if failed.kind == "delivery_failed":
            return None
        key = self._alert_key(failed)
        await insert_if_absent(
            session, Notification, ["idempotency_key"],
            idempotency_key=key, kind="delivery_failed", inspection_id=failed.inspection_id,
            recommendation_id=failed.recommendation_id,
            recipients={"to": [self.settings.inspectors_email], "roles": ["inspectors"]},
            subject=f"Email not delivered: {failed.subject}",
            context={"failed_id": failed.id}, status="pending", attempts=0, scheduled_for=utcnow(),
        )
        return await session.scalar(select(Notification.id).where(Notification.idempotency_key == key))

    async def _pending_alert(self, session: AsyncSession, failed: Notification) -> int | None:
        return await session.scalar(
            select(Notification.id).where(Notification.idempotency_key == self._alert_key(failed), Notification.status == "pending")
        )

    async def _deliver_alert(self, alert_id: int) -> None:
        try:
            await self._deliver(alert_id)
        except ApplicationError as exc:
            if exc.type != HELD:
                raise
            # Stays pending: `ncpi outbox` shows it, and the reconciler delivers pending mail.
