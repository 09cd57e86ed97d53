"""Each figure of `ncpi metrics` on hand-built register documents with known answers (issue 14 §4)."""

from __future__ import annotations

import json
from datetime import date, timedelta

import pytest
from dateutil.relativedelta import relativedelta

from ncpi_workflow.metrics import (
    BANDS, Rate, band_of, check_force, check_theme, compute_metrics, metrics_json, metrics_text, parse_day, percentile,
    six_months_after,
)
from tests.test_metrics_support import document, inspection, rec

TODAY = date(2018, 6, 30)
P = date(2017, 1, 26)


def test_percentiles_odd_and_even_counts():
    assert percentile([50, 10, 40, 20, 30], 0.5) == 30.0  # odd: the middle value
    assert percentile([50, 10, 40, 20, 30], 0.9) == 46.0  # rank 3.6: 40 + 0.6 * 10
    assert percentile([40, 10, 30, 20], 0.5) == 25.0  # even: halfway between the middle two
    assert percentile([40, 10, 30, 20], 0.9) == 37.0  # rank 2.7: 30 + 0.7 * 10
    assert percentile([7], 0.5) == percentile([7], 0.9) == 7.0
    assert percentile([], 0.5) is None
    assert percentile([1, 2], 0.5) == 1.5


def test_days_to_closure_from_the_register():
    recs = [rec("CUM", P, n, closed_on=P + timedelta(days=d), outcome="achieved") for n, d in enumerate((10, 20, 30, 40), 1)]
    recs.append(rec("CUM", P, 5))  # open: no closure time
    m = compute_metrics(document(TODAY, recs))
    d = m.national.closure_days
    assert (d.count, d.median, d.p90) == (4, 25.0, 37.0)
    recs.append(rec("CUM", P, 6, closed_on=P + timedelta(days=50), outcome="withdrawn"))
    d = compute_metrics(document(TODAY, recs)).national.closure_days
    assert (d.count, d.median, d.p90) == (5, 30.0, 46.0)


@pytest.mark.parametrize("days,band", [(0, "0-30"), (30, "0-30"), (31, "31-90"), (90, "31-90"), (91, "91-180"),
                                       (180, "91-180"), (181, ">180"), (4000, ">180")])
def test_age_band_boundaries(days, band):
    assert band_of(days) == band
    m = compute_metrics(document(TODAY, [rec("CUM", P, 1, overdue_days=days)]))
    assert m.national.overdue[band]["recommendations"] == 1
    assert m.national.overdue_total == 1


def test_overdue_counts_only_open_items_and_late_report_level_items():
    recs = [
        rec("CUM", P, 1, overdue_days=None),  # not overdue
        rec("CUM", P, 2, overdue_days=45, closed_on=P + timedelta(days=300), outcome="achieved"),  # closed: not overdue
        rec("CUM", P, 3, overdue_days=200),
    ]
    inspections = [
        inspection("CUM", P, plan_due=TODAY - timedelta(days=31), pcc_due=TODAY),  # plan 31 days late; PCC due today
        inspection("KEN", P, plan_due=TODAY - timedelta(days=1), plan_received=TODAY, pcc_due=TODAY - timedelta(days=1)),
    ]
    m = compute_metrics(document(TODAY, recs, inspections))
    o = m.national.overdue
    assert o[">180"] == {"recommendations": 1, "action_plans": 0, "pcc_responses": 0}
    assert o["31-90"] == {"recommendations": 0, "action_plans": 1, "pcc_responses": 0}
    assert o["0-30"] == {"recommendations": 0, "action_plans": 0, "pcc_responses": 1}  # KEN's, 1 day late
    assert m.national.overdue_total == 3
    with pytest.raises(ValueError):
        band_of(-1)


def test_on_time_boundary():
    due = date(2017, 3, 9)
    inspections = [
        inspection("CUM", P, plan_due=due, plan_received=due, pcc_due=due, pcc_received=due + timedelta(days=1)),
        inspection("KEN", P, plan_due=due, plan_received=due - timedelta(days=5), pcc_due=None),  # no PCC response due
        inspection("DUR", P, plan_due=due, plan_received=due + timedelta(days=1), pcc_due=due),  # PCC response missing
        inspection("DUR", date(2018, 5, 19), plan_due=TODAY, pcc_due=TODAY + timedelta(days=7)),  # not yet late: pending
    ]
    f = compute_metrics(document(TODAY, [], inspections)).national
    assert (f.action_plans.in_time, f.action_plans.late, f.action_plans.missing, f.action_plans.pending) == (2, 1, 0, 1)
    assert f.action_plans.rate == Rate(2, 3)
    assert f.action_plans.rate.value == 0.6667
    assert (f.pcc_responses.in_time, f.pcc_responses.late, f.pcc_responses.missing, f.pcc_responses.pending) == (0, 1, 1, 1)
    assert f.pcc_responses.rate.value == 0.0


