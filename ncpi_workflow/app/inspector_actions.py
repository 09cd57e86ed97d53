"""What inspectors do to a running follow-up: each is one Temporal Update, so its validator (the
same `check_*` rule in ncpi_workflow.lifecycle) refuses a bad request before anything is recorded,
whichever front end asked. `by` is who acts: the CLI's --by, the web's signed-in user."""

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


async def trigger_revisit(settings, client, inspection_id: str, by: str) -> RevisitResult:
    """Open the revisit (post-inspection review) now."""
    insp = parse_inspection(inspection_id)
    return await send_update(settings, client, INSPECTION, insp, "trigger_revisit", TriggerRevisitRequest(by=by), RevisitResult)


async def record_decision(settings, client, recommendation_id: str, outcome: str, rationale: str, by: str) -> RecommendationView:
    """The inspectorate's judgement on a recommendation under review."""
    rec = parse_recommendation(recommendation_id)
    request = DecisionRequest(outcome=outcome, rationale=rationale, by=by)
    return await send_update(settings, client, RECOMMENDATION, rec, "record_decision", request)


async def reopen(settings, client, recommendation_id: str, reason: str, by: str) -> RecommendationView:
    rec = parse_recommendation(recommendation_id)
    return await send_update(settings, client, RECOMMENDATION, rec, "reopen", ReasonRequest(reason=reason, by=by))


async def withdraw(settings, client, recommendation_id: str, reason: str, by: str) -> RecommendationView:
    rec = parse_recommendation(recommendation_id)
    return await send_update(settings, client, RECOMMENDATION, rec, "withdraw", ReasonRequest(reason=reason, by=by))


async def set_register_status(settings, client, recommendation_id: str, status: str, comment: str, by: str) -> RecommendationView:
    rec = parse_recommendation(recommendation_id)
    request = RegisterStatusRequest(status=status, comment=comment, by=by)
    return await send_update(settings, client, RECOMMENDATION, rec, "set_register_status", request)


async def record_delivery(settings, client, inspection_id: str, item: str, by: str, note: str = "") -> InspectionView:
    """The force (or PCC) delivered a report-level item: its deadline is met and its reminders stop."""
    insp = parse_inspection(inspection_id)
    return await send_update(settings, client, INSPECTION, insp, "record_delivery", DeliveryRequest(item=item, by=by, note=note))


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
