"""Time the all-forces dashboard's aggregate query over a synthetic load (not a test; for bench/).

    .venv/bin/python -m tests.web.dashboard_load sqlite+aiosqlite:////tmp/dash.db 10000

loads 10,000 inspections of 10 recommendations (100,000) into an empty database with their
deadlines, random phases, then prints the query's p50/p95 over 20 runs against a bare count.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from datetime import date, timedelta

from sqlalchemy import insert, text

from ncpi_workflow import db
from ncpi_workflow.app import read_models
from ncpi_workflow.forces import load_forces
from ncpi_workflow.models import Deadline, Inspection, Recommendation
from ncpi_workflow.store import load_reference_forces
from tests.conftest import ROOT

TODAY = date(2026, 6, 15)


def synthetic(inspections: int, seed: int = 1):
    rnd = random.Random(seed)
    codes = list(load_forces(ROOT / "config" / "forces.yaml"))
    insps, recs, clocks = [], [], []
    for n in range(inspections):
        code = codes[n % len(codes)]
        published = TODAY - timedelta(days=rnd.randint(0, 900))
        iid = f"{code}-{published.isoformat()}-{n}"[:40]
        insps.append(dict(id=iid, force_code=code, programme="NCPI", title="t", source_url="https://example.org",
                          fieldwork_start=published, fieldwork_end=published, published_on=published, illustrative=False,
                          report_sha256="0" * 64, workflow_id=None, cycle=1, projection_version=1,
                          phase=rnd.choice(["following_up", "revisit_open", "closed"])))
        for key in ("action_plan", "pcc_response", "revisit_by"):
            due = published + timedelta(days=60)
            clocks.append(dict(inspection_id=iid, recommendation_id=None, key=key, kind=key, cycle=1,
                               original_due=due, current_due=due, met_at=None))
        for r in range(1, 11):
            rid = f"{iid}-R{r}"
            phase = rnd.choice(["force_notified", "in_progress", "evidence_requested", "under_review", "closed"])
            recs.append(dict(id=rid, inspection_id=iid, ref=f"R{r}", text="x", timeframe="within_three_months", phase=phase,
                             register_status="awaiting review", cycle=1, projection_version=1))
            due = published + timedelta(days=90)
            clocks.append(dict(inspection_id=iid, recommendation_id=rid, key=f"recommendation:R{r}", kind="recommendation",
                               cycle=1, original_due=due, current_due=due, met_at=None))
            if phase == "evidence_requested":
                due = published + timedelta(days=100)
                clocks.append(dict(inspection_id=iid, recommendation_id=rid, key=f"evidence:R{r}", kind="evidence",
                                   cycle=1, original_due=due, current_due=due, met_at=None))
    return insps, recs, clocks


async def main(url: str, inspections: int) -> None:
    await db.upgrade(url)
    async with db.open_database(url) as sessions:
        async with sessions.begin() as session:
            await load_reference_forces(session, load_forces(ROOT / "config" / "forces.yaml"))
            for model, rows in zip((Inspection, Recommendation, Deadline), synthetic(inspections)):
                for i in range(0, len(rows), 5000):
                    await session.execute(insert(model), rows[i:i + 5000])
        async with sessions.begin() as session:
            await session.execute(text("ANALYZE"))
        times = []
        for _ in range(20):
            start = time.perf_counter()
            await read_models.dashboard(sessions, today=TODAY)
            times.append((time.perf_counter() - start) * 1000)
        async with sessions() as session:
            start = time.perf_counter()
            await session.execute(text("SELECT count(*) FROM recommendations"))
            bare = (time.perf_counter() - start) * 1000
    times.sort()
    print(f"{url.split(':', 1)[0]}: {inspections * 10:,} recommendations: dashboard p50 {times[10]:.0f} ms, "
          f"p95 {times[18]:.0f} ms; bare count {bare:.0f} ms")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 10_000))
