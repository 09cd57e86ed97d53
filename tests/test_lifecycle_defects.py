"""Regression tests for the lifecycle defects of issue 10, each on the time-skipping server with the
real worker, database and SMTP capture. Each of them failed on the code before its fix."""

from __future__ import annotations

import asyncio
from datetime import date, datetime
from zoneinfo import ZoneInfo

from sqlalchemy import select
from temporalio.client import WorkflowUpdateFailedError

from ncpi_workflow.lifecycle import (
    DecisionRequest,
    ProgressRequest,
    ReasonRequest,
    RecommendationView,
    ReviseDeadlineRequest,
    TriggerRevisitRequest,
)
from ncpi_workflow.models import Decision, Recommendation
from tests.lifecycle_support import harness, local_date, skip_to, write_report
from tests.test_lifecycle_timeskipping import (
    _closed,
    _cycle,
    _phase_is,
    at,
    decide,
    eventually,
    evidence,
    insp_view,
    outcome_rows,
    rec_view,
    revisit_and_evidence,
    start,
    summary,
    update,
)

LONDON = ZoneInfo("Europe/London")


async def _accepted(coroutine):
    """(True, result) or (False, the refusal's reason)."""
    try:
        return True, await coroutine
    except WorkflowUpdateFailedError as exc:
        return False, str(getattr(exc.cause, "message", exc.cause))


# ------------------------------------------------------------------ 1. two actions at once


async def test_a_decision_and_a_withdrawal_at_once_one_is_refused_and_records_agree(time_skipping_env, tmp_path):
    report = write_report(tmp_path, "CLE", date(2017, 2, 14), [("R1", "within_three_months")])
    async with harness(time_skipping_env, tmp_path) as h:
        await start(h, report, date(2017, 2, 14))
        await revisit_and_evidence(h, "CLE-2017-02-14", ["R1"], at(2017, 5, 16, 12))
        rec = h.recommendation("CLE-2017-02-14-R1")
        decision, withdrawal = await asyncio.gather(
            _accepted(rec.execute_update("record_decision", DecisionRequest(
                outcome="partially_achieved", rationale="Profile written, not yet used.", by="hmi.one"))),
            _accepted(rec.execute_update("withdraw", ReasonRequest(reason="Duplicates another recommendation.", by="hmi.two"))),
        )
        assert [decision[0], withdrawal[0]].count(True) == 1, (decision, withdrawal)
        refused = withdrawal if decision[0] else decision
        assert refused[1]  # a reason, said to the caller
        view = await eventually(lambda: rec_view(h, "CLE-2017-02-14-R1"))
        rows = await outcome_rows(h)
        kinds = sorted(r[1] for r in summary(await h.notifications()) if r[2] == "R1" and r[0] == "2017-05-16" and r[1] != "evidence_request")
        if decision[0]:
            assert rows == [("R1", 1, "partially_achieved")]
            assert kinds == ["decision", "further_follow_up"]
            assert view.state.cycle == 2 and view.state.phase == "in_progress"
        else:
            assert rows == [("R1", 1, "withdrawn")]
            assert kinds == ["decision"]
            assert view.state.phase == "closed" and view.state.outcome == "withdrawn"
        async with h.sessions() as session:
            projected = await session.get(Recommendation, "CLE-2017-02-14-R1")
            assert (projected.phase, projected.cycle) == (view.state.phase, view.state.cycle)


async def test_two_decisions_at_once_the_second_is_judged_on_the_first(time_skipping_env, tmp_path):
    report = write_report(tmp_path, "CLE", date(2017, 2, 14), [("R1", "within_three_months")])
    async with harness(time_skipping_env, tmp_path) as h:
        await start(h, report, date(2017, 2, 14))
        await revisit_and_evidence(h, "CLE-2017-02-14", ["R1"], at(2017, 5, 16, 12))
        rec = h.recommendation("CLE-2017-02-14-R1")
        results = await asyncio.gather(*(
            _accepted(rec.execute_update("record_decision", DecisionRequest(outcome=o, rationale=f"Judged {o}.", by=f"hmi.{o}")))
            for o in ("achieved", "not_achieved")
        ))
        assert [ok for ok, _ in results].count(True) == 1, results
        winner = "achieved" if results[0][0] else "not_achieved"
        assert await outcome_rows(h) == [("R1", 1, winner)]
        decisions = [n for n in await h.notifications() if n.kind == "decision"]
        assert [(n.context["outcome"], n.context["by"]) for n in decisions] == [(winner, f"hmi.{winner}")]


# ------------------------------------------------------------------ 3. re-opening


