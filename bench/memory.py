"""Worker memory, part by part (issue 15): where the RSS per open recommendation workflow goes.

`python -m bench.memory [--quick]` prints JSON. Every worker runs in its own process, as in
production (`ncpi worker`; the bare baseline's bench/bare_worker.py), one fresh dev server per part:

1. `bare`: bare workflows (bench/bare.py BareWorkflow, the SDK's default sandbox), each started and
   Updated once so that it sits in the worker's cache like ours: the baseline.
2. `isolated`: ours with NCPI_WORKFLOW_SANDBOX=isolated, the sandbox as shipped before this change
   (the workflow modules, workflows/, imported afresh for every workflow run).
3. `shared`: ours as shipped now (NCPI_WORKFLOW_SANDBOX=shared: workflows/ imported once, shared).
4. `small_cache`: ours as shipped with NCPI_MAX_CACHED_WORKFLOWS small (100): the workflows beyond it
   are evicted and cost nothing until their next event (which replays their history).
5. `state`: the state a recommendation workflow carries: its start input, its Query `state` (the whole
   RecommendationState) serialised, and how it grows with each progress report (the history list).
6. `history_cache`: what the worker's cache of workflows holds, per 1,000 cached: part 3 minus part 4
   over the workflows part 4 evicted; and each open workflow's history (events, bytes) that an evicted
   workflow replays at its next event.

And `sandbox_per_instance`: in this process, the CPU time and memory of creating one workflow
instance in the sandbox (what the worker does for every workflow run it starts or replays), for the
bare workflow, ours isolated, ours shared and without a sandbox.

Each `open` part reports MiB of worker RSS growth per 1,000 open workflows (recommendations and
their inspections counted alike, as the bare ones) and the worker's CPU seconds per 1,000 workflows
opened. Figures on a shared 2-core machine are indicative: the load average is recorded.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import sys
import tempfile
import time
import tracemalloc
from datetime import date, timedelta
from pathlib import Path

from sqlalchemy import func, select

from bench.common import ROOT, bare_worker, bounded as _bounded, cpu_seconds, maybe_dev_server, our_stack, rss_mib

PER_REPORT = 10
SMALL_CACHE = 100  # NCPI_MAX_CACHED_WORKFLOWS of part 4 (a fifth of the open workflows with --quick)


def load_average() -> str:
    """The 1, 5 and 15 minute load averages (as `uptime` shows them)."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def per_thousand(value: float, count: int) -> float:
    return round(value / count * 1000, 1) if count else 0.0


# ---------------------------------------------------------------------------- the sandbox, per instance


def _instance_details(cls):
    import temporalio.converter
    from temporalio import workflow
    from temporalio.api.common.v1.message_pb2 import Payloads
    from temporalio.api.failure.v1.message_pb2 import Failure
    from temporalio.worker._workflow_instance import WorkflowInstanceDetails
    from temporalio.worker.workflow_sandbox._runner import _fake_info

    return WorkflowInstanceDetails(
        payload_converter_factory=temporalio.converter.DataConverter.default._new_payload_converter,
        failure_converter_class=temporalio.converter.DataConverter.default.failure_converter_class,
        interceptor_classes=[], defn=workflow._Definition.must_from_class(cls), info=_fake_info, randomness_seed=-1,
        extern_functions={}, disable_eager_activity_execution=False, worker_level_failure_exception_types=[],
        patch_activation_callback=None, last_completion_result=Payloads(), last_failure=Failure())


def reimported_modules(instance) -> list[str]:
    """The modules a sandboxed instance executed afresh (its own copies, not the host's)."""
    importer = getattr(instance, "importer", None)
    if importer is None:
        return []
    return sorted(name for name, module in importer.new_modules.items()
                  if getattr(module, "__file__", None) and sys.modules.get(name) is not module
                  and type(module).__name__ == "module")


