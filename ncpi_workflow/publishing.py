"""Publishing a report: its records in one transaction, committed, then its one follow-up workflow."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from enum import StrEnum
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from temporalio.client import Client
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError

from ncpi_workflow import db
from ncpi_workflow.clocks import (
    EVIDENCE_REQUEST_RECIPIENTS,
    REVISIT_OPENED_RECIPIENTS,
    Deadline,
    MessageKind,
    TimeScale,
    Timeline,
    WorkingCalendar,
    calendar_for_report,
    plan_report,
)
from ncpi_workflow.errors import UserError
from ncpi_workflow.forces import load_forces
from ncpi_workflow.formatting import long_date, role_list, role_name
from ncpi_workflow.lifecycle import InspectionInput, RecommendationRef, inspection_workflow_id
from ncpi_workflow.models import Inspection
from ncpi_workflow.policy import load_policy
from ncpi_workflow.report import LoadedReport, load_report
from ncpi_workflow.settings import Settings
from ncpi_workflow.store import insert_report, load_reference_forces, recommendation_id


@dataclass(frozen=True)
class Publication:
    inspection_id: str
    workflow_id: str
    started: bool
    recommendations: int


def time_scale_for(settings: Settings, calendar_origin: datetime, anchor: datetime | None) -> TimeScale:
    """Real time (the identity) unless compressed or anchored: then publication maps to `anchor`."""
    if settings.time_scale == 1 and anchor is None:
        return TimeScale()
    return TimeScale(settings.time_scale, calendar_origin, anchor or datetime.now(calendar_origin.tzinfo))


START_RPC_TIMEOUT = timedelta(seconds=30)


# ---------------------------------------------------------------- a report whose deadlines have passed


class PastChoice(StrEnum):
    """How to follow up a report whose deadlines have already passed (`ncpi publish --catch-up` ...)."""

    CATCH_UP = "catch-up"
    """Start every clock from publication and send at once the latest due message of each deadline."""
    ADOPT = "adopt"
    """Record the past as history and send nothing for it (InspectionInput.adopted_at = now)."""
    ANCHOR_NOW = "anchor-now"
    """Follow the report up as if it were published now: every clock starts from this moment."""


PAST_CHOICE_HELP = {
    PastChoice.CATCH_UP: "send those messages now and follow up from the publication date",
    PastChoice.ADOPT: "record the past as history and send nothing for it; the follow-up carries on as if it "
    "had run from publication, and the next message due from today on is sent when its time comes",
    PastChoice.ANCHOR_NOW: "follow the report up as if it were published now: every clock starts today",
}


@dataclass(frozen=True)
class PastSend:
    """One message catch-up would send at once."""

    kind: str
    """A notification kind: published, reminder, due_today, overdue, escalation, revisit_notice,
    revisit_opened, evidence_request."""
    what: str
    """What it is about, for people: 'Force action plan, due Friday 2 June 2017'."""
    recipients: tuple[str, ...]
    scheduled_for: datetime
    """When it was due to go out (calendar instant, UTC); under catch-up it goes now."""
    rung: str | None = None
    deadline: str = ""
    """The deadline's key ('action_plan', 'recommendation:R1', 'evidence:R1'); 'published' for the notice."""

    @property
    def line(self) -> str:
        kind = self.kind.replace("_", " ")
        rung = f" (rung {role_name(self.rung)})" if self.rung else ""
        return f"{kind}{rung}: {self.what} -> {role_list(self.recipients)}"


@dataclass(frozen=True)
class PastSummary:
    """What publishing a report today would do at once without a choice of mode (catch-up's sends)."""

    inspection_id: str
    deadlines: int
    passed: tuple[Deadline, ...]
    sends: tuple[PastSend, ...]
    revisit_opens: bool
    """The revisit-by limit has passed: catch-up opens the revisit (automatically) at once."""
    today: date

    @property
    def how_many(self) -> str:
        """'these 14 messages'; 'up to these 14 messages (...)' when the revisit opens at once, as it
        may overtake a recommendation's own last message (the recommendation is then under review)."""
        overtaken = self.revisit_opens and any(s.deadline.startswith("recommendation:") for s in self.sends)
        if not overtaken:
            return f"these {len(self.sends)} messages"
        return (f"up to these {len(self.sends)} messages (the revisit, opening at once, may overtake a "
                "recommendation's own last reminder)")

    def lines(self, name: str) -> list[str]:
        last = max(self.passed, key=lambda d: d.due)
        lines = [
            f"{name}: {len(self.passed)} of the {self.deadlines} deadlines of {self.inspection_id} have passed "
            f"(the latest, {last.label}, on {long_date(last.due)}); nothing was written and nothing started",
            f"published as it is (--catch-up), {self.how_many} would be sent at once:",
        ]
        lines += [f"  {send.line}" for send in self.sends]
        lines.append("choose how to follow it up, and publish it again with one of:")
        lines += [f"  --{c.value}: {PAST_CHOICE_HELP[c]}" for c in PastChoice]
        return lines


