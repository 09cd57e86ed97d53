"""The baselines: bare Temporal, nothing of ours (kept apart so the workflow sandbox imports only this).

`BareWorkflow` waits, with an Update that does nothing (Update latency) and one, `decide`, that does
a decision's work (one local activity writing its rows, bench/bare_work.py). `BareFollowUp` replays the
shape of one of our follow-up workflows (bench/shape.py reads it from a real history): the same
timers, the same number of activities, the same child starts, signals and Updates, in the same order.
Its activities do nothing, or (`BareInput.same_work`) the same work as ours (bench/bare_work.py): each
local activity that writes in ours writes an event's rows in one transaction, the step's emails are
put in the outbox with them, and each delivery leases its row, sends it by SMTP and marks it sent.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import timedelta

from temporalio import activity, workflow
from temporalio.exceptions import ApplicationError


@workflow.defn(name="BareWorkflow")
class BareWorkflow:
    """A workflow that waits, with an Update that does nothing."""

    def __init__(self) -> None:
        self.done = False

    @workflow.run
    async def run(self) -> None:
        await workflow.wait_condition(lambda: self.done)

    @workflow.update
    async def poke(self, value: int) -> int:
        return value

    @workflow.update
    async def decide(self, key: str) -> list[int]:
        """The same-work Update: one local activity writing a decision's rows, then the answer."""
        written = await workflow.execute_local_activity(
            "bare_decide", {"key": key, "workflow_id": workflow.info().workflow_id, "rows": 4, "emails": 1, "version": 2,
                            "phase": "decided"},
            start_to_close_timeout=ACTIVITY_TIMEOUT)
        return written["outbox_ids"]

    @poke.validator
    def _check(self, value: int) -> None:
        if value < 0:
            raise ValueError("negative")

    @workflow.signal
    def finish(self) -> None:
        self.done = True


@dataclass
class Step:
    """One stretch of a workflow's history: what set it off, then the work it did."""

    trigger: str  # "start", "timer" (fired), "signal" or "update"
    name: str = ""  # the signal's or Update's name
    timer_seconds: float = 0.0  # "timer": when it fires, in seconds after the trigger of step `timer_from_step`
    timer_from_step: int = 0
    activities: int = 0  # awaited one after the other
    background_activities: int = 0  # started and left running (our email deliveries)
    local_activities: int = 0  # awaited, run by the worker without a round trip through the server
    writes: int = 0  # of the local activities, those that write (ours: record_event; not read_clock)
    children: int = 0  # child workflows started
    signals: int = 0  # signals sent: to the parent, or one per child


@dataclass
class BareInput:
    steps: list[Step]
    child_steps: list[Step] = field(default_factory=list)
    child_id_prefix: str = ""
    parent_id: str = ""
    task_queue: str = ""
    same_work: bool = False  # the activities do our I/O (bench/bare_work.py) instead of nothing
    rows_per_write: float = 2.0  # same work: the record and audit rows a write adds, on average (spread evenly)


@activity.defn(name="bare_nothing")
async def bare_nothing() -> None:
    """An activity that does nothing."""


ACTIVITY_TIMEOUT = timedelta(seconds=30)


