"""Lifecycle throughput (issue 6, item 1): N recommendations' complete lifecycles, publication to the
end of the re-opening window, at a compressed time scale, with the loopback SMTP capture and the
database on SQLite and on PostgreSQL; against bare workflows of identical shape on the same server.

The baseline's shape is read from our own histories (bench/shape.py): one inspection workflow and one
recommendation workflow of the run, cut into steps; `BareFollowUp` replays those steps with the same
timers and as many activities that do nothing, child starts, signals and Updates. A second baseline
does the same work with the same shape (bench/bare_work.py): each write an event's rows by plain SQL in
one transaction on the same kind of database as ours, each email leased, sent to a loopback SMTP
capture and marked sent, and the driver polls its projection row as ours polls our projection.

Every report is for a different force, published on a Monday, with recommendations due "within six
months". Nobody sends an action plan or a PCC response (so their reminders and escalations all go
out); when the revisit opens automatically at the six-month limit and asks for evidence, the driver
submits it and records "achieved"; each workflow then waits out the re-opening window and ends.
"""

from __future__ import annotations

import asyncio
import time
from datetime import date, timedelta
from pathlib import Path

from sqlalchemy import select
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowUpdateRPCTimeoutOrCancelledError
from temporalio.service import RPCError, RPCStatusCode

from bench.bare import BareFollowUp, BareInput, Step
from bench.common import ROOT, bare_worker, bounded, create_database, dev_server, maybe_postgres, our_stack, peak_rss
from bench.shape import LOCAL_ACTIVITY_MARKER, shape_counts, steps_from_history, timeline
from ncpi_workflow.forces import load_forces
from ncpi_workflow.lifecycle import DecisionRequest, EvidenceRequestInput, inspection_workflow_id, recommendation_workflow_id
from ncpi_workflow.models import Recommendation
from ncpi_workflow.publishing import publish
from tests.lifecycle_support import write_report

# Mondays: each run publishes on its own date, so its workflow IDs are its own on the shared server.
PUBLISHED = {"sqlite": date(2025, 3, 3), "postgresql": date(2025, 3, 10)}
RECS_PER_REPORT = 10
# Publication to the end of the re-opening window is about 19 months of the policy calendar: at this
# scale, about 24 seconds.
TIME_SCALE = 2_000_000.0
POLL_SECONDS = 0.2


async def execute_update(handle, update, arg, update_id: str, not_ready_for: float = 120.0):
    """The Update, again by its ID when the server is too busy to answer in time (the server runs it once),
    or while the workflow's task is failing for now (a task timed out on an overloaded machine: it is
    retried), for up to `not_ready_for` seconds."""
    not_ready = 0.0
    while True:
        try:
            return await handle.execute_update(update, arg, id=update_id)
        except WorkflowUpdateRPCTimeoutOrCancelledError:
            if asyncio.current_task().cancelling():
                # The SDK turns our own cancellation (a time window's end) into this error: stop, do not retry.
                raise asyncio.CancelledError() from None
            await asyncio.sleep(POLL_SECONDS)
        except RPCError as exc:
            if exc.status is not RPCStatusCode.FAILED_PRECONDITION or not_ready >= not_ready_for:
                raise
            not_ready += 1.0
            await asyncio.sleep(1.0)


# Results waited for at once: each is a long poll, and the server refuses a namespace more than its
# limit of concurrent pollers ("namespace concurrent poller limit exceeded", seen at 5,000 workflows).
RESULT_POLLS = 200


async def ended(client, workflow_id: str):
    """The workflow's result, once it exists and has ended (children start a moment after their parent)."""
    while True:
        try:
            return await client.get_workflow_handle(workflow_id).result()
        except RPCError as exc:
            if exc.status is not RPCStatusCode.NOT_FOUND:
                raise
            await asyncio.sleep(POLL_SECONDS)


