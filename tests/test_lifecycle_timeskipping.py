"""Whole lifecycles on the time-skipping server, one test per branch, asserting the notifications
recorded (kind and calendar date) and the records written."""

from __future__ import annotations

import asyncio
import hashlib
from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select
from temporalio.client import WorkflowUpdateFailedError

from ncpi_workflow.lifecycle import (
    DecisionRequest,
    DeliveryRequest,
    EvidenceRequestInput,
    InspectionView,
    ProgressRequest,
    ReasonRequest,
    RecommendationView,
    ReviseDeadlineRequest,
    TriggerRevisitRequest,
)
from ncpi_workflow.models import Deadline, DeadlineRevision, Decision, EvidenceRequest, Inspection, Recommendation, Revisit
from ncpi_workflow.publishing import publish
from tests.lifecycle_support import CUMBRIA, harness, local_date, skip_to, write_report

LONDON = ZoneInfo("Europe/London")


def at(y, m, d, hh=9, mm=0) -> datetime:
    return datetime(y, m, d, hh, mm, tzinfo=LONDON).astimezone(timezone.utc)


def evidence(name: str, by: str = "liaison officer") -> EvidenceRequestInput:
    return EvidenceRequestInput(
        filename=name, sha256=hashlib.sha256(name.encode()).hexdigest(), size_bytes=1234,
        storage_path=f"/evidence/{name}", content_type="application/pdf", by=by,
    )


async def start(h, file, published: date):
    h.anchor = await h.env.get_current_time()
    h.published_at = at(published.year, published.month, published.day)
    result = await publish(h.settings, h.client, file, anchor=h.anchor)
    assert result.started
    return result


async def rec_view(h, rec_id) -> RecommendationView:
    return await h.recommendation(rec_id).query("state", result_type=RecommendationView)


async def insp_view(h, inspection_id) -> InspectionView:
    return await h.inspection(inspection_id).query("state", result_type=InspectionView)


async def update(handle, name, arg, result_type=None):
    return await handle.execute_update(name, arg, result_type=result_type)


