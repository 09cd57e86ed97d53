"""The `ncpi` command. Every failure is one line on stderr and a non-zero exit status."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from dataclasses import asdict
from datetime import date, datetime, timezone
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
from ncpi_workflow.cli_web import users_app, web  # noqa: E402  (the web app's commands live beside it)

app.add_typer(users_app, name="users")
app.command()(web)
from ncpi_workflow.cli_links import links_app  # noqa: E402  (access links in force-facing emails)

app.add_typer(links_app, name="links")
from ncpi_workflow.inbound.cli import inbound_app, inbox  # noqa: E402  (replies by email)

app.add_typer(inbound_app, name="inbound")
app.command()(inbox)

EXIT_INVALID = 1
EXIT_INTERNAL = 70


def _line(text: object) -> str:
    """One line, whatever it quotes: control characters (a newline in a file name or a force code) and
    invalid UTF-8 escaped (ncpi_workflow.lifecycle.printable)."""
    from ncpi_workflow.lifecycle import printable

    return printable(str(text))


def fail(message: str, code: int = EXIT_INVALID) -> None:
    typer.echo(f"ncpi: {_line(message)}", err=True)
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
    from ncpi_workflow.app.publishing import check_file

    settings = _settings()
    bad = 0
    for file in files:
        checked = check_file(settings, file)
        if not checked.ok:
            bad += 1
            for problem in checked.problems:
                typer.echo(f"ncpi: {_line(problem)}", err=True)
            continue
        report = checked.loaded.report
        if report.is_review:  # programme: PIR (ncpi_workflow/revisit_reports.py)
            typer.echo(f"{_line(file)}: valid: post-inspection review of {report.follows}, "
                       f"findings on {len(report.revisit_findings)} recommendations")
            continue
        typer.echo(f"{_line(file)}: valid: {report.inspection_id}, {len(report.recommendations)} recommendations")
    if bad:
        raise typer.Exit(EXIT_INVALID)


@app.command()
def schema(
    state: bool = typer.Option(False, "--state", help="The state file's schema (`ncpi import`) instead of the report's."),
) -> None:
    """Print the JSON Schema of the report format (or, with --state, of the state file)."""
    if state:
        from ncpi_workflow.state_file import state_json_schema

        typer.echo(json.dumps(state_json_schema(), indent=2))
        return
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
    """Print the whole timeline of a report (deadlines, reminders, escalations) before publishing it:
    every message the follow-up sends if nobody acts, up to the automatic revisit's evidence requests."""
    from ncpi_workflow.clocks import calendar_for_report, plan_report
    from ncpi_workflow.formatting import long_date, roles, short_datetime, timeframe

    loaded = _load(file)
    report = loaded.report
    if report.is_review:
        fail(f"{file}: a post-inspection review's report (programme: PIR) starts no clocks; there is no timeline to plan")
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
            "revisit_opens_at": timeline.revisit_opens_at,
            "evidence_deadlines": [
                {**asdict(d), "label": d.label, "moved": d.moved, "due_long": long_date(d.due)}
                for d in timeline.evidence_deadlines
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
    if timeline.evidence_deadlines:
        typer.echo("")
        opens = long_date(calendar.local(timeline.revisit_opens_at).date())
        typer.echo(f"Evidence (if nobody acts, the revisit opens by itself on {opens} and asks for it)")
        for d in timeline.evidence_deadlines:
            typer.echo(f"  {d.label} due {long_date(d.due)}")
    typer.echo("")
    typer.echo(f"Messages if nobody acts ({calendar.timezone}, working days only)")
    for m in timeline.messages:
        detail = m.deadline_key
        if m.working_days > 0:
            detail += f", {m.working_days} working days before"
        elif m.working_days < 0:
            detail += f", {-m.working_days} working days overdue"
        if m.rung:
            detail += f", rung {m.rung}"
        typer.echo(f"  {short_datetime(m.at, calendar.zone):<22} {m.kind.value:<16} {detail} -> {roles(m.recipients)}")


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
    """Run everything on embedded defaults: Temporal dev server, SMTP capture, database, worker (`make run`)."""
    import logging

    from ncpi_workflow.devstack import run_dev

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    run(run_dev(_settings(), echo=lambda line: typer.echo(line)))


# ---------------------------------------------------------------- the follow-up lifecycle (Temporal)

# The application layer's Temporal calls and their one-line errors: the CLI and the web app share them.
from ncpi_workflow.app.temporal_calls import (  # noqa: E402
    CALL_TIMEOUT_SECONDS,
    connect as _client,
    connect_reason as _connect_reason,
    database_errors as _database_errors,
    one_line as _one_line,
    parse_inspection as _inspection,
    parse_recommendation as _recommendation,
    parse_target as _target,
    temporal_errors as _temporal_errors,
    unreachable as _unreachable,
)


# Values given on the command line are checked here with the rules (and limits) the workflows' Update
# validators apply, before anything is asked of Temporal or written: one line naming the option.


def _valid(check, value, option: str, **kwargs) -> None:
    try:
        check(value, option, **kwargs)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def _name_arg(value: str, option: str = "--by") -> str:
    """Who acts: one line, visible (not only white space or zero-width characters), NAME_MAX at most."""
    from ncpi_workflow.lifecycle import check_name

    _valid(check_name, value, option)
    return value


def _text_arg(value: str | None, option: str, required: bool = True) -> str | None:
    """Free text: TEXT_MAX at most, no control characters but line breaks, valid UTF-8."""
    from ncpi_workflow.lifecycle import check_text

    _valid(check_text, value, option, required=required)
    return value


def _word_arg(value: str, option: str) -> str:
    """A keyword (claim, outcome, status, item, deadline): valid UTF-8 and one line; its meaning is the
    validator's to judge."""
    from ncpi_workflow.lifecycle import NAME_MAX, check_text

    if "\n" in value or "\r" in value:
        raise UserError(f"{option} must be one line")
    _valid(check_text, value, option, required=False, limit=NAME_MAX)
    return value


ON_HELP = "The day it happened, when that was earlier (back-dating): not in the future, not before publication."


def _on_arg(value: str | None):
    """`--on YYYY-MM-DD`: the day an action happened (back-dating), or None. The workflow judges the
    day itself (not in the future, not before publication, the action's own bounds)."""
    from ncpi_workflow.app.inspector_actions import parse_due

    return None if value is None else parse_due(value, "--on")


def _in_row_range(number: int) -> bool:
    """Row IDs (the outbox's first column) are 32-bit on PostgreSQL: a larger number names no row on
    either database, and would overflow the query (ncpi_workflow.lifecycle.ROW_ID_MAX)."""
    from ncpi_workflow.lifecycle import ROW_ID_MAX

    return 0 < number <= ROW_ID_MAX


def _call(use_case, *args: Any, **kwargs: Any) -> Any:
    """Connect to Temporal and run one use case of the application layer (ncpi_workflow.app): an
    async function taking (settings, client, ...). The command has checked its arguments first."""
    settings = _settings()

    async def go():
        return await use_case(settings, await _client(settings), *args, **kwargs)

    return run(go())


def _echo_lines(lines: List[str]) -> None:
    typer.echo("\n".join(lines))


def _echo_json(document: Any) -> None:
    typer.echo(json.dumps(document, indent=2, default=_json_default))


@app.command()
def publish(
    files: List[Path] = typer.Argument(..., metavar="FILE", help="Report files (YAML)."),
    catch_up: bool = typer.Option(
        False,
        "--catch-up",
        help="Deadlines already passed: follow up from the publication date and send at once the latest due message of each.",
    ),
    adopt: bool = typer.Option(
        False,
        "--adopt",
        help="Deadlines already passed: record the past as history and send nothing for it (a follow-up already under way).",
    ),
    anchor_now: bool = typer.Option(
        False,
        "--anchor-now",
        help="Run the follow-up as if the report were published now (for demonstrations): its clocks start from this moment.",
    ),
) -> None:
    """Publish a report: write its records and start its follow-up workflow. Publishing it again starts nothing.
    A report whose deadlines have already passed is refused, saying what would be sent, unless one of
    --catch-up, --adopt or --anchor-now says how to follow it up.
    Several files: every one is checked first (a bad one: nothing is published from any), then they are
    published together (NCPI_PUBLISH_CONCURRENCY at a time), one line each; a refused one does not stop the others."""
    from ncpi_workflow.app.publishing import PastChoice, PastDeadlines, check_file, publish_file

    chosen = [c for c, on in ((PastChoice.CATCH_UP, catch_up), (PastChoice.ADOPT, adopt), (PastChoice.ANCHOR_NOW, anchor_now)) if on]
    if len(chosen) > 1:
        fail("give one of --catch-up, --adopt and --anchor-now, not " + " and ".join(f"--{c.value}" for c in chosen))
    if len(files) > 1:
        _publish_many(files, chosen[0] if chosen else None)
        return
    file = files[0]
    checked = check_file(_settings(), file)  # refuse a bad file before touching Temporal or the database
    if not checked.ok:
        fail(checked.problems[0])
    if checked.loaded.report.is_review:  # programme: PIR: recorded against the revisit, no follow-up of its own
        from ncpi_workflow.revisit_reports import record_review

        review = _call(record_review, checked.loaded)
        if not review.created:
            typer.echo(f"the review of cycle {review.cycle} of {review.inspection_id} is already recorded from this file; nothing changed")
        else:
            opened = "; the revisit was opened as of its fieldwork start" if review.opened_revisit else ""
            typer.echo(f"recorded the post-inspection review of {review.inspection_id} (cycle {review.cycle}): "
                       f"findings on {review.findings} recommendations{opened}")
        return
    try:
        result = _call(publish_file, file, checked=checked, past=chosen[0] if chosen else None)
    except PastDeadlines as exc:
        _refused_for_the_past(exc)
    _published_line(result)


def _publish_many(files: List[Path], past) -> None:
    """`ncpi publish A B ...`: all checked (every problem one line; nothing published from any file),
    then published with one engine and one client; each file's outcome one line, in argument order."""
    from ncpi_workflow.app.publishing import PastDeadlines, check_file, publish_files

    settings = _settings()
    checked = [check_file(settings, file) for file in files]
    problems = [problem for c in checked for problem in c.problems]
    problems += [f"{c.name}: a post-inspection review's report (programme: PIR) is recorded on its own: "
                 "give it to `ncpi publish` alone" for c in checked if c.ok and c.loaded.report.is_review]
    if problems:
        for problem in problems:
            typer.echo(f"ncpi: {_line(problem)}", err=True)
        typer.echo(f"ncpi: nothing was published from any of the {len(files)} files", err=True)
        raise typer.Exit(EXIT_INVALID)
    refused = 0
    for outcome in _call(publish_files, checked, past=past):
        if outcome.publication is not None:
            _published_line(outcome.publication)
            continue
        refused += 1
        if isinstance(outcome.refused, PastDeadlines):
            typer.echo(f"ncpi: {_line(outcome.refused.lines[0])}; publish it alone to see what would be sent, "
                       "or again with --catch-up, --adopt or --anchor-now", err=True)
        else:
            typer.echo(f"ncpi: {_line(outcome.refused)}", err=True)
    if refused:
        raise typer.Exit(EXIT_INVALID)


def _refused_for_the_past(exc) -> None:
    """A report whose deadlines have passed, given without a choice: what catch-up would send, then the choices."""
    first, *rest = exc.lines
    typer.echo(f"ncpi: {_line(first)}", err=True)
    for line in rest:
        typer.echo(_line(line), err=True)
    raise typer.Exit(EXIT_INVALID)


def _published_line(result) -> None:
    if result.started:
        typer.echo(
            f"published {result.inspection_id}: workflow {result.workflow_id}, {result.recommendations} recommendations"
        )
    else:
        typer.echo(f"{result.inspection_id} is already published (workflow {result.workflow_id}); nothing started")


@app.command("import")
def import_(
    report: Path = typer.Argument(..., help="The report file (YAML)."),
    state: Path = typer.Argument(..., help="The state file (YAML, docs/state-format.md): what has happened since publication."),
) -> None:
    """Adopt a follow-up already under way: the report and a state file of the deliveries made, the revisits
    held, and each recommendation's register trail, decisions and progress. Both are checked first (every
    problem one line; nothing written on any), then the report is published with --adopt and the workflows
    apply the state's actions at their dates. Nothing is sent for the past."""
    from ncpi_workflow.app.publishing import check_file, import_file
    from ncpi_workflow.state_file import StateInvalid, load_state

    settings = _settings()
    checked = check_file(settings, report)
    problems = list(checked.problems)
    if checked.ok and checked.loaded.report.is_review:
        problems.append(f"{report}: a post-inspection review's report (programme: PIR) is not imported: publish it")
    elif checked.ok:
        try:
            load_state(state, checked.loaded.report, max_bytes=settings.report_max_bytes)
        except StateInvalid as exc:
            problems += exc.problems
    if problems:
        for problem in problems:
            typer.echo(f"ncpi: {_line(problem)}", err=True)
        raise typer.Exit(EXIT_INVALID)
    result = _call(import_file, report, state, checked=checked)
    _published_line(result)


STATUS_PAGE_SIZE = 50
"""Rows of the listing on one page of `ncpi status`."""
STATUS_PAGE_SIZE_MAX = 10_000


@app.command()
def status(
    force: Optional[str] = typer.Option(None, "--force", metavar="CODE", help="Only this force's inspections, e.g. CUM."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output: a list of objects, one per recommendation (always all of them)."),
    page: Optional[int] = typer.Option(None, "--page", metavar="N", help="Which page of the listing to show after the summary (default 1)."),
    page_size: Optional[int] = typer.Option(None, "--page-size", metavar="K", help=f"Rows per page (default {STATUS_PAGE_SIZE}, at most {STATUS_PAGE_SIZE_MAX:,})."),
    show_all: bool = typer.Option(False, "--all", help="The whole listing and no summary (the text before paging)."),
) -> None:
    """Where every recommendation stands, from the database's projection of the workflows (no Temporal needed).

    By default a summary per force (reports, recommendations open and closed, overdue, revisits due,
    counted from today's date in London) and then one page of the listing; --all prints the whole
    listing alone. A follow-up whose workflow task keeps failing (as the reconciler last found it) is marked
    "STUCK: <error>"; in --json its record has a "stuck" (or "inspection_stuck") key, present only then."""
    import sys
    from datetime import datetime

    from ncpi_workflow import db
    from ncpi_workflow.app import read_models
    from ncpi_workflow.formatting import LONDON
    from ncpi_workflow.views import render_status, render_status_summary

    if (as_json or show_all) and (page is not None or page_size is not None):
        fail(f"--page and --page-size page the default text, not {'--json' if as_json else '--all'}")
    if page is not None and page < 1:
        fail(f"--page: {page} is not a page number (1 or more)")
    if page_size is not None and not 1 <= page_size <= STATUS_PAGE_SIZE_MAX:
        fail(f"--page-size: {page_size} is not between 1 and {STATUS_PAGE_SIZE_MAX:,}")
    settings = _settings()
    known = _forces()
    code = None
    if force is not None:
        code = force.strip().upper()
        if code not in known:
            fail(f"unknown force code {force!r}; `ncpi forces` lists the {len(known)} codes")

    if as_json:
        # Streamed: a chunk of rows at a time from a server-side cursor, written as it comes.
        async def stream():
            async with db.open_database(settings.database_url) as sessions:
                await read_models.stream_status_listing(sessions, sys.stdout.write, code)

        with _database_errors(settings):
            run(stream())
        sys.stdout.write("\n")
        return

    async def fetch():
        async with db.open_database(settings.database_url) as sessions:
            stuck = await read_models.stuck_workflows(sessions)
            if show_all:
                return await read_models.status(sessions, code), stuck
            today = datetime.now(LONDON).date()
            return await read_models.status_page(sessions, code, page=page or 1, page_size=page_size or STATUS_PAGE_SIZE,
                                                 today=today), stuck

    with _database_errors(settings):
        listing, stuck = run(fetch())
    rows = listing if show_all else listing.rows
    if not rows:
        typer.echo("no published inspections" + (f" for {code}" if code else ""))
        return
    names = {c: f.name for c, f in known.items()}
    if show_all:
        _echo_lines(render_status(rows, names, stuck))
        return
    more = f"; --page {listing.page + 1} for more" if listing.page < listing.pages else ""
    _echo_lines([*render_status_summary(listing.summary, listing.today), "", *render_status(rows, names, stuck), "",
                 f"page {listing.page:,} of {listing.pages:,}{more}"])


@app.command()
def show(
    id: str = typer.Argument(..., metavar="ID", help="An inspection (CUM-2017-01-26) or recommendation (CUM-2017-01-26-R1) ID, or its workflow ID."),
    as_json: bool = typer.Option(False, "--json", help="The workflow's whole view as JSON."),
) -> None:
    """The live state of one follow-up, from its workflow: phase, deadlines and revisions, next action, evidence, history."""
    from ncpi_workflow.app import read_models
    from ncpi_workflow.views import dump, render_inspection, render_recommendation

    _target(id)  # a bad ID is refused before Temporal is asked
    kind, view = _call(read_models.show, id)
    recorded = _recorded_dates(kind, _target(id)[1])
    if as_json:
        document = dump(view)
        if recorded is not None and recorded.actions:
            # Back-dated actions: when each was recorded (the view's own instants are when it happened).
            document["recorded"] = [{"happened_at": at.isoformat(), "by": None if by == "*" else by, "recorded_at": rec.isoformat()}
                                    for (at, by), rec in sorted(recorded.actions.items())]
        _echo_json(document)
    else:
        _echo_lines(render_recommendation(view, recorded) if kind == "recommendation" else render_inspection(view, recorded))


def _recorded_dates(kind: str, business_id: str):
    """When the back-dated actions were recorded, from the database (`ncpi show` prints both dates); None,
    and the workflow's state alone, when the database cannot be read."""
    from ncpi_workflow import db
    from ncpi_workflow.app import read_models

    settings = _settings()

    async def fetch():
        async with db.open_database(settings.database_url) as sessions:
            return await read_models.recorded_dates(sessions, kind, business_id)

    try:
        with _database_errors(settings):
            return run(fetch())
    except UserError:
        return None


CLAIMS = "not_started, in_progress, implemented"
OUTCOMES = "achieved, partially_achieved, not_achieved, superseded, withdrawn"


@app.command()
def progress(
    rec_id: str = typer.Argument(..., metavar="REC_ID", help="A recommendation ID, e.g. CUM-2017-01-26-R1."),
    claim: str = typer.Option(..., "--claim", help=f"What the force says: {CLAIMS}."),
    text: str = typer.Option(..., "--text", help="The force's account of its progress."),
    by: str = typer.Option(..., "--by", help="Who reports it."),
    on: Optional[str] = typer.Option(None, "--on", metavar="YYYY-MM-DD", help=ON_HELP),
) -> None:
    """Record the force's progress on a recommendation (its own claim, apart from the inspectorate's judgement)."""
    from ncpi_workflow.app.force_responses import submit_progress
    from ncpi_workflow.views import words

    rec = _recommendation(rec_id)
    _word_arg(claim, "--claim")
    _text_arg(text, "--text")
    _name_arg(by)
    view = _call(submit_progress, rec, claim, text, by, on=_on_arg(on))
    s = view.state
    typer.echo(f"{rec}: progress recorded (force claims {words(s.force_claim)}); {words(s.phase)}, {view.register_status}")


@app.command()
def evidence(
    rec_id: str = typer.Argument(..., metavar="REC_ID", help="A recommendation ID, e.g. CUM-2017-01-26-R1."),
    file: Path = typer.Option(..., "--file", help="The evidence file."),
    by: str = typer.Option(..., "--by", help="Who submits it."),
    description: Optional[str] = typer.Option(None, "--description", help="What the file shows."),
    on: Optional[str] = typer.Option(None, "--on", metavar="YYYY-MM-DD", help=ON_HELP),
) -> None:
    """Submit a file of evidence for a recommendation: kept by its SHA-256, then recorded by the workflow."""
    from ncpi_workflow.app.force_responses import check_evidence_file, submit_evidence
    from ncpi_workflow.lifecycle import check_filename, printable

    rec = _recommendation(rec_id)
    _name_arg(by)
    _text_arg(description, "--description", required=False)
    _valid(check_filename, file.name, "--file: the file name")
    day = _on_arg(on)
    # The file's own checks need no Temporal: a bad file (a link, a FIFO, too big, ...) is refused first.
    with check_evidence_file(_settings(), file) as checked:
        submitted = _call(submit_evidence, rec, file, by, description, checked=checked, on=day)
    stored, view = submitted.stored, submitted.view
    typer.echo(
        f"{rec}: evidence {printable(stored.filename)} recorded ({stored.size_bytes:,} bytes, sha256 {stored.sha256[:12]}); "
        f"{view.state.phase.value.replace('_', ' ')}, {view.register_status}"
    )


@app.command()
def revisit(
    inspection_id: str = typer.Argument(..., metavar="INSPECTION_ID", help="An inspection ID, e.g. CUM-2017-01-26."),
    by: str = typer.Option(..., "--by", help="The inspector opening the revisit."),
    on: Optional[str] = typer.Option(
        None, "--on", metavar="YYYY-MM-DD", help="The revisit's fieldwork start, when it opened earlier (back-dating)."
    ),
) -> None:
    """Open the revisit (post-inspection review) now: every open recommendation is asked for evidence or reviewed."""
    from ncpi_workflow.app.inspector_actions import trigger_revisit
    from ncpi_workflow.views import when

    insp = _inspection(inspection_id)
    _name_arg(by)
    result = _call(trigger_revisit, insp, by, on=_on_arg(on))
    typer.echo(f"revisit of {insp} opened {when(result.opened_at)} (cycle {result.cycle}, {result.trigger}, by {result.by})")


@app.command()
def decide(
    rec_id: str = typer.Argument(..., metavar="REC_ID", help="A recommendation ID, e.g. CUM-2017-01-26-R1."),
    outcome: str = typer.Option(..., "--outcome", help=f"The inspectorate's judgement: {OUTCOMES}."),
    rationale: str = typer.Option(..., "--rationale", help="Why."),
    by: str = typer.Option(..., "--by", help="Who decides."),
    on: Optional[str] = typer.Option(None, "--on", metavar="YYYY-MM-DD", help=ON_HELP),
) -> None:
    """Record the inspectorate's decision on a recommendation under review: it closes or starts a further cycle."""
    from ncpi_workflow.app.inspector_actions import record_decision
    from ncpi_workflow.views import words

    rec = _recommendation(rec_id)
    _word_arg(outcome, "--outcome")
    _text_arg(rationale, "--rationale")
    _name_arg(by)
    view = _call(record_decision, rec, outcome, rationale, by, on=_on_arg(on))
    s = view.state
    if s.phase.value == "closed":
        typer.echo(f"{rec}: {words(outcome)}; closed ({view.register_status})")
    else:
        typer.echo(f"{rec}: {words(outcome)}; further follow-up cycle {s.cycle}, due {s.deadline.due.isoformat()}")


@app.command()
def reopen(
    rec_id: str = typer.Argument(..., metavar="REC_ID", help="A recommendation ID, e.g. CUM-2017-01-26-R1."),
    reason: str = typer.Option(..., "--reason", help="Why it is re-opened."),
    by: str = typer.Option(..., "--by", help="Who re-opens it."),
) -> None:
    """Re-open a closed recommendation: a new follow-up cycle with a new deadline."""
    from ncpi_workflow.app.inspector_actions import reopen as reopen_recommendation
    from ncpi_workflow.views import words

    rec = _recommendation(rec_id)
    _text_arg(reason, "--reason")
    _name_arg(by)
    view = _call(reopen_recommendation, rec, reason, by)
    s = view.state
    typer.echo(f"{rec}: re-opened; cycle {s.cycle}, {words(s.phase)}, due {s.deadline.due.isoformat()}")


@app.command()
def withdraw(
    rec_id: str = typer.Argument(..., metavar="REC_ID", help="A recommendation ID, e.g. CUM-2017-01-26-R1."),
    reason: str = typer.Option(..., "--reason", help="Why it is withdrawn."),
    by: str = typer.Option(..., "--by", help="Who withdraws it."),
) -> None:
    """Withdraw a recommendation: it closes with the outcome 'withdrawn'."""
    from ncpi_workflow.app.inspector_actions import withdraw as withdraw_recommendation

    rec = _recommendation(rec_id)
    _text_arg(reason, "--reason")
    _name_arg(by)
    view = _call(withdraw_recommendation, rec, reason, by)
    typer.echo(f"{rec}: withdrawn; closed ({view.register_status})")


register_app = typer.Typer(help="The public register: the inspectorate's dated status of each recommendation.", no_args_is_help=True)
app.add_typer(register_app, name="register")
from ncpi_workflow.cli_register import register_export  # noqa: E402  (the public register's export)

register_app.command("export")(register_export)
from ncpi_workflow.metrics import metrics_command  # noqa: E402  (the figures, from the register alone)

app.command("metrics")(metrics_command)


@register_app.command("set")
def register_set(
    rec_id: str = typer.Argument(..., metavar="REC_ID", help="A recommendation ID, e.g. CUM-2017-01-26-R1."),
    status: str = typer.Option(..., "--status", help="awaiting review, being progressed or will be progressed."),
    comment: str = typer.Option(..., "--comment", help="The public comment published with the status."),
    by: str = typer.Option(..., "--by", help="The inspector who judges it."),
    on: Optional[str] = typer.Option(None, "--on", metavar="YYYY-MM-DD", help=ON_HELP),
) -> None:
    """Set a recommendation's public register status: a dated, attributed step of its trail. The force's own
    claim never sets it; "no further action needed" comes with a closing decision."""
    from ncpi_workflow.app.inspector_actions import set_register_status

    rec = _recommendation(rec_id)
    _word_arg(status, "--status")
    _text_arg(comment, "--comment")
    _name_arg(by)
    view = _call(set_register_status, rec, status, comment, by, on=_on_arg(on))
    typer.echo(f"{rec}: register status {view.register_status!r} set by {view.state.register[-1].by}")


@app.command("revise-deadline")
def revise_deadline(
    id: str = typer.Argument(..., metavar="ID", help="An inspection ID (report deadlines) or a recommendation ID."),
    deadline: str = typer.Option(
        ..., "--deadline", metavar="KEY",
        help="Inspection: action_plan, pcc_response, immediate_update or revisit_by; recommendation: recommendation or evidence.",
    ),
    to: str = typer.Option(..., "--to", metavar="YYYY-MM-DD", help="The new due date (a working day after today)."),
    reason: str = typer.Option(..., "--reason", help="Why it moves."),
    by: str = typer.Option(..., "--by", help="Who moves it."),
) -> None:
    """Move a deadline. Its original date is kept; the revision is recorded with the reason and who made it."""
    from ncpi_workflow.app.inspector_actions import parse_due, revise_deadline as revise

    _target(id)
    _word_arg(deadline, "--deadline")
    _text_arg(reason, "--reason")
    _name_arg(by)
    new_due = parse_due(to, "--to")
    moved = _call(revise, id, deadline, new_due, reason, by)
    typer.echo(
        f"{moved.business_id}: {deadline} deadline moved from {moved.previous_due.isoformat()} to {moved.due.isoformat()} "
        f"(originally {moved.original_due.isoformat()})"
    )


@app.command()
def deliver(
    inspection_id: str = typer.Argument(..., metavar="INSPECTION_ID", help="An inspection ID, e.g. CUM-2017-01-26."),
    item: str = typer.Argument(..., help="action_plan, pcc_response or immediate_update."),
    by: str = typer.Option(..., "--by", help="Who records its receipt."),
    note: str = typer.Option("", "--note", help="A note, e.g. how it arrived."),
    document: Optional[Path] = typer.Option(
        None, "--document", help="The document received: checked like a portal upload, kept by its SHA-256."
    ),
    url: Optional[str] = typer.Option(None, "--url", help="Or the web address it is published at."),
    on: Optional[str] = typer.Option(None, "--on", metavar="YYYY-MM-DD", help="The day it was received, when that was earlier."),
) -> None:
    """Record that the force (or PCC) delivered a report-level item: its deadline is met and its reminders stop.
    With --document, the file is checked (type by content, size, name, the scan) before anything is
    kept, then kept in the evidence store; with --url, its address is recorded."""
    from ncpi_workflow.app.force_responses import check_evidence_file
    from ncpi_workflow.app.inspector_actions import record_delivery_received
    from ncpi_workflow.lifecycle import printable
    from ncpi_workflow.views import when, words

    insp = _inspection(inspection_id)
    _word_arg(item, "ITEM")
    _name_arg(by)
    _text_arg(note, "--note", required=False)
    if document is not None and url is not None:
        raise UserError("give --document or --url, not both")
    if url is not None:
        _word_arg(url, "--url")
    day = _on_arg(on)
    checked = None
    if document is not None:
        # The file's own checks need no Temporal: a bad document is refused first, and nothing is kept.
        try:
            checked = check_evidence_file(_settings(), document)
        except UserError as exc:
            raise UserError(f"--document: {exc}") from None
    try:
        view = _call(record_delivery_received, insp, item, by, note, document=checked, url=url, on=day)
    finally:
        if checked is not None:
            checked.discard()
    met = next(d for d in view.state.deadlines if d.key == item)
    what = f", document {printable(checked.filename)} (sha256 {checked.sha256[:12]})" if checked is not None else (
        f", at {url.strip()}" if url else "")
    typer.echo(f"{insp}: {words(item)} received {when(met.met_at)} (was due {met.due.isoformat()}){what}")


@app.command()
def worker() -> None:
    """Run the worker: every follow-up workflow and activity on the task queue, until Ctrl-C or SIGTERM."""
    from ncpi_workflow.service import worker as worker_module

    settings = _settings()
    worker_module.configure_logging(settings)
    try:
        with _database_errors(settings), _temporal_errors(settings, f"task queue {settings.task_queue}"):
            run(worker_module.serve(settings))
    except RuntimeError as exc:
        if "client connect" in str(exc):
            raise _unreachable(settings, _connect_reason(exc)) from None
        raise


@app.command()
def health(
    check_worker: bool = typer.Option(False, "--worker", help="Also require this container's worker to be running."),
) -> None:
    """Readiness, then what is wrong: the database and Temporal answer (and, with --worker, the local
    worker is alive); the SMTP relay as the workers last found it; notifications pending past
    NCPI_OUTBOX_PENDING_MINUTES; workflows whose task keeps failing.

    Exit 1 when the database or Temporal (or, with --worker, this container's worker) is not there;
    2 when they are but something above is wrong; 0 otherwise. With --worker (the container's
    health check) the problems are printed but do not fail it: they are the deployment's, which
    restarting this container would not fix, and it reads stuck workflows from the reconciler's
    last pass instead of scanning Temporal."""
    import time

    from sqlalchemy import text

    from ncpi_workflow import db
    from ncpi_workflow.jobs import deployment_problems

    settings = _settings()
    if check_worker:
        alive = settings.worker_alive_file
        if not alive.exists():
            fail(f"no worker running here ({alive} is missing)")
        age = time.time() - alive.stat().st_mtime
        if age > 30:
            fail(f"the worker has not reported for {age:.0f} s ({alive})")

    async def check():
        async with db.open_database(settings.database_url) as sessions:
            async with sessions() as session:
                await session.execute(text("SELECT 1"))
            client = await _client(settings)
            await asyncio.wait_for(client.service_client.check_health(), CALL_TIMEOUT_SECONDS)
            with _temporal_errors(settings, "the running workflows"):
                return await asyncio.wait_for(
                    deployment_problems(sessions, None if check_worker else client, settings), CALL_TIMEOUT_SECONDS
                )

    with _database_errors(settings):
        problems = run(check())
    reachable = "database and Temporal reachable" + (", worker alive" if check_worker else "")
    if problems.count:
        typer.echo(f"degraded: {reachable}; {problems.count} problem{'s' if problems.count != 1 else ''}")
    else:
        typer.echo(f"ok: {reachable}")
    _echo_lines(_health_lines(problems))
    if problems.count and not check_worker:
        raise typer.Exit(2)


def _health_lines(p) -> List[str]:
    from ncpi_workflow.views import when

    minutes = f"{p.age.total_seconds() / 60:g} min"
    lines = []
    if p.relay:
        for r in p.relay:
            lines.append(
                f"relay: FAILING ({r.category}) since {when(r.since)}, found by worker {_one_line(r.reporter, 80)} "
                f"at {when(r.checked_at)}: {_one_line(r.reason or '', 400)}; deliveries are held and retried, none is marked failed"
            )
    elif p.relay_ok:
        latest = max(p.relay_ok, key=lambda r: r.checked_at)
        lines.append(f"relay: ok ({_one_line(latest.relay, 80)}, last confirmed {when(latest.checked_at)})")
    else:
        lines.append("relay: no recent word from a worker (nothing sent lately)")
    if p.pending_past_age:
        detail = [f"oldest recorded {when(p.oldest_pending)}"]
        if p.held_by_relay:
            detail.append(f"{p.held_by_relay} held by a relay fault")
        if p.never_attempted:
            detail.append(f"{p.never_attempted} never attempted (the reconciler delivers them)")
        lines.append(f"outbox: {p.pending_past_age} notification{'s' if p.pending_past_age != 1 else ''} pending for more "
                     f"than {minutes} ({'; '.join(detail)}); `ncpi outbox --status pending` lists them")
    else:
        lines.append(f"outbox: nothing pending for more than {minutes}")
    source = "" if p.stuck_source == "temporal" else " (as of the reconciler's last pass)"
    for s in p.stuck:
        lines.append(f"stuck: {_one_line(s.workflow_id, 200)} ({s.workflow_type}): workflow task tried {s.attempts} times; "
                     f"last failure: {_one_line(s.error, 400)}{source}")
    if not p.stuck:
        lines.append(f"workflows: none stuck{source}")
    return lines


calendar_app = typer.Typer(help="The working-day calendar of running follow-ups.", no_args_is_help=True)
app.add_typer(calendar_app, name="calendar")

@calendar_app.command("refresh")
def calendar_refresh() -> None:
    """Push the bank holidays known now (the `holidays` package and the policy's extra_bank_holidays)
    to every running follow-up workflow on this task queue."""
    from ncpi_workflow.app.inspector_actions import calendar_refresh, refresh_calendars

    refresh = calendar_refresh(_settings())  # a bad policy is refused before Temporal is asked
    counts = _call(refresh_calendars, refresh)
    typer.echo(
        f"signalled {sum(counts.values())} workflows ("
        + ", ".join(f"{n} {t}" for t, n in counts.items())
        + f"): {len(refresh.bank_holidays)} bank holidays known through {refresh.covers_until.isoformat()}"
    )


outbox_app = typer.Typer(help="The email outbox.", invoke_without_command=True)
app.add_typer(outbox_app, name="outbox")


@outbox_app.callback()
def outbox(
    ctx: typer.Context,
    status: Optional[str] = typer.Option(None, "--status", help="Only notifications with this status: pending, sent or failed."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """The email outbox: every notification the follow-ups have produced (times in Europe/London)."""
    if ctx.invoked_subcommand is not None:
        return
    from ncpi_workflow import db
    from ncpi_workflow.app.outbox import OutboxFilter, list_notifications
    from ncpi_workflow.views import outbox_records, render_outbox

    settings = _settings()
    where = OutboxFilter(status=status)
    where.check("--status")

    async def fetch():
        async with db.open_database(settings.database_url) as sessions:
            return await list_notifications(sessions, where)

    with _database_errors(settings):
        records = outbox_records(run(fetch()))
    if as_json:
        _echo_json(records)
        return
    if not records:
        typer.echo("the outbox is empty" if status is None else f"no {status} notifications")
        return
    _echo_lines(render_outbox(records))


def _notification_id(text: str) -> int:
    value = text.strip()
    if not value.isdigit() or not value.isascii():
        raise UserError(f"{_one_line(text, 40)!r} is not a notification id (the first column of `ncpi outbox`)")
    number = int(value)
    if not _in_row_range(number):
        raise UserError(f"no notification {_one_line(value, 40)} in the outbox")
    return number


def _since(text: str) -> datetime:
    """--since DATE: midnight of that day in Europe/London, as a UTC instant."""
    from ncpi_workflow.formatting import LONDON

    try:
        day = date.fromisoformat(text.strip())
    except ValueError:
        raise UserError(f"--since: {_one_line(text, 40)!r} is not a date such as 2026-12-01") from None
    return datetime.combine(day, datetime.min.time(), LONDON).astimezone(timezone.utc)


@outbox_app.command("resend")
def outbox_resend(
    notification_id: Optional[str] = typer.Argument(None, metavar="[ID]", help="The notification's id (first column of `ncpi outbox`)."),
    failed: bool = typer.Option(False, "--failed", help="Every failed notification (narrowed by --since and --kind), instead of one ID."),
    since: Optional[str] = typer.Option(None, "--since", metavar="DATE", help="With --failed: only those last tried on or after this day (Europe/London)."),
    kind: Optional[str] = typer.Option(None, "--kind", metavar="K", help="With --failed: only this kind, e.g. reminder or published."),
    by: str = typer.Option("operator", "--by", help="Who asks for it, for the audit trail."),
) -> None:
    """Send a failed (or stuck pending) notification again, or with --failed every failed one, to the
    contacts' current addresses. The message goes out as it was first rendered: the same bytes and
    Message-ID (only the To header follows a corrected address)."""
    from ncpi_workflow import db
    from ncpi_workflow.app.outbox import resend, resend_failed

    if failed == (notification_id is not None):
        fail("give either one notification ID or --failed")
    if not failed and (since is not None or kind is not None):
        fail("--since and --kind go with --failed")
    wanted = _notification_id(notification_id) if notification_id is not None else None
    after = _since(since) if since is not None else None
    if kind is not None and not kind.strip():
        fail("--kind: give a kind such as reminder (the third column of `ncpi outbox`)")
    settings = _settings()

    async def go() -> list[tuple[int, list[str]]]:
        client = await _client(settings)
        async with db.open_database(settings.database_url) as sessions:
            if wanted is not None:
                return [(wanted, await resend(settings, client, sessions, wanted, by))]
            return await resend_failed(settings, client, sessions, by, since=after, kind=kind)

    with _database_errors(settings):
        sent = run(go())
    for row_id, to in sent:
        typer.echo(f"re-sending notification {row_id} to {', '.join(to)}")
    if failed:
        narrowed = (f" of kind {_one_line(kind, 40)}" if kind else "") + (f" since {since.strip()}" if since else "")
        typer.echo(f"re-sending {len(sent)} failed notification{'s' if len(sent) != 1 else ''}{narrowed}"
                   if sent else f"no failed notifications{narrowed}")


def main() -> None:
    """Entry point: one line on stderr for any failure, never a traceback unless NCPI_DEBUG is set."""
    try:
        # Outside standalone mode click returns the exit code of typer.Exit instead of raising it.
        result = app(standalone_mode=False)
        code = result if isinstance(result, int) else 0
    except typer.Exit as exc:
        code = exc.exit_code
    except UserError as exc:
        typer.echo(f"ncpi: {_line(exc)}", err=True)
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
            typer.echo(f"ncpi: internal error: {type(exc).__name__}: {_line(_one_line(exc, 400))} (set NCPI_DEBUG=1 for details)", err=True)
            code = EXIT_INTERNAL
    sys.stdout.flush()
    sys.stderr.flush()
    # os._exit skips interpreter teardown, where the Temporal SDK can crash (sdk-python issue 300).
    os._exit(code)


if __name__ == "__main__":
    main()
