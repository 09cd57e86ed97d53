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
from temporalio.service import RPCError

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


# A query that lands as a workflow continues-as-new can go unanswered on the test server: keep it
# short, and let `eventually` ask again.
QUERY_TIMEOUT = timedelta(seconds=3)


async def rec_view(h, rec_id) -> RecommendationView:
    return await h.recommendation(rec_id).query("state", result_type=RecommendationView, rpc_timeout=QUERY_TIMEOUT)


async def insp_view(h, inspection_id) -> InspectionView:
    return await h.inspection(inspection_id).query("state", result_type=InspectionView, rpc_timeout=QUERY_TIMEOUT)


async def update(handle, name, arg, result_type=None):
    return await handle.execute_update(name, arg, result_type=result_type)


async def eventually(check, timeout: float = 20.0):
    """Poll (in real time) until `check()` is truthy: workflows finish their activities asynchronously."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            result = await check()
        except RPCError as exc:
            result = exc  # not answered this time (see QUERY_TIMEOUT)
        else:
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
        # The revisit's open_review signals go out together (not awaited one by one): any order.
        requests = sorted(r for r in rows if r[1] == "evidence_request")
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


async def revisit_and_evidence(h, inspection_id: str, refs: list[str], when: datetime, by="hmi.lead"):
    await skip_to(h, when)
    await h.inspection(inspection_id).execute_update("trigger_revisit", TriggerRevisitRequest(by=by))
    for ref in refs:
        rec_id = f"{inspection_id}-{ref}"
        await eventually(lambda: _phase_is(h, rec_id, "evidence_requested"))
        await update(h.recommendation(rec_id), "submit_evidence", evidence(f"{rec_id}.pdf"))


async def _phase_is(h, rec_id, phase):
    return (await rec_view(h, rec_id)).state.phase == phase


async def decide(h, rec_id, outcome, rationale="Judged at the revisit.", by="hmi.lead") -> RecommendationView:
    return await update(h.recommendation(rec_id), "record_decision",
                        DecisionRequest(outcome=outcome, rationale=rationale, by=by), result_type=RecommendationView)


async def test_partially_achieved_then_achieved_in_the_second_cycle(time_skipping_env, tmp_path):
    report = write_report(tmp_path, "WYP", date(2017, 2, 7), [("R1", "within_three_months")])
    async with harness(time_skipping_env, tmp_path) as h:
        await start(h, report, date(2017, 2, 7))
        await revisit_and_evidence(h, "WYP-2017-02-07", ["R1"], at(2017, 5, 15, 12))
        view = await decide(h, "WYP-2017-02-07-R1", "partially_achieved", "Profile written; not yet used in districts.")
        assert (view.state.phase, view.state.cycle, view.state.deadline.due) == ("in_progress", 2, date(2017, 8, 15))
        inspection = await eventually(lambda: _cycle(h, "WYP-2017-02-07", 2))
        assert inspection.state.phase == "following_up"
        assert [d.due for d in inspection.state.deadlines if d.key == "revisit_by"] == [date(2017, 8, 15)]
        # Cycle 2: the revisit opens by itself at its limit; evidence, then achieved.
        await skip_to(h, at(2017, 8, 15, 12))
        await eventually(lambda: _phase_is(h, "WYP-2017-02-07-R1", "evidence_requested"))
        await update(h.recommendation("WYP-2017-02-07-R1"), "submit_evidence", evidence("cycle-2.pdf"))
        view = await decide(h, "WYP-2017-02-07-R1", "achieved", "Now used in every district.")
        assert view.state.phase == "closed" and view.state.cycle == 2
        await eventually(lambda: _closed(h, "WYP-2017-02-07"))
        rows = summary(await h.notifications())
        assert ("2017-05-15", "decision", "R1") in rows
        assert ("2017-05-15", "further_follow_up", "R1") in rows
        # The new deadline (15 August) earns its own reminders: 10 and 3 working days before.
        assert ("2017-08-01", "reminder", "R1") in rows and ("2017-08-10", "reminder", "R1") in rows
        assert [r for r in rows if r[1] == "revisit_opened"] == [("2017-05-15", "revisit_opened", "report"), ("2017-08-15", "revisit_opened", "report")]
        assert [r for r in rows if r[1] == "revisit_outcome"] == [("2017-05-15", "revisit_outcome", "report"), ("2017-08-15", "revisit_outcome", "report")]
        assert await outcome_rows(h) == [("R1", 1, "partially_achieved"), ("R1", 2, "achieved")]
        async with h.sessions() as session:
            cycles = (await session.scalars(select(Deadline.cycle).where(Deadline.key == "recommendation:R1").order_by(Deadline.cycle))).all()
            assert cycles == [1, 2]
            assert [r.cycle for r in (await session.scalars(select(Revisit).order_by(Revisit.cycle))).all()] == [1, 2]


async def _cycle(h, inspection_id, cycle):
    view = await insp_view(h, inspection_id)
    return view if view.state.cycle == cycle else None


async def test_not_achieved_escalates_and_starts_a_further_cycle(time_skipping_env, tmp_path):
    report = write_report(tmp_path, "MER", date(2017, 2, 8), [("R1", "within_three_months")])
    async with harness(time_skipping_env, tmp_path) as h:
        await start(h, report, date(2017, 2, 8))
        await revisit_and_evidence(h, "MER-2017-02-08", ["R1"], at(2017, 6, 1, 12))
        view = await decide(h, "MER-2017-02-08-R1", "not_achieved", "No change in practice found.")
        assert view.state.phase == "in_progress" and view.state.cycle == 2
        await eventually(lambda: _cycle(h, "MER-2017-02-08", 2))
        decided = [n for n in await h.notifications() if local_date(n.scheduled_for) == date(2017, 6, 1) and n.recommendation_id]
        kinds = [(n.kind, n.context.get("rung"), n.recipients["roles"]) for n in decided if n.kind != "evidence_request"]
        assert kinds == [
            ("decision", None, ["liaison_officer", "chief_officer"]),
            ("escalation", "not_achieved", ["liaison_officer", "chief_officer", "pcc", "lead_hm_inspector"]),
            ("further_follow_up", None, ["liaison_officer", "chief_officer"]),
        ]
        escalation = next(n for n in decided if n.kind == "escalation")
        assert "lead-hmi@inspectorate.example" in escalation.recipients["to"]
        assert "pcc@merseyside.pcc.example" in escalation.recipients["to"]
        async with h.sessions() as session:
            rec = await session.get(Recommendation, "MER-2017-02-08-R1")
            assert (rec.phase, rec.cycle, rec.outcome) == ("in_progress", 2, "not_achieved")


async def test_superseded_closes_with_no_further_action(time_skipping_env, tmp_path):
    report = write_report(tmp_path, "SUS", date(2017, 2, 9), [("R1", "within_six_months")])
    async with harness(time_skipping_env, tmp_path) as h:
        await start(h, report, date(2017, 2, 9))
        await revisit_and_evidence(h, "SUS-2017-02-09", ["R1"], at(2017, 6, 1, 12))
        view = await decide(h, "SUS-2017-02-09-R1", "superseded", "Covered by the 2017 vulnerability inspection.")
        assert view.state.phase == "closed" and view.state.outcome == "superseded"
        await eventually(lambda: _closed(h, "SUS-2017-02-09"))
        await skip_to(h, at(2017, 9, 1, 12))
        rows = summary(await h.notifications())
        # Nothing for R1 after the decision: its own deadline (9 August) passes in silence.
        assert not [r for r in rows if r[2] == "R1" and r[0] > "2017-06-01"]
        assert await outcome_rows(h) == [("R1", 1, "superseded")]


async def test_withdrawn_before_the_revisit_leaves_the_others_to_it(time_skipping_env, tmp_path):
    report = write_report(tmp_path, "DOR", date(2017, 2, 10), [("R1", "within_three_months"), ("R2", "within_three_months")])
    async with harness(time_skipping_env, tmp_path) as h:
        await start(h, report, date(2017, 2, 10))
        await skip_to(h, at(2017, 3, 1, 12))
        view = await update(h.recommendation("DOR-2017-02-10-R1"), "withdraw",
                            ReasonRequest(reason="Duplicates R2 after the force's restructure.", by="hmi.lead"), result_type=RecommendationView)
        assert view.state.phase == "closed" and view.state.outcome == "withdrawn"
        await eventually(lambda: _open_list(h, "DOR-2017-02-10", ["DOR-2017-02-10-R2"]))
        await revisit_and_evidence(h, "DOR-2017-02-10", ["R2"], at(2017, 6, 1, 12))
        await decide(h, "DOR-2017-02-10-R2", "achieved")
        await eventually(lambda: _closed(h, "DOR-2017-02-10"))
        rows = summary(await h.notifications())
        assert [r for r in rows if r[2] == "R1" and r[0] >= "2017-03-01"] == [("2017-03-01", "decision", "R1")]
        assert [r for r in rows if r[1] == "evidence_request"] == [("2017-06-01", "evidence_request", "R2")]
        assert await outcome_rows(h) == [("R1", 1, "withdrawn"), ("R2", 1, "achieved")]


async def _open_list(h, inspection_id, expected):
    return (await insp_view(h, inspection_id)).state.open_recommendations == expected


async def test_automatic_revisit_at_the_limit_never_later_than_six_months(time_skipping_env, tmp_path):
    # Thursday 2 March 2017 + 6 months is Saturday 2 September: the limit moves back to Friday 1 September.
    report = write_report(tmp_path, "AVS", date(2017, 3, 2), [("R1", "within_six_months")])
    async with harness(time_skipping_env, tmp_path) as h:
        await start(h, report, date(2017, 3, 2))
        await skip_to(h, at(2017, 9, 1, 8))
        assert (await insp_view(h, "AVS-2017-03-02")).state.phase == "following_up"
        await skip_to(h, at(2017, 9, 1, 12))
        view = await eventually(lambda: _revisit_open(h, "AVS-2017-03-02"))
        assert view.state.revisit_trigger == "automatic"
        assert local_date(view.state.revisit_opened_at) == date(2017, 9, 1) <= date(2017, 9, 2)
        rows = summary(await h.notifications())
        assert [r for r in rows if r[2] == "revisit_by" or r[1] == "revisit_opened"] == [
            ("2017-08-03", "revisit_notice", "revisit_by"),  # 20 working days before; 28 August is a bank holiday
            ("2017-08-17", "revisit_notice", "revisit_by"),
            ("2017-09-01", "revisit_opened", "report"),
        ]
        notices = [n for n in await h.notifications() if n.kind in ("revisit_notice", "revisit_opened")]
        assert all("ncpi-inspectors@inspectorate.example" in n.recipients["to"] for n in notices)
        async with h.sessions() as session:
            revisit = (await session.scalars(select(Revisit))).one()
            assert (revisit.trigger, revisit.triggered_by) == ("automatic", "system")
            rec = await session.get(Recommendation, "AVS-2017-03-02-R1")
            assert rec.phase == "evidence_requested"


async def _revisit_open(h, inspection_id):
    view = await insp_view(h, inspection_id)
    return view if view.state.phase == "revisit_open" else None


async def test_a_revised_deadline_keeps_the_original_and_replans_reminders(time_skipping_env, tmp_path):
    report = write_report(tmp_path, "NOR", date(2017, 2, 13), [("R1", "within_three_months")])
    async with harness(time_skipping_env, tmp_path) as h:
        await start(h, report, date(2017, 2, 13))
        await skip_to(h, at(2017, 3, 1, 12))
        # The action plan (due Monday 27 March) moves to Monday 10 April; R1 (due 15 May) to Friday 30 June.
        view = await update(h.inspection("NOR-2017-02-13"), "revise_deadline",
                            ReviseDeadlineRequest(deadline="action_plan", new_due=date(2017, 4, 10),
                                                  reason="Force restructure agreed with the lead HMI.", by="hmi.lead"),
                            result_type=InspectionView)
        plan = next(d for d in view.state.deadlines if d.key == "action_plan")
        assert (plan.original_due, plan.due, plan.revisions[0].by) == (date(2017, 3, 27), date(2017, 4, 10), "hmi.lead")
        await update(h.recommendation("NOR-2017-02-13-R1"), "revise_deadline",
                     ReviseDeadlineRequest(deadline="recommendation", new_due=date(2017, 6, 30), reason="Awaiting a new IT system.", by="hmi.lead"))
        await skip_to(h, at(2017, 7, 3, 12))
        rows = summary(await h.notifications())
        assert [r for r in rows if r[2] == "action_plan"][:3] == [
            ("2017-03-27", "reminder", "action_plan"),   # 10 working days before 10 April
            ("2017-04-05", "reminder", "action_plan"),   # 3 working days before
            ("2017-04-10", "due_today", "action_plan"),
        ]
        assert [r for r in rows if r[2] == "R1"] == [
            ("2017-06-16", "reminder", "R1"),
            ("2017-06-27", "reminder", "R1"),
            ("2017-06-30", "due_today", "R1"),
        ]
        async with h.sessions() as session:
            deadlines = {d.key: d for d in (await session.scalars(select(Deadline))).all()}
            assert (deadlines["action_plan"].original_due, deadlines["action_plan"].current_due) == (date(2017, 3, 27), date(2017, 4, 10))
            assert (deadlines["recommendation:R1"].original_due, deadlines["recommendation:R1"].current_due) == (date(2017, 5, 15), date(2017, 6, 30))
            revisions = (await session.scalars(select(DeadlineRevision).order_by(DeadlineRevision.id))).all()
            assert [(r.previous_due, r.new_due, r.changed_by, r.reason) for r in revisions] == [
                (date(2017, 3, 27), date(2017, 4, 10), "hmi.lead", "Force restructure agreed with the lead HMI."),
                (date(2017, 5, 15), date(2017, 6, 30), "hmi.lead", "Awaiting a new IT system."),
            ]


async def test_a_closed_recommendation_is_reopened_into_a_new_cycle(time_skipping_env, tmp_path):
    report = write_report(tmp_path, "LIN", date(2017, 2, 14), [("R1", "within_three_months")])
    async with harness(time_skipping_env, tmp_path) as h:
        await start(h, report, date(2017, 2, 14))
        await revisit_and_evidence(h, "LIN-2017-02-14", ["R1"], at(2017, 5, 16, 12))
        await decide(h, "LIN-2017-02-14-R1", "achieved")
        await eventually(lambda: _closed(h, "LIN-2017-02-14"))
        await skip_to(h, at(2017, 7, 3, 12))
        view = await update(h.recommendation("LIN-2017-02-14-R1"), "reopen",
                            ReasonRequest(reason="A serious case review found the practice lapsed.", by="hmi.lead"), result_type=RecommendationView)
        assert (view.state.phase, view.state.cycle, view.state.outcome, view.state.deadline.due) == ("in_progress", 2, None, date(2017, 10, 3))
        inspection = await eventually(lambda: _cycle(h, "LIN-2017-02-14", 2))
        assert inspection.state.phase == "following_up" and inspection.state.open_recommendations == ["LIN-2017-02-14-R1"]
        # The re-opening has its own notice, with the reason, who and the new deadline.
        rows = summary(await h.notifications())
        assert ("2017-07-03", "reopened", "R1") in rows and ("2017-07-03", "further_follow_up", "R1") not in rows
        notice = next(n for n in await h.notifications() if n.kind == "reopened")
        assert (notice.context["reason"], notice.context["by"], notice.context["due"]) == (
            "A serious case review found the practice lapsed.", "hmi.lead", "2017-10-03")
        # The revisit of the new cycle is no earlier than the new deadline.
        assert [d.due for d in inspection.state.deadlines if d.key == "revisit_by"] == [date(2017, 10, 3)]
        async with h.sessions() as session:
            decision = (await session.scalars(select(Decision))).one()
            assert (decision.outcome, decision.reopened_by, decision.reopen_reason) == (
                "achieved", "hmi.lead", "A serious case review found the practice lapsed.")
            rec = await session.get(Recommendation, "LIN-2017-02-14-R1")
            assert (rec.phase, rec.cycle) == ("in_progress", 2)