class PastDeadlines(UserError):
    """A report whose deadlines have passed, published without a choice: refused, nothing written."""

    def __init__(self, name: str, summary: PastSummary):
        self.name = name
        self.summary = summary
        self.lines = summary.lines(name)
        super().__init__("\n".join(self.lines))


def _what(deadline: Deadline) -> str:
    verb = "no later than" if deadline.kind == "revisit_by" else "due"
    label = deadline.label.removesuffix(" no later than")
    return f"{label}, {verb} {long_date(deadline.due)}"


def past_summary(
    inspection_id: str, timeline: Timeline, refs: list[str], calendar: WorkingCalendar, now: datetime
) -> PastSummary:
    """What catch-up would send at once if the report were published at `now` (calendar instant):
    the publication notice, the latest message already due of each deadline (the workflows send
    only that one: a force needs the current rung, not a replay), and, the revisit-by limit passed,
    the automatic revisit's notice and the evidence requests it makes. The same rules as the
    workflows (`lifecycle.next_due`, the recommendations' silence once the revisit opens)."""
    today = calendar.local(now).date()
    passed = tuple(d for d in timeline.deadlines if d.due < today)
    by_key = {d.key: d for d in timeline.deadlines}
    latest: dict[str, object] = {}
    for message in timeline.messages:
        if message.at > now or message.deadline_key.startswith("evidence:"):
            continue  # the evidence requests (and their clocks) come with the revisit, below
        latest[message.deadline_key] = message  # in time order: the last one kept is the latest
    sends: list[PastSend] = []
    revisit_opens = False
    for key, message in latest.items():
        if message.kind is MessageKind.PUBLISHED:
            sends.append(PastSend("published", f"the report's publication, {long_date(timeline.published)}",
                                  message.recipients, message.at, deadline="published"))
        elif message.kind is MessageKind.REVISIT_OPENED:
            revisit_opens = True
            sends.append(PastSend("revisit_opened", f"the revisit, opening by itself at its limit ({long_date(by_key[key].due)}) "
                                  "and asking each recommendation for evidence",
                                  REVISIT_OPENED_RECIPIENTS, message.at, deadline=key))
        else:
            sends.append(PastSend(message.kind.value, _what(by_key[key]), message.recipients, message.at, message.rung, key))
    if revisit_opens:
        opens_at = timeline.revisit_opens_at
        sends.extend(PastSend("evidence_request", f"evidence for recommendation {ref}", EVIDENCE_REQUEST_RECIPIENTS, opens_at,
                              deadline=f"evidence:{ref}") for ref in refs)
    return PastSummary(inspection_id, len(timeline.deadlines), passed, tuple(sends), revisit_opens, today)


async def _workflow_exists(client: Client, workflow_id: str) -> bool:
    """Whether Temporal holds any run (running or closed) under this workflow ID."""
    from temporalio.service import RPCError, RPCStatusCode

    try:
        await client.get_workflow_handle(workflow_id).describe(rpc_timeout=START_RPC_TIMEOUT)
    except RPCError as exc:
        if exc.status is RPCStatusCode.NOT_FOUND:
            return False
        raise
    return True


@dataclass(frozen=True)
class _Published:
    sha256: str
    projection_version: int


async def _published(sessions, inspection_id: str) -> _Published | None:
    async with sessions() as session:
        row = await session.get(Inspection, inspection_id)
        return None if row is None else _Published(row.report_sha256, row.projection_version)


