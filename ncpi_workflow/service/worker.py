"""The worker service: runs every follow-up workflow and activity on the configured task queue.

`python worker.py` (the thin entry point at the top of the repository) and `ncpi worker` are the
same thing.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from datetime import timedelta
from contextlib import asynccontextmanager
from typing import AsyncIterator

from temporalio.client import Client
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities.calendar import CalendarActivities
from activities.delivery import DeliveryActivities, DeliverySettings
from activities.records import InspectorateAddresses, RecordActivities
from ncpi_workflow.mailer import Mailer, SmtpConfig
from ncpi_workflow import db
from ncpi_workflow.policy import load_policy
from ncpi_workflow.settings import Settings, get_settings
from ncpi_workflow.temporal import connect, ensure_search_attributes
from workflows.delivery import DeliveryWorkflow
from workflows.inspection import InspectionWorkflow
from workflows.recommendation import RecommendationWorkflow

WORKFLOWS = [InspectionWorkflow, RecommendationWorkflow, DeliveryWorkflow]

# The domain package is deterministic and imported once, outside the sandbox: re-importing it (and
# `holidays`, `dateutil`, pydantic models) for every workflow run would cost time and memory.
ISOLATED_RESTRICTIONS = SandboxRestrictions.default.with_passthrough_modules("ncpi_workflow", "dateutil")
ISOLATED_WORKFLOW_RUNNER = SandboxedWorkflowRunner(restrictions=ISOLATED_RESTRICTIONS)
"""NCPI_WORKFLOW_SANDBOX=isolated: the SDK's default, the workflow modules (workflows/) imported afresh for
every workflow run, so that a module-level change one run makes cannot reach another, and their calls of
restricted functions (datetime.now, random, I/O) raise. It costs 20 to 35 ms of CPU and 230 to 350 KiB for
each workflow run the worker creates or replays (bench/memory.py: `sandbox_per_instance`)."""

# The workflow package too is imported once and shared by every run (NCPI_WORKFLOW_SANDBOX=shared, the
# default). That is safe because workflows/ holds no module-level or class-level state a run changes
# (only constants) and calls nothing non-deterministic; the sandbox still restricts builtins such as
# open() at run time. The check the per-run import gave is kept where it costs nothing: every saved
# history also replays under ISOLATED_WORKFLOW_RUNNER (tests/test_memory_bench.py), where a restricted call
# in workflow code raises.
SHARED_RESTRICTIONS = ISOLATED_RESTRICTIONS.with_passthrough_modules("workflows")
WORKFLOW_RUNNER = SandboxedWorkflowRunner(restrictions=SHARED_RESTRICTIONS)


def workflow_runner(settings: Settings) -> SandboxedWorkflowRunner:
    """The runner NCPI_WORKFLOW_SANDBOX names."""
    return ISOLATED_WORKFLOW_RUNNER if settings.workflow_sandbox == "isolated" else WORKFLOW_RUNNER


def worker_options(settings: Settings) -> dict:
    """The Worker's keyword arguments that come from settings (tests/test_memory_bench.py checks they reach it)."""
    return dict(workflow_runner=workflow_runner(settings), max_cached_workflows=settings.max_cached_workflows)

log = logging.getLogger("ncpi.worker")


def record_activities(sessions, settings: Settings) -> RecordActivities:
    from activities.rendering import OutboxRenderer

    addresses = InspectorateAddresses(settings.inspectors_email, settings.lead_hm_inspector_email)
    # Notifications are rendered as their event is recorded (activities/rendering.py), as the delivery would.
    renderer = OutboxRenderer(sessions, delivery_settings(settings), addresses.by_role) if settings.render_at_record else None
    return RecordActivities(sessions, addresses, renderer=renderer)


def delivery_settings(settings: Settings) -> DeliverySettings:
    from ncpi_workflow.access_links import LinkSettings

    return DeliverySettings(settings.mail_from, settings.reply_to, settings.inspectors_email, settings.templates_dir,
                            relay_retry_seconds=settings.smtp_held_retry_seconds, links=LinkSettings.from_settings(settings))


def delivery_activities(sessions, mailer: Mailer, settings: Settings) -> DeliveryActivities:
    return DeliveryActivities(sessions, mailer, delivery_settings(settings))


@asynccontextmanager
async def running_worker(client: Client, settings: Settings) -> AsyncIterator[Worker]:
    """A started worker for the workflows and activities, with its database and SMTP connection,
    until the block ends."""
    mailer = Mailer(SmtpConfig.from_settings(settings))
    # The activities' short transactions run SQLite's calls inline on the event loop (db.InlineSqliteConnection).
    async with db.open_database(settings.database_url, inline=True) as sessions:
        worker = Worker(
            client,
            task_queue=settings.task_queue,
            workflows=WORKFLOWS,
            **worker_options(settings),
            activities=record_activities(sessions, settings).all()
            + delivery_activities(sessions, mailer, settings).all()
            + CalendarActivities(load_policy(settings.policy).calendar).all(),
            # On SIGTERM, activities in flight get this long to finish before they are cancelled (and
            # retried elsewhere by Temporal): every activity is idempotent, so nothing is lost either way.
            graceful_shutdown_timeout=timedelta(seconds=settings.shutdown_grace_seconds),
        )
        try:
            async with worker:
                yield worker
        finally:
            await mailer.close()


@asynccontextmanager
async def scheduled_jobs(client: Client, settings: Settings) -> AsyncIterator[None]:
    """The in-service periodic jobs (APScheduler): the inspectors' digest at 08:00 on working days and
    reconciliation every few minutes. Every replica runs the scheduler; a claim in the database
    lets exactly one of them run each due time."""
    from ncpi_workflow.jobs import build_scheduler

    async with db.open_database(settings.database_url) as sessions:
        scheduler = build_scheduler(sessions, client, settings)
        scheduler.start()
        try:
            yield
        finally:
            scheduler.shutdown(wait=False)


async def serve(settings: Settings) -> None:
    client = await connect(settings.temporal_address, settings.temporal_namespace)
    added = await ensure_search_attributes(client, settings.temporal_namespace)
    if added:
        log.info("registered search attributes %s", ", ".join(added))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with running_worker(client, settings), scheduled_jobs(client, settings):
        log.info("worker running on %s, task queue %s", settings.temporal_address, settings.task_queue)
        async with worker_liveness(settings.worker_alive_file):
            await stop.wait()
        log.info("shutting down")


class JsonFormatter(logging.Formatter):
    """One JSON object a line, for log collectors (NCPI_LOG_FORMAT=json)."""

    def format(self, record: logging.LogRecord) -> str:
        import json

        entry = {"time": self.formatTime(record), "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(settings: Settings) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(
        JsonFormatter() if settings.log_format == "json" else logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    )
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)


ALIVE_EVERY_SECONDS = 5.0


async def keep_alive(path) -> None:
    """Touch the liveness file while the worker runs (per container: not on a shared volume)."""
    while True:
        try:
            path.touch()
        except OSError as exc:
            log.warning("cannot touch %s: %s", path, exc)
        await asyncio.sleep(ALIVE_EVERY_SECONDS)


@asynccontextmanager
async def worker_liveness(path) -> AsyncIterator[None]:
    """Keep the liveness file fresh for `ncpi health --worker` until the block ends, then remove it.
    `ncpi worker` and `ncpi dev` both use it, so the health check means the same in either."""
    alive = asyncio.create_task(keep_alive(path))
    try:
        yield
    finally:
        alive.cancel()
        path.unlink(missing_ok=True)


def main() -> None:
    settings = get_settings()
    configure_logging(settings)
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
