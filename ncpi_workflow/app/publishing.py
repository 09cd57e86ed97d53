"""Validating and publishing a report, from a file (the CLI) or uploaded bytes (the web).

A bad report is refused with one line per problem, the same lines as `ncpi validate` (naming the
file, the line, the field and the reason), and writes nothing and starts nothing. Publishing is
`ncpi_workflow.publishing.publish`: the records in one transaction, committed before the follow-up
workflow starts (its first activities read them).
"""

from __future__ import annotations

import re
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Iterator

from ncpi_workflow import publishing
from ncpi_workflow.app.temporal_calls import database_errors, temporal_errors
from ncpi_workflow.errors import UserError
from ncpi_workflow.forces import load_forces
from ncpi_workflow.publishing import PAST_CHOICE_HELP, PastChoice, PastDeadlines, PastSummary, Publication
from ncpi_workflow.report import LoadedReport, ReportInvalid, load_report

__all__ = ["PAST_CHOICE_HELP", "Checked", "PastChoice", "PastDeadlines", "PastSummary", "Publication", "check_file", "check_upload",
           "import_file", "publish_file", "publish_files", "publish_upload", "upload_name"]


@dataclass(frozen=True)
class Checked:
    """The outcome of checking one report file: the loaded report, or the problems."""

    name: str
    loaded: LoadedReport | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _renamed(lines: list[str], path: Path, name: str) -> list[str]:
    """Problems of a temporary copy as if about the file the user gave (its own name)."""
    prefix = str(path)
    return [name + line[len(prefix):] if line.startswith(prefix) else line for line in lines]


def check_file(settings, file: Path, display_name: str | None = None) -> Checked:
    """Check a report file against the format and the known forces. Touches nothing but the file."""
    file = Path(file)
    name = display_name or str(file)
    try:
        loaded = load_report(file, known_forces=set(load_forces(settings.forces_file)), max_bytes=settings.report_max_bytes)
    except ReportInvalid as exc:
        return Checked(name, problems=_renamed(exc.problems, file, name))
    except UserError as exc:
        return Checked(name, problems=_renamed([str(exc)], file, name))
    return Checked(name, loaded=loaded)


async def publish_file(
    settings, client, file: Path, *, anchor: datetime | None = None, by: str = "cli", checked: Checked | None = None,
    past: PastChoice | None = None, imported: tuple | None = None,
) -> Publication:
    """Validate, write, start. Raises ReportInvalid (its `problems` one line each) for a bad file,
    PastDeadlines for a report whose deadlines have passed given without a `past` choice.
    `checked` is `check_file`'s result when the caller has checked the file already (the CLI does,
    before connecting to Temporal). `imported` is `state_file.load_state`'s result (adoption)."""
    checked = checked or check_file(settings, file)
    if not checked.ok:
        raise ReportInvalid(checked.problems)
    with database_errors(settings), temporal_errors(settings, str(file)):
        return await publishing.publish(settings, client, Path(file), anchor=anchor, by=by, loaded=checked.loaded,
                                        past=past, imported=imported)


async def publish_files(
    settings, client, checked: list[Checked], *, anchor: datetime | None = None, by: str = "cli",
    past: PastChoice | None = None,
) -> list[publishing.Outcome]:
    """`ncpi publish A B ...`: every file checked first (ReportInvalid with every file's problems, and
    nothing published from any file, when one fails), then all published with one database engine and
    this one client, NCPI_PUBLISH_CONCURRENCY at a time (publishing.publish_many); the outcomes in the
    order given, a refused file's (PastDeadlines, ...) among them."""
    problems = [problem for c in checked for problem in c.problems]
    if problems:
        raise ReportInvalid(problems)
    with database_errors(settings):
        return await publishing.publish_many(
            settings, client, [(Path(c.name), c.loaded) for c in checked], anchor=anchor, by=by, past=past,
            errors=lambda name: _file_errors(settings, name))


@contextmanager
def _file_errors(settings, name: str) -> Iterator[None]:
    with database_errors(settings), temporal_errors(settings, name):
        yield


async def import_file(
    settings, client, report_file: Path, state_file: Path, *, by: str = "cli", checked: Checked | None = None,
) -> Publication:
    """`ncpi import REPORT STATE`: both files checked (ReportInvalid with every problem, nothing written
    on any), then the report published in adopt mode with the state's actions already taken."""
    from ncpi_workflow.state_file import StateInvalid, load_state

    checked = checked or check_file(settings, report_file)
    if not checked.ok:
        raise ReportInvalid(checked.problems)
    try:
        imported = load_state(Path(state_file), checked.loaded.report, max_bytes=settings.report_max_bytes)
    except StateInvalid as exc:
        raise ReportInvalid(exc.problems) from None
    return await publish_file(settings, client, report_file, by=by, checked=checked, past=PastChoice.ADOPT,
                              imported=imported)


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def upload_name(filename: str | None) -> str:
    """A safe base name for an uploaded file (never a path): 'report.yaml' when nothing usable is left."""
    base = (filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    base = _UNSAFE.sub("-", base).strip(".-")[:100]
    return base or "report.yaml"


def check_upload(settings, filename: str | None, content: bytes) -> Checked:
    name = upload_name(filename)
    if len(content) > settings.report_max_bytes:
        return Checked(name, problems=[
            f"{name}: file is {len(content):,} bytes, over the {settings.report_max_bytes:,}-byte limit for a report"
        ])
    with tempfile.TemporaryDirectory(prefix="ncpi-upload-") as folder:
        path = Path(folder) / name
        path.write_bytes(content)
        return check_file(settings, path, name)


@contextmanager
def checked_upload(settings, filename: str | None, content: bytes) -> Iterator[tuple[str, Path, Checked]]:
    """An uploaded report as a checked file in a temporary folder, for as long as the block runs:
    (its safe name, the path, the check). ReportInvalid (naming the upload) when it fails the check."""
    name = upload_name(filename)
    if len(content) > settings.report_max_bytes:
        raise ReportInvalid(check_upload(settings, filename, content).problems)
    with tempfile.TemporaryDirectory(prefix="ncpi-upload-") as folder:
        path = Path(folder) / name
        path.write_bytes(content)
        checked = check_file(settings, path, name)
        if not checked.ok:
            raise ReportInvalid(checked.problems)
        yield name, path, checked


async def publish_upload(
    settings, client, filename: str | None, content: bytes, *, by: str, anchor: datetime | None = None,
    past: PastChoice | None = None,
) -> Publication:
    """Publish an uploaded report. Problems and refusals name the uploaded file, not a temporary copy."""
    with checked_upload(settings, filename, content) as (name, path, checked):
        try:
            with database_errors(settings), temporal_errors(settings, name):
                return await publishing.publish(settings, client, path, anchor=anchor, by=by, loaded=checked.loaded,
                                                past=past, name=name)
        except PastDeadlines:
            raise  # it names the upload already
        except ReportInvalid as exc:
            raise ReportInvalid(_renamed(exc.problems, path, name)) from None
        except UserError as exc:
            raise UserError(_renamed([str(exc)], path, name)[0]) from None