async def eventually(check, timeout: float = 20.0):
    """Poll (in real time) until `check()` is truthy: workflows finish their activities asynchronously."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await check()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {result!r}")
        await asyncio.sleep(0.1)


def summary(notifications, recommendation=True):
    """(London date, kind, what it is about) for each notification, in schedule order."""
    rows = []
    for n in notifications:
        about = (n.recommendation_id or "").rsplit("-", 1)[-1] if n.recommendation_id else n.context.get("deadline", "report")
        rows.append((local_date(n.scheduled_for).isoformat(), n.kind, about))
    return rows


async def outcome_rows(h):
    async with h.sessions() as session:
        return [(d.recommendation_id.rsplit("-", 1)[-1], d.cycle, d.outcome) for d in
                (await session.scalars(select(Decision).order_by(Decision.recommendation_id, Decision.cycle))).all()]


async def test_cumbria_inspector_revisit_in_june_closes_every_recommendation(time_skipping_env, tmp_path):
    async with harness(time_skipping_env, tmp_path) as h:
        await start(h, CUMBRIA, date(2017, 1, 26))
        insp = h.inspection("CUM-2017-01-26")
        # The force reports progress and delivers its action plan before 9 March 2017.
        await skip_to(h, at(2017, 2, 27, 12))
        for ref in ("R1", "R2", "R3", "R4", "R5"):
            await update(h.recommendation(f"CUM-2017-01-26-{ref}"), "submit_progress",
                         ProgressRequest(claim="implemented" if ref == "R1" else "in_progress", text="Work under way.", by="liaison officer"))
        await update(insp, "record_delivery", DeliveryRequest(item="action_plan", by="hmi.office", note="received by email"))
        # The inspectors revisit in June 2017, well inside six months.
        await skip_to(h, at(2017, 6, 5, 12))
        revisit = await insp.execute_update("trigger_revisit", TriggerRevisitRequest(by="hmi.cunningham"))
        assert revisit["trigger"] == "inspector"
        for ref in ("R1", "R2", "R3", "R4", "R5"):
            rec = h.recommendation(f"CUM-2017-01-26-{ref}")
            view = await eventually(lambda: rec_view(h, f"CUM-2017-01-26-{ref}"))
            assert view.state.phase == "evidence_requested"
            await update(rec, "submit_evidence", evidence(f"{ref}-evidence.pdf"))
            view = await update(rec, "record_decision",
                                DecisionRequest(outcome="achieved", rationale=f"{ref} is fully implemented.", by="hmi.cunningham"),
                                result_type=RecommendationView)
            assert view.state.phase == "closed" and view.register_status == "no further action needed"
        view = await eventually(lambda: _closed(h, "CUM-2017-01-26"))
        assert view.state.cycle == 1

        rows = summary(await h.notifications())
        assert rows[0] == ("2017-01-26", "published", "report")
        action_plan = [r for r in rows if r[2] == "action_plan"]
        # Reminders before the 9 March deadline; none after the plan arrived on 27 February.
        assert action_plan == [("2017-02-23", "reminder", "action_plan")]
        requests = [r for r in rows if r[1] == "evidence_request"]
        assert requests == [("2017-06-05", "evidence_request", ref) for ref in ("R1", "R2", "R3", "R4", "R5")]
        assert ("2017-06-05", "revisit_opened", "report") in rows
        assert [r for r in rows if r[1] == "decision"] == [("2017-06-05", "decision", ref) for ref in ("R1", "R2", "R3", "R4", "R5")]
        assert rows[-1] == ("2017-06-05", "revisit_outcome", "report")
        # R1 was claimed implemented before its deadline: no overdue reminders for it.
        assert not [r for r in rows if r[2] == "R1" and r[1] in ("overdue", "escalation")]
        assert await outcome_rows(h) == [(ref, 1, "achieved") for ref in ("R1", "R2", "R3", "R4", "R5")]
        async with h.sessions() as session:
            assert all(r.phase == "closed" and r.outcome == "achieved" for r in (await session.scalars(select(Recommendation))).all())
            revisits = (await session.scalars(select(Revisit))).all()
            assert [(r.trigger, r.triggered_by, local_date(r.opened_at)) for r in revisits] == [("inspector", "hmi.cunningham", date(2017, 6, 5))]
            plan = await session.scalar(select(Deadline).where(Deadline.key == "action_plan"))
            assert plan.met_at is not None


async def _closed(h, inspection_id):
    view = await insp_view(h, inspection_id)
    return view if view.state.phase == "closed" else None


async def test_no_evidence_ever_reminders_then_every_escalation_rung(time_skipping_env, tmp_path):
    # One "within three months" recommendation, published Monday 6 March 2017; nobody triggers the revisit.
    report = write_report(tmp_path, "GMP", date(2017, 3, 6), [("R1", "within_three_months")])
    async with harness(time_skipping_env, tmp_path) as h:
        await start(h, report, date(2017, 3, 6))
        await skip_to(h, at(2017, 10, 2, 12))
        rows = summary(await h.notifications())
        assert rows == [
            ("2017-03-06", "published", "report"),
            ("2017-03-31", "reminder", "action_plan"),     # 10 working days before, across Easter
            ("2017-04-11", "reminder", "action_plan"),
            ("2017-04-13", "reminder", "pcc_response"),
            ("2017-04-18", "due_today", "action_plan"),    # P + 6 weeks is Easter Monday: moved to Tuesday
            ("2017-04-25", "escalation", "action_plan"),
            ("2017-04-26", "reminder", "pcc_response"),
            ("2017-05-02", "due_today", "pcc_response"),   # P + 56 days is the May bank holiday
            ("2017-05-03", "escalation", "action_plan"),
            ("2017-05-09", "escalation", "pcc_response"),
            ("2017-05-10", "overdue", "action_plan"),
            ("2017-05-16", "escalation", "pcc_response"),
            ("2017-05-17", "escalation", "action_plan"),
            ("2017-05-22", "reminder", "R1"),              # 29 May is a bank holiday
            ("2017-05-23", "overdue", "pcc_response"),
            ("2017-05-31", "escalation", "pcc_response"),
            ("2017-06-01", "reminder", "R1"),
            ("2017-06-06", "due_today", "R1"),
            ("2017-06-13", "escalation", "R1"),            # 5 working days overdue: chief officer
            ("2017-06-20", "escalation", "R1"),            # 10: chief officer and PCC
            ("2017-06-27", "overdue", "R1"),               # 15: the rung reached is told again
            ("2017-07-04", "escalation", "R1"),            # 20: lead HM Inspector
            ("2017-08-08", "revisit_notice", "revisit_by"),  # inspectors, 20 working days before
            ("2017-08-22", "revisit_notice", "revisit_by"),  # 10 working days before
            ("2017-09-06", "revisit_opened", "report"),    # nobody triggered it: opened at P + 6 months
            ("2017-09-06", "evidence_request", "R1"),      # due in 10 working days: 20 September
            ("2017-09-15", "reminder", "R1"),
            ("2017-09-20", "due_today", "R1"),
            ("2017-09-27", "escalation", "R1"),
        ]
        recipients = {(local_date(n.scheduled_for).isoformat(), n.context.get("rung")): n.recipients["roles"]
                      for n in await h.notifications() if n.kind == "escalation"}
        assert recipients[("2017-06-13", "chief_officer")] == ["liaison_officer", "chief_officer"]
        assert recipients[("2017-06-20", "chief_officer_and_pcc")] == ["liaison_officer", "chief_officer", "pcc"]
        assert recipients[("2017-07-04", "lead_hm_inspector")] == ["liaison_officer", "chief_officer", "pcc", "lead_hm_inspector"]
