"""`ncpi inbound smtp|imap` and `ncpi inbox`. Registered in ncpi_workflow/cli.py:

    from ncpi_workflow.inbound.cli import inbound_app, inbox
    app.add_typer(inbound_app, name="inbound")
    app.command()(inbox)
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys

import typer

inbound_app = typer.Typer(help="Take replies to the force-facing emails in and record them.", no_args_is_help=True)


def _settings():
    from ncpi_workflow.settings import get_settings

    return get_settings()


def _logging() -> None:
    # What each message became, at INFO; other libraries' chatter only from WARNING.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("ncpi.inbound").setLevel(logging.INFO)


async def _until_signal(serve, settings, **kwargs):
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return await serve(settings, stop, **kwargs)


@inbound_app.command("smtp")
def inbound_smtp() -> None:
    """Run the inbound SMTP server (NCPI_INBOUND_SMTP_HOST:NCPI_INBOUND_SMTP_PORT, default 127.0.0.1:2525) until Ctrl-C."""
    from ncpi_workflow.app.temporal_calls import database_errors
    from ncpi_workflow.inbound.smtp_server import serve

    _logging()
    settings = _settings()

    def ready(server):
        typer.echo(f"inbound SMTP on {settings.inbound_smtp_host}:{settings.inbound_smtp_port} for "
                   f"{settings.reply_to or 'any address'} (Ctrl-C stops it)", err=True)

    with database_errors(settings):
        try:
            asyncio.run(_until_signal(serve, settings, ready=ready))
        except OSError as exc:
            from ncpi_workflow.errors import UserError

            raise UserError(f"inbound SMTP on {settings.inbound_smtp_host}:{settings.inbound_smtp_port}: {exc.strerror or exc}") from None


@inbound_app.command("imap")
def inbound_imap(once: bool = typer.Option(False, "--once", help="Poll once and exit.")) -> None:
    """Poll the IMAP mailbox of the reply address (NCPI_IMAP_*) every NCPI_IMAP_POLL_SECONDS until Ctrl-C."""
    from ncpi_workflow.app.temporal_calls import database_errors
    from ncpi_workflow.inbound.imap_poller import connect, serve

    _logging()
    settings = _settings()
    with database_errors(settings):
        if once:
            result = asyncio.run(serve(settings, once=True))
            typer.echo(f"{result.seen} message(s): {result.processed} processed, {result.deferred} deferred")
            return

        async def check_then_serve():
            client = await connect(settings)  # a wrong password or host stops here, in one line
            await client.logout()
            typer.echo(f"polling {settings.imap_mailbox} on {settings.imap_host} every {settings.imap_poll_seconds:g} s "
                       "(Ctrl-C stops it)", err=True)
            return await _until_signal(serve, settings)

        asyncio.run(check_then_serve())


def inbox(
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    everything: bool = typer.Option(False, "--all", help="Recorded replies too."),
) -> None:
    """The triage list: replies by email that were not recorded (and automatic mail), newest first."""
    from ncpi_workflow import db
    from ncpi_workflow.app.temporal_calls import database_errors
    from ncpi_workflow.inbound.inbox import list_inbox, render_lines

    settings = _settings()

    async def fetch():
        async with db.open_database(settings.database_url) as sessions:
            return await list_inbox(sessions, everything=everything)

    with database_errors(settings):
        records = asyncio.run(fetch())
    if as_json:
        typer.echo(json.dumps(records, indent=2, ensure_ascii=False))
        return
    if not records:
        typer.echo("the triage list is empty" if not everything else "no email received")
        return
    for line in render_lines(records):
        typer.echo(line)
