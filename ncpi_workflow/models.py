"""The inspectorate's records (SQLAlchemy 2). Temporal owns process state; these tables own records.

Every table that an activity writes carries a natural or idempotency key with a unique constraint,
so a retried activity finds its row instead of writing a second one. `audit_events` is append-only:
the migration installs triggers that refuse UPDATE and DELETE on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

from datetime import date, datetime, timezone
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy import text as sql_text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from ncpi_workflow.clocks import DeadlineKind, Timeframe
from ncpi_workflow.lifecycle import ForceClaim, Outcome, Phase, RegisterStatus
from ncpi_workflow.report import FindingKind


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class ContactRole(StrEnum):
    LIAISON_OFFICER = "liaison_officer"
    CHIEF_OFFICER = "chief_officer"
    PCC = "pcc"


class NotificationStatus(StrEnum):
    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"


def _check(column: str, enum: type[StrEnum], nullable: bool = False) -> CheckConstraint:
    # Enums are stored as plain strings with a CHECK: adding a value is a small migration on every database.
    values = ", ".join(f"'{v.value}'" for v in enum)
    condition = f"{column} IN ({values})"
    return CheckConstraint(f"{column} IS NULL OR {condition}" if nullable else condition, name=f"{column}_valid")


NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: DateTime(timezone=True), dict[str, Any]: JSON}


class Force(Base):
    __tablename__ = "forces"
    code: Mapped[str] = mapped_column(String(3), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    region: Mapped[str] = mapped_column(String(100))
    contacts: Mapped[list["Contact"]] = relationship(back_populates="force", cascade="all, delete-orphan")


class Contact(Base):
    __tablename__ = "contacts"
    __table_args__ = (UniqueConstraint("force_code", "role"), _check("role", ContactRole))
    id: Mapped[int] = mapped_column(primary_key=True)
    force_code: Mapped[str] = mapped_column(ForeignKey("forces.code"))
    role: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(200))
    email: Mapped[str] = mapped_column(String(320))
    force: Mapped[Force] = relationship(back_populates="contacts")


class Inspection(Base):
    """A published report: one force, one programme, one publication date."""

    __tablename__ = "inspections"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # e.g. CUM-2017-01-26
    force_code: Mapped[str] = mapped_column(ForeignKey("forces.code"), index=True)
    programme: Mapped[str] = mapped_column(String(16))
    title: Mapped[str] = mapped_column(Text)
    source_url: Mapped[str] = mapped_column(Text)
    fieldwork_start: Mapped[date] = mapped_column(Date)
    fieldwork_end: Mapped[date] = mapped_column(Date)
    published_on: Mapped[date] = mapped_column(Date, index=True)
    illustrative: Mapped[bool] = mapped_column(Boolean, default=False)
    report_sha256: Mapped[str] = mapped_column(String(64))
    workflow_id: Mapped[str | None] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Projection of the inspection workflow's state, refreshed by activities:
    phase: Mapped[str] = mapped_column(String(32), default="following_up", index=True)
    cycle: Mapped[int] = mapped_column(Integer, default=1)
    next_action: Mapped[str | None] = mapped_column(String(200))
    next_action_at: Mapped[datetime | None]
    projection_version: Mapped[int] = mapped_column(Integer, default=0)
    __table_args__ = (
        # Follow-ups whose workflow has not projected yet (the dashboard reads their deadlines directly).
        Index("ix_inspections_unprojected", "force_code",
              sqlite_where=sql_text("projection_version = 0"), postgresql_where=sql_text("projection_version = 0")),
    )
    findings: Mapped[list["Finding"]] = relationship(back_populates="inspection", cascade="all, delete-orphan")
    recommendations: Mapped[list["Recommendation"]] = relationship(
        back_populates="inspection", cascade="all, delete-orphan", order_by="Recommendation.id"
    )
    deadlines: Mapped[list["Deadline"]] = relationship(back_populates="inspection", cascade="all, delete-orphan")


class Finding(Base):
    __tablename__ = "findings"
    __table_args__ = (UniqueConstraint("inspection_id", "ref"), _check("kind", FindingKind))
    id: Mapped[int] = mapped_column(primary_key=True)
    inspection_id: Mapped[str] = mapped_column(ForeignKey("inspections.id"))
    ref: Mapped[str] = mapped_column(String(8))
    kind: Mapped[str] = mapped_column(String(32))
    text: Mapped[str] = mapped_column(Text)
    inspection: Mapped[Inspection] = relationship(back_populates="findings")


class Recommendation(Base):
    """A recommendation, with a projection of its workflow's status for fast listing."""

    __tablename__ = "recommendations"
    __table_args__ = (
        UniqueConstraint("inspection_id", "ref"),
        _check("timeframe", Timeframe),
        _check("phase", Phase),
        _check("force_claim", ForceClaim, nullable=True),
        _check("outcome", Outcome, nullable=True),
        _check("register_status", RegisterStatus),
        # The all-forces dashboard's aggregate (ncpi_workflow/app/read_models.py): open ones only.
        Index("ix_recommendations_open_clock", "force_code", "clock_due", "phase",
              sqlite_where=sql_text("phase != 'closed'"), postgresql_where=sql_text("phase != 'closed'")),
        Index("ix_recommendations_unprojected", "inspection_id",
              sqlite_where=sql_text("force_code IS NULL"), postgresql_where=sql_text("force_code IS NULL")),
    )
    id: Mapped[str] = mapped_column(String(48), primary_key=True)  # e.g. CUM-2017-01-26-R1
    inspection_id: Mapped[str] = mapped_column(ForeignKey("inspections.id"), index=True)
    ref: Mapped[str] = mapped_column(String(8))
    text: Mapped[str] = mapped_column(Text)
    timeframe: Mapped[str] = mapped_column(String(32))
    finding_id: Mapped[int | None] = mapped_column(ForeignKey("findings.id"))
    illustrative: Mapped[bool] = mapped_column(Boolean, default=False)
    # Projection of the workflow's state, refreshed by activities:
    phase: Mapped[str] = mapped_column(String(32), default=Phase.PUBLISHED, index=True)
    force_claim: Mapped[str | None] = mapped_column(String(32))
    outcome: Mapped[str | None] = mapped_column(String(32))
    register_status: Mapped[str] = mapped_column(
        String(32), default=RegisterStatus.AWAITING_REVIEW, server_default=RegisterStatus.AWAITING_REVIEW.value
    )
    cycle: Mapped[int] = mapped_column(Integer, default=1)
    next_action: Mapped[str | None] = mapped_column(String(200))
    next_action_at: Mapped[datetime | None] = mapped_column(index=True)
    projection_version: Mapped[int] = mapped_column(Integer, default=0)
    clock_due: Mapped[date | None] = mapped_column(Date)
    """Projected: the due date of the clock that runs now (its own deadline, or its evidence deadline),
    NULL when none runs; kept by the projection and deadline writes (read_models.refresh_recommendation_clocks)."""
    force_code: Mapped[str | None] = mapped_column(String(3))
    """Projected with `clock_due`: its inspection's force (NULL until the first refresh)."""
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    inspection: Mapped[Inspection] = relationship(back_populates="recommendations")
    restricted: Mapped[bool] = mapped_column(Boolean, default=False, server_default=sql_text("false"))
    """From the report file: never on the public register (ncpi_workflow/register.py)."""


