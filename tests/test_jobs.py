"""The worker's scheduled jobs on SQLite and PostgreSQL: one claim per due time across replicas,
the inspectors' daily digest, and the reconciler restarting workflows and repairing projections."""

from __future__ import annotations

import asyncio
from datetime import date, datetime, timedelta, timezone

import pytest
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import func, select, text
from sqlalchemy import update as sa_update

from ncpi_workflow import db, jobs
from ncpi_workflow.jobs import digest
from ncpi_workflow.errors import UserError
from ncpi_workflow.formatting import LONDON
from ncpi_workflow.jobs import JobRun, build_scheduler, claim, due_time, reconcile, run_once, send_digest, workflow_status
from ncpi_workflow.lifecycle import DecisionRequest, DeliveryRequest, ProgressRequest, TriggerRevisitRequest
from ncpi_workflow.models import AuditEvent, Deadline, Inspection, Notification, Recommendation, utcnow
from ncpi_workflow.publishing import publish
from ncpi_workflow.store import insert_if_absent
from tests.lifecycle_support import harness, local_date, skip_to, write_report
from tests.test_lifecycle_timeskipping import at, eventually, evidence, insp_view, rec_view, start, update

INSPECTORS = "ncpi-inspectors@inspectorate.example"


def london(y, m, d, hh=8, mm=0, ss=0) -> datetime:
    return datetime(y, m, d, hh, mm, ss, tzinfo=LONDON)


# ---------------------------------------------------------------- claims


async def test_ten_concurrent_claims_of_one_due_time_exactly_one_wins(sessions):
    due = london(2017, 7, 3, 8, 0, 12)
    results = await asyncio.gather(*(claim(sessions, "digest", due, f"replica-{i}:{100 + i}") for i in range(10)))
    assert results.count(True) == 1
    # The same due time written another way (UTC, other seconds) is the same claim ...
    assert not await claim(sessions, "digest", london(2017, 7, 3, 8, 0, 59).astimezone(timezone.utc), "late:1")
    # ... another job or another due time is not.
    assert await claim(sessions, "reconcile", due, "replica-0:100")
    assert await claim(sessions, "digest", due + timedelta(days=1), "replica-0:100")
    async with sessions() as session:
        rows = (await session.scalars(select(JobRun).where(JobRun.job == "digest").order_by(JobRun.due_at))).all()
    assert len(rows) == 2
    assert rows[0].claimed_by == f"replica-{results.index(True)}:{100 + results.index(True)}"
    assert rows[0].due_at.replace(tzinfo=rows[0].due_at.tzinfo or timezone.utc) == datetime(2017, 7, 3, 7, 0, tzinfo=timezone.utc)


async def test_two_replicas_with_their_own_engines_claim_once(migrated_database_url):
    due = london(2017, 7, 4)
    async with db.open_database(migrated_database_url) as a, db.open_database(migrated_database_url) as b:
        for _ in range(3):  # several rounds of the race
            results = await asyncio.gather(claim(a, "reconcile", due, "host-a:1"), claim(b, "reconcile", due, "host-b:2"))
            assert sorted(results) == [False, True]
            due += timedelta(minutes=5)
        ran = []

        async def body():
            ran.append(1)
            return "did it"

        outcomes = await asyncio.gather(*(run_once(s, "digest", due, o, body) for s, o in ((a, "host-a:1"), (b, "host-b:2"))))
        assert sorted(outcomes) == [False, True] and ran == [1]
        async with a() as session:
            row = await session.scalar(select(JobRun).where(JobRun.job == "digest"))
            assert row.outcome == "did it" and row.finished_at is not None
            assert await session.scalar(select(func.count()).select_from(JobRun).where(JobRun.job == "reconcile")) == 3


def test_due_time_is_the_latest_scheduled_run_truncated_to_the_minute():
    digest = CronTrigger(day_of_week="mon-fri", hour=8, minute=0, timezone=LONDON)
    utc = timezone.utc
    assert due_time(digest, london(2017, 7, 3, 8, 0, 41)) == datetime(2017, 7, 3, 7, 0, tzinfo=utc)  # BST
    assert due_time(digest, london(2017, 1, 9, 8, 3)) == datetime(2017, 1, 9, 8, 0, tzinfo=utc)  # GMT
    assert due_time(digest, london(2017, 7, 8, 12)) == datetime(2017, 7, 7, 7, 0, tzinfo=utc)  # Saturday: Friday's
    every5 = IntervalTrigger(minutes=5, start_date=datetime(2000, 1, 1, tzinfo=utc), timezone=utc)
    assert due_time(every5, london(2017, 7, 3, 10, 9, 59)) == datetime(2017, 7, 3, 9, 5, tzinfo=utc)
    assert due_time(every5, london(2017, 7, 3, 10, 10, 0)) == datetime(2017, 7, 3, 9, 10, tzinfo=utc)


