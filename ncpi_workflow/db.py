"""Database engines and schema migrations (Alembic), the same on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections import deque
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, AsyncIterator

from sqlalchemy import event
from sqlalchemy.engine import AdaptedConnection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.util.concurrency import await_

from ncpi_workflow import PROJECT_ROOT

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = PROJECT_ROOT / "migrations"


def _ensure_sqlite_dir(url: str) -> None:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)


BUSY_TIMEOUT_SECONDS = 30.0
"""How long a writer waits for SQLite's one write lock before "database is locked" is raised."""


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    # Foreign keys are off by default in SQLite; WAL lets the CLI read while a worker writes.
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    # Bursts of writers queue for the one write lock: in SQLite's busy handler (in aiosqlite's thread),
    # or, on an inline connection, in its asynchronous wait (SQLite's handler off: it would block the loop).
    busy_ms = 0 if isinstance(dbapi_connection, InlineSqliteConnection) else int(BUSY_TIMEOUT_SECONDS * 1000)
    cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
    cursor.close()


# ---------------------------------------------------------------- SQLite inline on the event loop
#
# aiosqlite runs every SQLite call in a thread of its own and hands each one over and back through
# the event loop: a statement costs two thread hand-offs (and a wake-up of the loop) besides SQLite's
# own few microseconds. Under SQLite's one write lock, a burst of short transactions is bound by that
# serial cost (README, "single writer"). The worker's engine instead runs SQLite's calls inline, on
# the event loop, where SQLAlchemy's greenlet already is: the statements are short, and the only wait,
# for the write lock, is made asynchronous (SQLite's blocking busy handler is off):
# - within the process, the engine's connections take turns at writing through a first-come
#   first-served gate (_WriteGate): a statement that may write waits there, on the loop, until no
#   other connection of the engine is in a write transaction; the one ending its transaction hands the
#   gate straight to the next. (Without it, the writers that find the lock taken retry on timers,
#   while the holder's COMMIT waits its turn on the loop: SQLAlchemy ends `sessions.begin()` blocks
#   in a task of their own.)
# - a write transaction's COMMIT, which waits for its fsync (synchronous=FULL: a few ms, more on a
#   busy disk), runs in the engine's one commit thread, so the loop goes on meanwhile: one hand-off
#   per transaction instead of two per statement.
# - a writer in another process (the CLI, the web app) still makes a statement fail with SQLITE_BUSY:
#   it is tried again after a short asynchronous backoff. That is safe: SQLITE_BUSY is returned before
#   the statement changes anything, and its transaction stays open (SQLITE_BUSY_SNAPSHOT, a transaction
#   whose reads are stale, cannot succeed by waiting and is raised at once, as SQLite's handler does).
# Either wait gives up after BUSY_TIMEOUT_SECONDS with SQLite's "database is locked".

_BUSY_CODES = frozenset({5, 261})  # SQLITE_BUSY, SQLITE_BUSY_RECOVERY (not SQLITE_BUSY_SNAPSHOT, 517)
_BACKOFF_SECONDS = (0.001, 0.002, 0.004, 0.008, 0.016, 0.025)
"""The waits between tries while another process holds the write lock (then the last, again)."""


class _Ready:
    """An awaitable that is done at once. SQLAlchemy's AsyncConnection.execute checks that the driver awaited
    something (else it takes the driver for a synchronous one); an inline statement awaits this, a switch
    of greenlets and no trip through the loop."""

    __slots__ = ()

    def __await__(self):
        return iter(())


_READY = _Ready()


def _is_busy(error: BaseException) -> bool:
    return isinstance(error, sqlite3.OperationalError) and getattr(error, "sqlite_errorcode", None) in _BUSY_CODES


_READ_ONLY = ("SELECT", "PRAGMA", "WITH", "EXPLAIN", "VALUES")
"""How the statements begin that take no write lock (pass no gate). Any other may write."""


def _may_write(operation) -> bool:
    return not (isinstance(operation, str) and operation.lstrip()[:7].upper().startswith(_READ_ONLY))