async def sandbox_per_instance(count: int) -> dict:
    """Create `count` workflow instances per runner and keep them: CPU ms and KiB of Python memory
    (tracemalloc, a second pass) per instance. The instances are what the worker creates for every
    workflow run it starts, and again for every evicted one it replays."""
    from temporalio import workflow
    from temporalio.worker import UnsandboxedWorkflowRunner
    from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

    from bench.bare import BareWorkflow
    from ncpi_workflow.service.worker import ISOLATED_WORKFLOW_RUNNER, WORKFLOW_RUNNER
    from workflows.inspection import InspectionWorkflow
    from workflows.recommendation import RecommendationWorkflow

    cases = {
        "bare_sdk_default_sandbox": (SandboxedWorkflowRunner(), BareWorkflow),
        "recommendation_isolated": (ISOLATED_WORKFLOW_RUNNER, RecommendationWorkflow),
        "inspection_isolated": (ISOLATED_WORKFLOW_RUNNER, InspectionWorkflow),
        "recommendation_shared": (WORKFLOW_RUNNER, RecommendationWorkflow),
        "inspection_shared": (WORKFLOW_RUNNER, InspectionWorkflow),
        "recommendation_unsandboxed": (UnsandboxedWorkflowRunner(), RecommendationWorkflow),
    }
    results = {}
    for name, (runner, cls) in cases.items():
        runner.prepare_workflow(workflow._Definition.must_from_class(cls))
        details = _instance_details(cls)
        gc.collect()
        started = time.process_time()
        kept = [runner.create_instance(details) for _ in range(count)]
        cpu = time.process_time() - started
        modules = reimported_modules(kept[0])
        del kept
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        kept = [runner.create_instance(details) for _ in range(count)]
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        del kept
        gc.collect()
        results[name] = {"cpu_ms_per_instance": round(cpu / count * 1000, 2),
                         "kib_per_instance": round(held / count / 1024, 1),
                         "mib_per_1000_instances": round(held / count * 1000 / 2**20, 1),
                         "modules_imported_per_instance": modules}
    results["instances"] = count
    results["note"] = ("CPU time and Python memory (tracemalloc) of creating one workflow instance, kept alive; "
                       "the worker creates one for every workflow run it starts and for every evicted run it replays")
    return results


# ---------------------------------------------------------------------------- open workflows, per process


async def open_bare(env, workdir: Path, workflows: int) -> dict:
    """`workflows` bare workflows started and Updated once, in a bare worker process."""
    from bench.bare import BareWorkflow

    queue = "bare-memory"
    half = workflows // 2
    async with bare_worker(env, workdir, queue) as worker:
        points = [(rss_mib(worker.pid), cpu_seconds(worker.pid))]
        handles = []
        for first, last in ((0, half), (half, workflows)):
            batch = await _bounded([env.client.start_workflow(BareWorkflow.run, id=f"bare-memory-{i}", task_queue=queue)
                                    for i in range(first, last)], 8)
            await _bounded([h.execute_update(BareWorkflow.poke, 0) for h in batch], 8)
            handles += batch
            await asyncio.sleep(0.5)
            points.append((rss_mib(worker.pid), cpu_seconds(worker.pid)))
        await _bounded([h.signal(BareWorkflow.finish) for h in handles], 16)
    return {"open_workflows": workflows, **growth(points, half, workflows)}


def growth(points: list[tuple[float, float]], half: int, total: int) -> dict:
    """From (RSS MiB, CPU s) at the start, with `half` workflows open and with `total` open: the
    growth over all, and the marginal growth of the second half (without the worker's one-off costs:
    imports on first use, the database engine, the first templates)."""
    (rss0, cpu0), (rss1, cpu1), (rss2, cpu2) = points
    return {"worker_rss_growth_mib": round(rss2 - rss0, 1),
            "rss_mib_per_1000_open_workflows": per_thousand(rss2 - rss0, total),
            "marginal_rss_mib_per_1000_open_workflows": per_thousand(rss2 - rss1, total - half),
            "worker_cpu_seconds_per_1000_workflows": per_thousand(cpu2 - cpu0, total),
            "marginal_worker_cpu_seconds_per_1000_workflows": per_thousand(cpu2 - cpu1, total - half)}


