"""`ncpi users ...` and `ncpi web`: the web application's accounts and its server.

Registered in ncpi_workflow/cli.py:

    from ncpi_workflow.cli_web import users_app, web
    app.add_typer(users_app, name="users")
    app.command()(web)

Imports stay inside the commands, so that `ncpi --help` does not pay for FastAPI or argon2.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import typer

from ncpi_workflow.errors import UserError

users_app = typer.Typer(
    help="Inspectorate staff who sign in to the web app: viewer (reads), inspector (also acts), admin (also publishes, manages users).",
    no_args_is_help=True,
)


def _settings():
    from ncpi_workflow.settings import get_settings

    return get_settings()


def _with_sessions(work) -> Any:
    """Run `work(sessions)` against the database, database errors as one line."""
    from ncpi_workflow import db
    from ncpi_workflow.app.temporal_calls import database_errors

    settings = _settings()

    async def go():
        async with db.open_database(settings.database_url) as sessions:
            return await work(sessions)

    with database_errors(settings):
        return asyncio.run(go())


def read_password(stream=None, prompt=None) -> str:
    """The password from standard input: typed twice (not echoed) at a terminal, else its first line."""
    import getpass

    stream = stream or sys.stdin
    if stream.isatty():
        first = getpass.getpass("Password: ")
        if getpass.getpass("Password again: ") != first:
            raise UserError("the two passwords differ")
        return first
    line = stream.readline()
    return line.rstrip("\r\n")


@users_app.command("add")
def users_add(
    email: str = typer.Argument(..., help="The user's email address: their sign-in and the actor of what they do."),
    role: str = typer.Option(..., "--role", help="viewer, inspector or admin."),
) -> None:
    """Add a user. The password is read from standard input (typed twice at a terminal), never from an argument."""
    from ncpi_workflow import users

    email_value = users.normalise_email(email)  # refuse a bad email or role before asking for a password
    role_value = users.check_role(role)
    password = read_password()
    users.check_password(password)
    user = _with_sessions(lambda sessions: users.add_user(sessions, email_value, role_value, password, by="cli"))
    typer.echo(f"added {user.email} ({user.role})")


@users_app.command("list")
def users_list(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Every account, with its role and whether it is disabled (never a password or its hash)."""
    from ncpi_workflow import users
    from ncpi_workflow.views import london_iso

    rows = _with_sessions(users.list_users)
    if as_json:
        typer.echo(json.dumps(
            [{"email": u.email, "role": u.role, "disabled": u.disabled, "created_at": london_iso(u.created_at)} for u in rows],
            indent=2,
        ))
        return
    if not rows:
        typer.echo("no users: add one with `ncpi users add EMAIL --role admin`")
        return
    for u in rows:
        typer.echo(f"{u.email:<40} {u.role:<10} {'disabled' if u.disabled else 'active'}")


@users_app.command("disable")
def users_disable(email: str = typer.Argument(..., help="The user's email address.")) -> None:
    """Disable a user: they cannot sign in, and their open sessions end at their next request."""
    from ncpi_workflow import users

    user = _with_sessions(lambda sessions: users.disable_user(sessions, email, by="cli"))
    typer.echo(f"disabled {user.email}")


def web() -> None:
    """Serve the inspectors' web application (NCPI_WEB_HOST:NCPI_WEB_PORT, default 127.0.0.1:8000) until Ctrl-C."""
    import logging

    from ncpi_workflow.web.server import serve

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = _settings()
    serve(settings, announce=lambda: typer.echo(f"web app on {settings.web_url} (Ctrl-C stops it)", err=True))