@dataclass(frozen=True)
class _Plan:
    """What `publish` decides about one report before it touches the database or Temporal."""

    file: Path
    loaded: LoadedReport
    forces: dict
    policy: object
    calendar: WorkingCalendar
    timeline: Timeline
    workflow_id: str
    scale: TimeScale
    refusal: PastDeadlines | None
    past: PastChoice | None
    adopted_at: datetime | None
    imported: tuple | None
    now: datetime
    by: str

    @property
    def inspection_id(self) -> str:
        return self.loaded.report.inspection_id

    def publication(self, started: bool) -> Publication:
        return Publication(self.inspection_id, self.workflow_id, started, len(self.loaded.report.recommendations))


def _plan(
    settings: Settings,
    file: Path,
    *,
    anchor: datetime | None,
    by: str,
    loaded: LoadedReport | None,
    past: PastChoice | None,
    imported: tuple | None,
    name: str | None,
    forces: dict | None = None,
    policy=None,
    calendars: dict | None = None,
) -> _Plan:
    """`publish`'s checks and clocks for one report (no I/O but the report, forces and policy files;
    publish_many passes the forces, the policy and a calendar per publication year it has read once)."""
    past = PastChoice(past) if past is not None else None
    if imported is not None:
        if past not in (None, PastChoice.ADOPT):
            raise UserError(f"an imported follow-up is adopted: --{past.value} does not apply")
        past = PastChoice.ADOPT
    now = datetime.now(timezone.utc)
    if past is PastChoice.ANCHOR_NOW and anchor is None:
        anchor = now
    if past is PastChoice.ADOPT and (anchor is not None or settings.time_scale != 1):
        raise UserError("--adopt follows a report up in real time: it cannot be combined with an anchor "
                        f"or a time scale (NCPI_TIME_SCALE is {settings.time_scale:g})")
    forces = forces if forces is not None else load_forces(settings.forces_file)
    if loaded is None:
        loaded = load_report(file, known_forces=set(forces), max_bytes=settings.report_max_bytes)
    report = loaded.report
    policy = policy if policy is not None else load_policy(settings.policy)
    if calendars is None:
        calendar = calendar_for_report(policy, report.published)
    else:  # the same policy for every report: one calendar per publication year
        calendar = calendars.get(report.published.year)
        if calendar is None:
            calendar = calendars[report.published.year] = calendar_for_report(policy, report.published)
    timeline = plan_report(report.published, [(r.ref, r.timeframe) for r in report.recommendations], policy, calendar)
    published_at = calendar.next_send_time(calendar.at(report.published, time(0, 0)))
    scale = time_scale_for(settings, published_at, anchor)
    refusal = None
    if past is None and scale == TimeScale() and not getattr(report, "is_review", False):
        summary = past_summary(report.inspection_id, timeline, [r.ref for r in report.recommendations], calendar, now)
        if summary.passed:
            refusal = PastDeadlines(name or str(file), summary)
    return _Plan(file, loaded, forces, policy, calendar, timeline, inspection_workflow_id(report.inspection_id), scale,
                 refusal, past, now if past is PastChoice.ADOPT else None, imported, now, by)


