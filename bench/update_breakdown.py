"""Where an Update's time goes (issue 15): `python -m bench.update_breakdown [--events N] [--temporal N]`.

Two parts, printed as JSON:

* **record_event** (the one local activity an Update writes with), in this process on SQLite as the
  worker runs it (the worker's own OutboxRenderer and settings): the rendering before the transaction
  (its reads, the templates), then each statement of the transaction and the commit, for the two Updates
  the bench times: `submit_evidence` (the evidence record and the projection) and `record_decision`
  (the decision, its register step, its email and the projection). Every statement is timed with a
  SQLAlchemy engine event (before/after cursor execute), named by its verb and table.
* **the Update end to end** (`--temporal N`, default 20; 0 skips it): a Temporal dev server and the worker
  in this process on SQLite, N recommendations whose revisit has opened; each Update timed from the client,
  then split from its history: the worker's workflow task (the validator, the handler, the view and the
  SDK), the local activities in it (`read_clock`, `record_event`, from their markers' schedule and
  completion times) and the rest, the server's round trip (the client's time less the worker's task).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from contextlib import asynccontextmanager, contextmanager
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

from sqlalchemy import event as sa_event

from bench.common import ROOT


def _ms(samples: list[float]) -> dict:
    ordered = sorted(samples)
    if not ordered:
        return {}
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"p50_ms": round(pick(0.5) * 1000, 3), "p99_ms": round(pick(0.99) * 1000, 3),
            "mean_ms": round(statistics.fmean(ordered) * 1000, 3), "n": len(ordered)}


def _label(statement: str) -> str:
    words = " ".join(statement.split()).split(" ")
    verb = words[0].upper()
    table = ""
    for marker in ("INTO", "FROM", "UPDATE"):
        if marker in (w.upper() for w in words):
            index = [w.upper() for w in words].index(marker)
            table = words[index + 1] if marker != "UPDATE" or verb == "UPDATE" else table
            if table:
                break
    if verb == "UPDATE":
        table = words[1]
    return f"{verb} {table.strip(chr(34))}".strip()


class StatementClock:
    """Times every statement on an engine, by phase ('render' before the transaction, 'transaction' in it)."""

    def __init__(self, engine) -> None:
        self.engine = engine.sync_engine
        self.phase = "other"
        self.samples: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        self.counts: dict[str, list[int]] = defaultdict(list)
        self._count = 0
        self._started: list[float] = []

    def _before(self, conn, cursor, statement, parameters, context, executemany):
        self._started.append(time.perf_counter())

    def _after(self, conn, cursor, statement, parameters, context, executemany):
        elapsed = time.perf_counter() - self._started.pop()
        if statement.split(" ", 1)[0].upper() in ("SELECT", "INSERT", "UPDATE", "DELETE", "WITH"):
            self.samples[self.phase][_label(statement)].append(elapsed)
            self._count += 1

    @contextmanager
    def listening(self):
        sa_event.listen(self.engine, "before_cursor_execute", self._before)
        sa_event.listen(self.engine, "after_cursor_execute", self._after)
        try:
            yield self
        finally:
            sa_event.remove(self.engine, "before_cursor_execute", self._before)
            sa_event.remove(self.engine, "after_cursor_execute", self._after)

    @contextmanager
    def in_phase(self, phase: str):
        previous, self.phase, self._count = self.phase, phase, 0
        try:
            yield
        finally:
            self.counts[phase].append(self._count)
            self.phase = previous


class TimedSessions:
    """The worker's session factory, timing the commit of each `begin()` transaction and marking the
    statements inside it as the transaction's."""

    def __init__(self, sessions, clock: StatementClock, timings: dict) -> None:
        self.sessions, self.clock, self.timings = sessions, clock, timings

    def __call__(self, *args, **kwargs):
        return self.sessions(*args, **kwargs)

    @asynccontextmanager
    async def begin(self):
        with self.clock.in_phase("transaction"):
            async with self.sessions() as session:
                transaction = await session.begin()
                try:
                    yield session
                except BaseException:
                    await transaction.rollback()
                    raise
                started = time.perf_counter()
                await transaction.commit()
                self.timings["commit"].append(time.perf_counter() - started)


