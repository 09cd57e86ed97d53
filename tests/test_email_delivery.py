"""Email delivery against a real aiosmtpd server on loopback: exactly once in effect, retried while
the server is down, failures recorded and reported, bursts over one connection."""

from __future__ import annotations

import asyncio
from contextlib import contextmanager
from datetime import date, datetime, timedelta, timezone
from email.utils import parsedate_to_datetime

import pytest
from sqlalchemy import select

from activities.delivery import DeliveryActivities, DeliverySettings
from ncpi_workflow import db
from ncpi_workflow.clocks import calendar_for_report, plan_report
from ncpi_workflow.forces import load_forces
from ncpi_workflow.mailer import Mailer, SmtpConfig
from ncpi_workflow.models import AuditEvent, Decision, Notification, utcnow
from ncpi_workflow.policy import Policy
from ncpi_workflow.report import load_report
from ncpi_workflow.smtp_capture import start_capture
from ncpi_workflow.store import insert_if_absent, insert_report, load_reference_forces
from tests.conftest import ROOT
from tests.lifecycle_support import CUMBRIA, harness, skip_to, write_report
from tests.postgres import free_port
from tests.test_lifecycle_timeskipping import at, eventually, start

FORCES = load_forces(ROOT / "config" / "forces.yaml")


async def settled(h, at_least: int):
    """All notifications in a final state (sent or failed), once there are at least `at_least`."""
    rows = await h.notifications()
    return rows if len(rows) >= at_least and all(r.status in ("sent", "failed") for r in rows) else None


async def test_every_lifecycle_notification_reaches_the_server_exactly_once(time_skipping_env, tmp_path):
    async with harness(time_skipping_env, tmp_path) as h:
        await start(h, CUMBRIA, date(2017, 1, 26))
        await skip_to(h, at(2017, 4, 3, 12))
        rows = await eventually(lambda: settled(h, 18))  # 18 due by 3 April 2017
        await asyncio.sleep(0.5)  # and nothing more arrives
        assert {r.status for r in rows} == {"sent"}
        ids = [m.message["Message-ID"] for m in h.smtp.messages]
        assert len(ids) == len(rows) == len(set(ids))
        assert sorted(ids) == sorted(r.message_id for r in rows)
        published = next(m.message for m in h.smtp.messages if m.message["X-NCPI-Reference"] == "ncpi/CUM/2017-01-26/published")
        assert published["To"] == "liaison@cumbria.police.example, chief.officer@cumbria.police.example, pcc@cumbria.pcc.example"
        assert published["Auto-Submitted"] == "auto-generated"
        assert "Thursday 9 March 2017" in published.get_body(("plain",)).get_content()
        assert "Thursday 9 March 2017" in published.get_body(("html",)).get_content()
        escalation = next(m for m in h.smtp.messages if "Escalation" in m.message["Subject"])
        assert "chief.officer@cumbria.police.example" in escalation.rcpt_tos


async def test_smtp_down_at_first_then_up_every_message_arrives_once(time_skipping_env, tmp_path):
    report = write_report(tmp_path, "WAR", date(2017, 3, 9), [("R1", "within_three_months")])
    # The relay is tried again at most every smtp_fault_probe_seconds of real time; skipped time is not real.
    async with harness(time_skipping_env, tmp_path, smtp_up=False, smtp_fault_probe_seconds=0.1) as h:
        await start(h, report, date(2017, 3, 9))
        await skip_to(h, at(2017, 3, 9, 11))  # two hours of refused connections, held and retried
        pending = await eventually(lambda: _failed_attempts(h))
        assert [r.kind for r in pending] == ["published"] and pending[0].status == "pending"
        assert pending[0].last_error.startswith("held: cannot reach relay 127.0.0.1:")
        assert "Connect" in pending[0].last_error and pending[0].attempts >= 3
        h.start_smtp()
        await h.env.sleep(timedelta(minutes=15))  # the next retry, skipped to
        await eventually(lambda: settled(h, 1))
        await skip_to(h, at(2017, 4, 20, 12))  # and everything after goes through first time
        rows = await eventually(lambda: settled(h, 5))  # published, 3 action-plan messages, 1 PCC reminder
        assert {r.status for r in rows} == {"sent"}
        references = [m.message["X-NCPI-Reference"] for m in h.smtp.messages]
        assert sorted(references) == sorted(r.idempotency_key for r in rows)  # each exactly once
        assert [r.attempts for r in rows if r.kind != "published"] == [1] * (len(rows) - 1)