class _WriteGate:
    """Which connection of an inline engine may write, and those waiting their turn, first come first
    served: the holder's release hands the gate to the first still waiting."""

    __slots__ = ("holder", "_queue", "_committer")

    def __init__(self) -> None:
        self.holder: object | None = None
        self._queue: deque[tuple[asyncio.Future, object]] = deque()
        self._committer = None

    def committer(self):
        """The one thread the engine's commits run in (started at the first)."""
        if self._committer is None:
            from concurrent.futures import ThreadPoolExecutor

            self._committer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ncpi-sqlite-commit")
        return self._committer

    def acquire(self, owner: object) -> None:
        """Hold the gate (in SQLAlchemy's greenlet: a wait is awaited on the loop). "database is locked"
        after BUSY_TIMEOUT_SECONDS, as SQLite would say (a transaction that waits for another of its own
        process's to end, which waits for it, fails so instead of hanging)."""
        if self.holder is None:
            self.holder = owner
            return
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.append((future, owner))
        timer = loop.call_later(BUSY_TIMEOUT_SECONDS, _settle, future, False)
        granted = False
        try:
            granted = await_(future)
        finally:
            timer.cancel()
            if not future.done():
                future.cancel()
            if not granted and self.holder is owner:  # handed over as the wait was cancelled
                self.release(owner)
        if not granted:
            raise sqlite3.OperationalError("database is locked")

    def release(self, owner: object) -> None:
        if self.holder is not owner:
            return
        while self._queue:
            future, waiting = self._queue.popleft()
            if not future.done():
                self.holder = waiting
                future.set_result(True)
                return
        self.holder = None


def _settle(future: asyncio.Future, value) -> None:
    if not future.done():
        future.set_result(value)


class InlineSqliteCursor:
    """A DBAPI cursor over sqlite3's, its calls run inline; a SELECT's rows are fetched at once (as the
    aiosqlite adaptation does), so no statement stays open between calls."""

    server_side = False
    __slots__ = ("_connection", "_cursor", "_rows", "_description")

    def __init__(self, connection: "InlineSqliteConnection") -> None:
        self._connection = connection
        self._cursor = connection._connection.cursor()
        self._rows: deque = deque()
        self._description = None

    @property
    def description(self):
        return self._description

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    @property
    def lastrowid(self):
        return self._cursor.lastrowid

    @property
    def arraysize(self) -> int:
        return self._cursor.arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._cursor.arraysize = value

    def execute(self, operation, parameters=None):
        cursor = self._cursor
        if parameters is None:
            self._connection._statement(operation, cursor.execute, operation)
        else:
            self._connection._statement(operation, cursor.execute, operation, parameters)
        self._description = cursor.description
        self._rows = deque(cursor.fetchall()) if self._description else deque()
        return self

    def executemany(self, operation, seq_of_parameters):
        self._connection._statement(operation, self._cursor.executemany, operation, seq_of_parameters)
        self._description = None
        self._rows = deque()
        return self

    def fetchone(self):
        return self._rows.popleft() if self._rows else None

    def fetchmany(self, size: int | None = None) -> list:
        rows = self._rows
        return [rows.popleft() for _ in range(min(self.arraysize if size is None else size, len(rows)))]

    def fetchall(self) -> list:
        rows = list(self._rows)
        self._rows.clear()
        return rows

    def __iter__(self):
        while self._rows:
            yield self._rows.popleft()

    def setinputsizes(self, *sizes) -> None:
        pass

    def setoutputsize(self, *args) -> None:
        pass

    async def _async_soft_close(self) -> None:
        """(SQLAlchemy's asyncio results call it once a statement has run: its rows are fetched already.)"""

    def close(self) -> None:
        self._rows.clear()
        self._cursor.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class InlineSqliteConnection(AdaptedConnection):
    """The DBAPI connection SQLAlchemy's pool holds for an inline engine (`create_engine(url, inline=True)`):
    a sqlite3 connection (`driver_connection`) whose calls run on the event loop, in the greenlet of the
    SQLAlchemy call that makes them. Only the wait for the write lock leaves it (see above)."""

    __slots__ = ("_gate",)

    def __init__(self, connection: sqlite3.Connection, gate: _WriteGate) -> None:
        self._connection = connection
        self._gate = gate

    def _statement(self, operation, fn, *args):
        """Run a statement, through the engine's write gate if it may write and this connection is not
        already writing; the gate is kept while its transaction lasts."""
        gate = self._gate
        if gate.holder is self or not _may_write(operation):
            return self._call(fn, *args)
        gate.acquire(self)
        try:
            return self._call(fn, *args)
        finally:
            if not self._connection.in_transaction:  # it wrote in autocommit mode (DDL), or failed
                gate.release(self)

    def _call(self, fn, *args):
        """fn(*args), tried again while the database is locked by another process (waiting on the loop)."""
        await_(_READY)
        try:
            return fn(*args)
        except sqlite3.OperationalError as error:
            if not _is_busy(error):
                raise
        deadline = time.monotonic() + BUSY_TIMEOUT_SECONDS
        tries = 0
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return fn(*args)  # the last try: its "database is locked" is the caller's
            await_(asyncio.sleep(min(_BACKOFF_SECONDS[min(tries, len(_BACKOFF_SECONDS) - 1)], left)))
            tries += 1
            try:
                return fn(*args)
            except sqlite3.OperationalError as error:
                if not _is_busy(error):
                    raise

    def _ended(self, fn) -> None:
        """Roll back (or commit inline); the transaction over, the gate goes to the next writer."""
        try:
            self._call(fn)
        finally:
            if not self._connection.in_transaction:
                self._gate.release(self)

    def _commit(self) -> None:
        """A write transaction's COMMIT waits for its fsync (synchronous=FULL): in the engine's commit thread,
        not on the loop (a few ms each, more on a busy disk, while every other task would stand still).
        One hand-off per transaction, not two per statement. (Nothing else uses the connection meanwhile:
        its greenlet waits.) Should it find the database locked, it is tried again as any statement."""
        connection = self._connection
        if not connection.in_transaction:
            return
        try:
            try:
                await_(asyncio.get_running_loop().run_in_executor(self._gate.committer(), connection.commit))
            except sqlite3.OperationalError as error:
                if not _is_busy(error):
                    raise
                self._call(connection.commit)
        finally:
            if not connection.in_transaction:
                self._gate.release(self)

    def cursor(self, server_side: bool = False) -> InlineSqliteCursor:
        return InlineSqliteCursor(self)

    def execute(self, operation, parameters=None) -> InlineSqliteCursor:
        cursor = self.cursor()
        cursor.execute(operation, parameters)
        return cursor

    def commit(self) -> None:
        self._commit()

    def rollback(self) -> None:
        self._ended(self._connection.rollback)

    def close(self) -> None:
        try:
            self._connection.close()
        finally:
            self._gate.release(self)

    def terminate(self) -> None:
        self.close()

    @property
    def isolation_level(self):
        return self._connection.isolation_level

    @isolation_level.setter
    def isolation_level(self, value) -> None:
        self._connection.isolation_level = value

    @property
    def in_transaction(self) -> bool:
        return self._connection.in_transaction

    def create_function(self, *args, **kwargs) -> None:
        self._connection.create_function(*args, **kwargs)


