"""Email delivery against a real aiosmtpd server on loopback: exactly once in effect, retried while
the server is down, failures recorded and reported, bursts over one connection."""

from __future__ import annotations

import asyncio
from datetime import date, timedelta

from sqlalchemy import select

from activities.delivery import DeliveryActivities, DeliverySettings
from ncpi_workflow import db
from ncpi_workflow.clocks import calendar_for_report, plan_report
from ncpi_workflow.forces import load_forces
from ncpi_workflow.mailer import Mailer, SmtpConfig
from ncpi_workflow.models import AuditEvent, Notification, utcnow
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
    async with harness(time_skipping_env, tmp_path, smtp_up=False) as h:
        await start(h, report, date(2017, 3, 9))
        await skip_to(h, at(2017, 3, 9, 11))  # two hours of refused connections, retried with backoff
        pending = await eventually(lambda: _failed_attempts(h))
        assert [r.kind for r in pending] == ["published"] and pending[0].status == "pending"
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
    await db.upgrade(url)
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
