"""`ncpi register export DIR`: the public register as static files (ncpi_workflow/register.py)."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Optional

import typer

from ncpi_workflow.errors import UserError


def _today(value: str | None) -> date:
    from ncpi_workflow.formatting import LONDON

    if value is None:
        from datetime import datetime

        return datetime.now(LONDON).date()
    try:
        return date.fromisoformat(value.strip())
    except ValueError:
        raise UserError(f"--today: {value[:40]!r} is not a date such as 2026-12-01") from None


def register_export(
    directory: Path = typer.Argument(..., metavar="DIR", help="The folder to write (created if absent; never a symbolic link)."),
    today: Optional[str] = typer.Option(None, "--today", metavar="YYYY-MM-DD",
                                        help="The date the register is as of (overdue days count to it); default: today in London."),
) -> None:
    """Write the public register: static GOV.UK-styled HTML (index.html, filtered by force, status and
    theme; one page per recommendation with its dated trail; themes.html across forces), register.json
    and register.csv. Only what the publication rule allows (README, "The public register")."""
    from ncpi_workflow import db
    from ncpi_workflow.app.temporal_calls import database_errors
    from ncpi_workflow.cli import run
    from ncpi_workflow.register import build_register, check_export_dir, export_register
    from ncpi_workflow.settings import get_settings

    as_of = _today(today)
    check_export_dir(directory)  # before touching the database: a bad DIR is refused at once
    settings = get_settings()

    async def build():
        async with db.open_database(settings.database_url) as sessions:
            async with sessions() as session:
                return await build_register(session, today=as_of)

    with database_errors(settings):
        document = run(build())
    written = export_register(document, directory)
    typer.echo(f"register of {len(document.recommendations)} recommendations ({len(document.inspections)} reports) "
               f"as of {as_of.isoformat()} written to {directory} ({len(written)} files)")
