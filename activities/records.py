"""Activities that write the inspectorate's records. Each is idempotent: a retried call finds
the row its first attempt wrote (by an idempotency key or a natural unique key) and adds nothing."""

from __future__ import annotations

from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import AsyncIterator

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity
from temporalio.exceptions import ApplicationError

from ncpi_workflow.app.read_models import projected_clock_values, refresh_recommendation_clocks, refresh_report_items
from ncpi_workflow.lifecycle import (
    NEXT_ACTION_MAX,
    RECORD_REJECTED,
    AuditRecord,
    DeadlineMetRecord,
    DeadlineOpenRecord,
    DeadlineRevisionRecord,
    DecisionRecord,
    EvidenceRecord,
    EvidenceRequestRecord,
    EventWrite,
    EventWritten,
    InspectionProjection,
    NotificationRequest,
    ProgressRecord,
    RecommendationProjection,
    RegisterRecord,
    ReopenRecord,
    RevisitRecord,
)
from ncpi_workflow.models import (
    Deadline,
    Decision,
    Evidence,
    EvidenceRequest,
    Inspection,
    Notification,
    ProgressUpdate,
    Recommendation,
    RegisterStatusEntry,
    Revisit,
)
from ncpi_workflow.models import utcnow
from ncpi_workflow.store import append_audit, insert_if_absent, insert_or_find_id, resolve_recipients, revise_deadline


def record_rejected(what: str, exc: Exception) -> ApplicationError:
    """A one-line, non-retryable failure for a value the database will never take (too long, out of
    range, against a constraint): the activity fails at once instead of being retried for ever, and the
    workflow (an Update fails with this reason; the workflow carries on) and the worker log say why."""
    reason = " ".join(str(getattr(exc, "orig", None) or exc).split())
    reason = reason if len(reason) <= 200 else reason[:197] + "..."
    return ApplicationError(f"{what}: the database refused the record: {reason}", type=RECORD_REJECTED, non_retryable=True)


def _unfixable(exc: DBAPIError) -> bool:
    """Whether the database refused the row for what it holds, so that the same row will be refused again:
    a data exception (SQLSTATE class 22: too long, out of range, invalid text) or an integrity constraint
    (class 23). asyncpg's errors come through SQLAlchemy as DBAPIError with their SQLSTATE."""
    if isinstance(exc, (DataError, IntegrityError)):
        return True
    sqlstate = getattr(exc.orig, "sqlstate", None) or getattr(getattr(exc.orig, "driver_exception", None), "sqlstate", None)
    return isinstance(sqlstate, str) and sqlstate[:2] in ("22", "23")


def _clip(text: str | None, limit: int) -> str | None:
    return text if text is None or len(text) <= limit else text[: limit - 3] + "..."


def _recorded(at: datetime, recorded_at: datetime | None) -> datetime:
    """When an action was recorded: the record's `recorded_at`, or (None, not back-dated) when it happened."""
    return recorded_at if recorded_at is not None else at


def _backdated(detail: dict, at: datetime, recorded_at: datetime | None) -> dict:
    """An audit event's detail, with when the action happened if it was back-dated (the event itself is
    dated when it was written)."""
    if recorded_at is not None and recorded_at != at:
        return {**detail, "happened_at": at.isoformat()}
    return detail


@dataclass(frozen=True)
class InspectorateAddresses:
    inspectors: str
    lead_hm_inspector: str

    @property
    def by_role(self) -> dict[str, str]:
        return {"inspectors": self.inspectors, "lead_hm_inspector": self.lead_hm_inspector}


async def _refresh_projected(session: AsyncSession, inspection_id: str, recommendation_id: str | None, key: str) -> None:
    """After a deadline row is opened, moved or met: the dashboard's projected column that reads it."""
    if recommendation_id is not None:
        await session.execute(refresh_recommendation_clocks(Recommendation.id == recommendation_id))
    else:
        await session.execute(refresh_report_items(Deadline.inspection_id == inspection_id, Deadline.key == key))


# ---------------------------------------------------------------- the writes, each inside a caller's transaction
# The single-purpose activities (named by old histories) and `record_event` (one transaction per event)
# run the same code.


