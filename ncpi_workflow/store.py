"""Writing and reading the inspectorate's records. Every write here is idempotent.

Activities (later) and the CLI call these functions; each takes an open AsyncSession and leaves the
commit to its caller, so that a publication is one transaction.
"""

from __future__ import annotations

import mimetypes
import os
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from ncpi_workflow.clocks import Timeline
from ncpi_workflow.errors import UserError
from ncpi_workflow.forces import ForceRef
from ncpi_workflow.models import (
    AreaForImprovement,
    AuditEvent,
    Contact,
    Deadline,
    DeadlineRevision,
    Evidence,
    Finding,
    Force,
    Inspection,
    Recommendation,
    RecommendationTheme,
    utcnow,
)
from ncpi_workflow.report import LoadedReport

SYSTEM_ACTOR = "system"


def _insert(session: AsyncSession, model: type):
    """An INSERT that can skip rows already present, in the dialect of the session's database."""
    dialect = session.bind.dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(model)


async def insert_if_absent(session: AsyncSession, model: type, conflict_on: list[str], **values: Any) -> bool:
    """Insert one row unless a row with the same unique key exists. True when this call inserted it."""
    statement = _insert(session, model).values(**values).on_conflict_do_nothing(index_elements=conflict_on)
    result = await session.execute(statement)
    return result.rowcount == 1


async def insert_or_find_id(session: AsyncSession, model: type, conflict_on: list[str], **values: Any) -> tuple[int, bool]:
    """Insert one row unless a row with the same unique key exists: (the row's id, whether this call inserted
    it). One statement when it inserts (INSERT ... RETURNING id); a second, to find the row, when it was there."""
    statement = (_insert(session, model).values(**values).on_conflict_do_nothing(index_elements=conflict_on)
                 .returning(model.id))
    inserted = (await session.execute(statement)).scalar_one_or_none()
    if inserted is not None:
        return inserted, True
    column = getattr(model, "__table__").c
    return await session.scalar(select(model.id).where(*(column[name] == values[name] for name in conflict_on))), False


async def append_audit(
    session: AsyncSession,
    *,
    actor: str,
    action: str,
    entity_type: str,
    entity_id: str,
    detail: dict[str, Any] | None = None,
    idempotency_key: str | None = None,
) -> bool:
    """Append to the audit trail; with an idempotency key, a retried call appends nothing more."""
    values = dict(
        actor=actor,
        action=action,
        entity_type=entity_type,
        entity_id=entity_id,
        detail=detail or {},
        occurred_at=utcnow(),
    )
    if idempotency_key is None:
        session.add(AuditEvent(**values))
        return True
    return await insert_if_absent(session, AuditEvent, ["idempotency_key"], idempotency_key=idempotency_key, **values)


async def load_reference_forces(session: AsyncSession, forces: dict[str, ForceRef]) -> int:
    """Make the forces and contacts tables match the reference data. Returns rows changed."""
    existing = {f.code: f for f in (await session.scalars(select(Force))).all()}
    contacts = {(c.force_code, c.role): c for c in (await session.scalars(select(Contact))).all()}
    changed = 0
    for ref in forces.values():
        force = existing.get(ref.code)
        if force is None:
            session.add(Force(code=ref.code, name=ref.name, region=ref.region))
            changed += 1
        elif (force.name, force.region) != (ref.name, ref.region):
            force.name, force.region = ref.name, ref.region
            changed += 1
        for role, person in ref.contacts.model_dump().items():
            contact = contacts.get((ref.code, role))
            if contact is None:
                session.add(Contact(force_code=ref.code, role=role, name=person["name"], email=person["email"]))
                changed += 1
            elif (contact.name, contact.email) != (person["name"], person["email"]):
                contact.name, contact.email = person["name"], person["email"]
                changed += 1
    await session.flush()
    return changed


@dataclass(frozen=True)
class InsertedReport:
    inspection_id: str
    created: bool


def recommendation_id(inspection_id: str, ref: str) -> str:
    return f"{inspection_id}-{ref}"


async def insert_report(
    session: AsyncSession, loaded: LoadedReport, timeline: Timeline, actor: str, workflow_id: str | None = None
) -> InsertedReport:
    """Write a report with its findings, recommendations and deadlines. A report already present
    (same force and publication date) is left as it is and `created` is False."""
    report = loaded.report
    if report.is_review:
        raise UserError(f"{loaded.path}: a post-inspection review's report (programme: PIR) is recorded against the "
                        f"inspection it follows ({report.follows}), not published as an inspection")
    inspection_id = report.inspection_id
    if await session.get(Inspection, inspection_id) is not None:
        return InsertedReport(inspection_id, created=False)
    inspection = Inspection(
        id=inspection_id,
        force_code=report.force,
        programme=report.programme,
        title=report.title,
        source_url=str(report.source_url),
        fieldwork_start=report.fieldwork.start,
        fieldwork_end=report.fieldwork.end,
        published_on=report.published,
        illustrative=report.illustrative,
        report_sha256=loaded.sha256,
        workflow_id=workflow_id,
    )
    findings = {f.ref: Finding(ref=f.ref, kind=f.kind.value, text=f.text) for f in report.findings}
    inspection.findings = list(findings.values())
    session.add(inspection)
    await session.flush()
    for rec in report.recommendations:
        session.add(
            Recommendation(
                id=recommendation_id(inspection_id, rec.ref),
                inspection_id=inspection_id,
                ref=rec.ref,
                text=rec.text,
                timeframe=rec.timeframe.value,
                finding_id=findings[rec.answers].id if rec.answers else None,
                illustrative=rec.illustrative or report.illustrative,
                restricted=rec.restricted,
            )
        )
    for area in report.areas_for_improvement:  # listed and exported, no clocks
        session.add(AreaForImprovement(inspection_id=inspection_id, ref=area.ref, text=area.text))
    await session.flush()
    for rec in report.recommendations:  # the public register's themes (config/themes.yaml)
        for theme in rec.themes:
            session.add(RecommendationTheme(recommendation_id=recommendation_id(inspection_id, rec.ref), theme=theme))
    for deadline in timeline.deadlines:
        session.add(
            Deadline(
                inspection_id=inspection_id,
                recommendation_id=recommendation_id(inspection_id, deadline.recommendation_ref)
                if deadline.recommendation_ref
                else None,
                key=deadline.key,
                kind=deadline.kind.value,
                cycle=1,
                original_due=deadline.due,
                current_due=deadline.due,
            )
        )
    await append_audit(
        session,
        actor=actor,
        action="report.published",
        entity_type="inspection",
        entity_id=inspection_id,
        detail={"sha256": loaded.sha256, "file": loaded.path.name, "recommendations": len(report.recommendations)},
        idempotency_key=f"{inspection_id}/published",
    )
    await session.flush()
    return InsertedReport(inspection_id, created=True)


