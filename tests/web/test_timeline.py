"""The inspection page's timeline picture: every event on one dated axis, today marked, text escaped."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import date

from ncpi_workflow.web.timeline import TimelineEvent, timeline_svg

SVG = "{http://www.w3.org/2000/svg}"


def test_every_event_is_drawn_on_its_lane_with_today_marked():
    events = [
        TimelineEvent(date(2017, 1, 26), "reminder", "published"),
        TimelineEvent(date(2017, 3, 9), "deadline", "action_plan due"),
        TimelineEvent(date(2017, 6, 5), "revisit", "revisit opened (inspector)"),
        TimelineEvent(date(2017, 6, 5), "decision", "R1: achieved"),
        TimelineEvent(date(2017, 7, 26), "deadline", "revisit_by due"),
    ]
    svg = ET.fromstring(str(timeline_svg(events, date(2017, 4, 1), "Timeline of Cumbria")))
    assert svg.get("role") == "img" and svg.find(f"{SVG}title").text == "Timeline of Cumbria"
    tips = [t.text for g in svg.iter(f"{SVG}g") for t in g.iter(f"{SVG}title")]
    assert tips == [
        "Thursday 9 March 2017: action_plan due", "Wednesday 26 July 2017: revisit_by due",
        "Thursday 26 January 2017: published", "Monday 5 June 2017: revisit opened (inspector)",
        "Monday 5 June 2017: R1: achieved",
    ]
    texts = [t.text for t in svg.iter(f"{SVG}text")]
    assert "Today" in texts and "Thursday 26 January 2017" in texts and "Wednesday 26 July 2017" in texts
    # Today (1 April) lies between publication and the revisit limit, proportionally placed.
    today_line = [line for line in svg.iter(f"{SVG}line") if line.get("stroke-dasharray")][0]
    x = float(today_line.get("x1"))
    assert 150 + 590 * 64 / 181 - 1 < x < 150 + 590 * 66 / 181 + 1


def test_labels_are_escaped():
    markup = str(timeline_svg([TimelineEvent(date(2017, 1, 26), "decision", "<script>alert(1)</script>")], date(2017, 1, 26), "t & <b>"))
    assert "<script>" not in markup and "&lt;script&gt;" in markup and "t &amp; &lt;b&gt;" in markup
    ET.fromstring(markup)  # well-formed
