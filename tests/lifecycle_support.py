"""Helpers for lifecycle tests: a worker on its own task queue and database, and readers of what it recorded."""

from __future__ import annotations

import itertools
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path
from typing import AsyncIterator

from sqlalchemy import select

from ncpi_workflow import db
from ncpi_workflow.formatting import LONDON
from ncpi_workflow.lifecycle import inspection_workflow_id, recommendation_workflow_id
from ncpi_workflow.models import Notification
from ncpi_workflow.settings import Settings
from tests.conftest import ROOT, migrate
from worker import running_worker

CUMBRIA = ROOT / "examples" / "cumbria-2017.yaml"
_queues = itertools.count(1)


@dataclass
class Harness:
    env: object
    settings: Settings
    sessions: object
    smtp: object = None
    """The loopback SMTP server's handler: `.messages` holds what it received."""
    smtp_controller: object = None
    anchor: datetime | None = None
    published_at: datetime | None = None

    @property
    def client(self):
        return self.env.client

    def start_smtp(self) -> None:
        """Bring the loopback SMTP server up (again) on the configured port."""
        from ncpi_workflow.smtp_capture import start_capture

        self.smtp_controller, self.smtp = start_capture(port=self.settings.smtp_port)

    def stop_smtp(self) -> None:
        if self.smtp_controller is not None:
            self.smtp_controller.stop()
            self.smtp_controller = None

    def inspection(self, inspection_id: str):
        return self.client.get_workflow_handle(inspection_workflow_id(inspection_id))

    def recommendation(self, recommendation_id: str):
        return self.client.get_workflow_handle(recommendation_workflow_id(recommendation_id))

    async def notifications(self) -> list[Notification]:
        async with self.sessions() as session:
            rows = await session.scalars(select(Notification).order_by(Notification.scheduled_for, Notification.id))
            return list(rows)


@asynccontextmanager
async def harness(env, tmp_path: Path, database_url: str | None = None, smtp_up: bool = True, **overrides) -> AsyncIterator[Harness]:
    """A worker on its own task queue, database and loopback SMTP server (down at first if smtp_up is False)."""
    from tests.postgres import free_port

    url = database_url or f"sqlite+aiosqlite:///{tmp_path / 'ncpi.db'}"
    await migrate(url)  # db.upgrade; a new SQLite file is a copy of the session's migrated template
    settings = Settings(
        database_url=url,
        task_queue=f"ncpi-test-{next(_queues)}",
        data_dir=tmp_path / "data",
        smtp_host="127.0.0.1",
        smtp_port=free_port(),
        **overrides,
    )
    async with db.open_database(url) as sessions:
        h = Harness(env, settings, sessions)
        if smtp_up:
            h.start_smtp()
        try:
            async with running_worker(env.client, settings):
                try:
                    yield h
                finally:
                    # Terminate while the worker still runs: an activity abandoned by a stopped worker
                    # would hold the time-skipping server's clock until its timeout.
                    await terminate_all(h)
        finally:
            h.stop_smtp()


async def terminate_all(h: Harness) -> None:
    """Stop every workflow this test started, so none lingers on the shared server."""
    from ncpi_workflow.models import Inspection, Recommendation

    async with h.sessions() as session:
        ids = [inspection_workflow_id(i) for i in (await session.scalars(select(Inspection.id))).all()]
        ids += [recommendation_workflow_id(r) for r in (await session.scalars(select(Recommendation.id))).all()]
    for workflow_id in ids:
        try:
            await h.client.get_workflow_handle(workflow_id).terminate(reason="test finished")
        except Exception:  # already closed
            pass


def write_report(folder: Path, force: str, published: date, recommendations: list[tuple[str, str]], name: str | None = None) -> Path:
    """A small valid report for one force, with the given (ref, timeframe) recommendations."""
    import yaml

    fieldwork_end = published - timedelta(days=60)
    document = {
        "format_version": 1,
        "force": force,
        "programme": "NCPI",
        "title": f"Test inspection of {force}",
        "source_url": "https://www.justiceinspectorates.gov.uk/hmicfrs/",
        "illustrative": True,
        "fieldwork": {"start": (fieldwork_end - timedelta(days=11)).isoformat(), "end": fieldwork_end.isoformat()},
        "published": published.isoformat(),
        "findings": [{"ref": "C1", "kind": "concern", "text": "A concern."}],
        "recommendations": [
            {"ref": ref, "text": f"Recommendation {ref}.", "timeframe": timeframe, "answers": "C1", "illustrative": True}
            for ref, timeframe in recommendations
        ],
    }
    path = folder / (name or f"{force.lower()}-{published.isoformat()}.yaml")
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def local_date(instant: datetime) -> date:
    from zoneinfo import ZoneInfo

    return instant.astimezone(ZoneInfo("Europe/London")).date()


def noon(day: date) -> datetime:
    """Noon (Europe/London) of `day`, in UTC: the instant a back-dated action is recorded at
    (`occurred_instant`), and the hour the back-dating and adoption tests give the days they name."""
    return datetime.combine(day, time(12), tzinfo=LONDON).astimezone(timezone.utc)


def utc(instant: datetime) -> datetime:
    """A stored instant in UTC: SQLite gives it back naive (it is UTC), PostgreSQL aware."""
    return instant.replace(tzinfo=timezone.utc) if instant.tzinfo is None else instant.astimezone(timezone.utc)


def long(day: date) -> str:
    """A date as the pages and the CLI write it: 1 March 2017."""
    return f"{day.day} {day:%B %Y}"


async def skip_to(h: Harness, calendar_instant: datetime) -> None:
    """Let the time-skipping server run the clock forward to a calendar instant of the report.

    In steps of at most three weeks: each step is one RPC that lasts as long as the workflows take to
    work through that stretch, and a busy machine must not push one past its timeout."""
    target = h.anchor + (calendar_instant - h.published_at)
    while (now := await h.env.get_current_time()) < target:
        await h.env.sleep(min(target - now, timedelta(days=21)))
