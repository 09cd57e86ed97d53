"""`ncpi plan` and the workflows agree: with nobody acting, the outbox of a published report holds
exactly the messages its plan lists (kind, what they are about, calendar date).

The plan is `plan_report`, as `ncpi plan` prints it; the workflows run on the time-skipping server
until well past the plan's last message."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from ncpi_workflow.clocks import MessageKind, calendar_for_report, plan_report
from ncpi_workflow.policy import Policy
from ncpi_workflow.publishing import publish
from ncpi_workflow.report import load_report
from tests.lifecycle_support import CUMBRIA, harness, local_date, skip_to, write_report

LONDON = ZoneInfo("Europe/London")

Row = tuple[str, str, str, str | None]
"""(London date, kind, "report" or the recommendation's ref, the deadline it is about or None)."""


def planned(file) -> tuple[list[Row], datetime]:
    """The plan's messages as rows, and the instant of its last one."""
    report = load_report(file, known_forces=None, max_bytes=1 << 20).report
    policy = Policy()
    calendar = calendar_for_report(policy, report.published)
    timeline = plan_report(report.published, [(r.ref, r.timeframe) for r in report.recommendations], policy, calendar)
    rows = []
    for m in timeline.messages:
        name, _, ref = m.deadline_key.partition(":")
        if m.kind in (MessageKind.PUBLISHED, MessageKind.REVISIT_OPENED):
            about, deadline = "report", None
        elif m.kind is MessageKind.EVIDENCE_REQUEST:
            about, deadline = ref, None
        elif ref:  # recommendation:R1, evidence:R1
            about, deadline = ref, name
        else:  # action_plan, pcc_response, revisit_by
            about, deadline = "report", name
        rows.append((local_date(m.at).isoformat(), m.kind.value, about, deadline))
    return rows, timeline.messages[-1].at


def recorded(notifications) -> list[Row]:
    return [
        (
            local_date(n.scheduled_for).isoformat(),
            n.kind,
            n.recommendation_id.rsplit("-", 1)[-1] if n.recommendation_id else "report",
            (n.context or {}).get("deadline"),
        )
        for n in notifications
    ]


def difference(plan: list[Row], outbox: list[Row]) -> str:
    missing = Counter(plan) - Counter(outbox)
    extra = Counter(outbox) - Counter(plan)
    lines = [f"planned, never sent: {row}" + (f" x{n}" if n > 1 else "") for row, n in sorted(missing.items())]
    lines += [f"sent, never planned: {row}" + (f" x{n}" if n > 1 else "") for row, n in sorted(extra.items())]
    return "\n".join(lines)


CASES = {
    # Six-month recommendations due on the day the revisit opens (Wednesday 26 July 2017).
    "cumbria": (CUMBRIA, None),
    # Tuesday 29 November 2016 + 6 months is the spring bank holiday: the revisit opens on Friday
    # 26 May, before the six-month deadline (Tuesday 30 May).
    "immediate-three-six": (
        "LAN",
        (date(2016, 11, 29), [("R1", "immediately"), ("R2", "within_three_months"), ("R3", "within_six_months")]),
    ),
}


@pytest.mark.parametrize("case", CASES)
async def test_with_nobody_acting_the_outbox_is_the_plan(time_skipping_env, tmp_path, case):
    source, generated = CASES[case]
    file = source if generated is None else write_report(tmp_path, source, *generated)
    plan, last = planned(file)
    published = date.fromisoformat(plan[0][0])
    async with harness(time_skipping_env, tmp_path) as h:
        h.anchor = await h.env.get_current_time()
        h.published_at = datetime.combine(published, time(9, 0), tzinfo=LONDON).astimezone(timezone.utc)
        assert (await publish(h.settings, h.client, file, anchor=h.anchor)).started
        await skip_to(h, last + timedelta(days=30))
        # The last workflow tasks may still be recording: wait (in real time) for the outbox to settle.
        outbox, deadline = [], asyncio.get_running_loop().time() + 10
        while asyncio.get_running_loop().time() < deadline:
            outbox = recorded(await h.notifications())
            if Counter(outbox) == Counter(plan):
                break
            await asyncio.sleep(0.2)
        assert Counter(outbox) == Counter(plan), difference(plan, outbox)
