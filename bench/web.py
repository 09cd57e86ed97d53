"""Web benchmark (issue 12, section 5): the all-forces dashboard over 100,000 recommendations on
SQLite and on a throwaway PostgreSQL cluster, and a recommendation page against `ncpi show --json`.

In the same invocation, on the same rows:
- the dashboard page, `GET /` through the real app (FastAPI, sign-in cookie, the aggregate query,
  the template), timed in-process around the ASGI request: server time, no network;
- the dashboard's aggregate statement alone (`read_models.dashboard_query`), and the statement as it
  was before the projected columns (kept here, `_dashboard_query_before`), for before and after;
- baseline: the bare aggregate, `SELECT force_code, count(*)` of the open recommendations joined to
  their inspections, grouped by force: the least any per-force figure over every row costs;
- a recommendation page (`GET /recommendations/ID`: its records, the workflow's live "state" Query,
  the template) against `ncpi show ID --json` end to end (a process: start-up, connect, the Query,
  JSON), with `ncpi --help` for the start-up alone; SQLite, on a Temporal dev server and a worker.
Before anything is timed the new aggregate's figures are checked against the old statement's.

`.venv/bin/python -m bench.web [--quick]` prints JSON (quick: 10,000 recommendations) and writes
bench/results/web.json.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

from sqlalchemy import and_, case, exists, func, literal, or_, select, text

from bench.common import ROOT, create_database, maybe_postgres, ncpi_command, ncpi_env
from ncpi_workflow import db
from ncpi_workflow.app import read_models
from ncpi_workflow.app.read_models import REPORT_ITEMS, RUNNING_PHASES, SOON_DAYS
from ncpi_workflow.forces import load_forces
from ncpi_workflow.lifecycle import ForceClaim, InspectionPhase, Phase
from ncpi_workflow.models import Deadline, Force, Inspection, Recommendation
from ncpi_workflow.store import load_reference_forces

HERE = Path(__file__).resolve().parent
RECS_PER_INSPECTION = 10
PAGE_RUNS = 40
QUERY_RUNS = 20
BEFORE_RUNS = 5
SHOW_RUNS = 5
PASSWORD = "bench password of some length"


def percentiles(samples: list[float]) -> dict:
    ordered = sorted(samples)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))], 1)

    return {"p50_ms": round(statistics.median(ordered), 1), "p95_ms": at(0.95), "samples": len(ordered)}


async def timed(action, runs: int) -> dict:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        await action()
        samples.append((time.perf_counter() - started) * 1000)
    return percentiles(samples)


# ---------------------------------------------------------------- before: the aggregate as it was


def _dashboard_query_before(today: date, programme: str | None = None, phase: str | None = None):
    """The aggregate before the projected columns (read_models at commit 1be5511): deadlines joined per row."""
    r = Recommendation.__table__
    i = Inspection.__table__
    d = Deadline.__table__
    f = Force.__table__
    soon = today + timedelta(days=SOON_DAYS)

    def inspection_filter(inspection):
        conditions = []
        if programme:
            conditions.append(inspection.c.programme == programme)
        if phase:
            rr = r.alias("in_phase")
            conditions.append(exists().where(rr.c.inspection_id == inspection.c.id, rr.c.phase == phase))
        return conditions

    # Open recommendations, each with the clock that runs now (its own or its evidence deadline).
    clock = d.alias("clock")
    running = or_(
        and_(r.c.phase.in_(RUNNING_PHASES), or_(r.c.force_claim.is_(None), r.c.force_claim != ForceClaim.IMPLEMENTED.value)),
        r.c.phase == Phase.EVIDENCE_REQUESTED.value,
    )
    rec_where = [r.c.phase != Phase.CLOSED.value, *inspection_filter(i)]
    if phase:
        rec_where.append(r.c.phase == phase)
    recs = (
        select(
            i.c.force_code.label("force"),
            func.count().label("open"),
            func.sum(case((and_(running, clock.c.current_due < today), 1), else_=0)).label("overdue"),
            func.min(case((and_(running, clock.c.current_due >= today), clock.c.current_due))).label("next_due"),
        )
        .select_from(
            r.join(i, i.c.id == r.c.inspection_id).outerjoin(
                clock,
                and_(
                    clock.c.recommendation_id == r.c.id,
                    clock.c.cycle == r.c.cycle,
                    clock.c.kind.in_(("recommendation", "evidence")),  # lets PostgreSQL hash only these
                    clock.c.kind == case((r.c.phase == Phase.EVIDENCE_REQUESTED.value, "evidence"), else_="recommendation"),
                ),
            )
        )
        .where(*rec_where)
        .group_by(i.c.force_code)
        .subquery("recs")
    )

    # Report-level items not yet received, and revisit limits of revisits not open yet.
    ii = i.alias("item_inspection")
    item = d.alias("item")
    # Report-level keys only (a recommendation's are "recommendation:R1", "evidence:R1"), so that the
    # (inspection_id, key, cycle) unique index finds them per inspection.
    waiting_item = and_(item.c.key.in_(REPORT_ITEMS), item.c.met_at.is_(None))
    waiting_revisit = and_(item.c.key == "revisit_by", item.c.cycle == ii.c.cycle, ii.c.phase == InspectionPhase.FOLLOWING_UP.value)
    items = (
        select(
            ii.c.force_code.label("force"),
            func.sum(case((item.c.current_due < today, 1), else_=0)).label("overdue"),
            func.min(case((item.c.current_due >= today, item.c.current_due))).label("next_due"),
            func.sum(case((and_(item.c.key == "revisit_by", item.c.current_due >= today, item.c.current_due <= soon), 1), else_=0)).label("revisits"),
        )
        .select_from(item.join(ii, ii.c.id == item.c.inspection_id))
        .where(
            ii.c.phase != InspectionPhase.CLOSED.value,
            item.c.key.in_((*REPORT_ITEMS, "revisit_by")),
            or_(waiting_item, waiting_revisit),
            *inspection_filter(ii),
        )
        .group_by(ii.c.force_code)
        .subquery("items")
    )

    ci = i.alias("counted")
    counted = (
        select(ci.c.force_code.label("force"), func.count().label("inspections"))
        .where(*inspection_filter(ci))
        .group_by(ci.c.force_code)
        .subquery("counted")
    )

    zero = literal(0)
    return (
        select(
            f.c.code, f.c.name, f.c.region,
            func.coalesce(counted.c.inspections, zero),
            func.coalesce(recs.c.open, zero),
            func.coalesce(recs.c.overdue, zero),
            func.coalesce(items.c.overdue, zero),
            recs.c.next_due,
            items.c.next_due,
            func.coalesce(items.c.revisits, zero),
        )
        .select_from(
            f.outerjoin(recs, recs.c.force == f.c.code)
            .outerjoin(items, items.c.force == f.c.code)
            .outerjoin(counted, counted.c.force == f.c.code)
        )
        .order_by(f.c.name)
    )




# ---------------------------------------------------------------- the rows


def _rows(recommendations: int, codes: list[str], today: date, seed: int = 1):
    """Inspections (10 recommendations each, round-robin over the forces), their report-level
    deadlines and every recommendation's own deadline (and an evidence deadline when requested),
    published over the last 900 days, in random phases, claims and receipts."""
    rnd = random.Random(seed)
    now = datetime.now(timezone.utc)
    insps, recs, clocks = [], [], []
    for n in range(max(1, recommendations // RECS_PER_INSPECTION)):
        code = codes[n % len(codes)]
        published = today - timedelta(days=rnd.randint(0, 900))
        iid = f"{code}-{published.isoformat()}-{n}"
        phase = rnd.choice(["following_up", "following_up", "revisit_open", "closed"])
        insps.append(dict(id=iid, force_code=code, programme=rnd.choice(["NCPI", "NCPI", "NCPI", "JTAI"]), title="t",
                          source_url="https://example.org", fieldwork_start=published, fieldwork_end=published,
                          published_on=published, illustrative=True, report_sha256="0" * 64, workflow_id=None,
                          created_at=now, phase=phase, cycle=1, next_action=None, next_action_at=None, projection_version=1))
        for key, days in (("action_plan", 42), ("pcc_response", 56), ("immediate_update", 28), ("revisit_by", 182)):
            due = published + timedelta(days=days)
            met = now if key != "revisit_by" and rnd.random() < 0.5 else None
            clocks.append(dict(inspection_id=iid, recommendation_id=None, key=key, kind=key, cycle=1,
                               original_due=due, current_due=due, met_at=met))
        for r in range(1, RECS_PER_INSPECTION + 1):
            rid = f"{iid}-R{r}"
            rphase = rnd.choice(["force_notified", "in_progress", "in_progress", "evidence_requested", "under_review", "closed"])
            cycle = rnd.choice([1, 1, 1, 2])
            recs.append(dict(id=rid, inspection_id=iid, ref=f"R{r}", text="x", timeframe="within_three_months", finding_id=None,
                             illustrative=True, phase=rphase, force_claim=rnd.choice([None, None, "in_progress", "implemented"]),
                             outcome="achieved" if rphase == "closed" else None, register_status="awaiting review", cycle=cycle,
                             next_action=None, next_action_at=None, projection_version=1, updated_at=now))
            for c in range(1, cycle + 1):
                due = published + timedelta(days=90 * c)
                clocks.append(dict(inspection_id=iid, recommendation_id=rid, key=f"recommendation:R{r}", kind="recommendation",
                                   cycle=c, original_due=due, current_due=due + timedelta(days=rnd.choice([0, 0, 14])), met_at=None))
            if rphase == "evidence_requested":
                due = published + timedelta(days=90 * cycle + 10)
                clocks.append(dict(inspection_id=iid, recommendation_id=rid, key=f"evidence:R{r}", kind="evidence",
                                   cycle=cycle, original_due=due, current_due=due, met_at=None))
    return insps, recs, clocks


async def _load(url: str, sessions, tables: list[tuple[type, list[dict]]]) -> None:
    if url.startswith("postgresql"):
        # COPY through asyncpg: one round trip per table instead of an INSERT per row.
        async with sessions() as session:
            connection = await session.connection()
            raw = (await connection.get_raw_connection()).driver_connection
            async with raw.transaction():
                for model, rows in tables:
                    columns = list(rows[0])
                    await raw.copy_records_to_table(model.__tablename__, records=[tuple(r.values()) for r in rows],
                                                    columns=columns)
    else:
        # One Core executemany per table in one transaction.
        async with sessions.begin() as session:
            connection = await session.connection()
            for model, rows in tables:
                await connection.execute(model.__table__.insert(), rows)


async def _fill(url: str, recommendations: int, today: date) -> tuple[dict, object]:
    """Schema, the 43 forces, the rows; then the projected columns computed as migration 0006's
    backfill computes them, and the planner's statistics (PostgreSQL: VACUUM ANALYZE)."""
    await db.upgrade(url)
    forces = load_forces(ROOT / "config" / "forces.yaml")
    figures: dict = {}
    async with db.open_database(url) as sessions:
        async with sessions.begin() as session:
            await load_reference_forces(session, forces)
        started = time.perf_counter()
        insps, recs, clocks = _rows(recommendations, sorted(forces), today)
        await _load(url, sessions, [(Inspection, insps), (Recommendation, recs), (Deadline, clocks)])
        figures["load_seconds"] = round(time.perf_counter() - started, 1)
        started = time.perf_counter()
        async with sessions.begin() as session:
            await session.execute(read_models.refresh_recommendation_clocks())
            await session.execute(read_models.refresh_report_items())
        figures["backfill_seconds"] = round(time.perf_counter() - started, 1)
        if url.startswith("postgresql"):
            # As autovacuum leaves a table in service: statistics and the visibility map (index-only scans).
            async with sessions() as session:
                raw = (await (await session.connection()).get_raw_connection()).driver_connection
                await raw.execute("VACUUM ANALYZE")
        else:
            async with sessions.begin() as session:
                await session.execute(text("ANALYZE"))
    figures.update(inspections=len(insps), recommendations=len(recs), deadlines=len(clocks))
    return figures


