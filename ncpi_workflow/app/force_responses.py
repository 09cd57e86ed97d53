"""What a force sends: its own progress claim, and files of evidence.

Evidence is checked before it is kept: the workflow's current state is queried and the same rule
its validator applies (`check_evidence`) is run first, so a submission the workflow would refuse
leaves nothing in the evidence store; then the file is kept by its SHA-256 and the Update sent.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from ncpi_workflow.app.temporal_calls import RECOMMENDATION, parse_recommendation, query_state, send_update
from ncpi_workflow.errors import UserError
from ncpi_workflow.evidence_files import StoredFile, hash_file, keep_file, stored_path
from ncpi_workflow.lifecycle import EvidenceRequestInput, ProgressRequest, RecommendationView, check_evidence
from ncpi_workflow.uploads import CheckedUpload, check_upload


async def submit_progress(
    settings, client, recommendation_id: str, claim: str, text: str, by: str, on: date | None = None,
) -> RecommendationView:
    """The force's own account (not started / in progress / implemented), apart from the judgement.
    `on`: the day it was given, when that was earlier (back-dating; the workflow refuses a future day
    or one before publication)."""
    rec = parse_recommendation(recommendation_id)
    request = ProgressRequest(claim=claim, text=text, by=by, on=on)
    return await send_update(settings, client, RECOMMENDATION, rec, "submit_progress", request)


def published_of(business_id: str) -> date:
    """A report's publication date, from its inspection's or recommendation's ID (FORCE-YYYY-MM-DD[-Rn])."""
    return date.fromisoformat(business_id[4:14])


def check_backdate(on: date | None, business_id: str, view, what: str) -> None:
    """Before anything is kept for a back-dated action (a file in the evidence store): the workflow
    validator's own date rule (lifecycle.check_on), asked first, with the follow-up's calendar today."""
    if on is None:
        return
    from ncpi_workflow.formatting import local_date
    from ncpi_workflow.lifecycle import check_on
    from ncpi_workflow.views import calendar_now

    try:
        check_on(on, published=published_of(business_id), today=local_date(calendar_now(view)), what=what)
    except ValueError as exc:
        raise UserError(str(exc)) from None


@dataclass(frozen=True)
class EvidenceSubmitted:
    recommendation_id: str
    stored: StoredFile
    view: RecommendationView


def check_evidence_file(settings, file: Path, filename: str | None = None) -> CheckedUpload:
    """The checks of the file itself, which need neither Temporal nor the database (a front end may
    run them before connecting, so that a bad file is refused first): a missing, irregular or
    oversized file is refused naming its path; then the same checks as every upload (type by
    content, zip bombs, the name, the scan). Returns the checked private copy, which
    `submit_evidence` keeps and discards (discard it yourself if you do not submit it)."""
    file = Path(file)
    hash_file(file, settings.evidence_max_bytes)
    return check_upload(file, filename or file.name, settings)


async def submit_evidence(
    settings,
    client,
    recommendation_id: str,
    file: Path,
    by: str,
    description: str | None = None,
    filename: str | None = None,
    checked: CheckedUpload | None = None,
    on: date | None = None,
) -> EvidenceSubmitted:
    """Check, keep, record: a file of evidence for a recommendation. `filename` is the name to record
    (an upload's own name) when `file` is a temporary copy; `checked` is `check_evidence_file`'s
    result when the caller has run it already. `on`: the day it was received, when that was earlier."""
    rec = parse_recommendation(recommendation_id)
    limit = settings.evidence_max_bytes
    # The checked private copy is what is kept, so nothing can change between the check and the store.
    if checked is None:
        checked = await asyncio.to_thread(check_evidence_file, settings, file, filename)
    try:
        name, sha256, size = checked.filename, checked.sha256, checked.size_bytes

        def request_for(sha: str, size_bytes: int, path: Path) -> EvidenceRequestInput:
            return EvidenceRequestInput(
                filename=name, sha256=sha, size_bytes=size_bytes, storage_path=str(Path(path).resolve()),
                content_type=checked.content_type, by=by, description=description, on=on,
            )

        # Ask first, so that a submission the workflow would refuse leaves nothing in the store.
        current = await query_state(settings, client, RECOMMENDATION, rec)
        check_backdate(on, rec, current, "the evidence")
        try:
            check_evidence(current.state, request_for(sha256, size, stored_path(settings.evidence_dir, sha256)), limit)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        stored = keep_file(checked.path, settings.evidence_dir, limit)
    finally:
        checked.discard()
    request = request_for(stored.sha256, stored.size_bytes, stored.storage_path)
    view = await send_update(settings, client, RECOMMENDATION, rec, "submit_evidence", request, RecommendationView)
    kept = StoredFile(name, stored.sha256, stored.size_bytes, stored.storage_path, checked.content_type, stored.created)
    return EvidenceSubmitted(rec, kept, view)
