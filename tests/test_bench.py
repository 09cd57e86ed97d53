"""The benchmark code that is not a measurement: reading a workflow's shape from its history, the
README table and its embedding. (The figures themselves are never asserted: `make bench`.)"""

from __future__ import annotations

import json
from pathlib import Path

from temporalio.client import WorkflowHistory

from bench import run as bench_run
from bench.shape import shape_counts, steps_from_history

HISTORIES = Path(__file__).parent / "histories"  # v1: records as activities; v2: as local activities


def _history(name: str) -> WorkflowHistory:
    return WorkflowHistory.from_json(name, (HISTORIES / f"{name}.json").read_text())


def test_local_activities_are_counted_apart():
    assert shape_counts(_history("v1/recommendation-R1-run1"))["local_activities"] == 0
    v2 = shape_counts(_history("v2/recommendation-R1-run1"))
    assert v2["local_activities"] > 0 and v2["activities"] > 0  # the records local; email delivery not


def test_steps_account_for_every_timer_activity_signal_and_update_of_the_history():
    for name in ("v1/inspection-run1", "v1/recommendation-R1-run1", "v2/inspection-run1", "v2/recommendation-R1-run1",
                 "v2/recommendation-R2-run1"):
        history = _history(name)
        steps = steps_from_history(history)
        counts = shape_counts(history)
        assert steps[0].trigger == "start"
        assert sum(s.activities + s.background_activities for s in steps) == counts.get("activities", 0), name
        assert sum(s.local_activities for s in steps) == counts["local_activities"], name
        assert sum(s.children for s in steps) == counts.get("child_starts", 0), name
        assert sum(s.signals for s in steps) == counts.get("signals_sent", 0), name
        assert sum(s.trigger == "signal" for s in steps) == counts.get("signals_received", 0), name
        assert sum(s.trigger == "update" for s in steps) == counts.get("updates", 0), name
        fired = [s for s in steps if s.trigger == "timer"]
        assert len(fired) <= counts.get("timers", 0), name
        for step in fired:
            # A timer aims at an instant after the trigger of the step that started it.
            assert 0 <= step.timer_from_step < steps.index(step) and step.timer_seconds >= 0, step


def test_the_inspection_history_starts_its_recommendations_and_sends_email_in_the_background():
    steps = steps_from_history(_history("v2/inspection-run1"))
    assert steps[0].children > 0
    assert sum(s.background_activities for s in steps) > 0  # deliver_notification, started and not awaited


SAMPLE = {
    "machine": {"python": "3.11.7", "cpus": 2}, "quick": False, "date": "2026-11-25", "seconds": 480.0,
    "lifecycle": {
        "recommendations": 100, "inspections": 10, "time_scale": 2000000.0,
        "ours": {"sqlite": {"seconds": 40.0, "recommendations_per_second": 2.5, "ratio": 0.9},
                 "postgresql": {"skipped": "PostgreSQL binaries (initdb) not found"}},
        "baseline_bare": {"seconds": 36.0, "recommendations_per_second": 2.78},
    },
    "publication": {"reports": 43, "recommendations": 430, "seconds": 44.8, "per_recommendation_ms": 104.2,
                    "baseline_bare_starts_seconds": 15.67, "ratio": 0.35},
    "memory": {"open_recommendation_workflows": 1000, "rss_mib_per_1000_open_recommendation_workflows": 325.4,
               "baseline_bare_rss_mib_per_1000_open_workflows": 80.0},
    "update_latency": {
        "open_recommendation_workflows": 1000,
        "submit_evidence": {"p50_ms": 144.3, "p95_ms": 160.0, "p99_ms": 199.8, "samples": 100},
        "record_decision": {"p50_ms": 254.0, "p95_ms": 302.9, "p99_ms": 310.4, "samples": 100},
        "baseline_bare_update": {"p50_ms": 16.9, "p95_ms": 58.2, "p99_ms": 70.1, "samples": 100},
    },
    "listing": {"sqlite": {"recommendations": 100000, "status_query_before_ms": 3413.0, "status_query_ms": 472.0,
                           "baseline_ms": 178.0, "ratio": 2.7, "cli_status_json_ms": 3007.0, "cli_startup_ms": 310.0}},
    "email": {"smtp_send": {"messages": 2000, "reused_connection_per_second": 403.5, "one_connection_per_message_per_second": 193.7,
                            "ratio": 2.08},
              "delivery_path": {"notifications": 500, "per_second": 64.5, "ratio": 0.16}},
}


