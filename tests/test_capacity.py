"""bench/capacity.py's counting, not its figures: billable Actions and events counted from real
saved histories (checked against a count made independently from the JSON), the database-write
counter on both databases inside a real activity context, the published price tiers, the sizing
and the rewriting of the documents between their markers."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import text
from temporalio import activity
from temporalio.client import WorkflowHistory
from temporalio.testing import ActivityEnvironment

from bench import capacity

HISTORIES = Path(__file__).parent / "histories" / "v6"


def _history(name: str) -> WorkflowHistory:
    return WorkflowHistory.from_json(name, (HISTORIES / f"{name}.json").read_text())


def _raw(name: str) -> list[dict]:
    return json.loads((HISTORIES / f"{name}.json").read_text())["events"]


def _attributes(event: dict) -> dict:
    return next(v for k, v in event.items() if k.endswith("EventAttributes"))


def _independent_actions(events: list[dict]) -> Counter:
    """The Actions of docs.temporal.io/cloud/actions, counted from the history's JSON by other code."""
    out: Counter = Counter()
    local_tasks = set()
    for e in events:
        kind, a = e["eventType"], _attributes(e)
        if kind == "EVENT_TYPE_WORKFLOW_EXECUTION_STARTED":
            out["workflow_started"] += 0 if ("parentWorkflowExecution" in a and "continuedExecutionRunId" not in a) else 1
        elif kind == "EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED":
            out["child_workflow_started"] += 2
        elif kind == "EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES":
            out["search_attribute_upserts"] += set(a["searchAttributes"]["indexedFields"]) != {"TemporalChangeVersion"}
        elif kind == "EVENT_TYPE_ACTIVITY_TASK_SCHEDULED":
            out["activities"] += 1
        elif kind == "EVENT_TYPE_ACTIVITY_TASK_STARTED":
            out["activities"] += int(a.get("attempt", 1)) - 1
        elif kind == "EVENT_TYPE_MARKER_RECORDED" and a["markerName"] == "core_local_activity":
            local_tasks.add(a["workflowTaskCompletedEventId"])
        elif kind == "EVENT_TYPE_TIMER_STARTED":
            out["timers"] += 1
        elif kind == "EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED":
            out["signals"] += 1
        elif kind == "EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED":
            out["updates"] += 1
    out["local_activities"] = len(local_tasks)
    return +out


NAMES = ["recommendation-R1-run1", "recommendation-R1-run2", "recommendation-R2-run1", "inspection-run1",
         "inspection-run2", "adopted-recommendation-R2-run1", "adopted-inspection-run1"]


@pytest.mark.parametrize("name", NAMES)
def test_billable_actions_agree_with_an_independent_count_of_the_json(name):
    actions = capacity.billable_actions(_history(name))
    expected = _independent_actions(_raw(name))
    assert {k: v for k, v in actions.items() if k != "total"} == dict(expected)
    assert actions["total"] == sum(expected.values())


def test_a_recommendation_history_counted_by_hand():
    """v6 recommendation R1, run 1 (a child's first run): figures read off the file by hand."""
    counts = capacity.count_history(_history("recommendation-R1-run1"))
    assert counts["events"] == len(_raw("recommendation-R1-run1")) == 156 and counts["workflow_tasks"] == 19
    assert counts["updates"] == 3 and counts["timers_started"] == 8 and counts["continue_as_new"] == 1
    assert counts["activities_by_type"] == {"deliver_notification": 7}
    assert counts["local_activities"] == sum(counts["local_activities_by_type"].values())
    assert counts["local_activities_by_type"]["project_recommendation"] >= 1
    actions = counts["actions"]
    assert "workflow_started" not in actions  # a child's first run: its start is the parent's 2 Actions
    assert actions["search_attribute_upserts"] == 9  # 13 upserts, 4 of them only TemporalChangeVersion (exempt)
    # 38 markers (local activities and patches), but one Action per workflow task with local activities.
    markers = sum(1 for e in _raw("recommendation-R1-run1") if e["eventType"] == "EVENT_TYPE_MARKER_RECORDED")
    assert markers == 38 and actions["local_activities"] < counts["local_activities"]
    assert capacity.estimated_heartbeats(counts) == 7


def test_continue_as_new_and_child_starts_are_counted_where_they_are_billed():
    assert capacity.billable_actions(_history("recommendation-R1-run2"))["workflow_started"] == 1  # the new run
    inspection = capacity.billable_actions(_history("inspection-run1"))
    assert inspection["workflow_started"] == 1  # started by a client
    assert inspection["child_workflow_started"] == 2 * 3  # three recommendations, two Actions each


