"""A pure reference model of the follow-up rules: one inspection and its recommendations.

Written from the rules (design brief, issue 10), not from workflows/ or ncpi_workflow.lifecycle:
it decides on its own which action is allowed when, what each step changes, and which
notification each step and each passing day produces. It borrows only the domain's calendar
arithmetic from ncpi_workflow.clocks (working days, and `deadline_messages`: the reminder and
escalation ladder of one deadline).

Time is the policy calendar (UTC instants; dates in Europe/London). The model is a discrete-event
simulation: `advance_to` delivers every timed event (a deadline message, the automatic revisit,
the end of a re-open window) up to an instant, in time order; actions happen at `now`.

The rules encoded:

Recommendation: force_notified -> in_progress (first progress) -> evidence_requested (revisit
opened, no evidence this cycle) / evidence_submitted (evidence before the revisit) -> under_review
(revisit open and evidence this cycle) -> closed. Cycle starts at 1.
- Own deadline messages (deadline_messages, not_before = when the deadline was opened or last
  revised) go out while force_notified or in_progress and the force's claim is not implemented;
  past unsent messages of one deadline collapse to the latest. A cycle-1 recommendation's own
  messages at or after the cycle-1 revisit instant (revisit_by at send_at) are never sent.
  Evidence-deadline messages go out while evidence_requested.
- progress: any claim, refused when closed; force_notified -> in_progress; never the register.
- evidence: refused when closed or a file (SHA-256) already submitted; meets the evidence
  deadline; -> under_review if the revisit is open for it, else evidence_submitted.
- revisit opening: each recommendation in it -> under_review (evidence this cycle) or
  evidence_requested (evidence due today + evidence_due_working_days; `evidence_request`).
- decision: only under_review, or evidence_requested past the end of the evidence due day;
  outcome withdrawn refused. achieved/superseded close; partially/not achieved: cycle + 1, new
  deadline decision day + further_follow_up (next working day), in_progress, claim reset;
  notices `decision`, for not achieved `escalation`, then `further_follow_up`.
- withdraw: any phase but closed; closes; `decision`.
- reopen: closed, within reopen_window of closing: cycle + 1, deadline reopen day +
  further_follow_up, in_progress, claim reset, `reopened`; register "awaiting review".
- register: starts "awaiting review"; set_register_status to awaiting review / being progressed /
  will be progressed, comment and by non-empty, refused when closed; a closing decision
  (achieved, superseded, withdrawn) adds "no further action needed".

Inspection: following_up -> revisit_open (trigger_revisit early, or automatically at revisit_by
send_at; `revisit_opened`; revisit_by notices before it) -> when every recommendation of the
revisit has settled, `revisit_outcome`, then the next cycle (revisit_by = today +
further_follow_up, previous working day) if any went to further follow-up or re-opened ones
wait, else closed. A recommendation withdrawn before the revisit leaves it. A re-opened
recommendation joins a revisit only if the revisit is not yet open and its limit is not before
the new deadline; otherwise it waits for a later cycle. Report-level deadlines (action_plan,
pcc_response; immediate_update has no messages) send their messages until delivered, while
the inspection is not closed.
"""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta

from ncpi_workflow.clocks import Deadline, DeadlineKind, MessageKind, Party, WorkingCalendar, deadline_messages
from ncpi_workflow.policy import Policy

from tests.model.actions import (
    CLAIMS,
    OUTCOMES,
    Advance,
    Decide,
    Deliver,
    Evidence,
    Progress,
    Reopen,
    Revise,
    SetRegister,
    TriggerRevisit,
    Withdraw,
)