def test_the_table_has_a_row_per_figure_with_its_baseline_and_ratio():
    table = bench_run.table(SAMPLE)
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == 10, table
    for row in rows:
        assert row.count("|") == 5, row
    assert "| lifecycle throughput, SQLite: 100 recommendations" in table and "| 0.9 |" in table
    assert "lifecycle throughput, PostgreSQL | skipped: PostgreSQL binaries" in table
    assert "144.3 / 160.0 / 199.8 ms" in table and "16.9 / 58.2 / 70.1 ms" in table
    assert "before this change: 3,413.0 ms" in table
    assert "{" not in table, "raw JSON in a cell"


def test_the_readme_shows_the_table_between_its_markers(tmp_path, monkeypatch):
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{bench_run.README_START}\nold table\n{bench_run.README_END}\n\nafter\n")
    monkeypatch.setattr(bench_run, "README", readme)
    bench_run.embed_in_readme("| new | table |\n")
    assert readme.read_text() == f"# x\n\n{bench_run.README_START}\n| new | table |\n{bench_run.README_END}\n\nafter\n"
    # The real README has the markers, so `make bench` keeps it current.
    text = (Path(__file__).parent.parent / "README.md").read_text()
    assert text.count(bench_run.README_START) == 1 and text.count(bench_run.README_END) == 1
    json.dumps(SAMPLE)  # the sample is what latest.json holds: plain JSON


WEB_SAMPLE = {
    "sqlite": {"recommendations": 100000, "dashboard_page": {"p50_ms": 60.1, "p95_ms": 70.2, "samples": 40},
               "dashboard_query": {"p50_ms": 40.0, "p95_ms": 45.0, "samples": 20},
               "dashboard_query_before": {"p50_ms": 300.0, "p95_ms": 320.0, "samples": 5},
               "baseline_query": {"p50_ms": 20.0, "p95_ms": 22.0, "samples": 20}},
    "postgresql": {"skipped": "PostgreSQL binaries (initdb) not found"},
    "recommendation": {"recommendation_page": {"p50_ms": 25.0, "p95_ms": 30.0, "samples": 40},
                       "cli_show_json": {"p50_ms": 900.0, "p95_ms": 950.0, "samples": 5},
                       "cli_startup": {"p50_ms": 280.0, "p95_ms": 290.0, "samples": 5}},
}


def test_the_web_rows_give_each_page_with_its_baseline():
    table = bench_run.table({"web": WEB_SAMPLE})
    rows = [line for line in table.splitlines() if line.startswith("| web")]
    assert len(rows) == 3, table
    assert all(row.count("|") == 5 for row in rows), rows
    assert "| 60.1 / 70.2 ms | the bare aggregate" in rows[0] and "before the projected columns 300.0 / 320.0 ms" in rows[0]
    assert "| 0.333 (p50) |" in rows[0]
    assert "web: the all-forces page, PostgreSQL | skipped: PostgreSQL binaries" in rows[1]
    assert "`ncpi show ID --json` end to end: 900.0 / 950.0 ms" in rows[2] and "| 36.0 (p50) |" in rows[2]


async def test_the_web_benchmark_runs_at_a_tiny_size():
    """bench/web.py end to end on 200 recommendations: SQLite and PostgreSQL loaded, the new aggregate
    checked against the old statement, the pages signed in and served, `ncpi show` on a real workflow."""
    from bench import web

    results: dict = {}
    await web.run(results, quick=True, rows=200)
    assert results["sqlite"]["recommendations"] == 200 and results["sqlite"]["dashboard_page"]["samples"] > 0
    assert results["recommendation"]["cli_show_json"]["samples"] > 0
    assert "dashboard_page" in results["postgresql"] or "skipped" in results["postgresql"]
    assert "| web: the all-forces page, SQLite, 200 recommendations" in bench_run.table({"web": results})


async def test_the_email_benchmarks_delivery_path_issues_access_links_as_the_worker_does(tmp_path):
    """bench/email.py's "whole delivery activity" figure, run at a small size: each force-facing
    reminder is delivered with its access links (a portal link, a plus-addressed Reply-To), as the
    worker's deliveries are, so that work is in the figure."""
    from bench import email as bench_email
    from ncpi_workflow.smtp_capture import start_capture
    from tests.postgres import free_port

    port = free_port()
    controller, smtp = start_capture(port=port)
    try:
        result = await bench_email._delivery_path(port, 3, f"sqlite+aiosqlite:///{tmp_path / 'delivery.db'}")
    finally:
        controller.stop()
    assert (result["notifications"], result["with_access_links"], result["connections_opened"]) == (3, 3, 1)
    assert len(smtp.messages) == 3
    for captured in smtp.messages:
        assert captured.message["Reply-To"].startswith("ncpi-replies+"), captured.message["Reply-To"]
        assert f"{bench_email.LINKS.web_url}/portal/" in captured.message.get_body(("plain",)).get_content()