async def write_notification(session: AsyncSession, request: NotificationRequest, by_role: dict[str, str],
                             recipients: dict[str, list[str]] | None = None) -> tuple[int, bool]:
    """Put a notification in the outbox once: (its id, whether this call inserted it). `recipients`: as the
    renderer resolved them just before the transaction (read again here when not given)."""
    if recipients is None:
        try:
            recipients = await resolve_recipients(session, request.inspection_id, request.recipients, by_role)
        except LookupError as exc:
            # Not retryable: reference data is missing, and retrying will not create it.
            raise ApplicationError(str(exc), non_retryable=True) from None
    notification_id, inserted = await insert_or_find_id(
        session,
        Notification,
        ["idempotency_key"],
        idempotency_key=request.idempotency_key,
        kind=request.kind,
        inspection_id=request.inspection_id,
        recommendation_id=request.recommendation_id,
        recipients=recipients,
        subject=request.subject,
        context=request.context,
        status="pending",
        attempts=0,
        scheduled_for=request.scheduled_for,
    )
    if inserted:
        await append_audit(
            session,
            actor="system",
            action=f"notification.{request.kind}",
            entity_type="recommendation" if request.recommendation_id else "inspection",
            entity_id=request.recommendation_id or request.inspection_id,
            detail={"key": request.idempotency_key, "to": recipients["to"], "subject": request.subject},
            idempotency_key=f"{request.idempotency_key}/audit",
        )
    return notification_id, inserted


async def write_recommendation_projection(session: AsyncSession, projection: RecommendationProjection) -> bool:
    result = await session.execute(
        update(Recommendation)
        .where(
            Recommendation.id == projection.recommendation_id,
            Recommendation.projection_version < projection.version,
        )
        .values(
            projection_version=projection.version,
            phase=projection.phase,
            cycle=projection.cycle,
            force_claim=projection.force_claim,
            outcome=projection.outcome,
            next_action=_clip(projection.next_action, NEXT_ACTION_MAX),
            next_action_at=projection.next_action_at,
            # Projections from histories before the register trail carry none: keep the column.
            **({"register_status": projection.register_status} if projection.register_status else {}),
            # The dashboard's projected clock, in the same statement, from the phase, claim and cycle written.
            **projected_clock_values(projection.phase, projection.force_claim, projection.cycle),
        )
    )
    if result.rowcount == 1:
        return True
    # A newer projection is there: the projected clock from the row as it stands (deadlines may have moved).
    await session.execute(refresh_recommendation_clocks(Recommendation.id == projection.recommendation_id))
    return False


async def write_first_projections(session: AsyncSession, projections: list[RecommendationProjection]) -> None:
    """A publication's first projections of its recommendations (EventWrite.first_projections): one UPDATE
    executed for them all (each row only if its version is newer, as `write_recommendation_projection`), then
    the dashboard's projected clocks of them all in one statement."""
    if not projections:
        return
    r = Recommendation.__table__
    statement = (
        update(r)
        .where(r.c.id == bindparam("p_id"), r.c.projection_version < bindparam("p_version"))
        .values(
            projection_version=bindparam("p_version"), phase=bindparam("p_phase"), cycle=bindparam("p_cycle"),
            force_claim=bindparam("p_force_claim"), outcome=bindparam("p_outcome"),
            next_action=bindparam("p_next_action"), next_action_at=bindparam("p_next_action_at"),
            register_status=func.coalesce(bindparam("p_register_status"), r.c.register_status),
        )
    )
    await session.execute(statement, [
        dict(p_id=p.recommendation_id, p_version=p.version, p_phase=p.phase, p_cycle=p.cycle, p_force_claim=p.force_claim,
             p_outcome=p.outcome, p_next_action=_clip(p.next_action, NEXT_ACTION_MAX), p_next_action_at=p.next_action_at,
             p_register_status=p.register_status)
        for p in projections
    ])
    await session.execute(refresh_recommendation_clocks(Recommendation.id.in_([p.recommendation_id for p in projections])))


