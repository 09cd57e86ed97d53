"""What inspectors do to a running follow-up: each is one Temporal Update, so its validator (the
same `check_*` rule in ncpi_workflow.lifecycle) refuses a bad request before anything is recorded,
whichever front end asked. `by` is who acts: the CLI's --by, the web's signed-in user. Also the
operator's push of newly known bank holidays to every running follow-up (a signal, `ncpi calendar
refresh`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from ncpi_workflow.app.temporal_calls import (
    INSPECTION,
    RECOMMENDATION,
    parse_inspection,
    parse_recommendation,
    parse_target,
    send_update,
)
from ncpi_workflow.errors import UserError
from ncpi_workflow.lifecycle import (
    DecisionRequest,
    DeliveryRequest,
    InspectionView,
    ReasonRequest,
    RecommendationView,
    RegisterStatusRequest,
    ReviseDeadlineRequest,
    RevisitResult,
    TrackedDeadline,
    TriggerRevisitRequest,
)

RECOMMENDATION_DEADLINES = ("recommendation", "evidence")
INSPECTION_DEADLINES = ("action_plan", "pcc_response", "immediate_update", "revisit_by")
DELIVERABLE_ITEMS = ("action_plan", "pcc_response", "immediate_update")


async def trigger_revisit(settings, client, inspection_id: str, by: str, on: date | None = None) -> RevisitResult:
    """Open the revisit (post-inspection review) now, or (`on`) as opened on an earlier day: its
    fieldwork start. Every action's `on` is back-dating: the workflow refuses a future day or one
    before publication, and records both dates (when it happened, when it was recorded)."""
    insp = parse_inspection(inspection_id)
    request = TriggerRevisitRequest(by=by, on=on)
    return await send_update(settings, client, INSPECTION, insp, "trigger_revisit", request, RevisitResult)


async def record_decision(
    settings, client, recommendation_id: str, outcome: str, rationale: str, by: str, on: date | None = None,
) -> RecommendationView:
    """The inspectorate's judgement on a recommendation under review (`on`: decided that day, not
    before its revisit opened)."""
    rec = parse_recommendation(recommendation_id)
    request = DecisionRequest(outcome=outcome, rationale=rationale, by=by, on=on)
    return await send_update(settings, client, RECOMMENDATION, rec, "record_decision", request)


async def reopen(settings, client, recommendation_id: str, reason: str, by: str) -> RecommendationView:
    rec = parse_recommendation(recommendation_id)
    return await send_update(settings, client, RECOMMENDATION, rec, "reopen", ReasonRequest(reason=reason, by=by))


async def withdraw(settings, client, recommendation_id: str, reason: str, by: str) -> RecommendationView:
    rec = parse_recommendation(recommendation_id)
    return await send_update(settings, client, RECOMMENDATION, rec, "withdraw", ReasonRequest(reason=reason, by=by))


async def set_register_status(
    settings, client, recommendation_id: str, status: str, comment: str, by: str, on: date | None = None,
) -> RecommendationView:
    rec = parse_recommendation(recommendation_id)
    request = RegisterStatusRequest(status=status, comment=comment, by=by, on=on)
    return await send_update(settings, client, RECOMMENDATION, rec, "set_register_status", request)


async def record_delivery(
    settings, client, inspection_id: str, item: str, by: str, note: str = "",
    sha256: str | None = None, filename: str | None = None, url: str | None = None, on: date | None = None,
) -> InspectionView:
    """The force (or PCC) delivered a report-level item: its deadline is met and its reminders stop.
    `sha256` and `filename` name the document received (kept in the evidence store), or `url` its address;
    `on` the day it was received, when that was earlier."""
    insp = parse_inspection(inspection_id)
    request = DeliveryRequest(item=item, by=by, note=note, sha256=sha256, filename=filename, url=url, on=on)
    return await send_update(settings, client, INSPECTION, insp, "record_delivery", request)


async def record_delivery_received(
    settings, client, inspection_id: str, item: str, by: str, note: str = "", *, document=None, url: str | None = None,
    on: date | None = None,
) -> InspectionView:
    """Receipt of the action plan, the PCC's response or the immediate update recorded by an
    inspector (`ncpi deliver --document/--url`, the web app's form) with the document received, as
    the portal records a force's: `document` is an upload already checked by
    ncpi_workflow.uploads.check_upload (a `CheckedUpload`), kept in the evidence store by SHA-256
    only once the request is known to be acceptable (the same rules as the workflow's validator,
    asked first), so a refused delivery stores nothing; or `url`, the address it is published at.
    Then `record_delivery`, the Update every front end uses."""
    from ncpi_workflow.app.temporal_calls import query_state
    from ncpi_workflow.evidence_files import keep_file
    from ncpi_workflow.lifecycle import check_delivery

    insp = parse_inspection(inspection_id)
    if document is not None and url:
        raise UserError("give either the document or its web address, not both")
    if url:
        from ncpi_workflow.app.force_portal import check_url

        url = check_url(url)  # the portal's rule for a document's address
    request = DeliveryRequest(item=item, by=by, note=note, url=url or None,
                              sha256=document.sha256 if document is not None else None,
                              filename=document.filename if document is not None else None, on=on)
    try:
        check_delivery(request)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if document is not None:
        # Ask first, so that a delivery the workflow would refuse leaves nothing in the store (the
        # validator's own words; it judges again when the Update arrives).
        from ncpi_workflow.formatting import local_date

        if item not in DELIVERABLE_ITEMS:
            raise UserError(f"unknown item {item!r}; use one of: immediate_update, action_plan, pcc_response")
        current = await query_state(settings, client, INSPECTION, insp)
        from ncpi_workflow.app.force_responses import check_backdate

        check_backdate(on, insp, current, f"the {item.replace('_', ' ')}'s receipt")
        deadline = next((d for d in current.state.deadlines if d.key == item), None)
        if deadline is None:
            raise UserError(f"this report has no {item} deadline")
        if deadline.met_at is not None:
            raise UserError(f"the {item.replace('_', ' ')} was already received on {local_date(deadline.met_at):%Y-%m-%d}")
        keep_file(document.path, settings.evidence_dir, settings.evidence_max_bytes)
    return await record_delivery(settings, client, insp, item, by, note,
                                 sha256=request.sha256, filename=request.filename, url=request.url, on=on)


@dataclass(frozen=True)
class DeadlineMoved:
    business_id: str
    kind: str
    """'inspection' or 'recommendation'."""
    key: str
    previous_due: date
    due: date
    original_due: date
    view: InspectionView | RecommendationView


def parse_due(text: str | date, field: str = "--to") -> date:
    if isinstance(text, date):
        return text
    try:
        return date.fromisoformat(str(text).strip())
    except ValueError:
        raise UserError(f"{field}: {text!r} is not a date such as 2026-12-31") from None


async def revise_deadline(settings, client, target_id: str, deadline: str, new_due: str | date, reason: str, by: str) -> DeadlineMoved:
    """Move a deadline of an inspection (report level) or of a recommendation; its original is kept."""
    kind, business_id = parse_target(target_id)
    due = parse_due(new_due)
    request = ReviseDeadlineRequest(deadline=deadline, new_due=due, reason=reason, by=by)
    view = await send_update(settings, client, kind, business_id, "revise_deadline", request)
    moved: TrackedDeadline
    if kind == RECOMMENDATION:
        moved = view.state.deadline if deadline == "recommendation" else view.state.evidence_deadline
    else:
        moved = next(d for d in view.state.deadlines if d.key == deadline)
    return DeadlineMoved(
        business_id, kind, deadline, moved.revisions[-1].previous_due, moved.due, moved.original_due, view
    )


# ---------------------------------------------------------------- the working-day calendar of running follow-ups

FOLLOW_UP_TYPES = ("InspectionFollowUp", "RecommendationFollowUp")
REFRESH_SIGNAL = "refresh_calendar"
SIGNALS_AT_ONCE = 50


def calendar_refresh(settings, today: date | None = None):
    """The `refresh_calendar` signal's value: the bank holidays known now (the `holidays` package and
    the policy's extra_bank_holidays). Needs neither Temporal nor the database."""
    from datetime import datetime, timezone
    from zoneinfo import ZoneInfo

    from ncpi_workflow.clocks import refresh_for
    from ncpi_workflow.policy import load_policy

    policy = load_policy(settings.policy).calendar
    return refresh_for(policy, today or datetime.now(timezone.utc).astimezone(ZoneInfo(policy.timezone)).date())


async def refresh_calendars(settings, client, refresh=None) -> dict[str, int]:
    """Signal `refresh` (by default `calendar_refresh(settings)`) to every running follow-up workflow
    on this task queue. Returns how many of each type were signalled (one finished since it was
    listed is not counted)."""
    import asyncio

    from temporalio.service import RPCError, RPCStatusCode

    from ncpi_workflow.app.temporal_calls import CALL_TIMEOUT_SECONDS, temporal_errors

    refresh = refresh or calendar_refresh(settings)
    gate = asyncio.Semaphore(SIGNALS_AT_ONCE)

    async def signal_one(workflow_id: str) -> bool:
        async with gate:
            try:
                await asyncio.wait_for(
                    client.get_workflow_handle(workflow_id).signal(REFRESH_SIGNAL, refresh), CALL_TIMEOUT_SECONDS
                )
            except RPCError as exc:
                if exc.status is RPCStatusCode.NOT_FOUND:  # finished since it was listed
                    return False
                raise
            return True

    counts = {}
    with temporal_errors(settings, "the running follow-ups"):
        for workflow_type in FOLLOW_UP_TYPES:
            query = f'ExecutionStatus="Running" AND WorkflowType="{workflow_type}" AND TaskQueue="{settings.task_queue}"'
            ids = [w.id async for w in client.list_workflows(query)]
            counts[workflow_type] = sum(await asyncio.gather(*(signal_one(i) for i in ids)))
    return counts
