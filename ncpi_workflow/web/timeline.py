"""An inspection's timeline as a picture: every deadline, reminder sent and decision on one dated
axis, with today marked. Server-rendered SVG (no JavaScript), with a title and a description for
screen readers; the tables on the same page carry the same facts as text."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from markupsafe import Markup, escape

from ncpi_workflow.formatting import local_date, long_date

WIDTH, LANE_HEIGHT, MARGIN_LEFT, MARGIN_RIGHT, TOP = 760, 34, 150, 20, 40
LANES = ("deadline", "reminder", "revisit", "decision")
LANE_NAMES = {"deadline": "Deadlines", "reminder": "Emails sent", "revisit": "Revisits", "decision": "Decisions"}
# GOV.UK colours: each lane has its own shape as well as its colour, so colour is never the only cue.
COLOURS = {"deadline": "#1d70b8", "reminder": "#505a5f", "revisit": "#4c2c92", "decision": "#00703c", "today": "#d4351c"}


@dataclass(frozen=True)
class TimelineEvent:
    day: date
    lane: str
    label: str


def events_of(deadlines, notifications, decisions, revisits) -> list[TimelineEvent]:
    """The timeline's events from the records: Deadline, Notification (sent), Decision and Revisit rows."""
    events = [TimelineEvent(d.current_due, "deadline", f"{d.key} due") for d in deadlines]
    events += [TimelineEvent(local_date(n.sent_at or n.scheduled_for), "reminder", n.kind.replace("_", " "))
               for n in notifications if n.status == "sent" and (n.sent_at or n.scheduled_for)]
    events += [TimelineEvent(local_date(d.decided_at), "decision", f"{d.recommendation_id.rsplit('-', 1)[-1]}: {d.outcome.replace('_', ' ')}")
               for d in decisions]
    events += [TimelineEvent(local_date(r.opened_at), "revisit", f"revisit opened ({r.trigger})") for r in revisits]
    return sorted(events, key=lambda e: (e.day, LANES.index(e.lane)))


def timeline_svg(events: list[TimelineEvent], today: date, title: str) -> Markup:
    """The SVG markup; every text in it is escaped."""
    days = [e.day for e in events] + [today]
    first, last = min(days), max(days)
    span = max((last - first).days, 1)
    plot = WIDTH - MARGIN_LEFT - MARGIN_RIGHT
    height = TOP + LANE_HEIGHT * len(LANES) + 30

    def x(day: date) -> float:
        return round(MARGIN_LEFT + plot * (day - first).days / span, 1)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height}" width="100%" role="img" '
        f'aria-labelledby="timeline-title timeline-desc" class="ncpi-timeline" style="max-width:{WIDTH}px">',
        f'<title id="timeline-title">{escape(title)}</title>',
        f'<desc id="timeline-desc">{escape(_description(events, today))}</desc>',
    ]
    for row, lane in enumerate(LANES):
        y = TOP + row * LANE_HEIGHT
        parts.append(f'<text x="0" y="{y + 5}" font-size="14" fill="#0b0c0c">{LANE_NAMES[lane]}</text>')
        parts.append(f'<line x1="{MARGIN_LEFT}" y1="{y}" x2="{WIDTH - MARGIN_RIGHT}" y2="{y}" stroke="#b1b4b6"/>')
        for event in (e for e in events if e.lane == lane):
            parts.append(_mark(lane, x(event.day), y, f"{long_date(event.day)}: {event.label}"))
    for day, anchor in ((first, "start"), (last, "end")):
        parts.append(f'<text x="{x(day)}" y="{height - 6}" font-size="13" text-anchor="{anchor}" fill="#0b0c0c">'
                     f'{escape(long_date(day))}</text>')
    tx = x(today)
    parts.append(f'<line x1="{tx}" y1="{TOP - 22}" x2="{tx}" y2="{TOP + LANE_HEIGHT * (len(LANES) - 1) + 10}" '
                 f'stroke="{COLOURS["today"]}" stroke-width="2" stroke-dasharray="4 3"/>')
    parts.append(f'<text x="{tx}" y="{TOP - 26}" font-size="13" text-anchor="middle" fill="{COLOURS["today"]}">Today</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def _mark(lane: str, x: float, y: float, tooltip: str) -> str:
    colour = COLOURS[lane]
    tip = f"<title>{escape(tooltip)}</title>"
    if lane == "deadline":
        return f'<g><rect x="{x - 5}" y="{y - 5}" width="10" height="10" fill="{colour}" transform="rotate(45 {x} {y})"/>{tip}</g>'
    if lane == "decision":
        return f'<g><rect x="{x - 5}" y="{y - 5}" width="10" height="10" fill="{colour}"/>{tip}</g>'
    if lane == "revisit":
        return f'<g><polygon points="{x},{y - 7} {x + 7},{y + 6} {x - 7},{y + 6}" fill="{colour}"/>{tip}</g>'
    return f'<g><circle cx="{x}" cy="{y}" r="4" fill="{colour}"/>{tip}</g>'


def _description(events: list[TimelineEvent], today: date) -> str:
    counts = {lane: sum(1 for e in events if e.lane == lane) for lane in LANES}
    return (f"{counts['deadline']} deadlines, {counts['reminder']} emails sent, {counts['revisit']} revisits and "
            f"{counts['decision']} decisions; today is {long_date(today)}.")