def test_the_schedule(monkeypatch):
    monkeypatch.delenv("NCPI_RECONCILE_MINUTES", raising=False)
    scheduler = build_scheduler(None, None, None, owner="here:1")
    digest, reconciler = scheduler.get_job("digest"), scheduler.get_job("reconcile")
    assert isinstance(digest.trigger, CronTrigger)
    assert {f.name: str(f) for f in digest.trigger.fields if not f.is_default} == {"day_of_week": "mon-fri", "hour": "8", "minute": "0"}
    assert str(digest.trigger.timezone) == "Europe/London"
    assert isinstance(reconciler.trigger, IntervalTrigger) and reconciler.trigger.interval == timedelta(minutes=5)
    assert digest.coalesce and digest.max_instances == 1 and digest.misfire_grace_time >= 3600
    monkeypatch.setenv("NCPI_RECONCILE_MINUTES", "2")
    assert build_scheduler(None, None, None).get_job("reconcile").trigger.interval == timedelta(minutes=2)
    monkeypatch.setenv("NCPI_RECONCILE_MINUTES", "soon")
    with pytest.raises(UserError, match="NCPI_RECONCILE_MINUTES"):
        build_scheduler(None, None, None)


# ---------------------------------------------------------------- two replicas, one digest


async def _finished(sessions, job):
    async with sessions() as session:
        rows = (await session.scalars(select(JobRun).where(JobRun.job == job))).all()
        return rows if rows and all(r.finished_at is not None for r in rows) else None


async def _digests(h):
    return [n for n in await h.notifications() if n.kind == "digest"]


async def test_two_schedulers_fire_the_same_due_time_and_the_digest_goes_out_once(
    time_skipping_env, tmp_path, database_url, monkeypatch
):
    async with harness(time_skipping_env, tmp_path, database_url=database_url) as h:
        calls = []
        real = digest.send_digest

        async def digest_on_a_fixed_day(sessions, client, settings, now):
            calls.append(now)
            return await real(sessions, client, settings, london(2017, 7, 3))  # a Monday, whatever today is

        monkeypatch.setattr(digest, "send_digest", digest_on_a_fixed_day)
        async with db.open_database(h.settings.database_url) as other_sessions:
            replicas = [build_scheduler(h.sessions, h.client, h.settings, owner="replica-a:1"),
                        build_scheduler(other_sessions, h.client, h.settings, owner="replica-b:2")]
            for scheduler in replicas:
                scheduler.remove_job("reconcile")
                scheduler.start()
            try:
                for _ in range(2):  # the same due time fired twice on both replicas: one run in all
                    now = datetime.now(LONDON)
                    for scheduler in replicas:
                        scheduler.modify_job("digest", next_run_time=now)
                    rows = await eventually(lambda: _finished(h.sessions, "digest"))
                    await asyncio.sleep(0.5)
                assert len(calls) == 1
                assert [(r.claimed_by in ("replica-a:1", "replica-b:2"), r.outcome.startswith("notification ")) for r in rows] == [(True, True)]
                [notification] = await _digests(h)
                await eventually(lambda: _sent(h, notification.id))
                await asyncio.sleep(0.5)
                assert [m.rcpt_tos for m in h.smtp.messages] == [[INSPECTORS]]
                assert h.smtp.messages[0].message["Subject"] == "Inspection follow-up: daily digest for Monday 3 July 2017"
            finally:
                for scheduler in replicas:
                    scheduler.shutdown(wait=False)
                await asyncio.sleep(0.1)


async def _sent(h, notification_id):
    async with h.sessions() as session:
        return (await session.get(Notification, notification_id, populate_existing=True)).status == "sent"


# ---------------------------------------------------------------- the digest's content


def _about(items):
    return [(i["force_code"], i["what"], i["when"][:10] if i["when"] else None) for i in items]