FORCE_NOTIFIED, IN_PROGRESS = "force_notified", "in_progress"
EVIDENCE_REQUESTED, EVIDENCE_SUBMITTED, UNDER_REVIEW, CLOSED = "evidence_requested", "evidence_submitted", "under_review", "closed"
FOLLOWING_UP, REVISIT_OPEN = "following_up", "revisit_open"
CLOSING = ("achieved", "superseded")
FURTHER = ("partially_achieved", "not_achieved")
SETTABLE_REGISTER = ("awaiting review", "being progressed", "will be progressed")
NO_FURTHER_ACTION = "no further action needed"
AWAITING_REVIEW = "awaiting review"
EPSILON = timedelta(seconds=1)
"""An automatic revisit opens a moment after its 09:00 timer: the evidence clock starts after it."""

_KINDS = {
    "recommendation": DeadlineKind.RECOMMENDATION, "evidence": DeadlineKind.EVIDENCE, "revisit_by": DeadlineKind.REVISIT_BY,
    "action_plan": DeadlineKind.ACTION_PLAN, "pcc_response": DeadlineKind.PCC_RESPONSE, "immediate_update": DeadlineKind.IMMEDIATE_UPDATE,
}


@dataclass(frozen=True)
class Result:
    accepted: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.accepted


OK = Result(True)


def refused(reason: str) -> Result:
    return Result(False, reason)


@dataclass
class Clock:
    """One deadline and which of its messages are done (sent, or superseded by a later one)."""

    key: str
    party: Party
    due: date
    cycle: int
    not_before: datetime
    original_due: date | None = None
    reminded: bool = True
    met: bool = False
    never_at_or_after: datetime | None = None
    handled: set = field(default_factory=set)

    def __post_init__(self) -> None:
        if self.original_due is None:
            self.original_due = self.due

    def messages(self, policy: Policy, cal: WorkingCalendar):
        deadline = Deadline(key=self.key, kind=_KINDS[self.key], party=self.party, nominal=self.due, due=self.due,
                            due_at=cal.at(self.due, cal.working_day_end), reminded=self.reminded)
        messages = deadline_messages(deadline, policy, cal, not_before=self.not_before)
        if self.never_at_or_after is not None:
            messages = tuple(m for m in messages if m.at < self.never_at_or_after)
        return messages

    def mark(self, message) -> None:
        self.handled.add((self.due, message.kind.value, message.working_days))

    def pending(self, policy: Policy, cal: WorkingCalendar):
        return [m for m in self.messages(policy, cal) if (self.due, m.kind.value, m.working_days) not in self.handled]


@dataclass
class Rec:
    ref: str
    timeframe: str
    deadline: Clock
    phase: str = FORCE_NOTIFIED
    cycle: int = 1
    claim: str | None = None
    outcome: str | None = None
    review_open: bool = False
    evidence_clock: Clock | None = None
    evidence: list = field(default_factory=list)
    """(sha256, cycle) of every file submitted."""
    closed_at: datetime | None = None
    finished: bool = False
    """Its workflow has ended (the re-open window passed): every action is refused."""
    register: list = field(default_factory=lambda: [AWAITING_REVIEW])
    # The records the database must hold.
    decisions: dict = field(default_factory=dict)
    """cycle -> [outcome, re-opened?]"""
    evidence_requests: set = field(default_factory=set)
    """(cycle, due)"""
    deadline_rows: dict = field(default_factory=dict)
    """(key, cycle) -> current due, for keys recommendation:Rn and evidence:Rn."""
    progress_claims: list = field(default_factory=list)

    def own_active(self) -> bool:
        return self.phase in (FORCE_NOTIFIED, IN_PROGRESS) and self.claim != "implemented"


@dataclass
class Insp:
    phase: str
    cycle: int
    revisit_by: Clock
    report_clocks: dict
    open: list
    """Recommendations (refs) in this cycle's revisit."""
    settled: dict = field(default_factory=dict)
    """ref -> latest outcome of those in the open revisit."""
    waiting: dict = field(default_factory=dict)
    """Re-opened refs left for a later cycle -> their new due date."""
    closed_at: datetime | None = None
    finished: bool = False
    revisits: list = field(default_factory=list)
    """(cycle, trigger)"""