async def publish(
    settings: Settings,
    client: Client,
    file: Path,
    anchor: datetime | None = None,
    by: str = "cli",
    loaded: LoadedReport | None = None,
    past: PastChoice | None = None,
    imported: tuple | None = None,
    name: str | None = None,
    sessions=None,
    forces_loaded: bool = False,
    plan: _Plan | None = None,
) -> Publication:
    """Validate, write, start. A report that fails validation writes nothing and starts nothing;
    the same report again starts nothing; a different file for a published report is refused.

    The records (the force's contacts among them) are committed before the workflow starts: its
    first activities read them (the publication notice resolves the liaison officer's address), and
    a worker may run them the moment the workflow exists. No database transaction is held open
    across a Temporal call. A workflow already under the report's ID while the database has no record
    of the report is refused before anything is written. Should the start fail once the records are
    committed, they stay: publishing the same file again starts the follow-up (so does the
    reconciler), for as long as it has never run. `loaded` is the report when the caller has just
    checked `file`.

    A report any of whose deadlines was due before today (real time: no anchor, time scale 1) is
    refused with PastDeadlines (what catch-up would send at once) unless `past` chooses: CATCH_UP
    (every clock from publication, the latest due message of each deadline sent at once), ADOPT
    (the past recorded as history, nothing sent for it) or ANCHOR_NOW (as if published now).
    `imported` is `state_file.load_state`'s result: actions already taken, applied by the workflows
    on adoption (ADOPT implied). `name` is how refusals name the file (an upload's own name).
    `sessions` is a session factory the caller holds (publish_many's one engine for every file);
    without it the database is opened (and closed) here. `forces_loaded`: the caller has just made
    the forces and contacts tables match the reference data (publish_many), so they are not read
    again in this report's write transaction. `plan`: `_plan`'s result, when the caller made it."""
    if plan is None:
        plan = _plan(settings, file, anchor=anchor, by=by, loaded=loaded, past=past, imported=imported, name=name)
    loaded, past, imported, refusal, workflow_id = plan.loaded, plan.past, plan.imported, plan.refusal, plan.workflow_id
    report = loaded.report
    publication = plan.publication

    async with _sessions(settings, sessions) as sessions:
        existing = await _published(sessions, report.inspection_id)
        created = False
        if existing is None and await _workflow_exists(client, workflow_id):
            # Unless another publisher of this report (`ncpi publish A A`, two at once) committed it and
            # started its follow-up since the first look: then it is published, as below.
            existing = await _published(sessions, report.inspection_id)
            if existing is None:
                raise _orphan_workflow(plan)
        if existing is None:
            if refusal is not None:
                raise refusal  # before anything is written
            try:
                async with sessions.begin() as session:  # committed on leaving the block, before any start
                    if not forces_loaded:
                        await load_reference_forces(session, plan.forces)
                    created = await _insert(session, plan)
            except IntegrityError:
                if await _published(sessions, report.inspection_id) is None:
                    raise  # not the report committed meanwhile by another caller
                created = False
            if not created:  # published meanwhile by another caller
                existing = await _published(sessions, report.inspection_id)
        if existing is not None:
            if _already(plan, existing) is not None:
                return publication(started=False)  # its follow-up has run: nothing to start
    return await _start(settings, client, plan, created)


def _orphan_workflow(plan: _Plan) -> UserError:
    return UserError(
        f"{plan.inspection_id}: a follow-up workflow {plan.workflow_id} exists but the database has no record "
        "of this report (was the database replaced?); nothing was written"
    )


def _already(plan: _Plan, existing: _Published) -> bool | None:
    """A report found in the database: True when its follow-up has run (nothing to start), None when
    its workflow is still to be started; raises the refusal (a different file, an import of a running
    follow-up, a past report recorded but never started without a choice)."""
    if existing.sha256 != plan.loaded.sha256:
        raise UserError(
            f"{plan.file}: {plan.inspection_id} is already published from a different file "
            f"(sha256 {existing.sha256[:12]}); a published report is not replaced"
        )
    if existing.projection_version > 0:
        if plan.imported is not None:
            raise UserError(f"{plan.inspection_id} is already published and its follow-up runs: "
                            "an import is for a report not yet published; nothing was imported")
        return True
    if plan.refusal is not None:
        raise plan.refusal  # recorded but never started: starting it needs the choice too
    return None


async def _insert(session, plan: _Plan) -> bool:
    """The report's records (and the choice its past made necessary) in the caller's transaction.
    True when this call wrote them (False: present already)."""
    created = (await insert_report(session, plan.loaded, plan.timeline, actor=plan.by, workflow_id=plan.workflow_id)).created
    if created and plan.past is not None:
        await _record_choice(session, plan.inspection_id, plan.by, plan.past, plan.now, plan.imported)
    return created


async def _start(settings: Settings, client: Client, plan: _Plan, created: bool) -> Publication:
    """The report's follow-up workflow started (its records committed): started=True, or, started
    meanwhile from these records (another publisher of the same file, the reconciler), `created`."""
    report = plan.loaded.report
    _, imported_recommendations = plan.imported if plan.imported is not None else (None, {})
    imported_inspection = plan.imported[0] if plan.imported is not None else None
    try:
        await client.start_workflow(
            "InspectionFollowUp",
            InspectionInput(
                inspection_id=report.inspection_id,
                force_code=report.force,
                force_name=plan.forces[report.force].name,
                programme=report.programme,
                title=report.title,
                published=report.published,
                recommendations=[_ref(report.inspection_id, r, imported_recommendations.get(r.ref)) for r in report.recommendations],
                policy=plan.policy,
                calendar=plan.calendar,
                time_scale=plan.scale,
                **_adoption(plan.adopted_at, imported_inspection),
            ),
            id=plan.workflow_id,
            task_queue=settings.task_queue,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            rpc_timeout=START_RPC_TIMEOUT,
        )
    except WorkflowAlreadyStartedError:
        # Started since the check above, from these records (another publisher of the same file, or
        # the reconciler): the follow-up runs on them.
        return plan.publication(started=created)
    return plan.publication(started=True)


