"""The follow-up lifecycle's shared vocabulary: workflow IDs, inputs, states, requests and results.

Everything here is plain dataclasses and pure functions, used by the workflows (deterministically),
by the activities and by the CLI alike. Requests are what inspectors and forces send as Temporal
Updates; `check_*` functions are the validators' rules, so the caller hears the same reason
whether it asks the CLI or the workflow.
"""

import unicodedata
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from enum import StrEnum
from typing import Any

from ncpi_workflow.clocks import (
    Deadline,
    DeadlineKind,
    Message,
    MessageKind,
    Party,
    TimeScale,
    WorkingCalendar,
    deadline_messages,
)
from ncpi_workflow.policy import Policy

TASK_QUEUE_DEFAULT = "ncpi-followup"


# ---------------------------------------------------------------- limits
# Every value a person gives is checked against these before anything is recorded, by the CLI and by
# the workflows' Update validators alike, so that SQLite (which stores any length) and PostgreSQL (which
# refuses, and whose refusal would otherwise be retried for ever) take exactly the same values. They are
# the column sizes of ncpi_workflow/models.py; free text, in unbounded columns, is bounded here.

NAME_MAX = 200
"""Who acts (`--by`): the decided_by, submitted_by, set_by, changed_by, triggered_by, actor... columns."""
TEXT_MAX = 10_000
"""Free text: a rationale, reason, public comment, progress account, description or note."""
FILENAME_MAX = 255
"""An evidence file's name (evidence.filename)."""
CONTENT_TYPE_MAX = 100
STORAGE_PATH_MAX = 4_096
NEXT_ACTION_MAX = 200
"""A projection's next action (recommendations.next_action, inspections.next_action)."""
RECORD_REJECTED = "RecordRejected"
"""The ApplicationError type of a record the database refuses for what it holds (a value too long, out of
range, against a constraint): the record activities fail at once, never retried, and an Update fails with it."""
ROW_ID_MAX = 2**31 - 1
"""Row IDs (the outbox's first column) are 32-bit on PostgreSQL."""

_LINE_BREAKS_ALLOWED = {"\n", "\t", "\r"}


def _bad_characters(value: str, what: str, multiline: bool) -> None:
    for ch in value:
        if "\ud800" <= ch <= "\udfff":
            raise ValueError(f"{what} is not valid UTF-8")
        if unicodedata.category(ch) == "Cc" and not (multiline and ch in _LINE_BREAKS_ALLOWED):
            raise ValueError(f"{what} must not contain control characters (such as {ch!r})")
    if not multiline and any(unicodedata.category(ch) in ("Zl", "Zp") for ch in value):
        raise ValueError(f"{what} must be one line")


def visible(value: str) -> str:
    """What is left of a value once normalised (NFKC) and stripped of white space and invisible
    format characters (zero-width spaces and joiners, direction marks, a byte-order mark...)."""
    normalised = unicodedata.normalize("NFKC", value)
    return "".join(ch for ch in normalised if not ch.isspace() and unicodedata.category(ch) != "Cf")


def _empty(value: str, what: str) -> str:
    invisible = value.strip() != ""  # zero-width spaces, joiners, marks: nothing anyone could read
    return f"{what} must not be empty" + (" (it holds only invisible characters)" if invisible else "")


def check_name(value: str | None, what: str) -> None:
    """A person's name or address (`--by`): one line, visible, within NAME_MAX characters."""
    if value is None or not isinstance(value, str):
        raise ValueError(f"{what} must not be empty")
    _bad_characters(value, what, multiline=False)
    if not visible(value):
        raise ValueError(_empty(value, what))
    if len(value.strip()) > NAME_MAX:
        raise ValueError(f"{what} is {len(value.strip()):,} characters; at most {NAME_MAX} are kept")


def check_text(value: str | None, what: str, *, required: bool = True, limit: int = TEXT_MAX) -> None:
    """Free text: several lines allowed, no other control characters, within `limit` characters."""
    if value is None or (not required and value == ""):
        if required:
            raise ValueError(f"{what} must not be empty")
        return
    if not isinstance(value, str):
        raise ValueError(f"{what} must be text")
    _bad_characters(value, what, multiline=True)
    if required and not visible(value):
        raise ValueError(_empty(value, what))
    if len(value.strip()) > limit:
        raise ValueError(f"{what} is {len(value.strip()):,} characters; at most {limit:,} are kept")


