"""The `ncpi` command. Every failure is one line on stderr and a non-zero exit status."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from contextlib import contextmanager
from dataclasses import asdict
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any, Coroutine, Iterator, List, Optional

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
    """Print the whole timeline of a report (deadlines, reminders, escalations) before publishing it:
    every message the follow-up sends if nobody acts, up to the automatic revisit's evidence requests."""
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

CONNECT_TIMEOUT_SECONDS = 10.0
CALL_TIMEOUT_SECONDS = 60.0
"""How long a Query or Update may wait for the worker before the command gives up with one line."""


def _one_line(text: object, limit: int = 240) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _unreachable(settings, reason: str) -> UserError:
    return UserError(
        f"cannot reach Temporal at {settings.temporal_address} (NCPI_TEMPORAL_ADDRESS, namespace "
        f"{settings.temporal_namespace}): {reason}"
    )


def _connect_reason(exc: BaseException) -> str:
    text = str(exc)
    if "Connection refused" in text or "ConnectionRefused" in text:
        return "connection refused"
    return _one_line(text.removeprefix("Failed client connect: "), 160)


async def _client(settings):
    from ncpi_workflow.temporal import connect

    try:
        return await asyncio.wait_for(
            connect(settings.temporal_address, settings.temporal_namespace), CONNECT_TIMEOUT_SECONDS
        )
    except asyncio.TimeoutError:
        raise _unreachable(settings, f"no answer within {CONNECT_TIMEOUT_SECONDS:g} s") from None
    except RuntimeError as exc:  # the SDK reports a failed connection as RuntimeError("Failed client connect: ...")
        raise _unreachable(settings, _connect_reason(exc)) from None


def _timed_out(settings, subject: str, seconds: float | None = CALL_TIMEOUT_SECONDS) -> UserError:
    within = f" within {seconds:g} s" if seconds else " in time"
    return UserError(
        f"no answer about {subject}{within}: is `ncpi worker` running on task queue "
        f"{settings.task_queue}? (the request may still be carried out when a worker picks it up; check with "
        f"`ncpi show {subject}`)"
    )


@contextmanager
def _temporal_errors(settings, subject: str) -> Iterator[None]:
    """Temporal's refusals and failures as one-line UserErrors naming what the user asked about."""
    from temporalio.client import (
        WorkflowQueryFailedError,
        WorkflowUpdateFailedError,
        WorkflowUpdateRPCTimeoutOrCancelledError,
    )
    from temporalio.service import RPCError, RPCStatusCode

    try:
        yield
    except WorkflowUpdateFailedError as exc:
        # A validator's refusal (or a failed handler): its ApplicationError carries the reason.
        cause = exc.cause
        raise UserError(_one_line(getattr(cause, "message", None) or cause or exc)) from None
    except WorkflowUpdateRPCTimeoutOrCancelledError:
        raise _timed_out(settings, subject) from None
    except WorkflowQueryFailedError as exc:
        raise UserError(f"{subject}: the query failed: {_one_line(exc)}") from None
    except RPCError as exc:
        if exc.status is RPCStatusCode.NOT_FOUND:
            if "completed" in (exc.message or "").lower():
                raise UserError(
                    f"the follow-up workflow for {subject} has finished; it accepts no more changes"
                ) from None
            raise UserError(f"no follow-up workflow for {subject} (is it published?)") from None
        if exc.status is RPCStatusCode.UNAVAILABLE:
            raise _unreachable(settings, _one_line(exc.message, 160)) from None
        if exc.status in (RPCStatusCode.DEADLINE_EXCEEDED, RPCStatusCode.CANCELLED):
            raise _timed_out(settings, subject, None) from None
        raise UserError(f"Temporal could not handle the request about {subject}: {_one_line(exc.message)}") from None
    except asyncio.TimeoutError:
        raise _timed_out(settings, subject) from None


@contextmanager
def _database_errors(settings) -> Iterator[None]:
    from sqlalchemy.exc import OperationalError, ProgrammingError

    try:
        yield
    except (OperationalError, ProgrammingError) as exc:
        text = str(getattr(exc, "orig", exc))
        if "no such table" in text or "does not exist" in text:
            raise UserError("the database has no schema yet: run `ncpi db upgrade`") from None
        raise UserError(f"database {settings.database_url.split('://', 1)[0]}: {_one_line(text, 160)}") from None
    except OSError as exc:
        raise UserError(f"database: {_one_line(exc, 160)}") from None


