"""The reconciler's pass: every open follow-up has a running workflow, projections agree with their
workflows, no notification stays pending past the policy age, stuck workflows are recorded."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError
from temporalio.api.enums.v1 import WorkflowExecutionStatus
from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from ncpi_workflow.app.read_models import refresh_recommendation_clocks, refresh_report_items
from ncpi_workflow.lifecycle import (
    InspectionPhase,
    InspectionView,
    Phase,
    RecommendationView,
    inspection_workflow_id,
    never_projected_by_itself,
    recommendation_workflow_id,
)
from ncpi_workflow.models import (
    Deadline,
    Inspection,
    Notification,
    Recommendation,
    StuckWorkflow,
    utcnow,
)
from ncpi_workflow.publishing import inspection_input_from_records
from ncpi_workflow.settings import Settings
from ncpi_workflow.store import append_audit
from ncpi_workflow.jobs.common import COMPLETED, QUERY_TIMEOUT, RECONCILER, RESTARTABLE, RUNNING, Sessions, log, pending_age
from ncpi_workflow.jobs.digest import _start_delivery, delivery_workflow_id
from ncpi_workflow.jobs.health import Stuck, _clocks, _stuck_from, describe_workflow, workflow_status
from ncpi_workflow.jobs.rebuild import _recommendation_input, inspection_state, recommendation_state



def _abort_if_unreachable(exc: Exception) -> None:
    """Temporal down: stop the pass (one failure recorded, not one per workflow); the next pass retries."""
    if isinstance(exc, RPCError) and exc.status in (RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED):
        raise exc


def _lost_connection(exc: BaseException) -> bool:
    """The database connection broke (a restarted server, a dropped socket), as opposed to a refusal
    of what was asked: worth a fresh connection."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, DBAPIError) and exc.connection_invalidated:
            return True
        if isinstance(exc, (InterfaceError, OperationalError, ConnectionError)):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


async def _fresh_connections(sessions: Sessions) -> None:
    """Drop every pooled connection: after the database restarted, each of them is dead."""
    bind = sessions.kw.get("bind")
    if bind is not None:
        await bind.dispose()


async def _database_ready(sessions: Sessions) -> None:
    """One `SELECT 1` before the pass (every few minutes, so cheap): a pool left stale by a database
    restart is replaced here, not found out by the pass's first query."""
    try:
        async with sessions() as session:
            await session.execute(select(1))
        return
    except (SQLAlchemyError, OSError) as exc:
        if not _lost_connection(exc):
            raise
        log.warning("reconciler: the database connection was lost (%s): connecting again", " ".join(str(exc).split())[:200])
    await _fresh_connections(sessions)
    async with sessions() as session:
        await session.execute(select(1))


def publishing_grace(settings: Settings) -> timedelta:
    """NCPI_PUBLISHING_GRACE_MINUTES: publishing commits a report's records, then starts its workflow
    (with its clocks: an `--anchor-now` anchor, a time scale). A report recorded less than this long
    ago whose follow-up never projected anything may be between the two: left to its publisher,
    as a restart "from publication" would start it with the settings' clocks instead."""
    return timedelta(minutes=settings.publishing_grace_minutes)


def _words(value: Any) -> str:
    return str(getattr(value, "value", value))


