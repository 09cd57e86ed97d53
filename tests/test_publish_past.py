"""Publishing a report whose deadlines have already passed: refused without a choice, saying what
catch-up would send at once (and nothing written, nothing started); --catch-up sends exactly that;
--adopt and --anchor-now start the follow-up with the clock they name."""

from __future__ import annotations

from collections import Counter
from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select

from ncpi_workflow.clocks import calendar_for_report, plan_report
from ncpi_workflow.errors import UserError
from ncpi_workflow.lifecycle import InspectionInput, inspection_workflow_id
from ncpi_workflow.models import AuditEvent, Deadline, Inspection, Notification, Recommendation
from ncpi_workflow.policy import load_policy
from ncpi_workflow.publishing import PastChoice, PastDeadlines, _workflow_exists, past_summary, publish
from ncpi_workflow.report import load_report
from ncpi_workflow.temporal import DATA_CONVERTER
from tests.conftest import ROOT, run_ncpi
from tests.lifecycle_support import harness, write_report
from tests.test_cli_devserver import cli, eventually, projected  # noqa: F401  (the `cli` fixture)

KENT = ROOT / "examples" / "kent-2017.yaml"
LONDON = ZoneInfo("Europe/London")
POLICY = load_policy(ROOT / "config" / "policy.toml")


def summary_at(file, now: datetime):
    report = load_report(file, known_forces=None, max_bytes=1 << 20).report
    calendar = calendar_for_report(POLICY, report.published)
    timeline = plan_report(report.published, [(r.ref, r.timeframe) for r in report.recommendations], POLICY, calendar)
    return past_summary(report.inspection_id, timeline, [r.ref for r in report.recommendations], calendar, now)


def test_kent_2017_today_would_send_fourteen_messages_at_once():
    """The issue's `ncpi publish examples/kent-2017.yaml`: 14 emails within seconds, escalations to the PCC and the lead HM Inspector."""
    summary = summary_at(KENT, datetime(2026, 12, 2, 10, tzinfo=timezone.utc))
    assert len(summary.passed) == summary.deadlines == 9 and summary.revisit_opens
    lines = PastDeadlines("examples/kent-2017.yaml", summary).lines
    assert lines[0] == ("examples/kent-2017.yaml: 9 of the 9 deadlines of KEN-2017-04-21 have passed (the latest, "
                        "Recommendation R4, on Monday 23 October 2017); nothing was written and nothing started")
    assert lines[1] == ("published as it is (--catch-up), up to these 14 messages (the revisit, opening at once, may "
                        "overtake a recommendation's own last reminder) would be sent at once:")
    assert lines[2] == "  published: the report's publication, Friday 21 April 2017 -> liaison officer, chief officer and PCC"
    assert lines[4] == ("  escalation (rung lead HM Inspector): Force action plan, due Friday 2 June 2017 -> "
                        "liaison officer, chief officer, PCC and lead HM Inspector")
    assert "  reminder: Recommendation R4, due Monday 23 October 2017 -> liaison officer" in lines
    assert Counter(s.kind for s in summary.sends) == {"published": 1, "escalation": 5, "reminder": 2, "revisit_opened": 1,
                                                        "evidence_request": 5}
    assert [line.split(":")[0] for line in lines[-3:]] == ["  --catch-up", "  --adopt", "  --anchor-now"]


def test_only_a_deadline_due_before_today_counts(tmp_path):
    today = datetime.now(LONDON).date()
    now = datetime.now(timezone.utc)
    fresh = write_report(tmp_path, "CUM", today - timedelta(days=1), [("R1", "within_three_months")], name="fresh.yaml")
    assert summary_at(fresh, now).passed == ()
    # Published seven weeks ago: the action plan (six weeks) was due last week; nothing else has passed.
    older = write_report(tmp_path, "CUM", today - timedelta(weeks=7), [("R1", "within_three_months")], name="older.yaml")
    summary = summary_at(older, now)
    assert [d.key for d in summary.passed] == ["action_plan"]
    kinds = {s.deadline: s.kind for s in summary.sends}
    assert kinds["published"] == "published" and kinds["action_plan"] in ("due_today", "overdue", "escalation")
    assert not summary.revisit_opens and "evidence:R1" not in kinds