def _figures(rows) -> list[tuple]:
    """Each force's figures from the rows of either statement (the new one has two more next dates)."""
    out = []
    for code, _name, _region, inspections, open_, overdue, items, rec_next, item_next, revisits, *fresh in rows:
        dates = [str(d)[:10] for d in (rec_next, item_next, *fresh) if d is not None]
        out.append((code, int(inspections), int(open_), int(overdue), int(items), min(dates, default=None), int(revisits)))
    return out


def _bare_aggregate():
    return text(
        "SELECT i.force_code, count(*) FROM recommendations r JOIN inspections i ON i.id = r.inspection_id "
        "WHERE r.phase != 'closed' GROUP BY i.force_code"
    )


# ---------------------------------------------------------------- the figures


async def _measure_dashboard(url: str, rows: int, workdir: Path, today: date, page_runs: int = PAGE_RUNS) -> dict:
    from ncpi_workflow import users
    from ncpi_workflow.settings import Settings
    from ncpi_workflow.web.app import create_app
    from tests.web.conftest import browser

    figures = await _fill(url, rows, today)
    async with db.open_database(url) as sessions:
        async with sessions() as session:
            connection = await session.connection()
            after = (await connection.execute(read_models.dashboard_query(today))).all()
            before = (await connection.execute(_dashboard_query_before(today))).all()
        if _figures(after) != _figures(before):
            raise AssertionError("the dashboard's aggregate no longer gives the figures the old statement gave")

        async def run_statement(statement):
            async with sessions() as session:
                await (await session.connection()).execute(statement)

        bare = await timed(lambda: run_statement(_bare_aggregate()), QUERY_RUNS)
        query = await timed(lambda: run_statement(read_models.dashboard_query(today)), QUERY_RUNS)
        query_before = await timed(lambda: run_statement(_dashboard_query_before(today)), BEFORE_RUNS)

        settings = Settings(database_url=url, data_dir=workdir / "data", secret_key="bench-secret-key-of-at-least-32-characters",
                            temporal_address="127.0.0.1:1", task_queue="ncpi-bench-web")
        await users.add_user(sessions, "viewer@bench.example", "viewer", PASSWORD, by="bench")
        app = create_app(settings, sessions=sessions)
        b = browser(app)
        try:
            assert (await b.sign_in("viewer@bench.example", PASSWORD)).status_code == 303
            page = await b.get("/")
            assert page.status_code == 200 and page.text.count('<tr class="govuk-table__row">') == 44, page.status_code

            async def get_page():
                response = await b.get("/")
                assert response.status_code == 200

            dashboard = await timed(get_page, page_runs)
            filtered = await timed(lambda: b.get("/?phase=in_progress&sort=overdue&order=desc"), max(5, page_runs // 4))
        finally:
            await b.aclose()
    return {
        **figures,
        "dashboard_page": dashboard,
        "dashboard_page_filtered": filtered,
        "dashboard_query": query,
        "dashboard_query_before": query_before,
        "baseline": "bare aggregate: SELECT force_code, count(*) of the open recommendations JOIN inspections GROUP BY force_code",
        "baseline_query": bare,
        "ratio_p50": round(bare["p50_ms"] / dashboard["p50_ms"], 3) if dashboard["p50_ms"] else None,
    }


async def _cli(args: list[str], env: dict) -> bytes:
    result = await asyncio.to_thread(subprocess.run, [ncpi_command(), *args], env=env, cwd=ROOT, capture_output=True)
    if result.returncode != 0:
        raise RuntimeError(f"ncpi {' '.join(args)} failed ({result.returncode}): {result.stderr.decode()[-500:]}")
    return result.stdout


async def _measure_recommendation(url: str, workdir: Path, page_runs: int = PAGE_RUNS, show_runs: int = SHOW_RUNS,
                                  env=None) -> dict:
    """One report published through its workflow into the loaded database; its R1's page against `ncpi show`.
    On a dev server shared with other sections (`env`), in the namespace "bench-web": the report's IDs
    are the publication benchmark's."""
    import yaml

    from bench.common import maybe_dev_server, namespace_client, temporal_address
    from ncpi_workflow.app import publishing
    from ncpi_workflow.settings import Settings
    from ncpi_workflow.web.app import create_app
    from tests.postgres import free_port
    from tests.web.conftest import browser
    from worker import running_worker

    published = date.today() - timedelta(days=1)
    while published.weekday() >= 5:
        published -= timedelta(days=1)
    report = yaml.safe_load((ROOT / "examples" / "cumbria-2017.yaml").read_text())
    report.update(force="GLO", published=published.isoformat())
    end = published - timedelta(days=60)
    report["fieldwork"] = {"start": (end - timedelta(days=11)).isoformat(), "end": end.isoformat()}
    path = workdir / "report.yaml"
    path.write_text(yaml.safe_dump(report, sort_keys=False))
    inspection_id = f"GLO-{published.isoformat()}"
    rec_id = f"{inspection_id}-R1"
    from ncpi_workflow.smtp_capture import start_capture

    smtp_port = free_port()
    controller, _ = start_capture(port=smtp_port)  # the report's notices go somewhere, as in production
    async with maybe_dev_server(env) as env:
        namespace = "bench-web"
        client = await namespace_client(env, namespace)
        settings = Settings(database_url=url, data_dir=workdir / "data", secret_key="bench-secret-key-of-at-least-32-characters",
                            temporal_address=temporal_address(env), temporal_namespace=namespace, task_queue="ncpi-bench-web",
                            smtp_host="127.0.0.1", smtp_port=smtp_port)
        async with running_worker(client, settings), db.open_database(url) as sessions:
            await publishing.publish_file(settings, client, path, by="bench")
            for _ in range(300):  # its first projection
                async with sessions() as session:
                    rec = await session.get(Recommendation, rec_id)
                if rec is not None and rec.projection_version >= 1:
                    break
                await asyncio.sleep(0.1)
            app = create_app(settings, sessions=sessions, client=client)
            b = browser(app)
            try:
                assert (await b.sign_in("viewer@bench.example", PASSWORD)).status_code == 303
                first = await b.get(f"/recommendations/{rec_id}")
                assert first.status_code == 200 and "Live follow-up state is not available" not in first.text, first.status_code

                async def get_page():
                    response = await b.get(f"/recommendations/{rec_id}")
                    assert response.status_code == 200

                page = await timed(get_page, page_runs)
            finally:
                await b.aclose()
            cli_env = ncpi_env(workdir, database_url=url, temporal_address=settings.temporal_address,
                               temporal_namespace=namespace, task_queue=settings.task_queue)
            shown = json.loads(await _cli(["show", rec_id, "--json"], cli_env))
            assert shown["recommendation_id"] == rec_id
            show = await timed(lambda: _cli(["show", rec_id, "--json"], cli_env), show_runs)
            startup = await timed(lambda: _cli(["--help"], cli_env), show_runs)
    controller.stop()
    return {"recommendation_page": page, "cli_show_json": show, "cli_startup": startup,
            "ratio_p50": round(show["p50_ms"] / page["p50_ms"], 3) if page["p50_ms"] else None}


async def run(results: dict, quick: bool, rows: int | None = None, postgresql: bool = True, recommendation: bool = True,
              cluster=None, env=None) -> None:
    """`cluster`, `env`: a PostgreSQL cluster and a dev server shared with other sections (bench/run.py),
    else their own (on a shared server the recommendation page's workflows are in the namespace "bench-web")."""
    from ncpi_workflow.formatting import LONDON

    rows = rows or (10_000 if quick else 100_000)
    today = datetime.now(LONDON).date()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ncpi-bench-web-") as tmp:
        workdir = Path(tmp)
        page_runs = PAGE_RUNS if rows >= 1000 else 5
        sqlite_url = f"sqlite+aiosqlite:///{workdir / 'web.db'}"
        results["sqlite"] = await _measure_dashboard(sqlite_url, rows, workdir, today, page_runs)
        if recommendation:
            results["recommendation"] = await _measure_recommendation(sqlite_url, workdir, page_runs,
                                                                      SHOW_RUNS if rows >= 1000 else 2, env=env)
        if postgresql:
            async with maybe_postgres(cluster) as (cluster, reason):
                if cluster is None:
                    results["postgresql"] = {"skipped": reason}
                else:
                    url = await create_database(cluster, "ncpi_bench_web")
                    results["postgresql"] = await _measure_dashboard(url, rows, workdir, today, page_runs)
    results["seconds"] = round(time.perf_counter() - started, 1)


if __name__ == "__main__":
    import os

    out: dict = {}
    asyncio.run(run(out, "--quick" in sys.argv))
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "web.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2), flush=True)
    os._exit(0)  # the Temporal SDK can crash the interpreter at exit (sdk-python issue 300)