def test_retries_count_once_more_each():
    history = _history("recommendation-R1-run1")
    before = capacity.billable_actions(history)
    from temporalio.api.enums.v1 import EventType

    started = next(e for e in history.events if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED)
    started.activity_task_started_event_attributes.attempt = 3
    task = next(e for e in history.events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED)
    task.workflow_task_completed_event_attributes.metering_metadata.nonfirst_local_activity_execution_attempts = 4
    after = capacity.billable_actions(history)
    assert after["activities"] == before["activities"] + 2
    assert after["local_activities"] == before["local_activities"] + 4


def test_runs_add_up():
    runs = [capacity.count_history(_history(n)) for n in ("recommendation-R1-run1", "recommendation-R1-run2")]
    total = capacity.add_counts(runs)
    assert total["runs"] == 2 and total["events"] == runs[0]["events"] + runs[1]["events"]
    assert total["actions"]["total"] == runs[0]["actions"]["total"] + runs[1]["actions"]["total"]
    assert capacity.scale_counts(total, 0.5)["runs"] == 1


@activity.defn(name="capacity_probe")
async def _probe(sessions) -> None:
    async with sessions() as session, session.begin():
        await session.execute(text("CREATE TEMP TABLE IF NOT EXISTS capacity_probe (x integer)"))
        await session.execute(text("INSERT INTO capacity_probe (x) VALUES (1)"))
        await session.execute(text("INSERT INTO capacity_probe (x) VALUES (2)"))
        await session.execute(text("UPDATE capacity_probe SET x = 3 WHERE x = 2"))
        await session.execute(text("DELETE FROM capacity_probe WHERE x = 1"))
    async with sessions() as session, session.begin():  # a read-only transaction
        await session.execute(text("SELECT 1"))


async def test_database_writes_and_transactions_are_counted_by_activity(sessions):
    with capacity.DatabaseCounter() as counter:
        env = ActivityEnvironment()
        env.info = dataclasses.replace(env.info, activity_type="capacity_probe")  # as the worker sets it
        await env.run(_probe, sessions)
        token = capacity._phase.set("publication")
        try:
            async with sessions() as session, session.begin():
                await session.execute(text("CREATE TEMP TABLE IF NOT EXISTS capacity_probe (x integer)"))
                await session.execute(text("INSERT INTO capacity_probe (x) VALUES (9)"))
            async with sessions() as session:  # rolled back: not a transaction, and its write forgotten
                async with session.begin():
                    await session.execute(text("INSERT INTO capacity_probe (x) VALUES (10)"))
                    await session.rollback()
            async with sessions() as session, session.begin():
                await session.execute(text("SELECT 1"))
        finally:
            capacity._phase.reset(token)
        async with sessions() as session, session.begin():
            await session.execute(text("SELECT 1"))  # the driver's read
    summary = counter.summary()
    probe = summary["by"]["capacity_probe"]
    assert probe["statements"] == {"DELETE": 1, "INSERT": 2, "UPDATE": 1}
    assert (probe["transactions"], probe["write_transactions"]) == (2, 1)
    publication = summary["by"]["publication"]
    assert publication["statements"] == {"INSERT": 2}
    assert (publication["transactions"], publication["write_transactions"]) == (2, 1)
    assert summary["by"]["driver"]["transactions"] == 1
    assert (summary["write_statements"], summary["transactions"], summary["write_transactions"]) == (6, 4, 2)
    # Removed: nothing more is counted.
    async with sessions() as session, session.begin():
        await session.execute(text("SELECT 1"))
    assert counter.summary()["transactions"] == 4


def test_the_published_price_tiers():
    # The pricing page's own example: 11.25M Actions in a month on the Business plan cost $525.
    assert capacity.action_cost_usd(11.25e6) == 525.0
    assert capacity.action_cost_usd(1e6) == 50.0
    assert capacity.action_cost_usd(200e6) == 250 + 225 + 400 + 1050 + 1500 + 2500
    assert capacity.action_cost_usd(201e6) is None  # "contact Sales"