def _target(text: str) -> tuple[str, str]:
    """('recommendation' | 'inspection', business ID) from an ID or a workflow ID."""
    from ncpi_workflow.lifecycle import parse_inspection_id, parse_recommendation_id

    for kind, parse in (("recommendation", parse_recommendation_id), ("inspection", parse_inspection_id)):
        try:
            return kind, parse(text.strip())
        except ValueError:
            continue
    raise UserError(
        f"{text!r} is not an inspection ID such as CUM-2017-01-26 or a recommendation ID such as CUM-2017-01-26-R1"
    )


def _recommendation(text: str) -> str:
    from ncpi_workflow.lifecycle import parse_recommendation_id

    try:
        return parse_recommendation_id(text.strip())
    except ValueError as exc:
        raise UserError(str(exc)) from None


def _inspection(text: str) -> str:
    from ncpi_workflow.lifecycle import parse_inspection_id

    try:
        return parse_inspection_id(text.strip())
    except ValueError as exc:
        raise UserError(str(exc)) from None


def _workflow_id(kind: str, business_id: str) -> str:
    from ncpi_workflow.lifecycle import inspection_workflow_id, recommendation_workflow_id

    return recommendation_workflow_id(business_id) if kind == "recommendation" else inspection_workflow_id(business_id)


def _view_type(kind: str):
    from ncpi_workflow.lifecycle import InspectionView, RecommendationView

    return RecommendationView if kind == "recommendation" else InspectionView


async def _query_state(settings, client, kind: str, business_id: str):
    handle = client.get_workflow_handle(_workflow_id(kind, business_id))
    with _temporal_errors(settings, business_id):
        return await asyncio.wait_for(handle.query("state", result_type=_view_type(kind)), CALL_TIMEOUT_SECONDS)


async def _send_update(settings, client, kind: str, business_id: str, update: str, request: Any, result_type: Any):
    """One Temporal Update with a fresh update ID; a validator's refusal becomes the UserError it gave."""
    handle = client.get_workflow_handle(_workflow_id(kind, business_id))
    with _temporal_errors(settings, business_id):
        return await asyncio.wait_for(
            handle.execute_update(update, request, result_type=result_type), CALL_TIMEOUT_SECONDS
        )


def _update(kind: str, business_id: str, update: str, request: Any, result_type: Any = None) -> Any:
    settings = _settings()

    async def go():
        client = await _client(settings)
        return await _send_update(settings, client, kind, business_id, update, request, result_type or _view_type(kind))

    return run(go())


def _echo_lines(lines: List[str]) -> None:
    typer.echo("\n".join(lines))


def _echo_json(document: Any) -> None:
    typer.echo(json.dumps(document, indent=2, default=_json_default))


@app.command()
def publish(
    file: Path = typer.Argument(..., help="A report file (YAML)."),
    anchor_now: bool = typer.Option(
        False,
        "--anchor-now",
        help="Run the follow-up as if the report were published now (for demonstrations): its clocks start from this moment.",
    ),
) -> None:
    """Publish a report: write its records and start its follow-up workflow. Publishing it again starts nothing."""
    from ncpi_workflow import publishing
    from ncpi_workflow.report import ReportInvalid

    settings = _settings()
    try:
        _load(file)  # refuse a bad file before touching Temporal or the database
    except ReportInvalid as exc:
        fail(exc.problems[0])
    anchor = datetime.now(timezone.utc) if anchor_now else None

    async def go():
        client = await _client(settings)
        with _temporal_errors(settings, str(file)):
            return await publishing.publish(settings, client, file, anchor=anchor)

    with _database_errors(settings):
        result = run(go())
    if result.started:
        typer.echo(
            f"published {result.inspection_id}: workflow {result.workflow_id}, {result.recommendations} recommendations"
        )
    else:
        typer.echo(f"{result.inspection_id} is already published (workflow {result.workflow_id}); nothing started")