def check_filename(value: str | None, what: str = "the file name") -> None:
    """An evidence file's own name (no folders): any characters a file system allows, within FILENAME_MAX;
    outputs print it escaped (`printable`)."""
    if not value or not visible(value):
        raise ValueError(f"{what} must not be empty")
    if any("\ud800" <= ch <= "\udfff" for ch in value):
        raise ValueError(f"{what} {printable(value)} is not valid UTF-8; rename the file")
    if "/" in value or "\x00" in value:
        raise ValueError(f"{what} {printable(value)} must be a file's name, without folders")
    if len(value) > FILENAME_MAX:
        raise ValueError(f"{what} is {len(value):,} characters; at most {FILENAME_MAX} are kept")


def printable(value: str) -> str:
    """A value for a one-line output: control and line-separator characters escaped (a file name
    with a newline stays on its line), invalid UTF-8 shown as escapes."""
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in value)


def check_row_id(value: int, what: str) -> None:
    """A row ID as given on the command line: a positive 32-bit integer, as on PostgreSQL."""
    if not 1 <= value <= ROW_ID_MAX:
        raise ValueError(f"{value} is not a {what} ID (IDs run from 1 to {ROW_ID_MAX:,})")


class Phase(StrEnum):
    """A recommendation's place in its lifecycle (the inspectorate's view)."""

    PUBLISHED = "published"
    FORCE_NOTIFIED = "force_notified"
    IN_PROGRESS = "in_progress"
    EVIDENCE_REQUESTED = "evidence_requested"
    EVIDENCE_SUBMITTED = "evidence_submitted"
    UNDER_REVIEW = "under_review"
    CLOSED = "closed"


class InspectionPhase(StrEnum):
    FOLLOWING_UP = "following_up"
    REVISIT_OPEN = "revisit_open"
    CLOSED = "closed"


class ForceClaim(StrEnum):
    """What the force says of its own progress, kept apart from the inspectorate's judgement."""

    NOT_STARTED = "not_started"
    IN_PROGRESS = "in_progress"
    IMPLEMENTED = "implemented"


class Outcome(StrEnum):
    ACHIEVED = "achieved"
    PARTIALLY_ACHIEVED = "partially_achieved"
    NOT_ACHIEVED = "not_achieved"
    SUPERSEDED = "superseded"
    WITHDRAWN = "withdrawn"


CLOSING_OUTCOMES = {Outcome.ACHIEVED, Outcome.SUPERSEDED, Outcome.WITHDRAWN}
"""Outcomes that close a recommendation; the others start a further follow-up cycle."""

class RegisterStatus(StrEnum):
    """The public register's four words (HMICFRS): always the inspectorate's judgement, never the force's claim."""

    AWAITING_REVIEW = "awaiting review"
    BEING_PROGRESSED = "being progressed"
    WILL_BE_PROGRESSED = "will be progressed"
    NO_FURTHER_ACTION = "no further action needed"


SETTABLE_REGISTER_STATUSES = (RegisterStatus.AWAITING_REVIEW, RegisterStatus.BEING_PROGRESSED, RegisterStatus.WILL_BE_PROGRESSED)
"""What an inspector may set by hand; "no further action needed" comes only with a closing decision."""

REGISTER_STATUS = {
    # Before the register trail existed, the status was read off the phase. Kept for histories that
    # carry no trail; new recommendations start their trail at "awaiting review".
    Phase.PUBLISHED: "awaiting review",
    Phase.FORCE_NOTIFIED: "awaiting review",
    Phase.IN_PROGRESS: "being progressed",
    Phase.EVIDENCE_REQUESTED: "being progressed",
    Phase.EVIDENCE_SUBMITTED: "awaiting review",
    Phase.UNDER_REVIEW: "awaiting review",
    Phase.CLOSED: "no further action needed",
}


# ---------------------------------------------------------------- identifiers


def inspection_workflow_id(inspection_id: str) -> str:
    """'CUM-2017-01-26' -> 'ncpi/CUM/2017-01-26': one follow-up per force and publication date."""
    force, published = inspection_id.split("-", 1)
    return f"ncpi/{force}/{published}"


def recommendation_workflow_id(recommendation_id: str) -> str:
    """'CUM-2017-01-26-R1' -> 'ncpi/CUM/2017-01-26/R1'."""
    inspection_id, ref = recommendation_id.rsplit("-", 1)
    return f"{inspection_workflow_id(inspection_id)}/{ref}"


def resend_workflow_id(notification_id: int) -> str:
    """The business ID of an operator's re-send of one notification (`ncpi outbox resend`)."""
    return f"ncpi/notification/{notification_id}/resend"


def parse_inspection_id(text: str) -> str:
    """Accept 'CUM-2017-01-26' or the workflow ID; raise ValueError otherwise."""
    import re

    if m := re.fullmatch(r"ncpi/([A-Z]{3})/(\d{4}-\d{2}-\d{2})", text):
        return f"{m[1]}-{m[2]}"
    if re.fullmatch(r"[A-Z]{3}-\d{4}-\d{2}-\d{2}", text):
        return text
    raise ValueError(f"{text!r} is not an inspection ID such as CUM-2017-01-26")