async def _failed_attempts(h):
    rows = await h.notifications()
    return rows if rows and all(r.attempts >= 3 for r in rows) else None


async def test_a_refused_recipient_is_recorded_as_failed_and_the_inspectors_are_told(time_skipping_env, tmp_path):
    report = write_report(tmp_path, "HER", date(2017, 3, 10), [("R1", "within_three_months")])
    async with harness(time_skipping_env, tmp_path) as h:
        h.smtp.refuse["liaison@hertfordshire.police.example"] = "550 5.1.1 <liaison@hertfordshire.police.example>: mailbox unavailable"
        await start(h, report, date(2017, 3, 10))
        rows = await eventually(lambda: _with_alert(h))
        published = next(r for r in rows if r.kind == "published")
        assert published.status == "failed"
        assert "550 5.1.1" in published.last_error and "mailbox unavailable" in published.last_error
        alert = next(r for r in rows if r.kind == "delivery_failed")
        assert alert.status == "sent" and alert.recipients["to"] == ["ncpi-inspectors@inspectorate.example"]
        told = [m for m in h.smtp.messages if m.rcpt_tos == ["ncpi-inspectors@inspectorate.example"]]
        assert len(told) == 1 and "550 5.1.1" in told[0].message.get_body(("plain",)).get_content()
        async with h.sessions() as session:
            assert (await session.scalars(select(AuditEvent.action).where(AuditEvent.action == "notification.failed"))).all()


async def _with_alert(h):
    rows = await h.notifications()
    alert = [r for r in rows if r.kind == "delivery_failed" and r.status == "sent"]
    return rows if alert else None


