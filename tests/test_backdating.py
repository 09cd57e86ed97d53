"""Back-dated actions (`on`, issue 14 §1) inside the workflows, on the time-skipping server with a real
SMTP capture: each Update dated to the day it happened keeps both dates (when it happened, when it was
recorded), in the workflow's state and in the records; its clocks count from the day it happened; an
`on` in the future or before publication is refused by the Update, with the state unchanged."""

from __future__ import annotations

import hashlib
from datetime import date, timedelta

import pytest
from sqlalchemy import select
from temporalio.client import WorkflowUpdateFailedError

from ncpi_workflow.clocks import DeadlineKind, Party, calendar_for_report, make_deadline
from ncpi_workflow.lifecycle import (
    DecisionRequest,
    DeliveryRequest,
    EvidenceRequestInput,
    ProgressRequest,
    RecommendationView,
    RegisterStatusRequest,
    TriggerRevisitRequest,
    occurred_instant,
)
from ncpi_workflow.models import Deadline, Decision, Evidence, ProgressUpdate, RegisterStatusEntry, Revisit
from ncpi_workflow.policy import load_policy
from tests.lifecycle_support import harness, local_date, noon, skip_to, utc, write_report
from tests.test_lifecycle_timeskipping import at, eventually, insp_view, rec_view, start, summary

# Wednesday 1 March 2017: R1 within three months (due 1 June), R2 within six months.
PUBLISHED = date(2017, 3, 1)
INSPECTION = "LIN-2017-03-01"
R1, R2 = f"{INSPECTION}-R1", f"{INSPECTION}-R2"
TODAY = date(2017, 5, 15)  # Monday: every action below is recorded on this day


def evidence(name: str, on: date | None = None) -> EvidenceRequestInput:
    return EvidenceRequestInput(
        filename=name, sha256=hashlib.sha256(name.encode()).hexdigest(), size_bytes=2048,
        storage_path=f"/evidence/{name}", content_type="application/pdf", by="liaison officer", on=on,
    )


async def refused(handle, name, request, reason: str) -> None:
    with pytest.raises(WorkflowUpdateFailedError) as failure:
        await handle.execute_update(name, request)
    assert reason in str(failure.value.cause), str(failure.value.cause)


