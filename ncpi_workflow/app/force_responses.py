"""What a force sends: its own progress claim, and files of evidence.

Evidence is checked before it is kept: the workflow's current state is queried and the same rule
its validator applies (`check_evidence`) is run first, so a submission the workflow would refuse
leaves nothing in the evidence store; then the file is kept by its SHA-256 and the Update sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ncpi_workflow.app.temporal_calls import RECOMMENDATION, parse_recommendation, query_state, send_update
from ncpi_workflow.errors import UserError
from ncpi_workflow.evidence_files import StoredFile, content_type, hash_file, keep_file, stored_path
from ncpi_workflow.lifecycle import EvidenceRequestInput, ProgressRequest, RecommendationView, check_evidence


async def submit_progress(settings, client, recommendation_id: str, claim: str, text: str, by: str) -> RecommendationView:
    """The force's own account (not started / in progress / implemented), apart from the judgement."""
    rec = parse_recommendation(recommendation_id)
    return await send_update(settings, client, RECOMMENDATION, rec, "submit_progress", ProgressRequest(claim=claim, text=text, by=by))


@dataclass(frozen=True)
class EvidenceSubmitted:
    recommendation_id: str
    stored: StoredFile
    view: RecommendationView


async def submit_evidence(
    settings,
    client,
    recommendation_id: str,
    file: Path,
    by: str,
    description: str | None = None,
    filename: str | None = None,
) -> EvidenceSubmitted:
    """Check, keep, record: a file of evidence for a recommendation. `filename` is the name to record
    (an upload's own name) when `file` is a temporary copy."""
    rec = parse_recommendation(recommendation_id)
    file = Path(file)
    name = filename or file.name
    limit = settings.evidence_max_bytes
    sha256, size = hash_file(file, limit)

    def request_for(sha: str, size_bytes: int, path: Path) -> EvidenceRequestInput:
        return EvidenceRequestInput(
            filename=name, sha256=sha, size_bytes=size_bytes, storage_path=str(Path(path).resolve()),
            content_type=content_type(name), by=by, description=description,
        )

    # Ask first, so that a submission the workflow would refuse leaves nothing in the store.
    current = await query_state(settings, client, RECOMMENDATION, rec)
    try:
        check_evidence(current.state, request_for(sha256, size, stored_path(settings.evidence_dir, sha256)), limit)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    stored = keep_file(file, settings.evidence_dir, limit)
    request = request_for(stored.sha256, stored.size_bytes, stored.storage_path)
    view = await send_update(settings, client, RECOMMENDATION, rec, "submit_evidence", request, RecommendationView)
    kept = StoredFile(name, stored.sha256, stored.size_bytes, stored.storage_path, content_type(name), stored.created)
    return EvidenceSubmitted(rec, kept, view)