async def _projected(h, expected: dict[str, str]):
    async with h.sessions() as session:
        rows = dict((await session.execute(select(Recommendation.id, Recommendation.phase))).all())
    return all(rows.get(k) == v for k, v in expected.items())


async def test_the_digest_lists_revisits_due_overdue_items_and_decisions_awaited(time_skipping_env, tmp_path, database_url):
    dorset = write_report(tmp_path, "DOR", date(2017, 1, 5), [("R1", "immediately"), ("R2", "within_three_months")])
    wiltshire = write_report(tmp_path, "WIL", date(2017, 2, 2), [("R1", "within_six_months"), ("R2", "within_six_months")])
    async with harness(time_skipping_env, tmp_path, database_url=database_url) as h:
        await start(h, dorset, date(2017, 1, 5))
        # The second report on the same calendar: its publication a month after the first.
        assert (await publish(h.settings, h.client, wiltshire, anchor=h.anchor + (at(2017, 2, 2) - at(2017, 1, 5)))).started
        await skip_to(h, at(2017, 2, 10, 12))
        # Dorset delivers its action plan in time, and says R1 is done.
        await update(h.inspection("DOR-2017-01-05"), "record_delivery", DeliveryRequest(item="action_plan", by="hmi.office"))
        await update(h.recommendation("DOR-2017-01-05-R1"), "submit_progress",
                     ProgressRequest(claim="implemented", text="Done.", by="liaison officer"))
        # Wiltshire's revisit is opened early; evidence arrives for R1 only.
        await skip_to(h, at(2017, 6, 5, 12))
        await h.inspection("WIL-2017-02-02").execute_update("trigger_revisit", TriggerRevisitRequest(by="hmi.lead"))
        await eventually(lambda: _projected(h, {"WIL-2017-02-02-R1": "evidence_requested"}))
        await update(h.recommendation("WIL-2017-02-02-R1"), "submit_evidence", evidence("wil-r1.pdf"))
        await skip_to(h, at(2017, 6, 12, 7, 30))
        await eventually(lambda: _projected(h, {"WIL-2017-02-02-R1": "under_review", "WIL-2017-02-02-R2": "evidence_requested",
                                               "DOR-2017-01-05-R1": "in_progress", "DOR-2017-01-05-R2": "force_notified"}))
        sent_before = len(h.smtp.messages)

        monday = at(2017, 6, 12, 8)
        notification_id = await send_digest(h.sessions, h.client, h.settings, monday)
        assert notification_id is not None
        async with h.sessions() as session:
            row = await session.get(Notification, notification_id)
        assert (row.kind, row.inspection_id, row.idempotency_key) == ("digest", None, "digest/2017-06-12")
        assert row.recipients == {"to": [INSPECTORS], "roles": ["inspectors"]}
        assert _about(row.context["revisits_due"]) == [
            ("DOR", "Revisit (post-inspection review) no later than", "2017-07-05"),  # Wiltshire's is open already
        ]
        assert _about(row.context["overdue"]) == [
            ("DOR", "Update on recommendations to be acted on immediately was due", "2017-02-02"),
            ("DOR", "Police and Crime Commissioner's published response was due", "2017-03-02"),
            ("WIL", "Force action plan was due", "2017-03-16"),
            ("WIL", "Police and Crime Commissioner's published response was due", "2017-03-30"),
            ("DOR", "Recommendation R2: the force's update was due", "2017-04-05"),
            # Not Dorset's action plan (delivered) nor its R1 (claimed implemented).
        ]
        assert _about(row.context["decisions_awaited"]) == [
            ("WIL", "Recommendation R1: evidence in, under review since", "2017-06-05"),
            ("WIL", "Recommendation R2: evidence requested, due", "2017-06-19"),
        ]
        assert {i["inspection_id"] for i in row.context["overdue"]} == {"DOR-2017-01-05", "WIL-2017-02-02"}

        message = (await eventually(lambda: _digest_message(h))).message
        assert message["Subject"] == "Inspection follow-up: daily digest for Monday 12 June 2017"
        body = " ".join(message.get_body(("plain",)).get_content().split())
        for expected in (
            "Daily digest for Monday 12 June 2017",
            "Revisits due within 30 days --------------------------- "
            "- DOR (DOR-2017-01-05): Revisit (post-inspection review) no later than — Wednesday 5 July 2017",
            "Overdue items ------------- - DOR (DOR-2017-01-05): Update on recommendations to be acted on immediately was due — Thursday 2 February 2017",
            "- DOR (DOR-2017-01-05): Recommendation R2: the force's update was due — Wednesday 5 April 2017",
            "Decisions awaited ----------------- - WIL (WIL-2017-02-02): Recommendation R1: evidence in, under review since — Mon 5 Jun 2017 12:00",
            "- WIL (WIL-2017-02-02): Recommendation R2: evidence requested, due — Monday 19 June 2017",
            "Notification reference: digest/2017-06-12",
        ):
            assert expected in body
        html = message.get_body(("html",)).get_content()
        assert "Decisions awaited" in html and "Wednesday 5 July 2017" in html

        # Again the same day (another replica, a retry): the same notification, nothing more sent.
        assert await send_digest(h.sessions, h.client, h.settings, at(2017, 6, 12, 11)) == notification_id
        await asyncio.sleep(1.0)
        assert len(await _digests(h)) == 1
        assert len([m for m in h.smtp.messages[sent_before:] if m.rcpt_tos == [INSPECTORS] and "digest" in m.message["Subject"]]) == 1
        # No digest on a Saturday or on a bank holiday.
        assert await send_digest(h.sessions, h.client, h.settings, at(2017, 6, 10, 8)) is None
        assert await send_digest(h.sessions, h.client, h.settings, at(2017, 5, 29, 8)) is None
        assert len(await _digests(h)) == 1