async def revise_deadline(
    session: AsyncSession, deadline_id: int, new_due: date, reason: str, changed_by: str, idempotency_key: str | None = None
) -> Deadline:
    """Move a deadline, keeping its original date and recording who moved it and why."""
    if not reason.strip():
        raise UserError("a deadline change needs a reason")
    if not changed_by.strip():
        raise UserError("a deadline change needs the name of who made it")
    deadline = await session.get(Deadline, deadline_id)
    if deadline is None:
        raise UserError(f"no deadline with id {deadline_id}")
    if idempotency_key and await session.scalar(
        select(DeadlineRevision.id).where(DeadlineRevision.idempotency_key == idempotency_key)
    ):
        return deadline
    session.add(
        DeadlineRevision(
            deadline_id=deadline.id,
            previous_due=deadline.current_due,
            new_due=new_due,
            reason=reason.strip(),
            changed_by=changed_by.strip(),
            idempotency_key=idempotency_key,
        )
    )
    previous = deadline.current_due
    deadline.current_due = new_due
    await append_audit(
        session,
        actor=changed_by,
        action="deadline.revised",
        entity_type="deadline",
        entity_id=str(deadline.id),
        detail={"key": deadline.key, "from": previous.isoformat(), "to": new_due.isoformat(), "reason": reason},
        idempotency_key=idempotency_key and f"{idempotency_key}/audit",
    )
    await session.flush()
    return deadline


async def store_evidence(
    session: AsyncSession,
    *,
    recommendation_id: str,
    source: Path,
    evidence_dir: Path,
    max_bytes: int,
    submitted_by: str,
    description: str | None = None,
    evidence_request_id: int | None = None,
) -> tuple[Evidence, bool]:
    """Keep a file of evidence by its SHA-256. The same file for the same recommendation is one row.

    Returns the row and whether this call created it. Refuses files over `max_bytes` before reading them.
    """
    from ncpi_workflow.evidence_files import keep_file, open_evidence
    from ncpi_workflow.lifecycle import check_filename, check_name, check_text

    source = Path(source)
    try:
        check_filename(source.name)
        check_name(submitted_by, "who submits it (submitted_by)")
        check_text(description, "the description", required=False)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    # A regular file (never a link to one, a FIFO or a device), judged on the opened file itself.
    fd, _ = open_evidence(source, max_bytes)
    os.close(fd)
    if await session.get(Recommendation, recommendation_id) is None:
        raise UserError(f"no recommendation {recommendation_id}")
    kept = keep_file(source, Path(evidence_dir), max_bytes)
    sha256, size, stored = kept.sha256, kept.size_bytes, kept.storage_path
    existing = await session.scalar(
        select(Evidence).where(Evidence.recommendation_id == recommendation_id, Evidence.sha256 == sha256)
    )
    if existing is not None:
        return existing, False
    evidence = Evidence(
        recommendation_id=recommendation_id,
        evidence_request_id=evidence_request_id,
        filename=source.name,
        content_type=mimetypes.guess_type(source.name)[0] or "application/octet-stream",
        size_bytes=size,
        sha256=sha256,
        storage_path=str(stored),
        description=description,
        submitted_by=submitted_by,
    )
    session.add(evidence)
    await session.flush()
    await append_audit(
        session,
        actor=submitted_by,
        action="evidence.submitted",
        entity_type="recommendation",
        entity_id=recommendation_id,
        detail={"evidence_id": evidence.id, "filename": source.name, "sha256": sha256, "size_bytes": size},
    )
    return evidence, True


async def resolve_recipients(
    session: AsyncSession, inspection_id: str, roles: tuple[str, ...] | list[str], inspectorate: dict[str, str]
) -> dict[str, list[str]]:
    """Roles to addresses: the force's contacts from the database, the inspectorate's from settings.
    Raises LookupError naming a role nobody holds."""
    force_code = inspection_id.split("-", 1)[0]
    contacts = {
        c.role: c.email for c in (await session.scalars(select(Contact).where(Contact.force_code == force_code))).all()
    }
    resolved: dict[str, list[str]] = {"to": [], "roles": list(roles)}
    for role in roles:
        email = contacts.get(role) or inspectorate.get(role)
        if email is None:
            raise LookupError(f"no {role} address for force {force_code}")
        if email not in resolved["to"]:
            resolved["to"].append(email)
    return resolved


async def count_rows(session: AsyncSession, model: type) -> int:
    return await session.scalar(select(func.count()).select_from(model)) or 0
