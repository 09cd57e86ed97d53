"""The worker's SQLite engine (db.InlineSqliteConnection): SQLite's calls run inline on the event loop, and a
statement that finds the write lock taken waits on the loop (never in SQLite's blocking busy handler) and is
tried again. Many tasks writing at once, a lock held elsewhere (waited for, then given up after the busy
timeout), a rollback, a value the database refuses, and how the engine is built (inline only when asked, on
SQLite only; the worker asks)."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import threading
import time
import uuid
from contextlib import asynccontextmanager
from datetime import datetime, timezone

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DataError, OperationalError
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from ncpi_workflow import db


@pytest.fixture
async def inline(tmp_path):
    """An inline engine on a new SQLite file with one table, and the file's path."""
    path = tmp_path / "inline.db"
    engine = db.create_engine(f"sqlite+aiosqlite:///{path}", inline=True)
    async with engine.begin() as connection:
        await connection.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, who VARCHAR(20) NOT NULL UNIQUE)"))
    try:
        yield engine, path
    finally:
        await engine.dispose()


async def _rows(engine) -> list[str]:
    async with engine.connect() as connection:
        return list((await connection.execute(text("SELECT who FROM t ORDER BY id"))).scalars())


@asynccontextmanager
async def _ticking():
    """Counts the event loop's turns while the block runs (a blocked loop does not turn)."""
    turns = [0]
    stop = asyncio.Event()

    async def tick() -> None:
        while not stop.is_set():
            turns[0] += 1
            await asyncio.sleep(0.005)

    task = asyncio.create_task(tick())
    try:
        yield turns
    finally:
        stop.set()
        await task


def _hold_write_lock(path) -> sqlite3.Connection:
    """Another process's writer: a plain sqlite3 connection holding the write lock until it commits."""
    other = sqlite3.connect(path, isolation_level=None, timeout=0)
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO t (who) VALUES ('other')")
    return other


async def test_an_inline_engine_runs_sqlite_on_the_loop_with_the_usual_pragmas(inline):
    engine, _ = inline
    threads = threading.active_count()
    async with db.session_factory(engine)() as session:
        raw = await (await session.connection()).get_raw_connection()
        assert isinstance(raw.dbapi_connection, db.InlineSqliteConnection)
        assert isinstance(raw.driver_connection, sqlite3.Connection)
        pragmas = {name: (await session.execute(text(f"PRAGMA {name}"))).scalar()
                   for name in ("journal_mode", "foreign_keys", "busy_timeout")}
    # WAL and foreign keys as on every engine; SQLite's busy handler off (the wait is on the loop).
    assert pragmas == {"journal_mode": "wal", "foreign_keys": 1, "busy_timeout": 0}
    assert threading.active_count() == threads  # no aiosqlite thread


async def test_many_tasks_write_at_once_each_in_its_transaction(inline, monkeypatch):
    """Two hundred tasks, each a transaction that writes, yields to the loop while it holds the write lock,
    reads and writes again: every one commits (queued at the engine's gate, none refused, none finding
    SQLite's lock taken), each sees its own rows."""
    engine, _ = inline
    sessions = db.session_factory(engine)
    seen: dict[int, int] = {}
    busy: list[BaseException] = []
    real_is_busy = db._is_busy
    monkeypatch.setattr(db, "_is_busy", lambda error: busy.append(error) or real_is_busy(error))

    async def writer(n: int) -> None:
        async with sessions.begin() as session:
            await session.execute(text("INSERT INTO t (who) VALUES (:who)"), {"who": f"w{n}-a"})
            await asyncio.sleep(0)  # the others try meanwhile, and find the lock taken
            seen[n] = (await session.execute(text("SELECT count(*) FROM t WHERE who LIKE :p"), {"p": f"w{n}-%"})).scalar()
            await session.execute(text("INSERT INTO t (who) VALUES (:who)"), {"who": f"w{n}-b"})

    async with _ticking() as turns:
        await asyncio.gather(*(writer(n) for n in range(200)))
    assert sorted(await _rows(engine)) == sorted(f"w{n}-{x}" for n in range(200) for x in "ab")
    assert set(seen.values()) == {1}
    assert turns[0] > 0
    assert busy == []  # the writers of one engine wait at its gate, never in SQLite's lock


async def test_a_lock_held_elsewhere_is_waited_for_on_the_loop_then_the_statement_runs(inline):
    engine, path = inline
    other = _hold_write_lock(path)
    asyncio.get_running_loop().call_later(0.3, other.commit)
    started = time.monotonic()
    async with _ticking() as turns:
        async with db.session_factory(engine).begin() as session:
            await session.execute(text("INSERT INTO t (who) VALUES ('inline')"))
    waited = time.monotonic() - started
    other.close()
    assert waited >= 0.25
    # The loop turned all the while (SQLite's busy handler would have blocked it for the 0.3 s).
    assert turns[0] >= 10
    assert await _rows(engine) == ["other", "inline"]


async def test_a_lock_held_past_the_busy_timeout_fails_the_statement_as_sqlite_would(inline, monkeypatch):
    engine, path = inline
    monkeypatch.setattr(db, "BUSY_TIMEOUT_SECONDS", 0.3)
    other = _hold_write_lock(path)
    try:
        started = time.monotonic()
        async with _ticking() as turns:
            with pytest.raises(OperationalError, match="database is locked"):
                async with db.session_factory(engine).begin() as session:
                    await session.execute(text("INSERT INTO t (who) VALUES ('inline')"))
        assert 0.25 <= time.monotonic() - started < 5
        assert turns[0] >= 10
    finally:
        other.rollback()
        other.close()
    # The connection went back to the pool in good order: the next transaction writes.
    async with db.session_factory(engine).begin() as session:
        await session.execute(text("INSERT INTO t (who) VALUES ('after')"))
    assert await _rows(engine) == ["after"]


