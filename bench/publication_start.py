"""Publication's start-up alone (issue 15): 43 reports x 10 recommendations published by `publish_many` (as
`ncpi publish A B ...`, NCPI_PUBLISH_CONCURRENCY at a time) to one `ncpi worker` process on the dev server, against
as many bare workflow starts (one per report and per recommendation) on the same server, as the publication row
of bench/temporal_bench.py measures it; and what the workflows did to get there, read off their histories.

`python -m bench.publication_start` prints JSON:
- `projected_s`: files checked to every recommendation's row projected (the publication row's end point);
- `started_s`: to the last recommendation's first workflow task completed (on the server's clock);
- `ratio_projected`, `ratio_started`: bare starts' seconds / ours (higher is closer to bare);
- `worker_cpu_s`: the worker process's CPU time over the publication;
- `write_transactions`: the local activities that write (record_event, record_notification, project_*) in
  every history, so the start-up's transactions;
- `recommendation_history_events`: the events of the 430 recommendations' histories;
- `first_task`: percentiles (min, median, p90, max) of how long each workflow's first task waited to be picked
  up and took to run, in seconds.
Run it before and after a change in the same minute: the machine's load moves every figure."""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

from sqlalchemy import func, select
from temporalio.api.enums.v1 import EventType

from bench.common import ROOT, dev_server, our_stack
from bench.shape import local_activity_type
from bench.temporal_bench import PER_REPORT, _bare_starts_and_updates
from ncpi_workflow.app.publishing import check_file
from ncpi_workflow.forces import load_forces
from ncpi_workflow.lifecycle import inspection_workflow_id, recommendation_workflow_id
from ncpi_workflow.models import Recommendation
from ncpi_workflow.publishing import publish_many
from ncpi_workflow.settings import Settings
from tests.lifecycle_support import write_report

WRITES = {"record_event", "record_notification", "project_inspection", "project_recommendation"}


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _percentiles(values: list[float]) -> list[float]:
    values = sorted(values)
    return [round(values[int(q * (len(values) - 1))], 3) for q in (0, 0.5, 0.9, 1)] if values else []


async def bench() -> dict:
    with tempfile.TemporaryDirectory(prefix="ncpi-bench-publication-") as tmp:
        workdir = Path(tmp)
        async with dev_server() as env:
            forces = sorted(load_forces(ROOT / "config" / "forces.yaml"))
            published = date.today() - timedelta(days=1)
            files = [write_report(workdir, f, published, [(f"R{i}", "within_six_months") for i in range(1, PER_REPORT + 1)])
                     for f in forces]
            workflows = len(files) * (PER_REPORT + 1)
            concurrency = Settings().publish_concurrency
            bare = await _bare_starts_and_updates(env, workdir, workflows, workflows, 10, concurrency)
            async with our_stack(env, workdir, f"sqlite+aiosqlite:///{workdir / 'ncpi.db'}") as ours:
                checked = [check_file(ours.settings, f) for f in files]
                cpu_before = _cpu_seconds(ours.worker.pid)
                started, wall = time.perf_counter(), time.time()
                outcomes = await publish_many(ours.settings, env.client, [(Path(c.name), c.loaded) for c in checked],
                                              concurrency=concurrency)
                assert all(o.publication is not None and o.publication.started for o in outcomes), outcomes
                while True:
                    async with ours.sessions() as session:
                        done = await session.scalar(select(func.count()).select_from(Recommendation)
                                                    .where(Recommendation.projection_version > 0))
                    if done >= len(files) * PER_REPORT:
                        break
                    await asyncio.sleep(0.05)
                projected = time.perf_counter() - started
                await asyncio.sleep(1)
                worker_cpu = _cpu_seconds(ours.worker.pid) - cpu_before
                async with ours.sessions() as session:
                    recs = sorted((await session.scalars(select(Recommendation.id))).all())
                inspections = sorted({r.rsplit("-", 1)[0] for r in recs})
                writes = rec_events = 0
                last_first_task = 0.0
                waits: dict[str, list[float]] = {"inspection_wait": [], "inspection_run": [], "recommendation_wait": [],
                                                 "recommendation_run": []}
                at = lambda e: e.event_time.ToDatetime().timestamp() - wall  # noqa: E731
                ids = [(inspection_workflow_id(i), "inspection") for i in inspections]
                ids += [(recommendation_workflow_id(r), "recommendation") for r in recs]
                for workflow_id, kind in ids:
                    while True:  # publication projects the rows just before its recommendations start
                        events = list((await env.client.get_workflow_handle(workflow_id).fetch_history()).events)
                        if any(e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED for e in events):
                            break
                        await asyncio.sleep(0.2)
                    writes += sum(1 for e in events if local_activity_type(e) in WRITES)
                    first = {t: next(e for e in events if e.event_type == t) for t in (
                        EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED, EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED,
                        EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED)}
                    scheduled, began, completed = (at(e) for e in first.values())
                    waits[f"{kind}_wait"].append(began - scheduled)
                    waits[f"{kind}_run"].append(completed - began)
                    if kind == "recommendation":
                        rec_events += len(events)
                        last_first_task = max(last_first_task, completed)
    return {
        "reports": len(files), "recommendations": len(recs), "load_average": os.getloadavg(),
        "projected_s": round(projected, 2), "started_s": round(last_first_task, 2),
        "bare_starts_s": round(bare["starts_seconds"], 2),
        "ratio_projected": round(bare["starts_seconds"] / projected, 3),
        "ratio_started": round(bare["starts_seconds"] / last_first_task, 3),
        "worker_cpu_s": round(worker_cpu, 2), "write_transactions": writes, "recommendation_history_events": rec_events,
        "first_task": {k: _percentiles(v) for k, v in waits.items()},
    }


def main() -> None:
    print(json.dumps(asyncio.run(bench()), indent=2))


if __name__ == "__main__":
    main()