async def _digest_message(h):
    found = [m for m in h.smtp.messages if m.rcpt_tos == [INSPECTORS] and "daily digest" in m.message["Subject"]]
    return found[0] if found else None


# ---------------------------------------------------------------- the reconciler


async def _audit(h, action):
    async with h.sessions() as session:
        return (await session.scalars(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id))).all()


async def _db_phase(h, rec_id):
    async with h.sessions() as session:
        return (await session.get(Recommendation, rec_id, populate_existing=True)).phase


async def _running(h, workflow_id):
    return await workflow_status(h.client, workflow_id) == jobs.RUNNING


async def test_the_reconciler_restarts_workflows_terminated_behind_its_back(time_skipping_env, tmp_path, database_url):
    report = write_report(tmp_path, "NYP", date(2017, 3, 1), [("R1", "within_three_months"), ("R2", "within_six_months")])
    inspection_id, r1, r2 = "NYP-2017-03-01", "NYP-2017-03-01-R1", "NYP-2017-03-01-R2"
    async with harness(time_skipping_env, tmp_path, database_url=database_url) as h:
        await start(h, report, date(2017, 3, 1))
        await skip_to(h, at(2017, 3, 20, 12))
        await update(h.recommendation(r1), "submit_progress", ProgressRequest(claim="in_progress", text="Started.", by="liaison officer"))
        await eventually(lambda: _projected(h, {r1: "in_progress", r2: "force_notified"}))
        assert await reconcile(h.sessions, h.client, h.settings) == []  # all well: nothing to do

        before = await rec_view(h, r1)
        await h.recommendation(r1).terminate(reason="behind the reconciler's back")
        await h.inspection(inspection_id).terminate(reason="behind the reconciler's back")
        repairs = await reconcile(h.sessions, h.client, h.settings)
        assert repairs == [
            "restarted ncpi/NYP/2017-03-01 (was terminated) in phase following_up, cycle 1",
            "restarted ncpi/NYP/2017-03-01/R1 (was terminated) in phase in_progress, cycle 1",
        ]
        assert await _running(h, "ncpi/NYP/2017-03-01/R1") and await _running(h, "ncpi/NYP/2017-03-01")
        view = await eventually(lambda: rec_view(h, r1))
        assert view.state.phase == await _db_phase(h, r1) == "in_progress"
        assert (view.state.cycle, view.state.force_claim, view.state.deadline.due) == (1, "in_progress", before.state.deadline.due)
        assert view.state.deadline.handled == before.state.deadline.handled
        assert view.calendar_now.astimezone(LONDON).date() == date(2017, 3, 20)  # the same clock as before
        insp = await eventually(lambda: insp_view(h, inspection_id))
        assert insp.state.phase == "following_up" and insp.state.open_recommendations == [r1, r2]
        assert {d.key: d.due for d in insp.state.deadlines} == {
            "action_plan": date(2017, 4, 12), "pcc_response": date(2017, 4, 26), "revisit_by": date(2017, 9, 1)}
        restarted = await _audit(h, "workflow.restarted")
        assert [(e.actor, e.entity_type, e.entity_id, e.detail["was"]) for e in restarted] == [
            ("reconciler", "inspection", inspection_id, "terminated"), ("reconciler", "recommendation", r1, "terminated")]
        # The clocks (policy, calendar, time scale) came from each workflow's own last run.
        assert [e.detail["clocks_from"] for e in restarted] == ["ncpi/NYP/2017-03-01", "ncpi/NYP/2017-03-01/R1"]
        assert await reconcile(h.sessions, h.client, h.settings) == []  # and the next pass finds nothing

        # Both carry on where they stopped: reminders on their dates, the publication notice not sent
        # again, R2 (never stopped) not started twice, and the revisit opens on every recommendation.
        await skip_to(h, at(2017, 5, 18, 12))
        rows = [(local_date(n.scheduled_for).isoformat(), n.kind, n.recommendation_id or n.context.get("deadline", "report"))
                for n in await h.notifications()]
        assert [r for r in rows if r[1] == "published"] == [("2017-03-01", "published", "report")]
        assert ("2017-04-12", "due_today", "action_plan") in rows and ("2017-04-26", "due_today", "pcc_response") in rows
        assert ("2017-05-17", "reminder", r1) in rows
        assert len(rows) == len(set(rows))
        await h.inspection(inspection_id).execute_update("trigger_revisit", TriggerRevisitRequest(by="hmi.lead"))
        await eventually(lambda: _projected(h, {r1: "evidence_requested", r2: "evidence_requested"}))

        # Mid-revisit: R1 judged, R2 still owes its evidence; both workflows stopped again.
        await update(h.recommendation(r1), "submit_evidence", evidence("nyp-r1.pdf"))
        await update(h.recommendation(r1), "record_decision", DecisionRequest(outcome="achieved", rationale="Done.", by="hmi.lead"))
        await eventually(lambda: _settled(h, inspection_id, {r1: "achieved"}))
        await eventually(lambda: _all_sent(h))
        r2_before = await rec_view(h, r2)
        await h.recommendation(r2).terminate(reason="again")
        await h.inspection(inspection_id).terminate(reason="again")
        assert await reconcile(h.sessions, h.client, h.settings) == [
            "restarted ncpi/NYP/2017-03-01 (was terminated) in phase revisit_open, cycle 1",
            "restarted ncpi/NYP/2017-03-01/R2 (was terminated) in phase evidence_requested, cycle 1",
        ]
        insp = await eventually(lambda: insp_view(h, inspection_id))
        assert (insp.state.phase, insp.state.settled, insp.state.open_recommendations) == ("revisit_open", {r1: "achieved"}, [r1, r2])
        assert (insp.state.revisit_trigger, insp.state.revisit_by) == ("inspector", "hmi.lead")
        r2_after = await eventually(lambda: rec_view(h, r2))
        assert r2_after.state.review_open and r2_after.state.evidence_deadline.due == r2_before.state.evidence_deadline.due
        # The revisit finishes on the restarted workflows: R2's evidence and decision close the report.
        await update(h.recommendation(r2), "submit_evidence", evidence("nyp-r2.pdf"))
        await update(h.recommendation(r2), "record_decision", DecisionRequest(outcome="achieved", rationale="Done too.", by="hmi.lead"))
        closed = await eventually(lambda: _inspection_phase(h, inspection_id, "closed"))
        assert closed.state.cycle == 1
        outcomes = [n for n in await eventually(lambda: _all_sent(h)) if n.kind == "revisit_outcome"]
        assert [n.context["outcomes"] for n in outcomes] == [{r1: "achieved", r2: "achieved"}]


