"""Listing benchmark (issue 6, item 5): `ncpi status --json` and the status query behind it with
100,000 recommendations in the database, on SQLite and on a throwaway PostgreSQL cluster.

In the same invocation, on the same rows:
- before: the listing as it was (ORM `select(Inspection)` with `selectinload`, records built from
  the objects), replicated here;
- after: `status_rows` and `status_records` of ncpi_workflow/views.py, as `ncpi status` runs them;
- baseline: a bare `SELECT id FROM recommendations` fetching every row.
The command's output is checked byte for byte against the old code's JSON before anything is timed.

Issue 15, each against a baseline doing the same work:
- streamed JSON (`stream_status_json`, what `ncpi status --json` runs): time and tracemalloc peak,
  against the same columns by a bare SQL query (every row fetched at once, values as the driver
  gives them) encoded by the same `status_json`;
- the default text (`status_page` and its rendering: the summary, then page 1 of 50 rows), against
  the same summary query (`status_summary`) plus a bare SQL query of the same columns for the page.

`.venv/bin/python -m bench.listing [--quick]` prints JSON (quick: 10,000 recommendations).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

from sqlalchemy import select, text
from sqlalchemy.orm import selectinload

from bench.common import ROOT, create_database, maybe_postgres, median_ms, ncpi_command, ncpi_env
from ncpi_workflow import db
from ncpi_workflow.forces import load_forces
from ncpi_workflow.models import Inspection, Recommendation
from ncpi_workflow.store import load_reference_forces
from ncpi_workflow.views import (
    london_iso, render_status, render_status_summary, status_json, status_records, status_rows, status_summary,
    stream_status_json,
)

RECS_PER_INSPECTION = 10
PHASES = ["published", "force_notified", "in_progress", "evidence_requested", "evidence_submitted", "under_review", "closed"]
TIMEFRAMES = ["immediately", "within_three_months", "within_six_months"]
CLAIMS = [None, "not_started", "in_progress", "implemented"]
RUNS = 3
BEFORE_RUNS = 1  # the status query before this change: a reference in the label


# ---------------------------------------------------------------- before: the listing as it was


async def _status_query_before(sessions) -> list[Inspection]:
    """`ncpi status`'s query before status_rows: whole ORM objects, recommendations by selectinload."""
    async with sessions() as session:
        query = select(Inspection).options(selectinload(Inspection.recommendations))
        return list(await session.scalars(query.order_by(Inspection.published_on, Inspection.id)))


def _status_records_before(inspections: list[Inspection]) -> list[dict]:
    """views.status_records before status_rows: per ORM object, sorted in Python, an Enum per row."""
    records = []
    for insp in inspections:
        for rec in sorted(insp.recommendations, key=lambda r: (len(r.ref), r.ref)):
            records.append(
                {
                    "inspection_id": insp.id,
                    "force": insp.force_code,
                    "published": insp.published_on.isoformat(),
                    "inspection_phase": insp.phase,
                    "inspection_cycle": insp.cycle,
                    "inspection_next_action": insp.next_action,
                    "inspection_next_action_at": london_iso(insp.next_action_at),
                    "recommendation_id": rec.id,
                    "ref": rec.ref,
                    "timeframe": rec.timeframe,
                    "phase": rec.phase,
                    "register_status": rec.register_status,
                    "cycle": rec.cycle,
                    "force_claim": rec.force_claim,
                    "outcome": rec.outcome,
                    "next_action": rec.next_action,
                    "next_action_at": london_iso(rec.next_action_at),
                }
            )
    return records


# ---------------------------------------------------------------- the rows