def parse_recommendation_id(text: str) -> str:
    """Accept 'CUM-2017-01-26-R1' or the workflow ID; raise ValueError otherwise."""
    import re

    if m := re.fullmatch(r"ncpi/([A-Z]{3})/(\d{4}-\d{2}-\d{2})/(R\d{1,3})", text):
        return f"{m[1]}-{m[2]}-{m[3]}"
    if re.fullmatch(r"[A-Z]{3}-\d{4}-\d{2}-\d{2}-R\d{1,3}", text):
        return text
    raise ValueError(f"{text!r} is not a recommendation ID such as CUM-2017-01-26-R1")


# ---------------------------------------------------------------- clocks held in workflow state


@dataclass
class Revision:
    previous_due: date
    new_due: date
    reason: str
    by: str
    at: datetime


@dataclass
class TrackedDeadline:
    """A deadline as a workflow holds it: its original date, revisions and which messages went out."""

    key: str
    kind: DeadlineKind
    party: Party
    original_due: date
    due: date
    opened_at: datetime
    """Calendar instant from which its messages count (publication, a new cycle, a request)."""
    cycle: int = 1
    reminded: bool = True
    met_at: datetime | None = None
    revisions: list[Revision] = field(default_factory=list)
    handled: list[str] = field(default_factory=list)
    """Message keys already sent or skipped."""
    silent_from: datetime | None = None
    """No message at or after this instant: a recommendation's own reminders stop when the revisit opens."""

    def as_deadline(self, calendar: WorkingCalendar) -> Deadline:
        return Deadline(
            key=self.key,
            kind=self.kind,
            party=self.party,
            nominal=self.due,
            due=self.due,
            due_at=calendar.at(self.due, calendar.working_day_end),
            reminded=self.reminded,
        )

    def messages(self, policy: Policy, calendar: WorkingCalendar) -> tuple[Message, ...]:
        messages = deadline_messages(self.as_deadline(calendar), policy, calendar, not_before=self.opened_at)
        if self.kind is DeadlineKind.EVIDENCE:
            # The request itself is the first word: no reminder in the same instant (10 working days'
            # notice and a 10-working-day reminder fall together).
            messages = tuple(m for m in messages if m.at > self.opened_at)
        if self.silent_from is not None:
            messages = tuple(m for m in messages if m.at < self.silent_from)
        return messages

    def message_key(self, message: Message) -> str:
        # The due date is part of the key: a revised deadline earns a fresh set of reminders.
        return f"c{self.cycle}/{self.key}@{self.due.isoformat()}/{message.kind.value}/{message.working_days}"


def tracked(deadline: Deadline, opened_at: datetime, cycle: int = 1) -> TrackedDeadline:
    return TrackedDeadline(
        key=deadline.key,
        kind=deadline.kind,
        party=deadline.party,
        original_due=deadline.due,
        due=deadline.due,
        opened_at=opened_at,
        cycle=cycle,
        reminded=deadline.reminded,
    )


@dataclass
class Due:
    """The next message a workflow has to send, and those it supersedes (already past, never sent)."""

    deadline: TrackedDeadline
    message: Message
    superseded: list[Message]


def next_due(
    deadlines: list[TrackedDeadline], policy: Policy, calendar: WorkingCalendar, now: datetime
) -> Due | None:
    """The earliest unhandled message among active deadlines. When several of one deadline's
    messages are already past (a back-dated publication, a worker down for days), only the
    latest of them is sent: a force needs the current rung, not a replay of every reminder."""
    best: Due | None = None
    for deadline in deadlines:
        pending = [m for m in deadline.messages(policy, calendar) if deadline.message_key(m) not in deadline.handled]
        if not pending:
            continue
        past = [m for m in pending if m.at <= now]
        candidate = Due(deadline, past[-1], past[:-1]) if past else Due(deadline, pending[0], [])
        if best is None or candidate.message.at < best.message.at:
            best = candidate
    return best


# ---------------------------------------------------------------- history


@dataclass
class HistoryEntry:
    at: datetime
    """Calendar time (the policy clock; equals wall time at time scale 1)."""
    event: str
    by: str = "system"
    detail: str = ""


# ---------------------------------------------------------------- notifications


@dataclass
class NotificationRequest:
    idempotency_key: str
    kind: str
    inspection_id: str
    recommendation_id: str | None
    recipients: tuple[str, ...]
    """Roles; the activity resolves them to addresses."""
    subject: str
    scheduled_for: datetime
    context: dict[str, Any] = field(default_factory=dict)