async def _settled(h, inspection_id, expected):
    return (await insp_view(h, inspection_id)).state.settled == expected


async def _inspection_phase(h, inspection_id, phase):
    view = await insp_view(h, inspection_id)
    return view if view.state.phase == phase else None


async def _all_sent(h):
    rows = await h.notifications()
    return rows if all(r.status == "sent" for r in rows) else None


async def test_the_reconciler_repairs_a_tampered_projection_and_redelivers_orphans(time_skipping_env, tmp_path, database_url):
    report = write_report(tmp_path, "SUF", date(2017, 3, 2), [("R1", "within_three_months"), ("R2", "within_three_months")])
    r1, r2 = "SUF-2017-03-02-R1", "SUF-2017-03-02-R2"
    async with harness(time_skipping_env, tmp_path, database_url=database_url) as h:
        await start(h, report, date(2017, 3, 2))
        await skip_to(h, at(2017, 3, 6, 12))
        await eventually(lambda: _projected(h, {r1: "force_notified", r2: "force_notified"}))
        async with h.sessions.begin() as session:
            # As a stale projection of a closed recommendation and a closed report would have left them:
            # no clock running, nothing awaited on the dashboard.
            await session.execute(text("UPDATE recommendations SET phase = 'closed', cycle = 3, clock_due = NULL WHERE id = :id"), {"id": r2})
            await session.execute(text("UPDATE inspections SET next_action = 'nothing' WHERE id = 'SUF-2017-03-02'"))
            await session.execute(text("UPDATE deadlines SET waiting_due = NULL WHERE inspection_id = 'SUF-2017-03-02'"))
            # A digest whose delivery never started (the worker died in between), past the policy age (15 min).
            await insert_if_absent(
                session, Notification, ["idempotency_key"], idempotency_key="digest/2017-03-06", kind="digest",
                inspection_id=None, recommendation_id=None, recipients={"to": [INSPECTORS], "roles": ["inspectors"]},
                subject="Inspection follow-up: daily digest for Monday 6 March 2017",
                context={"date": "2017-03-06", "revisits_due": [], "overdue": [], "decisions_awaited": []},
                status="pending", attempts=0, scheduled_for=at(2017, 3, 6, 8), created_at=utcnow() - timedelta(minutes=16),
            )
        repairs = await reconcile(h.sessions, h.client, h.settings)
        assert repairs[0] == "repaired the projection of SUF-2017-03-02: next_action 'nothing' -> 'reminder: Force action plan'"
        assert repairs[1] == "repaired the projection of SUF-2017-03-02-R2: phase 'closed' -> 'force_notified'; cycle 3 -> 1"
        assert repairs[2].startswith("re-delivering pending notification ") and repairs[2].endswith(" (digest)")
        assert len(repairs) == 3
        assert await _db_phase(h, r2) == "force_notified" == (await rec_view(h, r2)).state.phase
        # The dashboard's projected columns were refreshed with the repair: its figures are the records' own.
        from tests.web.test_dashboard import assert_projection_agrees, compare, oracle
        from ncpi_workflow.app import read_models

        assert await assert_projection_agrees(h.sessions) == 0
        async with h.sessions() as session:
            clock_due, waiting = await session.scalar(select(Recommendation.clock_due).where(Recommendation.id == r2)), (
                await session.scalars(select(Deadline.key).where(Deadline.inspection_id == "SUF-2017-03-02",
                                                                 Deadline.waiting_due.is_not(None)))).all()
        assert clock_due is not None and "action_plan" in waiting, (clock_due, waiting)
        today = local_date(await h.env.get_current_time())
        compare(await read_models.dashboard(h.sessions, today=today), await oracle(h.sessions, today))
        async with h.sessions() as session:
            assert (await session.get(Inspection, "SUF-2017-03-02")).next_action == "reminder: Force action plan"
        repaired = await _audit(h, "projection.repaired")
        assert [(e.actor, e.entity_id, e.detail["from"]["phase"], e.detail["to"]["phase"]) for e in repaired] == [
            ("reconciler", "SUF-2017-03-02", "following_up", "following_up"), ("reconciler", r2, "closed", "force_notified")]
        message = (await eventually(lambda: _digest_message(h))).message
        assert "Overdue items" in message.get_body(("plain",)).get_content()
        assert await reconcile(h.sessions, h.client, h.settings) == []
        # The workflow's own projection still lands after a repair (its version moves on).
        await update(h.recommendation(r2), "submit_progress", ProgressRequest(claim="in_progress", text="Begun.", by="liaison officer"))
        await eventually(lambda: _projected(h, {r2: "in_progress"}))