async def _counts(h) -> list[int]:
    async with h.sessions() as session:
        return [await session.scalar(select(func.count()).select_from(m)) for m in (Inspection, Recommendation, Deadline, AuditEvent)]


async def _started_with(h, inspection_id: str) -> InspectionInput:
    history = await h.inspection(inspection_id).fetch_history()
    attributes = history.events[0].workflow_execution_started_event_attributes
    [argument] = await DATA_CONVERTER.decode(attributes.input.payloads, [InspectionInput])
    return argument


async def test_refused_without_a_choice_writes_nothing_and_starts_nothing(time_skipping_env, tmp_path):
    async with harness(time_skipping_env, tmp_path) as h:
        before = await _counts(h)
        with pytest.raises(PastDeadlines) as refused:
            await publish(h.settings, h.client, KENT)
        assert str(refused.value).splitlines()[0].startswith(f"{KENT}: 9 of the 9 deadlines of KEN-2017-04-21 have passed")
        assert len(refused.value.summary.sends) == 14
        assert await _counts(h) == before == [0, 0, 0, 0]
        assert not await _workflow_exists(h.client, inspection_workflow_id("KEN-2017-04-21"))
        # An anchor or a choice that does not fit is refused too, before anything is written.
        with pytest.raises(UserError, match="--adopt follows a report up in real time"):
            await publish(h.settings, h.client, KENT, past=PastChoice.ADOPT, anchor=datetime.now(timezone.utc))
        assert await _counts(h) == [0, 0, 0, 0]


async def test_catch_up_sends_at_once_what_the_refusal_listed(time_skipping_env, tmp_path):
    async with harness(time_skipping_env, tmp_path) as h:
        with pytest.raises(PastDeadlines) as refused:
            await publish(h.settings, h.client, KENT)
        listed = Counter((s.kind, s.deadline) for s in refused.value.summary.sends)
        result = await publish(h.settings, h.client, KENT, past=PastChoice.CATCH_UP)
        assert result.started

        def key(row: Notification) -> tuple[str, str]:
            if row.kind == "published":
                return ("published", "published")
            if row.kind == "revisit_opened":
                return ("revisit_opened", "revisit_by")
            if row.kind == "evidence_request":
                return ("evidence_request", f"evidence:{row.recommendation_id.rsplit('-', 1)[1]}")
            if row.recommendation_id is not None:  # a recommendation's own clock is "recommendation" in its workflow
                return (row.kind, f"{row.context['deadline']}:{row.recommendation_id.rsplit('-', 1)[1]}")
            return (row.kind, row.context["deadline"])

        certain_count = sum(n for k, n in listed.items() if not k[1].startswith("recommendation:"))

        async def recorded():
            # Settled: everything certain recorded, and no new row for two polls in a row.
            rows = await h.notifications()
            previous, seen[0] = seen[0], len(rows)
            return rows if len(rows) >= certain_count and previous == len(rows) else None

        seen = [-1]

        try:
            rows = await eventually(recorded, timeout=180, interval=2.0)
        except AssertionError:
            raise AssertionError(f"recorded: {sorted(Counter(key(r) for r in await h.notifications()).items())}") from None
        # Everything but a recommendation's own last message is certain; those may be overtaken by the revisit
        # opening at once (the recommendation is then under review), as the refusal says.
        got = Counter(key(r) for r in rows)
        certain = Counter({k: n for k, n in listed.items() if not k[1].startswith("recommendation:")})
        assert got - listed == Counter() and certain - got == Counter(), (got, listed)
        assert sum(certain.values()) == 9  # the notice, two report-level escalations, the revisit, five evidence requests
        # (The outbox is what catch-up chose to send; its delivery is tests/test_email_delivery.py's subject.)
        started = await _started_with(h, "KEN-2017-04-21")
        assert started.adopted_at is None and started.time_scale.factor == 1