@contextlib.asynccontextmanager
async def _sessions(settings: Settings, sessions):
    """The caller's session factory, or the database opened for this call alone."""
    if sessions is not None:
        yield sessions
        return
    async with db.open_database(settings.database_url) as opened:
        yield opened


# ---------------------------------------------------------------- many reports at once (`ncpi publish A B ...`)


@dataclass(frozen=True)
class Outcome:
    """One file's outcome in publish_many: its publication, or the UserError that refused it."""

    name: str
    publication: Publication | None = None
    refused: UserError | None = None


BATCH_REPORTS = 50
"""publish_many writes at most this many reports' records in one transaction."""


async def publish_many(
    settings: Settings,
    client: Client,
    reports: list[tuple[Path, LoadedReport]],
    *,
    anchor: datetime | None = None,
    by: str = "cli",
    past: PastChoice | None = None,
    concurrency: int | None = None,
    errors=None,
) -> list[Outcome]:
    """Publish checked reports (path, loaded) with one database engine and the caller's one Temporal
    client, at most `concurrency` (NCPI_PUBLISH_CONCURRENCY) Temporal calls at a time. Each is
    `publish` as for one file (the same refusals, `past` and `anchor` applied to every file); a refused
    file (a UserError: its deadlines passed, a different file for a published report, ...) is its
    Outcome's `refused` and the others still go. The outcomes are in the order given. Any other
    failure is raised once every file has finished. `errors(name)` is a context manager around each
    file's publication (the app layer's conversion of database and Temporal failures into UserErrors
    naming the file).

    The same steps as `publish`, file by file, but the database's part batched: the forces, the
    contacts and the policy read once; which reports are recorded, one query; the records of every
    report to write, one transaction for up to BATCH_REPORTS reports (each report's as `publish`
    writes it), committed before any of their workflows starts. Every write transaction on SQLite
    waits for its one write lock, behind a running worker's writes: 43 of them took seconds each.
    A batch naming one report twice, a report whose workflow exists without records, a review's
    report, or a batch write that fails (a report committed meanwhile by another publisher) goes file
    by file through `publish` instead, which settles those cases as it always has."""
    limit = concurrency or settings.publish_concurrency
    if limit < 1:
        raise UserError(f"publish concurrency must be at least 1, not {limit}")
    gate = asyncio.Semaphore(limit)

    def guarded(file: Path):
        return errors(str(file)) if errors is not None else contextlib.nullcontext()

    outcomes: list[Outcome | BaseException | None] = [None] * len(reports)
    async with db.open_database(settings.database_url) as sessions:
        if not reports:
            return []
        # The forces and contacts first, once: every publication then finds them as they should be
        # and writes none (concurrent first inserts of the same force would collide).
        forces = load_forces(settings.forces_file)
        with guarded(reports[0][0]):
            async with sessions.begin() as session:
                await load_reference_forces(session, forces)
        policy, calendars = load_policy(settings.policy), {}

        plans: dict[int, _Plan] = {}
        for i, (file, loaded) in enumerate(reports):
            try:
                plans[i] = _plan(settings, file, anchor=anchor, by=by, loaded=loaded, past=past, imported=None,
                                 name=None, forces=forces, policy=policy, calendars=calendars)
            except UserError as exc:
                outcomes[i] = Outcome(str(file), refused=exc)

        async def one_by_one(i: int) -> None:
            file, loaded = reports[i]
            async with gate:
                try:
                    with guarded(file):
                        outcomes[i] = Outcome(str(file), publication=await publish(
                            settings, client, file, sessions=sessions, forces_loaded=True, plan=plans[i]))
                except UserError as exc:
                    outcomes[i] = Outcome(str(file), refused=exc)
                except BaseException as exc:  # noqa: BLE001 - raised once every file has finished
                    outcomes[i] = exc

        ids = [p.inspection_id for p in plans.values()]
        if len(set(ids)) < len(ids):
            slow = list(plans)  # one report twice: its copies settle it between them, as two publishers would
        else:
            slow = await _publish_batched(settings, client, sessions, plans, outcomes, gate, guarded, reports)
        await asyncio.gather(*(one_by_one(i) for i in slow))
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    return list(outcomes)