async def _records(workdir: Path, recommendations: int):
    """A migrated SQLite database with one report of `recommendations` recommendations (its reference data too)."""
    from ncpi_workflow import db
    from ncpi_workflow.clocks import calendar_for_report, plan_report
    from ncpi_workflow.forces import load_forces
    from ncpi_workflow.policy import load_policy
    from ncpi_workflow.report import load_report
    from ncpi_workflow.settings import Settings
    from ncpi_workflow.store import insert_report, load_reference_forces
    from tests.lifecycle_support import write_report

    url = f"sqlite+aiosqlite:///{workdir / 'breakdown.db'}"
    await db.upgrade(url)
    settings = Settings(database_url=url, data_dir=workdir / "data", settings_file=workdir / "none.toml")
    forces = load_forces(settings.forces_file)
    published = date.today() - timedelta(days=90)
    refs = [(f"R{i}", "within_six_months") for i in range(1, recommendations + 1)]
    loaded = load_report(write_report(workdir, "NWA", published, refs), known_forces=set(forces), max_bytes=settings.report_max_bytes)
    policy = load_policy(settings.policy)
    timeline = plan_report(published, [(r.ref, r.timeframe) for r in loaded.report.recommendations], policy,
                           calendar_for_report(policy, published))
    return url, settings, forces, loaded, timeline


async def record_event_breakdown(events: int) -> dict:
    """record_event's parts for `events` evidence events and as many decision events, on SQLite."""
    from temporalio.testing import ActivityEnvironment

    from ncpi_workflow import db
    from ncpi_workflow.lifecycle import (
        DecisionRecord, EventWrite, EvidenceRecord, EvidenceRequestInput, NotificationRequest, RecommendationProjection,
        RegisterRecord,
    )
    from ncpi_workflow.service.worker import record_activities
    from ncpi_workflow.store import insert_report, load_reference_forces

    with tempfile.TemporaryDirectory(prefix="ncpi-breakdown-") as tmp:
        url, settings, forces, loaded, timeline = await _records(Path(tmp), events)
        inspection_id = loaded.report.inspection_id
        async with db.open_database(url) as sessions:
            async with sessions.begin() as session:
                await load_reference_forces(session, forces)
                await insert_report(session, loaded, timeline, actor="bench")
            clock = StatementClock(sessions.kw["bind"])
            timings: dict[str, list[float]] = defaultdict(list)
            records = record_activities(TimedSessions(sessions, clock, timings), settings)
            renderer = records.renderer
            if renderer is not None:
                prepare = renderer.prepare

                async def timed_prepare(*args, **kwargs):
                    started = time.perf_counter()
                    with clock.in_phase("render"):
                        out = await prepare(*args, **kwargs)
                    timings["render (prepare, before the transaction)"].append(time.perf_counter() - started)
                    return out

                renderer.prepare = timed_prepare
            env = ActivityEnvironment()
            by_kind: dict[str, dict] = {}
            now = datetime.now(timezone.utc)
            version = 1 << 24  # each event's projection newer than the last (as a workflow's are)
            for kind in ("submit_evidence", "record_decision"):
                timings.clear()
                clock.samples.clear()
                clock.counts.clear()
                totals, cpus = [], []
                for n in range(1, events + 1):
                    rec_id = f"{inspection_id}-R{n}"
                    key = f"bench/{uuid.uuid4()}"
                    version += 256 * events
                    if kind == "submit_evidence":
                        item = EvidenceRequestInput(f"{rec_id}.pdf", f"{n:064x}", 10, "/dev/null", "application/pdf", "bench")
                        write = EventWrite(
                            evidence=EvidenceRecord(key, rec_id, 1, item, now, None),
                            recommendation_projection=RecommendationProjection(
                                rec_id, version, "under_review", 1, None, None, "decision by the inspectorate", None, "awaiting review"),
                        )
                    else:
                        facts = {"outcome": "achieved", "rationale": "bench", "by": "bench", "at": now.isoformat(), "cycle": 1}
                        write = EventWrite(
                            decision=DecisionRecord(key, rec_id, 1, "achieved", "bench", "bench", now),
                            register=[RegisterRecord(f"{key}/register", rec_id, 1, "no further action needed", "bench", "bench", now)],
                            notifications=[NotificationRequest(
                                f"{key}/decision", "decision", inspection_id, rec_id, ("liaison_officer", "chief_officer"),
                                f"Decision on recommendation R{n}: achieved", now, facts)],
                            recommendation_projection=RecommendationProjection(
                                rec_id, version, "closed", 1, None, "achieved", None, None, "no further action needed"),
                        )
                    with clock.listening():
                        started, cpu = time.perf_counter(), time.process_time()
                        await env.run(records.record_event, write)
                        totals.append(time.perf_counter() - started)
                        cpus.append(time.process_time() - cpu)
                statements = {phase: {label: {"per_event": round(len(s) / events, 2), **_ms(s)}
                                      for label, s in sorted(by_label.items())}
                              for phase, by_label in clock.samples.items()}
                by_kind[kind] = {
                    "record_event_total": _ms(totals),
                    "record_event_cpu (this process's CPU time: steadier than the wall clock under load)": _ms(cpus),
                    **{name: _ms(s) for name, s in timings.items()},
                    "statements_per_event": {phase: statistics.median(c) for phase, c in clock.counts.items()},
                    "statements": statements,
                }
            if renderer is not None:
                by_kind["renderings"] = {"kept": renderer.kept, "left_unrendered": renderer.left_unrendered}
    return by_kind


