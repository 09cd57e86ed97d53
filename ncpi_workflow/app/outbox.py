"""The email outbox: every notification the follow-ups produced, and re-sending a failed one."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select

from ncpi_workflow.app.temporal_calls import temporal_errors
from ncpi_workflow.errors import UserError
from ncpi_workflow.lifecycle import resend_workflow_id
from ncpi_workflow.models import Inspection, Notification, NotificationStatus
from ncpi_workflow.views import outbox_records

OUTBOX_STATUSES = tuple(s.value for s in NotificationStatus)
RESEND_WORKFLOW = "NotificationDelivery"
RESEND_RPC_TIMEOUT = timedelta(seconds=30)


@dataclass(frozen=True)
class OutboxFilter:
    status: str | None = None
    kind: str | None = None
    force: str | None = None
    inspection_id: str | None = None
    recommendation_id: str | None = None

    def check(self, status_field: str = "status") -> None:
        """Refuse an unknown status, naming the field it came from (the CLI's is --status)."""
        if self.status is not None and self.status not in OUTBOX_STATUSES:
            raise UserError(f"{status_field}: {self.status!r} is not one of: {', '.join(OUTBOX_STATUSES)}")


def _query(where: OutboxFilter):
    query = select(Notification)
    if where.status:
        query = query.where(Notification.status == where.status)
    if where.kind:
        query = query.where(Notification.kind == where.kind)
    if where.force:
        query = query.join(Inspection, Inspection.id == Notification.inspection_id).where(Inspection.force_code == where.force)
    if where.inspection_id:
        query = query.where(Notification.inspection_id == where.inspection_id)
    if where.recommendation_id:
        query = query.where(Notification.recommendation_id == where.recommendation_id)
    return query.order_by(Notification.scheduled_for, Notification.id)


async def list_notifications(sessions, where: OutboxFilter | None = None, limit: int | None = None) -> list[Notification]:
    """Notifications (ORM rows, detached) in scheduled order, filtered by state, kind, force..."""
    where = where or OutboxFilter()
    where.check()
    query = _query(where)
    if limit is not None:
        query = query.limit(limit)
    async with sessions() as session:
        return list(await session.scalars(query))


async def list_records(sessions, where: OutboxFilter | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """The same as plain records (what `ncpi outbox --json` prints), plus the last error."""
    rows = await list_notifications(sessions, where, limit)
    records = outbox_records(rows)
    for record, row in zip(records, rows):
        record.setdefault("last_error", row.last_error)
    return records


async def kinds(sessions) -> list[str]:
    """Every notification kind present, for a filter's choices."""
    async with sessions() as session:
        return list((await session.scalars(select(Notification.kind).distinct().order_by(Notification.kind))).all())


async def _resend_running(settings, client, workflow_id: str) -> bool:
    from temporalio.client import WorkflowExecutionStatus
    from temporalio.service import RPCError, RPCStatusCode

    try:
        described = await client.get_workflow_handle(workflow_id).describe(rpc_timeout=RESEND_RPC_TIMEOUT)
    except RPCError as exc:
        if exc.status is RPCStatusCode.NOT_FOUND:
            return False
        raise
    return described.status == WorkflowExecutionStatus.RUNNING


async def _resend_one(settings, client, sessions, notification_id: int, by: str, bulk: bool) -> list[str] | None:
    """The row made pending again (current addresses, audited) and committed, then its delivery
    workflow started: the delivery's first activity reads the row, so it must find it committed, and
    no transaction is held open across a Temporal call. A re-send already under way is refused (one
    asked for by ID) or skipped (in bulk) before anything is written; should the start fail, the row
    gets its status back."""
    from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
    from temporalio.exceptions import WorkflowAlreadyStartedError

    from ncpi_workflow.store import append_audit, resolve_recipients

    inspectorate = {"inspectors": settings.inspectors_email, "lead_hm_inspector": settings.lead_hm_inspector_email}
    workflow_id = resend_workflow_id(notification_id)
    under_way = UserError(f"a re-send of notification {notification_id} is already under way")
    with temporal_errors(settings, f"notification {notification_id}"):
        running = await _resend_running(settings, client, workflow_id)
    if running:
        if bulk:
            return None
        raise under_way
    async with sessions.begin() as session:  # committed on leaving the block, before the start
        row = await session.get(Notification, notification_id, with_for_update=True)
        if row is None:
            raise UserError(f"no notification {notification_id} in the outbox")
        if row.status == NotificationStatus.SENT:
            if bulk:
                return None  # sent since it was listed
            raise UserError(f"notification {notification_id} was already sent ({row.sent_at:%Y-%m-%d %H:%M} UTC)")
        try:
            # A digest or alert belongs to no inspection: only the inspectorate's addresses apply.
            owner = row.inspection_id or "ALL"
            row.recipients = await resolve_recipients(session, owner, row.recipients.get("roles", []), inspectorate)
        except LookupError as exc:
            raise UserError(str(exc)) from None
        previous_status, previous = row.status, row.last_error
        row.status = NotificationStatus.PENDING.value
        to = list(row.recipients["to"])
        await append_audit(session, actor=by, action="notification.resend", entity_type="notification",
                           entity_id=str(row.id), detail={"previous_error": previous, "to": to})
    with temporal_errors(settings, f"notification {notification_id}"):
        try:
            await client.start_workflow(
                RESEND_WORKFLOW, notification_id, id=workflow_id,
                task_queue=settings.task_queue, id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
                id_conflict_policy=WorkflowIDConflictPolicy.FAIL, rpc_timeout=RESEND_RPC_TIMEOUT,
            )
        except WorkflowAlreadyStartedError:
            # Started since the check above by another re-send, which delivers the row as committed.
            if bulk:
                return None
            raise under_way from None
        except BaseException:
            await _status_back(sessions, notification_id, previous_status)
            raise
    return to


async def _status_back(sessions, notification_id: int, status: str) -> None:
    """Undo the pending status of a re-send that did not start (unless a delivery has touched it since)."""
    from sqlalchemy import update

    async with sessions.begin() as session:
        await session.execute(
            update(Notification)
            .where(Notification.id == notification_id, Notification.status == NotificationStatus.PENDING.value)
            .values(status=status)
        )


async def resend(settings, client, sessions, notification_id: int, by: str) -> list[str]:
    """Send a failed (or stuck pending) notification again, to the contacts' current addresses.
    The message goes out as it was first rendered (the same bytes and Message-ID; only the To
    header follows a corrected address). Returns the addresses; audited as `notification.resend`."""
    return await _resend_one(settings, client, sessions, notification_id, by, bulk=False)


async def resend_failed(
    settings, client, sessions, by: str, *, since: datetime | None = None, kind: str | None = None
) -> list[tuple[int, list[str]]]:
    """Every failed notification (last tried on or after `since`, of `kind`) again. Returns
    (id, addresses) of each one started; one sent or already being re-sent meanwhile is skipped."""
    query = select(Notification.id).where(Notification.status == NotificationStatus.FAILED.value)
    if since is not None:
        query = query.where(func.coalesce(Notification.last_attempt_at, Notification.created_at) >= since)
    if kind is not None:
        query = query.where(Notification.kind == kind.strip())
    async with sessions() as session:
        ids = list((await session.scalars(query.order_by(Notification.id))).all())
    done = []
    for row_id in ids:
        to = await _resend_one(settings, client, sessions, row_id, by, bulk=True)
        if to is not None:
            done.append((row_id, to))
    return done