async def _publish_batched(settings, client, sessions, plans: dict[int, _Plan], outcomes: list, gate, guarded,
                           reports) -> list[int]:
    """publish_many's batched path: fills `outcomes` for the plans it settles; returns the indexes
    left to `publish`, file by file."""
    slow: list[int] = []

    async def settled(i: int, step) -> None:
        file = reports[i][0]
        try:
            with guarded(file):
                outcome = await step()
        except UserError as exc:
            outcome = Outcome(str(file), refused=exc)
        except BaseException as exc:  # noqa: BLE001 - raised once every file has finished
            outcome = exc
        if outcome is not None:
            outcomes[i] = outcome

    try:
        existing = await _published_many(sessions, [p.inspection_id for p in plans.values()])
    except Exception:  # noqa: BLE001 - file by file, each with its own error
        return list(plans)

    to_write: list[int] = []
    to_start: list[int] = []

    async def look(i: int) -> Outcome | None:
        plan = plans[i]
        found = existing.get(plan.inspection_id)
        if found is None:
            if getattr(plan.loaded.report, "is_review", False):
                slow.append(i)  # refused by insert_report, as `publish` refuses it
                return None
            async with gate:
                exists = await _workflow_exists(client, plan.workflow_id)
            if exists:
                slow.append(i)  # published meanwhile by another publisher, or an orphan workflow: `publish` settles it
                return None
            if plan.refusal is not None:
                raise plan.refusal  # before anything is written
            to_write.append(i)
            return None
        if _already(plan, found):
            return Outcome(str(reports[i][0]), publication=plan.publication(started=False))
        to_start.append(i)  # recorded, never started
        return None

    await asyncio.gather(*(settled(i, functools.partial(look, i)) for i in plans))
    to_write.sort()
    for first in range(0, len(to_write), BATCH_REPORTS):
        chunk = to_write[first:first + BATCH_REPORTS]
        try:
            async with sessions.begin() as session:  # committed on leaving the block, before any start
                for i in chunk:
                    if not await _insert(session, plans[i]):
                        raise _WrittenMeanwhile()
        except Exception:  # noqa: BLE001 - nothing of this chunk was written: file by file, as `publish` does
            slow.extend(to_write[first:])
            break
        to_start.extend((i, True) for i in chunk)
    to_start = [item if isinstance(item, tuple) else (item, False) for item in to_start]

    async def start(i: int, created: bool) -> Outcome:
        async with gate:
            return Outcome(str(reports[i][0]), publication=await _start(settings, client, plans[i], created))

    await asyncio.gather(*(settled(i, functools.partial(start, i, created)) for i, created in to_start))
    return sorted(slow)


class _WrittenMeanwhile(Exception):
    """A report of the batch was recorded by another publisher since the look: the batch is undone."""


async def _published_many(sessions, inspection_ids: list[str]) -> dict[str, _Published]:
    found: dict[str, _Published] = {}
    async with sessions() as session:
        for first in range(0, len(inspection_ids), 500):
            rows = await session.execute(
                select(Inspection.id, Inspection.report_sha256, Inspection.projection_version)
                .where(Inspection.id.in_(inspection_ids[first:first + 500])))
            found.update({row.id: _Published(row.report_sha256, row.projection_version) for row in rows})
    return found


async def _record_choice(session, inspection_id: str, by: str, past: PastChoice, now: datetime, imported) -> None:
    """The choice a report's deadlines made necessary, in the audit trail with its records: how its
    follow-up was started (and, adopted, the actions imported), for whoever has to start it again."""
    import dataclasses

    from ncpi_workflow.store import append_audit

    detail = {"past": past.value, "at": now.isoformat()}
    if imported is not None:
        inspection, recommendations = imported
        detail["imported"] = json.loads(json.dumps(
            {"inspection": dataclasses.asdict(inspection),
             "recommendations": {ref: dataclasses.asdict(r) for ref, r in recommendations.items()}}, default=str))
    await append_audit(session, actor=by, action=f"report.{'imported' if imported is not None else past.value}",
                       entity_type="inspection", entity_id=inspection_id, detail=detail)