def report_files(workdir: Path, reports: int, published: date | None = None) -> list[Path]:
    """`reports` reports of PER_REPORT recommendations, one per force, then the forces again on earlier days."""
    from ncpi_workflow.forces import load_forces
    from tests.lifecycle_support import write_report

    forces = sorted(load_forces(ROOT / "config" / "forces.yaml"))
    published = published or date.today() - timedelta(days=1)
    return [write_report(workdir, forces[k % len(forces)], published - timedelta(days=k // len(forces)),
                         [(f"R{i}", "within_six_months") for i in range(1, PER_REPORT + 1)]) for k in range(reports)]


async def open_ours(env, workdir: Path, reports: int, *, sample_state: bool = False, published: date | None = None,
                    namespace: str = "default", **settings) -> dict:
    """`reports` reports published (`publish_many`, as `ncpi publish A B ...`) to an `ncpi worker`
    process with these settings, until every recommendation's first projection is written; in
    `namespace` of the dev server (each part its own: they publish the same reports)."""
    from bench.common import namespace_client
    from ncpi_workflow.app.publishing import check_file
    from ncpi_workflow.models import Recommendation
    from ncpi_workflow.publishing import publish_many
    from ncpi_workflow.settings import Settings

    workdir.mkdir(parents=True, exist_ok=True)
    files = report_files(workdir, reports, published)
    recommendations = reports * PER_REPORT
    client = env.client if namespace == "default" else await namespace_client(env, namespace)
    queue = {} if "task_queue" in settings else {"task_queue": f"ncpi-bench-{namespace}"}
    async with our_stack(env, workdir, f"sqlite+aiosqlite:///{workdir / 'ncpi.db'}", temporal_namespace=namespace,
                         **queue, **settings) as ours:
        points = [(rss_mib(ours.worker.pid), cpu_seconds(ours.worker.pid))]
        half_reports = reports // 2
        for batch, opened in ((files[:half_reports], half_reports * PER_REPORT), (files[half_reports:], recommendations)):
            checked = [check_file(ours.settings, f) for f in batch]
            outcomes = await publish_many(ours.settings, client, [(Path(c.name), c.loaded) for c in checked],
                                          concurrency=Settings().publish_concurrency)
            assert all(o.publication is not None and o.publication.started for o in outcomes), outcomes
            while True:
                async with ours.sessions() as session:
                    done = await session.scalar(
                        select(func.count()).select_from(Recommendation).where(Recommendation.projection_version > 0))
                if done >= opened:
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)
            points.append((rss_mib(ours.worker.pid), cpu_seconds(ours.worker.pid)))
        workflows = reports * (PER_REPORT + 1)
        result = {"open_recommendation_workflows": recommendations, "open_inspection_workflows": reports,
                  "open_workflows": workflows,
                  "settings": {k: str(v) for k, v in settings.items()},
                  **growth(points, half_reports * (PER_REPORT + 1), workflows)}
        if sample_state:
            ids = [o.publication.inspection_id for o in outcomes if o.publication is not None]
            result["state"] = await carried_state(client, f"{ids[0]}-R1")
            result["history"] = await history_sizes(client, ids[-1])
    return result


