"""`ncpi links list REC|INSPECTION` and `ncpi links revoke ID --by NAME`: the access links in
force-facing emails (ncpi_workflow/access_links.py). Registered in ncpi_workflow/cli.py:

    from ncpi_workflow.cli_links import links_app
    app.add_typer(links_app, name="links")

A listing never shows a token (nor its hash): tokens are not kept, and the list is for deciding what
to revoke.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timezone
from typing import Any

import typer

from ncpi_workflow.errors import UserError

links_app = typer.Typer(
    help="The links in force-facing emails (portal pages and reply addresses): list them, revoke one.",
    no_args_is_help=True,
)


def _with_session(work, write: bool = False) -> Any:
    from ncpi_workflow import db
    from ncpi_workflow.app.temporal_calls import database_errors
    from ncpi_workflow.settings import get_settings

    settings = get_settings()

    async def go():
        async with db.open_database(settings.database_url) as sessions:
            if write:
                async with sessions.begin() as session:
                    return await work(session)
            async with sessions() as session:
                return await work(session)

    with database_errors(settings):
        return asyncio.run(go())


def _local(value: str | None) -> str:
    if not value:
        return "-"
    from ncpi_workflow.formatting import short_datetime

    return short_datetime(datetime.fromisoformat(value))


@links_app.command("list")
def links_list(
    target: str = typer.Argument(..., metavar="REC|INSPECTION", help="A recommendation ID (CUM-2017-01-26-R2) or an inspection ID (CUM-2017-01-26)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Every link that covers a recommendation, or every link of an inspection: id, purpose, scope,
    expiry, revocation and last use (times in Europe/London). Never the token."""
    from ncpi_workflow.access_links import describe, links_for
    from ncpi_workflow.app.temporal_calls import parse_target
    from ncpi_workflow.lifecycle import printable

    _, wanted = parse_target(target)  # a one-line UserError for anything else
    now = datetime.now(timezone.utc)

    async def work(session):
        try:
            return [describe(row, now) for row in await links_for(session, wanted)]
        except LookupError as exc:
            raise UserError(str(exc)) from None

    records = _with_session(work)
    if as_json:
        typer.echo(json.dumps(records, indent=2))
        return
    if not records:
        typer.echo(f"no links for {wanted}")
        return
    lines = []
    for r in records:
        scope = ", ".join([*(rec.rpartition("-")[2] for rec in r["recommendation_ids"]), *r["items"]])
        state = r["state"] + (f" by {r['revoked_by']} {_local(r['revoked_at'])}" if r["revoked_at"] else "")
        lines.append(
            f"{r['id']:>6}  {r['purpose']:<6}  {state:<10}  expires {_local(r['expires_at'])}  "
            f"last used {_local(r['last_used_at'])}  notification {r['notification_id'] or '-'}  {r['inspection_id']}: {scope}"
        )
    typer.echo("\n".join(printable(line) for line in lines))


@links_app.command("revoke")
def links_revoke(
    link_id: str = typer.Argument(..., metavar="ID", help="The link's id (first column of `ncpi links list`)."),
    by: str = typer.Option(..., "--by", help="Who revokes it, for the audit trail."),
) -> None:
    """Revoke a link at once: its portal page and its reply address stop working (403), audited."""
    from ncpi_workflow.access_links import revoke_link
    from ncpi_workflow.lifecycle import ROW_ID_MAX, check_name, printable

    text = link_id.strip()
    if not text.isdigit() or not text.isascii() or not 0 < int(text) <= ROW_ID_MAX:
        raise UserError(f"{printable(link_id)[:40]!r} is not a link id (the first column of `ncpi links list`)")
    try:
        check_name(by, "--by")
    except ValueError as exc:
        raise UserError(str(exc)) from None
    number = int(text)

    async def work(session):
        try:
            return await revoke_link(session, number, by)
        except LookupError as exc:
            raise UserError(str(exc)) from None

    if _with_session(work, write=True):
        typer.echo(f"link {number} revoked")
    else:
        typer.echo(f"link {number} was already revoked")
