"""The worker as operators run it: a real `ncpi worker` process against the dev server, stopped
with SIGTERM in the middle of an activity, and a second worker carrying on with nothing lost."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from datetime import date, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from ncpi_workflow import db
from ncpi_workflow.models import Notification
from ncpi_workflow.smtp_capture import CaptureHandler
from tests.conftest import ROOT, run_ncpi
from tests.lifecycle_support import write_report
from tests.postgres import free_port


class SlowCapture(CaptureHandler):
    """Takes its time over each message, and says when one is being received."""

    def __init__(self, delay: float):
        super().__init__()
        self.delay = delay
        self.receiving = threading.Event()

    async def handle_DATA(self, server, session, envelope):
        self.receiving.set()
        await asyncio.sleep(self.delay)
        return await super().handle_DATA(server, session, envelope)


def start_worker(env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ncpi_workflow.cli", "worker"], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=log.open("w"), text=True)


async def wait_for(predicate, seconds: float = 30.0, what: str = "condition"):
    deadline = asyncio.get_running_loop().time() + seconds
    while not (result := await predicate()):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what} not met within {seconds:.0f} s")
        await asyncio.sleep(0.2)
    return result


async def test_sigterm_during_an_activity_exits_cleanly_and_nothing_is_lost(dev_server_env, tmp_path):
    from aiosmtpd.controller import Controller

    smtp = SlowCapture(delay=3.0)
    controller = Controller(smtp, hostname="127.0.0.1", port=free_port())
    controller.start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NCPI_")}
    env.update(
        NCPI_TEMPORAL_ADDRESS=dev_server_env.address, NCPI_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'ncpi.db'}",
        NCPI_TASK_QUEUE=f"ncpi-worker-service-{os.getpid()}", NCPI_SMTP_HOST="127.0.0.1", NCPI_SMTP_PORT=str(controller.port),
        NCPI_DATA_DIR=str(tmp_path / "data"), NCPI_SETTINGS_FILE=str(tmp_path / "none.toml"), NCPI_SHUTDOWN_GRACE_SECONDS="20",
        NCPI_WORKER_ALIVE_FILE=str(tmp_path / "worker.alive"),
    )
    assert run_ncpi("db", "upgrade", env=env).returncode == 0
    report = write_report(tmp_path, "BED", date.today() - timedelta(days=1), [("R1", "within_three_months")], name="bed.yaml")
    inspection_id = f"BED-{(date.today() - timedelta(days=1)).isoformat()}"
    first = start_worker(env, tmp_path / "first.log")
    second = None
    try:
        await wait_for(lambda: _contains(tmp_path / "first.log", "worker running on"), what="first worker up")
        health = await asyncio.to_thread(run_ncpi, "health", "--worker", env=env)
        assert health.returncode == 0 and health.stdout.startswith("ok: database and Temporal reachable, worker alive")
        published = await asyncio.to_thread(run_ncpi, "publish", str(report), "--anchor-now", env=env)
        assert published.returncode == 0, published.stderr
        # The report notice is being delivered (the SMTP server is slow): stop the worker now.
        assert await asyncio.to_thread(smtp.receiving.wait, 30)
        first.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(first.wait, 40)
        log = (tmp_path / "first.log").read_text()
        assert code == 0, log
        assert "shutting down" in log and "Traceback" not in log
        gone = await asyncio.to_thread(run_ncpi, "health", "--worker", env=env)
        assert gone.returncode != 0 and "no worker running here" in gone.stderr
        # The activity in flight was allowed to finish: the notice is marked sent, delivered once.
        rows = await _notifications(env)
        assert [(r.kind, r.status) for r in rows] == [("published", "sent")]

        second = start_worker(env, tmp_path / "second.log")
        await wait_for(lambda: _contains(tmp_path / "second.log", "worker running on"), what="second worker up")
        revisit = await asyncio.to_thread(run_ncpi, "revisit", inspection_id, "--by", "hmi.lead", env=env)
        assert revisit.returncode == 0, revisit.stderr

        async def all_sent():
            rows = await _notifications(env)
            kinds = [r.kind for r in rows]
            return rows if "evidence_request" in kinds and all(r.status == "sent" for r in rows) else None

        rows = await wait_for(all_sent, 60, "every notification sent")
        references = sorted(m.message["X-NCPI-Reference"] for m in smtp.messages)
        assert references == sorted(r.idempotency_key for r in rows)  # each exactly once
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
        controller.stop()


async def _contains(path: Path, text: str) -> bool:
    return path.exists() and text in path.read_text()


async def _notifications(env) -> list[Notification]:
    async with db.open_database(env["NCPI_DATABASE_URL"]) as sessions:
        async with sessions() as session:
            return list(await session.scalars(select(Notification).order_by(Notification.id)))