async def test_reopened_while_the_revisit_is_open_is_not_asked_for_evidence_before_its_new_deadline(time_skipping_env, tmp_path):
    report = write_report(tmp_path, "LIN", date(2017, 2, 14), [("R1", "within_three_months"), ("R2", "within_three_months")])
    async with harness(time_skipping_env, tmp_path) as h:
        await start(h, report, date(2017, 2, 14))
        await revisit_and_evidence(h, "LIN-2017-02-14", ["R1", "R2"], at(2017, 5, 16, 12))
        await decide(h, "LIN-2017-02-14-R1", "achieved", "Profile used in every district.")
        await skip_to(h, at(2017, 5, 17, 12))
        view = await update(h.recommendation("LIN-2017-02-14-R1"), "reopen",
                            ReasonRequest(reason="Complaint received: profile not used in West Cumbria", by="hmi.lead"),
                            result_type=RecommendationView)
        assert (view.state.phase, view.state.cycle, view.state.deadline.due) == ("in_progress", 2, date(2017, 8, 17))
        # R2 is still awaiting its decision in this revisit; R1 waits for the next one.
        await decide(h, "LIN-2017-02-14-R2", "partially_achieved", "Half the districts.")
        inspection = await eventually(lambda: _cycle(h, "LIN-2017-02-14", 2))
        assert sorted(inspection.state.open_recommendations) == ["LIN-2017-02-14-R1", "LIN-2017-02-14-R2"]
        limit = next(d.due for d in inspection.state.deadlines if d.key == "revisit_by")
        assert limit >= date(2017, 8, 17)
        await skip_to(h, at(2017, 9, 8, 12))
        rows = summary(await h.notifications())
        r1 = [r for r in rows if r[2] == "R1" and r[0] >= "2017-05-17"]
        assert r1[0] == ("2017-05-17", "reopened", "R1")
        requests = [r for r in r1 if r[1] == "evidence_request"]
        assert requests and all(r[0] >= "2017-08-17" for r in requests), r1
        notice = next(n for n in await h.notifications() if n.kind == "reopened")
        assert notice.context["reason"] == "Complaint received: profile not used in West Cumbria"
        assert (notice.context["by"], notice.context["due"], notice.context["cycle"]) == ("hmi.lead", "2017-08-17", 2)
        assert "judged" not in notice.subject and "re-opened" in notice.subject


# ------------------------------------------------------------------ 4. a new deadline after "not achieved"


async def test_not_achieved_months_after_an_automatic_revisit_reminds_before_the_new_deadline(time_skipping_env, tmp_path):
    report = write_report(tmp_path, "NYP", date(2017, 3, 6), [("R1", "within_three_months")])
    async with harness(time_skipping_env, tmp_path) as h:
        await start(h, report, date(2017, 3, 6))
        await skip_to(h, at(2017, 4, 3, 12))
        await update(h.recommendation("NYP-2017-03-06-R1"), "submit_progress",
                     ProgressRequest(claim="implemented", text="Done, we believe.", by="liaison officer"))
        # Nobody triggers the revisit: it opens by itself on 6 September; no evidence comes.
        await skip_to(h, at(2017, 12, 1, 12))
        assert (await rec_view(h, "NYP-2017-03-06-R1")).state.phase == "evidence_requested"
        view = await decide(h, "NYP-2017-03-06-R1", "not_achieved", "No change in practice found.")
        assert (view.state.cycle, view.state.deadline.due) == (2, date(2018, 3, 1))
        await skip_to(h, at(2018, 3, 2, 12))
        rows = [r for r in summary(await h.notifications()) if r[2] == "R1" and r[0] > "2017-12-01"]
        assert ("2018-02-15", "reminder", "R1") in rows and ("2018-02-26", "reminder", "R1") in rows, rows
        view = await rec_view(h, "NYP-2017-03-06-R1")
        assert view.state.force_claim is None  # the force's claim answered cycle 1, not this one


# ------------------------------------------------------------------ 5. the calendar


async def test_a_follow_up_running_past_its_first_calendar_counts_christmas_2020(time_skipping_env, tmp_path):
    # A 2016 report's calendar knew bank holidays up to 2019: evidence due in January 2021 must still
    # count 25 and 28 December 2020 and 1 January 2021 as holidays.
    report = write_report(tmp_path, "MET", date(2016, 6, 1), [("R1", "within_three_months")])
    async with harness(time_skipping_env, tmp_path) as h:
        await start(h, report, date(2016, 6, 1))
        await skip_to(h, at(2016, 7, 1, 12))
        await h.inspection("MET-2016-06-01").execute_update("trigger_revisit", TriggerRevisitRequest(by="hmi.lead"))
        await eventually(lambda: _phase_is(h, "MET-2016-06-01-R1", "evidence_requested"))
        await update(h.recommendation("MET-2016-06-01-R1"), "revise_deadline",
                     ReviseDeadlineRequest(deadline="evidence", new_due=date(2021, 1, 5), reason="Long-term IT programme.", by="hmi.lead"))
        await skip_to(h, at(2021, 1, 6, 12))
        rows = [r for r in summary(await h.notifications()) if r[2] == "R1" and r[0] >= "2020"]
        assert rows[:3] == [
            ("2020-12-17", "reminder", "R1"),   # ten working days before 5 January 2021
            ("2020-12-30", "reminder", "R1"),   # three: 1 January is a holiday
            ("2021-01-05", "due_today", "R1"),
        ], rows