def _measured(actions_common: float, actions_further: float) -> dict:
    def scenario(actions: float, days: float, rec: str) -> dict:
        per = {"actions": {"total": actions}, "activities_by_type": {"deliver_notification": 4}, "workflow_tasks": 20,
               "events": 200, "history_bytes": 40_000}
        return {"per_recommendation": per, "workflows": {rec: {"lifecycle_days": days}}}

    return {
        "scenarios": {"common": scenario(actions_common, 365.25, "R2"), "further_cycle": scenario(actions_further, 730.5, "R1")},
        "worker_cpu": {"per_recommendation_seconds": 0.5, "per_workflow_task_ms": 200.0},
        "database": {"per_recommendation": {"write_transactions": 30}},
    }


def test_sizing_follows_the_measurements():
    assumptions = dict(capacity.ASSUMPTIONS, share_of_reports_with_a_further_cycle=0.5,
                       page_views_per_recommendation_per_year=0)
    sized = capacity.size(_measured(40, 60), assumptions)
    assert sized["lifecycle_years"] == 1.5
    d = sized["deployments"]["10000"]
    # 10,000 open for 1.5 years each: 6,667 lifecycles a year of (50 Actions + 4 heartbeats).
    assert d["lifecycles_per_year"] == 6667 and d["actions_per_year"] == round(10_000 / 1.5 * 54)
    assert d["actions_cost_per_year_usd"] == round(12 * capacity.action_cost_usd(10_000 / 1.5 * 54 / 12))
    assert d["history_shards"] & (d["history_shards"] - 1) == 0  # a power of two
    big = sized["deployments"]["100000"]
    assert big["history_shards"] > d["history_shards"] and big["worker_replicas"] >= d["worker_replicas"] >= 2
    # The burst: 10 % of 100,000 at 0.2 s each, in 600 s at half a core: 7 replicas (10,000: the minimum 2).
    assert (d["worker_replicas"], big["worker_replicas"]) == (2, 7)
    assert big["postgresql_connections"] == 7 * 2 * 15 + 20
    assert capacity.size(_measured(80, 120), assumptions)["deployments"]["10000"]["actions_per_year"] > d["actions_per_year"]


def test_the_documents_are_rewritten_between_their_markers(tmp_path):
    result = json.loads(capacity.RESULTS.read_text())
    doc, readme = tmp_path / "capacity.md", tmp_path / "README.md"
    doc.write_text(capacity.DOC.read_text())
    readme.write_text("# x\n\nbefore\n<!-- capacity:start -->\nold\n<!-- capacity:end -->\nafter\n")
    capacity.write_docs(result, doc, readme)
    text = readme.read_text()
    assert "old" not in text and text.startswith("# x\n\nbefore\n") and text.endswith("after\n")
    assert f"| history shards (self-hosted) | {result['sizing']['deployments']['10000']['history_shards']:,} |" in text
    first = doc.read_text()
    assert "`per_recommendation.actions.total`" in first and "`deliver_notification`" in first
    capacity.write_docs(result, doc, readme)
    assert doc.read_text() == first  # idempotent
    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match="capacity:start"):
        capacity.write_docs(result, doc, readme)


async def test_a_real_lifecycle_is_counted_end_to_end(tmp_path):
    """One recommendation's whole lifecycle on a real dev server (the clock compressed 2,000,000
    times), counted as `python -m bench.capacity` counts it."""
    scenario = capacity.Scenario("common", "WIL", (("R1", "within_three_months"),))
    measured = await capacity.measure(tmp_path, (scenario,), time_scale=2_000_000.0)
    counted = measured["scenarios"]["common"]
    rec, inspection = counted["workflows"]["R1"], counted["workflows"]["inspection"]
    # The driver's three Updates (progress, evidence, decision), the inspection's one child start.
    assert rec["updates_by_name"] == {"record_decision": 1, "submit_evidence": 1, "submit_progress": 1}
    assert inspection["child_starts"] == 1 and inspection["actions"]["child_workflow_started"] == 2
    assert rec["activities_by_type"].get("deliver_notification", 0) >= 2  # the evidence request, the decision
    assert rec["actions"]["timers"] == rec["timers_started"] > 0
    assert counted["per_recommendation"]["actions"]["total"] == rec["actions"]["total"] + inspection["actions"]["total"]
    # Stated in calendar days: from publication to the end of the re-opening window, over a year.
    assert 365 < rec["lifecycle_days"] < 800
    db = measured["database"]
    assert db["by"]["publication"]["write_transactions"] >= 1
    assert db["by"]["deliver_notification"]["write_transactions"] >= 2 * rec["activities_by_type"]["deliver_notification"]
    assert db["write_transactions"] == sum(v["write_transactions"] for k, v in db["by"].items() if k not in ("driver", "setup"))
    assert measured["worker_cpu"]["process_cpu_seconds"] > 0