class _Pass:
    """One reconciliation pass: what it found and what it did."""

    def __init__(self, sessions: Sessions, client: Client, settings: Settings):
        self.sessions = sessions
        self.client = client
        self.settings = settings
        self.repairs: list[str] = []
        self.fresh_parents: set[str] = set()
        self.restarted_parents: set[str] = set()
        self.stuck: dict[str, Stuck] = {}

    async def _status(self, workflow_id: str) -> tuple[WorkflowExecutionStatus | None, bool]:
        """The workflow's status, and whether it is stuck (running, its task failing again and again)."""
        response = await describe_workflow(self.client, workflow_id)
        if response is None:
            return None, False
        stuck = await _stuck_from(self.client, response, self.settings.stuck_task_attempts)
        if stuck is not None:
            self.stuck[workflow_id] = stuck
        return response.workflow_execution_info.status, stuck is not None

    async def _record(self, line: str, *, action: str, entity_type: str, entity_id: str, detail: dict[str, Any]) -> None:
        log.warning("reconciler: %s", line)
        async with self.sessions.begin() as session:
            await append_audit(session, actor=RECONCILER, action=action, entity_type=entity_type, entity_id=entity_id,
                               detail={"repair": line, **detail})
        self.repairs.append(line)

    async def _start(self, workflow: str, argument: Any, workflow_id: str) -> str | None:
        try:
            handle = await self.client.start_workflow(
                workflow, argument, id=workflow_id, task_queue=self.settings.task_queue,
                id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE, id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
            )
        except WorkflowAlreadyStartedError:
            return None  # someone (an operator, another replica) got there first: it runs
        return handle.result_run_id

    # -- inspections

    async def inspections(self) -> None:
        async with self.sessions() as session:
            inspections = (await session.scalars(select(Inspection).order_by(Inspection.id))).all()
        for inspection in inspections:
            try:
                await self._inspection(inspection.id)
            except Exception as exc:
                _abort_if_unreachable(exc)
                log.exception("reconciler: inspection %s not reconciled", inspection.id)

    async def _inspection(self, inspection_id: str) -> None:
        workflow_id = inspection_workflow_id(inspection_id)
        status, stuck = await self._status(workflow_id)
        if stuck:
            return  # reported; a query would only wait for a task that keeps failing
        async with self.sessions() as session:
            inspection = await session.get(Inspection, inspection_id)
        if status == RUNNING or status == COMPLETED:
            await self._compare_inspection(inspection_id, workflow_id, closed_run=status == COMPLETED)
            return
        if status is not None and status not in RESTARTABLE:
            log.info("reconciler: %s is %s: left alone", workflow_id, WorkflowExecutionStatus.Name(status))
            return
        if inspection.phase == InspectionPhase.CLOSED.value:
            return  # closed in the records: nothing left to follow up
        if await self._publishing(inspection_id):
            log.info("reconciler: %s is %s but was recorded less than %g min ago: left to its publisher",
                     workflow_id, RESTARTABLE[status] if status else "missing", self.settings.publishing_grace_minutes)
            return
        await self._restart_inspection(inspection_id, workflow_id, RESTARTABLE[status] if status else "missing")

    async def _publishing(self, inspection_id: str) -> bool:
        """Whether the inspection may still be being published: never projected, recorded within the grace."""
        cutoff = datetime.now(timezone.utc) - publishing_grace(self.settings)
        async with self.sessions() as session:
            return await session.scalar(
                select(func.count()).where(Inspection.id == inspection_id, Inspection.projection_version == 0,
                                           Inspection.created_at > cutoff)
            ) > 0

    async def _restart_inspection(self, inspection_id: str, workflow_id: str, was: str) -> None:
        async with self.sessions() as session:
            inspection = await session.get(Inspection, inspection_id)
            recommendations = list((await session.scalars(
                select(Recommendation).where(Recommendation.inspection_id == inspection_id).order_by(Recommendation.id)
            )).all())
        clocks = await _clocks(self.client, self.settings, inspection, recommendations, prefer=workflow_id)
        if clocks is None:
            log.error("reconciler: %s is %s but cannot be restarted: its time scale is unknown", workflow_id, was)
            return
        children = [await workflow_status(self.client, recommendation_workflow_id(r.id)) for r in recommendations]
        # Fresh (as publish starts it) only if it never got past publication: no child ever started.
        # Otherwise with its state carried over, which skips publication: no second notice, no child
        # started twice (the recommendations are reconciled one by one).
        # Publication writes the recommendations' first projections (and the inspection's) just before it
        # starts them: projected rows and no child is publication not got past yet, too.
        fresh = all(c is None for c in children) and (inspection.projection_version == 0 or bool(recommendations) and all(
            never_projected_by_itself(r.projection_version) for r in recommendations))
        why = f"workflow {was}"
        async with self.sessions() as session:
            inspection = await session.get(Inspection, inspection_id)
            carried = None if fresh else await inspection_state(session, inspection, recommendations, clocks, why)
            argument = await inspection_input_from_records(
                session, inspection_id, policy=clocks.policy, calendar=clocks.calendar, time_scale=clocks.time_scale,
                carried=carried,
            )
        run_id = await self._start("InspectionFollowUp", argument, workflow_id)
        if run_id is None:
            return
        (self.fresh_parents if fresh else self.restarted_parents).add(inspection_id)
        line = (f"restarted {workflow_id} (was {was}) "
                + ("from publication" if fresh else f"in phase {inspection.phase}, cycle {inspection.cycle}"))
        await self._record(line, action="workflow.restarted", entity_type="inspection", entity_id=inspection_id,
                           detail={"workflow_id": workflow_id, "run_id": run_id, "was": was, "fresh": fresh,
                                   "phase": inspection.phase, "cycle": inspection.cycle, "clocks_from": clocks.source})

    async def _compare_inspection(self, inspection_id: str, workflow_id: str, closed_run: bool) -> None:
        async with self.sessions() as session:
            inspection = await session.get(Inspection, inspection_id)
        if closed_run and inspection.phase == InspectionPhase.CLOSED.value:
            return
        view = await self._query(workflow_id, InspectionView)
        if view is None:
            return
        state = view.state
        if state.projection_version == 0:
            return  # still publishing: it has not projected anything yet
        async with self.sessions.begin() as session:
            row = await session.get(Inspection, inspection_id, populate_existing=True)
            if row.projection_version < state.projection_version:
                return  # the workflow's own projection is on its way
            have = {"phase": row.phase, "cycle": row.cycle, "next_action": row.next_action}
            want = {"phase": _words(state.phase), "cycle": state.cycle, "next_action": view.next_action}
            if have == want:
                return
            result = await session.execute(
                update(Inspection)
                .where(Inspection.id == inspection_id, Inspection.projection_version == row.projection_version)
                .values(phase=want["phase"], cycle=want["cycle"], next_action=want["next_action"],
                        next_action_at=view.next_action_at, projection_version=state.projection_version)
            )
            if result.rowcount != 1:
                return
            # The dashboard's projected columns read the phase and cycle: refreshed with them.
            await session.execute(refresh_report_items(Deadline.inspection_id == inspection_id))
        await self._record(self._diff_line(inspection_id, have, want), action="projection.repaired",
                           entity_type="inspection", entity_id=inspection_id,
                           detail={"workflow_id": workflow_id, "from": have, "to": want})

    # -- recommendations

    async def recommendations(self) -> None:
        async with self.sessions() as session:
            ids = (await session.scalars(select(Recommendation.id).order_by(Recommendation.id))).all()
        for rec_id in ids:
            try:
                await self._recommendation(rec_id)
            except Exception as exc:
                _abort_if_unreachable(exc)
                log.exception("reconciler: recommendation %s not reconciled", rec_id)

    async def _recommendation(self, rec_id: str) -> None:
        workflow_id = recommendation_workflow_id(rec_id)
        status, stuck = await self._status(workflow_id)
        if stuck:
            return
        async with self.sessions() as session:
            rec = await session.get(Recommendation, rec_id)
            inspection = await session.get(Inspection, rec.inspection_id)
        if status == RUNNING or status == COMPLETED:
            await self._compare_recommendation(rec_id, workflow_id, closed_run=status == COMPLETED)
            return
        if status is not None and status not in RESTARTABLE:
            log.info("reconciler: %s is %s: left alone", workflow_id, WorkflowExecutionStatus.Name(status))
            return
        if rec.phase == Phase.CLOSED.value:
            return
        never_ran = never_projected_by_itself(rec.projection_version) and status is None
        if never_ran and inspection.id in self.fresh_parents:
            return  # its inspection, restarted from publication, starts it
        # A first projection in the row (written by publication with the inspection's own) and no workflow:
        # publication is between its write and its starts, as when the inspection is not projected yet.
        if never_ran and inspection.id not in self.restarted_parents and (
                inspection.projection_version == 0 or rec.projection_version > 0):
            if await workflow_status(self.client, inspection_workflow_id(inspection.id)) == RUNNING:
                return  # its inspection is still publishing: it starts its recommendations itself
            if await self._publishing(inspection.id):
                return  # its inspection may be between its records and its start: its publisher starts it
        await self._restart_recommendation(rec_id, workflow_id, RESTARTABLE[status] if status else "missing", fresh=never_ran)

    async def _restart_recommendation(self, rec_id: str, workflow_id: str, was: str, fresh: bool) -> None:
        async with self.sessions() as session:
            rec = await session.get(Recommendation, rec_id)
            inspection = await session.get(Inspection, rec.inspection_id)
            siblings = list((await session.scalars(
                select(Recommendation).where(Recommendation.inspection_id == inspection.id).order_by(Recommendation.id)
            )).all())
        clocks = await _clocks(self.client, self.settings, inspection, siblings, prefer=workflow_id)
        if clocks is None:
            log.error("reconciler: %s is %s but cannot be restarted: its time scale is unknown", workflow_id, was)
            return
        why = f"workflow {was}"
        async with self.sessions() as session:
            rec = await session.get(Recommendation, rec_id)
            inspection = await session.get(Inspection, rec.inspection_id)
            carried = None if fresh else await recommendation_state(session, rec, inspection, clocks, why)
            argument = await _recommendation_input(session, rec, inspection, clocks, carried)
        run_id = await self._start("RecommendationFollowUp", argument, workflow_id)
        if run_id is None:
            return
        line = f"restarted {workflow_id} (was {was}) " + (
            "from publication" if fresh else f"in phase {rec.phase}, cycle {rec.cycle}")
        await self._record(line, action="workflow.restarted", entity_type="recommendation", entity_id=rec_id,
                           detail={"workflow_id": workflow_id, "run_id": run_id, "was": was, "fresh": fresh,
                                   "phase": rec.phase, "cycle": rec.cycle, "clocks_from": clocks.source,
                                   "undelivered": carried.undelivered if carried else []})

    async def _compare_recommendation(self, rec_id: str, workflow_id: str, closed_run: bool) -> None:
        async with self.sessions() as session:
            rec = await session.get(Recommendation, rec_id)
        if closed_run and rec.phase == Phase.CLOSED.value:
            return
        view = await self._query(workflow_id, RecommendationView)
        if view is None:
            return
        state = view.state
        if state.projection_version == 0:
            return
        async with self.sessions.begin() as session:
            row = await session.get(Recommendation, rec_id, populate_existing=True)
            if row.projection_version < state.projection_version:
                return  # the workflow's own projection is on its way
            have = {"phase": row.phase, "cycle": row.cycle, "next_action": row.next_action}
            want = {"phase": _words(state.phase), "cycle": state.cycle, "next_action": view.next_action}
            if have == want:
                return
            result = await session.execute(
                update(Recommendation)
                .where(Recommendation.id == rec_id, Recommendation.projection_version == row.projection_version)
                .values(phase=want["phase"], cycle=want["cycle"], next_action=want["next_action"],
                        next_action_at=view.next_action_at,
                        force_claim=_words(state.force_claim) if state.force_claim else None,
                        outcome=_words(state.outcome) if state.outcome else None,
                        projection_version=state.projection_version)
            )
            if result.rowcount != 1:
                return
            await session.execute(refresh_recommendation_clocks(Recommendation.id == rec_id))
        await self._record(self._diff_line(rec_id, have, want), action="projection.repaired",
                           entity_type="recommendation", entity_id=rec_id,
                           detail={"workflow_id": workflow_id, "from": have, "to": want})

    # -- shared

    async def _query(self, workflow_id: str, result_type: type):
        try:
            return await self.client.get_workflow_handle(workflow_id).query(
                "state", result_type=result_type, rpc_timeout=QUERY_TIMEOUT
            )
        except Exception as exc:  # no answer this time (a continue-as-new in flight, no worker): next pass
            log.info("reconciler: no state from %s this time: %s", workflow_id, exc)
            return None

    @staticmethod
    def _diff_line(entity_id: str, have: dict[str, Any], want: dict[str, Any]) -> str:
        changes = "; ".join(f"{k} {have[k]!r} -> {want[k]!r}" for k in have if have[k] != want[k])
        return f"repaired the projection of {entity_id}: {changes}"

    # -- notifications nobody is delivering

    async def orphans(self) -> None:
        """Deliver every notification pending past the policy age that no delivery is working on:
        never attempted (its workflow judged it superseded on a retried task, or died between
        recording and delivering), or not attempted for that long, its lease run out, and no
        delivery workflow of its own running. Delivery leases the row, so even a delivery still
        alive somewhere cannot send it at the same time."""
        now = datetime.now(timezone.utc)
        cutoff = now - pending_age(self.settings)
        async with self.sessions() as session:
            rows = (await session.execute(
                select(Notification.id, Notification.kind, Notification.attempts)
                .where(Notification.status == "pending", Notification.created_at < cutoff,
                       or_(Notification.last_attempt_at.is_(None), Notification.last_attempt_at < cutoff),
                       or_(Notification.lease_until.is_(None), Notification.lease_until < now))
                .order_by(Notification.id)
            )).all()
        from ncpi_workflow.lifecycle import resend_workflow_id

        for notification_id, kind, attempts in rows:
            try:
                statuses = [await workflow_status(self.client, w)
                            for w in (delivery_workflow_id(notification_id), resend_workflow_id(notification_id))]
                if RUNNING in statuses:
                    continue
                if not await _start_delivery(self.client, self.settings, notification_id, WorkflowIDReusePolicy.ALLOW_DUPLICATE):
                    continue
                never = " never attempted" if not attempts else f" last attempted over {self.settings.outbox_pending_minutes:g} min ago"
                await self._record(f"re-delivering pending notification {notification_id} ({kind})",
                                   action="notification.redelivered", entity_type="notification",
                                   entity_id=str(notification_id), detail={"kind": kind, "attempts": attempts, "why": never.strip()})
            except Exception as exc:
                _abort_if_unreachable(exc)
                log.exception("reconciler: notification %s not re-delivered", notification_id)
        async with self.sessions() as session:
            overdue = (Notification.status == "pending", Notification.created_at < cutoff)
            count = await session.scalar(select(func.count()).where(*overdue))
            held = await session.scalar(select(func.count()).where(*overdue, Notification.last_error.like("held: %")))
        if count:
            log.warning("reconciler: %d notification%s pending for more than %g min (%d held by a relay fault); "
                        "`ncpi health` reports them", count, "s" if count != 1 else "", self.settings.outbox_pending_minutes, held)

    # -- stuck workflows

    async def save_stuck(self) -> None:
        """Record this pass's stuck workflows (for `ncpi status`) and forget those that recovered;
        a workflow newly stuck is logged at ERROR once, not on every pass."""
        now = utcnow()
        async with self.sessions.begin() as session:
            known = {r.workflow_id: r for r in (await session.scalars(select(StuckWorkflow))).all()}
            for workflow_id, stuck in self.stuck.items():
                row = known.get(workflow_id)
                if row is None:
                    log.error("reconciler: workflow %s (%s) is stuck: its workflow task has failed %d times: %s",
                              workflow_id, stuck.workflow_type, stuck.attempts, stuck.error)
                    session.add(StuckWorkflow(workflow_id=workflow_id, workflow_type=stuck.workflow_type,
                                              attempts=stuck.attempts, error=stuck.error, since=now, checked_at=now))
                else:
                    row.attempts, row.error, row.checked_at = stuck.attempts, stuck.error, now
            recovered = [w for w in known if w not in self.stuck]
            if recovered:
                await session.execute(delete(StuckWorkflow).where(StuckWorkflow.workflow_id.in_(recovered)))
                for workflow_id in recovered:
                    log.warning("reconciler: workflow %s is no longer stuck", workflow_id)