def message_subject(kind: MessageKind | str, label: str, due: date, force_name: str) -> str:
    from ncpi_workflow.formatting import long_date

    kind = str(kind)
    return {
        "reminder": f"Reminder: {label} due {long_date(due)}",
        "due_today": f"Due today: {label} ({long_date(due)})",
        "overdue": f"Overdue: {label} was due {long_date(due)}",
        "escalation": f"Escalation: {label} overdue since {long_date(due)} ({force_name})",
        "revisit_notice": f"Revisit of {force_name} due no later than {long_date(due)}",
        "revisit_opens": f"Revisit of {force_name} opens today ({long_date(due)})",
    }.get(kind, f"{label}: {kind.replace('_', ' ')}")


# ---------------------------------------------------------------- recommendation workflow


@dataclass
class EvidenceItem:
    evidence_id: int | None
    filename: str
    sha256: str
    size_bytes: int
    by: str
    at: datetime
    cycle: int
    recorded_at: datetime | None = None
    """When it was recorded, for back-dated evidence (None: same as `at`)."""


@dataclass
class RecommendationState:
    phase: Phase
    cycle: int
    deadline: TrackedDeadline
    force_claim: ForceClaim | None = None
    outcome: Outcome | None = None
    review_open: bool = False
    evidence_deadline: TrackedDeadline | None = None
    evidence: list[EvidenceItem] = field(default_factory=list)
    closed_at: datetime | None = None
    history: list[HistoryEntry] = field(default_factory=list)
    projection_version: int = 0
    """The version of the latest projection written (workflows.common.ProjectionVersions; a counter in
    histories from before it). The reconciler compares it with the database's."""
    undelivered: list[int] = field(default_factory=list)
    """Notifications still waiting for the SMTP server at continue-as-new: the next run resumes them."""
    register: list["RegisterEntry"] = field(default_factory=list)
    """The public register's dated trail, newest last (empty in histories from before the trail)."""
    run: int = 0
    """Which run of the continue-as-new chain holds this state (1 for the first); projections' versions start from it."""
    review_opened_at: datetime | None = None
    """When this cycle's review opened (a back-dated decision may not be dated before it)."""
    imports: "ImportedRecommendation | None" = None
    """Imported actions (adoption) not yet applied: carried across continue-as-new, never re-applied."""
    imports_done: int = 0
    """Imported actions taken in so far (applied or refused): numbers the next one's records."""

    @property
    def register_status(self) -> str:
        return self.register[-1].status if self.register else REGISTER_STATUS[self.phase]


@dataclass
class RegisterEntry:
    status: str
    comment: str
    by: str
    at: datetime
    recorded_at: datetime | None = None


# Adoption and import ---------------------------------------------------------
# A follow-up already under way when the product takes it over (`ncpi publish --adopt`, `ncpi import`):
# the actions already taken, applied by the workflows themselves in time order, as the matching Update would.


@dataclass
class ImportedDelivery:
    item: str
    on: date
    by: str
    note: str = ""
    url: str | None = None
    sha256: str | None = None
    filename: str | None = None


@dataclass
class ImportedRevisit:
    cycle: int
    on: date
    by: str
    trigger: str = "inspector"
    """"inspector" or "automatic"."""


@dataclass
class ImportedInspection:
    deliveries: list[ImportedDelivery] = field(default_factory=list)
    revisits: list[ImportedRevisit] = field(default_factory=list)


@dataclass
class ImportedRegisterEntry:
    on: date
    status: str
    """A RegisterStatus value."""
    comment: str
    by: str


@dataclass
class ImportedDecision:
    cycle: int
    on: date
    outcome: str
    rationale: str
    by: str


@dataclass
class ImportedProgress:
    on: date
    claim: str
    text: str
    by: str


@dataclass
class ImportedRecommendation:
    register: list[ImportedRegisterEntry] = field(default_factory=list)
    decisions: list[ImportedDecision] = field(default_factory=list)
    progress: list[ImportedProgress] = field(default_factory=list)


def occurred_instant(calendar: WorkingCalendar, on: date) -> datetime:
    """The calendar instant a back-dated action is recorded at: noon (calendar zone) that day."""
    return calendar.at(on, time(12, 0))


def check_on(on: date | None, *, published: date, today: date, what: str) -> None:
    """Refuse a back-dating day in the future or before the report's publication (None: now)."""
    if on is None:
        return
    if on > today:
        raise ValueError(f"--on {on.isoformat()} is in the future (today is {today.isoformat()}): {what} cannot be dated later than today")
    if on < published:
        raise ValueError(f"--on {on.isoformat()} is before the report was published on {published.isoformat()}: {what} cannot be dated earlier")


