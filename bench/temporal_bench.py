"""Benchmarks against a real Temporal dev server, each with a bare-Temporal baseline run in the
same invocation on the same server: lifecycle throughput (bench/lifecycle.py), publication of a
batch of reports, Update latency with 1,000 open recommendation workflows, and worker memory.

`python -m bench.temporal_bench [--quick]` prints JSON; `make bench` gathers every benchmark.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

from sqlalchemy import func, select
from temporalio.service import RPCError

from bench import lifecycle
from bench.bare import BareWorkflow
from bench.common import ROOT, bare_worker, bounded as _bounded, maybe_dev_server, our_stack, rss_mib
from ncpi_workflow.forces import load_forces
from ncpi_workflow.lifecycle import (
    DecisionRequest,
    EvidenceRequestInput,
    TriggerRevisitRequest,
    inspection_workflow_id,
    recommendation_workflow_id,
)
from ncpi_workflow.models import Recommendation
from ncpi_workflow.app.publishing import check_file
from ncpi_workflow.publishing import publish_many
from ncpi_workflow.settings import Settings
from tests.lifecycle_support import write_report

PER_REPORT = 10
LATENCY_SAMPLE = 100  # recommendations whose evidence and decision are timed, one after the other


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"p50_ms": round(pick(0.50) * 1000, 2), "p95_ms": round(pick(0.95) * 1000, 2), "p99_ms": round(pick(0.99) * 1000, 2),
            "samples": len(samples)}


async def _bare_starts_and_updates(env, workdir: Path, timed_starts: int, open_workflows: int, samples: int,
                                   concurrency: int) -> dict:
    """Bare workflows on the same server, with a bare worker in its own process: `timed_starts`
    started from one client, `concurrency` at a time (the publication baseline: the bound
    `ncpi publish A B ...` has), the rest to `open_workflows` at once;
    the worker's RSS growth; then `samples` bare Updates timed one by one: the Update that does nothing,
    then the same-work one (`decide`: one local activity writing a decision's rows in one transaction,
    on SQLite as ours here, then the answer)."""
    queue = "bare"
    database_url = f"sqlite+aiosqlite:///{workdir / 'bare-updates.db'}"
    async with bare_worker(env, workdir, queue, database_url=database_url) as worker:
        rss_before = rss_mib(worker.pid)
        start = time.perf_counter()
        handles = await _bounded(
            [env.client.start_workflow(BareWorkflow.run, id=f"bare-{i}", task_queue=queue) for i in range(timed_starts)], concurrency)
        starts_seconds = time.perf_counter() - start
        handles += await _bounded(
            [env.client.start_workflow(BareWorkflow.run, id=f"bare-{i}", task_queue=queue) for i in range(timed_starts, open_workflows)], 8)
        # One Update each, so that every workflow has run and sits in the worker's cache like ours.
        await _bounded([h.execute_update(BareWorkflow.poke, 0) for h in handles], 8)
        rss_growth = rss_mib(worker.pid) - rss_before
        latencies = []
        for handle in handles[-samples:]:
            t0 = time.perf_counter()
            await handle.execute_update(BareWorkflow.poke, 1)
            latencies.append(time.perf_counter() - t0)
        same_work = []
        for handle in handles[-samples:]:
            t0 = time.perf_counter()
            await handle.execute_update(BareWorkflow.decide, f"{handle.id}/decision")
            same_work.append(time.perf_counter() - t0)
        await _bounded([h.signal(BareWorkflow.finish) for h in handles], 16)
    from bench.bare_work import count_rows

    rows = await count_rows(database_url)
    assert rows["bare_outbox"] == len(same_work), rows  # each decision wrote its rows once
    return {"starts_seconds": starts_seconds, "update": percentiles(latencies),
            "update_same_work": {**percentiles(same_work), "rows": rows},
            "rss_mib_per_1000_open_workflows": round(rss_growth / open_workflows * 1000, 1)}


async def _publication_latency_memory(env, workdir: Path, quick: bool) -> dict:
    """Ours with `ncpi worker` in its own process, as in production, on SQLite and the loopback SMTP capture."""
    forces = sorted(load_forces(ROOT / "config" / "forces.yaml"))
    timed_reports = 10 if quick else len(forces)  # the batch: one report per force
    total_reports = 10 if quick else 100  # 1,000 open recommendation workflows
    published = date.today() - timedelta(days=1)
    files = []
    for k in range(total_reports):
        # Beyond one per force, the same forces again, published on earlier days.
        day = published - timedelta(days=k // len(forces))
        files.append(write_report(workdir, forces[k % len(forces)], day,
                                  [(f"R{i}", "within_six_months") for i in range(1, PER_REPORT + 1)]))
    inspection_ids = [f"{f.stem.split('-', 1)[0].upper()}-{f.stem.split('-', 1)[1]}" for f in files]
    open_recommendations = total_reports * PER_REPORT
    sample = min(LATENCY_SAMPLE, open_recommendations)
    concurrency = Settings().publish_concurrency  # NCPI_PUBLISH_CONCURRENCY, as `ncpi publish` has it
    bare = await _bare_starts_and_updates(env, workdir, timed_reports * (PER_REPORT + 1), total_reports * (PER_REPORT + 1), sample,
                                          concurrency)

    results: dict = {}
    async with our_stack(env, workdir, f"sqlite+aiosqlite:///{workdir / 'ncpi.db'}") as ours:
        settings, sessions, worker = ours.settings, ours.sessions, ours.worker
        rss_before = rss_mib(worker.pid)

        async def projected(count: int) -> None:
            # Every workflow started: each recommendation's projection has been written once.
            while True:
                async with sessions() as session:
                    done = await session.scalar(
                        select(func.count()).select_from(Recommendation).where(Recommendation.projection_version > 0))
                if done >= count:
                    return
                await asyncio.sleep(0.05)

        async def publish_all(batch: list[Path]) -> None:
            # As `ncpi publish A B ...` does: every file checked, then publish_many (one engine, one client, bounded).
            checked = [check_file(settings, f) for f in batch]
            outcomes = await publish_many(settings, env.client, [(Path(c.name), c.loaded) for c in checked],
                                          concurrency=concurrency)
            assert all(o.publication is not None and o.publication.started for o in outcomes), outcomes

        async def started_at(workflow_id: str) -> float:
            # When the server created the workflow (its first event), as a bare start's RPC returns then.
            while True:
                try:
                    history = await env.client.get_workflow_handle(workflow_id).fetch_history()
                    return history.events[0].event_time.ToNanoseconds() / 1e9
                except RPCError:  # not started yet: the inspection projects the rows just before it starts them
                    await asyncio.sleep(0.05)

        start, start_wall = time.perf_counter(), time.time()
        await publish_all(files[:timed_reports])
        await projected(timed_reports * PER_REPORT)
        projected_elapsed = time.perf_counter() - start
        timed_ids = [recommendation_workflow_id(f"{i}-R{n}") for i in inspection_ids[:timed_reports]
                     for n in range(1, PER_REPORT + 1)]
        last_started = max(await _bounded([started_at(w) for w in timed_ids], 16))
        # To every recommendation started and projected (the rows are written a moment before the starts).
        elapsed = max(projected_elapsed, last_started - start_wall)
        results["publication"] = {
            "reports": timed_reports, "recommendations": timed_reports * PER_REPORT, "seconds": round(elapsed, 2),
            "per_recommendation_ms": round(elapsed / (timed_reports * PER_REPORT) * 1000, 1),
            "projected_seconds": round(projected_elapsed, 2),
            "baseline_bare_starts_seconds": round(bare["starts_seconds"], 2),
            "ratio": round(bare["starts_seconds"] / elapsed, 3),
            "concurrency": concurrency,
            "ratio_means": f"bare starts of as many workflows (one per report and one per recommendation) from one client, "
                           f"{concurrency} at a time / ours, files checked to every workflow started and projected "
                           "(higher is closer to bare)",
        }
        await publish_all(files[timed_reports:])
        await projected(open_recommendations)
        grown = rss_mib(worker.pid) - rss_before
        results["memory"] = {
            "open_recommendation_workflows": open_recommendations,
            "open_inspection_workflows": total_reports,
            "worker_rss_growth_mib": round(grown, 1),
            "rss_mib_per_1000_open_recommendation_workflows": round(grown / open_recommendations * 1000, 1),
            "baseline_bare_rss_mib_per_1000_open_workflows": bare["rss_mib_per_1000_open_workflows"],
            # What `ncpi worker` ran with (its defaults): bench/memory.py measures the parts one by one.
            "workflow_sandbox": settings.workflow_sandbox, "max_cached_workflows": settings.max_cached_workflows,
            "note": "RSS growth of the `ncpi worker` process (and of the bare worker's process) from started to "
                    "every workflow open; ours counts the inspection workflows too (one per 10 recommendations)",
        }
        # The revisit opens for the sampled recommendations' inspections and asks for evidence; then
        # the force's evidence and the inspectorate's decision are timed, one Update at a time.
        sampled_inspections = inspection_ids[-(sample // PER_REPORT):]
        for inspection_id in sampled_inspections:
            await env.client.get_workflow_handle(inspection_workflow_id(inspection_id)).execute_update(
                "trigger_revisit", TriggerRevisitRequest(by="bench"))
        sampled = [f"{i}-R{n}" for i in sampled_inspections for n in range(1, PER_REPORT + 1)]
        while True:
            async with sessions() as session:
                asked = await session.scalar(select(func.count()).select_from(Recommendation).where(
                    Recommendation.id.in_(sampled), Recommendation.phase == "evidence_requested"))
            if asked == len(sampled):
                break
            await asyncio.sleep(0.1)
        evidence_samples, decision_samples = [], []
        for rec_id in sampled:
            handle = env.client.get_workflow_handle(recommendation_workflow_id(rec_id))
            evidence = EvidenceRequestInput(filename=f"{rec_id}.pdf", sha256="ab" * 32, size_bytes=10,
                                            storage_path="/dev/null", content_type="application/pdf", by="bench")
            t0 = time.perf_counter()
            await handle.execute_update("submit_evidence", evidence)
            evidence_samples.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            await handle.execute_update("record_decision", DecisionRequest("achieved", "bench", "bench"))
            decision_samples.append(time.perf_counter() - t0)
        results["update_latency"] = {
            "open_recommendation_workflows": open_recommendations,
            "submit_evidence": percentiles(evidence_samples),
            "record_decision": percentiles(decision_samples),
            "baseline_bare_update": bare["update"],
            "baseline_same_work_update": bare["update_same_work"],
        }
        workflow_ids = [inspection_workflow_id(i) for i in inspection_ids]
        workflow_ids += [recommendation_workflow_id(f"{i}-R{n}") for i in inspection_ids for n in range(1, PER_REPORT + 1)]
        await _bounded([_terminate(env.client, w) for w in workflow_ids], 16)
    return results


async def _terminate(client, workflow_id: str) -> None:
    try:
        await client.get_workflow_handle(workflow_id).terminate(reason="benchmark finished")
    except RPCError:
        pass  # already ended


async def bench(quick: bool, env=None, cluster=None, timings: dict | None = None) -> dict:
    """`env`, `cluster`: a dev server and a PostgreSQL cluster shared with other sections (bench/run.py),
    else their own; `timings` gets each part's wall time in seconds."""
    timings = {} if timings is None else timings
    with tempfile.TemporaryDirectory(prefix="ncpi-bench-temporal-") as tmp:
        workdir = Path(tmp)
        async with maybe_dev_server(env) as env:
            started = time.perf_counter()
            results = {"lifecycle": await lifecycle.bench(env, workdir, quick, cluster)}
            timings["lifecycle"] = round(time.perf_counter() - started, 1)
            started = time.perf_counter()
            (workdir / "publication").mkdir()
            results.update(await _publication_latency_memory(env, workdir / "publication", quick))
            timings["publication_updates_memory"] = round(time.perf_counter() - started, 1)
    return results


def main() -> None:
    print(json.dumps(asyncio.run(bench("--quick" in sys.argv)), indent=2))


if __name__ == "__main__":
    main()