def report_dates(reports: int, published: date) -> list[tuple[str, date]]:
    """(force, publication date) of each report: one per force, then the forces again a week later."""
    codes = sorted(load_forces(ROOT / "config" / "forces.yaml"))
    return [(codes[k % len(codes)], published + timedelta(weeks=k // len(codes))) for k in range(reports)]


async def row_counts(sessions) -> dict[str, int]:
    """Rows in each of our tables."""
    from sqlalchemy import func

    from ncpi_workflow.models import Base

    async with sessions() as session:
        return {t.name: await session.scalar(select(func.count()).select_from(t)) for t in Base.metadata.sorted_tables}


NOT_EVENT_ROWS = {"forces", "contacts", "relay_status", "job_runs"}  # reference data, the worker's bookkeeping


def same_work_rows_per_write(ours: dict, inspection_steps: list[Step], recommendation_steps: list[Step], reports: int) -> float:
    """The record and audit rows each of the same-work baseline's writes adds, so that it writes as many
    rows in all as ours did: ours' rows (less the reference data and the worker's bookkeeping, written once
    per database, not per event), less the outbox rows and their audit rows (the baseline writes those for
    each email) and one projection row per workflow, over ours' writes (record_event and the like)."""
    writes = reports * (sum(s.writes for s in inspection_steps) + RECS_PER_REPORT * sum(s.writes for s in recommendation_steps))
    rows = {t: n for t, n in (ours.get("rows_written") or {}).items() if t not in NOT_EVENT_ROWS}
    emails = rows.get("notifications", 0)
    other = sum(rows.values()) - 2 * emails - reports * (1 + RECS_PER_REPORT)
    return max(1.0, round(other / writes, 3)) if writes else 2.0


def work_done(history, until: float | None = None, since: float | None = None) -> int:
    """The activities and local activities a history shows completed (after `since` and at or before
    `until`, seconds since the epoch, when given): the unit a time window counts the work in."""
    count = 0
    for event in history.events:
        at = event.event_time.ToNanoseconds() / 1e9
        if until is not None and at > until:
            break
        if since is not None and at <= since:
            continue
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED or (
                event.event_type == EventType.EVENT_TYPE_MARKER_RECORDED
                and event.marker_recorded_event_attributes.marker_name == LOCAL_ACTIVITY_MARKER):
            count += 1
    return count


def work_per_recommendation(inspection_history, recommendation_history) -> float:
    """One whole lifecycle's work per recommendation: its own history's, and its share of its inspection's."""
    return work_done(recommendation_history) + work_done(inspection_history) / RECS_PER_REPORT


async def _history_or_none(client, workflow_id: str):
    try:
        return await client.get_workflow_handle(workflow_id).fetch_history()
    except RPCError as exc:
        if exc.status is not RPCStatusCode.NOT_FOUND:
            raise
        return None  # not started when the window closed


async def window_figures(client, parents: list[str], children: list[str], since: float, window: float,
                         per_recommendation: float, sample: int = 20) -> dict:
    """The work done in a time window of `window` seconds from `since` (seconds since the epoch),
    estimated from a sample of the histories (every k-th parent and its children, so early and late
    publications alike): activities and local activities completed in it, over `per_recommendation`
    (one whole lifecycle's count): recommendations' worth of work per second."""
    until = since + window
    stride = max(1, len(parents) // sample)
    picked = list(range(0, len(parents), stride))
    parent_ids = [parents[k] for k in picked]
    child_ids = [c for k in picked for c in children[k * RECS_PER_REPORT:(k + 1) * RECS_PER_REPORT]]
    histories = await bounded([_history_or_none(client, w) for w in parent_ids + child_ids], 16)
    parent_work = sum(work_done(h, until, since) for h in histories[:len(parent_ids)] if h is not None)
    child_work = sum(work_done(h, until, since) for h in histories[len(parent_ids):] if h is not None)
    ended_children = sum(1 for h in histories[len(parent_ids):] if h is not None and any(
        e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED and e.event_time.ToNanoseconds() / 1e9 <= until
        for e in h.events[-3:]))
    started_children = sum(1 for h in histories[len(parent_ids):] if h is not None and h.events
                           and h.events[0].event_time.ToNanoseconds() / 1e9 <= until)
    work = parent_work * len(parents) / len(parent_ids) + child_work * len(children) / max(1, len(child_ids))
    equivalent = work / per_recommendation
    return {
        "seconds": round(window, 2), "window_seconds": window,
        "recommendations_per_second": round(equivalent / window, 2),
        "recommendations_worth_of_work": round(equivalent, 1),
        "work_per_recommendation": round(per_recommendation, 2),
        "sampled_workflows": len(parent_ids) + len(child_ids),
        "sampled_recommendations_started": started_children, "sampled_recommendations_ended": ended_children,
        "note": "a time window from the end of publication (every inspection or parent workflow started; they start "
                "their recommendations): activities and local activities "
                "completed in it, counted in a sample of the histories, over one whole lifecycle's count per recommendation",
    }


async def _until_done_or(window: float | None, body, published: asyncio.Event) -> float:
    """Run `body` to its end, or until `window` seconds after `published` is set (then cancel it); the
    seconds taken."""
    started = time.perf_counter()
    task = asyncio.ensure_future(body)
    if window is None:
        await task
        return time.perf_counter() - started
    waiting = asyncio.ensure_future(published.wait())
    await asyncio.wait({task, waiting}, return_when=asyncio.FIRST_COMPLETED)
    waiting.cancel()
    if not task.done():
        await asyncio.wait({task}, timeout=window)
    if not task.done():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    else:
        task.result()
    return time.perf_counter() - started


async def answer_when_asked(asked, total: int, answer) -> None:
    """As a force's portal would: poll `asked()` (the IDs whose projection asks for evidence), start
    `answer(id)` once for each new one, until `total` have been answered; cancelled, the answers are too."""
    driven: set[str] = set()
    drivers: list[asyncio.Task] = []
    try:
        while len(driven) < total:
            for key in set(await asked()) - driven:
                driven.add(key)
                drivers.append(asyncio.create_task(answer(key)))
            await asyncio.sleep(POLL_SECONDS)
        await asyncio.gather(*drivers)
    finally:
        for task in drivers:
            task.cancel()


async def _ours(env, workdir: Path, database_url: str, published: date, reports: int, *, workers: int = 1,
                time_scale: float = TIME_SCALE, many: bool = False, window: float | None = None,
                per_recommendation: float | None = None) -> dict:
    """Ours; `workers` `ncpi worker` processes; `many`: published by `publish_many` as `ncpi publish A B ...`
    does (else one `publish` after the other). `window`: stop after that many seconds and count the work
    done (`window_figures`, against `per_recommendation`, one whole lifecycle's count)."""
    from ncpi_workflow.app.publishing import check_file
    from ncpi_workflow.publishing import publish_many

    pairs = report_dates(reports, published)
    files = [write_report(workdir, code, day, [(f"R{i}", "within_six_months") for i in range(1, RECS_PER_REPORT + 1)])
             for code, day in pairs]
    inspections = [f"{code}-{day.isoformat()}" for code, day in pairs]
    recommendations = [f"{i}-R{n}" for i in inspections for n in range(1, RECS_PER_REPORT + 1)]
    extra = {} if window is None else {"shutdown_grace_seconds": 1}  # a window's end leaves work in flight
    async with our_stack(env, workdir, database_url, workers=workers, time_scale=time_scale, **extra) as ours, \
            peak_rss([w.pid for w in ours.workers]) as rss:
        rows_before = await row_counts(ours.sessions)
        outcomes: list = []

        async def evidence_then_decision(rec_id: str) -> None:
            handle = env.client.get_workflow_handle(recommendation_workflow_id(rec_id))
            await execute_update(handle, "submit_evidence", EvidenceRequestInput(
                filename=f"{rec_id}.pdf", sha256="ab" * 32, size_bytes=10, storage_path="/dev/null",
                content_type="application/pdf", by="bench"), f"{rec_id}/evidence")
            await execute_update(handle, "record_decision", DecisionRequest("achieved", "implemented in full", "bench"),
                                 f"{rec_id}/decision")

        async def asked_for_evidence() -> list[str]:
            async with ours.sessions() as session:
                return (await session.scalars(
                    select(Recommendation.id).where(Recommendation.phase == "evidence_requested"))).all()

        def drive():
            # The force answers when the revisit asks for evidence, as its portal would show it.
            return answer_when_asked(asked_for_evidence, len(recommendations), evidence_then_decision)

        published = asyncio.Event()
        window_from: list[float] = []
        checked = [check_file(ours.settings, f) for f in files] if many else []  # the files read and checked first

        async def whole_lifecycle() -> None:
            if many:
                published_ = await publish_many(ours.settings, env.client, [(Path(c.name), c.loaded) for c in checked])
                assert all(o.publication is not None and o.publication.started for o in published_), published_
            else:
                for file in files:
                    await publish(ours.settings, env.client, file)
            window_from.append(time.time())
            published.set()
            ends = [ended(env.client, inspection_workflow_id(i)) for i in inspections]
            ends += [ended(env.client, recommendation_workflow_id(r)) for r in recommendations]
            results, _ = await asyncio.gather(bounded(ends, RESULT_POLLS), drive())
            outcomes.extend(results)

        started_wall = time.time()
        elapsed = await _until_done_or(window, whole_lifecycle(), published)
        emails = len(ours.smtp.messages)
        rows_after = await row_counts(ours.sessions)
        if window is None:
            assert set(outcomes[len(inspections):]) == {"achieved"}, f"unexpected outcomes: {set(outcomes)}"
            inspection_history = await env.client.get_workflow_handle(inspection_workflow_id(inspections[0])).fetch_history()
            recommendation_history = await env.client.get_workflow_handle(
                recommendation_workflow_id(recommendations[0])).fetch_history()
    if window is not None:  # counted with the workers stopped, so that the peak RSS is the window's
        if not window_from:
            raise RuntimeError(f"the publication did not end within {elapsed:.0f} s")
        figures = await window_figures(env.client, [inspection_workflow_id(i) for i in inspections],
                                       [recommendation_workflow_id(r) for r in recommendations],
                                       window_from[0], window, per_recommendation)
        return {**figures, "publication_seconds": round(window_from[0] - started_wall, 2), "emails_received": emails,
                "worker_rss": rss}
    return {
        "seconds": round(elapsed, 2),
        "recommendations_per_second": round(len(recommendations) / elapsed, 2),
        "emails_received": emails,
        # Rows the run added, table by table (publication's included): what the same-work baseline matches.
        "rows_written": {t: rows_after[t] - rows_before.get(t, 0) for t in rows_after if rows_after[t] != rows_before.get(t, 0)},
        "worker_rss": rss,
        "work_per_recommendation": round(work_per_recommendation(inspection_history, recommendation_history), 2),
        "inspection_steps": steps_from_history(inspection_history),
        "recommendation_steps": steps_from_history(recommendation_history),
        "shape": {"inspection": shape_counts(inspection_history), "recommendation": shape_counts(recommendation_history)},
        "timeline": {"inspection": timeline(inspection_history), "recommendation": timeline(recommendation_history)},
    }


async def _bare(env, workdir: Path, inspection_steps: list[Step], recommendation_steps: list[Step], reports: int,
                *, workers: int = 1, window: float | None = None, per_recommendation: float | None = None,
                database_url: str | None = None, rows_per_write: float = 2.0, prefix: str = "bare-lifecycle") -> dict:
    """Bare workflows of our shape; `window` and `per_recommendation` as `_ours` has them. With
    `database_url`, the same-work baseline: each write an event's rows in one transaction there, each
    email leased, sent to a loopback SMTP capture (ours' kind) and marked sent; the driver, as ours,
    answers when the projection row (its own) asks for evidence."""
    from contextlib import AsyncExitStack

    from ncpi_workflow.smtp_capture import start_capture
    from tests.postgres import free_port

    queue = prefix
    updates = [s.name for s in recommendation_steps if s.trigger == "update"]
    same_work = database_url is not None
    parents = [f"{prefix}-{k}" for k in range(reports)]
    children = [f"{prefix}-{k}-rec-{n}" for k in range(reports) for n in range(1, RECS_PER_REPORT + 1)]
    async with AsyncExitStack() as stack:
        smtp = smtp_port = engine = None
        if same_work:
            from bench.bare_work import create_engine, create_schema

            await create_schema(database_url)
            smtp_port = free_port()
            controller, smtp = start_capture(port=smtp_port)
            stack.callback(controller.stop)
            engine = create_engine(database_url)
            stack.push_async_callback(engine.dispose)
        processes = [await stack.enter_async_context(bare_worker(env, workdir, queue, f"-{n + 1}" if n else "",
                                                                 database_url=database_url, smtp_port=smtp_port))
                     for n in range(workers)]
        rss = await stack.enter_async_context(peak_rss([p.pid for p in processes]))

        async def answer(child_id: str) -> None:
            # Each Update waits in the workflow for its step; the child exists a moment after its parent.
            handle = env.client.get_workflow_handle(child_id)
            for k, name in enumerate(updates):
                while True:
                    try:
                        await execute_update(handle, BareFollowUp.act, name, f"{child_id}/{k}-{name}")
                        break
                    except RPCError as exc:
                        if exc.status is not RPCStatusCode.NOT_FOUND:
                            raise
                        await asyncio.sleep(POLL_SECONDS)

        async def awaiting_first_update() -> list[str]:
            from sqlalchemy import text

            async with engine.connect() as conn:
                return (await conn.scalars(text("SELECT workflow_id FROM bare_projection WHERE phase = :phase"),
                                           {"phase": f"awaiting:{updates[0]}"})).all()

        def drive():
            # As ours: poll the projection for the workflows waiting for the first Update, then answer them.
            return answer_when_asked(awaiting_first_update, len(children), answer)

        first_update = next((i for i, s in enumerate(recommendation_steps) if s.trigger == "update"), None)
        # The driver polls the projection when the step before the first Update writes it (ours' does).
        polls = same_work and first_update and recommendation_steps[first_update - 1].writes
        published = asyncio.Event()
        window_from: list[float] = []

        async def whole_lifecycle() -> None:
            handles = []
            for k in range(reports):
                handles.append(await env.client.start_workflow(
                    BareFollowUp.run,
                    BareInput(steps=inspection_steps, child_steps=recommendation_steps, child_id_prefix=f"{prefix}-{k}-rec",
                              same_work=same_work, rows_per_write=rows_per_write),
                    id=parents[k], task_queue=queue,
                ))
            window_from.append(time.time())
            published.set()
            if polls:
                await asyncio.gather(drive(), bounded([h.result() for h in handles] + [ended(env.client, c) for c in children],
                                                      RESULT_POLLS))
            else:
                await asyncio.gather(*(answer(c) for c in children))
                await bounded([h.result() for h in handles] + [ended(env.client, c) for c in children], RESULT_POLLS)

        started_wall = time.time()
        elapsed = await _until_done_or(window, whole_lifecycle(), published)
        extra: dict = {}
        if same_work:
            from bench.bare_work import count_rows

            extra = {"rows": await count_rows(database_url), "emails_received": len(smtp.messages),
                     "rows_per_write": rows_per_write,
                     "database": "postgresql" if database_url.startswith("postgresql") else "sqlite"}
        if window is None:
            inspection_history = await env.client.get_workflow_handle(parents[0]).fetch_history()
            recommendation_history = await env.client.get_workflow_handle(children[0]).fetch_history()
    if window is not None:  # counted with the worker stopped, so that the peak RSS is the window's
        if not window_from:
            raise RuntimeError(f"the starts did not end within {elapsed:.0f} s")
        figures = await window_figures(env.client, parents, children, window_from[0], window, per_recommendation)
        return {**figures, "publication_seconds": round(window_from[0] - started_wall, 2), "worker_rss": rss, **extra}
    return {
        "seconds": round(elapsed, 2),
        "recommendations_per_second": round(len(children) / elapsed, 2),
        "worker_rss": rss,
        "work_per_recommendation": round(work_per_recommendation(inspection_history, recommendation_history), 2),
        "shape": {"inspection": shape_counts(inspection_history), "recommendation": shape_counts(recommendation_history)},
        "timeline": {"inspection": timeline(inspection_history), "recommendation": timeline(recommendation_history)},
        **extra,
    }


async def bench(env, workdir: Path, quick: bool, cluster=None) -> dict:
    """Ours on SQLite and on PostgreSQL; for each, the same-work baseline on the same database (run just
    after it, so both see the same load); then the bare baseline that does no I/O. `cluster`: a
    PostgreSQL cluster shared with other sections (bench/run.py), else one of its own."""
    reports = 3 if quick else 10
    results: dict = {"recommendations": reports * RECS_PER_REPORT, "inspections": reports, "time_scale": TIME_SCALE}
    sqlite_dir = workdir / "lifecycle-sqlite"
    sqlite_dir.mkdir()
    ours = {"sqlite": await _ours(env, sqlite_dir, f"sqlite+aiosqlite:///{sqlite_dir / 'ncpi.db'}", PUBLISHED["sqlite"], reports)}
    template = ours["sqlite"]
    steps = (template.pop("inspection_steps"), template.pop("recommendation_steps"))
    same_work: dict = {}

    async def same(name: str, url: str) -> None:
        per_write = same_work_rows_per_write(ours[name], *steps, reports)
        same_work[name] = await _bare(env, workdir / f"lifecycle-same-work-{name}", *steps, reports, database_url=url,
                                      rows_per_write=per_write, prefix=f"bare-same-work-{name}")

    (workdir / "lifecycle-same-work-sqlite").mkdir()
    await same("sqlite", f"sqlite+aiosqlite:///{workdir / 'lifecycle-same-work-sqlite' / 'bare.db'}")
    async with maybe_postgres(cluster) as (cluster, reason):
        if cluster is None:
            ours["postgresql"] = same_work["postgresql"] = {"skipped": reason}
        else:
            pg_dir = workdir / "lifecycle-postgresql"
            pg_dir.mkdir()
            ours["postgresql"] = await _ours(env, pg_dir, await create_database(cluster, "ncpi_bench_lifecycle"),
                                             PUBLISHED["postgresql"], reports)
            (workdir / "lifecycle-same-work-postgresql").mkdir()
            await same("postgresql", await create_database(cluster, "bare_bench_lifecycle"))
    bare = await _bare(env, workdir, *steps, reports)
    for name, figures in ours.items():
        figures.pop("inspection_steps", None)
        figures.pop("recommendation_steps", None)
        if "recommendations_per_second" in figures:
            figures["ratio"] = round(figures["recommendations_per_second"] / bare["recommendations_per_second"], 3)
            base = same_work.get(name) or {}
            if "recommendations_per_second" in base:
                figures["ratio_same_work"] = round(figures["recommendations_per_second"] / base["recommendations_per_second"], 3)
    results.update(ours=ours, baseline_bare=bare, baseline_same_work=same_work)
    return results


async def _standalone(quick: bool) -> dict:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="ncpi-bench-lifecycle-") as tmp:
        async with dev_server() as env:
            return await bench(env, Path(tmp), quick)


if __name__ == "__main__":
    import json
    import os
    import sys

    print(json.dumps(asyncio.run(_standalone("--quick" in sys.argv)), indent=2), flush=True)
    os._exit(0)  # the Temporal SDK can crash the interpreter at exit (sdk-python issue 300)
