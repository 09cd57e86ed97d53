"""Worker memory (issue 15): the benchmark's logic at a tiny size (bench/memory.py; no timing or
size is asserted beyond what cannot be otherwise), NCPI_MAX_CACHED_WORKFLOWS and NCPI_WORKFLOW_SANDBOX
reaching the Worker, and what makes the shared sandbox safe: workflows/ holds no state a run could
change for another, and every saved history still replays in the isolated sandbox, where a call of
a restricted function in workflow code raises."""

from __future__ import annotations

import types
from datetime import date, timedelta
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from bench import memory
from ncpi_workflow.errors import UserError
from ncpi_workflow.service.worker import ISOLATED_WORKFLOW_RUNNER, WORKFLOW_RUNNER, WORKFLOWS, running_worker, worker_options
from ncpi_workflow.settings import Settings, load_settings
from ncpi_workflow.temporal import DATA_CONVERTER
from tests.conftest import migrate

HISTORIES = sorted((Path(__file__).parent / "histories").glob("v*/*.json"))


# ---------------------------------------------------------------------------- the settings


def test_settings_default_to_the_sdk_cache_and_the_shared_sandbox(monkeypatch):
    monkeypatch.delenv("NCPI_MAX_CACHED_WORKFLOWS", raising=False)
    monkeypatch.delenv("NCPI_WORKFLOW_SANDBOX", raising=False)
    options = worker_options(Settings())
    assert options == {"workflow_runner": WORKFLOW_RUNNER, "max_cached_workflows": 1000}


def test_settings_from_the_environment_choose_the_runner_and_the_cache(monkeypatch):
    monkeypatch.setenv("NCPI_MAX_CACHED_WORKFLOWS", "100")
    monkeypatch.setenv("NCPI_WORKFLOW_SANDBOX", "isolated")
    options = worker_options(load_settings())
    assert options["max_cached_workflows"] == 100
    assert options["workflow_runner"] is ISOLATED_WORKFLOW_RUNNER


@pytest.mark.parametrize("name, value", [("NCPI_MAX_CACHED_WORKFLOWS", "-1"), ("NCPI_MAX_CACHED_WORKFLOWS", "many"),
                                         ("NCPI_MAX_CACHED_WORKFLOWS", "1000001"), ("NCPI_WORKFLOW_SANDBOX", "none")])