@dataclass
class RecommendationInput:
    inspection_id: str
    recommendation_id: str
    ref: str
    force_code: str
    force_name: str
    timeframe: str
    published: date
    policy: Policy
    calendar: WorkingCalendar
    time_scale: TimeScale
    parent_workflow_id: str
    carried: RecommendationState | None = None
    revisit_by: date | None = None
    """The inspection's revisit limit at publication: the recommendation's own reminders stop when the revisit opens."""
    adopted_at: datetime | None = None
    """UTC instant of adoption: notifications scheduled before it are recorded as history, not sent."""
    imported: ImportedRecommendation | None = None
    """Actions taken before adoption, applied by the workflow in time order."""
    imported_revisits: list[ImportedRevisit] = field(default_factory=list)
    """The inspection's imported revisits (filled in by the inspection workflow): the recommendation's
    catching up waits at each for the review to open, never running ahead of it."""
    started_by_publication: bool = False
    """Started by its inspection's publication (workflows.inspection PUBLICATION_PATCH): its first projection
    (`RecommendationWorkflow.first_projection`) was written with the publication's event and its search
    attributes given at its start, so its first run writes neither."""


@dataclass
class RecommendationView:
    """What a Query returns: the whole state, and what happens next."""

    recommendation_id: str
    workflow_id: str
    state: RecommendationState
    register_status: str
    next_action: str | None
    next_action_at: datetime | None
    calendar_now: datetime
    """The calendar at the workflow's last task; readers use `time_scale` for the calendar now."""
    time_scale: TimeScale | None = None


# Requests (Updates) ------------------------------------------------------------


@dataclass
class ProgressRequest:
    claim: str
    text: str
    by: str
    on: date | None = None
    """The day it happened (back-dating), None for now."""


@dataclass
class EvidenceRequestInput:
    filename: str
    sha256: str
    size_bytes: int
    storage_path: str
    content_type: str
    by: str
    description: str | None = None
    on: date | None = None


@dataclass
class DecisionRequest:
    outcome: str
    rationale: str
    by: str
    on: date | None = None


@dataclass
class ReasonRequest:
    """Re-open or withdraw: who and why."""

    reason: str
    by: str


@dataclass
class ReviseDeadlineRequest:
    deadline: str
    """A deadline key: for a report action_plan, pcc_response, revisit_by...; for a recommendation 'recommendation' or 'evidence'."""
    new_due: date
    reason: str
    by: str


@dataclass
class RegisterStatusRequest:
    status: str
    comment: str
    """Public: it is published on the register with the status."""
    by: str
    on: date | None = None


@dataclass
class TriggerRevisitRequest:
    by: str
    on: date | None = None
    """The revisit's fieldwork start: it opened that day."""


@dataclass
class DeliveryRequest:
    item: str
    """action_plan, pcc_response or immediate_update."""
    by: str
    note: str = ""
    sha256: str | None = None
    """The document received, kept by SHA-256 in the evidence store (the portal's or an email's upload)."""
    filename: str | None = None
    url: str | None = None
    """Or the address it is published at."""
    on: date | None = None


@dataclass
class OpenReview:
    """From the inspection workflow to each open recommendation: the revisit is open."""

    cycle: int
    revisit_opened_at: datetime
    backdated: bool = False
    """The child takes revisit_opened_at as its instant (a past or back-dated revisit)."""
    notice_at: datetime | None = None
    """When a back-dated review's evidence requests are scheduled: the step's now for a person's revisit
    (sent at once), the past instant for one caught up with on adoption (not sent). None: as before."""


@dataclass
class Settled:
    """From a recommendation to its inspection: a decision (or withdrawal) in this cycle."""

    recommendation_id: str
    cycle: int
    outcome: str
    open: bool
    """True when the outcome starts a further follow-up cycle."""
    decided_at: datetime
    backdated: bool = False
    """The decision was back-dated (or imported): the cycle is decided at decided_at, not when this arrives."""
    notice_at: datetime | None = None
    """When the decision's emails were scheduled (now for a person's Update, the past for an imported one):
    the revisit's outcome notice follows it. None: as before."""


@dataclass
class Reopened:
    recommendation_id: str
    reason: str
    by: str
    due: date | None = None
    """The new deadline of the re-opened recommendation (None in histories from before it was sent)."""


@dataclass
class RevisitLimit:
    """From the inspection to its recommendations: the revisit limit moved (earlier)."""

    revisit_by: date