def recorded_ago(inspection_id: str, minutes: float):
    return sa_update(Inspection).where(Inspection.id == inspection_id).values(created_at=utcnow() - timedelta(minutes=minutes))


async def test_a_report_recorded_but_never_started_is_started_from_publication(time_skipping_env, tmp_path, database_url):
    """The records survive but Temporal has no workflow at all (its server replaced, say): the
    inspection starts as publish starts it, on real time, and starts its recommendations itself."""
    from ncpi_workflow.clocks import calendar_for_report, plan_report
    from ncpi_workflow.forces import load_forces
    from ncpi_workflow.lifecycle import inspection_workflow_id
    from ncpi_workflow.policy import load_policy
    from ncpi_workflow.report import load_report
    from ncpi_workflow.store import insert_report, load_reference_forces

    async with harness(time_skipping_env, tmp_path, database_url=database_url) as h:
        today = (await h.env.get_current_time()).astimezone(LONDON).date()
        policy = load_policy(h.settings.policy)
        # The working day before today: its 09:00 notice is due whatever the time of day the test runs
        # (published today, before 09:00, the notice waits for a time the test never skips to).
        published = calendar_for_report(policy, today).add_working_days(today, -1)
        report = write_report(tmp_path, "LIN", published, [("R1", "within_three_months"), ("R2", "immediately")])
        forces = load_forces(h.settings.forces_file)
        loaded = load_report(report, known_forces=set(forces), max_bytes=1 << 20)
        timeline = plan_report(published, [(r.ref, r.timeframe) for r in loaded.report.recommendations], policy,
                               calendar_for_report(policy, published))
        inspection_id = loaded.report.inspection_id
        async with h.sessions.begin() as session:
            await load_reference_forces(session, forces)
            await insert_report(session, loaded, timeline, actor="test", workflow_id=inspection_workflow_id(inspection_id))

        workflow_id = inspection_workflow_id(inspection_id)
        # Just recorded: its publisher may be about to start it (with its own clocks), so it is left
        # alone, its recommendations too, for NCPI_PUBLISHING_GRACE_MINUTES (5).
        assert await reconcile(h.sessions, h.client, h.settings) == []
        for workflow in (workflow_id, f"{workflow_id}/R1", f"{workflow_id}/R2"):
            assert await workflow_status(h.client, workflow) is None
        async with h.sessions.begin() as session:
            await session.execute(recorded_ago(inspection_id, 4))
        assert await reconcile(h.sessions, h.client, h.settings) == []
        async with h.sessions.begin() as session:
            await session.execute(recorded_ago(inspection_id, 6))
        assert await reconcile(h.sessions, h.client, h.settings) == [f"restarted {workflow_id} (was missing) from publication"]
        [restarted] = await _audit(h, "workflow.restarted")
        assert (restarted.detail["fresh"], restarted.detail["clocks_from"]) == (True, "settings")
        for ref in ("R1", "R2"):
            await eventually(lambda: _running(h, f"{workflow_id}/{ref}"))
        await eventually(lambda: _projected(h, {f"{inspection_id}-R1": "force_notified", f"{inspection_id}-R2": "force_notified"}))
        published_notices = [n for n in await eventually(lambda: _all_sent(h)) if n.kind == "published"]
        assert [n.idempotency_key for n in published_notices] == [f"{workflow_id}/published"]
        assert await reconcile(h.sessions, h.client, h.settings) == []