def test_the_footer_gives_each_sections_wall_time():
    results = dict(SAMPLE, section_seconds={"setup": 3.2, "temporal": 250.0, "temporal_parts": {"lifecycle": 150.0},
                                            "listing": 80.5, "memory_parts": 120.0})
    line = bench_run.summary(results)
    assert line.startswith("Measured by `make bench` on 2026-11-25: 2 CPUs, Python 3.11.7, 480.0 s in all (")
    assert "lifecycle, publication, Updates, memory 250.0 s" in line and "listing 80.5 s" in line
    assert "memory part by part 120.0 s" in line and "temporal_parts" not in line and line.endswith(").\n")
    assert bench_run.summary(SAMPLE).endswith("480.0 s in all.\n")  # results from before the sections were timed


def test_sigterm_cancels_the_benchmark_so_that_its_cleanup_runs(tmp_path):
    """bench.common.run_until_signalled: on SIGTERM the coroutine is cancelled, its `finally` (where
    the workers, servers and clusters stop) runs, and the call returns None."""
    import subprocess
    import sys
    import time

    marker = tmp_path / "cleaned"
    script = (
        "import asyncio, sys\n"
        "from pathlib import Path\n"
        "from bench.common import run_until_signalled\n"
        "async def bench():\n"
        "    try:\n"
        "        Path(sys.argv[1] + '.started').touch()\n"
        "        await asyncio.sleep(60)\n"
        "    finally:\n"
        "        await asyncio.sleep(0.1)\n"
        "        Path(sys.argv[1]).write_text('cleaned')\n"
        "print(run_until_signalled(bench()))\n"
    )
    root = Path(__file__).parent.parent
    process = subprocess.Popen([sys.executable, "-c", script, str(marker)], cwd=root, stdout=subprocess.PIPE, text=True)
    started = Path(f"{marker}.started")
    deadline = time.monotonic() + 30
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    process.terminate()
    out, _ = process.communicate(timeout=30)
    assert marker.read_text() == "cleaned" and out.strip() == "None" and process.returncode == 0


def test_steps_tell_the_writes_from_the_clock_reads():
    """The same-work baseline writes for each local activity that writes in ours (record_event, the
    single-purpose record activities), not for a clock read (read_clock touches no database)."""
    steps = steps_from_history(_history("v7/recommendation-R1-run1"))
    assert sum(s.writes for s in steps) == 9 and sum(s.local_activities for s in steps) == 21
    assert all(s.writes <= s.local_activities for s in steps)


# A small lifecycle of the shape ours has: the inspection starts its recommendations and emails; each
# recommendation writes, emails after a timer, is asked for evidence (its projection says so), then
# takes the evidence and the decision as Updates and tells the inspection.
def _tiny_shape():
    from bench.bare import Step

    recs = 10  # bench.lifecycle.RECS_PER_REPORT: the bare driver's children per report
    inspection = [Step("start", local_activities=3, writes=2, children=recs, background_activities=1)]
    inspection += [Step("signal", "recommendation_settled", local_activities=2, writes=1) for _ in range(recs)]
    recommendation = [
        Step("start", local_activities=2, writes=1),
        Step("timer", timer_seconds=0.3, timer_from_step=0, local_activities=2, writes=1, background_activities=1),
        Step("timer", timer_seconds=0.6, timer_from_step=0, local_activities=2, writes=1),  # asks for evidence
        Step("update", "submit_evidence", local_activities=2, writes=1),
        Step("update", "record_decision", local_activities=2, writes=1, background_activities=2, signals=1),
    ]
    return inspection, recommendation


