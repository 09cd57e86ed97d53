"""The statutory clocks: worked examples from the brief, edge cases, and properties over any date."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ncpi_workflow.clocks import (
    DeadlineKind,
    MessageKind,
    Party,
    TimeScale,
    Timeframe,
    calendar_for_report,
    england_and_wales_calendar,
    make_deadline,
    plan_report,
)
from ncpi_workflow.policy import Period, Policy

POLICY = Policy()
ALL_TIMEFRAMES = [("R1", Timeframe.IMMEDIATELY), ("R2", Timeframe.WITHIN_THREE_MONTHS), ("R3", Timeframe.WITHIN_SIX_MONTHS)]
# One calendar for every property test: building it per example would dominate the run.
CALENDAR = england_and_wales_calendar(POLICY.calendar, range(2009, 2046))


def cumbria():
    published = date(2017, 1, 26)
    return plan_report(published, ALL_TIMEFRAMES, POLICY, calendar_for_report(POLICY, published))


def test_cumbria_deadlines_match_the_published_timeline():
    timeline = cumbria()
    assert timeline.deadline("action_plan").due == date(2017, 3, 9)
    assert timeline.deadline("pcc_response").due == date(2017, 3, 23)
    assert timeline.deadline("revisit_by").due == date(2017, 7, 26)
    assert timeline.deadline("immediate_update").due == date(2017, 2, 23)
    assert timeline.deadline("recommendation:R2").due == date(2017, 4, 26)
    assert timeline.deadline("recommendation:R3").due == date(2017, 7, 26)
    # The revisit fieldwork of June 2017 is inside the limit.
    assert date(2017, 6, 30) <= timeline.deadline("revisit_by").due


def test_cumbria_reminders_fall_on_working_days_before_the_action_plan():
    timeline = cumbria()
    cal = calendar_for_report(POLICY, date(2017, 1, 26))
    action_plan = [m for m in timeline.messages if m.deadline_key == "action_plan"]
    reminders = [cal.local(m.at) for m in action_plan if m.kind is MessageKind.REMINDER]
    assert [r.date() for r in reminders] == [date(2017, 2, 23), date(2017, 3, 6)]
    assert all(r.time() == time(9, 0) for r in reminders)
    assert timeline.messages[0].kind is MessageKind.PUBLISHED
    assert cal.local(timeline.messages[0].at) == datetime(2017, 1, 26, 9, 0, tzinfo=cal.zone)


def test_escalation_ladder_climbs_rung_by_rung():
    timeline = cumbria()
    ladder = [m for m in timeline.messages if m.deadline_key == "action_plan" and m.working_days < 0]
    assert [(m.kind, m.rung, -m.working_days) for m in ladder] == [
        (MessageKind.ESCALATION, "chief_officer", 5),
        (MessageKind.ESCALATION, "chief_officer_and_pcc", 10),
        (MessageKind.OVERDUE, "chief_officer_and_pcc", 15),
        (MessageKind.ESCALATION, "lead_hm_inspector", 20),
    ]
    assert ladder[-1].recipients == ("liaison_officer", "chief_officer", "pcc", "lead_hm_inspector")


def test_calendar_months_clamp_to_month_end():
    cal = CALENDAR
    one_month = Period(months=1)
    assert make_deadline("x", DeadlineKind.ACTION_PLAN, Party.FORCE, date(2017, 1, 31), one_month, cal).nominal == date(2017, 2, 28)
    assert make_deadline("x", DeadlineKind.ACTION_PLAN, Party.FORCE, date(2016, 1, 31), one_month, cal).nominal == date(2016, 2, 29)
    six = Period(months=6)
    assert make_deadline("x", DeadlineKind.REVISIT_BY, Party.INSPECTORATE, date(2016, 8, 31), six, cal).nominal == date(2017, 2, 28)


def test_non_working_day_moves_force_later_and_inspectorate_earlier():
    cal = CALENDAR
    six = Period(months=6)
    # 24 December 2016 + 6 months = Saturday 24 June 2017.
    force = make_deadline("r", DeadlineKind.RECOMMENDATION, Party.FORCE, date(2016, 12, 24), six, cal)
    limit = make_deadline("v", DeadlineKind.REVISIT_BY, Party.INSPECTORATE, date(2016, 12, 24), six, cal)
    assert force.nominal == limit.nominal == date(2017, 6, 24)
    assert force.due == date(2017, 6, 26) and force.moved
    assert limit.due == date(2017, 6, 23) and limit.moved


def test_bank_holidays_are_not_working_days():
    cal = CALENDAR
    for holiday in (date(2017, 4, 14), date(2017, 4, 17), date(2017, 5, 1), date(2017, 8, 28), date(2017, 12, 25), date(2017, 12, 26)):
        assert not cal.is_working_day(holiday), holiday
    # Christmas Day 2016 fell on a Sunday: the substitute day was Tuesday 27 December.
    assert not cal.is_working_day(date(2016, 12, 27))
    # A force deadline on Good Friday moves past Easter Monday.
    good_friday = make_deadline("x", DeadlineKind.ACTION_PLAN, Party.FORCE, date(2017, 3, 3), Period(weeks=6), cal)
    assert good_friday.nominal == date(2017, 4, 14) and good_friday.due == date(2017, 4, 18)


def test_messages_never_before_publication_and_immediate_update_has_no_duplicate_reminders():
    timeline = cumbria()
    assert all(m.at >= timeline.published_at for m in timeline.messages)
    assert not [m for m in timeline.messages if m.deadline_key == "immediate_update"]
    assert [m for m in timeline.messages if m.deadline_key == "recommendation:R1"]


def test_cumbria_plan_stops_recommendation_messages_when_the_revisit_opens_and_chases_evidence():
    timeline = cumbria()
    cal = calendar_for_report(POLICY, date(2017, 1, 26))
    opens = cal.at(date(2017, 7, 26), time(9, 0))
    assert timeline.revisit_opens_at == opens
    # The six-month recommendations are due the day the revisit opens: their reminders before it go
    # out, their due-today and overdue messages never do (the revisit asks for evidence instead).
    r3 = [(cal.local(m.at).date(), m.kind) for m in timeline.messages if m.deadline_key == "recommendation:R3"]
    assert r3 == [(date(2017, 7, 12), MessageKind.REMINDER), (date(2017, 7, 21), MessageKind.REMINDER)]
    assert not [m for m in timeline.messages if m.deadline_key.startswith("recommendation:") and m.at >= opens]
    at_opening = [(m.kind, m.deadline_key, m.recipients) for m in timeline.messages if m.at == opens]
    assert at_opening == [
        (MessageKind.REVISIT_OPENED, "revisit_by", ("liaison_officer", "chief_officer", "inspectors")),
        *[(MessageKind.EVIDENCE_REQUEST, f"evidence:R{i}", ("liaison_officer",)) for i in range(1, 4)],
    ]
    assert MessageKind.REVISIT_OPENS not in {m.kind for m in timeline.messages}
    # Evidence is due ten working days after the opening; its 10-day reminder would be the request itself.
    evidence = timeline.deadline("evidence:R1")
    assert evidence.due == date(2017, 8, 9) and evidence.kind is DeadlineKind.EVIDENCE
    assert [d.key for d in timeline.evidence_deadlines] == ["evidence:R1", "evidence:R2", "evidence:R3"]
    ladder = [(cal.local(m.at).date(), m.kind, m.working_days) for m in timeline.messages if m.deadline_key == "evidence:R1"]
    assert ladder == [
        (date(2017, 7, 26), MessageKind.EVIDENCE_REQUEST, 0),
        (date(2017, 8, 4), MessageKind.REMINDER, 3),
        (date(2017, 8, 9), MessageKind.DUE_TODAY, 0),
        (date(2017, 8, 16), MessageKind.ESCALATION, -5),
        (date(2017, 8, 23), MessageKind.ESCALATION, -10),
        (date(2017, 8, 31), MessageKind.OVERDUE, -15),  # 28 August is a bank holiday
        (date(2017, 9, 7), MessageKind.ESCALATION, -20),
    ]
    # The evidence deadlines are not written to the records at publication: only the plan shows them.
    assert not [d for d in timeline.deadlines if d.kind is DeadlineKind.EVIDENCE]


def test_a_six_month_deadline_after_an_earlier_revisit_limit_loses_only_its_later_messages():
    # 29 November 2016 + 6 months is the spring bank holiday: the revisit moves to Friday 26 May,
    # the six-month deadline to Tuesday 30 May, after the revisit has opened.
    published = date(2016, 11, 29)
    cal = calendar_for_report(POLICY, published)
    timeline = plan_report(published, [("R1", Timeframe.WITHIN_SIX_MONTHS)], POLICY, cal)
    assert timeline.deadline("recommendation:R1").due == date(2017, 5, 30)
    assert cal.local(timeline.revisit_opens_at).date() == date(2017, 5, 26)
    r1 = [(cal.local(m.at).date(), m.kind) for m in timeline.messages if m.deadline_key == "recommendation:R1"]
    assert r1 == [(date(2017, 5, 15), MessageKind.REMINDER), (date(2017, 5, 24), MessageKind.REMINDER)]
    assert timeline.deadline("evidence:R1").due == date(2017, 6, 12)  # 29 May is a bank holiday


publication_dates = st.dates(min_value=date(2010, 1, 1), max_value=date(2040, 12, 31))


@settings(max_examples=300, deadline=None)
@given(published=publication_dates)
def test_no_message_on_a_weekend_or_bank_holiday_and_all_in_working_hours(published):
    timeline = plan_report(published, ALL_TIMEFRAMES, POLICY, CALENDAR)
    for message in timeline.messages:
        local = CALENDAR.local(message.at)
        assert local.weekday() < 5, message
        assert CALENDAR.is_working_day(local.date()), message
        assert CALENDAR.is_working_time(message.at), message


@settings(max_examples=300, deadline=None)
@given(published=publication_dates)
def test_revisit_never_later_than_six_calendar_months(published):
    from dateutil.relativedelta import relativedelta

    timeline = plan_report(published, ALL_TIMEFRAMES, POLICY, CALENDAR)
    revisit = timeline.deadline("revisit_by")
    assert revisit.due <= published + relativedelta(months=6)
    assert CALENDAR.is_working_day(revisit.due)
    assert revisit.due > published


@settings(max_examples=300, deadline=None)
@given(published=publication_dates)
def test_deadlines_are_ordered(published):
    timeline = plan_report(published, ALL_TIMEFRAMES, POLICY, CALENDAR)
    due = {d.key: d.due for d in timeline.deadlines}
    assert published < due["immediate_update"] <= due["action_plan"] <= due["pcc_response"]
    assert due["pcc_response"] <= due["recommendation:R2"] <= due["recommendation:R3"]
    assert due["revisit_by"] <= due["recommendation:R3"]
    assert [d.due for d in timeline.deadlines] == sorted(d.due for d in timeline.deadlines)
    assert [m.at for m in timeline.messages] == sorted(m.at for m in timeline.messages)
    opens = timeline.revisit_opens_at
    assert opens == CALENDAR.at(due["revisit_by"], CALENDAR.send_at)
    assert not [m for m in timeline.messages if m.deadline_key.startswith("recommendation:") and m.at >= opens]
    requests = [m for m in timeline.messages if m.kind is MessageKind.EVIDENCE_REQUEST]
    assert [m.deadline_key for m in requests] == ["evidence:R1", "evidence:R2", "evidence:R3"]
    assert all(m.at == opens for m in requests)
    assert all(m.at > opens for m in timeline.messages if m.deadline_key.startswith("evidence:") and m not in requests)
    for d in timeline.deadlines:
        assert d.due >= d.nominal if d.party is not Party.INSPECTORATE else d.due <= d.nominal


instants = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2060, 1, 1), timezones=st.just(timezone.utc))


@given(t=instants, origin=instants)
def test_time_scale_one_is_the_identity(t, origin):
    scale = TimeScale(1.0, origin, origin)
    assert scale.to_clock(t) == t
    assert scale.to_calendar(t) == t
    assert TimeScale().to_clock(t) == t


@given(t=instants, factor=st.floats(min_value=1.0, max_value=100_000.0))
def test_time_scale_compresses_and_round_trips(t, factor):
    origin = datetime(2017, 1, 26, 9, tzinfo=timezone.utc)
    now = datetime(2026, 11, 25, 12, tzinfo=timezone.utc)
    scale = TimeScale(factor, origin, now)
    assert abs(scale.to_calendar(scale.to_clock(t)) - t) < timedelta(milliseconds=factor / 1000 + 1)
    six_months = timedelta(days=182)
    assert scale.duration(six_months) == six_months / factor
    assert scale.to_clock(origin) == now


@pytest.mark.parametrize("factor", [0, -1, -0.5])
def test_time_scale_must_be_positive(factor):
    with pytest.raises(ValueError, match="must be > 0"):
        TimeScale(factor)


# ---------------------------------------------------------------- the calendar "now" that `ncpi show` prints


def _views(calendar_now: datetime, time_scale: TimeScale | None):
    from ncpi_workflow.clocks import recommendation_deadline
    from ncpi_workflow.lifecycle import (
        InspectionPhase,
        InspectionState,
        InspectionView,
        Phase,
        RecommendationState,
        RecommendationView,
        tracked,
    )

    published = date(2017, 1, 26)
    deadline = tracked(recommendation_deadline("R2", Timeframe.WITHIN_THREE_MONTHS, published, POLICY, CALENDAR), calendar_now)
    rec = RecommendationView(
        recommendation_id="CUM-2017-01-26-R2", workflow_id="ncpi/CUM/2017-01-26/R2",
        state=RecommendationState(phase=Phase.FORCE_NOTIFIED, cycle=1, deadline=deadline),
        register_status="awaiting review", next_action=None, next_action_at=None, calendar_now=calendar_now,
    )
    insp = InspectionView(
        inspection_id="CUM-2017-01-26", workflow_id="ncpi/CUM/2017-01-26",
        state=InspectionState(phase=InspectionPhase.FOLLOWING_UP, cycle=1, deadlines=[deadline], open_recommendations=[]),
        next_action=None, next_action_at=None, calendar_now=calendar_now,
    )
    # Set after construction: a view from a workflow that sends no time scale has none.
    rec.time_scale = insp.time_scale = time_scale
    return rec, insp


def test_show_prints_the_calendar_now_of_the_time_scale_not_the_workflows_last_task():
    from ncpi_workflow.views import dump, render_inspection, render_recommendation

    frozen = datetime(2017, 1, 26, 9, 0, tzinfo=timezone.utc)  # the workflow's last task
    # Publication (calendar) mapped onto a clock three days ago: the calendar now is 29 January 2017.
    wall = datetime.now(timezone.utc)
    scale = TimeScale(1.0, calendar_origin=frozen, clock_origin=wall - timedelta(days=3))
    for view in _views(frozen, scale):
        before = scale.to_calendar(datetime.now(timezone.utc))
        lines = (render_recommendation if hasattr(view, "recommendation_id") else render_inspection)(view)
        document = dump(view)
        after = scale.to_calendar(datetime.now(timezone.utc))
        shown = {f"(calendar now {instant.astimezone(CALENDAR.zone):%a %-d %b %Y %H:%M}, Europe/London)" for instant in (before, after)}
        assert lines[-1] in shown, lines[-1]
        assert "Thu 26 Jan 2017" not in lines[-1]
        assert before <= datetime.fromisoformat(document["calendar_now"]) <= after


def test_show_falls_back_to_the_query_calendar_now_without_a_time_scale():
    from ncpi_workflow.views import render_inspection, render_recommendation

    frozen = datetime(2017, 1, 26, 9, 0, tzinfo=timezone.utc)
    rec, insp = _views(frozen, None)
    assert render_recommendation(rec)[-1] == render_inspection(insp)[-1] == "(calendar now Thu 26 Jan 2017 09:00, Europe/London)"