# ---------------------------------------------------------------- the Update end to end


def _marker_times(event) -> tuple[str, float] | None:
    if not event.HasField("marker_recorded_event_attributes"):
        return None
    marker = event.marker_recorded_event_attributes
    if marker.marker_name != "core_local_activity":
        return None
    data = json.loads(marker.details["data"].payloads[0].data)

    def seconds(value) -> float:
        if isinstance(value, dict):
            return value.get("seconds", 0) + value.get("nanos", 0) / 1e9
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()

    scheduled, completed = data.get("original_schedule_time"), data.get("complete_time")
    if scheduled is None or completed is None:
        return data["activity_type"], float("nan")
    return data["activity_type"], seconds(completed) - seconds(scheduled)


def _update_split(events, update_id: str) -> dict:
    """For one Update in a history: its workflow task's time on the worker (started to completed), the
    local activities between its acceptance and completion, and whatever ran after it in that task."""
    accepted = next(i for i, e in enumerate(events) if e.HasField("workflow_execution_update_accepted_event_attributes")
                    and e.workflow_execution_update_accepted_event_attributes.protocol_instance_id == update_id)
    completed = next(i for i, e in enumerate(events) if e.HasField("workflow_execution_update_completed_event_attributes")
                     and e.workflow_execution_update_completed_event_attributes.meta.update_id == update_id)
    started = next(e for e in reversed(events[:accepted]) if e.HasField("workflow_task_started_event_attributes"))
    done = next(e for e in reversed(events[:accepted]) if e.HasField("workflow_task_completed_event_attributes"))
    local = [m for m in (_marker_times(e) for e in events[accepted:completed]) if m]
    end = next((i for i in range(completed, len(events)) if events[i].HasField("workflow_task_scheduled_event_attributes")),
               len(events))
    after = [m for m in (_marker_times(e) for e in events[completed:end]) if m]
    task = done.event_time.ToDatetime().timestamp() - started.event_time.ToDatetime().timestamp()
    return {"task": task, "local": local, "after": after}


class _ActivityTimes:
    """A worker interceptor timing each activity's execution on the worker (local ones too), by type."""

    def __init__(self) -> None:
        from temporalio.worker import ActivityInboundInterceptor, Interceptor

        times = self.times = []

        class Inbound(ActivityInboundInterceptor):
            async def execute_activity(self, input):
                from temporalio import activity

                started = time.perf_counter()
                try:
                    return await super().execute_activity(input)
                finally:
                    times.append((activity.info().activity_type, time.perf_counter() - started))

        class Outer(Interceptor):
            def intercept_activity(self, next):
                return Inbound(next)

        self.interceptor = Outer()