async def write_inspection_projection(session: AsyncSession, projection: InspectionProjection) -> bool:
    result = await session.execute(
        update(Inspection)
        .where(Inspection.id == projection.inspection_id, Inspection.projection_version < projection.version)
        .values(
            projection_version=projection.version,
            phase=projection.phase,
            cycle=projection.cycle,
            next_action=_clip(projection.next_action, NEXT_ACTION_MAX),
            next_action_at=projection.next_action_at,
        )
    )
    # Which report-level items are awaited follows the inspection's phase and cycle.
    await session.execute(refresh_report_items(Deadline.inspection_id == projection.inspection_id))
    return result.rowcount == 1


async def write_audit(session: AsyncSession, record: AuditRecord) -> None:
    await append_audit(
        session,
        actor=record.actor,
        action=record.action,
        entity_type=record.entity_type,
        entity_id=record.entity_id,
        detail=record.detail,
        idempotency_key=record.idempotency_key,
    )


async def write_progress(session: AsyncSession, record: ProgressRecord) -> None:
    if await insert_if_absent(
        session,
        ProgressUpdate,
        ["idempotency_key"],
        idempotency_key=record.idempotency_key,
        recommendation_id=record.recommendation_id,
        claim=record.claim,
        text=record.text,
        submitted_by=record.by,
        submitted_at=record.at,
        recorded_at=_recorded(record.at, record.recorded_at),
    ):
        await append_audit(
            session,
            actor=record.by,
            action="progress.submitted",
            entity_type="recommendation",
            entity_id=record.recommendation_id,
            detail=_backdated({"claim": record.claim}, record.at, record.recorded_at),
            idempotency_key=f"{record.idempotency_key}/audit",
        )


async def write_evidence_request(session: AsyncSession, record: EvidenceRequestRecord) -> int:
    request_id, _ = await insert_or_find_id(
        session,
        EvidenceRequest,
        ["idempotency_key"],
        idempotency_key=record.idempotency_key,
        recommendation_id=record.recommendation_id,
        cycle=record.cycle,
        due=record.due,
        what=record.what,
    )
    return request_id


async def write_evidence(session: AsyncSession, record: EvidenceRecord) -> int:
    item = record.item
    # Records from before back-dating carry no `at`: received when recorded, as the column's default did.
    at = getattr(record, "at", None) or utcnow()
    recorded_at = getattr(record, "recorded_at", None)
    # The cycle's latest evidence request, read by the INSERT itself.
    request_id = (
        select(EvidenceRequest.id)
        .where(EvidenceRequest.recommendation_id == record.recommendation_id, EvidenceRequest.cycle == record.cycle)
        .order_by(EvidenceRequest.id.desc())
        .limit(1)
        .scalar_subquery()
    )
    evidence_id, inserted = await insert_or_find_id(
        session,
        Evidence,
        ["recommendation_id", "sha256"],
        recommendation_id=record.recommendation_id,
        evidence_request_id=request_id,
        filename=item.filename,
        content_type=item.content_type,
        size_bytes=item.size_bytes,
        sha256=item.sha256,
        storage_path=item.storage_path,
        description=item.description,
        submitted_by=item.by,
        submitted_at=at,
        recorded_at=_recorded(at, recorded_at),
    )
    if inserted:
        await append_audit(
            session,
            actor=item.by,
            action="evidence.submitted",
            entity_type="recommendation",
            entity_id=record.recommendation_id,
            detail=_backdated({"filename": item.filename, "sha256": item.sha256, "size_bytes": item.size_bytes},
                              at, recorded_at),
            idempotency_key=f"{record.idempotency_key}/audit",
        )
    return evidence_id


async def write_decision(session: AsyncSession, record: DecisionRecord) -> None:
    if await insert_if_absent(
        session,
        Decision,
        ["recommendation_id", "cycle"],
        recommendation_id=record.recommendation_id,
        cycle=record.cycle,
        outcome=record.outcome,
        rationale=record.rationale,
        decided_by=record.by,
        decided_at=record.at,
        recorded_at=_recorded(record.at, record.recorded_at),
    ):
        await append_audit(
            session,
            actor=record.by,
            action="decision.recorded",
            entity_type="recommendation",
            entity_id=record.recommendation_id,
            detail=_backdated({"cycle": record.cycle, "outcome": record.outcome, "rationale": record.rationale},
                              record.at, record.recorded_at),
            idempotency_key=f"{record.idempotency_key}/audit",
        )