def check_progress(state: RecommendationState, request: ProgressRequest) -> None:
    check_name(request.by, "who is reporting (by)")
    check_text(request.text, "the progress text")
    if request.claim not in {c.value for c in ForceClaim}:
        raise ValueError(f"unknown claim {request.claim!r}; use one of: {', '.join(c.value for c in ForceClaim)}")
    if state.phase is Phase.CLOSED:
        raise ValueError("the recommendation is closed; progress can no longer be reported")


def check_evidence(state: RecommendationState, request: EvidenceRequestInput, max_bytes: int | None = None) -> None:
    check_name(request.by, "who is submitting (by)")
    check_filename(request.filename)
    check_text(request.description, "the description", required=False)
    check_text(request.content_type, "the content type", limit=CONTENT_TYPE_MAX)
    check_text(request.storage_path, "the storage path", limit=STORAGE_PATH_MAX)
    if len(request.sha256) != 64:
        raise ValueError("the evidence SHA-256 must be 64 hexadecimal characters")
    if request.size_bytes < 0 or (max_bytes is not None and request.size_bytes > max_bytes):
        raise ValueError(f"evidence file size {request.size_bytes} is outside the limit")
    if state.phase is Phase.CLOSED:
        raise ValueError("the recommendation is closed; evidence can no longer be submitted")
    if any(e.sha256 == request.sha256 for e in state.evidence):
        raise ValueError(f"this file ({request.filename}) was already submitted for this recommendation")


def evidence_overdue(state: RecommendationState, calendar: WorkingCalendar, calendar_now: datetime) -> bool:
    return state.evidence_deadline is not None and calendar_now > calendar.at(
        state.evidence_deadline.due, calendar.working_day_end
    )


def check_decision(
    state: RecommendationState, request: DecisionRequest, calendar: WorkingCalendar, calendar_now: datetime
) -> None:
    check_name(request.by, "who decides (by)")
    check_text(request.rationale, "the rationale")
    if request.outcome not in {o.value for o in Outcome}:
        raise ValueError(f"unknown outcome {request.outcome!r}; use one of: {', '.join(o.value for o in Outcome)}")
    if request.outcome == Outcome.WITHDRAWN:
        raise ValueError("a withdrawal is not a judgement of the recommendation: use withdraw (with the reason)")
    if state.phase is Phase.CLOSED:
        raise ValueError(f"the recommendation is already closed ({state.outcome}); re-open it first")
    if state.phase is Phase.EVIDENCE_REQUESTED and evidence_overdue(state, calendar, calendar_now):
        return  # the force sent nothing by the evidence deadline: inspectors may judge without it
    if state.phase is not Phase.UNDER_REVIEW:
        raise ValueError(
            f"a decision needs the recommendation under review (at the revisit, with evidence or past the evidence "
            f"deadline); it is {state.phase.value.replace('_', ' ')}"
        )


def check_reopen(state: RecommendationState, request: ReasonRequest) -> None:
    check_name(request.by, "who re-opens (by)")
    check_text(request.reason, "the reason")
    if state.phase is not Phase.CLOSED:
        raise ValueError(f"only a closed recommendation can be re-opened; it is {state.phase.value.replace('_', ' ')}")


def check_withdraw(state: RecommendationState, request: ReasonRequest) -> None:
    check_name(request.by, "who withdraws (by)")
    check_text(request.reason, "the reason")
    if state.phase is Phase.CLOSED:
        raise ValueError(f"the recommendation is already closed ({state.outcome})")


def check_register_status(state: RecommendationState, request: RegisterStatusRequest) -> None:
    check_name(request.by, "who sets the status (by)")
    check_text(request.comment, "the public comment")
    allowed = [str(s) for s in SETTABLE_REGISTER_STATUSES]
    if request.status == RegisterStatus.NO_FURTHER_ACTION:
        raise ValueError('"no further action needed" is set by a closing decision (achieved, superseded or withdrawn)')
    if request.status not in allowed:
        raise ValueError(f"unknown register status {request.status!r}; use one of: {', '.join(allowed)}")
    if state.phase is Phase.CLOSED:
        raise ValueError("the recommendation is closed; re-open it before changing its register status")


def check_revision(
    deadline: TrackedDeadline | None, request: ReviseDeadlineRequest, calendar_today: date, latest: date | None = None
) -> None:
    check_name(request.by, "who changes the deadline (by)")
    check_text(request.reason, "the reason")
    if deadline is None:
        raise ValueError(f"no open deadline {request.deadline!r} here")
    if deadline.met_at is not None:
        raise ValueError(f"the {request.deadline} deadline was already met")
    if request.new_due == deadline.due:
        raise ValueError(f"the {request.deadline} deadline is already {deadline.due.isoformat()}")
    if request.new_due <= calendar_today:
        raise ValueError(f"the new date {request.new_due.isoformat()} is not after today ({calendar_today.isoformat()})")
    if latest is not None and request.new_due > latest:
        raise ValueError(f"the {request.deadline} date cannot move later than {latest.isoformat()} (no later than six months)")