async def test_a_rollback_undoes_its_writes_and_lets_the_next_writer_in(inline):
    engine, _ = inline
    sessions = db.session_factory(engine)
    inserted = asyncio.Event()

    async def failing() -> None:
        async with sessions.begin() as session:
            await session.execute(text("INSERT INTO t (who) VALUES ('rolled back')"))
            inserted.set()
            await asyncio.sleep(0.2)  # holds the write lock while the other waits
            raise RuntimeError("refused")

    async def waiting() -> float:
        await inserted.wait()
        started = time.monotonic()
        async with sessions.begin() as session:
            await session.execute(text("INSERT INTO t (who) VALUES ('kept')"))
        return time.monotonic() - started

    results = await asyncio.gather(failing(), waiting(), return_exceptions=True)
    assert isinstance(results[0], RuntimeError)
    assert 0.1 <= results[1] < 5
    assert await _rows(engine) == ["kept"]
    # Nothing left in a transaction.
    async with engine.connect() as connection:
        raw = await connection.get_raw_connection()
        assert not raw.dbapi_connection.in_transaction


async def test_a_value_too_long_is_refused_by_sqlite_and_the_connection_carries_on(inline):
    """A value past the connection's length limit (SQLite's SQLITE_LIMIT_LENGTH, set low here) is SQLite's
    DataError through SQLAlchemy, as on aiosqlite; the transaction rolls back, the connection is reused."""
    engine, _ = inline
    engine = db.create_engine(str(engine.url), inline=True, pool_size=1, max_overflow=0)
    try:
        async with engine.connect() as connection:
            raw = await connection.get_raw_connection()
            raw.driver_connection.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 1000)
        with pytest.raises(DataError, match="too big"):
            async with db.session_factory(engine).begin() as session:
                await session.execute(text("INSERT INTO t (who) VALUES ('short')"))
                await session.execute(text("INSERT INTO t (who) VALUES (:who)"), {"who": "x" * 5000})
        async with db.session_factory(engine).begin() as session:
            await session.execute(text("INSERT INTO t (who) VALUES ('next')"))
        assert await _rows(engine) == ["next"]
    finally:
        await engine.dispose()


async def test_a_record_the_database_refuses_is_refused_for_good_on_the_inline_engine(tmp_path):
    """The activities' classification of a refusal (a row for a recommendation that does not exist: FOREIGN
    KEY) is the same on the worker's engine: RECORD_REJECTED at once, not retried."""
    from activities.records import RecordActivities
    from tests.conftest import migrate
    from ncpi_workflow.lifecycle import RECORD_REJECTED, ProgressRecord
    from tests.test_projection_versions import _published
    from tests.test_replay_stuck import ADDRESSES

    url = f"sqlite+aiosqlite:///{tmp_path / 'ncpi.db'}"
    await migrate(url)
    async with db.open_database(url, inline=True) as sessions:
        _, rec_id = await _published(sessions, tmp_path)
        records = RecordActivities(sessions, ADDRESSES)
        env = ActivityEnvironment()
        env.info = dataclasses.replace(env.info, activity_type="record_progress")
        now = datetime.now(timezone.utc)
        with pytest.raises(ApplicationError) as refused:
            await env.run(records.record_progress, ProgressRecord(f"k/{uuid.uuid4()}", "NWA-2024-03-07-R9", "in_progress", "S.", "l", now))
        assert refused.value.non_retryable and refused.value.type == RECORD_REJECTED
        assert "FOREIGN KEY" in refused.value.message
        await env.run(records.record_progress, ProgressRecord(f"k/{uuid.uuid4()}", rec_id, "in_progress", "Started.", "liaison", now))


async def test_the_engine_is_inline_only_when_asked_and_only_on_sqlite(tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path / 'x.db'}"
    for inline, expected in ((True, db.InlineSqliteConnection), (False, None)):
        async with db.open_database(url, inline=inline) as sessions:
            async with sessions() as session:
                raw = await (await session.connection()).get_raw_connection()
                if expected is None:  # the aiosqlite adaptation, its connection in a thread of its own
                    assert not isinstance(raw.dbapi_connection, db.InlineSqliteConnection)
                    assert type(raw.driver_connection).__module__.startswith("aiosqlite")
                    assert (await session.execute(text("PRAGMA busy_timeout"))).scalar() == 30000
                else:
                    assert isinstance(raw.dbapi_connection, expected)
    engine = db.create_engine("postgresql+asyncpg://nobody@127.0.0.1:1/none", inline=True)
    assert engine.dialect.driver == "asyncpg"  # PostgreSQL's driver as ever
    await engine.dispose()


async def test_the_worker_opens_its_database_inline_and_its_jobs_as_before(monkeypatch, tmp_path):
    from ncpi_workflow.service import worker as service
    from ncpi_workflow.settings import Settings

    opened: list[dict] = []
    real = db.open_database

    def recording(url, **kwargs):
        opened.append(kwargs)
        return real(url, **kwargs)

    class FakeWorker:
        def __init__(self, *args, **kwargs) -> None:
            pass

        async def __aenter__(self):
            return self

        async def __aexit__(self, *exc) -> None:
            pass

    monkeypatch.setattr(service.db, "open_database", recording)
    monkeypatch.setattr(service, "Worker", FakeWorker)
    settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'w.db'}", data_dir=tmp_path / "data")
    async with service.running_worker(object(), settings):
        pass
    assert opened == [{"inline": True}]