async def write_reopen(session: AsyncSession, record: ReopenRecord) -> None:
    await session.execute(
        update(Decision)
        .where(Decision.recommendation_id == record.recommendation_id, Decision.cycle == record.cycle)
        .values(reopened_at=record.at, reopened_by=record.by, reopen_reason=record.reason)
    )
    await append_audit(
        session,
        actor=record.by,
        action="recommendation.reopened",
        entity_type="recommendation",
        entity_id=record.recommendation_id,
        detail={"closed_cycle": record.cycle, "reason": record.reason},
        idempotency_key=record.idempotency_key,
    )


async def write_register_status(session: AsyncSession, record: RegisterRecord) -> None:
    if await insert_if_absent(
        session,
        RegisterStatusEntry,
        ["idempotency_key"],
        idempotency_key=record.idempotency_key,
        recommendation_id=record.recommendation_id,
        cycle=record.cycle,
        status=record.status,
        comment=record.comment,
        set_by=record.by,
        set_at=record.at,
        recorded_at=_recorded(record.at, record.recorded_at),
    ):
        await append_audit(
            session,
            actor=record.by,
            action="register.status_set",
            entity_type="recommendation",
            entity_id=record.recommendation_id,
            detail=_backdated({"cycle": record.cycle, "status": record.status, "comment": record.comment},
                              record.at, record.recorded_at),
            idempotency_key=f"{record.idempotency_key}/audit",
        )


async def write_open_deadline(session: AsyncSession, record: DeadlineOpenRecord, refresh: bool = True) -> None:
    """`refresh`: the projected column that reads the row; False when the event's projection refreshes it."""
    await insert_if_absent(
        session,
        Deadline,
        ["inspection_id", "key", "cycle"],
        inspection_id=record.inspection_id,
        recommendation_id=record.recommendation_id,
        key=record.key,
        kind=record.kind,
        cycle=record.cycle,
        original_due=record.due,
        current_due=record.due,
    )
    if refresh:
        await _refresh_projected(session, record.inspection_id, record.recommendation_id, record.key)


async def write_deadline_revision(session: AsyncSession, record: DeadlineRevisionRecord, refresh: bool = True) -> None:
    deadline_id, _ = await insert_or_find_id(
        session,
        Deadline,
        ["inspection_id", "key", "cycle"],
        inspection_id=record.inspection_id,
        recommendation_id=record.recommendation_id,
        key=record.key,
        kind=record.kind,
        cycle=record.cycle,
        original_due=record.original_due,
        current_due=record.previous_due,
    )
    await revise_deadline(session, deadline_id, record.new_due, record.reason, record.by, record.idempotency_key)
    if refresh:
        await _refresh_projected(session, record.inspection_id, record.recommendation_id, record.key)


async def write_deadline_met(session: AsyncSession, record: DeadlineMetRecord, refresh: bool = True) -> None:
    await session.execute(
        update(Deadline)
        .where(
            Deadline.inspection_id == record.inspection_id,
            Deadline.key == record.key,
            Deadline.cycle == record.cycle,
            Deadline.met_at.is_(None),
        )
        .values(met_at=record.at, met_recorded_at=_recorded(record.at, record.recorded_at))
    )
    if refresh:
        await _refresh_projected(session, record.inspection_id, None, record.key)


async def write_revisit(session: AsyncSession, record: RevisitRecord) -> None:
    if await insert_if_absent(
        session,
        Revisit,
        ["inspection_id", "cycle"],
        inspection_id=record.inspection_id,
        cycle=record.cycle,
        trigger=record.trigger,
        triggered_by=record.by,
        opened_at=record.at,
        recorded_at=_recorded(record.at, record.recorded_at),
    ):
        await append_audit(
            session,
            actor=record.by,
            action="revisit.opened",
            entity_type="inspection",
            entity_id=record.inspection_id,
            detail=_backdated({"cycle": record.cycle, "trigger": record.trigger}, record.at, record.recorded_at),
            idempotency_key=record.idempotency_key,
        )