def _ref(inspection_id: str, rec, imported) -> RecommendationRef:
    return RecommendationRef(recommendation_id(inspection_id, rec.ref), rec.ref, rec.timeframe.value, imported=imported)


def _adoption(adopted_at: datetime | None, imported) -> dict:
    """InspectionInput's adoption fields, given only when set (the input of a follow-up that is not
    adopted stays as it was, field for field)."""
    fields = {}
    if adopted_at is not None:
        fields["adopted_at"] = adopted_at
    if imported is not None:
        fields["imported"] = imported
    return fields


async def published_ids(settings: Settings) -> list[str]:
    async with db.open_database(settings.database_url) as sessions:
        async with sessions() as session:
            return list((await session.scalars(select(Inspection.id).order_by(Inspection.id))).all())


async def inspection_input_from_records(
    session,
    inspection_id: str,
    *,
    policy,
    time_scale: TimeScale,
    calendar=None,
    carried=None,
) -> InspectionInput:
    """The InspectionInput `publish` starts a follow-up with, rebuilt from the records instead of
    the report file (for the reconciler's restarts). `calendar` defaults to the one `publish`
    computes for the publication date; pass the original run's policy, calendar and time scale
    when they are known, so that a restarted follow-up keeps the clocks it started with."""
    from ncpi_workflow.models import Force, Recommendation

    inspection = await session.get(Inspection, inspection_id)
    if inspection is None:
        raise LookupError(f"no inspection {inspection_id}")
    force = await session.get(Force, inspection.force_code)
    recommendations = (
        await session.scalars(select(Recommendation).where(Recommendation.inspection_id == inspection_id))
    ).all()
    recommendations = sorted(recommendations, key=lambda r: (len(r.ref), r.ref))  # report order: R1, R2, ... R10
    # Restarted from publication, an adopted follow-up is adopted again, with its imports: never a
    # catch-up that would send the past it was adopted to keep quiet.
    adopted_at, imported_inspection, imported_recommendations = (
        await adoption_from_records(session, inspection_id) if carried is None else (None, None, {})
    )
    return InspectionInput(
        inspection_id=inspection.id,
        force_code=inspection.force_code,
        force_name=force.name if force is not None else inspection.force_code,
        programme=inspection.programme,
        title=inspection.title,
        published=inspection.published_on,
        recommendations=[RecommendationRef(r.id, r.ref, r.timeframe, **({"imported": imported_recommendations[r.ref]}
                                                                       if r.ref in imported_recommendations else {}))
                         for r in recommendations],
        policy=policy,
        calendar=calendar or calendar_for_report(policy, inspection.published_on),
        time_scale=time_scale,
        carried=carried,
        **_adoption(adopted_at, imported_inspection),
    )


async def adoption_from_records(session, inspection_id: str):
    """(adopted_at, ImportedInspection | None, {ref: ImportedRecommendation}) of a report published with
    --adopt or imported, from the audit row `_record_choice` wrote with its records; (None, None, {}) otherwise."""
    from pydantic import TypeAdapter

    from ncpi_workflow.lifecycle import ImportedInspection, ImportedRecommendation
    from ncpi_workflow.models import AuditEvent

    detail = await session.scalar(
        select(AuditEvent.detail)
        .where(AuditEvent.entity_type == "inspection", AuditEvent.entity_id == inspection_id,
               AuditEvent.action.in_(("report.adopt", "report.imported")))
        .order_by(AuditEvent.id.desc()).limit(1)
    )
    if not detail:
        return None, None, {}
    imported = detail.get("imported") or {}
    inspection = TypeAdapter(ImportedInspection).validate_python(imported["inspection"]) if imported else None
    recommendations = {ref: TypeAdapter(ImportedRecommendation).validate_python(r)
                       for ref, r in (imported.get("recommendations") or {}).items()}
    return datetime.fromisoformat(detail["at"]), inspection, recommendations