def test_a_bad_value_is_refused_naming_the_variable(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(UserError) as caught:
        load_settings()
    assert name in str(caught.value)


@pytest.mark.parametrize("cache, sandbox", [(7, "isolated"), (0, "shared")])
async def test_the_settings_reach_the_worker(dev_server_env, tmp_path, cache, sandbox):
    url = f"sqlite+aiosqlite:///{tmp_path / 'ncpi.db'}"
    await migrate(url)
    settings = Settings(database_url=url, task_queue=f"memory-settings-{cache}",
                        data_dir=tmp_path / "data", max_cached_workflows=cache, workflow_sandbox=sandbox)
    async with running_worker(dev_server_env.client, settings) as worker:
        config = worker.config()
        assert config["max_cached_workflows"] == cache
        assert config["workflow_runner"] is (ISOLATED_WORKFLOW_RUNNER if sandbox == "isolated" else WORKFLOW_RUNNER)


# ---------------------------------------------------------------------------- why sharing is safe


def _workflow_modules() -> list[types.ModuleType]:
    import workflows.common
    import workflows.delivery
    import workflows.inspection
    import workflows.recommendation

    return [workflows.common, workflows.delivery, workflows.inspection, workflows.recommendation]


MUTABLE = (list, dict, set, bytearray)
# Lookup tables only read, never changed (reviewed; workflows/common.py, the event's parts by activity name).
READ_ONLY = {"workflows.common._EVENT_PARTS", "workflows.common._EVENT_LISTS"}


def _domain_objects() -> set[int]:
    """Objects of the domain package (ncpi_workflow), imported into workflow code: shared by every run
    before this change too (passed through), and not workflow code's to change."""
    import sys

    return {id(value) for name, module in list(sys.modules.items()) if name.startswith("ncpi_workflow") and module
            for value in vars(module).values()}


def test_workflow_modules_hold_no_state_a_run_could_change():
    """Shared by every run (NCPI_WORKFLOW_SANDBOX=shared), module globals and class attributes of the
    workflow code must be immutable: a list or dict there would carry one run's changes into another.
    (A read-only lookup table may be a dict: listed in READ_ONLY once reviewed.)"""
    domain = _domain_objects()
    found = []
    for module in _workflow_modules():
        for name, value in vars(module).items():
            qualified = f"{module.__name__}.{name}"
            if isinstance(value, MUTABLE) and not name.startswith("__") and id(value) not in domain \
                    and qualified not in READ_ONLY:
                found.append(qualified)
            if isinstance(value, type) and value.__module__ == module.__name__:
                for attribute, member in vars(value).items():
                    if isinstance(member, MUTABLE) and not attribute.startswith("__"):
                        found.append(f"{qualified}.{attribute}")
    assert not found, f"mutable module or class state in workflow code: {found}"


def test_the_shared_runner_passes_the_workflow_code_through_and_the_isolated_one_does_not():
    assert "workflows" in WORKFLOW_RUNNER.restrictions.passthrough_modules
    assert "workflows" not in ISOLATED_WORKFLOW_RUNNER.restrictions.passthrough_modules
    assert not WORKFLOW_RUNNER.restrictions.passthrough_all_modules  # third-party modules are still not shared


@pytest.mark.parametrize("path", HISTORIES, ids=[f"{p.parent.name}/{p.stem}" for p in HISTORIES])
async def test_saved_histories_replay_in_the_isolated_sandbox(path):
    """The check the per-run import gave, kept: a restricted call (datetime.now, random, I/O) added to
    workflow code raises here even though the shared sandbox would let it through."""
    replayer = Replayer(workflows=WORKFLOWS, workflow_runner=ISOLATED_WORKFLOW_RUNNER, data_converter=DATA_CONVERTER)
    history = WorkflowHistory.from_json(path.stem, path.read_text())
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None, f"{path}: {result.replay_failure!r}"


# ---------------------------------------------------------------------------- the benchmark's logic


async def test_sandbox_per_instance_counts_the_module_copies():
    figures = await memory.sandbox_per_instance(3)
    assert figures["instances"] == 3
    assert figures["recommendation_isolated"]["modules_imported_per_instance"] == [
        "workflows", "workflows.common", "workflows.recommendation"]
    assert "workflows.inspection" in figures["inspection_isolated"]["modules_imported_per_instance"]
    assert figures["recommendation_shared"]["modules_imported_per_instance"] == []
    assert figures["inspection_shared"]["modules_imported_per_instance"] == []
    assert figures["recommendation_unsandboxed"]["modules_imported_per_instance"] == []
    for name in ("recommendation_isolated", "recommendation_shared", "bare_sdk_default_sandbox"):
        assert figures[name]["cpu_ms_per_instance"] >= 0 and figures[name]["kib_per_instance"] > 0
    # Re-executing two modules of workflow code holds more than sharing them, whatever the machine.
    assert figures["recommendation_isolated"]["kib_per_instance"] > figures["recommendation_shared"]["kib_per_instance"]


def test_growth_takes_the_second_half_as_the_marginal_cost():
    figures = memory.growth([(100.0, 1.0), (150.0, 3.0), (170.0, 4.0)], half=50, total=100)
    assert figures == {"worker_rss_growth_mib": 70.0, "rss_mib_per_1000_open_workflows": 700.0,
                       "marginal_rss_mib_per_1000_open_workflows": 400.0, "worker_cpu_seconds_per_1000_workflows": 30.0,
                       "marginal_worker_cpu_seconds_per_1000_workflows": 20.0}


def test_breakdown_puts_the_parts_against_the_baseline():
    def part(marginal: float, grown: float, workflows: int = 1100, cpu: float = 1.0) -> dict:
        return {"marginal_rss_mib_per_1000_open_workflows": marginal, "worker_rss_growth_mib": grown,
                "open_workflows": workflows, "marginal_worker_cpu_seconds_per_1000_workflows": cpu}

    parts = {"bare": part(100.0, 110.0), "isolated": part(600.0, 660.0, cpu=40.0), "shared": part(250.0, 280.0, cpu=10.0),
             "small_cache": part(80.0, 80.0, cpu=12.0)}
    figures = memory.breakdown(parts, small_cache=100)
    assert figures["sandbox_module_copies"] == 350.0
    assert figures["history_cache_per_1000_cached"] == 200.0  # (280 - 80) MiB over the 1,000 evicted
    assert figures["isolated_over_bare"] == 6.0 and figures["shared_over_bare"] == 2.5
    assert figures["cpu_seconds_per_1000_workflows"] == {"bare": 1.0, "isolated": 40.0, "shared": 10.0, "small_cache": 12.0}


def test_breakdown_when_the_small_cache_part_opens_more_workflows_than_the_shared_one():
    """`make bench` opens 440 workflows per part but 1,100 for the small cache: the shared part's growth
    is carried on to 1,100 at its marginal rate before the small cache's is taken from it."""
    def part(marginal: float, grown: float, workflows: int) -> dict:
        return {"marginal_rss_mib_per_1000_open_workflows": marginal, "worker_rss_growth_mib": grown,
                "open_workflows": workflows, "marginal_worker_cpu_seconds_per_1000_workflows": 1.0}

    parts = {"bare": part(100.0, 50.0, 440), "isolated": part(600.0, 270.0, 440), "shared": part(250.0, 120.0, 440),
             "small_cache": part(10.0, 80.0, 1100)}
    figures = memory.breakdown(parts, small_cache=100)
    assert figures["history_cache_per_1000_cached"] == 205.0  # (120 + 250 x 0.66 - 80) MiB over the 1,000 evicted


async def test_open_ours_at_a_tiny_size_measures_every_part(dev_server_env, tmp_path):
    """Two reports to an `ncpi worker` process of the shared sandbox and a cache of 5: the workflows open,
    the growth figures, the state's size growing with progress reports, the histories' sizes."""
    # A day no other test publishes on, so the workflow IDs are this test's on the shared server.
    published = date.today() - timedelta(days=41)
    figures = await memory.open_ours(dev_server_env, tmp_path / "ours", 2, sample_state=True, published=published,
                                     task_queue="memory-bench-tiny", workflow_sandbox="shared", max_cached_workflows=5)
    assert figures["open_recommendation_workflows"] == 20 and figures["open_workflows"] == 22
    assert figures["settings"] == {"task_queue": "memory-bench-tiny", "workflow_sandbox": "shared", "max_cached_workflows": "5"}
    for key in ("worker_rss_growth_mib", "rss_mib_per_1000_open_workflows", "marginal_rss_mib_per_1000_open_workflows",
                "worker_cpu_seconds_per_1000_workflows", "marginal_worker_cpu_seconds_per_1000_workflows"):
        assert isinstance(figures[key], float)
    assert figures["worker_cpu_seconds_per_1000_workflows"] > 0
    state = figures["state"]
    assert state["start_input_bytes"] > 0 and state["progress_reports"] == 5
    assert state["state_query_bytes_after_progress"] > state["state_query_bytes"] > 0  # the history list grew
    history = figures["history"]
    assert history["inspection"]["events"] > 0 and history["recommendation"]["bytes"] > 0


def test_bench_table_rows_show_each_part_against_its_baseline():
    from bench.run import memory_rows

    instance = lambda cpu, kib: {"cpu_ms_per_instance": cpu, "kib_per_instance": kib}  # noqa: E731
    parts = {"parts": {"shared": {"open_workflows": 1100}},
             "breakdown": {"baseline_bare": 100.0, "ours_isolated": 600.0, "ours_shared": 250.0, "ours_shared_small_cache": 80.0,
                           "small_cache": 100},
             "sandbox_per_instance": {"bare_sdk_default_sandbox": instance(6.0, 60.0), "recommendation_isolated": instance(24.0, 229.0),
                                      "recommendation_shared": instance(0.5, 12.0), "inspection_isolated": instance(35.0, 350.0),
                                      "inspection_shared": instance(0.4, 12.0)},
             "state": {"state_query_bytes": 1113, "bytes_per_progress_report": 136.2, "start_input_bytes": 2392}}
    rows = memory_rows(parts)
    assert len(rows) == 8 and all(r.startswith("| ") and r.endswith(" |") and r.count(" | ") == 3 for r in rows)
    assert "600.0 MiB per 1,000 | bare workflows: 100.0 MiB per 1,000 | 0.167 |" in rows[0]
    assert "NCPI_MAX_CACHED_WORKFLOWS=100" in rows[2]
    assert "recommendation workflow instance, isolated sandbox | 24.0 ms CPU, 229.0 KiB" in rows[3]
    assert memory_rows({}) == []