async def carried_state(client, recommendation_id: str, progress_reports: int = 5) -> dict:
    """Part 5: the start input and the Query `state` of one recommendation workflow, serialised as
    Temporal stores them, and their growth with each progress report (one history entry each)."""
    from ncpi_workflow.lifecycle import ProgressRequest, recommendation_workflow_id
    from ncpi_workflow.temporal import DATA_CONVERTER

    handle = client.get_workflow_handle(recommendation_workflow_id(recommendation_id))

    async def state_bytes() -> int:
        view = await handle.query("state")
        return len((await DATA_CONVERTER.encode([view]))[0].data)

    history = await handle.fetch_history()
    started = history.events[0].workflow_execution_started_event_attributes
    input_bytes = sum(len(p.data) for p in started.input.payloads)
    first = await state_bytes()
    for k in range(progress_reports):
        await handle.execute_update("submit_progress", ProgressRequest("in_progress", f"Step {k} of the plan is under way.", "bench"))
    last = await state_bytes()
    return {"start_input_bytes": input_bytes, "state_query_bytes": first,
            "state_query_bytes_after_progress": last, "progress_reports": progress_reports,
            "bytes_per_progress_report": round((last - first) / progress_reports, 1),
            "note": "the Query `state` (RecommendationView: the whole RecommendationState) as the data converter "
                    "serialises it; the state's history list gains one entry per event"}


async def history_sizes(client, inspection_id: str) -> dict:
    """Part 6, the histories an evicted workflow replays at its next event: one inspection's and its
    first recommendation's, as they stand once open."""
    from ncpi_workflow.lifecycle import inspection_workflow_id, recommendation_workflow_id

    out = {}
    for name, workflow_id in (("inspection", inspection_workflow_id(inspection_id)),
                              ("recommendation", recommendation_workflow_id(f"{inspection_id}-R1"))):
        history = await client.get_workflow_handle(workflow_id).fetch_history()
        out[name] = {"events": len(history.events), "bytes": sum(e.ByteSize() for e in history.events)}
    return out


def breakdown(parts: dict, small_cache: int) -> dict:
    """The parts put side by side: what each costs per 1,000 open workflows against the bare baseline
    (the marginal figures: the second half of the workflows opened)."""
    key = "marginal_rss_mib_per_1000_open_workflows"
    bare = parts["bare"][key]
    isolated = parts["isolated"][key]
    shared = parts["shared"][key]
    small = parts["small_cache"]
    evicted = max(0, small["open_workflows"] - small_cache)
    # What the shared part's worker would hold with as many workflows as the small cache's part opened
    # (the parts may open different counts: its growth carried on at its marginal rate), less what the
    # small cache's held.
    shared_part = parts["shared"]
    extra = small["open_workflows"] - shared_part["open_workflows"]
    cache_held = (shared_part["worker_rss_growth_mib"] + shared_part[key] * extra / 1000 - small["worker_rss_growth_mib"])
    return {
        "baseline_bare": bare,
        "ours_isolated": isolated,
        "ours_shared": shared,
        "ours_shared_small_cache": small[key],
        "sandbox_module_copies": round(isolated - shared, 1),
        "history_cache_per_1000_cached": per_thousand(cache_held, evicted),
        "isolated_over_bare": round(isolated / bare, 2) if bare else None,
        "shared_over_bare": round(shared / bare, 2) if bare else None,
        "small_cache": small_cache,
        "cpu_seconds_per_1000_workflows": {name: parts[name]["marginal_worker_cpu_seconds_per_1000_workflows"]
                                           for name in ("bare", "isolated", "shared", "small_cache")},
        "note": "marginal MiB of worker RSS per 1,000 open workflows (recommendations and inspections alike, the "
                "second half opened); sandbox_module_copies = isolated - shared; history_cache_per_1000_cached = "
                f"(shared growth, carried on at its marginal rate to small_cache's count, - small_cache's growth) per "
                f"workflow the small cache ({small_cache}) evicted",
    }


REPORTS = 40  # 400 open recommendation workflows and their 40 inspections per part (--reports to change)
# The small cache's part keeps 100 reports: its second half's growth is about the same few MiB at every
# size (the workflows beyond the cache cost next to nothing), so its figure per 1,000 depends on the count.
SMALL_CACHE_REPORTS = 100
QUICK_REPORTS = 10
INSTANCES, QUICK_INSTANCES = 100, 50  # workflow instances created per case of sandbox_per_instance
# The parts run in two branches at once, each part in its own worker process (the RSS and CPU time
# measured are each process's own): the small cache's long part beside the three others one after the other.
BRANCHES = (("small_cache",), ("bare", "isolated", "shared"))