# ---------------------------------------------------------------- inspection workflow


@dataclass
class RecommendationRef:
    recommendation_id: str
    ref: str
    timeframe: str
    imported: ImportedRecommendation | None = None


@dataclass
class InspectionState:
    phase: InspectionPhase
    cycle: int
    deadlines: list[TrackedDeadline]
    open_recommendations: list[str]
    """Recommendation IDs still open in this cycle."""
    settled: dict[str, str] = field(default_factory=dict)
    """Outcome by recommendation ID for this cycle's revisit."""
    further: list[str] = field(default_factory=list)
    """Recommendations a decision this cycle sent to a further follow-up."""
    deferred: dict[str, date] = field(default_factory=dict)
    """Re-opened recommendations waiting for a revisit no earlier than their new deadline, by ID."""
    revisit_opened_at: datetime | None = None
    revisit_trigger: str | None = None
    revisit_by: str | None = None
    closed_at: datetime | None = None
    history: list[HistoryEntry] = field(default_factory=list)
    projection_version: int = 0
    """The version of the latest projection written (workflows.common.ProjectionVersions; a counter in
    histories from before it). The reconciler compares it with the database's."""
    undelivered: list[int] = field(default_factory=list)
    """Notifications still waiting for the SMTP server at continue-as-new: the next run resumes them."""
    run: int = 0
    """Which run of the continue-as-new chain holds this state (1 for the first)."""
    imports: "ImportedInspection | None" = None
    """Imported actions (adoption) not yet applied: carried across continue-as-new, never re-applied."""
    imports_done: int = 0
    settled_latest: datetime | None = None
    """The latest decided_at among this cycle's settlements."""
    settled_backdated: bool = False
    """A settlement of this cycle was back-dated: the cycle is decided at settled_latest."""
    settled_notice_at: datetime | None = None
    """The latest notice instant of this cycle's back-dated settlements: its outcome notice's."""


@dataclass
class InspectionInput:
    inspection_id: str
    force_code: str
    force_name: str
    programme: str
    title: str
    published: date
    recommendations: list[RecommendationRef]
    policy: Policy
    calendar: WorkingCalendar
    time_scale: TimeScale
    carried: InspectionState | None = None
    adopted_at: datetime | None = None
    """UTC instant of adoption (publish's wall clock; a calendar instant, which is the wall clock at time
    scale 1): notifications scheduled before it are not sent, the past is caught up with in time order."""
    imported: ImportedInspection | None = None


@dataclass
class InspectionView:
    inspection_id: str
    workflow_id: str
    state: InspectionState
    next_action: str | None
    next_action_at: datetime | None
    calendar_now: datetime
    time_scale: TimeScale | None = None


@dataclass
class RevisitResult:
    inspection_id: str
    cycle: int
    opened_at: datetime
    trigger: str
    by: str


def check_trigger_revisit(request: TriggerRevisitRequest) -> None:
    check_name(request.by, "who triggers the revisit (by)")


DELIVERY_URL_MAX = 2_000


def check_delivery(request: DeliveryRequest) -> None:
    check_name(request.by, "who records it (by)")
    check_text(request.note, "the note", required=False)
    sha256, filename, url = getattr(request, "sha256", None), getattr(request, "filename", None), getattr(request, "url", None)
    if (sha256 is None) != (filename is None):
        raise ValueError("a document needs both its file name and its SHA-256")
    if sha256 is not None:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ValueError("the document's SHA-256 must be 64 lowercase hexadecimal characters")
        check_filename(filename, "the document's file name")
    if url is not None:
        check_text(url, "the document's address", limit=DELIVERY_URL_MAX)
        if not url.lower().startswith(("https://", "http://")) or any(ch.isspace() for ch in url):
            raise ValueError("the document's address must be a web address starting https://")


def revisit_deadline(state: InspectionState) -> TrackedDeadline:
    return next(d for d in state.deadlines if d.kind is DeadlineKind.REVISIT_BY)


# ---------------------------------------------------------------- activity inputs


@dataclass
class RecommendationProjection:
    recommendation_id: str
    version: int
    phase: str
    cycle: int
    force_claim: str | None
    outcome: str | None
    next_action: str | None
    next_action_at: datetime | None
    register_status: str | None = None


@dataclass
class InspectionProjection:
    inspection_id: str
    version: int
    phase: str
    cycle: int
    next_action: str | None
    next_action_at: datetime | None