def _refreshes(write: EventWrite, record) -> bool:
    """Whether a deadline row the event writes needs its projected column refreshed on its own: not when the
    event's projection refreshes the same (a recommendation's clock; an inspection's report-level items),
    which it does after every deadline row of the event is written."""
    recommendation_id = getattr(record, "recommendation_id", None)
    if recommendation_id is not None:
        p = write.recommendation_projection
        return p is None or p.recommendation_id != recommendation_id
    p = write.inspection_projection
    return p is None or p.inspection_id != record.inspection_id


class RecordActivities:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], addresses: InspectorateAddresses, renderer=None):
        """`renderer` (activities.rendering.OutboxRenderer, optional): renders a notification's message when
        it is recorded (`prepare` before the write transaction, `store` inside it for each new row)."""
        self.sessions = sessions
        self.addresses = addresses
        self.renderer = renderer

    @asynccontextmanager
    async def _writing(self, part: list[str] | None = None) -> AsyncIterator[AsyncSession]:
        """One transaction; a value the database refuses fails the activity for good (see `record_rejected`).
        `part`, when given, names what was being written when it failed (record_event's parts are named
        as the single-purpose activity that writes the same, e.g. "record_progress")."""
        try:
            async with self.sessions.begin() as session:
                yield session
        except DBAPIError as exc:
            if not _unfixable(exc):
                raise  # the database away, a deadlock, a serialisation failure: retried
            failure = record_rejected(part[0] if part else activity.info().activity_type, exc)
            activity.logger.error("%s (not retried)", failure.message)
            raise failure from None

    async def _prepare(self, requests: list[NotificationRequest], after: EventWrite | None = None) -> list:
        """The renderer's messages for these notifications, read and rendered outside the write transaction
        (for an event's, from the rows as the event leaves them: `after`)."""
        if self.renderer is None or not requests:
            return [None] * len(requests)
        if after is not None:
            return await self.renderer.prepare(list(requests), after=after)
        return await self.renderer.prepare(list(requests))

    async def _notification(self, session: AsyncSession, request: NotificationRequest, prepared) -> int:
        # A rendering of the event's own rows comes with the recipients it was rendered for: not read again.
        recipients = prepared.recipients if getattr(prepared, "after_event", False) else None
        notification_id, inserted = await write_notification(session, request, self.addresses.by_role, recipients)
        if inserted and self.renderer is not None:
            await self.renderer.store(session, notification_id, prepared)
        return notification_id

    def all(self) -> list:
        return [
            self.read_clock,
            self.record_event,
            self.record_notification,
            self.project_recommendation,
            self.project_inspection,
            self.audit,
            self.record_progress,
            self.record_evidence_request,
            self.record_evidence,
            self.record_decision,
            self.record_reopen,
            self.record_register_status,
            self.record_deadline_revision,
            self.open_deadline,
            self.mark_deadline_met,
            self.record_revisit,
        ]

    @activity.defn
    async def read_clock(self, now: datetime) -> datetime:
        """A workflow's clock, handed back: as a local activity its result is kept in history, so every
        replay of the step that asked reads the same instant (workflows.common.step_now)."""
        return now

    @activity.defn
    async def record_event(self, write: EventWrite) -> EventWritten:
        """Everything one event writes, in ONE transaction: its records, its notifications (ids returned in
        order, for the workflow to deliver) and its projection. Idempotent as each part is; a part the
        database refuses for good fails the whole event (nothing of it is written) at once, naming the part."""
        prepared = await self._prepare(write.notifications, after=write)
        written = EventWritten()
        part = ["record_event"]
        async with self._writing(part) as session:
            if write.reopen is not None:
                part[0] = "record_reopen"
                await write_reopen(session, write.reopen)
            if write.decision is not None:
                part[0] = "record_decision"
                await write_decision(session, write.decision)
            if write.progress is not None:
                part[0] = "record_progress"
                await write_progress(session, write.progress)
            if write.evidence_request is not None:
                part[0] = "record_evidence_request"
                written.evidence_request_id = await write_evidence_request(session, write.evidence_request)
            if write.evidence is not None:
                part[0] = "record_evidence"
                written.evidence_id = await write_evidence(session, write.evidence)
            if write.deadline_revision is not None:
                part[0] = "record_deadline_revision"
                await write_deadline_revision(session, write.deadline_revision, _refreshes(write, write.deadline_revision))
            for record in write.deadlines_opened:
                part[0] = "open_deadline"
                await write_open_deadline(session, record, _refreshes(write, record))
            for record in write.deadlines_met:
                part[0] = "mark_deadline_met"
                await write_deadline_met(session, record, _refreshes(write, record))
            for record in write.register:
                part[0] = "record_register_status"
                await write_register_status(session, record)
            if write.revisit is not None:
                part[0] = "record_revisit"
                await write_revisit(session, write.revisit)
            for record in write.audits:
                part[0] = "audit"
                await write_audit(session, record)
            if write.recommendation_projection is not None:
                part[0] = "project_recommendation"
                written.projected = await write_recommendation_projection(session, write.recommendation_projection)
            if write.inspection_projection is not None:
                part[0] = "project_inspection"
                written.projected = await write_inspection_projection(session, write.inspection_projection)
            if write.first_projections:
                part[0] = "project_recommendation"
                await write_first_projections(session, write.first_projections)
            # Last: the renderer's `store` compares the message's context with the rows as the event leaves
            # them (the projection's phase and outcome, the deadlines), keeping its rendering only if unchanged.
            for request, item in zip(write.notifications, prepared):
                part[0] = "record_notification"
                written.notification_ids.append(await self._notification(session, request, item))
            part[0] = "record_event"
        return written

    @activity.defn
    async def record_notification(self, request: NotificationRequest) -> int:
        """Put a notification in the outbox once; delivery is the email worker's job."""
        (prepared,) = await self._prepare([request])
        async with self._writing() as session:
            return await self._notification(session, request, prepared)

    @activity.defn
    async def project_recommendation(self, projection: RecommendationProjection) -> bool:
        """Refresh the status projection; an older projection never overwrites a newer one. True when
        this one was written (False: a newer one is there already)."""
        async with self._writing() as session:
            return await write_recommendation_projection(session, projection)

    @activity.defn
    async def project_inspection(self, projection: InspectionProjection) -> bool:
        """As `project_recommendation`, for the inspection's phase and next action."""
        async with self._writing() as session:
            return await write_inspection_projection(session, projection)

    @activity.defn
    async def audit(self, record: AuditRecord) -> None:
        async with self._writing() as session:
            await write_audit(session, record)

    @activity.defn
    async def record_progress(self, record: ProgressRecord) -> None:
        async with self._writing() as session:
            await write_progress(session, record)

    @activity.defn
    async def record_evidence_request(self, record: EvidenceRequestRecord) -> int:
        async with self._writing() as session:
            return await write_evidence_request(session, record)

    @activity.defn
    async def record_evidence(self, record: EvidenceRecord) -> int:
        async with self._writing() as session:
            return await write_evidence(session, record)

    @activity.defn
    async def record_decision(self, record: DecisionRecord) -> None:
        async with self._writing() as session:
            await write_decision(session, record)

    @activity.defn
    async def record_reopen(self, record: ReopenRecord) -> None:
        async with self._writing() as session:
            await write_reopen(session, record)

    @activity.defn
    async def record_register_status(self, record: RegisterRecord) -> None:
        """One step of the public register's trail, set by an inspector (or by their closing decision)."""
        async with self._writing() as session:
            await write_register_status(session, record)

    @activity.defn
    async def open_deadline(self, record: DeadlineOpenRecord) -> None:
        async with self._writing() as session:
            await write_open_deadline(session, record)

    @activity.defn
    async def record_deadline_revision(self, record: DeadlineRevisionRecord) -> None:
        async with self._writing() as session:
            await write_deadline_revision(session, record)

    @activity.defn
    async def mark_deadline_met(self, record: DeadlineMetRecord) -> None:
        async with self._writing() as session:
            await write_deadline_met(session, record)

    @activity.defn
    async def record_revisit(self, record: RevisitRecord) -> None:
        async with self._writing() as session:
            await write_revisit(session, record)