async def bench(quick: bool, reports: int | None = None, env=None, timings: dict | None = None,
                branches: tuple[tuple[str, ...], ...] = BRANCHES, small_cache_reports: int | None = None) -> dict:
    """`env`: a dev server shared with other sections (bench/run.py: ours' parts each in a namespace of
    their own, the bare part on its own task queue), else one of its own. `timings` gets each part's
    wall time in seconds. `branches`: the parts, in groups run at the same time (each group's parts
    one after the other)."""
    reports = reports or (QUICK_REPORTS if quick else REPORTS)
    small_reports = small_cache_reports or (reports if quick else max(reports, SMALL_CACHE_REPORTS))
    timings = {} if timings is None else timings
    started = time.perf_counter()
    results: dict = {"load_average_start": load_average(), "reports": reports, "small_cache_reports": small_reports,
                     "branches": [list(b) for b in branches],
                     "sandbox_per_instance": await sandbox_per_instance(QUICK_INSTANCES if quick else INSTANCES)}
    timings["sandbox_per_instance"] = round(time.perf_counter() - started, 1)
    parts: dict = {}
    small_cache = small_reports * (PER_REPORT + 1) // 5 if quick else SMALL_CACHE
    ours = {"isolated": {"workflow_sandbox": "isolated"}, "shared": {"workflow_sandbox": "shared"},
            "small_cache": {"workflow_sandbox": "shared", "max_cached_workflows": small_cache}}
    with tempfile.TemporaryDirectory(prefix="ncpi-bench-memory-") as tmp:
        workdir = Path(tmp)
        async with maybe_dev_server(env) as env:

            async def part(name: str) -> None:
                started = time.perf_counter()
                if name == "bare":
                    parts[name] = await open_bare(env, workdir, reports * (PER_REPORT + 1))
                else:
                    parts[name] = await open_ours(env, workdir / name, small_reports if name == "small_cache" else reports,
                                                  sample_state=name == "shared",
                                                  namespace=f"bench-memory-{name.replace('_', '-')}", **ours[name])
                timings[name] = round(time.perf_counter() - started, 1)

            async def branch(names: tuple[str, ...]) -> None:
                for name in names:
                    await part(name)

            started = time.perf_counter()
            await asyncio.gather(*(branch(b) for b in branches))
            timings["parts"] = round(time.perf_counter() - started, 1)
    results["parts"] = parts
    results["state"] = parts["shared"].pop("state")
    results["history"] = parts["shared"].pop("history")
    results["breakdown"] = breakdown(parts, small_cache)
    results["load_average_end"] = load_average()
    return results


async def run(section: dict, quick: bool, env=None, timings: dict | None = None) -> None:
    """For `make bench` (bench/run.py): the figures into `section`."""
    section.update(await bench(quick, env=env, timings=timings))


def main() -> None:
    """`python -m bench.memory [--quick] [--reports N] [--small-cache-reports N] [--one-at-a-time]`."""
    arg = lambda name: int(sys.argv[sys.argv.index(name) + 1]) if name in sys.argv else None  # noqa: E731
    branches = BRANCHES if "--one-at-a-time" not in sys.argv else ((name for b in BRANCHES for name in b),)
    branches = tuple(tuple(b) for b in branches)
    timings: dict = {}
    results = asyncio.run(bench("--quick" in sys.argv, arg("--reports"), timings=timings, branches=branches,
                                small_cache_reports=arg("--small-cache-reports")))
    print(json.dumps({**results, "seconds": timings}, indent=2), flush=True)
    os._exit(0)  # the Temporal SDK can crash the interpreter at exit (sdk-python issue 300)


if __name__ == "__main__":
    main()