async def test_backdated_actions_keep_both_dates_and_count_their_clocks_from_the_day(time_skipping_env, tmp_path):
    report = write_report(tmp_path, "LIN", PUBLISHED, [("R1", "within_three_months"), ("R2", "within_six_months")])
    async with harness(time_skipping_env, tmp_path) as h:
        await start(h, report, PUBLISHED)
        insp, r1, r2 = h.inspection(INSPECTION), h.recommendation(R1), h.recommendation(R2)
        await skip_to(h, noon(TODAY))
        before = (await rec_view(h, R1)).state

        # A day in the future, or before the report was published: refused, nothing changes.
        tomorrow, before_publication = TODAY + timedelta(days=1), PUBLISHED - timedelta(days=2)
        await refused(r1, "submit_progress", ProgressRequest("in_progress", "Started.", "liaison officer", on=tomorrow),
                      "--on 2017-05-16 is in the future")
        await refused(r1, "submit_progress", ProgressRequest("in_progress", "Started.", "liaison officer", on=before_publication),
                      "is before the report was published on 2017-03-01")
        await refused(r1, "submit_evidence", evidence("early.pdf", on=tomorrow), "in the future")
        await refused(r2, "set_register_status", RegisterStatusRequest("being progressed", "Planned.", "hmi.lead", on=tomorrow),
                      "in the future")
        await refused(insp, "record_delivery", DeliveryRequest("action_plan", "hmi.office", on=before_publication),
                      "before the report was published")
        await refused(insp, "trigger_revisit", TriggerRevisitRequest("hmi.lead", on=tomorrow), "in the future")
        after = (await rec_view(h, R1)).state
        assert (after.phase, after.force_claim, len(after.history), after.evidence) == (before.phase, before.force_claim, len(before.history), [])
        view = await insp_view(h, INSPECTION)
        assert view.state.phase == "following_up" and all(d.met_at is None for d in view.state.deadlines)

        # Progress, a delivery and a register status, each dated to its day.
        view = await r1.execute_update("submit_progress", ProgressRequest("in_progress", "Training began.", "liaison officer",
                                                                          on=date(2017, 4, 3)), result_type=RecommendationView)
        entry = view.state.history[-1]
        assert (entry.event, entry.at, entry.detail) == ("progress reported", noon(date(2017, 4, 3)), "in_progress: Training began. (recorded 2017-05-15)")
        await insp.execute_update("record_delivery", DeliveryRequest("action_plan", "hmi.office", "by email", on=date(2017, 4, 10)))
        plan = next(d for d in (await insp_view(h, INSPECTION)).state.deadlines if d.key == "action_plan")
        assert plan.met_at == noon(date(2017, 4, 10))
        view = await r2.execute_update("set_register_status", RegisterStatusRequest("being progressed", "The plan names an owner.",
                                                                                   "hmi.lead", on=date(2017, 4, 20)), result_type=RecommendationView)
        assert [(e.status, e.at, e.recorded_at is not None) for e in view.state.register] == [
            ("awaiting review", at(2017, 3, 1), False), ("being progressed", noon(date(2017, 4, 20)), True)]
        # An earlier day still takes its place in the trail by when it happened.
        view = await r2.execute_update("set_register_status", RegisterStatusRequest("will be progressed", "Agreed at the board.",
                                                                                   "hmi.lead", on=date(2017, 4, 12)), result_type=RecommendationView)
        assert [e.status for e in view.state.register] == ["awaiting review", "will be progressed", "being progressed"]
        assert view.register_status == "being progressed"

        # The revisit opened on its fieldwork's first day, Tuesday 2 May: the evidence is due ten working days
        # after that (16 May), not after today.
        revisit = await insp.execute_update("trigger_revisit", TriggerRevisitRequest("hmi.lead", on=date(2017, 5, 2)))
        assert revisit["opened_at"].startswith("2017-05-02T11:00")
        for rec in (R1, R2):
            state = (await eventually(lambda: _requested(h, rec))).state
            assert state.review_opened_at == noon(date(2017, 5, 2)) and state.evidence_deadline.due == date(2017, 5, 16)
            assert state.evidence_deadline.opened_at == noon(date(2017, 5, 2))
        # A decision cannot be dated before its revisit opened, nor in the future.
        await r1.execute_update("submit_evidence", evidence("R1-training-records.pdf", on=date(2017, 5, 10)))
        await refused(r1, "record_decision", DecisionRequest("achieved", "Done.", "hmi.lead", on=date(2017, 5, 1)),
                      "before this cycle's revisit opened on 2017-05-02")
        await refused(r1, "record_decision", DecisionRequest("achieved", "Done.", "hmi.lead", on=tomorrow), "in the future")
        # A status set today, then the decision dated three days ago: the decision's step still ends the trail.
        await r1.execute_update("set_register_status", RegisterStatusRequest("being progressed", "Training under way.", "hmi.lead"))
        view = await r1.execute_update("record_decision", DecisionRequest("achieved", "Every officer is trained.", "hmi.lead",
                                                                          on=date(2017, 5, 12)), result_type=RecommendationView)
        assert view.register_status == "no further action needed"
        assert (view.state.phase, view.state.closed_at, view.state.register[-1].at) == ("closed", noon(date(2017, 5, 12)), noon(date(2017, 5, 12)))
        assert view.state.evidence[0].at == noon(date(2017, 5, 10)) and view.state.evidence[0].recorded_at is not None

        # A back-dated partial decision starts the further cycle from its own day, and so does the inspection's.
        await r2.execute_update("submit_evidence", evidence("R2-plan.pdf"))
        view = await r2.execute_update("record_decision", DecisionRequest("partially_achieved", "Half the districts.", "hmi.lead",
                                                                          on=date(2017, 5, 12)), result_type=RecommendationView)
        policy = load_policy(h.settings.policy)
        calendar = calendar_for_report(policy, PUBLISHED)
        further = lambda day: make_deadline("recommendation", DeadlineKind.RECOMMENDATION, Party.FORCE, day,  # noqa: E731
                                            policy.deadlines.further_follow_up, calendar).due
        assert further(date(2017, 5, 12)) != further(TODAY)
        assert (view.state.cycle, view.state.deadline.due, view.state.deadline.opened_at) == (2, further(date(2017, 5, 12)), noon(date(2017, 5, 12)))
        inspection = await eventually(lambda: _cycle(h, 2))
        limit = next(d for d in inspection.state.deadlines if d.key == "revisit_by")
        assert limit.due == make_deadline("revisit_by", DeadlineKind.REVISIT_BY, Party.INSPECTORATE, date(2017, 5, 12),
                                          policy.deadlines.further_follow_up, calendar).due
        assert limit.opened_at == noon(date(2017, 5, 12))

        # The records keep both dates: when it happened, and when it was recorded (today).
        async with h.sessions() as session:
            def both(rows, happened):
                return [(local_date(utc(getattr(r, happened))), local_date(utc(r.recorded_at))) for r in rows]

            progress = (await session.scalars(select(ProgressUpdate).where(ProgressUpdate.recommendation_id == R1))).all()
            assert both(progress, "submitted_at") == [(date(2017, 4, 3), TODAY)]
            evidence_rows = (await session.scalars(select(Evidence).order_by(Evidence.recommendation_id))).all()
            assert both(evidence_rows[:1], "submitted_at") == [(date(2017, 5, 10), TODAY)]
            assert evidence_rows[1].recorded_at is None or local_date(utc(evidence_rows[1].recorded_at)) == TODAY
            decisions = (await session.scalars(select(Decision).order_by(Decision.recommendation_id))).all()
            assert [(d.outcome, *both([d], "decided_at")[0]) for d in decisions] == [
                ("achieved", date(2017, 5, 12), TODAY), ("partially_achieved", date(2017, 5, 12), TODAY)]
            [revisit_row] = (await session.scalars(select(Revisit))).all()
            assert both([revisit_row], "opened_at") == [(date(2017, 5, 2), TODAY)]
            plan_row = await session.scalar(select(Deadline).where(Deadline.key == "action_plan"))
            assert (local_date(utc(plan_row.met_at)), local_date(utc(plan_row.met_recorded_at))) == (date(2017, 4, 10), TODAY)
            register = (await session.scalars(select(RegisterStatusEntry).where(RegisterStatusEntry.recommendation_id == R2)
                                              .order_by(RegisterStatusEntry.set_at))).all()
            assert [(r.status, local_date(utc(r.set_at)), local_date(utc(r.recorded_at))) for r in register][-2:] == [
                ("will be progressed", date(2017, 4, 12), TODAY), ("being progressed", date(2017, 4, 20), TODAY)]

        # A person acting today is told today: the back-dated revisit's evidence requests and the decisions
        # were sent now, with the day they happened in their facts.
        rows = [n for n in await h.notifications() if local_date(n.scheduled_for) == TODAY]
        kinds = sorted((n.kind, (n.recommendation_id or "-report").rsplit("-", 1)[-1]) for n in rows)
        assert ("revisit_opened", "report") in kinds and ("evidence_request", "R1") in kinds and ("evidence_request", "R2") in kinds
        assert ("decision", "R1") in kinds and ("decision", "R2") in kinds and ("further_follow_up", "R2") in kinds
        decision = next(n for n in rows if n.kind == "decision" and n.recommendation_id == R1)
        assert decision.context["at"].startswith("2017-05-12T11:00")
        mails = await eventually(lambda: _mails_to(h, "liaison@lincolnshire.police.example", 5))
        assert any("Decision on recommendation R1" in m.message["Subject"] for m in mails)
        assert not [r for r in summary(await h.notifications()) if r[0] > TODAY.isoformat()]