def _rows(recommendations: int, codes: list[str]) -> tuple[list[dict], list[dict]]:
    """Inspections and recommendations (10 per inspection, inspections round-robin over the forces)."""
    now = datetime.now(timezone.utc)
    text_ = "The force should ensure that every child at risk is identified and safeguarded promptly. " * 2
    inspections, recs = [], []
    for i in range(recommendations // RECS_PER_INSPECTION):
        code = codes[i % len(codes)]
        published = date(2000, 1, 3) + timedelta(days=i // len(codes))
        iid = f"{code}-{published.isoformat()}"
        inspections.append(
            dict(id=iid, force_code=code, programme="NCPI", title=f"National child protection inspection: {code}",
                 source_url=f"https://www.justiceinspectorates.gov.uk/hmicfrs/{iid}", fieldwork_start=published - timedelta(days=90),
                 fieldwork_end=published - timedelta(days=60), published_on=published, illustrative=True,
                 report_sha256="0" * 64, workflow_id=f"ncpi/{code}/{published.isoformat()}", created_at=now,
                 phase="following_up", cycle=1, next_action="revisit", next_action_at=now + timedelta(days=30),
                 projection_version=1)
        )
        for j in range(1, RECS_PER_INSPECTION + 1):
            n = i * RECS_PER_INSPECTION + j
            phase = PHASES[n % len(PHASES)]
            recs.append(
                dict(id=f"{iid}-R{j}", inspection_id=iid, ref=f"R{j}", text=text_, timeframe=TIMEFRAMES[n % len(TIMEFRAMES)],
                     finding_id=None, illustrative=True, phase=phase, force_claim=CLAIMS[n % len(CLAIMS)],
                     outcome="achieved" if phase == "closed" else None, cycle=1,
                     next_action=None if phase == "closed" else "reminder",
                     next_action_at=None if phase == "closed" else now + timedelta(days=n % 90),
                     projection_version=1, updated_at=now)
            )
    return inspections, recs


async def _copy_into_postgresql(sessions, tables: list[tuple[str, list[dict]]]) -> None:
    # COPY through asyncpg: one round trip per table instead of an INSERT per row.
    async with sessions() as session:
        connection = await session.connection()
        raw = (await connection.get_raw_connection()).driver_connection
        async with raw.transaction():
            for table, rows in tables:
                columns = list(rows[0])
                await raw.copy_records_to_table(table, records=[tuple(r.values()) for r in rows], columns=columns)
        await raw.execute("ANALYZE")


async def _insert_into_sqlite(sessions, tables: list[tuple[str, list[dict]]]) -> None:
    # One Core executemany per table in one transaction (the ORM's bulk insert costs ten times as much).
    models = {"inspections": Inspection, "recommendations": Recommendation}
    async with sessions.begin() as session:
        connection = await session.connection()
        for table, rows in tables:
            await connection.execute(models[table].__table__.insert(), rows)


async def _fill(url: str, recommendations: int) -> dict:
    """Schema, the 43 forces, then `recommendations` rows; load_seconds counts building and writing the rows."""
    await db.upgrade(url)
    forces = load_forces(ROOT / "config" / "forces.yaml")
    async with db.open_database(url) as sessions:
        async with sessions.begin() as session:
            await load_reference_forces(session, forces)
        started = time.perf_counter()
        inspections, recs = _rows(recommendations, sorted(forces))
        tables = [("inspections", inspections), ("recommendations", recs)]
        if url.startswith("postgresql"):
            await _copy_into_postgresql(sessions, tables)
        else:
            await _insert_into_sqlite(sessions, tables)
        seconds = time.perf_counter() - started
    return {"inspections": len(inspections), "recommendations": len(recs), "load_seconds": round(seconds, 1)}


# ---------------------------------------------------------------- the command


async def _cli(args: list[str], env: dict) -> bytes:
    result = await asyncio.to_thread(subprocess.run, [ncpi_command(), *args], env=env, cwd=ROOT, capture_output=True)
    if result.returncode != 0:
        raise RuntimeError(f"ncpi {' '.join(args)} failed ({result.returncode}): {result.stderr.decode()[-500:]}")
    return result.stdout


# ---------------------------------------------------------------- issue 15: streamed JSON, the paged text

BARE_LISTING_SQL = (
    "SELECT i.id, i.force_code, i.published_on, i.phase, i.cycle, i.next_action, i.next_action_at, "
    "r.id, r.ref, r.timeframe, r.phase, r.cycle, r.force_claim, r.outcome, r.register_status, r.next_action, "
    "r.next_action_at FROM inspections i LEFT OUTER JOIN recommendations r ON r.inspection_id = i.id "
    "ORDER BY i.published_on, i.id, length(r.ref), r.ref"
)
RECORD_KEYS = ("inspection_id", "force", "published", "inspection_phase", "inspection_cycle", "inspection_next_action",
               "inspection_next_action_at", "recommendation_id", "ref", "timeframe", "phase", "cycle", "force_claim",
               "outcome", "register_status", "next_action", "next_action_at")


def _bare_value(value):
    return value.isoformat() if hasattr(value, "isoformat") else value


async def _bare_json(sessions, write) -> None:
    """The baseline of the streamed JSON: the same columns by bare SQL, all rows at once, the same encoder."""
    async with sessions() as session:
        connection = await session.connection()
        rows = (await connection.exec_driver_sql(BARE_LISTING_SQL)).all()
    write(status_json([dict(zip(RECORD_KEYS, map(_bare_value, row))) for row in rows if row[7] is not None]))


async def _streamed_json(sessions, write) -> None:
    async with sessions() as session:
        await stream_status_json(session, write)


async def _default_text(sessions, names: dict, today: date) -> list[str]:
    from ncpi_workflow.app.read_models import status_page

    page = await status_page(sessions, page=1, page_size=50, today=today)
    return [*render_status_summary(page.summary, today), "", *render_status(page.rows, names), "", f"page 1 of {page.pages:,}"]


async def _bare_text(sessions, today: date) -> list:
    """The baseline of the default text: the same summary query, and the page's columns by bare SQL."""
    async with sessions() as session:
        summary = await status_summary(session, today=today)
        connection = await session.connection()
        count = (await connection.exec_driver_sql(
            "SELECT count(*) FROM inspections i LEFT OUTER JOIN recommendations r ON r.inspection_id = i.id")).scalar_one()
        rows = (await connection.exec_driver_sql(BARE_LISTING_SQL + " LIMIT 50")).all()
    return [summary, count, rows]


async def _peak_mib(action) -> float:
    import tracemalloc

    tracemalloc.start()
    try:
        await action()
        return round(tracemalloc.get_traced_memory()[1] / 2**20, 1)
    finally:
        tracemalloc.stop()


async def _issue15(sessions, expected_json: bytes) -> dict:
    forces = load_forces(ROOT / "config" / "forces.yaml")
    names = {code: force.name for code, force in forces.items()}
    from ncpi_workflow.formatting import LONDON

    today = datetime.now(LONDON).date()
    pieces: list[str] = []
    await _streamed_json(sessions, pieces.append)
    if ("".join(pieces) + "\n").encode() != expected_json:
        raise AssertionError("stream_status_json no longer writes what the old listing printed")
    del pieces
    written = 0

    def sink(piece: str) -> None:  # written and forgotten, as stdout does
        nonlocal written
        written += len(piece)

    streamed = (await median_ms(lambda: _streamed_json(sessions, sink), RUNS))["median_ms"]
    bare_json = (await median_ms(lambda: _bare_json(sessions, sink), RUNS))["median_ms"]
    streamed_peak = await _peak_mib(lambda: _streamed_json(sessions, sink))
    bare_json_peak = await _peak_mib(lambda: _bare_json(sessions, sink))
    text_ms = (await median_ms(lambda: _default_text(sessions, names, today), RUNS))["median_ms"]
    bare_text_ms = (await median_ms(lambda: _bare_text(sessions, today), RUNS))["median_ms"]
    return {
        "streamed_json_ms": streamed,
        "streamed_json_peak_mib": streamed_peak,
        "baseline_json": "the same columns by a bare SQL query, every row fetched at once, encoded by the same status_json",
        "baseline_json_ms": bare_json,
        "baseline_json_peak_mib": bare_json_peak,
        "json_ratio": round(bare_json / streamed, 3) if streamed else None,
        "default_text_ms": text_ms,
        "baseline_text": "the same summary query (status_summary) and the page's 50 rows by a bare SQL query with a bare count",
        "baseline_text_ms": bare_text_ms,
        "text_ratio": round(bare_text_ms / text_ms, 3) if text_ms else None,
    }


# ---------------------------------------------------------------- the figures


async def _measure(url: str, rows: int, workdir: Path) -> dict:
    figures = await _fill(url, rows)
    expected = figures["recommendations"]
    env = ncpi_env(workdir, database_url=url)
    # The command must still print exactly what the old code printed, on every row.
    async with db.open_database(url) as sessions:
        before = _status_records_before(await _status_query_before(sessions))
    assert len(before) == expected
    old_output = (json.dumps(before, indent=2) + "\n").encode()
    del before
    # The check's run of `ncpi status --json` is the first of its timed runs (the database is warm by now).
    cli_started = time.perf_counter()
    if await _cli(["status", "--json"], env) != old_output:
        raise AssertionError("ncpi status --json no longer prints what the old listing printed")
    cli_first_ms = (time.perf_counter() - cli_started) * 1000
    async with db.open_database(url) as sessions:
        issue15 = await _issue15(sessions, old_output)
    del old_output

    async with db.open_database(url) as sessions:
        # Warm the connection pool and the database cache; every measured run then starts warm.
        async with sessions() as session:
            assert len(await status_rows(session)) == expected

        async def bare():
            async with sessions() as session:
                assert len((await session.execute(text("SELECT id FROM recommendations"))).all()) == expected

        query_before_ms = []

        async def query_and_records_before():
            started = time.perf_counter()
            inspections = await _status_query_before(sessions)
            query_before_ms.append((time.perf_counter() - started) * 1000)
            _status_records_before(inspections)

        async def query():
            async with sessions() as session:
                await status_rows(session)

        async def query_and_records():
            async with sessions() as session:
                status_records(await status_rows(session))

        baseline = (await median_ms(bare, RUNS))["median_ms"]
        # The code before this change is a reference in the row's label, not its baseline: one run.
        before = (await median_ms(query_and_records_before, BEFORE_RUNS))["median_ms"]
        query_before = round(sorted(query_before_ms)[len(query_before_ms) // 2], 1)
        after_query = (await median_ms(query, RUNS))["median_ms"]
        after = (await median_ms(query_and_records, RUNS))["median_ms"]

    async def cli_status():
        await _cli(["status", "--json"], env)

    async def cli_startup():
        await _cli(["--help"], env)

    cli_runs = (await median_ms(cli_status, RUNS - 1))["samples_ms"] + [round(cli_first_ms, 1)]
    cli = round(statistics.median(cli_runs), 1)
    startup = (await median_ms(cli_startup, RUNS))["median_ms"]
    return {
        **figures,
        **issue15,
        "status_query_before_ms": query_before,
        "status_query_and_records_before_ms": before,
        "status_query_ms": after_query,
        "status_query_and_records_ms": after,
        "cli_status_json_ms": cli,
        "cli_startup_ms": startup,
        "baseline": f"bare SELECT id FROM recommendations, all rows: {baseline} ms",
        "baseline_ms": baseline,
        "ratio": round(after_query / baseline, 1) if baseline else None,
        "ratio_before": round(query_before / baseline, 1) if baseline else None,
        "speedup": round(query_before / after_query, 1) if after_query else None,
        "runs": RUNS,
        "before_runs": BEFORE_RUNS,
    }


async def run(results: dict, quick: bool, cluster=None) -> None:
    """`cluster`: a PostgreSQL cluster shared with other sections (bench/run.py), else one of its own."""
    rows = 10_000 if quick else 100_000
    with tempfile.TemporaryDirectory(prefix="ncpi-bench-listing-") as tmp:
        workdir = Path(tmp)
        results["sqlite"] = await _measure(f"sqlite+aiosqlite:///{workdir / 'listing.db'}", rows, workdir)
        async with maybe_postgres(cluster) as (cluster, reason):
            if cluster is None:
                results["postgresql"] = {"skipped": reason}
                return
            url = await create_database(cluster, "ncpi_bench_listing")
            results["postgresql"] = await _measure(url, rows, workdir)


if __name__ == "__main__":
    out: dict = {}
    asyncio.run(run(out, "--quick" in sys.argv))
    print(json.dumps(out, indent=2))
