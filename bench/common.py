"""Small helpers shared by bench.listing and bench.email: timing and a throwaway PostgreSQL."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Awaitable, Callable

ROOT = Path(__file__).resolve().parent.parent


async def median_ms(action: Callable[[], Awaitable[object]], runs: int) -> dict:
    """Run `action` `runs` times; the median and every sample in milliseconds."""
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        await action()
        samples.append((time.perf_counter() - started) * 1000)
    return {"median_ms": round(statistics.median(samples), 1), "samples_ms": [round(s, 1) for s in samples]}


def postgres_or_reason():
    """(PostgresCluster, None) for a fresh cluster, or (None, reason) when it cannot be started."""
    from tests.postgres import PostgresCluster, find_pg_bin

    bin_dir = find_pg_bin()
    if bin_dir is None:
        return None, "PostgreSQL binaries (initdb) not found on PATH or under /usr/lib/postgresql"
    try:
        return PostgresCluster.start(bin_dir), None
    except Exception as exc:  # noqa: BLE001 - recorded, not raised: the SQLite figures still stand
        return None, f"PostgreSQL did not start: {type(exc).__name__}: {exc}"


async def create_database(cluster, name: str) -> str:
    """CREATE DATABASE on the cluster with asyncpg; returns the SQLAlchemy URL of the new database."""
    import asyncpg

    conn = await asyncpg.connect(host="127.0.0.1", port=cluster.port, user="postgres", database="postgres")
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return cluster.url(name)