def _inline_dbapi():
    """The aiosqlite dialect's DBAPI module, connecting InlineSqliteConnections (a new one per engine, with
    its write gate). Imported when an inline engine is made, not by every `ncpi` command."""
    import aiosqlite
    from sqlalchemy.dialects.sqlite.aiosqlite import AsyncAdapt_aiosqlite_dbapi

    class InlineSqliteDBAPI(AsyncAdapt_aiosqlite_dbapi):
        def __init__(self) -> None:
            super().__init__(aiosqlite, sqlite3)
            self.gate = _WriteGate()

        def connect(self, *args, **kwargs) -> InlineSqliteConnection:
            kwargs.pop("async_creator_fn", None)
            kwargs["timeout"] = 0  # no busy handler: the wait is the connection's, on the loop
            kwargs["check_same_thread"] = False  # a connection the GC collects is closed wherever it is
            return InlineSqliteConnection(sqlite3.connect(*args, **kwargs), self.gate)

    return InlineSqliteDBAPI()


def create_engine(url: str, *, inline: bool = False, **kwargs) -> AsyncEngine:
    """An engine for `url`. `inline`: on SQLite, SQLite's calls run on the event loop (InlineSqliteConnection),
    for the worker's short transactions; elsewhere (and on PostgreSQL) the driver's own way."""
    _ensure_sqlite_dir(url)
    if inline and make_url(url).get_backend_name() == "sqlite":
        kwargs.setdefault("module", _inline_dbapi())
    engine = create_async_engine(url, **kwargs)
    if engine.dialect.name == "sqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


@asynccontextmanager
async def open_database(url: str, *, inline: bool = False) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """Sessions on `url` until the block ends; `inline`: see `create_engine`."""
    engine = create_engine(url, inline=inline)
    try:
        yield session_factory(engine)
    finally:
        await engine.dispose()


def alembic_config(url: str) -> Config:
    # Alembic is imported when a migration runs, not by every `ncpi` command (a fifth of its start-up).
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade_sync(url: str, revision: str = "head") -> None:
    """Create or upgrade the schema. Runs its own event loop: call it outside one (or via to_thread)."""
    from alembic import command

    _ensure_sqlite_dir(url)
    command.upgrade(alembic_config(url), revision)


async def upgrade(url: str, revision: str = "head") -> None:
    await asyncio.to_thread(upgrade_sync, url, revision)