@pytest.mark.parametrize("published,limit", [
    (date(2017, 8, 31), date(2018, 2, 28)),  # month end clamps
    (date(2019, 8, 31), date(2020, 2, 29)),  # leap year
    (date(2017, 3, 31), date(2017, 9, 30)),
    (date(2017, 1, 26), date(2017, 7, 26)),
])
def test_six_month_boundary_with_month_end_dates(published, limit):
    assert six_months_after(published) == limit == published + relativedelta(months=6)
    later = date(2021, 1, 1)
    inspections = [
        inspection("CUM", published, revisit_opened=limit),  # on the last day: within
        inspection("KEN", published, revisit_opened=limit + timedelta(days=1)),  # a day later: not within
        inspection("DUR", published),  # never held, six months over: missing
    ]
    r = compute_metrics(document(later, [], inspections)).national.revisits
    assert (r.in_time, r.late, r.missing, r.pending) == (1, 1, 1, 0)
    # On the limit itself a revisit not yet held is still in time: pending, out of the rate.
    r = compute_metrics(document(limit, [], [inspection("DUR", published)])).national.revisits
    assert (r.missing, r.pending, r.due, r.rate.value) == (0, 1, 0, None)


def test_period_filtering_is_inclusive_and_checked():
    start, end = date(2017, 1, 1), date(2017, 12, 31)
    days = [start - timedelta(days=1), start, end, end + timedelta(days=1)]
    recs = [rec("CUM", d, 1) for d in days]
    inspections = [inspection("CUM", d, plan_due=d + timedelta(days=42)) for d in days]
    doc = document(TODAY, recs, inspections)
    m = compute_metrics(doc, start=start, end=end)
    assert (m.national.made, m.national.inspections) == (2, 2)
    assert compute_metrics(doc, start=start).national.made == 3
    assert compute_metrics(doc, end=end).national.made == 3
    assert compute_metrics(doc).national.made == 4
    assert compute_metrics(doc, start=end + timedelta(days=2)).national.made == 0
    with pytest.raises(ValueError, match="starts"):
        compute_metrics(doc, start=end, end=start)


def test_implementation_rate_by_timeframe_per_force_and_nationally():
    closed = P + timedelta(days=100)
    recs = [
        rec("CUM", P, 1, timeframe="immediately", closed_on=closed, outcome="achieved"),
        rec("CUM", P, 2, timeframe="immediately", closed_on=closed, outcome="withdrawn"),
        rec("CUM", P, 3, timeframe="within_six_months"),  # open
        rec("KEN", P, 1, timeframe="within_three_months", closed_on=closed, outcome="achieved", themes=["custody"]),
        rec("KEN", P, 2, timeframe="within_three_months", closed_on=closed, outcome="achieved", themes=["custody", "welfare"]),
        rec("KEN", P, 3, timeframe="within_six_months", themes=["welfare"]),
    ]
    m = compute_metrics(document(TODAY, recs))
    n = m.national
    assert (n.made, n.open, n.closed) == (6, 2, 4)
    assert n.outcomes == {"achieved": 3, "withdrawn": 1}
    assert n.implementation["all"] == Rate(3, 4)
    assert n.implementation["immediately"] == Rate(1, 2)
    assert n.implementation["within_three_months"] == Rate(2, 2)
    assert n.implementation["within_six_months"] == Rate(0, 0)
    assert n.implementation["within_six_months"].value is None
    assert n.implementation["within_six_months"].words() == "no data"
    assert [f.code for f in m.forces] == ["CUM", "KEN"]  # by name: Cumbria, Kent
    cum, ken = (f.figures for f in m.forces)
    assert cum.implementation["all"] == Rate(1, 2) and ken.implementation["all"] == Rate(2, 2)
    # Sums: the national figures are those of all the forces.
    assert n.made == cum.made + ken.made

    only_kent = compute_metrics(document(TODAY, recs), force="KEN")
    assert [f.code for f in only_kent.forces] == ["KEN"] and only_kent.national.made == 3
    custody = compute_metrics(document(TODAY, recs), theme="custody")
    assert (custody.national.made, custody.national.closed) == (2, 2)
    welfare = compute_metrics(document(TODAY, recs), theme="welfare")
    assert (welfare.national.made, welfare.national.open) == (2, 1)
    assert compute_metrics(document(TODAY, recs), theme="missing-children").national.made == 0