async def test_adopt_and_anchor_now_start_the_clock_they_name(time_skipping_env, tmp_path):
    async with harness(time_skipping_env, tmp_path) as h:
        anchored = write_report(tmp_path, "SUR", date(2017, 3, 7), [("R1", "within_three_months")])
        adopted = write_report(tmp_path, "DER", date(2017, 3, 8), [("R1", "within_three_months")])
        before = datetime.now(timezone.utc)
        assert (await publish(h.settings, h.client, anchored, past=PastChoice.ANCHOR_NOW)).started
        assert (await publish(h.settings, h.client, adopted, past="adopt")).started
        after = datetime.now(timezone.utc)
        anchor_input = await _started_with(h, "SUR-2017-03-07")
        assert anchor_input.adopted_at is None
        assert before <= anchor_input.time_scale.clock_origin <= after  # publication maps to the moment of publishing
        adopt_input = await _started_with(h, "DER-2017-03-08")
        assert before <= adopt_input.adopted_at <= after and adopt_input.time_scale.factor == 1
        assert adopt_input.time_scale.clock_origin == adopt_input.time_scale.calendar_origin  # real time
        # Adopted: nothing is sent for the past (the workflows record it as history instead).
        await projected(h, "DER-2017-03-08", 1)
        async with h.sessions() as session:
            assert await session.scalar(select(func.count()).select_from(Notification)
                                        .where(Notification.inspection_id == "DER-2017-03-08")) == 0
        async with h.sessions() as session:
            choices = (await session.scalars(select(AuditEvent).where(AuditEvent.action.in_(["report.adopt", "report.anchor-now"]))
                                              .order_by(AuditEvent.entity_id))).all()
            assert [(a.entity_id, a.action, a.detail["past"]) for a in choices] == [
                ("DER-2017-03-08", "report.adopt", "adopt"), ("SUR-2017-03-07", "report.anchor-now", "anchor-now")]
        # Publishing either again starts nothing and needs no choice.
        again = await publish(h.settings, h.client, adopted)
        assert not again.started


def test_two_choices_are_refused_before_anything_else(cli_env):
    result = run_ncpi("publish", str(KENT), "--adopt", "--catch-up", env=cli_env)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == "ncpi: give one of --catch-up, --adopt and --anchor-now, not --catch-up and --adopt\n"


async def test_the_cli_says_what_would_be_sent_then_adopts(cli):
    report = write_report(cli.tmp_path, "LIN", date(2018, 3, 5), [("R1", "immediately"), ("R2", "within_six_months")])
    refused = await cli("publish", report)
    assert refused.returncode == 1 and refused.stdout == ""
    lines = refused.stderr.splitlines()
    assert lines[0].startswith(f"ncpi: {report}: 6 of the 6 deadlines of LIN-2018-03-05 have passed")
    assert lines[1].startswith("published as it is (--catch-up), up to these ") and lines[1].endswith(" would be sent at once:")
    assert "  published: the report's publication, Monday 5 March 2018 -> liaison officer, chief officer and PCC" in lines
    assert lines[-4] == "choose how to follow it up, and publish it again with one of:"
    assert [line.split(":")[0] for line in lines[-3:]] == ["  --catch-up", "  --adopt", "  --anchor-now"]
    async with cli.h.sessions() as session:
        assert await session.get(Inspection, "LIN-2018-03-05") is None
    assert not await _workflow_exists(cli.h.client, inspection_workflow_id("LIN-2018-03-05"))
    out = await cli.ok("publish", report, "--adopt")
    assert out == "published LIN-2018-03-05: workflow ncpi/LIN/2018-03-05, 2 recommendations\n"
    await projected(cli.h, "LIN-2018-03-05", 2)
