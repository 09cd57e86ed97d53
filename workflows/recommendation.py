"""One workflow per recommendation: its deadline and reminders, the force's progress and evidence,
the inspectorate's decision, further follow-up cycles and re-opening."""

from __future__ import annotations

import bisect
from contextlib import nullcontext
from dataclasses import replace
from datetime import date, datetime, time

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from ncpi_workflow.clocks import CalendarRefresh, DeadlineKind, Party, Timeframe, make_deadline, recommendation_deadline
    from ncpi_workflow.formatting import long_date
    from ncpi_workflow.lifecycle import (
        CLOSING_OUTCOMES,
        DecisionRecord,
        DecisionRequest,
        DeadlineOpenRecord,
        DeadlineRevisionRecord,
        EvidenceItem,
        EvidenceRecord,
        EvidenceRequestInput,
        EvidenceRequestRecord,
        ForceClaim,
        NotificationRequest,
        OpenReview,
        Outcome,
        Phase,
        ProgressRecord,
        ProgressRequest,
        ReasonRequest,
        RecommendationInput,
        RegisterEntry,
        RegisterRecord,
        RegisterStatus,
        RegisterStatusRequest,
        RevisitLimit,
        RecommendationProjection,
        RecommendationState,
        RecommendationView,
        Reopened,
        ReopenRecord,
        ReviseDeadlineRequest,
        Settled,
        RECORD_REJECTED,
        TrackedDeadline,
        check_decision,
        check_evidence,
        check_progress,
        check_register_status,
        check_reopen,
        check_revision,
        check_on,
        check_withdraw,
        next_due,
        occurred_instant,
        printable,
        recommendation_workflow_id,
        tracked,
    )
    from ncpi_workflow.temporal import FORCE_CODE, NEXT_DEADLINE, PHASE, PROGRAMME

from workflows.common import (
    CAUGHT_UP,
    DID,
    WAIT,
    CalendarKeeper,
    Events,
    Outbox,
    ProjectionVersions,
    calendar_now,
    clock_from_history,
    earliest_before,
    history,
    import_refused,
    notify_unless_before_adoption,
    occurred,
    recorded_note,
    skip_before_adoption,
    one_at_a_time,
    snapshot,
    revise,
    refuse_unless,
    run_activity,
    send_due_and_project,
    send_due_message,
    step_now,
    update_key,
    upsert_search_attributes,
    wait_until,
)

# Histories from before the register trail recorded no register steps with decisions and re-openings.
REGISTER_TRAIL_PATCH = "register-trail"

# Histories from before it took the main loop's step after an Update at an instant read again (a `read_clock`
# local activity in the task that completes the Update, which then waited for it). Behind it an Update that
# went through wakes the main loop, whose next step is taken at the Update's own instant (read once, at the
# Update's start, and kept in history), with no clock read of its own. Only that next step: a step after a
# timer, or after a wait the action did not end, reads the clock as before.
STEP_AT_ACTION_PATCH = "step-at-the-action-instant"

FORCE_CONTACTS = ("liaison_officer", "chief_officer")
NOT_ACHIEVED_ESCALATION = ("liaison_officer", "chief_officer", "pcc", "lead_hm_inspector")


