"""A worker killed (`kill -9`) in the middle of a burst over one SMTP connection, on SQLite and
PostgreSQL at once (issue 11, "shrink the duplicate window to the message in flight").

Each database runs a real `ncpi worker` process against the real Temporal dev server and a real
aiosmtpd capture that notes which connection carried each message. A burst of notifications is
started (one NotificationDelivery workflow each); the worker is killed 30 ms after the capture
accepted its eighth message (the first is held by the capture until every delivery of the burst
waits for the connection, so they follow one another as fast as the worker sends them); a second
`ncpi worker` takes over. Then:

- at most one duplicate per SMTP connection the killed worker had open (it has one), each byte for
  byte the first copy: the connection carries no other message until the outcome of the one in
  flight is marked sent;
- every notification sent and received, the killed worker's deliveries retried after the
  activity's heartbeat timeout (20 s), well inside its 2-minute start-to-close timeout.

Marking a message sent is made slow for real (about 150 ms a commit: a trigger on the outbox
table, `pg_sleep` on PostgreSQL, a cross join on SQLite), as it is on a loaded database: while the
connection went to the next message at the relay's `250`, a kill left several messages of the
connection accepted and not recorded, and so sent twice.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

from sqlalchemy import select, text

from ncpi_workflow import db
from ncpi_workflow.models import Notification
from ncpi_workflow.smtp_capture import CaptureHandler
from tests.conftest import _create_pg_database
from tests.postgres import free_port
from tests.test_email_delivery import _cumbria_records, _notify
from tests.test_worker_service import start_worker

BURST = 24
KILL_AFTER = 8
"""The worker is killed this long after the capture accepted this many messages from it."""
KILL_DELAY = 0.03
SETTLE_AFTER_KILL = 75.0
"""Everything sent within this of the kill: the heartbeat timeout (20 s) and a retry, not the 2-minute timeout."""


class KillingCapture(CaptureHandler):
    """Keeps every message with the connection (client port) that carried it, and kills the victim
    process KILL_DELAY after accepting its KILL_AFTER-th message."""

    def __init__(self) -> None:
        super().__init__()
        self.peers: list[tuple[str, int]] = []
        self.times: list[float] = []
        self.victim: subprocess.Popen | None = None
        self.killed_at: float | None = None
        self.killed = threading.Event()
        self.received_before_kill = 0
        self.everyone_waiting = threading.Event()
        """Set once every delivery of the burst has leased its row and waits for the connection."""

    async def handle_DATA(self, server, session, envelope):
        if not self.messages:  # a relay slow to take the first one: the whole burst queues behind it
            await asyncio.to_thread(self.everyone_waiting.wait, 60)
        answer = await super().handle_DATA(server, session, envelope)
        self.peers.append(tuple(session.peer))
        self.times.append(time.monotonic())
        if self.victim is not None and len(self.messages) == KILL_AFTER:
            threading.Timer(KILL_DELAY, self._kill).start()
        return answer

    def _kill(self) -> None:
        os.kill(self.victim.pid, signal.SIGKILL)
        self.killed_at = time.monotonic()
        self.received_before_kill = len(self.messages)
        self.killed.set()


async def _slow_marks(url: str, on: bool) -> None:
    """A real, slow commit of "sent" (about 150 ms), or back to normal."""
    engine = db.create_engine(url)
    try:
        async with engine.begin() as connection:
            if url.startswith("sqlite"):
                if on:
                    await connection.execute(text("CREATE TABLE slow_mark_rows (x INTEGER)"))
                    await connection.execute(text("WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 240) "
                                                  "INSERT INTO slow_mark_rows SELECT x FROM n"))
                    await connection.execute(text(
                        "CREATE TRIGGER slow_mark AFTER UPDATE OF status ON notifications "
                        "WHEN NEW.status = 'sent' AND OLD.status <> 'sent' "
                        "BEGIN SELECT count(*) FROM slow_mark_rows a, slow_mark_rows b, slow_mark_rows c; END"))
                else:
                    await connection.execute(text("DROP TRIGGER slow_mark"))
            elif on:
                await connection.execute(text(
                    "CREATE FUNCTION slow_mark() RETURNS trigger AS $$ BEGIN PERFORM pg_sleep(0.15); RETURN NEW; END $$ "
                    "LANGUAGE plpgsql"))
                await connection.execute(text(
                    "CREATE TRIGGER slow_mark BEFORE UPDATE ON notifications FOR EACH ROW "
                    "WHEN (NEW.status = 'sent' AND OLD.status <> 'sent') EXECUTE FUNCTION slow_mark()"))
            else:
                await connection.execute(text("DROP TRIGGER slow_mark ON notifications"))
    finally:
        await engine.dispose()


async def _rows(sessions) -> list[Notification]:
    async with sessions() as session:
        return list(await session.scalars(select(Notification).order_by(Notification.id)))


async def _wait(predicate, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while not (result := await predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {seconds:.0f} s")
        await asyncio.sleep(0.2)
    return result


async def _kill_in_a_burst(env, url: str, folder: Path) -> dict:
    from aiosmtpd.controller import Controller

    folder.mkdir(parents=True, exist_ok=True)
    smtp = KillingCapture()
    controller = Controller(smtp, hostname="127.0.0.1", port=free_port())
    controller.start()
    queue = f"kill-burst-{uuid.uuid4().hex[:8]}"
    worker_env = {k: v for k, v in os.environ.items() if not k.startswith("NCPI_")}
    worker_env.update(
        NCPI_TEMPORAL_ADDRESS=env.address, NCPI_DATABASE_URL=url, NCPI_TASK_QUEUE=queue,
        NCPI_SMTP_HOST="127.0.0.1", NCPI_SMTP_PORT=str(controller.port), NCPI_DATA_DIR=str(folder / "data"),
        NCPI_SETTINGS_FILE=str(folder / "none.toml"), NCPI_WORKER_ALIVE_FILE=str(folder / "worker.alive"),
        NCPI_RECONCILE_MINUTES="600",  # the reconciler would restart the Cumbria report's workflow: not this test's
    )
    first = second = None
    ids: list[int] = []
    try:
        async with db.open_database(url) as sessions:
            await _cumbria_records(sessions)
            ids = [await _notify(sessions, f"r2/c1/reminder/burst/{i}", "reminder",
                                 {"deadline": "recommendation", "due": "2017-04-26", "working_days": 3, "cycle": 1})
                   for i in range(BURST)]
            await _slow_marks(url, on=True)
            first = start_worker(worker_env, folder / "first.log")
            await _wait(lambda: _contains(folder / "first.log", "worker running on"), 60, "first worker up")
            smtp.victim = first
            await asyncio.gather(*(env.client.start_workflow("NotificationDelivery", i, id=f"{queue}/{i}", task_queue=queue)
                                   for i in ids))

            async def every_row_leased():
                return all(r.attempts >= 1 for r in await _rows(sessions))

            await _wait(every_row_leased, 60, "every delivery of the burst started")
            smtp.everyone_waiting.set()
            assert await asyncio.to_thread(smtp.killed.wait, 60), "the worker never sent its eighth message"
            await asyncio.to_thread(first.wait, 10)
            connections = len(set(smtp.peers[: smtp.received_before_kill]))
            await _slow_marks(url, on=False)
            second = start_worker(worker_env, folder / "second.log")

            async def all_sent():
                rows = [r for r in await _rows(sessions) if r.id in ids]
                return rows if all(r.status == "sent" for r in rows) else None

            rows = await _wait(all_sent, SETTLE_AFTER_KILL, "every notification sent after the kill")
            settled_after = time.monotonic() - smtp.killed_at
            await asyncio.sleep(1.0)  # and nothing more arrives
        keys = {r.idempotency_key for r in rows}
        messages = [m for m in smtp.messages if m.message["X-NCPI-Reference"] in keys]
        by_id = Counter(m.message["Message-ID"] for m in messages)
        first_copy = {}
        for m in messages:
            first_copy.setdefault(m.message["Message-ID"], m.data)
        return dict(
            rows=rows, messages=messages, connections=connections, settled_after=settled_after,
            duplicates={k: n - 1 for k, n in by_id.items() if n > 1}, first_copy=first_copy,
            received_before_kill=smtp.received_before_kill, times=smtp.times, killed_at=smtp.killed_at,
        )
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    await asyncio.to_thread(process.wait, 30)
                except subprocess.TimeoutExpired:
                    process.kill()
        controller.stop()
        for i in ids:  # none left running on the shared dev server
            try:
                await env.client.get_workflow_handle(f"{queue}/{i}").terminate(reason="test finished")
            except Exception:
                pass  # completed


async def _contains(path: Path, needle: str) -> bool:
    return path.exists() and needle in path.read_text()


async def test_a_worker_killed_mid_burst_repeats_at_most_the_message_in_flight(dev_server_env, postgres_cluster, tmp_path):
    pg_url = await _create_pg_database(postgres_cluster)
    sqlite_url = f"sqlite+aiosqlite:///{tmp_path / 'sqlite' / 'ncpi.db'}"
    (tmp_path / "sqlite").mkdir()
    for url in (sqlite_url, pg_url):  # one at a time: alembic's migration environment is process-wide
        await db.upgrade(url)
    runs = await asyncio.gather(_kill_in_a_burst(dev_server_env, sqlite_url, tmp_path / "sqlite"),
                                _kill_in_a_burst(dev_server_env, pg_url, tmp_path / "postgresql"))
    for database, run in zip(("SQLite", "PostgreSQL"), runs):
        rows, messages = run["rows"], run["messages"]
        assert len(rows) == BURST and {r.status for r in rows} == {"sent"}, database
        assert run["received_before_kill"] >= KILL_AFTER and run["connections"] == 1, (database, run["connections"])
        received = {m.message["Message-ID"] for m in messages}
        assert received == {r.message_id for r in rows}, database  # every one arrived
        assert sum(run["duplicates"].values()) <= run["connections"], (database, run["duplicates"])
        for m in messages:  # each repeat is the first copy, byte for byte
            assert m.data == run["first_copy"][m.message["Message-ID"]], database
        # Retried after the heartbeat timeout (20 s) of the killed worker's activities, not their
        # 2-minute start-to-close timeout.
        assert run["settled_after"] < SETTLE_AFTER_KILL, database
