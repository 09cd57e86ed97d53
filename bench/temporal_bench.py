"""Benchmarks against a real Temporal dev server, each with a bare-Temporal baseline run in the
same invocation: publication of a batch of reports, Update latency, and worker memory.

`python -m bench.temporal_bench [--quick]` prints JSON; `make bench` gathers every benchmark.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

from temporalio.worker import Worker

from bench.bare import BareWorkflow
from ncpi_workflow.forces import load_forces
from ncpi_workflow.lifecycle import (
    DecisionRequest,
    EvidenceRequestInput,
    TriggerRevisitRequest,
    inspection_workflow_id,
    recommendation_workflow_id,
)
from ncpi_workflow.publishing import publish
from ncpi_workflow.temporal import DATA_CONVERTER, FORCE_CODE, NEXT_DEADLINE, PHASE, PROGRAMME
from tests.lifecycle_support import harness, write_report

ROOT = Path(__file__).resolve().parent.parent


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"p50_ms": round(pick(0.50) * 1000, 2), "p95_ms": round(pick(0.95) * 1000, 2), "p99_ms": round(pick(0.99) * 1000, 2)}


async def bench(quick: bool) -> dict:
    from temporalio.testing import WorkflowEnvironment

    forces = sorted(load_forces(ROOT / "config" / "forces.yaml"))
    per_report = 10
    reports = 10 if quick else 43
    results: dict = {}
    temporal = str(Path(sys.executable).parent / "temporal")
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        env = await WorkflowEnvironment.start_local(
            dev_server_existing_path=temporal, data_converter=DATA_CONVERTER, ui=False,
            dev_server_database_filename=str(tmp_path / "temporal.db"),
            search_attributes=[FORCE_CODE, PROGRAMME, PHASE, NEXT_DEADLINE],
        )
        try:
            # Baseline first: bare workflows started and poked on the same server, own worker.
            async with Worker(env.client, task_queue="bare", workflows=[BareWorkflow]):
                n = reports * (per_report + 1)
                start = time.perf_counter()
                handles = [await env.client.start_workflow(BareWorkflow.run, id=f"bare-{i}", task_queue="bare") for i in range(n)]
                bare_start = time.perf_counter() - start
                samples = []
                for handle in handles:
                    t0 = time.perf_counter()
                    await handle.execute_update(BareWorkflow.poke, 1)
                    samples.append(time.perf_counter() - t0)
                bare_update = percentiles(samples)
                for handle in handles:
                    await handle.signal(BareWorkflow.finish)

            published = date.today() - timedelta(days=1)
            files = [
                write_report(tmp_path, code, published, [(f"R{i}", "within_six_months") for i in range(1, per_report + 1)])
                for code in forces[:reports]
            ]
            rss_before = rss_mib()
            async with harness(env, tmp_path) as h:
                start = time.perf_counter()
                for file in files:
                    await publish(h.settings, h.client, file)
                # Every workflow started: each recommendation's projection has been written once.
                from sqlalchemy import func, select

                from ncpi_workflow.models import Recommendation

                while True:
                    async with h.sessions() as session:
                        projected = await session.scalar(
                            select(func.count()).select_from(Recommendation).where(Recommendation.projection_version > 0)
                        )
                    if projected == reports * per_report:
                        break
                    await asyncio.sleep(0.05)
                elapsed = time.perf_counter() - start
                open_workflows = reports * (per_report + 1)
                results["publication"] = {
                    "reports": reports, "recommendations": reports * per_report, "seconds": round(elapsed, 2),
                    "per_recommendation_ms": round(elapsed / (reports * per_report) * 1000, 1),
                    "baseline_bare_starts_seconds": round(bare_start, 2),
                    "ratio_bare_to_ours": round(bare_start / elapsed, 3),
                }
                results["memory"] = {
                    "open_workflows": open_workflows,
                    "worker_rss_growth_mib": round(rss_mib() - rss_before, 1),
                    "rss_mib_per_1000_open_workflows": round((rss_mib() - rss_before) / open_workflows * 1000, 1),
                    "note": "in-process worker; includes the SQLite engine and SMTP capture",
                }
                # Update latency: the revisit opens (evidence requested), then evidence and decision.
                evidence_samples, decision_samples = [], []
                for code in forces[:reports]:
                    inspection_id = f"{code}-{published.isoformat()}"
                    await h.client.get_workflow_handle(inspection_workflow_id(inspection_id)).execute_update(
                        "trigger_revisit", TriggerRevisitRequest(by="bench"))
                await asyncio.sleep(1)
                for code in forces[:reports]:
                    for i in range(1, per_report + 1):
                        rec = recommendation_workflow_id(f"{code}-{published.isoformat()}-R{i}")
                        handle = h.client.get_workflow_handle(rec)
                        evidence = EvidenceRequestInput(filename=f"{rec}.pdf", sha256=f"{i:064x}", size_bytes=10,
                                                        storage_path="/dev/null", content_type="application/pdf", by="bench")
                        t0 = time.perf_counter()
                        await handle.execute_update("submit_evidence", evidence)
                        evidence_samples.append(time.perf_counter() - t0)
                        t0 = time.perf_counter()
                        await handle.execute_update("record_decision", DecisionRequest("achieved", "bench", "bench"))
                        decision_samples.append(time.perf_counter() - t0)
                results["update_latency"] = {
                    "open_workflows": open_workflows,
                    "submit_evidence": percentiles(evidence_samples),
                    "record_decision": percentiles(decision_samples),
                    "baseline_bare_update": bare_update,
                }
        finally:
            await env.shutdown()
    return results


def main() -> None:
    quick = "--quick" in sys.argv
    print(json.dumps(asyncio.run(bench(quick)), indent=2))


if __name__ == "__main__":
    main()