async def reconcile(sessions: Sessions, client: Client, settings: Settings) -> list[str]:
    """Make Temporal and the records agree. Returns one line per repair (also logged and audited).

    Every inspection not closed and every recommendation not closed in the records must have a
    running workflow: a terminated, failed, cancelled, timed-out or missing one is restarted under
    its business ID with its clocks (policy, calendar, time scale) from its own last run's input and
    its state from the records, so it carries on where it stopped: no notice or reminder sent again
    (the outbox's keys are marked handled; the outbox refuses a second row anyway), no child started
    twice, pending deliveries resumed. A running workflow whose status projection differs (phase,
    cycle, next action) has the projection row repaired from its "state" query. A running workflow
    whose workflow task has been tried NCPI_STUCK_TASK_ATTEMPTS times is left alone and recorded
    as stuck, with the last failure from its history (`stuck_workflows`). Every notification
    pending past NCPI_OUTBOX_PENDING_MINUTES that nobody is delivering is delivered again.

    The database may have restarted since the last pass: the pool is checked first, and a pass cut
    short by a lost connection is run once more on fresh connections (every repair is idempotent)."""
    await _database_ready(sessions)
    try:
        return await _one_pass(sessions, client, settings)
    except (SQLAlchemyError, OSError) as exc:
        if not _lost_connection(exc):
            raise
        log.warning("reconciler: the database connection was lost during the pass (%s): running it again",
                    " ".join(str(exc).split())[:200])
    await _fresh_connections(sessions)
    return await _one_pass(sessions, client, settings)


async def _one_pass(sessions: Sessions, client: Client, settings: Settings) -> list[str]:
    run = _Pass(sessions, client, settings)
    await run.inspections()
    await run.recommendations()
    await run.orphans()
    await run.save_stuck()
    return run.repairs