async def test_calendar_refresh_moves_a_reminder_off_a_newly_announced_bank_holiday(time_skipping_env, tmp_path):
    from ncpi_workflow.clocks import CalendarRefresh

    report = write_report(tmp_path, "NOR", date(2017, 2, 13), [("R1", "within_three_months")])
    async with harness(time_skipping_env, tmp_path) as h:
        await start(h, report, date(2017, 2, 13))
        await skip_to(h, at(2017, 3, 1, 12))
        # R1 is due Monday 15 May 2017; its 3-working-day reminder would go on Wednesday 10 May.
        await h.recommendation("NOR-2017-02-13-R1").signal(
            "refresh_calendar", CalendarRefresh(bank_holidays=(date(2017, 5, 10),), covers_until=date(2020, 12, 31)))
        await skip_to(h, at(2017, 5, 16, 12))
        rows = [r for r in summary(await h.notifications()) if r[2] == "R1"]
        assert ("2017-05-09", "reminder", "R1") in rows and ("2017-05-10", "reminder", "R1") not in rows, rows


# ------------------------------------------------------------------ 7. the public register


async def test_the_forces_claim_never_sets_the_register_status_an_inspector_does(time_skipping_env, tmp_path):
    from ncpi_workflow.lifecycle import RegisterStatusRequest
    from ncpi_workflow.models import RegisterStatusEntry

    report = write_report(tmp_path, "SUR", date(2017, 2, 14), [("R1", "within_three_months")])
    async with harness(time_skipping_env, tmp_path) as h:
        await start(h, report, date(2017, 2, 14))
        await skip_to(h, at(2017, 3, 1, 12))
        rec = h.recommendation("SUR-2017-02-14-R1")
        view = await update(rec, "submit_progress", ProgressRequest(claim="not_started", text="Planning.", by="liaison officer"),
                            result_type=RecommendationView)
        assert view.register_status == "awaiting review"
        ok, reason = await _accepted(rec.execute_update("set_register_status", RegisterStatusRequest(
            status="no further action needed", comment="Done.", by="hmi.lead")))
        assert not ok and "closing decision" in reason
        view = await update(rec, "set_register_status", RegisterStatusRequest(
            status="will be progressed", comment="The force has agreed a plan with its partners.", by="hmi.lead"),
            result_type=RecommendationView)
        assert view.register_status == "will be progressed"
        assert [(e.status, e.by) for e in view.state.register] == [("awaiting review", "system"), ("will be progressed", "hmi.lead")]
        await revisit_and_evidence(h, "SUR-2017-02-14", ["R1"], at(2017, 5, 16, 12))
        view = await decide(h, "SUR-2017-02-14-R1", "achieved", "Used in every district.")
        assert view.register_status == "no further action needed"
        async with h.sessions() as session:
            trail = (await session.scalars(select(RegisterStatusEntry).order_by(RegisterStatusEntry.id))).all()
            assert [(t.status, t.comment, t.set_by) for t in trail] == [
                ("will be progressed", "The force has agreed a plan with its partners.", "hmi.lead"),
                ("no further action needed", "Used in every district.", "hmi.lead"),
            ]
            projected = await eventually(lambda: _register_projected(h, "SUR-2017-02-14-R1", "no further action needed"))
            assert projected


async def _register_projected(h, rec_id, status):
    async with h.sessions() as session:
        return (await session.get(Recommendation, rec_id)).register_status == status


# ------------------------------------------------------------------ 8. the next deadline of listings


async def test_next_deadline_search_attribute_follows_an_earlier_evidence_deadline(time_skipping_env, tmp_path):
    from ncpi_workflow.temporal import NEXT_DEADLINE

    report = write_report(tmp_path, "WMP", date(2017, 2, 14), [("R5", "within_six_months")])
    async with harness(time_skipping_env, tmp_path) as h:
        await start(h, report, date(2017, 2, 14))
        await skip_to(h, at(2017, 4, 3, 12))
        await h.inspection("WMP-2017-02-14").execute_update("trigger_revisit", TriggerRevisitRequest(by="hmi.lead"))
        await eventually(lambda: _phase_is(h, "WMP-2017-02-14-R5", "evidence_requested"))
        await update(h.recommendation("WMP-2017-02-14-R5"), "revise_deadline",
                     ReviseDeadlineRequest(deadline="evidence", new_due=date(2017, 4, 7), reason="Fieldwork brought forward.", by="hmi.lead"))

        async def next_deadline():
            described = await h.recommendation("WMP-2017-02-14-R5").describe()
            value = described.typed_search_attributes.get(NEXT_DEADLINE)
            return value if value is not None and local_date(value) == date(2017, 4, 7) else None

        assert await eventually(next_deadline)