async def test_the_same_work_lifecycle_baseline_writes_its_rows_and_sends_its_emails(dev_server_env, tmp_path):
    """bench/lifecycle.py's same-work baseline at a tiny size on SQLite: every write's rows are there (once:
    idempotent keys), every email was put in the outbox, sent to the SMTP capture and marked sent, and
    the driver answered the Updates from the projection rows, as ours does from our projection."""
    from bench import lifecycle

    inspection, recommendation = _tiny_shape()
    url = f"sqlite+aiosqlite:///{tmp_path / 'bare.db'}"
    import asyncio

    figures = await asyncio.wait_for(lifecycle._bare(dev_server_env, tmp_path, inspection, recommendation, 1, database_url=url,
                                                     rows_per_write=2.5, prefix="bare-same-work-test"), 300)
    writes = sum(s.writes for s in inspection) + 10 * sum(s.writes for s in recommendation)
    emails = sum(s.background_activities for s in inspection) + 10 * sum(s.background_activities for s in recommendation)
    rows = figures["rows"]
    # 2.5 rows per write on average (each workflow's writes alternate 2 and 3), and an audit row per email
    per_inspection, per_recommendation = sum(s.writes for s in inspection), sum(s.writes for s in recommendation)
    assert rows["bare_record"] + rows["bare_audit"] == int(per_inspection * 2.5) + 10 * int(per_recommendation * 2.5) + emails
    assert writes * 2.5 - 11 <= rows["bare_record"] + rows["bare_audit"] - emails <= writes * 2.5
    assert rows["bare_outbox"] == rows["bare_outbox_sent"] == emails == figures["emails_received"] == 31
    assert rows["bare_projection"] == 11  # one per workflow
    assert figures["shape"]["recommendation"]["updates"] == 2 and figures["recommendations_per_second"] > 0
    # No I/O: the same shape, nothing written (no database) and nothing sent.
    plain = await lifecycle._bare(dev_server_env, tmp_path, inspection, recommendation, 1, prefix="bare-no-io-test")
    assert "rows" not in plain and plain["shape"]["recommendation"]["local_activities"] == 10
    for kind in ("inspection", "recommendation"):  # the same shape, with or without the work
        for count in ("activities", "local_activities", "child_starts", "signals_sent", "signals_received", "updates", "timers"):
            assert figures["shape"][kind].get(count) == plain["shape"][kind].get(count), (kind, count)


def test_same_work_rows_per_write_matches_ours_total():
    from bench import lifecycle

    inspection, recommendation = _tiny_shape()
    writes = 2 + 10 + 10 * 5  # 62 writes for one report
    ours = {"rows_written": {"notifications": 31, "audit_events": 200, "decisions": 10, "inspections": 1,
                             "recommendations": 10, "deadlines": 60, "forces": 43, "contacts": 129, "relay_status": 1}}
    # (312 rows, not the reference data - 2 x 31 for the outbox and its audit rows - 11 projections) / 62 writes
    assert lifecycle.same_work_rows_per_write(ours, inspection, recommendation, 1) == round((312 - 62 - 11) / writes, 3)


def test_the_rows_show_both_baselines_each_with_its_ratio():
    sample = json.loads(json.dumps(SAMPLE))
    sample["lifecycle"]["ours"]["sqlite"]["ratio_same_work"] = 1.25
    sample["lifecycle"]["baseline_same_work"] = {"sqlite": {"seconds": 50.0, "recommendations_per_second": 2.0},
                                                 "postgresql": {"skipped": "PostgreSQL binaries (initdb) not found"}}
    sample["update_latency"]["baseline_same_work_update"] = {"p50_ms": 28.6, "p95_ms": 40.0, "p99_ms": 62.1, "samples": 100}
    table = bench_run.table(sample)
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == 10 and all(row.count("|") == 5 for row in rows), table
    life = next(r for r in rows if r.startswith("| lifecycle throughput, SQLite"))
    assert "no I/O: 2.78 recommendations/s (36.0 s)" in life and "the same work" in life and "2.0 recommendations/s (50.0 s)" in life
    assert life.endswith("| 0.9 (no I/O) / 1.25 (same work) |")
    decision = next(r for r in rows if r.startswith("| Update `record_decision`"))
    assert "no I/O: 16.9 / 58.2 / 70.1 ms" in decision and "28.6 / 40.0 / 62.1 ms" in decision
    assert f"{round(28.6 / 254.0, 3)} (p50, same work)" in decision and f"{round(62.1 / 310.4, 3)} (p99, same work)" in decision


async def test_the_same_work_update_writes_a_decisions_rows_once(dev_server_env, tmp_path):
    """The bare `decide` Update (temporal_bench's same-work Update baseline): one local activity, one
    transaction, a decision's rows; sent again with the same key it adds nothing."""
    from bench.bare import BareWorkflow
    from bench.bare_work import count_rows
    from bench.common import bare_worker

    url = f"sqlite+aiosqlite:///{tmp_path / 'bare-updates.db'}"
    async with bare_worker(dev_server_env, tmp_path, "bare-decide-test", database_url=url):
        handle = await dev_server_env.client.start_workflow(BareWorkflow.run, id="bare-decide-test-1", task_queue="bare-decide-test")
        first = await handle.execute_update(BareWorkflow.decide, "bare-decide-test-1/decision")
        again = await handle.execute_update(BareWorkflow.decide, "bare-decide-test-1/decision")
        assert await handle.execute_update(BareWorkflow.poke, 3) == 3  # the no-I/O Update beside it
        await handle.signal(BareWorkflow.finish)
        await handle.result()
    assert first == again and len(first) == 1
    rows = await count_rows(url)
    # the decision and the register entry, each with its audit row; the email's outbox row and its audit row
    assert (rows["bare_record"], rows["bare_audit"], rows["bare_outbox"], rows["bare_projection"]) == (2, 3, 1, 1), rows