@dataclass
class AuditRecord:
    idempotency_key: str
    actor: str
    action: str
    entity_type: str
    entity_id: str
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class ProgressRecord:
    idempotency_key: str
    recommendation_id: str
    claim: str
    text: str
    by: str
    at: datetime
    """When it happened."""
    recorded_at: datetime | None = None
    """When it was recorded (None: same as `at`)."""


@dataclass
class EvidenceRequestRecord:
    idempotency_key: str
    recommendation_id: str
    cycle: int
    due: date
    what: str


@dataclass
class EvidenceRecord:
    idempotency_key: str
    recommendation_id: str
    cycle: int
    item: EvidenceRequestInput
    at: datetime | None = None
    recorded_at: datetime | None = None


@dataclass
class DecisionRecord:
    idempotency_key: str
    recommendation_id: str
    cycle: int
    outcome: str
    rationale: str
    by: str
    at: datetime
    recorded_at: datetime | None = None


@dataclass
class RegisterRecord:
    idempotency_key: str
    recommendation_id: str
    cycle: int
    status: str
    comment: str
    by: str
    at: datetime
    recorded_at: datetime | None = None


@dataclass
class ReopenRecord:
    idempotency_key: str
    recommendation_id: str
    cycle: int
    reason: str
    by: str
    at: datetime


@dataclass
class DeadlineRevisionRecord:
    idempotency_key: str
    inspection_id: str
    key: str
    cycle: int
    recommendation_id: str | None
    kind: str
    original_due: date
    previous_due: date
    new_due: date
    reason: str
    by: str


@dataclass
class DeadlineOpenRecord:
    """A new clock in a later cycle (further follow-up, evidence): one row per (key, cycle)."""

    inspection_id: str
    recommendation_id: str | None
    key: str
    kind: str
    cycle: int
    due: date


@dataclass
class DeadlineMetRecord:
    inspection_id: str
    key: str
    cycle: int
    at: datetime
    recorded_at: datetime | None = None


@dataclass
class RevisitRecord:
    idempotency_key: str
    inspection_id: str
    cycle: int
    trigger: str
    by: str
    at: datetime
    recorded_at: datetime | None = None


@dataclass
class EventWrite:
    """Everything one event writes, in one transaction (the `record_event` activity): its records, its
    notifications (in order) and the projection computed after the state change. Every part is optional."""

    reopen: ReopenRecord | None = None
    decision: DecisionRecord | None = None
    progress: ProgressRecord | None = None
    evidence_request: EvidenceRequestRecord | None = None
    evidence: EvidenceRecord | None = None
    deadline_revision: DeadlineRevisionRecord | None = None
    deadlines_opened: list[DeadlineOpenRecord] = field(default_factory=list)
    deadlines_met: list[DeadlineMetRecord] = field(default_factory=list)
    register: list[RegisterRecord] = field(default_factory=list)
    revisit: RevisitRecord | None = None
    audits: list[AuditRecord] = field(default_factory=list)
    notifications: list[NotificationRequest] = field(default_factory=list)
    recommendation_projection: RecommendationProjection | None = None
    inspection_projection: InspectionProjection | None = None
    first_projections: list[RecommendationProjection] = field(default_factory=list)
    """A publication's: the first projection of each recommendation it starts (written before its notifications)."""

    def empty(self) -> bool:
        return not any(getattr(self, name) for name in self.__dataclass_fields__)


@dataclass
class EventWritten:
    """What `record_event` wrote: ids the workflow needs (None: that part was absent)."""

    evidence_id: int | None = None
    evidence_request_id: int | None = None
    notification_ids: list[int] = field(default_factory=list)
    projected: bool = False
    """Whether the projection was written (False: none was given, or a newer one is there already)."""


PROJECTION_RUN = 1 << 24
"""workflows.common.ProjectionVersions.RUN: a projection's version is run * PROJECTION_RUN + history length * 256 + order."""


def never_projected_by_itself(version: int) -> bool:
    """Whether a recommendation row's projection was never written by the recommendation's own workflow:
    unprojected (0), or only the first projection its inspection wrote at publication (version run *
    PROJECTION_RUN, a history length of 0, which no workflow writes of itself: see
    RecommendationWorkflow.first_projection). The row is then projected before its workflow exists."""
    return version % PROJECTION_RUN == 0


def clock_timeout(time_scale: TimeScale, calendar_instant: datetime, clock_now: datetime) -> timedelta:
    """How long to wait on the workflow clock until a calendar instant (zero if it has passed)."""
    return max(time_scale.to_clock(calendar_instant) - clock_now, timedelta(0))