async def test_the_reconciler_delivers_a_pending_row_its_workflow_never_delivered(time_skipping_env, tmp_path, database_url):
    """Issue 11: a follow-up recorded a reminder (local activities), then its workflow task timed out,
    and the retried task, at a later workflow.now(), judged the reminder superseded and never
    delivered it. Pending past NCPI_OUTBOX_PENDING_MINUTES, reported by `ncpi health`, and then
    delivered, once, by the reconciler; a row still being delivered is left alone."""
    from ncpi_workflow.jobs import deployment_problems

    report = write_report(tmp_path, "ESS", date(2017, 3, 2), [("R1", "within_three_months")])
    rec = "ESS-2017-03-02-R1"
    async with harness(time_skipping_env, tmp_path, database_url=database_url) as h:
        await start(h, report, date(2017, 3, 2))
        await eventually(lambda: _projected(h, {rec: "force_notified"}))
        await eventually(lambda: _all_sent(h))
        old = utcnow() - timedelta(minutes=16)
        async with h.sessions.begin() as session:
            for key, attempted in (("never-delivered", None), ("being-delivered", utcnow())):
                await insert_if_absent(
                    session, Notification, ["idempotency_key"], idempotency_key=f"ncpi/ESS/2017-03-02/R1/{key}",
                    kind="reminder", inspection_id="ESS-2017-03-02", recommendation_id=rec,
                    recipients={"to": ["liaison@essex.police.example"], "roles": ["liaison_officer"]},
                    subject="Reminder: Recommendation R1 due Friday 2 June 2017",
                    context={"deadline": "recommendation", "due": "2017-06-02", "working_days": 10, "cycle": 1},
                    status="pending", attempts=0 if attempted is None else 1, scheduled_for=at(2017, 5, 19, 9),
                    created_at=old, last_attempt_at=attempted,
                )
            orphan = await session.scalar(select(Notification.id).where(Notification.idempotency_key.like("%never-delivered")))
        problems = await deployment_problems(h.sessions, None, h.settings)
        assert (problems.pending_past_age, problems.never_attempted, problems.held_by_relay) == (2, 1, 0)
        assert await reconcile(h.sessions, h.client, h.settings) == [f"re-delivering pending notification {orphan} (reminder)"]
        [redelivered] = await _audit(h, "notification.redelivered")
        assert redelivered.detail["why"] == "never attempted"
        await eventually(lambda: _sent(h, orphan))
        assert [m.message["X-NCPI-Reference"] for m in h.smtp.messages].count("ncpi/ESS/2017-03-02/R1/never-delivered") == 1
        assert (await deployment_problems(h.sessions, None, h.settings)).pending_past_age == 1  # the one in progress
        assert await reconcile(h.sessions, h.client, h.settings) == []