async def update_breakdown(recommendations: int) -> dict:
    import ncpi_workflow.service.worker as service

    from bench.common import dev_server
    from ncpi_workflow import db
    from ncpi_workflow.lifecycle import DecisionRequest, EvidenceRequestInput, TriggerRevisitRequest, inspection_workflow_id
    from ncpi_workflow.publishing import publish_many
    from ncpi_workflow.app.publishing import check_file
    from ncpi_workflow.settings import Settings
    from ncpi_workflow.lifecycle import recommendation_workflow_id
    from ncpi_workflow.models import Recommendation
    from ncpi_workflow.smtp_capture import start_capture
    from sqlalchemy import func, select
    from tests.lifecycle_support import write_report
    from tests.postgres import free_port
    from worker import running_worker

    activity_times = _ActivityTimes()
    options = service.worker_options
    service.worker_options = lambda settings: {**options(settings), "interceptors": [activity_times.interceptor]}
    with tempfile.TemporaryDirectory(prefix="ncpi-breakdown-") as tmp:
        workdir = Path(tmp)
        url = f"sqlite+aiosqlite:///{workdir / 'ncpi.db'}"
        await db.upgrade(url)
        async with dev_server() as env:
            port = free_port()
            controller, _ = start_capture(port=port)
            settings = Settings(database_url=url, data_dir=workdir / "data", settings_file=workdir / "none.toml",
                                task_queue="breakdown", smtp_host="127.0.0.1", smtp_port=port,
                                worker_alive_file=workdir / "alive")
            try:
                async with running_worker(env.client, settings):
                    published = date.today() - timedelta(days=1)
                    path = write_report(workdir, "NWA", published, [(f"R{i}", "within_six_months") for i in range(1, recommendations + 1)])
                    checked = check_file(settings, path)
                    await publish_many(settings, env.client, [(Path(checked.name), checked.loaded)])
                    inspection_id = checked.loaded.report.inspection_id
                    async with db.open_database(url) as sessions:
                        for _ in range(600):
                            async with sessions() as session:
                                if await session.scalar(select(func.count()).select_from(Recommendation).where(
                                        Recommendation.projection_version > 0)) >= recommendations:
                                    break
                            await asyncio.sleep(0.1)
                        await env.client.get_workflow_handle(inspection_workflow_id(inspection_id)).execute_update(
                            "trigger_revisit", TriggerRevisitRequest(by="bench"))
                        for _ in range(600):
                            async with sessions() as session:
                                if await session.scalar(select(func.count()).select_from(Recommendation).where(
                                        Recommendation.phase == "evidence_requested")) >= recommendations:
                                    break
                            await asyncio.sleep(0.1)
                    parts: dict[str, dict[str, list[float]]] = {k: defaultdict(list) for k in ("submit_evidence", "record_decision")}
                    for n in range(1, recommendations + 1):
                        handle = env.client.get_workflow_handle(recommendation_workflow_id(f"{inspection_id}-R{n}"))
                        for name, argument in (
                            ("submit_evidence", EvidenceRequestInput(f"R{n}.pdf", "ab" * 32, 10, "/dev/null", "application/pdf", "bench")),
                            ("record_decision", DecisionRequest("achieved", "bench", "bench")),
                        ):
                            update_id = f"{name}-{uuid.uuid4()}"
                            activity_times.times.clear()
                            started, cpu = time.perf_counter(), time.process_time()
                            await handle.execute_update(name, argument, id=update_id)
                            total = time.perf_counter() - started
                            cpu = time.process_time() - cpu
                            history = await handle.fetch_history()
                            split = _update_split(list(history.events), update_id)
                            p = parts[name]
                            p["client: the whole Update"].append(total)
                            p["CPU of this process (client, worker, SMTP capture) during the Update"].append(cpu)
                            p["worker: its workflow task (started to completed)"].append(split["task"])
                            p["server round trip and queueing (client less the worker's task)"].append(total - split["task"])
                            # This workflow's local activities (not the deliveries and the inspection's writes running beside them).
                            ran = [(t, x) for t, x in activity_times.times if t in ("read_clock", "record_event")]
                            for activity_type, seconds in ran:
                                p[f"activity {activity_type} on the worker (its body)"].append(seconds)
                            p["workflow code, SDK and local-activity scheduling (the task less the activities' bodies)"].append(
                                split["task"] - sum(s for _, s in ran))
                            p["local activities in the Update's task (count)"].append(len(ran))
                            p["local activities after the Update completed, in its task (count)"].append(len(split["after"]))
                    return {name: {k: (_ms(v) if "count" not in k else {"mean": statistics.fmean(v)}) for k, v in p.items()}
                            for name, p in parts.items()}
            finally:
                controller.stop()


async def main_async(argv: list[str]) -> dict:
    def arg(name: str, default: int) -> int:
        return int(argv[argv.index(name) + 1]) if name in argv else default

    import os

    load = os.getloadavg()
    out = {"load_average": [round(x, 2) for x in load], "record_event": await record_event_breakdown(arg("--events", 30))}
    temporal = arg("--temporal", 20)
    if temporal:
        out["update"] = await update_breakdown(temporal)
    return out


def main() -> None:
    print(json.dumps(asyncio.run(main_async(sys.argv[1:])), indent=2))


if __name__ == "__main__":
    main()