class Model:
    def __init__(self, published: date, timeframes: tuple[str, ...], policy: Policy, calendar: WorkingCalendar):
        self.policy, self.cal = policy, calendar
        self.published = published
        self.published_at = calendar.next_send_time(calendar.at(published, time(0, 0)))
        self.now = self.published_at
        self.outbox: Counter = Counter()
        self.optional: Counter = Counter()
        """Notifications allowed but not required: a recommendation's own message due at the very
        instant its revisit opens by itself (two workflows' timers at one instant, either first)."""
        d = policy.deadlines
        limit = self._inspectorate_due(published, d.revisit_by)
        self.cycle1_revisit_instant = calendar.at(limit, calendar.send_at)
        report_clocks = {}
        if "immediately" in timeframes:
            report_clocks["immediate_update"] = Clock("immediate_update", Party.FORCE, self._force_due(published, d.immediate_update),
                                                      1, self.published_at, reminded=False)
        report_clocks["action_plan"] = Clock("action_plan", Party.FORCE, self._force_due(published, d.action_plan), 1, self.published_at)
        report_clocks["pcc_response"] = Clock("pcc_response", Party.PCC, self._force_due(published, d.pcc_response), 1, self.published_at)
        self.recs: dict[str, Rec] = {}
        for i, timeframe in enumerate(timeframes, start=1):
            ref = f"R{i}"
            period = {"immediately": d.immediate_update, "within_three_months": d.within_three_months,
                      "within_six_months": d.within_six_months}[timeframe]
            clock = Clock("recommendation", Party.FORCE, self._force_due(published, period), 1, self.published_at,
                          never_at_or_after=self.cycle1_revisit_instant)
            rec = Rec(ref, timeframe, clock)
            rec.deadline_rows[(f"recommendation:{ref}", 1)] = clock.due
            self.recs[ref] = rec
        self.insp = Insp(FOLLOWING_UP, 1, Clock("revisit_by", Party.INSPECTORATE, limit, 1, self.published_at),
                         report_clocks, list(self.recs))
        self._notify("published", "report", self.published_at)

    # ------------------------------------------------------------------ calendar

    def _force_due(self, start: date, period) -> date:
        return self.cal.next_working_day(start + period.as_relativedelta())

    def _inspectorate_due(self, start: date, period) -> date:
        return self.cal.previous_working_day(start + period.as_relativedelta())

    def local_date(self, instant: datetime) -> date:
        return instant.astimezone(self.cal.zone).date()

    @property
    def today(self) -> date:
        return self.local_date(self.now)

    def noon(self, day: date) -> datetime:
        return self.cal.at(day, time(12, 0))

    def window_end(self, closed_at: datetime) -> datetime:
        return closed_at + self.policy.review.reopen_window.as_relativedelta()

    def copy(self) -> "Model":
        return copy.deepcopy(self, memo={id(self.policy): self.policy, id(self.cal): self.cal})

    # ------------------------------------------------------------------ notifications

    def _notify(self, kind: str, about: str, instant: datetime) -> None:
        self.outbox[(kind, about, self.local_date(instant).isoformat())] += 1

    # ------------------------------------------------------------------ time

    def _clock_event(self, clock: Clock, priority: int, apply):
        pending = clock.pending(self.policy, self.cal)
        if not pending:
            return []
        past = [m for m in pending if m.at <= self.now]
        if past:
            return [(self.now, priority, lambda: apply(past[-1], past[:-1]))]
        return [(pending[0].at, priority, lambda: apply(pending[0], []))]

    def _events(self):
        events = []
        insp = self.insp
        if not insp.finished:
            if insp.phase == CLOSED:
                events.append((self.window_end(insp.closed_at), 2, self._inspection_ends))
            else:
                for clock in insp.report_clocks.values():
                    if not clock.met:
                        events += self._clock_event(clock, 1, lambda m, s, c=clock: self._report_message(c, m, s))
                if insp.phase == FOLLOWING_UP:
                    events += self._clock_event(insp.revisit_by, 0, self._revisit_message)
        for rec in self.recs.values():
            if rec.finished:
                continue
            if rec.phase == CLOSED:
                events.append((self.window_end(rec.closed_at), 2, lambda r=rec: setattr(r, "finished", True)))
            if rec.own_active():
                events += self._clock_event(rec.deadline, 1, lambda m, s, r=rec: self._rec_message(r, r.deadline, m, s))
            if rec.phase == EVIDENCE_REQUESTED and rec.evidence_clock is not None and not rec.evidence_clock.met:
                events += self._clock_event(rec.evidence_clock, 1, lambda m, s, r=rec: self._rec_message(r, r.evidence_clock, m, s))
        return events

    def advance_to(self, target: datetime) -> None:
        while True:
            events = self._events()
            if not events:
                break
            at, _, apply = min(events, key=lambda e: (e[0], e[1]))
            if at > target:
                break
            self.now = max(self.now, at)
            apply()
        self.now = max(self.now, target)

    def settle(self) -> None:
        """Deliver what is due at once (a clock that became active again with messages past)."""
        self.advance_to(self.now)

    def _inspection_ends(self) -> None:
        self.insp.finished = True

    def _report_message(self, clock: Clock, message, superseded) -> None:
        for m in superseded:
            clock.mark(m)
        clock.mark(message)
        self._notify(message.kind.value, clock.key, message.at)

    def _rec_message(self, rec: Rec, clock: Clock, message, superseded) -> None:
        for m in superseded:
            clock.mark(m)
        clock.mark(message)
        self._notify(message.kind.value, rec.ref, message.at)

    def _revisit_message(self, message, superseded) -> None:
        limit = self.insp.revisit_by
        for m in superseded:
            limit.mark(m)
        limit.mark(message)
        if message.kind is MessageKind.REVISIT_OPENS:
            self._open_revisit(message.at + EPSILON, "automatic", timer_at=message.at)
        else:
            self._notify("revisit_notice", "revisit_by", message.at)

    # ------------------------------------------------------------------ the inspection

    def _open_revisit(self, at: datetime, trigger: str, timer_at: datetime | None = None) -> None:
        insp = self.insp
        for m in insp.revisit_by.messages(self.policy, self.cal):
            insp.revisit_by.mark(m)
        insp.revisits.append((insp.cycle, trigger))
        self._notify("revisit_opened", "report", at)
        insp.phase = REVISIT_OPEN
        insp.settled = {}
        for ref in list(insp.open):
            rec = self.recs[ref]
            if timer_at is not None and rec.own_active():
                # The recommendation's own timer at the same instant: sent or not, either is fine.
                for m in rec.deadline.pending(self.policy, self.cal):
                    if m.at == timer_at:
                        rec.deadline.mark(m)
                        self.optional[(m.kind.value, ref, self.local_date(m.at).isoformat())] += 1
            self._open_review(rec, at)
        self._maybe_finish_cycle(at)

    def _open_review(self, rec: Rec, at: datetime) -> None:
        if rec.phase == CLOSED or rec.review_open:
            return
        rec.review_open = True
        if any(cycle == rec.cycle for _, cycle in rec.evidence):
            rec.phase = UNDER_REVIEW
            return
        due = self.cal.add_working_days(self.local_date(at), self.policy.review.evidence_due_working_days)
        rec.evidence_clock = Clock("evidence", Party.FORCE, due, rec.cycle, at)
        rec.phase = EVIDENCE_REQUESTED
        rec.evidence_requests.add((rec.cycle, due))
        rec.deadline_rows[(f"evidence:{rec.ref}", rec.cycle)] = due
        self._notify("evidence_request", rec.ref, at)

    def _maybe_finish_cycle(self, at: datetime) -> None:
        insp = self.insp
        if insp.phase != REVISIT_OPEN or not all(ref in insp.settled for ref in insp.open):
            return
        self._notify("revisit_outcome", "report", at)
        further = [ref for ref in insp.open if insp.settled[ref] in FURTHER]
        if further or insp.waiting:
            self._next_cycle(at, further)
        else:
            insp.phase = CLOSED
            insp.closed_at = at

    def _next_cycle(self, at: datetime, further: list[str]) -> None:
        insp = self.insp
        insp.cycle += 1
        limit = self._inspectorate_due(self.local_date(at), self.policy.deadlines.further_follow_up)
        # Re-opened ones waiting join this cycle, its limit no earlier than their new deadlines.
        limit = max([limit, *insp.waiting.values()])
        insp.revisit_by = Clock("revisit_by", Party.INSPECTORATE, limit, insp.cycle, at)
        insp.open = further + list(insp.waiting)
        insp.waiting = {}
        insp.settled = {}
        insp.phase = FOLLOWING_UP
        insp.closed_at = None

    def _settled(self, rec: Rec, outcome: str, at: datetime) -> None:
        insp = self.insp
        further = outcome in FURTHER
        if insp.phase == REVISIT_OPEN and rec.ref in insp.open:
            insp.settled[rec.ref] = outcome
        if not further:
            insp.waiting.pop(rec.ref, None)
            if insp.phase == FOLLOWING_UP and rec.ref in insp.open:
                insp.open.remove(rec.ref)
        self._maybe_finish_cycle(at)

    def _reopened(self, rec: Rec, at: datetime) -> None:
        insp = self.insp
        due = rec.deadline.due
        if insp.phase == CLOSED:
            insp.waiting[rec.ref] = due
            self._next_cycle(at, [])
        elif insp.phase == REVISIT_OPEN or due > insp.revisit_by.due:
            insp.waiting[rec.ref] = due
        elif rec.ref not in insp.open:
            insp.open.append(rec.ref)

    # ------------------------------------------------------------------ actions

    def apply(self, action) -> Result:
        """Apply one action at `now`; the result says whether it is accepted."""
        handler = {
            Progress: self._progress, Evidence: self._evidence, Decide: self._decide, Withdraw: self._withdraw,
            Reopen: self._reopen, Revise: self._revise, SetRegister: self._set_register,
            TriggerRevisit: self._trigger_revisit, Deliver: self._deliver,
        }[type(action)]
        self.now += EPSILON  # an action comes a moment after the instant reached (never at a 09:00 timer)
        result = handler(action)
        if result:
            self.settle()
        return result

    def _rec(self, ref: str) -> tuple[Rec, Result | None]:
        rec = self.recs[ref]
        if rec.finished:
            return rec, refused("its workflow has ended")
        return rec, None

    def _progress(self, a: Progress) -> Result:
        rec, no = self._rec(a.ref)
        if no:
            return no
        if a.claim not in CLAIMS:
            return refused("unknown claim")
        if rec.phase == CLOSED:
            return refused("closed")
        rec.claim = a.claim
        rec.progress_claims.append(a.claim)
        if rec.phase == FORCE_NOTIFIED:
            rec.phase = IN_PROGRESS
        return OK

    def _evidence(self, a: Evidence) -> Result:
        rec, no = self._rec(a.ref)
        if no:
            return no
        if rec.phase == CLOSED:
            return refused("closed")
        if any(sha == a.sha256 for sha, _ in rec.evidence):
            return refused("already submitted")
        rec.evidence.append((a.sha256, rec.cycle))
        if rec.evidence_clock is not None:
            rec.evidence_clock.met = True
        if rec.phase != UNDER_REVIEW:
            rec.phase = UNDER_REVIEW if rec.review_open else EVIDENCE_SUBMITTED
        return OK

    def decision_allowed(self, rec: Rec) -> bool:
        if rec.finished or rec.phase == CLOSED:
            return False
        if rec.phase == UNDER_REVIEW:
            return True
        clock = rec.evidence_clock
        return rec.phase == EVIDENCE_REQUESTED and clock is not None and self.now > self.cal.at(clock.due, self.cal.working_day_end)

    def _decide(self, a: Decide) -> Result:
        rec, no = self._rec(a.ref)
        if no:
            return no
        if a.outcome not in OUTCOMES or a.outcome == "withdrawn":
            return refused("not a decision outcome (withdrawal is its own action)")
        if not a.rationale.strip():
            return refused("no rationale")
        if not self.decision_allowed(rec):
            return refused(f"no decision while {rec.phase}")
        at = self.now
        rec.decisions[rec.cycle] = [a.outcome, False]
        self._notify("decision", rec.ref, at)
        if a.outcome == "not_achieved":
            self._notify("escalation", rec.ref, at)
        rec.outcome = a.outcome
        if a.outcome in CLOSING:
            self._close(rec, at)
        else:
            self._start_cycle(rec, at)
            self._notify("further_follow_up", rec.ref, at)
        self._settled(rec, a.outcome, at)
        return OK

    def _close(self, rec: Rec, at: datetime) -> None:
        rec.phase = CLOSED
        rec.closed_at = at
        rec.register.append(NO_FURTHER_ACTION)

    def _start_cycle(self, rec: Rec, at: datetime) -> None:
        rec.cycle += 1
        due = self._force_due(self.local_date(at), self.policy.deadlines.further_follow_up)
        rec.deadline = Clock("recommendation", Party.FORCE, due, rec.cycle, at)
        rec.deadline_rows[(f"recommendation:{rec.ref}", rec.cycle)] = due
        rec.phase = IN_PROGRESS
        rec.claim = None
        rec.review_open = False
        rec.evidence_clock = None
        rec.closed_at = None

    def _withdraw(self, a: Withdraw) -> Result:
        rec, no = self._rec(a.ref)
        if no:
            return no
        if rec.phase == CLOSED:
            return refused("already closed")
        at = self.now
        rec.decisions[rec.cycle] = ["withdrawn", False]
        self._notify("decision", rec.ref, at)
        rec.outcome = "withdrawn"
        self._close(rec, at)
        self._settled(rec, "withdrawn", at)
        return OK

    def _reopen(self, a: Reopen) -> Result:
        rec, no = self._rec(a.ref)
        if no:
            return no
        if rec.phase != CLOSED:
            return refused("not closed")
        if self.now >= self.window_end(rec.closed_at):
            return refused("re-open window passed")
        at = self.now
        rec.decisions[rec.cycle][1] = True
        rec.outcome = None
        self._start_cycle(rec, at)
        rec.register.append(AWAITING_REVIEW)
        self._notify("reopened", rec.ref, at)
        self._reopened(rec, at)
        return OK

    def revised_date(self, a: Revise) -> date:
        """The concrete new due date a Revise action asks for."""
        rec = self.recs[a.ref]
        clock = rec.deadline if a.deadline == "recommendation" else rec.evidence_clock
        if a.shift == "same":
            return clock.due if clock is not None else self.cal.add_working_days(self.today, 5)
        if a.shift == "today":
            return self.today
        if a.shift == "weekend":
            day = self.today + timedelta(days=1)
            while day.weekday() != 5:
                day += timedelta(days=1)
            return day
        return self.cal.add_working_days(self.today, int(a.shift))

    def _revise(self, a: Revise) -> Result:
        rec, no = self._rec(a.ref)
        if no:
            return no
        if rec.phase == CLOSED:
            return refused("closed")
        clock = rec.deadline if a.deadline == "recommendation" else rec.evidence_clock if a.deadline == "evidence" else None
        if clock is None:
            return refused("no such open deadline")
        if clock.met:
            return refused("already met")
        new_due = self.revised_date(a)
        if new_due == clock.due:
            return refused("unchanged")
        if new_due <= self.today:
            return refused("not after today")
        if not self.cal.is_working_day(new_due):
            return refused("not a working day")
        clock.due = new_due
        clock.not_before = self.now
        rec.deadline_rows[(f"{a.deadline}:{rec.ref}", clock.cycle)] = new_due
        return OK

    def _set_register(self, a: SetRegister) -> Result:
        rec, no = self._rec(a.ref)
        if no:
            return no
        if a.status not in SETTABLE_REGISTER:
            return refused("not a status an inspector sets")
        if not a.comment.strip():
            return refused("no comment")
        if rec.phase == CLOSED:
            return refused("closed")
        rec.register.append(a.status)
        return OK

    def _trigger_revisit(self, a: TriggerRevisit) -> Result:
        insp = self.insp
        if insp.finished:
            return refused("its workflow has ended")
        if not a.by.strip():
            return refused("no by")
        if insp.phase != FOLLOWING_UP:
            return refused(f"inspection {insp.phase}")
        self._open_revisit(self.now, "inspector")
        return OK

    def _deliver(self, a: Deliver) -> Result:
        insp = self.insp
        if insp.finished:
            return refused("its workflow has ended")
        clock = insp.report_clocks.get(a.item)
        if clock is None:
            return refused("no such deadline")
        if clock.met:
            return refused("already received")
        clock.met = True
        return OK

    # ------------------------------------------------------------------ where time goes next

    def window_ends(self) -> list[datetime]:
        ends = [self.window_end(r.closed_at) for r in self.recs.values() if r.phase == CLOSED and not r.finished]
        if self.insp.phase == CLOSED and not self.insp.finished:
            ends.append(self.window_end(self.insp.closed_at))
        return sorted(ends)

    def target(self, a: Advance) -> datetime:
        """The calendar instant an Advance action moves to: noon on a working day (later that day
        if noon falls within an hour of the end of a re-open window, so that no action races it)."""
        today = self.today
        day = None
        if a.how == "next_deadline":
            dues = [r.deadline.due for r in self.recs.values() if r.phase != CLOSED]
            dues += [r.evidence_clock.due for r in self.recs.values() if r.phase == EVIDENCE_REQUESTED and r.evidence_clock]
            dues += [c.due for c in self.insp.report_clocks.values() if not c.met]
            if self.insp.phase == FOLLOWING_UP:
                dues.append(self.insp.revisit_by.due)
            later = [d for d in dues if d > today]
            day = min(later) if later else None
        elif a.how == "past_evidence_deadline":
            dues = [r.evidence_clock.due for r in self.recs.values() if r.phase == EVIDENCE_REQUESTED and r.evidence_clock]
            later = [d for d in dues if d >= today]
            day = self.cal.add_working_days(min(later), 1) if later else None
        elif a.how == "revisit_limit":
            if self.insp.phase == FOLLOWING_UP and self.insp.revisit_by.due > today:
                day = self.insp.revisit_by.due
        elif a.how == "past_reopen_window":
            ends = self.window_ends()
            if ends:
                day = self.cal.add_working_days(self.local_date(ends[0]), 1)
        elif a.how == "working_days":
            day = self.cal.add_working_days(today, max(1, a.n))
        if day is None or day <= today:
            day = self.cal.add_working_days(today, 10)
        instant = self.noon(day)
        for end in self.window_ends():
            if abs(instant - end) < timedelta(hours=1):
                instant = end + timedelta(hours=2)
        if self.insp.cycle > 1:
            # Not a rule, a limit of the time-skipping test server: once a parent's run has continued
            # as new, a child workflow ending (a re-open window passing) stops its clock for good. After
            # the inspection's first cycle, time stops short of any recommendation's window end.
            ends = [self.window_end(r.closed_at) for r in self.recs.values() if r.phase == CLOSED and not r.finished]
            if ends:
                instant = min(instant, min(ends) - timedelta(hours=1))
        return max(instant, self.now)
