"""The `ncpi` command. Every failure is one line on stderr and a non-zero exit status."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any, Coroutine, List, Optional

import typer

from ncpi_workflow.errors import UserError

app = typer.Typer(
    help="ncpi-followup: durable follow-up of police child-protection inspection recommendations.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="The inspectorate's database.", no_args_is_help=True)
app.add_typer(db_app, name="db")

EXIT_INVALID = 1
EXIT_INTERNAL = 70


def fail(message: str, code: int = EXIT_INVALID) -> None:
    typer.echo(f"ncpi: {message}", err=True)
    raise typer.Exit(code)


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


def _settings():
    from ncpi_workflow.settings import get_settings

    return get_settings()


def _forces():
    from ncpi_workflow.forces import load_forces

    return load_forces(_settings().forces_file)


def _policy():
    from ncpi_workflow.policy import load_policy

    return load_policy(_settings().policy)


def _load(file: Path):
    from ncpi_workflow.report import load_report

    return load_report(file, known_forces=set(_forces()), max_bytes=_settings().report_max_bytes)


@app.command()
def validate(files: List[Path] = typer.Argument(..., help="Report files (YAML) to check.")) -> None:
    """Check report files against the format; print one line per problem. Writes nothing."""
    from ncpi_workflow.report import ReportInvalid

    bad = 0
    for file in files:
        try:
            loaded = _load(file)
        except ReportInvalid as exc:
            bad += 1
            for problem in exc.problems:
                typer.echo(f"ncpi: {problem}", err=True)
            continue
        except UserError as exc:
            bad += 1
            typer.echo(f"ncpi: {exc}", err=True)
            continue
        report = loaded.report
        typer.echo(f"{file}: valid: {report.inspection_id}, {len(report.recommendations)} recommendations")
    if bad:
        raise typer.Exit(EXIT_INVALID)


@app.command()
def schema() -> None:
    """Print the JSON Schema of the report format."""
    from ncpi_workflow.report import report_json_schema

    typer.echo(json.dumps(report_json_schema(), indent=2))


def _json_default(value: Any) -> Any:
    if hasattr(value, "isoformat"):
        return value.isoformat()
    raise TypeError(type(value).__name__)


@app.command()
def plan(
    file: Path = typer.Argument(..., help="A report file."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Print the whole timeline of a report (deadlines, reminders, escalations) before publishing it."""
    from ncpi_workflow.clocks import calendar_for_report, plan_report
    from ncpi_workflow.formatting import long_date, roles, short_datetime, timeframe

    loaded = _load(file)
    report = loaded.report
    policy = _policy()
    calendar = calendar_for_report(policy, report.published)
    timeline = plan_report(report.published, [(r.ref, r.timeframe) for r in report.recommendations], policy, calendar)
    force = _forces()[report.force]
    if as_json:
        document = {
            "inspection_id": report.inspection_id,
            "force": {"code": force.code, "name": force.name},
            "published": report.published,
            "timezone": calendar.timezone,
            "deadlines": [
                {**asdict(d), "label": d.label, "moved": d.moved, "due_long": long_date(d.due)} for d in timeline.deadlines
            ],
            "messages": [
                {**asdict(m), "local": calendar.local(m.at).isoformat(), "working_day": calendar.is_working_day(calendar.local(m.at).date())}
                for m in timeline.messages
            ],
        }
        typer.echo(json.dumps(document, indent=2, default=_json_default))
        return
    timeframes = {r.ref: r.timeframe for r in report.recommendations}
    typer.echo(f"{force.name} ({force.code}): {report.title}")
    typer.echo(f"Published {long_date(report.published)}; {len(report.recommendations)} recommendations")
    typer.echo("")
    typer.echo("Deadlines")
    for d in timeline.deadlines:
        what = d.label
        if d.recommendation_ref:
            what += f" ({timeframe(timeframes[d.recommendation_ref])})"
        verb = "" if d.kind == "revisit_by" else " due"
        moved = f"  [moved from {long_date(d.nominal)}, not a working day]" if d.moved else ""
        typer.echo(f"  {what}{verb} {long_date(d.due)}{moved}")
    typer.echo("")
    typer.echo(f"Messages ({calendar.timezone}, working days only)")
    for m in timeline.messages:
        detail = m.deadline_key
        if m.working_days > 0:
            detail += f", {m.working_days} working days before"
        elif m.working_days < 0:
            detail += f", {-m.working_days} working days overdue"
        if m.rung:
            detail += f", rung {m.rung}"
        typer.echo(f"  {short_datetime(m.at, calendar.zone):<22} {m.kind.value:<15} {detail} -> {roles(m.recipients)}")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or upgrade the schema to the latest migration and load the forces reference data."""
    from ncpi_workflow import db
    from ncpi_workflow.store import load_reference_forces

    settings = _settings()
    forces = _forces()
    db.upgrade_sync(settings.database_url)

    async def load() -> int:
        async with db.open_database(settings.database_url) as sessions:
            async with sessions.begin() as session:
                return await load_reference_forces(session, forces)

    changed = run(load())
    typer.echo(f"database at the latest schema; {len(forces)} forces ({changed} reference rows changed)")


@app.command()
def forces(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """List the police forces in the database, with their contacts."""
    from sqlalchemy import select
    from sqlalchemy.exc import OperationalError, ProgrammingError
    from sqlalchemy.orm import selectinload

    from ncpi_workflow import db
    from ncpi_workflow.models import Force

    async def fetch() -> list[Force]:
        async with db.open_database(_settings().database_url) as sessions:
            async with sessions() as session:
                rows = await session.scalars(select(Force).options(selectinload(Force.contacts)).order_by(Force.code))
                return list(rows)

    try:
        rows = run(fetch())
    except (OperationalError, ProgrammingError):
        fail("the database has no schema yet: run `ncpi db upgrade`")
    if not rows:
        fail("no forces in the database: run `ncpi db upgrade`")
    if as_json:
        typer.echo(
            json.dumps(
                [
                    {
                        "code": f.code,
                        "name": f.name,
                        "region": f.region,
                        "contacts": {c.role: {"name": c.name, "email": c.email} for c in f.contacts},
                    }
                    for f in rows
                ],
                indent=2,
            )
        )
        return
    for f in rows:
        liaison = next((c.email for c in f.contacts if c.role == "liaison_officer"), "")
        typer.echo(f"{f.code}  {f.name:<42} {f.region:<26} {liaison}")


@app.command()
def dev() -> None:
    """Run on embedded defaults: SQLite under .data/, the example reports checked and planned."""
    settings = _settings()
    db_upgrade()
    examples = sorted(Path("examples").glob("*.yaml"))
    if examples:
        validate(examples)
        typer.echo("")
        plan(Path("examples/cumbria-2017.yaml"), as_json=False)
    typer.echo("")
    typer.echo(f"Database: {settings.database_url}")
    typer.echo("Try: ncpi forces | ncpi validate FILE | ncpi plan FILE [--json] | ncpi schema")


def main() -> None:
    """Entry point: one line on stderr for any failure, never a traceback unless NCPI_DEBUG is set."""
    try:
        # Outside standalone mode click returns the exit code of typer.Exit instead of raising it.
        result = app(standalone_mode=False)
        code = result if isinstance(result, int) else 0
    except typer.Exit as exc:
        code = exc.exit_code
    except UserError as exc:
        typer.echo(f"ncpi: {exc}", err=True)
        code = EXIT_INVALID
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("ncpi: interrupted", err=True)
        code = 130
    except Exception as exc:  # noqa: BLE001 - the last line of defence for a one-line error
        if isinstance(exc, typer.TyperException) and hasattr(exc, "format_message"):  # usage errors
            typer.echo(f"ncpi: {exc.format_message()}", err=True)
            code = getattr(exc, "exit_code", 2)
        else:
            if os.environ.get("NCPI_DEBUG"):
                raise
            typer.echo(f"ncpi: internal error: {type(exc).__name__}: {exc} (set NCPI_DEBUG=1 for details)", err=True)
            code = EXIT_INTERNAL
    sys.stdout.flush()
    sys.stderr.flush()
    # os._exit skips interpreter teardown, where the Temporal SDK can crash (sdk-python issue 300).
    os._exit(code)


if __name__ == "__main__":
    main()
