"""Listing benchmark (issue 6, item 5): `ncpi status --json` and the status query behind it with
100,000 recommendations in the database, on SQLite and on a throwaway PostgreSQL cluster.

Baseline, in the same invocation: a bare `SELECT id FROM recommendations` fetching every row.

`.venv/bin/python -m bench.listing [--quick]` prints JSON (quick: 10,000 recommendations).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

from sqlalchemy import insert, select, text
from sqlalchemy.orm import selectinload

from bench.common import ROOT, create_database, median_ms, postgres_or_reason
from ncpi_workflow import db
from ncpi_workflow.forces import load_forces
from ncpi_workflow.models import Inspection, Recommendation
from ncpi_workflow.store import load_reference_forces
from ncpi_workflow.views import status_records

RECS_PER_INSPECTION = 10
PHASES = ["published", "force_notified", "in_progress", "evidence_requested", "evidence_submitted", "under_review", "closed"]
TIMEFRAMES = ["immediately", "within_three_months", "within_six_months"]
CLAIMS = [None, "not_started", "in_progress", "implemented"]
CHUNK = 5_000


async def _status_query(sessions, code: str | None = None) -> list[Inspection]:
    """The query of `ncpi status` (ncpi_workflow/cli.py, `status`'s fetch), replicated: it is a closure there."""
    async with sessions() as session:
        query = select(Inspection).options(selectinload(Inspection.recommendations))
        if code:
            query = query.where(Inspection.force_code == code)
        return list(await session.scalars(query.order_by(Inspection.published_on, Inspection.id)))


async def _fill(url: str, recommendations: int) -> dict:
    """Schema, the 43 forces, then `recommendations` rows (10 per inspection, inspections round-robin over the forces)."""
    await db.upgrade(url)
    forces = load_forces(ROOT / "config" / "forces.yaml")
    codes = sorted(forces)
    inspections = recommendations // RECS_PER_INSPECTION
    now = datetime.now(timezone.utc)
    started = time.perf_counter()
    async with db.open_database(url) as sessions:
        async with sessions.begin() as session:
            await load_reference_forces(session, forces)
        insp_rows, rec_rows = [], []
        for i in range(inspections):
            code = codes[i % len(codes)]
            published = date(2000, 1, 3) + timedelta(days=i // len(codes))
            iid = f"{code}-{published.isoformat()}"
            insp_rows.append(
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
                rec_rows.append(
                    dict(id=f"{iid}-R{j}", inspection_id=iid, ref=f"R{j}",
                         text="The force should ensure that every child at risk is identified and safeguarded promptly. " * 2,
                         timeframe=TIMEFRAMES[n % len(TIMEFRAMES)], finding_id=None, illustrative=True, phase=phase,
                         force_claim=CLAIMS[n % len(CLAIMS)], outcome="achieved" if phase == "closed" else None, cycle=1,
                         next_action=None if phase == "closed" else "reminder", next_action_at=None if phase == "closed" else now + timedelta(days=n % 90),
                         projection_version=1, updated_at=now)
                )
        async with sessions.begin() as session:
            for k in range(0, len(insp_rows), CHUNK):
                await session.execute(insert(Inspection), insp_rows[k : k + CHUNK])
            for k in range(0, len(rec_rows), CHUNK):
                await session.execute(insert(Recommendation), rec_rows[k : k + CHUNK])
        if url.startswith("postgresql"):
            async with sessions.begin() as session:
                await session.execute(text("ANALYZE"))
    return {"inspections": inspections, "recommendations": len(rec_rows), "load_seconds": round(time.perf_counter() - started, 1)}


def _cli_env(url: str, settings_dir: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NCPI_")}
    env["NCPI_DATABASE_URL"] = url
    env["NCPI_SETTINGS_FILE"] = str(settings_dir / "none.toml")  # embedded defaults, not a local ncpi.toml
    return env


def _ncpi() -> str:
    candidate = ROOT / ".venv" / "bin" / "ncpi"
    return str(candidate) if candidate.exists() else str(Path(sys.executable).parent / "ncpi")


async def _cli(args: list[str], env: dict) -> bytes:
    result = await asyncio.to_thread(subprocess.run, [_ncpi(), *args], env=env, cwd=ROOT, capture_output=True)
    if result.returncode != 0:
        raise RuntimeError(f"ncpi {' '.join(args)} failed ({result.returncode}): {result.stderr.decode()[-500:]}")
    return result.stdout


async def _measure(url: str, rows: int, workdir: Path) -> dict:
    figures = await _fill(url, rows)
    async with db.open_database(url) as sessions:
        # Warm the connection pool and the database cache once; every measured run then starts warm.
        loaded = await _status_query(sessions)
        assert sum(len(i.recommendations) for i in loaded) == figures["recommendations"]
        del loaded

        async def bare():
            async with sessions() as session:
                ids = (await session.execute(text("SELECT id FROM recommendations"))).all()
                assert len(ids) == figures["recommendations"]

        async def query():
            await _status_query(sessions)

        async def query_and_records():
            status_records(await _status_query(sessions))

        baseline = await median_ms(bare, 5)
        q = await median_ms(query, 5)
        qr = await median_ms(query_and_records, 5)
    env = _cli_env(url, workdir)
    out = await _cli(["status", "--json"], env)  # once to check it lists every recommendation
    assert len(json.loads(out)) == figures["recommendations"], "ncpi status --json did not list every recommendation"
    del out

    async def cli_status():
        await _cli(["status", "--json"], env)

    async def cli_startup():
        await _cli(["--help"], env)

    cli = await median_ms(cli_status, 3)
    startup = await median_ms(cli_startup, 3)
    return {
        **figures,
        "status_query_ms": q["median_ms"],
        "status_query_samples_ms": q["samples_ms"],
        "status_query_and_records_ms": qr["median_ms"],
        "cli_status_json_ms": cli["median_ms"],
        "cli_status_json_samples_ms": cli["samples_ms"],
        "cli_startup_ms": startup["median_ms"],
        "baseline_bare_select_ids_samples_ms": baseline["samples_ms"],
        "baseline": f"bare SELECT id FROM recommendations, all rows: {baseline['median_ms']} ms",
        "baseline_ms": baseline["median_ms"],
        "ratio": round(q["median_ms"] / baseline["median_ms"], 1) if baseline["median_ms"] else None,
        "ratio_means": "status query / bare SELECT of the ids (median ms)",
    }


async def run(results: dict, quick: bool) -> None:
    rows = 10_000 if quick else 100_000
    with tempfile.TemporaryDirectory(prefix="ncpi-bench-listing-") as tmp:
        workdir = Path(tmp)
        results["sqlite"] = await _measure(f"sqlite+aiosqlite:///{workdir / 'listing.db'}", rows, workdir)
        cluster, reason = await asyncio.to_thread(postgres_or_reason)
        if cluster is None:
            results["postgresql"] = {"skipped": reason}
            return
        try:
            url = await create_database(cluster, "ncpi_bench_listing")
            results["postgresql"] = await _measure(url, rows, workdir)
        finally:
            await asyncio.to_thread(cluster.stop)


if __name__ == "__main__":
    out: dict = {}
    asyncio.run(run(out, "--quick" in sys.argv))
    print(json.dumps(out, indent=2))