class RecommendationTheme(Base):
    """A theme (config/themes.yaml) a recommendation carries, from the report file: the register's filter."""

    __tablename__ = "recommendation_themes"
    __table_args__ = (UniqueConstraint("recommendation_id", "theme"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    recommendation_id: Mapped[str] = mapped_column(ForeignKey("recommendations.id"), index=True)
    theme: Mapped[str] = mapped_column(String(40), index=True)


class Deadline(Base):
    """A clock: its original date is kept for ever; every change is a DeadlineRevision."""

    __tablename__ = "deadlines"
    __table_args__ = (
        UniqueConstraint("inspection_id", "key", "cycle"),
        _check("kind", DeadlineKind),
        Index("ix_deadlines_waiting", "force_code", "waiting_due", "key", "inspection_id",
              sqlite_where=sql_text("waiting_due IS NOT NULL"), postgresql_where=sql_text("waiting_due IS NOT NULL")),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    inspection_id: Mapped[str] = mapped_column(ForeignKey("inspections.id"), index=True)
    recommendation_id: Mapped[str | None] = mapped_column(ForeignKey("recommendations.id"), index=True)
    key: Mapped[str] = mapped_column(String(64))  # e.g. action_plan, recommendation:R1
    kind: Mapped[str] = mapped_column(String(32))
    cycle: Mapped[int] = mapped_column(Integer, default=1)
    original_due: Mapped[date] = mapped_column(Date)
    current_due: Mapped[date] = mapped_column(Date)
    met_at: Mapped[datetime | None]
    met_recorded_at: Mapped[datetime | None]
    """When the meeting was recorded (`met_at` is when it happened: a back-dated receipt); NULL: the same."""
    waiting_due: Mapped[date | None] = mapped_column(Date)
    """Projected, report-level items only: `current_due` while the item is still awaited (not received,
    or a revisit limit whose revisit is not open), NULL otherwise (read_models.refresh_report_items)."""
    force_code: Mapped[str | None] = mapped_column(String(3))
    """Projected with `waiting_due` (report-level rows): its inspection's force (NULL until the first refresh)."""
    inspection: Mapped[Inspection] = relationship(back_populates="deadlines")
    revisions: Mapped[list["DeadlineRevision"]] = relationship(
        back_populates="deadline", cascade="all, delete-orphan", order_by="DeadlineRevision.id"
    )


class DeadlineRevision(Base):
    __tablename__ = "deadline_revisions"
    __table_args__ = (CheckConstraint("length(reason) > 0", name="reason_given"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    deadline_id: Mapped[int] = mapped_column(ForeignKey("deadlines.id"), index=True)
    previous_due: Mapped[date] = mapped_column(Date)
    new_due: Mapped[date] = mapped_column(Date)
    reason: Mapped[str] = mapped_column(Text)
    changed_by: Mapped[str] = mapped_column(String(200))
    changed_at: Mapped[datetime] = mapped_column(default=utcnow)
    idempotency_key: Mapped[str | None] = mapped_column(String(300), unique=True)
    deadline: Mapped[Deadline] = relationship(back_populates="revisions")


class ProgressUpdate(Base):
    """The force's own account of its progress on a recommendation."""

    __tablename__ = "progress_updates"
    __table_args__ = (_check("claim", ForceClaim),)
    id: Mapped[int] = mapped_column(primary_key=True)
    recommendation_id: Mapped[str] = mapped_column(ForeignKey("recommendations.id"), index=True)
    claim: Mapped[str] = mapped_column(String(32))
    text: Mapped[str] = mapped_column(Text)
    submitted_by: Mapped[str] = mapped_column(String(200))
    submitted_at: Mapped[datetime] = mapped_column(default=utcnow)
    """When it happened (`--on`: the day given); `recorded_at` is when it was recorded (NULL: the same)."""
    recorded_at: Mapped[datetime | None]
    idempotency_key: Mapped[str | None] = mapped_column(String(300), unique=True)


class EvidenceRequest(Base):
    __tablename__ = "evidence_requests"
    id: Mapped[int] = mapped_column(primary_key=True)
    recommendation_id: Mapped[str] = mapped_column(ForeignKey("recommendations.id"), index=True)
    cycle: Mapped[int] = mapped_column(Integer, default=1)
    requested_at: Mapped[datetime] = mapped_column(default=utcnow)
    due: Mapped[date] = mapped_column(Date)
    what: Mapped[str] = mapped_column(Text)
    idempotency_key: Mapped[str] = mapped_column(String(300), unique=True)


class Evidence(Base):
    """A file the force supplied, stored by content hash; the same file twice is one row."""

    __tablename__ = "evidence"
    __table_args__ = (
        UniqueConstraint("recommendation_id", "sha256"),
        CheckConstraint("size_bytes >= 0", name="size_not_negative"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    recommendation_id: Mapped[str] = mapped_column(ForeignKey("recommendations.id"), index=True)
    evidence_request_id: Mapped[int | None] = mapped_column(ForeignKey("evidence_requests.id"))
    filename: Mapped[str] = mapped_column(String(255))
    content_type: Mapped[str] = mapped_column(String(100))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    storage_path: Mapped[str] = mapped_column(Text)
    description: Mapped[str | None] = mapped_column(Text)
    submitted_by: Mapped[str] = mapped_column(String(200))
    submitted_at: Mapped[datetime] = mapped_column(default=utcnow)
    """When it was received (`--on`: the day given); `recorded_at` is when it was recorded (NULL: the same)."""
    recorded_at: Mapped[datetime | None]


class Revisit(Base):
    """The post-inspection review of a report, opened by an inspector or by the revisit-by clock."""

    __tablename__ = "revisits"
    __table_args__ = (
        UniqueConstraint("inspection_id", "cycle"),
        CheckConstraint("trigger IN ('inspector', 'automatic')", name="trigger_valid"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    inspection_id: Mapped[str] = mapped_column(ForeignKey("inspections.id"), index=True)
    cycle: Mapped[int] = mapped_column(Integer, default=1)
    trigger: Mapped[str] = mapped_column(String(16))
    triggered_by: Mapped[str] = mapped_column(String(200))
    opened_at: Mapped[datetime] = mapped_column(default=utcnow)
    """When it opened (a back-dated revisit: its fieldwork start); `recorded_at` is when it was recorded (NULL: the same)."""
    recorded_at: Mapped[datetime | None]
    closed_at: Mapped[datetime | None]


class Decision(Base):
    """The inspectorate's judgement on a recommendation in one cycle: who, when, why."""

    __tablename__ = "decisions"
    __table_args__ = (
        UniqueConstraint("recommendation_id", "cycle"),
        _check("outcome", Outcome),
        CheckConstraint("length(rationale) > 0", name="rationale_given"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    recommendation_id: Mapped[str] = mapped_column(ForeignKey("recommendations.id"), index=True)
    cycle: Mapped[int] = mapped_column(Integer)
    outcome: Mapped[str] = mapped_column(String(32))
    rationale: Mapped[str] = mapped_column(Text)
    decided_by: Mapped[str] = mapped_column(String(200))
    decided_at: Mapped[datetime] = mapped_column(default=utcnow)
    """When it was decided (`--on`: the day given); `recorded_at` is when it was recorded (NULL: the same)."""
    recorded_at: Mapped[datetime | None]
    reopened_at: Mapped[datetime | None]
    reopened_by: Mapped[str | None] = mapped_column(String(200))
    reopen_reason: Mapped[str | None] = mapped_column(Text)


class RegisterStatusEntry(Base):
    """One dated, attributed step of the public register's trail: the inspectorate's judgement."""

    __tablename__ = "register_entries"
    __table_args__ = (_check("status", RegisterStatus), CheckConstraint("length(comment) > 0", name="comment_given"))
    id: Mapped[int] = mapped_column(primary_key=True)
    idempotency_key: Mapped[str] = mapped_column(String(300), unique=True)
    recommendation_id: Mapped[str] = mapped_column(ForeignKey("recommendations.id"), index=True)
    cycle: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(32))
    comment: Mapped[str] = mapped_column(Text)
    set_by: Mapped[str] = mapped_column(String(200))
    set_at: Mapped[datetime]
    """When it was judged (the policy calendar; `--on`: the day given); `recorded_at` is when it was recorded."""
    recorded_at: Mapped[datetime] = mapped_column(default=utcnow)


class Notification(Base):
    """The email outbox. The idempotency key comes from the workflow and the event, never the run."""

    __tablename__ = "notifications"
    __table_args__ = (_check("status", NotificationStatus),)
    id: Mapped[int] = mapped_column(primary_key=True)
    idempotency_key: Mapped[str] = mapped_column(String(300), unique=True)
    kind: Mapped[str] = mapped_column(String(64))
    inspection_id: Mapped[str | None] = mapped_column(ForeignKey("inspections.id"), index=True)
    recommendation_id: Mapped[str | None] = mapped_column(ForeignKey("recommendations.id"), index=True)
    recipients: Mapped[dict[str, Any]] = mapped_column(JSON)
    subject: Mapped[str] = mapped_column(Text)
    context: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(16), default=NotificationStatus.PENDING, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    message_id: Mapped[str | None] = mapped_column(String(300))
    scheduled_for: Mapped[datetime | None] = mapped_column(index=True)
    """When the policy calendar says it is due (differs from created_at under a time scale)."""
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None]
    rendered: Mapped[bytes | None] = mapped_column(LargeBinary)
    """The RFC 5322 message exactly as first sent (rendered once, stored before the first attempt):
    every retry and every resend sends these bytes, under the same Message-ID."""
    last_attempt_at: Mapped[datetime | None]
    lease_owner: Mapped[str | None] = mapped_column(String(300))
    """The delivery (workflow ID / activity ID) that may send it until `lease_until`: two deliverers
    of one row (its workflow's and the reconciler's) never send it at the same time."""
    lease_until: Mapped[datetime | None]


class AccessLink(Base):
    """A link in an email that lets a force act without an account (ncpi_workflow/access_links.py):
    scoped to one force and exactly the items its email concerns, expiring, revocable.

    The raw token is never stored: it is derived from the secret key, the row's id and its salt when
    the email is sent, and only its SHA-256 is kept here, so the database alone gives no token."""

    __tablename__ = "access_links"
    __table_args__ = (CheckConstraint("purpose IN ('portal', 'reply')", name="purpose_valid"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    purpose: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    """SHA-256 (hex) of the raw token."""
    salt: Mapped[str] = mapped_column(String(32))
    """16 random bytes (hex): the link's share of randomness in its token."""
    force_code: Mapped[str] = mapped_column(ForeignKey("forces.code"), index=True)
    inspection_id: Mapped[str] = mapped_column(ForeignKey("inspections.id"), index=True)
    recommendation_ids: Mapped[list[str]] = mapped_column(JSON, default=list)
    items: Mapped[list[str]] = mapped_column(JSON, default=list)
    """Report-level items it covers: action_plan, pcc_response, immediate_update."""
    notification_id: Mapped[int | None] = mapped_column(ForeignKey("notifications.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]
    revoked_by: Mapped[str | None] = mapped_column(String(200))
    last_used_at: Mapped[datetime | None]


class RelayStatus(Base):
    """What each worker process last found of the SMTP relay, for `ncpi health` in another process.

    One row per worker process (`reporter`, hostname:pid). A relay-wide fault (authentication,
    TLS, connection) is recorded when it starts and refreshed while it lasts; a delivery that goes
    through marks every row of the same relay ok."""

    __tablename__ = "relay_status"
    __table_args__ = (CheckConstraint("state IN ('ok', 'failing')", name="state_valid"),)
    reporter: Mapped[str] = mapped_column(String(200), primary_key=True)
    relay: Mapped[str] = mapped_column(String(300))
    """host:port of the relay, as the worker is configured."""
    state: Mapped[str] = mapped_column(String(16))
    category: Mapped[str | None] = mapped_column(String(32))
    """authentication, tls, connection (when failing)."""
    reason: Mapped[str | None] = mapped_column(Text)
    since: Mapped[datetime]
    """When this state began."""
    checked_at: Mapped[datetime]
    """When the worker last confirmed it."""


class StuckWorkflow(Base):
    """A running workflow whose workflow task keeps failing, as the reconciler last found it.
    `ncpi status` marks the follow-ups it belongs to; the row goes when the workflow recovers."""

    __tablename__ = "stuck_workflows"
    workflow_id: Mapped[str] = mapped_column(String(300), primary_key=True)
    workflow_type: Mapped[str | None] = mapped_column(String(100))
    attempts: Mapped[int] = mapped_column(Integer)
    error: Mapped[str] = mapped_column(Text)
    since: Mapped[datetime]
    checked_at: Mapped[datetime]


class AuditEvent(Base):
    """Append-only: who did what to which record, when. Never updated, never deleted."""

    __tablename__ = "audit_events"
    id: Mapped[int] = mapped_column(primary_key=True)
    occurred_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(64))
    entity_type: Mapped[str] = mapped_column(String(32))
    entity_id: Mapped[str] = mapped_column(String(64), index=True)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    idempotency_key: Mapped[str | None] = mapped_column(String(300), unique=True)


class JobRun(Base):
    """One run of a scheduled job (the daily digest, the reconciler) for one due time.

    UNIQUE(job, due_at) is the lock: every worker replica fires the same schedule, and only the one
    whose INSERT lands runs the job (see ncpi_workflow.jobs.claim). `due_at` is stored in UTC."""

    __tablename__ = "job_runs"
    __table_args__ = (UniqueConstraint("job", "due_at"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    job: Mapped[str] = mapped_column(String(64))
    due_at: Mapped[datetime]
    claimed_by: Mapped[str] = mapped_column(String(200))
    """hostname:pid of the replica that runs it."""
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]
    outcome: Mapped[str | None] = mapped_column(Text)


class InboundOutcome(StrEnum):
    """What became of an email that came in to the reply address (ncpi_workflow/inbound/)."""

    PROCESSING = "processing"
    """Claimed by a receiver that is recording it now (or was interrupted doing so)."""
    RECORDED = "recorded"
    TRIAGED = "triaged"
    AUTOMATIC = "automatic"


class InboundMessage(Base):
    """One email received at the reply address, once per Message-ID (the same email delivered twice
    is one row). `triaged` and `automatic` rows are the inspectors' triage list (`ncpi inbox`,
    /inbox); a `recorded` one names what was recorded. Reply tokens are never stored: the addresses
    are kept with their plus part removed, and the text with any token masked."""

    __tablename__ = "inbound_messages"
    __table_args__ = (_check("outcome", InboundOutcome),)
    id: Mapped[int] = mapped_column(primary_key=True)
    message_id: Mapped[str] = mapped_column(String(300), unique=True)
    """The Message-ID header (a digest of the message when it has none, or one too long)."""
    channel: Mapped[str] = mapped_column(String(16))
    """smtp or imap."""
    mail_from: Mapped[str] = mapped_column(String(320))
    to_addresses: Mapped[str] = mapped_column(Text, default="")
    subject: Mapped[str] = mapped_column(Text, default="")
    received_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    outcome: Mapped[str] = mapped_column(String(16), index=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    force_code: Mapped[str | None] = mapped_column(String(3))
    link_id: Mapped[int | None] = mapped_column(Integer)
    recommendation_ids: Mapped[list[str]] = mapped_column(JSON, default=list)
    attachments: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    """[{"filename", "size_bytes", "outcome": recorded | refused | not_recorded, "reason"}]"""
    text_excerpt: Mapped[str] = mapped_column(Text, default="")
    """The reply's own text (quoted original removed), at most INBOUND_TEXT_KEPT characters."""
    acknowledgement_id: Mapped[int | None] = mapped_column(Integer)
    """The outbox row of the acknowledgement sent for it."""


class AreaForImprovement(Base):
    """An area for improvement the report states (report file `areas_for_improvement`): a finding
    without a recommendation, listed and exported, with no clocks (migration 0011)."""

    __tablename__ = "areas_for_improvement"
    __table_args__ = (UniqueConstraint("inspection_id", "ref"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    inspection_id: Mapped[str] = mapped_column(ForeignKey("inspections.id"), index=True)
    ref: Mapped[str] = mapped_column(String(8))
    text: Mapped[str] = mapped_column(Text)


class RevisitReport(Base):
    """The published report of a post-inspection review (a `programme: PIR` report file), recorded
    against the reviewed inspection's revisit of one cycle (ncpi_workflow/revisit_reports.py)."""

    __tablename__ = "revisit_reports"
    __table_args__ = (
        UniqueConstraint("inspection_id", "cycle"),
        CheckConstraint("fieldwork_end >= fieldwork_start", name="fieldwork_ordered"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    inspection_id: Mapped[str] = mapped_column(ForeignKey("inspections.id"), index=True)
    cycle: Mapped[int] = mapped_column(Integer)
    revisit_id: Mapped[int | None] = mapped_column(ForeignKey("revisits.id"))
    title: Mapped[str] = mapped_column(Text)
    source_url: Mapped[str] = mapped_column(Text)
    published_on: Mapped[date] = mapped_column(Date)
    fieldwork_start: Mapped[date] = mapped_column(Date)
    fieldwork_end: Mapped[date] = mapped_column(Date)
    inspectors: Mapped[list[str]] = mapped_column(JSON, default=list)
    illustrative: Mapped[bool] = mapped_column(Boolean, default=False)
    report_sha256: Mapped[str] = mapped_column(String(64))
    recorded_by: Mapped[str] = mapped_column(String(200))
    recorded_at: Mapped[datetime] = mapped_column(default=utcnow)
    findings: Mapped[list["RevisitFinding"]] = relationship(
        back_populates="report", cascade="all, delete-orphan", order_by="RevisitFinding.id"
    )


class RevisitFinding(Base):
    """A post-inspection review's re-inspection findings (narrative) on one recommendation."""

    __tablename__ = "revisit_findings"
    __table_args__ = (UniqueConstraint("revisit_report_id", "recommendation_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    revisit_report_id: Mapped[int] = mapped_column(ForeignKey("revisit_reports.id"), index=True)
    recommendation_id: Mapped[str] = mapped_column(ForeignKey("recommendations.id"), index=True)
    text: Mapped[str] = mapped_column(Text)
    report: Mapped[RevisitReport] = relationship(back_populates="findings")