async def _requested(h, rec_id):
    view = await rec_view(h, rec_id)
    return view if view.state.phase == "evidence_requested" else None


async def _cycle(h, cycle):
    view = await insp_view(h, INSPECTION)
    return view if view.state.cycle == cycle else None


async def _mails_to(h, address, count):
    mails = [m for m in h.smtp.messages if address in {r.lower() for r in m.rcpt_tos}]
    return mails if len(mails) >= count else None


async def test_backdated_on_today_is_not_backdating(time_skipping_env, tmp_path):
    report = write_report(tmp_path, "LIN", PUBLISHED, [("R1", "within_three_months")])
    async with harness(time_skipping_env, tmp_path) as h:
        await start(h, report, PUBLISHED)
        await skip_to(h, at(2017, 3, 20, 15, 30))
        view = await h.recommendation(R1).execute_update(
            "submit_progress", ProgressRequest("in_progress", "Started today.", "liaison officer", on=date(2017, 3, 20)),
            result_type=RecommendationView)
        entry = view.state.history[-1]
        # The step's own instant (15:30), not noon, and no "(recorded ...)": it happened as it was recorded.
        assert entry.at != occurred_instant(calendar_for_report(load_policy(h.settings.policy), PUBLISHED), date(2017, 3, 20))
        assert local_date(entry.at) == date(2017, 3, 20) and entry.detail == "in_progress: Started today."
        async with h.sessions() as session:
            [row] = (await session.scalars(select(ProgressUpdate))).all()
            assert row.recorded_at is None or utc(row.recorded_at) == utc(row.submitted_at)