@workflow.defn(name="BareFollowUp")
class BareFollowUp:
    @workflow.init
    def __init__(self, inp: BareInput) -> None:
        self.inp = inp
        self.position = 0
        self.signals_received = 0
        self.updates_done: set[int] = set()
        self.background: list = []
        self.children: list[str] = []
        self.signalled_children = 0
        self.update_accepted_at: dict = {}
        self.version = 0  # same work: the projection's version
        self.writes_done = 0

    @workflow.run
    async def run(self, inp: BareInput) -> int:
        signals_expected = 0
        triggered_at = []
        for index, step in enumerate(inp.steps):
            self.position = index
            if step.trigger == "timer":
                fires_at = triggered_at[step.timer_from_step] + timedelta(seconds=step.timer_seconds)
                if fires_at > workflow.now():
                    await workflow.sleep(fires_at - workflow.now())
            elif step.trigger == "signal":
                signals_expected += 1
                await workflow.wait_condition(lambda n=signals_expected: self.signals_received >= n)
            elif step.trigger == "update":
                await workflow.wait_condition(lambda i=index: i in self.updates_done)
            triggered_at.append(self.update_accepted_at.get(index, workflow.now()))
            if step.trigger != "update":  # an Update's handler does its step's work
                await self._work(step, index)
        await workflow.wait_condition(workflow.all_handlers_finished)
        await asyncio.gather(*self.background)
        return len(inp.steps)

    def _phase(self, index: int) -> str:
        """Same work: the projection of step `index`; "awaiting:NAME" when the next step waits for an Update."""
        steps = self.inp.steps
        if index + 1 < len(steps) and steps[index + 1].trigger == "update":
            return f"awaiting:{steps[index + 1].name}"
        return "ended" if index + 1 == len(steps) else f"step-{index}"

    async def _work(self, step: Step, index: int) -> None:
        if self.inp.same_work:
            return await self._same_work(step, index)
        for _ in range(step.local_activities):
            await workflow.execute_local_activity(bare_nothing, start_to_close_timeout=ACTIVITY_TIMEOUT)
        for _ in range(step.activities):
            await workflow.execute_activity(bare_nothing, start_to_close_timeout=ACTIVITY_TIMEOUT)
        for _ in range(step.background_activities):
            self.background.append(workflow.start_activity(bare_nothing, start_to_close_timeout=ACTIVITY_TIMEOUT))
        await self._children_and_signals(step)

    async def _same_work(self, step: Step, index: int) -> None:
        """The step's work with our I/O: its clock reads do nothing (as ours, which hand back the
        workflow's clock), its writes each write one event's rows, the last one with the step's emails
        (a step that emails but writes nothing in ours writes them in one more), then the deliveries."""
        workflow_id = workflow.info().workflow_id
        writes = max(step.writes, 1 if step.background_activities else 0)
        for _ in range(max(0, step.local_activities - step.writes)):
            await workflow.execute_local_activity(bare_nothing, start_to_close_timeout=ACTIVITY_TIMEOUT)
        outbox: list[int] = []
        for n in range(writes):
            self.version += 1
            last = n == writes - 1
            # `rows_per_write` on average: this write's share of the running total, in whole rows.
            k, per = self.writes_done, self.inp.rows_per_write
            rows = int((k + 1) * per) - int(k * per)
            self.writes_done += 1
            written = await workflow.execute_local_activity(
                "bare_write",
                {"key": f"{workflow_id}/{index}/{n}", "workflow_id": workflow_id, "rows": rows,
                 "emails": step.background_activities if last else 0, "version": self.version, "phase": self._phase(index)},
                start_to_close_timeout=ACTIVITY_TIMEOUT)
            outbox += written["outbox_ids"]
        for _ in range(step.activities):
            await workflow.execute_activity(bare_nothing, start_to_close_timeout=ACTIVITY_TIMEOUT)
        for outbox_id in outbox:
            self.background.append(workflow.start_activity("bare_deliver", outbox_id, start_to_close_timeout=ACTIVITY_TIMEOUT))
        await self._children_and_signals(step)

    async def _children_and_signals(self, step: Step) -> None:
        for _ in range(step.children):
            child_id = f"{self.inp.child_id_prefix}-{len(self.children) + 1}"
            self.children.append(child_id)
            await workflow.start_child_workflow(
                BareFollowUp.run,
                BareInput(steps=self.inp.child_steps, parent_id=workflow.info().workflow_id, same_work=self.inp.same_work,
                          rows_per_write=self.inp.rows_per_write),
                id=child_id,
                parent_close_policy=workflow.ParentClosePolicy.ABANDON,
            )
        for _ in range(step.signals):
            if self.inp.parent_id:
                await workflow.get_external_workflow_handle(self.inp.parent_id).signal(BareFollowUp.event)
            else:
                target = self.children[self.signalled_children % len(self.children)]
                self.signalled_children += 1
                await workflow.get_external_workflow_handle(target).signal(BareFollowUp.event)

    @workflow.signal
    def event(self) -> None:
        self.signals_received += 1

    @workflow.update
    async def act(self, name: str) -> int:
        """Waits for the script to reach this Update's step (so the driver sends it once), then does its work."""
        await workflow.wait_condition(
            lambda: self.inp.steps[self.position].trigger == "update" and self.position not in self.updates_done
        )
        index = self.position
        step = self.inp.steps[index]
        if step.name != name:
            raise ApplicationError(f"expected Update {step.name!r}, got {name!r}")
        self.update_accepted_at[index] = workflow.now()
        await self._work(step, index)
        self.updates_done.add(index)
        return index