def test_theme_filter_keeps_the_inspections_of_themed_recommendations():
    inspections = [inspection("CUM", P, plan_due=P + timedelta(days=42)), inspection("KEN", P, plan_due=P + timedelta(days=42))]
    recs = [rec("CUM", P, 1, themes=["custody"]), rec("KEN", P, 1, themes=["welfare"])]
    m = compute_metrics(document(TODAY, recs, inspections), theme="custody")
    assert m.national.inspections == 1 and [f.code for f in m.forces] == ["CUM"]


def test_an_empty_register_gives_no_data_not_division_errors():
    m = compute_metrics(document(TODAY))
    f = m.national
    assert (f.made, f.open, f.closed, f.overdue_total, f.inspections) == (0, 0, 0, 0, 0)
    assert (f.closure_days.median, f.closure_days.p90) == (None, None)
    assert all(r.value is None for r in f.implementation.values())
    assert f.action_plans.rate.value is None and f.revisits.rate.value is None
    text = metrics_text(m)
    assert "no data" in text and "No recommendations or inspections in scope" in text
    document_ = metrics_json(m)
    assert document_["national"]["days_to_closure"] == {"count": 0, "median": None, "p90": None}
    assert document_["national"]["implementation_rate"]["all"] == {"achieved": 0, "closed": 0, "rate": None}
    assert document_["forces"] == []


def test_json_document_and_text():
    recs = [rec("CUM", P, 1, closed_on=P + timedelta(days=120), outcome="achieved"), rec("CUM", P, 2, overdue_days=12)]
    inspections = [inspection("CUM", P, plan_due=date(2017, 3, 9), plan_received=date(2017, 3, 1),
                              pcc_due=date(2017, 3, 23), revisit_opened=date(2017, 6, 12))]
    m = compute_metrics(document(TODAY, recs, inspections), start=date(2017, 1, 1), end=date(2017, 12, 31), force="CUM")
    out = metrics_json(m)
    assert json.loads(json.dumps(out)) == out
    assert out["generated_on"] == "2018-06-30"
    assert out["period"] == {"from": "2017-01-01", "to": "2017-12-31"}
    assert out["filters"] == {"force": "CUM", "theme": None}
    assert out["national"]["recommendations"] == {"made": 2, "open": 1, "closed": 1, "closed_by_outcome": {"achieved": 1}}
    assert out["national"]["implementation_rate"]["all"] == {"achieved": 1, "closed": 1, "rate": 1.0}
    assert out["national"]["days_to_closure"] == {"count": 1, "median": 120.0, "p90": 120.0}
    assert set(out["national"]["overdue_by_age"]) == {b for b, _, _ in BANDS}
    assert out["national"]["overdue_by_age"]["0-30"]["recommendations"] == 1
    assert out["national"]["action_plans"] == {"on_time": 1, "late": 0, "missing": 0, "pending": 0, "due": 1, "rate": 1.0}
    assert out["national"]["pcc_responses"]["missing"] == 1
    assert out["national"]["revisits"]["within_six_months"] == 1
    assert out["forces"][0]["code"] == "CUM" and out["forces"][0]["name"] == "Cumbria Constabulary"
    text = metrics_text(m)
    assert "Figures from the register of 30 June 2018: reports published 1 January 2017 to 31 December 2017, force CUM" in text
    assert "Recommendations: 2 made, 1 open, 1 closed (1 achieved)" in text
    assert ("Implementation rate (achieved of closed): all 100% (1 of 1); immediately no data; within three months 100% (1 of 1); "
            "within six months no data") in text
    assert "Overdue, by days overdue: 0-30: 1, 31-90: 0, 91-180: 0, >180: 1 (total 2: recommendations 1, action plans 0, PCC responses 1)" in text
    assert "Days from publication to closure: median 120 days, 90th percentile 120 days (1 closed)" in text
    assert "PCC responses received on time: 0% (0 of 1); 0 late, 1 not received" in text
    assert "Cumbria Constabulary (CUM)" in text


def test_values_at_the_edge():
    assert parse_day(" 2017-01-31 ", "--from") == date(2017, 1, 31)
    with pytest.raises(ValueError, match=r"^--from: '2017-02-30' is not a date"):
        parse_day("2017-02-30", "--from")
    assert check_force("CUM", known={"CUM"}) == "CUM"
    with pytest.raises(ValueError, match="^--force: 'cum' is not a force code"):
        check_force("cum")
    with pytest.raises(ValueError, match="^--force: no force has the code XYZ"):
        check_force("XYZ", known={"CUM"})
    assert check_theme("child-sexual-exploitation") == "child-sexual-exploitation"
    for bad in ("Custody", "custody!", "-x", "a" * 65, ""):
        with pytest.raises(ValueError, match="^--theme: "):
            check_theme(bad)
    with pytest.raises(ValueError, match="not a theme of config/themes.yaml"):
        check_theme("nothing", known={"custody"})