@app.command()
def status(
    force: Optional[str] = typer.Option(None, "--force", metavar="CODE", help="Only this force's inspections, e.g. CUM."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output: a list of objects, one per recommendation."),
) -> None:
    """Where every recommendation stands, from the database's projection of the workflows (no Temporal needed)."""
    from ncpi_workflow import db
    from ncpi_workflow.views import render_status, status_json, status_records, status_rows

    settings = _settings()
    known = _forces()
    code = None
    if force is not None:
        code = force.strip().upper()
        if code not in known:
            fail(f"unknown force code {force!r}; `ncpi forces` lists the {len(known)} codes")

    async def fetch():
        async with db.open_database(settings.database_url) as sessions:
            async with sessions() as session:
                return await status_rows(session, code)

    with _database_errors(settings):
        rows = run(fetch())
    if as_json:
        typer.echo(status_json(status_records(rows)))
        return
    if not rows:
        typer.echo("no published inspections" + (f" for {code}" if code else ""))
        return
    _echo_lines(render_status(rows, {c: f.name for c, f in known.items()}))


@app.command()
def show(
    id: str = typer.Argument(..., metavar="ID", help="An inspection (CUM-2017-01-26) or recommendation (CUM-2017-01-26-R1) ID, or its workflow ID."),
    as_json: bool = typer.Option(False, "--json", help="The workflow's whole view as JSON."),
) -> None:
    """The live state of one follow-up, from its workflow: phase, deadlines and revisions, next action, evidence, history."""
    from ncpi_workflow.views import dump, render_inspection, render_recommendation

    kind, business_id = _target(id)
    settings = _settings()

    async def go():
        client = await _client(settings)
        return await _query_state(settings, client, kind, business_id)

    view = run(go())
    if as_json:
        _echo_json(dump(view))
    else:
        _echo_lines(render_recommendation(view) if kind == "recommendation" else render_inspection(view))


CLAIMS = "not_started, in_progress, implemented"
OUTCOMES = "achieved, partially_achieved, not_achieved, superseded, withdrawn"


@app.command()
def progress(
    rec_id: str = typer.Argument(..., metavar="REC_ID", help="A recommendation ID, e.g. CUM-2017-01-26-R1."),
    claim: str = typer.Option(..., "--claim", help=f"What the force says: {CLAIMS}."),
    text: str = typer.Option(..., "--text", help="The force's account of its progress."),
    by: str = typer.Option(..., "--by", help="Who reports it."),
) -> None:
    """Record the force's progress on a recommendation (its own claim, apart from the inspectorate's judgement)."""
    from ncpi_workflow.lifecycle import ProgressRequest
    from ncpi_workflow.views import words

    rec = _recommendation(rec_id)
    view = _update("recommendation", rec, "submit_progress", ProgressRequest(claim=claim, text=text, by=by))
    s = view.state
    typer.echo(f"{rec}: progress recorded (force claims {words(s.force_claim)}); {words(s.phase)}, {view.register_status}")


@app.command()
def evidence(
    rec_id: str = typer.Argument(..., metavar="REC_ID", help="A recommendation ID, e.g. CUM-2017-01-26-R1."),
    file: Path = typer.Option(..., "--file", help="The evidence file."),
    by: str = typer.Option(..., "--by", help="Who submits it."),
    description: Optional[str] = typer.Option(None, "--description", help="What the file shows."),
) -> None:
    """Submit a file of evidence for a recommendation: kept by its SHA-256, then recorded by the workflow."""
    from ncpi_workflow.evidence_files import content_type, hash_file, keep_file, stored_path
    from ncpi_workflow.lifecycle import EvidenceRequestInput, RecommendationView, check_evidence

    rec = _recommendation(rec_id)
    settings = _settings()
    limit = settings.evidence_max_bytes
    sha256, size = hash_file(file, limit)

    def request_for(sha: str, size_bytes: int, path: Path) -> EvidenceRequestInput:
        return EvidenceRequestInput(
            filename=file.name, sha256=sha, size_bytes=size_bytes, storage_path=str(path.resolve()),
            content_type=content_type(file.name), by=by, description=description,
        )

    async def go():
        client = await _client(settings)
        # Ask first, so that a submission the workflow would refuse leaves nothing in the store.
        current = await _query_state(settings, client, "recommendation", rec)
        try:
            check_evidence(current.state, request_for(sha256, size, stored_path(settings.evidence_dir, sha256)), limit)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        stored = keep_file(file, settings.evidence_dir, limit)
        request = request_for(stored.sha256, stored.size_bytes, stored.storage_path)
        return await _send_update(settings, client, "recommendation", rec, "submit_evidence", request, RecommendationView), stored

    view, stored = run(go())
    typer.echo(
        f"{rec}: evidence {stored.filename} recorded ({stored.size_bytes:,} bytes, sha256 {stored.sha256[:12]}); "
        f"{view.state.phase.value.replace('_', ' ')}, {view.register_status}"
    )


@app.command()
def revisit(
    inspection_id: str = typer.Argument(..., metavar="INSPECTION_ID", help="An inspection ID, e.g. CUM-2017-01-26."),
    by: str = typer.Option(..., "--by", help="The inspector opening the revisit."),
) -> None:
    """Open the revisit (post-inspection review) now: every open recommendation is asked for evidence or reviewed."""
    from ncpi_workflow.lifecycle import RevisitResult, TriggerRevisitRequest
    from ncpi_workflow.views import when

    insp = _inspection(inspection_id)
    result = _update("inspection", insp, "trigger_revisit", TriggerRevisitRequest(by=by), RevisitResult)
    typer.echo(f"revisit of {insp} opened {when(result.opened_at)} (cycle {result.cycle}, {result.trigger}, by {result.by})")


@app.command()
def decide(
    rec_id: str = typer.Argument(..., metavar="REC_ID", help="A recommendation ID, e.g. CUM-2017-01-26-R1."),
    outcome: str = typer.Option(..., "--outcome", help=f"The inspectorate's judgement: {OUTCOMES}."),
    rationale: str = typer.Option(..., "--rationale", help="Why."),
    by: str = typer.Option(..., "--by", help="Who decides."),
) -> None:
    """Record the inspectorate's decision on a recommendation under review: it closes or starts a further cycle."""
    from ncpi_workflow.lifecycle import DecisionRequest
    from ncpi_workflow.views import words

    rec = _recommendation(rec_id)
    view = _update("recommendation", rec, "record_decision", DecisionRequest(outcome=outcome, rationale=rationale, by=by))
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
    from ncpi_workflow.lifecycle import ReasonRequest
    from ncpi_workflow.views import words

    rec = _recommendation(rec_id)
    view = _update("recommendation", rec, "reopen", ReasonRequest(reason=reason, by=by))
    s = view.state
    typer.echo(f"{rec}: re-opened; cycle {s.cycle}, {words(s.phase)}, due {s.deadline.due.isoformat()}")


@app.command()
def withdraw(
    rec_id: str = typer.Argument(..., metavar="REC_ID", help="A recommendation ID, e.g. CUM-2017-01-26-R1."),
    reason: str = typer.Option(..., "--reason", help="Why it is withdrawn."),
    by: str = typer.Option(..., "--by", help="Who withdraws it."),
) -> None:
    """Withdraw a recommendation: it closes with the outcome 'withdrawn'."""
    from ncpi_workflow.lifecycle import ReasonRequest

    rec = _recommendation(rec_id)
    view = _update("recommendation", rec, "withdraw", ReasonRequest(reason=reason, by=by))
    typer.echo(f"{rec}: withdrawn; closed ({view.register_status})")


register_app = typer.Typer(help="The public register: the inspectorate's dated status of each recommendation.", no_args_is_help=True)
app.add_typer(register_app, name="register")


@register_app.command("set")
def register_set(
    rec_id: str = typer.Argument(..., metavar="REC_ID", help="A recommendation ID, e.g. CUM-2017-01-26-R1."),
    status: str = typer.Option(..., "--status", help="awaiting review, being progressed or will be progressed."),
    comment: str = typer.Option(..., "--comment", help="The public comment published with the status."),
    by: str = typer.Option(..., "--by", help="The inspector who judges it."),
) -> None:
    """Set a recommendation's public register status: a dated, attributed step of its trail. The force's own
    claim never sets it; "no further action needed" comes with a closing decision."""
    from ncpi_workflow.lifecycle import RegisterStatusRequest

    rec = _recommendation(rec_id)
    view = _update("recommendation", rec, "set_register_status", RegisterStatusRequest(status=status, comment=comment, by=by))
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
    from ncpi_workflow.lifecycle import ReviseDeadlineRequest

    kind, business_id = _target(id)
    try:
        new_due = date.fromisoformat(to.strip())
    except ValueError:
        fail(f"--to: {to!r} is not a date such as 2026-12-31")
    view = _update(kind, business_id, "revise_deadline", ReviseDeadlineRequest(deadline=deadline, new_due=new_due, reason=reason, by=by))
    if kind == "recommendation":
        moved = view.state.deadline if deadline == "recommendation" else view.state.evidence_deadline
    else:
        moved = next(d for d in view.state.deadlines if d.key == deadline)
    previous = moved.revisions[-1].previous_due
    typer.echo(
        f"{business_id}: {deadline} deadline moved from {previous.isoformat()} to {moved.due.isoformat()} "
        f"(originally {moved.original_due.isoformat()})"
    )


@app.command()
def deliver(
    inspection_id: str = typer.Argument(..., metavar="INSPECTION_ID", help="An inspection ID, e.g. CUM-2017-01-26."),
    item: str = typer.Argument(..., help="action_plan, pcc_response or immediate_update."),
    by: str = typer.Option(..., "--by", help="Who records its receipt."),
    note: str = typer.Option("", "--note", help="A note, e.g. how it arrived."),
) -> None:
    """Record that the force (or PCC) delivered a report-level item: its deadline is met and its reminders stop."""
    from ncpi_workflow.lifecycle import DeliveryRequest
    from ncpi_workflow.views import when, words

    insp = _inspection(inspection_id)
    view = _update("inspection", insp, "record_delivery", DeliveryRequest(item=item, by=by, note=note))
    met = next(d for d in view.state.deadlines if d.key == item)
    typer.echo(f"{insp}: {words(item)} received {when(met.met_at)} (was due {met.due.isoformat()})")


@app.command()
def worker() -> None:
    """Run the worker: every follow-up workflow and activity on the task queue, until Ctrl-C or SIGTERM."""
    import worker as worker_module

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
    """Readiness: the database and Temporal answer (and, with --worker, the local worker is alive). Exit 0 when so."""
    import time

    from sqlalchemy import text

    from ncpi_workflow import db

    settings = _settings()
    if check_worker:
        alive = settings.worker_alive_file
        if not alive.exists():
            fail(f"no worker running here ({alive} is missing)")
        age = time.time() - alive.stat().st_mtime
        if age > 30:
            fail(f"the worker has not reported for {age:.0f} s ({alive})")

    async def check() -> None:
        async with db.open_database(settings.database_url) as sessions:
            async with sessions() as session:
                await session.execute(text("SELECT 1"))
        client = await _client(settings)
        await asyncio.wait_for(client.service_client.check_health(), CALL_TIMEOUT_SECONDS)

    with _database_errors(settings):
        run(check())
    typer.echo("ok: database and Temporal reachable" + (", worker alive" if check_worker else ""))


calendar_app = typer.Typer(help="The working-day calendar of running follow-ups.", no_args_is_help=True)
app.add_typer(calendar_app, name="calendar")

FOLLOW_UP_TYPES = ("InspectionFollowUp", "RecommendationFollowUp")
REFRESH_SIGNAL = "refresh_calendar"
SIGNALS_AT_ONCE = 50


@calendar_app.command("refresh")
def calendar_refresh() -> None:
    """Push the bank holidays known now (the `holidays` package and the policy's extra_bank_holidays)
    to every running follow-up workflow on this task queue."""
    from temporalio.service import RPCError, RPCStatusCode

    from ncpi_workflow.clocks import refresh_for

    settings = _settings()
    calendar_policy = _policy().calendar
    refresh = refresh_for(calendar_policy, datetime.now(timezone.utc).astimezone(_zone(calendar_policy.timezone)).date())

    async def signal_one(client, workflow_id: str, gate: asyncio.Semaphore) -> bool:
        async with gate:
            try:
                await asyncio.wait_for(
                    client.get_workflow_handle(workflow_id).signal(REFRESH_SIGNAL, refresh), CALL_TIMEOUT_SECONDS
                )
            except RPCError as exc:
                if exc.status is RPCStatusCode.NOT_FOUND:  # finished since it was listed
                    return False
                raise
            return True

    async def go() -> dict[str, int]:
        client = await _client(settings)
        gate = asyncio.Semaphore(SIGNALS_AT_ONCE)
        counts = {}
        with _temporal_errors(settings, "the running follow-ups"):
            for workflow_type in FOLLOW_UP_TYPES:
                query = (
                    f'ExecutionStatus="Running" AND WorkflowType="{workflow_type}" '
                    f'AND TaskQueue="{settings.task_queue}"'
                )
                ids = [w.id async for w in client.list_workflows(query)]
                sent = await asyncio.gather(*(signal_one(client, i, gate) for i in ids))
                counts[workflow_type] = sum(sent)
        return counts

    counts = run(go())
    typer.echo(
        f"signalled {sum(counts.values())} workflows ("
        + ", ".join(f"{n} {t}" for t, n in counts.items())
        + f"): {len(refresh.bank_holidays)} bank holidays known through {refresh.covers_until.isoformat()}"
    )


def _zone(name: str):
    from zoneinfo import ZoneInfo

    return ZoneInfo(name)


OUTBOX_STATUSES = ("pending", "sent", "failed")


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
    from sqlalchemy import select

    from ncpi_workflow import db
    from ncpi_workflow.models import Notification
    from ncpi_workflow.views import outbox_records, render_outbox

    settings = _settings()
    if status is not None and status not in OUTBOX_STATUSES:
        fail(f"--status: {status!r} is not one of: {', '.join(OUTBOX_STATUSES)}")

    async def fetch():
        async with db.open_database(settings.database_url) as sessions:
            async with sessions() as session:
                query = select(Notification)
                if status is not None:
                    query = query.where(Notification.status == status)
                return list(await session.scalars(query.order_by(Notification.scheduled_for, Notification.id)))

    with _database_errors(settings):
        records = outbox_records(run(fetch()))
    if as_json:
        _echo_json(records)
        return
    if not records:
        typer.echo("the outbox is empty" if status is None else f"no {status} notifications")
        return
    _echo_lines(render_outbox(records))


@outbox_app.command("resend")
def outbox_resend(
    notification_id: int = typer.Argument(..., help="The notification's id (first column of `ncpi outbox`)."),
    by: str = typer.Option("operator", "--by", help="Who asks for it, for the audit trail."),
) -> None:
    """Send a failed (or stuck pending) notification again, to the contacts' current addresses."""
    from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
    from temporalio.exceptions import WorkflowAlreadyStartedError

    from ncpi_workflow import db
    from ncpi_workflow.models import Notification
    from ncpi_workflow.store import append_audit, resolve_recipients
    from workflows.delivery import resend_workflow_id

    settings = _settings()
    inspectorate = {"inspectors": settings.inspectors_email, "lead_hm_inspector": settings.lead_hm_inspector_email}

    async def go() -> list[str]:
        client = await _client(settings)
        async with db.open_database(settings.database_url) as sessions:
            async with sessions() as session:
                await session.begin()
                row = await session.get(Notification, notification_id)
                if row is None:
                    raise UserError(f"no notification {notification_id} in the outbox")
                if row.status == "sent":
                    raise UserError(f"notification {notification_id} was already sent ({row.sent_at:%Y-%m-%d %H:%M} UTC)")
                try:
                    # A digest or alert belongs to no inspection: only the inspectorate's addresses apply.
                    owner = row.inspection_id or "ALL"
                    row.recipients = await resolve_recipients(session, owner, row.recipients.get("roles", []), inspectorate)
                except LookupError as exc:
                    raise UserError(str(exc)) from None
                previous = row.last_error
                row.status = "pending"
                await append_audit(session, actor=by, action="notification.resend", entity_type="notification",
                                   entity_id=str(row.id), detail={"previous_error": previous, "to": row.recipients["to"]})
                with _temporal_errors(settings, f"notification {notification_id}"):
                    try:
                        await client.start_workflow(
                            "NotificationDelivery", notification_id, id=resend_workflow_id(notification_id),
                            task_queue=settings.task_queue, id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
                            id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
                        )
                    except WorkflowAlreadyStartedError:
                        raise UserError(f"a re-send of notification {notification_id} is already under way") from None
                await session.commit()
                return row.recipients["to"]

    with _database_errors(settings):
        to = run(go())
    typer.echo(f"re-sending notification {notification_id} to {', '.join(to)}")


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