# ---------------------------------------------------------------- the database restarted between passes


def _restart_postgres(cluster) -> None:
    """`pg_ctl stop -m immediate` (a crash: every client connection dies), then started again on its port."""
    import subprocess

    pg_ctl, data = str(cluster.bin_dir / "pg_ctl"), str(cluster.root / "data")
    subprocess.run(cluster._as_owner(pg_ctl, "-D", data, "-m", "immediate", "-w", "stop"), check=True, capture_output=True)
    subprocess.run(cluster._as_owner(
        pg_ctl, "-D", data, "-l", str(cluster.root / "server.log"), "-w", "-o",
        f"-p {cluster.port} -k {cluster.root} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off", "start",
    ), check=True, capture_output=True)


async def test_the_reconciler_recovers_its_connections_after_postgresql_restarts(dev_server_env, postgres_cluster, tmp_path):
    """Issue 11: the reconciler's pool kept the connections of the server that crashed, and its next
    pass failed on them. Now the pass after the restart runs, and does its work."""
    import os

    from ncpi_workflow.settings import Settings
    from tests.conftest import _create_pg_database

    url = await _create_pg_database(postgres_cluster)
    await db.upgrade(url)
    settings = Settings(database_url=url, task_queue=f"reconciler-restart-{os.getpid()}", data_dir=tmp_path / "data")
    async with db.open_database(url) as sessions:
        assert await reconcile(sessions, dev_server_env.client, settings) == []  # the pool now holds a connection
        _restart_postgres(postgres_cluster)
        async with db.open_database(url) as fresh, fresh.begin() as session:
            # A digest whose delivery never started, past the policy age: work for the next pass.
            await insert_if_absent(
                session, Notification, ["idempotency_key"], idempotency_key="digest/2017-03-06/restart", kind="digest",
                inspection_id=None, recommendation_id=None, recipients={"to": [INSPECTORS], "roles": ["inspectors"]},
                subject="Inspection follow-up: daily digest for Monday 6 March 2017",
                context={"date": "2017-03-06", "revisits_due": [], "overdue": [], "decisions_awaited": []},
                status="pending", attempts=0, scheduled_for=datetime(2017, 3, 6, 8, tzinfo=timezone.utc),
                created_at=utcnow() - timedelta(minutes=16),
            )
        repairs = await reconcile(sessions, dev_server_env.client, settings)
        assert len(repairs) == 1 and repairs[0].startswith("re-delivering pending notification ") and repairs[0].endswith(" (digest)")
        async with sessions() as session:
            [redelivered] = (await session.scalars(select(AuditEvent).where(AuditEvent.action == "notification.redelivered"))).all()
        assert redelivered.actor == "reconciler"