@workflow.defn(name="RecommendationFollowUp")
class RecommendationWorkflow:
    @workflow.init
    def __init__(self, inp: RecommendationInput) -> None:
        self._set_up(inp)
        self.wake = False
        self.restart = False
        self.outbox = Outbox()
        self.events = Events(self.outbox)
        self.adopted_at = inp.adopted_at
        """An adopted follow-up: what falls before this instant is caught up with, never sent."""
        self._dirty = False
        self._barrier_lifted = False
        self._acting_at: datetime | None = None
        self._action_at: datetime | None = None
        """The instant of the action just done, for the main loop's next step (see `_acted`)."""
        # One action at a time: handlers await activities, and two of them interleaving would each
        # act on a state the other is changing (both told "accepted", records and workflow disagreeing).
        self.turn = one_at_a_time()
        # Every step takes its "now" from history, and never sends in the task that chose what to send
        # (histories from before this change read the task's clock, and replay that way).
        self.steady = clock_from_history()
        # Projections from this run are versioned above every one written before it, by an earlier run
        # or, for a follow-up restarted from the records, by the chain it replaces.
        self.versions = ProjectionVersions(self.state.run)

    def _set_up(self, inp: RecommendationInput) -> None:
        """What the workflow starts from, computed from its input alone (no patch, no clock): the workflow's
        set-up, and the inspection's for the first projection (see `first_projection`)."""
        self.inp = inp
        self.policy = inp.policy
        self.clock = CalendarKeeper(inp.calendar)
        self.scale = inp.time_scale
        self.workflow_id = recommendation_workflow_id(inp.recommendation_id)
        self.state = inp.carried or self._initial_state()
        self.state.run = ProjectionVersions.next_run(self.state.run, self.state.projection_version)

    @classmethod
    def first_projection(cls, inp: RecommendationInput, now: datetime) -> tuple[RecommendationProjection, list[tuple]]:
        """A new recommendation's first projection at the calendar instant `now`, and its search attributes as
        (key, value) pairs: what its first run would write, at the lowest version of that run (below every
        projection it writes itself). The publishing inspection writes it with the publication's event and
        starts the recommendation with these attributes; the recommendation (`started_by_publication`)
        takes the version and writes nothing. The same code in both places: they never disagree."""
        this = cls.__new__(cls)  # the set-up only: nothing of the workflow's runtime
        this._set_up(replace(inp, carried=None))
        return this._projection(this.state.run * ProjectionVersions.RUN, now)

    @property
    def calendar(self):
        return self.clock.calendar

    # ------------------------------------------------------------------ set-up

    def _initial_state(self) -> RecommendationState:
        published_at = self.calendar.next_send_time(self.calendar.at(self.inp.published, time(0, 0)))
        deadline = recommendation_deadline(
            self.inp.ref, Timeframe(self.inp.timeframe), self.inp.published, self.policy, self.calendar
        )
        own = replace(tracked(deadline, published_at), key="recommendation")
        if self.inp.revisit_by is not None:
            own.silent_from = self._revisit_opens(self.inp.revisit_by)
        state = RecommendationState(
            phase=Phase.FORCE_NOTIFIED, cycle=1, deadline=own,
            register=[RegisterEntry(RegisterStatus.AWAITING_REVIEW.value, "", "system", published_at)],
        )
        imported = self.inp.imported
        if imported is not None:
            state.imports = replace(
                imported,
                register=sorted(imported.register, key=lambda i: i.on),
                decisions=sorted(imported.decisions, key=lambda i: i.on),
                progress=sorted(imported.progress, key=lambda i: i.on),
            )
        history(state.history, published_at, "force notified", detail=f"due {long_date(deadline.due)}")
        return state

    def _revisit_opens(self, revisit_by) -> datetime:
        return self.calendar.at(revisit_by, self.calendar.send_at)

    def _now(self) -> datetime:
        """This activation's calendar clock: for validators, queries and projections, never for a decision."""
        return calendar_now(self.scale)

    async def _step_now(self) -> datetime:
        """The calendar instant of the step that starts here, kept in history (see `step_now`)."""
        return await step_now(self.scale)

    async def _action_now(self) -> datetime:
        """The instant of an inspector's or the force's action (an Update), kept in history as any step's."""
        self._acting_at = await self._step_now()
        return self._acting_at

    def _acted(self) -> RecommendationView:
        """An action done (its event written): the main loop's next step is taken at the action's instant,
        woken at once, instead of reading the clock again in a local activity of its own, which held up the
        workflow task that completes the Update (STEP_AT_ACTION_PATCH). Its view, for the Update to return."""
        if self._acting_at is not None and workflow.patched(STEP_AT_ACTION_PATCH):
            self._action_at = self._acting_at
            self.wake = True
        self._acting_at = None
        return self.view()

    async def _loop_now(self) -> datetime:
        """The calendar instant of a main-loop step: the latest action's when one has just been done (it is in
        history already: see `_acted`), else read now."""
        at, self._action_at = self._action_at, None
        if at is None:
            return await self._step_now()
        # This step reads the state as the action (and whatever woke the loop before it) left it: a wake
        # set meanwhile is answered by it, not by another step (which would read the clock).
        self.wake = False
        return at

    def _step(self):
        """The workflow's lock around a main-loop step that reads the clock (an activity of its own), so
        that it never runs beside an action's activities; histories from before it took no lock there."""
        return self.turn if self.steady else nullcontext()

    def _today(self, now: datetime):
        return now.astimezone(self.calendar.zone).date()

    def _label(self, deadline: TrackedDeadline) -> str:
        if deadline.kind is DeadlineKind.EVIDENCE:
            return f"Evidence for recommendation {self.inp.ref}"
        return f"Recommendation {self.inp.ref}" + (f" (follow-up cycle {deadline.cycle})" if deadline.cycle > 1 else "")

    def _active_deadlines(self) -> list[TrackedDeadline]:
        s = self.state
        active = []
        if s.phase in (Phase.FORCE_NOTIFIED, Phase.IN_PROGRESS) and s.force_claim is not ForceClaim.IMPLEMENTED:
            active.append(s.deadline)
        if s.phase is Phase.EVIDENCE_REQUESTED and s.evidence_deadline is not None:
            active.append(s.evidence_deadline)
        return active

    def _still_due(self, due) -> bool:
        """Whether a message chosen before waiting is still owed: an action may have come meanwhile."""
        deadline = due.deadline
        return (
            any(d is deadline for d in self._active_deadlines())
            and deadline.message_key(due.message) not in deadline.handled
            and due.message in deadline.messages(self.policy, self.calendar)
        )

    # ------------------------------------------------------------------ main loop

    @workflow.run
    async def run(self, inp: RecommendationInput) -> str:
        self.outbox.resume(self.state.undelivered)
        self.state.undelivered = []
        if inp.started_by_publication and inp.carried is None:
            # Its first projection was written with the publication's event, its search attributes given at
            # its start: nothing to write, the version it was written at is the state's.
            self.state.projection_version = self.first_projection(inp, self._now())[0].version
        else:
            await self._project()
        while True:
            if self.restart:
                # A new cycle starts with a fresh history: the state carries what must survive.
                await workflow.wait_condition(workflow.all_handlers_finished)
                await self.events.sent()
                self.state.undelivered = await self.outbox.settle()
                workflow.continue_as_new(replace(self.inp, carried=self.state, calendar=self.calendar))
            if self.state.phase is Phase.CLOSED and not self._imports_pending():
                window_end = self.state.closed_at + self.policy.review.reopen_window.as_relativedelta()
                reopened = await wait_until(self.scale, lambda: self.state.phase is not Phase.CLOSED or self.restart, window_end)
                if not reopened:
                    self._action_at = None  # the window's end, not an action: its step reads the clock
                    await workflow.wait_condition(workflow.all_handlers_finished)
                    if self.state.phase is Phase.CLOSED and not self.restart:  # no re-opening came in meanwhile
                        await self.events.sent()
                        await self.outbox.drain()
                        return str(self.state.outcome)
                continue
            caught = CAUGHT_UP
            async with self._step():
                now = await self._loop_now()
                if await self.clock.keep_ahead(max([self._today(now), *(d.due for d in self._active_deadlines())])):
                    continue
                if self.adopted_at is not None:
                    caught = await self._catch_up(now)
                    if caught == DID:
                        if workflow.info().is_continue_as_new_suggested() and not self.restart:
                            self.restart = True
                        continue
                # Chosen here, sent after the timer (however short) in a later workflow task: a retried
                # task sends what this one chose, with the row it recorded, instead of choosing again.
                due = next_due(self._active_deadlines(), self.policy, self.calendar, now)
            if caught == WAIT:
                # Catching up has reached the revisit: the inspection opens it (in its own catching up). Should
                # it not have by this recommendation's next message after the adoption, carry on without it.
                s = self.state
                opened = await wait_until(self.scale, lambda: self.wake or self.restart or s.review_open or s.phase is Phase.CLOSED,
                                          self._upcoming())
                self.wake = False
                if not opened:
                    self._action_at = None
                    self._barrier_lifted = True
                continue
            woken = await wait_until(self.scale, lambda: self.wake or self.restart, due.message.at if due else None)
            self.wake = False
            if not woken:
                self._action_at = None  # a timer: the step after it reads the clock
            if not woken and due is not None:
                async with self.turn:
                    if self._still_due(due) or not self.turn.guards:
                        await self._send_and_project(due)
            if workflow.info().is_continue_as_new_suggested() and not self.restart:
                self.restart = True

    async def _send_and_project(self, due) -> None:
        await send_due_and_project(self._event, self._send, self._project, self._active_deadlines, due)

    # ------------------------------------------------------------------ one transaction per event

    def _event(self):
        """One event's writes in one transaction (workflows.common.EVENT_PATCH); a refused write leaves the
        state as it was before the event."""
        return self.events.event(self.turn.guards, self._keep, self._restore)

    def _keep(self):
        return snapshot(self.state), self.restart, self.wake

    def _restore(self, saved) -> None:
        self.state, self.restart, self.wake = saved

    async def _send(self, due) -> None:
        if self.adopted_at is not None and due.message.at < self.adopted_at:
            skip_before_adoption(due, self.state.history)
            return
        await send_due_message(
            self.outbox, self.workflow_id, due, label=self._label(due.deadline), inspection_id=self.inp.inspection_id,
            recommendation_id=self.inp.recommendation_id, force_name=self.inp.force_name, cycle=self.state.cycle,
            entries=self.state.history,
        )

    # ------------------------------------------------------------------ adoption: catching up with the past

    def _imports_pending(self) -> bool:
        i = self.state.imports
        return i is not None and bool(i.register or i.decisions or i.progress)

    def _import_instant(self, on: date, now: datetime) -> datetime:
        return now if on == self._today(now) else occurred_instant(self.calendar, on)

    def _next_import(self, now: datetime):
        """The earliest imported action not yet taken in: (kind, item, instant), or None. Same day: progress,
        then register, then decisions."""
        i = self.state.imports
        if i is None:
            return None
        heads = [(items[0].on, order, kind, items[0]) for order, (kind, items) in
                 enumerate((("progress", i.progress), ("register", i.register), ("decision", i.decisions))) if items]
        if not heads:
            return None
        on, _, kind, item = min(heads, key=lambda h: (h[0], h[1]))
        return kind, item, self._import_instant(on, now)

    def _barrier(self) -> datetime | None:
        """Before the review opens, catching up goes no further than the revisit (imported, or the limit's):
        the inspection opens it, and what comes after happens in a review."""
        s = self.state
        if self._barrier_lifted or s.review_open or s.phase not in (Phase.FORCE_NOTIFIED, Phase.IN_PROGRESS):
            return None
        instants = [occurred_instant(self.calendar, r.on) for r in self.inp.imported_revisits if r.cycle == s.cycle]
        if s.deadline.silent_from is not None:
            instants.append(s.deadline.silent_from)
        elif s.cycle > 1:
            instants.append(s.deadline.opened_at)  # until the inspection tells this cycle's revisit limit
        return min(instants, default=None)

    def _upcoming(self) -> datetime | None:
        """When this recommendation's first message after the adoption is due (None: none is)."""
        times = [m.at for d in self._active_deadlines() for m in d.messages(self.policy, self.calendar)
                 if d.message_key(m) not in d.handled and m.at >= self.adopted_at]
        return min(times, default=None)

    async def _catch_up(self, now: datetime) -> str | None:
        """One past event of an adopted follow-up, in time order: a deadline's message due before the
        adoption (handled, not sent) or an imported action (applied as its Update would)."""
        s = self.state
        due = earliest_before(self._active_deadlines(), self.policy, self.calendar, self.adopted_at)
        imported = self._next_import(now)
        instants = [x for x in (due.message.at if due else None, imported[2] if imported else None) if x is not None]
        barrier = self._barrier()
        if not instants or (barrier is not None and min(instants) >= barrier):
            if self._dirty:
                self._dirty = False
                await self._project()
            return WAIT if instants else CAUGHT_UP
        self._dirty = True
        if due is not None and (imported is None or due.message.at <= imported[2]):
            skip_before_adoption(due, s.history)
            return DID
        await self._take_import(*imported, now)
        return DID

    async def _take_import(self, kind: str, item, at: datetime, now: datetime) -> None:
        s = self.state
        getattr(s.imports, {"progress": "progress", "register": "register", "decision": "decisions"}[kind]).pop(0)
        s.imports_done += 1
        key = f"{self.workflow_id}/import/{s.imports_done}"
        recorded = self.adopted_at
        what = f"{kind} of {item.on.isoformat()}"
        try:
            if kind == "progress":
                request = ProgressRequest(item.claim, item.text, item.by, on=item.on)
                self._judge_progress(request, now)
                async with self._event():
                    await self._progress(request, at, recorded, key)
            elif kind == "register":
                request = RegisterStatusRequest(item.status, item.comment, item.by, on=item.on)
                self._judge_register(request, now)
                async with self._event():
                    await self._register(request, at, recorded, key)
            else:
                if item.cycle != s.cycle:
                    raise ValueError(f"it is for cycle {item.cycle}; the recommendation is in cycle {s.cycle}")
                request = DecisionRequest(item.outcome, item.rationale, item.by, on=item.on)
                self._judge_decision(request, now)
                async with self._event():
                    await self._decide(request, at, recorded, key, notice_at=at)
        except ValueError as exc:
            # self.state: a refused event's write puts back the state from before it (a new object).
            import_refused(self.state.history, self.workflow_id, at, what, str(exc), getattr(item, "by", "system"))
        except ApplicationError as exc:
            if exc.type not in (RECORD_REJECTED, "ActionRefused"):
                raise
            import_refused(self.state.history, self.workflow_id, at, what, exc.message, getattr(item, "by", "system"))

    async def _notify(self, request: NotificationRequest) -> None:
        await notify_unless_before_adoption(self.outbox, request, self.adopted_at, self.state.history)

    def _check_on(self, on: date | None, now: datetime, what: str) -> None:
        check_on(on, published=self.inp.published, today=self._today(now), what=what)

    async def _project(self) -> None:
        projection, pairs = self._projection(self._next_version(), self._now())
        attributes = [key.value_set(value) if value is not None else key.value_unset() for key, value in pairs]
        if self.events.project("recommendation", projection, attributes):
            return  # written with the event, the attributes upserted once it is
        await run_activity("project_recommendation", projection)
        upsert_search_attributes(attributes)

    def _projection(self, version: int, now: datetime) -> tuple[RecommendationProjection, list[tuple]]:
        """The projection of the state as it stands (its next action as at `now`) and the search attributes,
        as (key, value) pairs (None: unset). Reads the state only."""
        s = self.state
        action, at = self._next_action(now)
        projection = RecommendationProjection(
            recommendation_id=self.inp.recommendation_id,
            version=version,
            phase=s.phase.value,
            cycle=s.cycle,
            force_claim=s.force_claim.value if s.force_claim else None,
            outcome=s.outcome.value if s.outcome else None,
            next_action=action,
            next_action_at=at,
            register_status=s.register_status if s.register else None,
        )
        # The next deadline the force has to meet: an evidence deadline once one is asked for.
        next_deadline = min((d.due for d in self._active_deadlines()), default=s.deadline.due)
        pairs = [
            (FORCE_CODE, self.inp.force_code),
            (PROGRAMME, "NCPI"),
            (PHASE, s.phase.value),
            (NEXT_DEADLINE, self.calendar.at(next_deadline, self.calendar.working_day_end) if s.phase is not Phase.CLOSED else None),
        ]
        return projection, pairs

    def _next_version(self) -> int:
        """The version of the projection about to be written; the state keeps the latest (the reconciler
        compares it with the database's)."""
        self.state.projection_version = self.versions.next()
        return self.state.projection_version

    def _next_action(self, now: datetime | None = None) -> tuple[str | None, datetime | None]:
        s = self.state
        due = next_due(self._active_deadlines(), self.policy, self.calendar, self._now() if now is None else now)
        if due is not None:
            return f"{due.message.kind.value.replace('_', ' ')}: {self._label(due.deadline)}", due.message.at
        if s.phase in (Phase.UNDER_REVIEW, Phase.EVIDENCE_REQUESTED):
            return "decision by the inspectorate", None
        if s.phase is Phase.EVIDENCE_SUBMITTED:
            return "revisit (review of the evidence)", None
        if s.phase is Phase.CLOSED:
            return None, None
        return "revisit", None

    # ------------------------------------------------------------------ queries

    @workflow.query(name="state")
    def view(self) -> RecommendationView:
        action, at = self._next_action()
        return RecommendationView(
            recommendation_id=self.inp.recommendation_id,
            workflow_id=self.workflow_id,
            state=self.state,
            register_status=self.state.register_status,
            next_action=action,
            next_action_at=at,
            calendar_now=self._now(),
            time_scale=self.scale,
        )

    def _accepting(self) -> None:
        if self.restart:
            raise ValueError("a new follow-up cycle is starting; try again in a minute")

    # ------------------------------------------------------------------ force actions

    @workflow.update
    async def submit_progress(self, request: ProgressRequest) -> RecommendationView:
        async with self.turn:
            now = await self._action_now()
            refuse_unless(lambda: self._judge_progress(request, now))
            at, recorded = occurred(self.calendar, request.on, now)
            async with self._event():
                await self._progress(request, at, recorded, update_key(self.workflow_id))
            return self._acted()

    async def _progress(self, request: ProgressRequest, at: datetime, recorded: datetime | None, key: str) -> None:
        """Progress reported (`at` when it happened; `recorded` when it was recorded, if back-dated)."""
        s = self.state
        text = request.text.strip()
        await self.events.record(
            "record_progress",
            ProgressRecord(key, self.inp.recommendation_id, request.claim, text, request.by, at, recorded),
        )
        s.force_claim = ForceClaim(request.claim)
        if s.phase is Phase.FORCE_NOTIFIED:
            s.phase = Phase.IN_PROGRESS
        history(s.history, at, "progress reported", request.by, f"{request.claim}: {text}" + recorded_note(self.calendar, recorded))
        await self._project()
        self.wake = True

    @submit_progress.validator
    def _validate_progress(self, request: ProgressRequest) -> None:
        self._judge_progress(request, self._now())

    def _judge_progress(self, request: ProgressRequest, now: datetime) -> None:
        self._accepting()
        check_progress(self.state, request)
        self._check_on(request.on, now, "progress")

    @workflow.update
    async def submit_evidence(self, request: EvidenceRequestInput) -> RecommendationView:
        async with self.turn:
            now = await self._action_now()
            refuse_unless(lambda: self._judge_evidence(request, now))
            s = self.state
            at, recorded = occurred(self.calendar, request.on, now)
            async with self._event() as event:
                s = self.state
                evidence_id = await self.events.record(
                    "record_evidence",
                    EvidenceRecord(update_key(self.workflow_id), self.inp.recommendation_id, s.cycle, request, at, recorded),
                    result_type=int,
                )
                item = EvidenceItem(evidence_id, request.filename, request.sha256, request.size_bytes, request.by, at, s.cycle, recorded)
                s.evidence.append(item)
                if s.evidence_deadline is not None and s.evidence_deadline.met_at is None:
                    s.evidence_deadline.met_at = at
                if s.phase is not Phase.UNDER_REVIEW:
                    s.phase = Phase.UNDER_REVIEW if s.review_open else Phase.EVIDENCE_SUBMITTED
                history(s.history, at, "evidence submitted", request.by,
                        f"{printable(request.filename)} ({request.size_bytes} bytes, sha256 {request.sha256[:12]})" + recorded_note(self.calendar, recorded))
                await self._project()
                self.wake = True
            if event is not None and event.written is not None:
                item.evidence_id = event.written.evidence_id
            return self._acted()

    @submit_evidence.validator
    def _validate_evidence(self, request: EvidenceRequestInput) -> None:
        self._judge_evidence(request, self._now())

    def _judge_evidence(self, request: EvidenceRequestInput, now: datetime) -> None:
        self._accepting()
        check_evidence(self.state, request)
        self._check_on(request.on, now, "evidence")

    # ------------------------------------------------------------------ the revisit

    @workflow.signal
    async def open_review(self, review: OpenReview) -> None:
        async with self.turn:
            async with self._event():
                await self._open_review(review)

    async def _open_review(self, review: OpenReview | None = None) -> None:
        s = self.state
        if s.phase is Phase.CLOSED or s.review_open:
            return
        s.review_open = True
        if review is not None and review.backdated:
            # A past or back-dated revisit: the review opened then. Its evidence request is sent now (a
            # person back-dated the revisit today), or, caught up with on adoption, not at all.
            now = review.revisit_opened_at
            if review.notice_at is not None:  # the inspection says: now (a person's revisit) or the past (caught up)
                notice_at = review.notice_at
            else:
                notice_at = now if self.adopted_at is not None and now < self.adopted_at else await self._step_now()
        else:
            now = notice_at = await self._step_now()
        s.review_opened_at = now
        if any(e.cycle == s.cycle for e in s.evidence):
            s.phase = Phase.UNDER_REVIEW
            history(s.history, now, "under review", detail="evidence already submitted")
        else:
            await self.clock.keep_ahead(self._today(now))
            due = self.calendar.add_working_days(self._today(now), self.policy.review.evidence_due_working_days)
            evidence = TrackedDeadline(
                key="evidence", kind=DeadlineKind.EVIDENCE, party=Party.FORCE, original_due=due, due=due,
                opened_at=now, cycle=s.cycle,
            )
            s.evidence_deadline = evidence
            s.phase = Phase.EVIDENCE_REQUESTED
            key = f"{self.workflow_id}/c{s.cycle}/evidence_request"
            await self.events.record(
                "record_evidence_request",
                EvidenceRequestRecord(key, self.inp.recommendation_id, s.cycle, due,
                                      f"Evidence that recommendation {self.inp.ref} has been implemented"),
                result_type=int,
            )
            await self.events.record(
                "open_deadline",
                DeadlineOpenRecord(self.inp.inspection_id, self.inp.recommendation_id,
                                   f"evidence:{self.inp.ref}", DeadlineKind.EVIDENCE.value, s.cycle, due),
            )
            await self._notify(
                NotificationRequest(
                    idempotency_key=key, kind="evidence_request", inspection_id=self.inp.inspection_id,
                    recommendation_id=self.inp.recommendation_id, recipients=("liaison_officer",),
                    subject=f"Evidence requested: recommendation {self.inp.ref}, by {long_date(due)}",
                    scheduled_for=notice_at, context={"due": due.isoformat(), "cycle": s.cycle},
                )
            )
            history(s.history, now, "evidence requested", detail=f"by {long_date(due)}")
        await self._project()
        self.wake = True

    @workflow.signal
    def revisit_limit(self, limit: RevisitLimit) -> None:
        """The inspection's revisit for this cycle opens at this limit at the latest: own reminders stop there."""
        s = self.state
        if s.phase in (Phase.FORCE_NOTIFIED, Phase.IN_PROGRESS):
            s.deadline.silent_from = self._revisit_opens(limit.revisit_by)
            self.wake = True

    @workflow.signal
    def refresh_calendar(self, fresh: CalendarRefresh) -> None:
        """Newly announced bank holidays (`ncpi calendar refresh`): later dates are computed with them."""
        self.clock.refresh(fresh)
        self.wake = True

    @workflow.update
    async def record_decision(self, request: DecisionRequest) -> RecommendationView:
        async with self.turn:
            now = await self._action_now()
            refuse_unless(lambda: self._judge_decision(request, now))
            at, recorded = occurred(self.calendar, request.on, now)
            async with self._event():
                await self._decide(request, at, recorded, update_key(self.workflow_id), notice_at=now)
            return self._acted()

    async def _decide(self, request: DecisionRequest, at: datetime, recorded: datetime | None, key: str, notice_at: datetime) -> None:
        """A decision made at `at` (recorded at `recorded` when back-dated); its emails are scheduled for
        `notice_at` (now for a person's Update, sent at once; the decision's instant for an imported one)."""
        s = self.state
        outcome = Outcome(request.outcome)
        rationale, by = request.rationale.strip(), request.by.strip()
        await self.events.record(
            "record_decision",
            DecisionRecord(key, self.inp.recommendation_id, s.cycle, outcome.value, rationale, by, at, recorded),
        )
        history(s.history, at, f"decision: {outcome.value}", by, rationale + recorded_note(self.calendar, recorded))
        # Each email carries the facts of its own event: it renders from these, never from the newest row.
        facts = {"outcome": outcome.value, "rationale": rationale, "by": by, "at": at.isoformat(), "cycle": s.cycle}
        await self._notify(
            NotificationRequest(
                idempotency_key=f"{self.workflow_id}/c{s.cycle}/decision", kind="decision",
                inspection_id=self.inp.inspection_id, recommendation_id=self.inp.recommendation_id,
                recipients=FORCE_CONTACTS,
                subject=f"Decision on recommendation {self.inp.ref}: {outcome.value.replace('_', ' ')}",
                scheduled_for=notice_at, context=facts,
            )
        )
        if outcome is Outcome.NOT_ACHIEVED:
            await self._notify(
                NotificationRequest(
                    idempotency_key=f"{self.workflow_id}/c{s.cycle}/not_achieved_escalation", kind="escalation",
                    inspection_id=self.inp.inspection_id, recommendation_id=self.inp.recommendation_id,
                    recipients=NOT_ACHIEVED_ESCALATION,
                    subject=f"Escalation: recommendation {self.inp.ref} not achieved ({self.inp.force_name})",
                    scheduled_for=notice_at, context={**facts, "rung": "not_achieved"},
                )
            )
        s.outcome = outcome
        await self._settle(outcome, at, rationale, by, facts, recorded=recorded, notice_at=notice_at)

    @record_decision.validator
    def _validate_decision(self, request: DecisionRequest) -> None:
        self._judge_decision(request, self._now())

    def _judge_decision(self, request: DecisionRequest, now: datetime) -> None:
        """The validator's rules at a given instant: the handler judges again at its step's instant."""
        self._accepting()
        check_decision(self.state, request, self.calendar, now)
        self._check_on(request.on, now, "the decision")
        opened = self.state.review_opened_at
        if request.on is not None and opened is not None and request.on < self._today(opened):
            raise ValueError(
                f"--on {request.on.isoformat()} is before this cycle's revisit opened on {self._today(opened).isoformat()}: "
                "the decision cannot be dated earlier"
            )

    async def _settle(
        self, outcome: Outcome, now: datetime, rationale: str, by: str, facts: dict,
        recorded: datetime | None = None, notice_at: datetime | None = None,
    ) -> None:
        """Close, or start a further follow-up cycle; tell the inspection either way. `now` is when it was
        decided (a back-dated decision's instant: the further cycle's clock starts then)."""
        s = self.state
        decided_cycle = s.cycle
        further = outcome not in CLOSING_OUTCOMES
        if further:
            await self._start_cycle(now, f"further follow-up after {outcome.value.replace('_', ' ')}", "further_follow_up", facts,
                                    notice_at=notice_at)
        else:
            s.phase = Phase.CLOSED
            s.closed_at = now
            await self._set_register(RegisterStatus.NO_FURTHER_ACTION.value, rationale, by, now, decided_cycle, recorded_at=recorded)
        await self._project()
        await self.events.signal(
            self.inp.parent_workflow_id, "recommendation_settled",
            Settled(self.inp.recommendation_id, decided_cycle, outcome.value, further, now, backdated=recorded is not None,
                    notice_at=notice_at if recorded is not None else None),
        )
        self.wake = True

    async def _set_register(
        self, status: str, comment: str, by: str, at: datetime, cycle: int, key: str | None = None,
        recorded_at: datetime | None = None,
    ) -> None:
        """A step of the public register's trail: in the state, and (for new histories) in the records.
        A back-dated status set by a person (`key`) takes its place in the trail by when it happened; a
        step of a decision or re-opening is always the newest."""
        s = self.state
        entry = RegisterEntry(status, comment, by, at, recorded_at)
        if recorded_at is None or key is None:
            s.register.append(entry)
        else:
            s.register.insert(bisect.bisect_right([e.at for e in s.register], at), entry)
        if key is not None or workflow.patched(REGISTER_TRAIL_PATCH):
            await self.events.record(
                "record_register_status",
                RegisterRecord(key or f"{self.workflow_id}/c{cycle}/register/{len(s.register)}",
                               self.inp.recommendation_id, cycle, status, comment, by, at, recorded_at),
            )

    async def _start_cycle(self, now: datetime, why: str, kind: str, facts: dict, notice_at: datetime | None = None) -> None:
        """The next follow-up cycle, with a new deadline; `kind` names its notice (further_follow_up or reopened)."""
        s = self.state
        s.cycle += 1
        await self.clock.keep_ahead(self._today(now))
        deadline = make_deadline("recommendation", DeadlineKind.RECOMMENDATION, Party.FORCE,
                                 self._today(now), self.policy.deadlines.further_follow_up, self.calendar)
        s.deadline = tracked(deadline, now, cycle=s.cycle)
        s.phase = Phase.IN_PROGRESS
        # The force's claim answered the last cycle's deadline; this cycle's reminders must not wait on it.
        s.force_claim = None
        s.review_open = False
        s.review_opened_at = None
        s.evidence_deadline = None
        s.closed_at = None
        await self.events.record(
            "open_deadline",
            DeadlineOpenRecord(self.inp.inspection_id, self.inp.recommendation_id, f"recommendation:{self.inp.ref}",
                               DeadlineKind.RECOMMENDATION.value, s.cycle, deadline.due),
        )
        subject = (
            f"Recommendation {self.inp.ref} re-opened, new deadline {long_date(deadline.due)}"
            if kind == "reopened"
            else f"Further follow-up: recommendation {self.inp.ref}, new deadline {long_date(deadline.due)}"
        )
        await self._notify(
            NotificationRequest(
                idempotency_key=f"{self.workflow_id}/c{s.cycle}/{kind}", kind=kind,
                inspection_id=self.inp.inspection_id, recommendation_id=self.inp.recommendation_id,
                recipients=FORCE_CONTACTS, subject=subject, scheduled_for=notice_at or now,
                context={**facts, "due": deadline.due.isoformat(), "cycle": s.cycle, "why": why},
            )
        )
        history(s.history, now, f"cycle {s.cycle} opened", detail=f"{why}; due {long_date(deadline.due)}")
        self.restart = True

    # ------------------------------------------------------------------ inspector actions

    @workflow.update
    async def withdraw(self, request: ReasonRequest) -> RecommendationView:
        async with self.turn:
            now = await self._action_now()
            refuse_unless(lambda: self._validate_withdraw(request))
            async with self._event():
                await self._withdraw(request, now)
            return self._acted()

    async def _withdraw(self, request: ReasonRequest, now: datetime) -> None:
        s = self.state
        reason, by = request.reason.strip(), request.by.strip()
        await self.events.record(
            "record_decision",
            DecisionRecord(update_key(self.workflow_id), self.inp.recommendation_id, s.cycle, Outcome.WITHDRAWN.value,
                           reason, by, now),
        )
        history(s.history, now, "withdrawn", by, reason)
        facts = {"outcome": Outcome.WITHDRAWN.value, "rationale": reason, "by": by, "at": now.isoformat(), "cycle": s.cycle}
        await self.outbox.notify(
            NotificationRequest(
                idempotency_key=f"{self.workflow_id}/c{s.cycle}/withdrawn", kind="decision",
                inspection_id=self.inp.inspection_id, recommendation_id=self.inp.recommendation_id,
                recipients=FORCE_CONTACTS, subject=f"Recommendation {self.inp.ref} withdrawn",
                scheduled_for=now, context=facts,
            )
        )
        s.outcome = Outcome.WITHDRAWN
        await self._settle(Outcome.WITHDRAWN, now, reason, by, facts)

    @withdraw.validator
    def _validate_withdraw(self, request: ReasonRequest) -> None:
        self._accepting()
        check_withdraw(self.state, request)

    @workflow.update
    async def reopen(self, request: ReasonRequest) -> RecommendationView:
        async with self.turn:
            now = await self._action_now()
            refuse_unless(lambda: self._judge_reopen(request, now))
            async with self._event():
                await self._reopen(request, now)
            return self._acted()

    async def _reopen(self, request: ReasonRequest, now: datetime) -> None:
        s = self.state
        closed_cycle, previous = s.cycle, s.outcome
        reason, by = request.reason.strip(), request.by.strip()
        await self.events.record(
            "record_reopen",
            ReopenRecord(update_key(self.workflow_id), self.inp.recommendation_id, closed_cycle, reason, by, now),
        )
        history(s.history, now, "re-opened", by, reason)
        s.outcome = None
        reopened = workflow.patched(REGISTER_TRAIL_PATCH)
        facts = {"reason": reason, "by": by, "at": now.isoformat(), "previous_outcome": str(previous) if previous else None}
        # Histories from before the re-opening notice sent a further-follow-up notice instead.
        await self._start_cycle(now, f"re-opened: {reason}", "reopened" if reopened else "further_follow_up", facts)
        if reopened:
            await self._set_register(RegisterStatus.AWAITING_REVIEW.value, reason, by, now, s.cycle)
        await self._project()
        await self.events.signal(
            self.inp.parent_workflow_id, "recommendation_reopened", Reopened(self.inp.recommendation_id, reason, by, s.deadline.due)
        )

    @reopen.validator
    def _validate_reopen(self, request: ReasonRequest) -> None:
        self._judge_reopen(request, self._now())

    def _judge_reopen(self, request: ReasonRequest, now: datetime) -> None:
        """The validator's rules at a given instant: the handler judges again at its step's instant."""
        self._accepting()
        check_reopen(self.state, request)
        window_end = self.state.closed_at + self.policy.review.reopen_window.as_relativedelta()
        if now >= window_end:
            raise ValueError(f"the re-opening window closed on {long_date(self._today(window_end))}")

    @workflow.update
    async def set_register_status(self, request: RegisterStatusRequest) -> RecommendationView:
        async with self.turn:
            now = await self._action_now()
            refuse_unless(lambda: self._judge_register(request, now))
            at, recorded = occurred(self.calendar, request.on, now)
            async with self._event():
                await self._register(request, at, recorded, update_key(self.workflow_id))
            return self._acted()

    async def _register(self, request: RegisterStatusRequest, at: datetime, recorded: datetime | None, key: str) -> None:
        s = self.state
        comment, by = request.comment.strip(), request.by.strip()
        await self._set_register(request.status, comment, by, at, s.cycle, key=key, recorded_at=recorded)
        history(s.history, at, f"register: {request.status}", by, comment + recorded_note(self.calendar, recorded))
        await self._project()

    @set_register_status.validator
    def _validate_register(self, request: RegisterStatusRequest) -> None:
        self._judge_register(request, self._now())

    def _judge_register(self, request: RegisterStatusRequest, now: datetime) -> None:
        self._accepting()
        check_register_status(self.state, request)
        self._check_on(request.on, now, "the register status")

    @workflow.update
    async def revise_deadline(self, request: ReviseDeadlineRequest) -> RecommendationView:
        async with self.turn:
            await self.clock.keep_ahead(request.new_due)  # its reminders may fall past the bank holidays known
            now = await self._action_now()
            refuse_unless(lambda: self._judge_revision(request, now))
            async with self._event():
                deadline = self._deadline_named(request.deadline)
                db_key = f"{request.deadline}:{self.inp.ref}"
                await self.events.record(
                    "record_deadline_revision",
                    DeadlineRevisionRecord(update_key(self.workflow_id), self.inp.inspection_id, db_key, deadline.cycle,
                                           self.inp.recommendation_id, deadline.kind.value, deadline.original_due, deadline.due,
                                           request.new_due, request.reason.strip(), request.by),
                )
                revise(deadline, request.new_due, request.reason.strip(), request.by, now, self.state.history)
                await self._project()
                self.wake = True
            return self._acted()

    @revise_deadline.validator
    def _validate_revision(self, request: ReviseDeadlineRequest) -> None:
        self._judge_revision(request, self._now())

    def _judge_revision(self, request: ReviseDeadlineRequest, now: datetime) -> None:
        """The validator's rules at a given instant: the handler judges again at its step's instant."""
        self._accepting()
        if self.state.phase is Phase.CLOSED:
            raise ValueError("the recommendation is closed; re-open it before changing its deadline")
        today = self._today(now)
        check_revision(self._deadline_named(request.deadline), request, today)
        if not self.calendar.is_working_day(request.new_due):
            raise ValueError(f"{request.new_due.isoformat()} is not a working day")

    def _deadline_named(self, name: str) -> TrackedDeadline | None:
        if name == "recommendation":
            return self.state.deadline
        if name == "evidence":
            return self.state.evidence_deadline
        return None
