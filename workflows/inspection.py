"""One workflow per published report: the report-level clocks, the fan-out to one workflow per
recommendation, the revisit (early on an inspector's word, automatic at the limit), the outcome,
and further follow-up cycles."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import date, datetime, time

from temporalio import workflow
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.exceptions import ApplicationError
from temporalio.workflow import ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from ncpi_workflow.clocks import CalendarRefresh, DeadlineKind, MessageKind, Party, Timeframe, make_deadline, report_deadlines
    from ncpi_workflow.formatting import long_date
    from ncpi_workflow.lifecycle import (
        DeadlineMetRecord,
        DeadlineRevisionRecord,
        DeliveryRequest,
        InspectionInput,
        InspectionPhase,
        InspectionProjection,
        InspectionState,
        InspectionView,
        NotificationRequest,
        OpenReview,
        Outcome,
        RECORD_REJECTED,
        RecommendationInput,
        Reopened,
        ReviseDeadlineRequest,
        RevisitLimit,
        RevisitRecord,
        RevisitResult,
        Settled,
        TrackedDeadline,
        TriggerRevisitRequest,
        AuditRecord,
        check_delivery,
        check_on,
        check_revision,
        check_trigger_revisit,
        inspection_workflow_id,
        next_due,
        occurred_instant,
        recommendation_workflow_id,
        revisit_deadline,
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
from workflows.recommendation import RecommendationWorkflow

# Histories from before this change started the recommendations one after another.
CHILDREN_TOGETHER_PATCH = "recommendations-started-together"
# Histories from before these changes: a re-opened recommendation joined whatever revisit was open, and
# recommendations were not told their revisit limit.
REOPEN_DEFERRED_PATCH = "reopened-waits-for-its-deadline"
REVISIT_LIMIT_PATCH = "revisit-limit-told"
# Histories from before this change projected the inspection only from its own steps, not when a
# recommendation was decided, withdrawn or re-opened.
PROJECT_ON_SETTLEMENT_PATCH = "inspection-projected-on-settlement"
# Histories from before this change continued-as-new with a handler that came in during the settling
# of deliveries still running (UnfinishedSignalHandlersWarning for recommendation_reopened).
HANDLERS_BEFORE_CAN_PATCH = "handlers-finish-before-continue-as-new"
# Likewise on completing: histories from before this change completed ("closed") with a handler that
# came in while the last deliveries drained (a re-opening cut off half done, its cycle never run).
HANDLERS_BEFORE_CLOSE_PATCH = "handlers-finish-before-closing"
# Histories from before this change published in three workflow tasks or more: a 1 ms timer for the
# publication instant already past, the notice recorded (a transaction), the recommendations started, and,
# once they had started, the inspection's projection (another); each recommendation then wrote its first
# projection (one more each) and upserted its search attributes. Behind it the first workflow task writes
# the notice, the inspection's projection and every recommendation's first projection in ONE record_event
# and starts the recommendations, with their search attributes, in the same task.
PUBLICATION_PATCH = "publication-starts-recommendations-first"
DELIVERABLE = ("immediate_update", "action_plan", "pcc_response")
FORCE_AND_PCC = ("liaison_officer", "chief_officer", "pcc")


@workflow.defn(name="InspectionFollowUp")
class InspectionWorkflow:
    @workflow.init
    def __init__(self, inp: InspectionInput) -> None:
        self.inp = inp
        self.policy = inp.policy
        self.clock = CalendarKeeper(inp.calendar)
        self.scale = inp.time_scale
        self.workflow_id = inspection_workflow_id(inp.inspection_id)
        self.published_at = self.calendar.next_send_time(self.calendar.at(inp.published, time(0, 0)))
        self.state = inp.carried or self._initial_state()
        self.revisit_requested_by: str | None = None
        self.revisit_requested_on: date | None = None
        self.adopted_at = inp.adopted_at
        """An adopted follow-up: what falls before this instant is caught up with, never sent."""
        self._dirty = False
        self._waiting_lifted = False
        self.wake = False
        self.restart = False
        self.outbox = Outbox()
        self.events = Events(self.outbox)
        self.turn = one_at_a_time()
        """One action at a time: the main loop's steps, Updates and the signals that await."""
        # Every step takes its "now" from history, and never sends in the task that chose what to send
        # (histories from before this change read the task's clock, and replay that way).
        self.steady = clock_from_history()
        # Projections from this run are versioned above every one written before it, by an earlier run
        # or, for a follow-up restarted from the records, by the chain it replaces.
        self.state.run = ProjectionVersions.next_run(self.state.run, self.state.projection_version)
        self.versions = ProjectionVersions(self.state.run)

    @property
    def calendar(self):
        return self.clock.calendar

    def _initial_state(self) -> InspectionState:
        deadlines = report_deadlines(
            self.inp.published, [(r.ref, Timeframe(r.timeframe)) for r in self.inp.recommendations], self.policy, self.calendar
        )
        report_level = [tracked(d, self.published_at) for d in deadlines if d.kind is not DeadlineKind.RECOMMENDATION]
        state = InspectionState(
            phase=InspectionPhase.FOLLOWING_UP,
            cycle=1,
            deadlines=report_level,
            open_recommendations=[r.recommendation_id for r in self.inp.recommendations],
        )
        history(state.history, self.published_at, "published", detail=f"{len(self.inp.recommendations)} recommendations")
        imported = self.inp.imported
        if imported is not None:
            state.imports = replace(
                imported,
                deliveries=sorted(imported.deliveries, key=lambda i: i.on),
                revisits=sorted(imported.revisits, key=lambda i: (i.cycle, i.on)),
            )
        return state

    def _now(self) -> datetime:
        """This activation's calendar clock: for validators, queries and projections, never for a decision."""
        return calendar_now(self.scale)

    async def _step_now(self) -> datetime:
        """The calendar instant of the step that starts here, kept in history (see `step_now`)."""
        return await step_now(self.scale)

    def _today(self, now: datetime) -> date:
        return now.astimezone(self.calendar.zone).date()

    def _accepting(self) -> None:
        if self.restart:
            raise ValueError("a new follow-up cycle is starting; try again in a minute")

    def _active_deadlines(self) -> list[TrackedDeadline]:
        active = [d for d in self.state.deadlines if d.met_at is None and d.kind is not DeadlineKind.REVISIT_BY]
        if self.state.phase is InspectionPhase.FOLLOWING_UP:
            active.append(revisit_deadline(self.state))
        return active

    # ------------------------------------------------------------------ main loop

    @workflow.run
    async def run(self, inp: InspectionInput) -> str:
        self.outbox.resume(self.state.undelivered)
        self.state.undelivered = []
        if inp.carried is None and workflow.patched(PUBLICATION_PATCH):
            await self._publish_in_one_event()  # projected with it
        else:
            if inp.carried is None:
                await self._publish()
            await self._project()
        while True:
            if self.restart:
                await workflow.wait_condition(workflow.all_handlers_finished)
                await self.events.sent()
                self.state.undelivered = await self.outbox.settle()
                # A signal (a re-opening) or an Update that came in while the deliveries settled
                # finishes first, its deliveries with it: its work goes to the next run, never half done.
                while not workflow.all_handlers_finished() and workflow.patched(HANDLERS_BEFORE_CAN_PATCH):
                    await workflow.wait_condition(workflow.all_handlers_finished)
                    self.state.undelivered = await self.outbox.settle()
                await self.events.sent()
                workflow.continue_as_new(replace(self.inp, carried=self.state, calendar=self.calendar))
            s = self.state
            if s.phase is InspectionPhase.CLOSED and not self._imports_pending():
                window_end = s.closed_at + self.policy.review.reopen_window.as_relativedelta()
                reopened = await wait_until(self.scale, lambda: self.restart, window_end)
                if not reopened:
                    await workflow.wait_condition(workflow.all_handlers_finished)
                    if not self.restart:  # no re-opening came in meanwhile
                        await self.outbox.drain()
                        # A signal (a re-opening) or an Update that came in while the deliveries drained
                        # finishes first, its deliveries with it; a re-opening carries the follow-up on.
                        while not workflow.all_handlers_finished() and workflow.patched(HANDLERS_BEFORE_CLOSE_PATCH):
                            await workflow.wait_condition(workflow.all_handlers_finished)
                            if self.restart:
                                break
                            await self.outbox.drain()
                        if not self.restart:
                            await self.events.sent()
                            return "closed"
                continue
            now = self._now()
            caught = CAUGHT_UP
            async with self.turn:
                if self.steady:
                    now = await self._step_now()
                if await self.clock.keep_ahead(max([self._today(now), *(d.due for d in self._active_deadlines())])):
                    continue
                if s.phase is InspectionPhase.FOLLOWING_UP and self.revisit_requested_by:
                    on, self.revisit_requested_on = self.revisit_requested_on, None
                    at, recorded = occurred(self.calendar, on, now) if self.steady else (None, None)
                    async with self._event():
                        if recorded is not None:  # back-dated: it opened on its fieldwork's first day
                            await self._open_revisit("inspector", self.revisit_requested_by, at, recorded=recorded, notice_at=now, backdated=True)
                        else:
                            await self._open_revisit("inspector", self.revisit_requested_by, now if self.steady else None)
                    continue
                if s.phase is InspectionPhase.REVISIT_OPEN and self._all_settled():
                    async with self._event():
                        await self._finish_cycle(now if self.steady else None)
                    continue
                if self.adopted_at is not None and self.steady:
                    caught = await self._catch_up(now)
                    if caught == DID:
                        if workflow.info().is_continue_as_new_suggested():
                            self.restart = True
                        continue
                # Chosen here, sent after the timer (however short) in a later workflow task: a retried
                # task sends what this one chose, with the row it recorded, instead of choosing again.
                due = next_due(self._active_deadlines(), self.policy, self.calendar, now)
            if caught == WAIT:
                # An imported revisit of the next cycle: it waits for this cycle's decisions; should they not
                # have come by the inspection's next message after the adoption, that message goes as usual.
                settled = await wait_until(self.scale, lambda: self.wake or self.restart or bool(self.revisit_requested_by),
                                           self._upcoming())
                self.wake = False
                if not settled:
                    self._waiting_lifted = True
                continue
            woken = await wait_until(
                self.scale, lambda: self.wake or self.restart or bool(self.revisit_requested_by), due.message.at if due else None
            )
            self.wake = False
            if woken or due is None:
                continue
            async with self.turn:
                if self.turn.guards and not self._still_due(due):
                    continue  # an action changed this deadline while the timer ran
                if due.message.kind is MessageKind.REVISIT_OPENS:
                    at = await self._step_now() if self.steady else None
                    async with self._event():
                        due.deadline.handled.append(due.deadline.message_key(due.message))
                        await self._open_revisit("automatic", "system", at)
                else:
                    await self._send_and_project(due)
            if workflow.info().is_continue_as_new_suggested():
                self.restart = True

    def _still_due(self, due) -> bool:
        """Whether a message chosen before waiting is still owed: an action may have come meanwhile."""
        deadline = due.deadline
        return (
            any(d is deadline for d in self._active_deadlines())
            and deadline.message_key(due.message) not in deadline.handled
            and due.message in deadline.messages(self.policy, self.calendar)
        )

    def _published_notice(self) -> NotificationRequest:
        lines = [f"{r.ref} ({r.timeframe.replace('_', ' ')})" for r in self.inp.recommendations]
        return NotificationRequest(
            idempotency_key=f"{self.workflow_id}/published", kind="published", inspection_id=self.inp.inspection_id,
            recommendation_id=None, recipients=FORCE_AND_PCC,
            subject=f"Inspection report published: {self.inp.title}",
            scheduled_for=self.published_at,
            context={"recommendations": lines, "deadlines": {d.key: d.due.isoformat() for d in self.state.deadlines}},
        )

    async def _publish(self) -> None:
        """The report notice to the force, then one child workflow per recommendation (histories from before
        PUBLICATION_PATCH)."""
        await wait_until(self.scale, lambda: False, self.published_at)
        await self._notify(self._published_notice())
        starts = [self._start_recommendation(rec) for rec in self.inp.recommendations]
        if workflow.patched(CHILDREN_TOGETHER_PATCH):
            # All in one workflow task: one round trip to the server instead of one per recommendation.
            await asyncio.gather(*starts)
        else:
            for start in starts:
                await start

    async def _publish_in_one_event(self) -> None:
        """PUBLICATION_PATCH: the report notice, the inspection's projection and each recommendation's first
        projection in one event (one transaction), then every recommendation started, with its search
        attributes, in the same workflow task.

        Waited for only when publication is still to come when the workflow started: an instant already
        past then is past at any later clock, so the choice (decided from the start's time, in history) is
        the same on every replay, and there is no 1 ms timer to wait for."""
        if self.scale.to_clock(self.published_at) > workflow.info().workflow_start_time:
            await wait_until(self.scale, lambda: False, self.published_at)
        now = self._now()
        inputs = [self._recommendation_input(rec, revisit_limit_told=True, started_by_publication=True)
                  for rec in self.inp.recommendations]
        firsts = [RecommendationWorkflow.first_projection(i, now) for i in inputs]
        async with self.turn:
            async with self._event() as event:
                await self._notify(self._published_notice())
                event.write.first_projections.extend(projection for projection, _ in firsts)
                await self._project()
        await asyncio.gather(*(
            self._start(i, TypedSearchAttributes([SearchAttributePair(k, v) for k, v in pairs if v is not None]))
            for i, (_, pairs) in zip(inputs, firsts)
        ))

    def _recommendation_input(self, rec, *, revisit_limit_told: bool, started_by_publication: bool = False) -> RecommendationInput:
        return RecommendationInput(
            inspection_id=self.inp.inspection_id, recommendation_id=rec.recommendation_id, ref=rec.ref,
            force_code=self.inp.force_code, force_name=self.inp.force_name, timeframe=rec.timeframe,
            published=self.inp.published, policy=self.policy, calendar=self.calendar,
            time_scale=self.scale, parent_workflow_id=self.workflow_id,
            revisit_by=revisit_deadline(self.state).due if revisit_limit_told else None,
            adopted_at=self.adopted_at, imported=rec.imported,
            imported_revisits=list(self.inp.imported.revisits) if self.inp.imported is not None else [],
            started_by_publication=started_by_publication,
        )

    async def _start_recommendation(self, rec) -> None:
        await self._start(self._recommendation_input(rec, revisit_limit_told=workflow.patched(REVISIT_LIMIT_PATCH)))

    async def _start(self, inp: RecommendationInput, search_attributes: TypedSearchAttributes | None = None) -> None:
        await workflow.start_child_workflow(
            RecommendationWorkflow.run,
            inp,
            id=recommendation_workflow_id(inp.recommendation_id),
            # Children outlive each run of this workflow: it continues-as-new between cycles.
            parent_close_policy=ParentClosePolicy.ABANDON,
            search_attributes=search_attributes,
        )

    async def _send_and_project(self, due) -> None:
        await send_due_and_project(self._event, self._send, self._project, self._active_deadlines, due)

    def _event(self):
        """One event's writes in one transaction (workflows.common.EVENT_PATCH); a refused write leaves the
        state as it was before the event."""
        return self.events.event(self.turn.guards, self._keep, self._restore)

    def _keep(self):
        return snapshot(self.state), self.restart, self.wake, self.revisit_requested_by, self.revisit_requested_on

    def _restore(self, saved) -> None:
        self.state, self.restart, self.wake, self.revisit_requested_by, self.revisit_requested_on = saved

    async def _send(self, due) -> None:
        if self.adopted_at is not None and due.message.at < self.adopted_at:
            skip_before_adoption(due, self.state.history)
            return
        await send_due_message(
            self.outbox, self.workflow_id, due, label=due.deadline.as_deadline(self.calendar).label,
            inspection_id=self.inp.inspection_id, recommendation_id=None, force_name=self.inp.force_name,
            cycle=self.state.cycle, entries=self.state.history,
        )

    # ------------------------------------------------------------------ adoption: catching up with the past

    def _imports_pending(self) -> bool:
        i = self.state.imports
        return i is not None and bool(i.deliveries or i.revisits)

    async def _notify(self, request: NotificationRequest) -> None:
        await notify_unless_before_adoption(self.outbox, request, self.adopted_at, self.state.history)

    def _next_import(self, now: datetime):
        """The earliest imported action not yet taken in: (kind, item, instant), or None."""
        i = self.state.imports
        if i is None:
            return None
        heads = [(items[0].on, order, kind, items[0]) for order, (kind, items) in
                 enumerate((("delivery", i.deliveries), ("revisit", i.revisits))) if items]
        if not heads:
            return None
        on, _, kind, item = min(heads, key=lambda h: (h[0], h[1]))
        return kind, item, now if on == self._today(now) else occurred_instant(self.calendar, on)

    async def _catch_up(self, now: datetime) -> str | None:
        """One past event of an adopted follow-up, in time order: a deadline's message due before the
        adoption (handled, not sent; the automatic revisit opens at its own instant) or an imported
        action (applied as its Update would)."""
        s = self.state
        due = earliest_before(self._active_deadlines(), self.policy, self.calendar, self.adopted_at)
        imported = self._next_import(now)
        if imported is not None and (due is None or imported[2] < due.message.at):
            kind, item, at = imported
            if kind == "revisit" and item.cycle == s.cycle + 1 and s.phase is InspectionPhase.REVISIT_OPEN:
                # The next cycle's revisit: after this cycle's decisions (meanwhile, what is due goes as usual).
                return await self._caught_up(CAUGHT_UP if self._waiting_lifted else WAIT)
            self._dirty = True
            await self._take_import(kind, item, at, now)
            return DID
        if due is None:
            return await self._caught_up(CAUGHT_UP)
        self._dirty = True
        if due.message.kind is MessageKind.REVISIT_OPENS:
            due.deadline.handled.append(due.deadline.message_key(due.message))
            await self._open_revisit("automatic", "system", due.message.at, recorded=self.adopted_at,
                                     notice_at=due.message.at, backdated=True)
        else:
            skip_before_adoption(due, s.history)
        return DID

    def _upcoming(self) -> datetime | None:
        """When the inspection's first message after the adoption is due (None: none is)."""
        times = [m.at for d in self._active_deadlines() for m in d.messages(self.policy, self.calendar)
                 if d.message_key(m) not in d.handled and m.at >= self.adopted_at]
        return min(times, default=None)

    async def _caught_up(self, result: str | None) -> str | None:
        if self._dirty:
            self._dirty = False
            await self._project()
        return result

    async def _take_import(self, kind: str, item, at: datetime, now: datetime) -> None:
        s = self.state
        (s.imports.deliveries if kind == "delivery" else s.imports.revisits).pop(0)
        s.imports_done += 1
        key = f"{self.workflow_id}/import/{s.imports_done}"
        what = f"{kind} of {item.on.isoformat()}"
        try:
            if kind == "delivery":
                request = DeliveryRequest(item.item, item.by, item.note, item.sha256, item.filename, item.url, on=item.on)
                self._judge_delivery(request, now)
                await self._deliver(request, at, self.adopted_at, key)
            else:
                if item.trigger not in ("inspector", "automatic"):
                    raise ValueError(f"unknown revisit trigger {item.trigger!r}; use inspector or automatic")
                if item.cycle != s.cycle:
                    raise ValueError(f"it is for cycle {item.cycle}; the follow-up is in cycle {s.cycle}")
                request = TriggerRevisitRequest(item.by, on=item.on)
                check_trigger_revisit(request)
                if s.phase is not InspectionPhase.FOLLOWING_UP:
                    raise ValueError(f"the revisit of cycle {s.cycle} is already open or done")
                self._check_revisit_on(request.on, now)
                await self._open_revisit(item.trigger, item.by.strip(), at, recorded=self.adopted_at, notice_at=at, backdated=True)
        except ValueError as exc:
            import_refused(s.history, self.workflow_id, at, what, str(exc), getattr(item, "by", "system"))
        except ApplicationError as exc:
            if exc.type != RECORD_REJECTED:
                raise
            import_refused(s.history, self.workflow_id, at, what, exc.message, getattr(item, "by", "system"))

    # ------------------------------------------------------------------ the revisit

    async def _open_revisit(
        self, trigger: str, by: str, now: datetime | None = None, *, recorded: datetime | None = None,
        notice_at: datetime | None = None, backdated: bool = False,
    ) -> None:
        """Open this cycle's revisit at `now`. A past or back-dated one (`backdated`) is recorded at
        `recorded`, its notice scheduled for `notice_at`, and the recommendations open their review then."""
        s = self.state
        now = now or self._now()
        self.revisit_requested_by = None
        limit = revisit_deadline(s)
        limit.handled.extend(limit.message_key(m) for m in limit.messages(self.policy, self.calendar))
        await self.events.record(
            "record_revisit",
            RevisitRecord(f"{self.workflow_id}/c{s.cycle}/revisit", self.inp.inspection_id, s.cycle, trigger, by, now, recorded),
        )
        await self._notify(
            NotificationRequest(
                idempotency_key=f"{self.workflow_id}/c{s.cycle}/revisit_opened", kind="revisit_opened",
                inspection_id=self.inp.inspection_id, recommendation_id=None,
                recipients=("liaison_officer", "chief_officer", "inspectors"),
                subject=f"Revisit of {self.inp.force_name} opened ({'by an inspector' if trigger == 'inspector' else 'at the six-month limit'})",
                scheduled_for=notice_at or now,
                context={"trigger": trigger, "by": by, "cycle": s.cycle, "open": list(s.open_recommendations)},
            )
        )
        history(s.history, now, f"revisit opened ({trigger})", by,
                f"{len(s.open_recommendations)} recommendations under review" + recorded_note(self.calendar, recorded))
        review = OpenReview(s.cycle, now, backdated=backdated, notice_at=(notice_at or now) if backdated else None)
        for rec_id in list(s.open_recommendations):
            # In an event (see workflows.common.EVENT_PATCH): sent once it is written, not awaited one by one.
            await self.events.signal(recommendation_workflow_id(rec_id), "open_review", review)
        # Only now is the revisit open: an inspector's trigger_revisit returns once all of the above is done.
        s.phase = InspectionPhase.REVISIT_OPEN
        s.revisit_opened_at, s.revisit_trigger, s.revisit_by = now, trigger, by
        s.settled = {}
        s.settled_latest, s.settled_backdated, s.settled_notice_at = None, False, None
        await self._project()

    def _all_settled(self) -> bool:
        return all(r in self.state.settled for r in self.state.open_recommendations)

    async def _finish_cycle(self, now: datetime | None = None) -> None:
        s = self.state
        now = now or self._now()
        notice_at = now
        if s.settled_backdated and s.settled_latest is not None:
            now = s.settled_latest  # decided (back-dated or imported) then: the next cycle counts from then
            # Sent at once when a person decided (back-dated or not); imported decisions' past: not sent.
            notice_at = s.settled_notice_at or now
        outcomes = {r: s.settled[r] for r in s.open_recommendations}
        further = [r for r, o in outcomes.items() if o in (Outcome.PARTIALLY_ACHIEVED.value, Outcome.NOT_ACHIEVED.value)]
        await self._notify(
            NotificationRequest(
                idempotency_key=f"{self.workflow_id}/c{s.cycle}/revisit_outcome", kind="revisit_outcome",
                inspection_id=self.inp.inspection_id, recommendation_id=None, recipients=FORCE_AND_PCC,
                subject=f"Outcome of the revisit of {self.inp.force_name}"
                + (f": {len(further)} recommendations followed up further" if further else ": all recommendations closed"),
                scheduled_for=notice_at, context={"cycle": s.cycle, "outcomes": outcomes},
            )
        )
        history(s.history, now, f"revisit cycle {s.cycle} decided", detail=", ".join(f"{r}: {o}" for r, o in outcomes.items()))
        if further or s.deferred:
            await self._next_cycle(now, further + [r for r in s.deferred if r not in further])
        else:
            s.phase = InspectionPhase.CLOSED
            s.closed_at = now
            await self._project()

    async def _next_cycle(self, now: datetime, open_recommendations: list[str]) -> None:
        s = self.state
        s.cycle += 1
        await self.clock.keep_ahead(self._today(now))
        limit = tracked(make_deadline("revisit_by", DeadlineKind.REVISIT_BY, Party.INSPECTORATE, self._today(now),
                                      self.policy.deadlines.further_follow_up, self.calendar), now, cycle=s.cycle)
        # A re-opened recommendation is revisited no earlier than its new deadline.
        latest_due = max((s.deferred[r] for r in open_recommendations if r in s.deferred), default=None)
        if latest_due is not None and latest_due > limit.due:
            limit.due = limit.original_due = latest_due
        s.deadlines = [d for d in s.deadlines if d.kind is not DeadlineKind.REVISIT_BY] + [limit]
        s.open_recommendations = open_recommendations
        s.settled = {}
        s.settled_latest, s.settled_backdated, s.settled_notice_at = None, False, None
        s.deferred = {}
        s.phase = InspectionPhase.FOLLOWING_UP
        s.revisit_opened_at = s.revisit_trigger = s.revisit_by = s.closed_at = None
        history(s.history, now, f"cycle {s.cycle} opened", detail=f"revisit no later than {long_date(limit.due)}")
        await self._tell_revisit_limit(open_recommendations, limit.due)
        self.restart = True

    async def _tell_revisit_limit(self, recommendation_ids: list[str], revisit_by: date) -> None:
        """Each recommendation's own reminders stop when the revisit opens: tell them when it will at the latest."""
        if not workflow.patched(REVISIT_LIMIT_PATCH):
            return
        if self.events.current is not None:  # in an event: sent once it is written, not awaited
            for r in recommendation_ids:
                await self.events.signal(recommendation_workflow_id(r), "revisit_limit", RevisitLimit(revisit_by))
            return
        await asyncio.gather(*(
            workflow.get_external_workflow_handle(recommendation_workflow_id(r)).signal(
                RecommendationWorkflow.revisit_limit, RevisitLimit(revisit_by)
            )
            for r in recommendation_ids
        ))

    @workflow.signal
    async def recommendation_settled(self, settled: Settled) -> None:
        # After any revisit opening in progress: a decision made as it opens counts for it.
        async with self.turn:
            if self._settled(settled) and workflow.patched(PROJECT_ON_SETTLEMENT_PATCH):
                await self._project()  # what the inspection waits for has changed

    def _settled(self, settled: Settled) -> bool:
        """True when the settlement changed what the inspection waits for."""
        s = self.state
        # When it was decided is in the signal: the same on every replay, unlike this task's clock.
        at = settled.decided_at if self.steady else self._now()
        if not settled.open and s.deferred.pop(settled.recommendation_id, None) is not None:
            # Withdrawn while waiting for the next revisit.
            history(s.history, at, f"{settled.recommendation_id}: {settled.outcome}")
            self.wake = True
            return True
        if settled.recommendation_id not in s.open_recommendations:
            return False
        if s.phase is InspectionPhase.REVISIT_OPEN:
            s.settled[settled.recommendation_id] = settled.outcome
            if s.settled_latest is None or settled.decided_at > s.settled_latest:
                s.settled_latest = settled.decided_at
            s.settled_backdated = s.settled_backdated or settled.backdated
            if settled.backdated and settled.notice_at is not None and (
                    s.settled_notice_at is None or settled.notice_at > s.settled_notice_at):
                s.settled_notice_at = settled.notice_at
        elif not settled.open:
            # Closed before the revisit (withdrawn): nothing left to review.
            s.open_recommendations.remove(settled.recommendation_id)
        history(s.history, at, f"{settled.recommendation_id}: {settled.outcome}")
        self.wake = True
        return True

    @workflow.signal
    async def recommendation_reopened(self, reopened: Reopened) -> None:
        async with self.turn:
            await self._reopened(reopened)
            if workflow.patched(PROJECT_ON_SETTLEMENT_PATCH):
                await self._project()  # what the inspection waits for has changed

    async def _reopened(self, reopened: Reopened) -> None:
        s = self.state
        now = await self._step_now()
        history(s.history, now, f"{reopened.recommendation_id} re-opened", reopened.by, reopened.reason)
        rec = reopened.recommendation_id
        if reopened.due is not None and workflow.patched(REOPEN_DEFERRED_PATCH):
            # Reviewed at a revisit no earlier than its new deadline: the force is not asked for evidence
            # of a re-opened recommendation before the deadline it has just been given.
            s.settled.pop(rec, None)
            if rec in s.open_recommendations:
                s.open_recommendations.remove(rec)
            if s.phase is InspectionPhase.FOLLOWING_UP and revisit_deadline(s).due >= reopened.due:
                s.open_recommendations.append(rec)
                await self._tell_revisit_limit([rec], revisit_deadline(s).due)
            else:
                s.deferred[rec] = reopened.due
                if s.phase is InspectionPhase.CLOSED:
                    await self._next_cycle(now, [rec])
            self.wake = True
            return
        if s.phase is InspectionPhase.CLOSED:
            await self._next_cycle(now, [rec])
        else:
            s.settled.pop(rec, None)  # its decision in this cycle no longer stands
            if rec not in s.open_recommendations:
                s.open_recommendations.append(rec)
            if s.phase is InspectionPhase.REVISIT_OPEN:
                await workflow.get_external_workflow_handle(recommendation_workflow_id(rec)).signal(
                    RecommendationWorkflow.open_review, OpenReview(s.cycle, now)
                )
        self.wake = True

    @workflow.update
    async def trigger_revisit(self, request: TriggerRevisitRequest) -> RevisitResult:
        self.revisit_requested_by = request.by.strip()
        self.revisit_requested_on = request.on
        self.wake = True
        # Once the revisit's event is written too (an event being written may yet be refused and undone).
        await workflow.wait_condition(lambda: self.state.revisit_opened_at is not None and not self.events.busy)
        s = self.state
        return RevisitResult(self.inp.inspection_id, s.cycle, s.revisit_opened_at, s.revisit_trigger, s.revisit_by)

    @trigger_revisit.validator
    def _validate_trigger(self, request: TriggerRevisitRequest) -> None:
        check_trigger_revisit(request)
        self._accepting()
        self._check_revisit_on(request.on, self._now())
        if self.state.phase is InspectionPhase.REVISIT_OPEN:
            opened = self.calendar.local(self.state.revisit_opened_at)
            raise ValueError(f"the revisit of cycle {self.state.cycle} is already open (since {opened:%Y-%m-%d})")
        if self.state.phase is InspectionPhase.CLOSED:
            raise ValueError("every recommendation of this report is closed; there is nothing to revisit")
        if self.revisit_requested_by:
            raise ValueError("a revisit has already been requested")

    # ------------------------------------------------------------------ report-level deliveries and deadlines

    @workflow.update
    async def record_delivery(self, request: DeliveryRequest) -> InspectionView:
        async with self.turn:
            refuse_unless(lambda: self._validate_delivery(request))
            now = await self._step_now()
            refuse_unless(lambda: self._check_on(request.on, now, f"the {request.item.replace('_', ' ')}"))
            at, recorded = occurred(self.calendar, request.on, now)
            async with self._event():
                await self._deliver(request, at, recorded, update_key(self.workflow_id))
            return self.view()

    async def _deliver(self, request: DeliveryRequest, at: datetime, recorded: datetime | None, key: str) -> None:
        """A report-level item received at `at` (recorded at `recorded` when back-dated): its deadline is met then."""
        deadline = self._deadline(request.item)
        deadline.met_at = at
        await self.events.record("mark_deadline_met", DeadlineMetRecord(self.inp.inspection_id, deadline.key, deadline.cycle, at, recorded))
        # The document received, when the request names one (the portal's, an email's): with the
        # record, never a new command, so histories from before it replay unchanged.
        document = {k: v for k in ("filename", "sha256", "url") if (v := getattr(request, k, None)) is not None}
        audit = {"note": request.note, **document}
        if recorded is not None:
            audit["happened_at"] = at.isoformat()  # as the record activities mark a back-dated action
        await self.events.record(
            "audit",
            AuditRecord(key, request.by, f"{request.item}.received", "inspection", self.inp.inspection_id, audit),
        )
        shown = "; ".join(x for x in (request.note, document.get("filename") or document.get("url") or "") if x)
        history(self.state.history, at, f"{request.item.replace('_', ' ')} received", request.by, shown + recorded_note(self.calendar, recorded))
        await self._project()
        self.wake = True

    def _check_on(self, on: date | None, now: datetime, what: str) -> None:
        check_on(on, published=self.inp.published, today=self._today(now), what=what)

    def _check_revisit_on(self, on: date | None, now: datetime) -> None:
        self._check_on(on, now, "the revisit")
        if on is not None and self.state.phase is InspectionPhase.FOLLOWING_UP:
            opened = self._today(revisit_deadline(self.state).opened_at)
            if on < opened:
                raise ValueError(f"--on {on.isoformat()} is before this follow-up cycle opened on {opened.isoformat()}")

    @record_delivery.validator
    def _validate_delivery(self, request: DeliveryRequest) -> None:
        self._judge_delivery(request, self._now())

    def _judge_delivery(self, request: DeliveryRequest, now: datetime) -> None:
        self._accepting()
        check_delivery(request)
        self._check_on(request.on, now, f"the {request.item.replace('_', ' ')}")
        if request.item not in DELIVERABLE:
            raise ValueError(f"unknown item {request.item!r}; use one of: {', '.join(DELIVERABLE)}")
        deadline = self._deadline(request.item)
        if deadline is None:
            raise ValueError(f"this report has no {request.item} deadline")
        if deadline.met_at is not None:
            received = self.calendar.local(deadline.met_at)
            raise ValueError(f"the {request.item.replace('_', ' ')} was already received on {received:%Y-%m-%d}")

    @workflow.update
    async def revise_deadline(self, request: ReviseDeadlineRequest) -> InspectionView:
        async with self.turn:
            await self.clock.keep_ahead(request.new_due)  # its reminders may fall past the bank holidays known
            now = await self._step_now()
            refuse_unless(lambda: self._judge_revision(request, now))
            async with self._event():
                deadline = self._deadline(request.deadline)
                await self.events.record(
                    "record_deadline_revision",
                    DeadlineRevisionRecord(update_key(self.workflow_id), self.inp.inspection_id, deadline.key, deadline.cycle,
                                           None, deadline.kind.value, deadline.original_due, deadline.due, request.new_due,
                                           request.reason.strip(), request.by),
                )
                revise(deadline, request.new_due, request.reason.strip(), request.by, now, self.state.history)
                if deadline.kind is DeadlineKind.REVISIT_BY:
                    await self._tell_revisit_limit([r for r in self.state.open_recommendations if r not in self.state.settled], deadline.due)
                await self._project()
                self.wake = True
            return self.view()

    @revise_deadline.validator
    def _validate_revision(self, request: ReviseDeadlineRequest) -> None:
        self._judge_revision(request, self._now())

    def _judge_revision(self, request: ReviseDeadlineRequest, now: datetime) -> None:
        """The validator's rules at a given instant: the handler judges again at its step's instant."""
        self._accepting()
        deadline = self._deadline(request.deadline)
        latest = None
        if deadline is not None and deadline.kind is DeadlineKind.REVISIT_BY:
            if self.state.phase is not InspectionPhase.FOLLOWING_UP:
                raise ValueError("the revisit is already open or done; its limit can no longer change")
            latest = deadline.original_due  # "no later than": the limit may move earlier, never later
        today = now.astimezone(self.calendar.zone).date()
        check_revision(deadline, request, today, latest)
        if not self.calendar.is_working_day(request.new_due):
            raise ValueError(f"{request.new_due.isoformat()} is not a working day")

    def _deadline(self, key: str) -> TrackedDeadline | None:
        return next((d for d in self.state.deadlines if d.key == key), None)

    # ------------------------------------------------------------------ projection and queries

    def _next_action(self) -> tuple[str | None, datetime | None]:
        s = self.state
        if s.phase is InspectionPhase.CLOSED:
            return None, None
        if s.phase is InspectionPhase.REVISIT_OPEN:
            waiting = [r for r in s.open_recommendations if r not in s.settled]
            return f"decisions awaited on {len(waiting)} recommendations", None
        due = next_due(self._active_deadlines(), self.policy, self.calendar, self._now())
        if due is None:
            return None, None
        label = due.deadline.as_deadline(self.calendar).label
        return f"{due.message.kind.value.replace('_', ' ')}: {label}", due.message.at

    def _next_version(self) -> int:
        """The version of the projection about to be written; the state keeps the latest (the reconciler
        compares it with the database's)."""
        self.state.projection_version = self.versions.next()
        return self.state.projection_version

    async def _project(self) -> None:
        s = self.state
        action, at = self._next_action()
        projection = InspectionProjection(self.inp.inspection_id, self._next_version(), s.phase.value, s.cycle, action, at)
        limit = revisit_deadline(s)
        attributes = [
            FORCE_CODE.value_set(self.inp.force_code),
            PROGRAMME.value_set(self.inp.programme),
            PHASE.value_set(s.phase.value),
            NEXT_DEADLINE.value_set(self.calendar.at(limit.due, self.calendar.working_day_end))
            if s.phase is InspectionPhase.FOLLOWING_UP
            else NEXT_DEADLINE.value_unset(),
        ]
        if self.events.project("inspection", projection, attributes):
            return  # written with the event, the attributes upserted once it is
        await run_activity("project_inspection", projection)
        upsert_search_attributes(attributes)

    @workflow.query(name="state")
    def view(self) -> InspectionView:
        action, at = self._next_action()
        return InspectionView(self.inp.inspection_id, self.workflow_id, self.state, action, at, self._now(), self.scale)

    @workflow.signal
    def refresh_calendar(self, fresh: CalendarRefresh) -> None:
        """Newly announced bank holidays (`ncpi calendar refresh`): later dates are computed with them."""
        self.clock.refresh(fresh)
        self.wake = True