async def _records(tmp_path):
    """A database holding the Cumbria report (no workflow): enough for the delivery activity."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'delivery.db'}"
    from tests.conftest import migrate

    await migrate(url)  # db.upgrade: a new SQLite file is a copy of the session's migrated template
    loaded = load_report(CUMBRIA, known_forces=set(FORCES), max_bytes=1 << 20)
    policy = Policy()
    timeline = plan_report(loaded.report.published, [(r.ref, r.timeframe) for r in loaded.report.recommendations],
                           policy, calendar_for_report(policy, loaded.report.published))
    return url, loaded, timeline


async def _outbox(sessions, count: int) -> list[int]:
    async with sessions.begin() as session:
        for i in range(count):
            await insert_if_absent(
                session, Notification, ["idempotency_key"],
                idempotency_key=f"ncpi/CUM/2017-01-26/R2/c1/burst/{i}", kind="reminder",
                inspection_id="CUM-2017-01-26", recommendation_id="CUM-2017-01-26-R2",
                recipients={"to": ["liaison@cumbria.police.example"], "roles": ["liaison_officer"]},
                subject=f"Reminder {i}: Recommendation R2 due Wednesday 26 April 2017",
                context={"deadline": "recommendation", "due": "2017-04-26", "working_days": 3, "cycle": 1},
                status="pending", attempts=0, scheduled_for=utcnow(),
            )
        return list((await session.scalars(select(Notification.id).order_by(Notification.id))).all())


def _delivery(sessions, port: int) -> tuple[Mailer, DeliveryActivities]:
    mailer = Mailer(SmtpConfig("127.0.0.1", port, None, None, False, False, 10.0, 0.0, 30.0))
    settings = DeliverySettings("ncpi-followup@inspectorate.example", None, "ncpi-inspectors@inspectorate.example", None)
    return mailer, DeliveryActivities(sessions, mailer, settings)


async def test_a_retried_delivery_after_success_sends_nothing_more_and_keeps_the_message_id(tmp_path):
    url, loaded, timeline = await _records(tmp_path)
    port = free_port()
    controller, smtp = start_capture(port=port)
    try:
        async with db.open_database(url) as sessions:
            async with sessions.begin() as session:
                await load_reference_forces(session, FORCES)
                await insert_report(session, loaded, timeline, actor="test")
            [notification_id] = await _outbox(sessions, 1)
            mailer, activities = _delivery(sessions, port)
            assert await activities.deliver_notification(notification_id) == "sent"
            assert await activities.deliver_notification(notification_id) == "sent"  # the retry
            assert len(smtp.messages) == 1
            # The unavoidable window: a crash after the server accepted, before the row was marked.
            async with sessions.begin() as session:
                row = await session.get(Notification, notification_id)
                first_id, row.status = row.message_id, "pending"
            assert await activities.deliver_notification(notification_id) == "sent"
            assert [m.message["Message-ID"] for m in smtp.messages] == [first_id, first_id]
            await mailer.close()
    finally:
        controller.stop()


async def test_a_burst_of_500_reminders_goes_over_one_connection(tmp_path):
    url, loaded, timeline = await _records(tmp_path)
    port = free_port()
    controller, smtp = start_capture(port=port)
    try:
        async with db.open_database(url) as sessions:
            async with sessions.begin() as session:
                await load_reference_forces(session, FORCES)
                await insert_report(session, loaded, timeline, actor="test")
            ids = await _outbox(sessions, 500)
            mailer, activities = _delivery(sessions, port)
            results = await asyncio.gather(*(activities.deliver_notification(i) for i in ids))
            assert results == ["sent"] * 500
            assert len(smtp.messages) == 500
            assert len({m.message["Message-ID"] for m in smtp.messages}) == 500
            assert mailer.connections_opened == 1
            await mailer.close()
    finally:
        controller.stop()


async def test_a_failed_notification_is_re_sent_with_ncpi_outbox_resend(time_skipping_env, tmp_path):
    from tests.conftest import run_ncpi

    report = write_report(tmp_path, "STA", date(2017, 3, 13), [("R1", "within_three_months")])
    async with harness(time_skipping_env, tmp_path) as h:
        h.smtp.refuse["liaison@staffordshire.police.example"] = "550 5.1.1 mailbox unavailable"
        await start(h, report, date(2017, 3, 13))
        rows = await eventually(lambda: _with_alert(h))
        failed = next(r for r in rows if r.kind == "published")
        h.smtp.refuse.clear()  # the address is fixed
        env = {
            **{k: v for k, v in __import__("os").environ.items() if not k.startswith("NCPI_")},
            "NCPI_TEMPORAL_ADDRESS": h.client.service_client.config.target_host,
            "NCPI_DATABASE_URL": h.settings.database_url,
            "NCPI_TASK_QUEUE": h.settings.task_queue,
            "NCPI_SETTINGS_FILE": str(tmp_path / "none.toml"),
        }
        result = await asyncio.to_thread(run_ncpi, "outbox", "resend", str(failed.id), "--by", "ops.desk", env=env)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(f"re-sending notification {failed.id} to liaison@staffordshire.police.example")
        await eventually(lambda: _status_is(h, failed.id, "sent"))
        again = [m for m in h.smtp.messages if m.message["X-NCPI-Reference"] == failed.idempotency_key]
        assert len(again) == 2  # once to the others at first, once more to everyone now
        refused = await asyncio.to_thread(run_ncpi, "outbox", "resend", str(failed.id), env=env)
        assert refused.returncode != 0 and "was already sent" in refused.stderr and len(refused.stderr.splitlines()) == 1
        listing = await asyncio.to_thread(run_ncpi, "outbox", "--status", "sent", "--json", env=env)
        assert listing.returncode == 0 and str(failed.id) in listing.stdout


async def _status_is(h, notification_id, status):
    async with h.sessions() as session:
        return (await session.get(Notification, notification_id, populate_existing=True)).status == status


# --- every email from its own facts, failure alerts never lost, headers --------------------------

R2 = "CUM-2017-01-26-R2"
LIAISON = {"to": ["liaison@cumbria.police.example"], "roles": ["liaison_officer"]}
INSPECTOR_A, INSPECTOR_B = "A. Adams, HMICFRS", "B. Brown, HMICFRS"
RATIONALE_A = "Cycle one: the problem profile exists but two districts have not adopted it."
RATIONALE_B = "Cycle two: covered by the thematic inspection of 2018, so withdrawn."


async def _cumbria_records(sessions) -> None:
    loaded = load_report(CUMBRIA, known_forces=set(FORCES), max_bytes=1 << 20)
    policy = Policy()
    timeline = plan_report(loaded.report.published, [(r.ref, r.timeframe) for r in loaded.report.recommendations],
                           policy, calendar_for_report(policy, loaded.report.published))
    async with sessions.begin() as session:
        await load_reference_forces(session, FORCES)
        await insert_report(session, loaded, timeline, actor="test")


async def _decisions(sessions, *rows: tuple[int, str, str, str, datetime]) -> None:
    async with sessions.begin() as session:
        for cycle, outcome, rationale, by, at in rows:
            session.add(Decision(recommendation_id=R2, cycle=cycle, outcome=outcome, rationale=rationale, decided_by=by, decided_at=at))


async def _notify(sessions, key: str, kind: str, context: dict, recipients: dict = LIAISON) -> int:
    async with sessions.begin() as session:
        await insert_if_absent(
            session, Notification, ["idempotency_key"], idempotency_key=key, kind=kind, inspection_id="CUM-2017-01-26",
            recommendation_id=R2, recipients=recipients, subject=f"{kind} on recommendation R2", context=context,
            status="pending", attempts=0, scheduled_for=datetime(2018, 3, 1, 9, 0, tzinfo=timezone.utc),
        )
        return await session.scalar(select(Notification.id).where(Notification.idempotency_key == key))


def _text_of(smtp, key: str) -> str:
    [message] = [m.message for m in smtp.messages if m.message["X-NCPI-Reference"] == key]
    return " ".join(message.get_body(("plain",)).get_content().split())


@contextmanager
def _capture():
    port = free_port()
    controller, smtp = start_capture(port=port)
    try:
        yield port, smtp
    finally:
        controller.stop()


def _facts(outcome: str, rationale: str, by: str, at: datetime, cycle: int) -> dict:
    return {"outcome": outcome, "rationale": rationale, "by": by, "at": at.isoformat(), "cycle": cycle}


AT_A = datetime(2017, 7, 20, 13, 30, tzinfo=timezone.utc)  # 14:30 in London
AT_B = datetime(2018, 2, 1, 10, 5, tzinfo=timezone.utc)


async def test_each_decision_email_describes_its_own_decision_not_the_newest_row(sessions):
    await _cumbria_records(sessions)
    await _decisions(sessions, (1, "partially_achieved", RATIONALE_A, INSPECTOR_A, AT_A),
                     (2, "withdrawn", RATIONALE_B, INSPECTOR_B, AT_B))
    a = _facts("partially_achieved", RATIONALE_A, INSPECTOR_A, AT_A, 1)
    ids = [
        await _notify(sessions, "r2/c1/decision", "decision", a),
        await _notify(sessions, "r2/c2/further_follow_up", "further_follow_up",
                      {**a, "due": "2017-10-20", "cycle": 2, "why": "further follow-up after partially achieved"}),
        await _notify(sessions, "r2/c2/withdrawn", "decision", _facts("withdrawn", RATIONALE_B, INSPECTOR_B, AT_B, 2)),
    ]
    with _capture() as (port, smtp):
        mailer, activities = _delivery(sessions, port)
        assert [await activities.deliver_notification(i) for i in ids] == ["sent"] * 3
        await mailer.close()
    for key in ("r2/c1/decision", "r2/c2/further_follow_up"):
        text = _text_of(smtp, key)
        assert RATIONALE_A in text and INSPECTOR_A in text and "Thu 20 Jul 2017 14:30" in text, key
        assert RATIONALE_B not in text and INSPECTOR_B not in text and "withdrawn" not in text, key
    assert "New deadline: Friday 20 October 2017" in _text_of(smtp, "r2/c2/further_follow_up")
    withdrawn = _text_of(smtp, "r2/c2/withdrawn")
    assert RATIONALE_B in withdrawn and INSPECTOR_B in withdrawn and "Outcome: withdrawn" in withdrawn
    assert RATIONALE_A not in withdrawn and INSPECTOR_A not in withdrawn


async def test_the_payload_wins_over_a_different_newest_decision_row(sessions):
    # The race of issue 10: the records hold the other inspector's decision for the same cycle.
    await _cumbria_records(sessions)
    await _decisions(sessions, (1, "partially_achieved", RATIONALE_A, INSPECTOR_A, AT_A))
    b = {"outcome": "withdrawn", "rationale": RATIONALE_B, "by": INSPECTOR_B, "cycle": 1}  # no "at": scheduled_for
    ids = [
        await _notify(sessions, "r2/c1/withdrawn", "decision", b),
        await _notify(sessions, "r2/c1/not_achieved", "escalation",
                      {**_facts("not_achieved", RATIONALE_B, INSPECTOR_B, AT_B, 1), "rung": "not_achieved"}),
    ]
    with _capture() as (port, smtp):
        mailer, activities = _delivery(sessions, port)
        assert [await activities.deliver_notification(i) for i in ids] == ["sent", "sent"]
        await mailer.close()
    withdrawn = _text_of(smtp, "r2/c1/withdrawn")
    assert RATIONALE_B in withdrawn and "Decided by: " + INSPECTOR_B in withdrawn
    assert "Decided on: Thu 1 Mar 2018 09:00" in withdrawn  # when the notification was recorded
    assert RATIONALE_A not in withdrawn and "partially" not in withdrawn
    escalation = _text_of(smtp, "r2/c1/not_achieved")
    assert RATIONALE_B in escalation and "Decided on: Thu 1 Feb 2018 10:05" in escalation
    assert RATIONALE_A not in escalation


async def test_rows_recorded_before_payloads_carried_facts_use_the_decision_of_their_own_cycle(sessions):
    await _cumbria_records(sessions)
    await _decisions(sessions, (1, "partially_achieved", RATIONALE_A, INSPECTOR_A, AT_A),
                     (2, "not_achieved", RATIONALE_B, INSPECTOR_B, AT_B))
    ids = [
        await _notify(sessions, "old/c2/further_follow_up", "further_follow_up",
                      {"due": "2017-10-20", "cycle": 2, "why": "further follow-up after partially achieved"}),
        await _notify(sessions, "old/c1/not_achieved", "escalation",
                      {"outcome": "partially_achieved", "rung": "not_achieved", "cycle": 1}),
        # A re-opening used to be sent as a further follow-up: it is about no decision at all.
        await _notify(sessions, "old/c3/further_follow_up", "further_follow_up",
                      {"due": "2018-05-01", "cycle": 3, "why": "re-opened: complaint received"}),
    ]
    with _capture() as (port, smtp):
        mailer, activities = _delivery(sessions, port)
        assert [await activities.deliver_notification(i) for i in ids] == ["sent"] * 3
        await mailer.close()
    for key in ("old/c2/further_follow_up", "old/c1/not_achieved"):
        text = _text_of(smtp, key)
        assert RATIONALE_A in text and RATIONALE_B not in text, key
    reopened = _text_of(smtp, "old/c3/further_follow_up")
    assert "A further follow-up of recommendation R2 has started (cycle 3)" in reopened
    assert "judged" not in reopened and RATIONALE_B not in reopened and RATIONALE_A not in reopened


async def test_a_reopening_email_gives_the_reason_who_and_new_deadline_not_the_old_decision(sessions):
    await _cumbria_records(sessions)
    await _decisions(sessions, (1, "achieved", RATIONALE_A, INSPECTOR_A, AT_A))
    reason = "Complaint received: profile not used in West Cumbria"
    [notification_id] = [await _notify(
        sessions, "r2/c2/reopened", "reopened",
        {"reason": reason, "by": INSPECTOR_B, "at": AT_B.isoformat(), "due": "2018-05-01", "cycle": 2,
         "previous_outcome": "achieved"},
        recipients={"to": ["liaison@cumbria.police.example", "chief.officer@cumbria.police.example"],
                    "roles": ["liaison_officer", "chief_officer"]},
    )]
    with _capture() as (port, smtp):
        mailer, activities = _delivery(sessions, port)
        assert await activities.deliver_notification(notification_id) == "sent"
        await mailer.close()
    text = _text_of(smtp, "r2/c2/reopened")
    assert reason in text and "Re-opened by: " + INSPECTOR_B in text and "Re-opened on: Thu 1 Feb 2018 10:05" in text
    assert "New deadline: Tuesday 1 May 2018" in text and "cycle 2" in text
    assert "reminder before the new deadline" in text
    assert "achieved" not in text and RATIONALE_A not in text and INSPECTOR_A not in text


async def test_a_crash_while_recording_the_failure_alert_does_not_lose_it(sessions, monkeypatch):
    import activities.delivery as delivery

    await _cumbria_records(sessions)
    notification_id = await _notify(sessions, "r2/c1/reminder", "reminder",
                                    {"deadline": "recommendation", "due": "2017-04-26", "working_days": 3, "cycle": 1})
    real_insert = delivery.insert_if_absent
    crashes = []

    async def crashing_insert(session, model, conflict_on, **values):
        if values.get("kind") == "delivery_failed" and not crashes:
            crashes.append(values["idempotency_key"])
            raise RuntimeError("the worker died here")
        return await real_insert(session, model, conflict_on, **values)

    monkeypatch.setattr(delivery, "insert_if_absent", crashing_insert)
    with _capture() as (port, smtp):
        smtp.refuse["liaison@cumbria.police.example"] = "550 5.1.1 mailbox unavailable"
        mailer, activities = _delivery(sessions, port)
        with pytest.raises(RuntimeError):
            await activities.deliver_notification(notification_id)
        assert crashes
        assert await activities.deliver_notification(notification_id) == "failed"  # Temporal's retry
        await mailer.close()
    rows = await _notifications(sessions)
    alert = next((r for r in rows if r.kind == "delivery_failed"), None)
    assert alert is not None and alert.status == "sent" and alert.context == {"failed_id": notification_id}
    assert [m.rcpt_tos for m in smtp.messages] == [["ncpi-inspectors@inspectorate.example"]]
    async with sessions() as session:
        audit = (await session.scalars(select(AuditEvent).where(AuditEvent.action == "notification.failed"))).all()
    assert len(audit) == 1


async def test_a_retry_delivers_a_failure_alert_still_pending(sessions):
    await _cumbria_records(sessions)
    notification_id = await _notify(sessions, "r2/c1/reminder", "reminder",
                                    {"deadline": "recommendation", "due": "2017-04-26", "working_days": 3, "cycle": 1})
    with _capture() as (port, smtp):
        smtp.refuse["liaison@cumbria.police.example"] = "550 5.1.1 mailbox unavailable"
        mailer, activities = _delivery(sessions, port)
        real_send = mailer.send_bytes

        async def dies_sending_the_alert(data, sender, recipients, **kwargs):
            if recipients == ["ncpi-inspectors@inspectorate.example"] and not getattr(mailer, "died", False):
                mailer.died = True
                raise RuntimeError("the worker died here")
            await real_send(data, sender, recipients, **kwargs)

        mailer.send_bytes = dies_sending_the_alert
        with pytest.raises(RuntimeError):
            await activities.deliver_notification(notification_id)
        assert [r.status for r in await _notifications(sessions)] == ["failed", "pending"]
        assert await activities.deliver_notification(notification_id) == "failed"  # Temporal's retry
        assert await activities.deliver_notification(notification_id) == "failed"  # and another: nothing more
        await mailer.close()
    assert [r.status for r in await _notifications(sessions)] == ["failed", "sent"]
    assert [m.rcpt_tos for m in smtp.messages] == [["ncpi-inspectors@inspectorate.example"]]


async def _notifications(sessions) -> list[Notification]:
    async with sessions() as session:
        return list((await session.scalars(select(Notification).order_by(Notification.id))).all())


async def test_every_message_is_dated_and_marked_auto_generated(sessions):
    await _cumbria_records(sessions)
    notification_id = await _notify(sessions, "r2/c1/reminder", "reminder",
                                    {"deadline": "recommendation", "due": "2017-04-26", "working_days": 3, "cycle": 1})
    with _capture() as (port, smtp):
        mailer, activities = _delivery(sessions, port)
        before = datetime.now(timezone.utc).replace(microsecond=0)
        assert await activities.deliver_notification(notification_id) == "sent"
        after = datetime.now(timezone.utc)
        await mailer.close()
    [captured] = smtp.messages
    sent = parsedate_to_datetime(captured.message["Date"])  # RFC 5322: the time of sending, with its offset
    assert sent.tzinfo is not None and before <= sent <= after
    assert captured.message["Auto-Submitted"] == "auto-generated"  # RFC 3834


def test_a_subject_of_any_length_reads_back_exactly():
    """The email package folded a 70-77 character subject onto a continuation line of its own
    (`Subject:` CRLF SP text), read back with a leading space. Every length from 60 to 120, with
    the spaces in every position the words give: the first line carries text, no line is longer
    than 78, and the parsed Subject is the subject exactly. Other headers are folded as before."""
    import email
    import email.policy

    from ncpi_workflow.mailer import build_message, flatten

    words = ("Reminder:", "Recommendation", "R12", "of", "the", "inspection", "Cumbria", "Constabulary",
             "due", "Friday", "2", "June", "2017", "[CUM-2017-03-02-R12]", "a")
    to = [f"liaison.officer.{n}@cumbria.police.example" for n in range(4)]
    checked = 0
    for length in range(60, 121):
        for shift in range(len(words)):
            subject = ""
            n = shift
            while len(subject) < length:
                subject += words[n % len(words)] + " "
                n += 1
            subject = subject[:length]
            subject = subject[:-1] + "x" if subject.endswith(" ") else subject
            if "  " in subject:
                continue
            assert len(subject) == length
            data = flatten(build_message(mail_from="ncpi@inspectorate.example", reply_to=None, to=to, subject=subject,
                                         text="Text.", html="<p>Text.</p>", message_id="<1@inspectorate.example>",
                                         reference="ref"))
            head = data.split(b"\r\n\r\n")[0].decode("ascii")
            lines = head.split("\r\n")
            first = next(i for i, line in enumerate(lines) if line.startswith("Subject:"))
            assert lines[first].startswith("Subject: ") and len(lines[first]) > len("Subject: "), (subject, lines[first])
            assert all(len(line) <= 78 for line in lines), head
            parsed = email.message_from_bytes(data, policy=email.policy.default)
            assert parsed["Subject"] == subject, (length, shift)
            assert [a.addr_spec for a in parsed["To"].addresses] == to
            checked += 1
    assert checked > 500
    # Not plain ASCII: encoded words, folded by the email package as before (which reads back one
    # space more beside an encoded word, CPython's own behaviour; no leading space).
    subject = "Reminder: Recommendation R1 of the inspection of Dyfed-Powys Police — due Friday 2 June 2017"
    data = flatten(build_message(mail_from="ncpi@inspectorate.example", reply_to=None, to=to[:1], subject=subject,
                                 text="Text.", html="<p>Text.</p>", message_id="<2@inspectorate.example>", reference="r"))
    assert b"=?utf-8?" in data
    assert email.message_from_bytes(data, policy=email.policy.default)["Subject"].startswith("Reminder: Recommendation R1 ")
