"""Delivery reliability (issue 11), on SQLite and PostgreSQL, against the real aiosmtpd capture and
a real Temporal dev server where Temporal is involved:

- a message is rendered once: a retry or a resend sends the stored bytes under the same Message-ID;
- two deliverers of one row (its workflow's and the reconciler's) send it once;
- SMTP accepted, then marking it sent failed: one message, and the row ends sent (within the
  attempt, or from the activity's heartbeat details on Temporal's retry);
- `ncpi outbox` shows each notification's last error; `ncpi outbox resend --failed` resends in bulk;
- a workflow whose task keeps failing is reported by the reconciler, `ncpi health` and `ncpi status`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import time
import uuid
from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone

from sqlalchemy import select, text
from sqlalchemy.exc import OperationalError
from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError
from temporalio.worker import UnsandboxedWorkflowRunner, Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities.delivery import HELD, DeliveryActivities, DeliverySettings
from ncpi_workflow.mailer import Mailer, SmtpConfig
from ncpi_workflow.models import Notification, StuckWorkflow
from ncpi_workflow.settings import Settings
from tests.conftest import run_ncpi
from tests.test_email_delivery import R2, _capture, _cumbria_records, _notify
from workflows.delivery import DeliveryWorkflow

MAIL_FROM = "ncpi-followup@inspectorate.example"
INSPECTORS = "ncpi-inspectors@inspectorate.example"
REMINDER = {"deadline": "recommendation", "due": "2017-04-26", "working_days": 3, "cycle": 1}
RUNNER = SandboxedWorkflowRunner(restrictions=SandboxRestrictions.default.with_passthrough_modules("ncpi_workflow", "dateutil"))
_queues = itertools.count(1)


def mailer_for(port: int, **overrides) -> Mailer:
    return Mailer(SmtpConfig("127.0.0.1", port, None, None, False, False, 10.0, 0.0, 30.0, **overrides))


def delivery(sessions, mailer: Mailer, **settings) -> DeliveryActivities:
    return DeliveryActivities(sessions, mailer, DeliverySettings(MAIL_FROM, None, INSPECTORS, None, **settings))


@asynccontextmanager
async def delivery_worker(env, activities: DeliveryActivities, queue: str | None = None):
    """A worker of the NotificationDelivery workflow and the delivery activity, on a queue of its own
    (or on `queue`: a worker restarted)."""
    queue = queue or f"reliability-{os.getpid()}-{next(_queues)}"
    async with Worker(env.client, task_queue=queue, workflows=[DeliveryWorkflow], activities=activities.all(),
                      workflow_runner=RUNNER):
        yield queue


async def deliver_via_temporal(env, queue: str, notification_id: int) -> str:
    return await env.client.execute_workflow(
        "NotificationDelivery", notification_id, id=f"test/{uuid.uuid4()}", task_queue=queue, result_type=str,
        execution_timeout=timedelta(minutes=2),
    )


async def row(sessions, notification_id: int) -> Notification:
    async with sessions() as session:
        return await session.get(Notification, notification_id, populate_existing=True)


class DatabaseDown:
    """A session factory that refuses every session while the database is "down" (from a moment a
    test chooses, for a while): as the worker sees a database that crashed and is restarting."""

    def __init__(self, real):
        self.real = real
        self.down_until = 0.0
        self.refused = 0

    def go_down_for(self, seconds: float) -> None:
        self.down_until = time.monotonic() + seconds

    def _check(self) -> None:
        if time.monotonic() < self.down_until:
            self.refused += 1
            raise OperationalError("connect", None, ConnectionRefusedError("the database is restarting"))

    def __call__(self, *args, **kwargs):
        self._check()
        return self.real(*args, **kwargs)

    def begin(self, *args, **kwargs):
        self._check()
        return self.real.begin(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.real, name)


def down_when_accepted(smtp, database: DatabaseDown, seconds: float) -> None:
    """The database goes down the moment the SMTP server accepts the first message."""
    real = smtp.handle_DATA

    async def handle_DATA(server, session, envelope):
        answer = await real(server, session, envelope)
        if len(smtp.messages) == 1:
            database.go_down_for(seconds)
        return answer

    smtp.handle_DATA = handle_DATA


# ---------------------------------------------------------------- (a) rendered once


async def test_a_retry_sends_the_stored_bytes_not_a_new_rendering(sessions):
    await _cumbria_records(sessions)
    notification_id = await _notify(sessions, "r2/c1/reminder", "reminder", REMINDER)
    with _capture() as (port, smtp):
        mailer = mailer_for(port)
        activities = delivery(sessions, mailer)
        assert await activities.deliver_notification(notification_id) == "sent"
        first = await row(sessions, notification_id)
        assert first.rendered is not None and first.message_id in first.rendered.decode()
        # The records change, and time passes, before the retry of the one unavoidable window
        # (accepted, then the worker died before marking it sent): the retry must not re-render.
        async with sessions.begin() as session:
            await session.execute(text("UPDATE inspections SET title = 'A different title' WHERE id = 'CUM-2017-01-26'"))
            await session.execute(text("UPDATE notifications SET status = 'pending' WHERE id = :id"), {"id": notification_id})
        await asyncio.sleep(1.1)  # a new rendering would carry a new Date
        assert await activities.deliver_notification(notification_id) == "sent"
        await mailer.close()
    one, two = smtp.messages
    assert one.data == two.data  # byte for byte
    assert one.message["Message-ID"] == two.message["Message-ID"] == first.message_id
    assert b"A different title" not in two.data
    assert one.data.rstrip(b"\r\n") == first.rendered.rstrip(b"\r\n")  # the stored bytes are the bytes sent


# ---------------------------------------------------------------- (b) one deliverer at a time


async def test_two_deliverers_of_one_row_send_it_once(sessions):
    """The workflow's delivery and the reconciler's (two workers, two SMTP connections) at once."""
    await _cumbria_records(sessions)
    notification_id = await _notify(sessions, "r2/c1/reminder", "reminder", REMINDER)
    with _capture() as (port, smtp):
        a, b = mailer_for(port), mailer_for(port)
        outcomes = await asyncio.gather(delivery(sessions, a).deliver_notification(notification_id),
                                        delivery(sessions, b).deliver_notification(notification_id), return_exceptions=True)
        assert len(smtp.messages) == 1, outcomes
        assert "sent" in outcomes
        other = next(o for o in outcomes if o != "sent") if outcomes.count("sent") == 1 else "sent"
        assert other == "sent" or (isinstance(other, ApplicationError) and other.type == HELD), outcomes
        # The held one's retry finds it sent and sends nothing.
        assert await delivery(sessions, b).deliver_notification(notification_id) == "sent"
        await a.close()
        await b.close()
    assert len(smtp.messages) == 1
    assert (await row(sessions, notification_id)).status == "sent"


# ---------------------------------------------------------------- (b) accepted, then the database fails


async def test_accepted_then_marking_sent_fails_once_one_message_and_the_row_ends_sent(dev_server_env, sessions):
    await _cumbria_records(sessions)
    notification_id = await _notify(sessions, "r2/c1/reminder", "reminder", REMINDER)
    with _capture() as (port, smtp):
        mailer = mailer_for(port)
        activities = delivery(sessions, mailer)
        database = DatabaseDown(activities.sessions)
        activities.sessions = database
        activities.mark_sessions = DatabaseDown(activities.mark_sessions)
        database_for_marks = activities.mark_sessions
        real_handle = smtp.handle_DATA

        async def accept_then_fail_the_next_transaction(server, session, envelope):
            answer = await real_handle(server, session, envelope)
            database.go_down_for(0.3)  # the very next transaction fails, as a crash would
            database_for_marks.go_down_for(0.3)
            return answer

        smtp.handle_DATA = accept_then_fail_the_next_transaction
        async with delivery_worker(dev_server_env, activities) as queue:
            assert await deliver_via_temporal(dev_server_env, queue, notification_id) == "sent"
        await mailer.close()
    assert database.refused + database_for_marks.refused >= 1  # it did fail
    assert len(smtp.messages) == 1
    done = await row(sessions, notification_id)
    assert (done.status, done.message_id) == ("sent", smtp.messages[0].message["Message-ID"])


async def test_database_away_longer_than_the_attempt_the_retry_records_it_from_the_heartbeat(dev_server_env, sessions):
    """The attempt gives up recording it (the database is away past its patience) and fails; Temporal
    retries it; the retry finds "accepted" in the heartbeat details and records it, sending nothing."""
    await _cumbria_records(sessions)
    notification_id = await _notify(sessions, "r2/c1/reminder", "reminder", REMINDER)
    with _capture() as (port, smtp):
        mailer = mailer_for(port)
        activities = delivery(sessions, mailer, mark_sent_patience=0.5)
        activities.sessions = database = DatabaseDown(activities.sessions)
        activities.mark_sessions = marks = DatabaseDown(activities.mark_sessions)

        real_handle = smtp.handle_DATA

        async def accept_then_the_database_goes(server, session, envelope):
            answer = await real_handle(server, session, envelope)
            database.go_down_for(2.0)  # past the attempt's patience, before Temporal's retry (5 s)
            marks.go_down_for(2.0)
            return answer

        smtp.handle_DATA = accept_then_the_database_goes
        async with delivery_worker(dev_server_env, activities) as queue:
            handle = await dev_server_env.client.start_workflow(
                "NotificationDelivery", notification_id, id=f"test/{uuid.uuid4()}", task_queue=queue,
                execution_timeout=timedelta(minutes=2),
            )
            assert await handle.result() == "sent"
            attempts = [e.activity_task_started_event_attributes.attempt async for e in handle.fetch_history_events()
                        if e.HasField("activity_task_started_event_attributes")]
        await mailer.close()
    assert marks.refused >= 2 and attempts == [2]  # the first attempt failed; the second recorded it
    assert len(smtp.messages) == 1
    done = await row(sessions, notification_id)
    assert done.status == "sent" and done.attempts == 1 and done.last_error is None


# ---------------------------------------------------------------- (f) the outbox's last errors, bulk resend


def _cli_env(env, url: str, queue: str, tmp_path, **extra) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("NCPI_")},
        "NCPI_TEMPORAL_ADDRESS": env.address, "NCPI_DATABASE_URL": url, "NCPI_TASK_QUEUE": queue,
        "NCPI_SETTINGS_FILE": str(tmp_path / "none.toml"), **extra,
    }


async def test_outbox_shows_last_errors_and_resend_failed_resends_in_bulk_the_same_bytes(
    dev_server_env, sessions, migrated_database_url, tmp_path
):
    await _cumbria_records(sessions)
    liaison = "liaison@cumbria.police.example"
    ids = [await _notify(sessions, f"r2/c1/reminder/{i}", "reminder", REMINDER) for i in range(2)]
    ids.append(await _notify(sessions, "r2/c1/overdue", "overdue", {**REMINDER, "rung": None}))
    with _capture() as (port, smtp):
        smtp.refuse[liaison] = "550 5.1.1 <liaison@cumbria.police.example>: mailbox unavailable"
        mailer = mailer_for(port)
        activities = delivery(sessions, mailer)
        assert [await activities.deliver_notification(i) for i in ids] == ["failed"] * 3
        rendered = {i: (await row(sessions, i)).rendered for i in ids}
        assert all(rendered.values())
        async with sessions.begin() as session:  # one failed long ago, before the bulk's --since
            await session.execute(text("UPDATE notifications SET last_attempt_at = :t WHERE id = :id"),
                                  {"t": datetime(2020, 1, 1, tzinfo=timezone.utc), "id": ids[1]})
            await session.execute(text("UPDATE recommendations SET text = 'Changed after the failure' WHERE id = :id"), {"id": R2})
        async with delivery_worker(dev_server_env, activities) as queue:
            env = _cli_env(dev_server_env, migrated_database_url, queue, tmp_path)
            listing = await asyncio.to_thread(run_ncpi, "outbox", "--status", "failed", env=env)
            assert listing.returncode == 0, listing.stderr
            all_rows = await asyncio.to_thread(run_ncpi, "outbox", env=env)
            assert listing.stdout.count("last error: liaison@cumbria.police.example: 550 5.1.1 "
                                        "<liaison@cumbria.police.example>: mailbox unavailable") == 3, all_rows.stdout
            records = json.loads((await asyncio.to_thread(run_ncpi, "outbox", "--json", env=env)).stdout)
            by_id = {r["id"]: r for r in records}
            assert "mailbox unavailable" in by_id[ids[0]]["last_error"]
            assert by_id[ids[0]]["status"] == "failed"
            alerts = [r for r in records if r["kind"] == "delivery_failed"]
            assert len(alerts) == 3 and all(r["last_error"] is None and r["status"] == "sent" for r in alerts)

            smtp.refuse.clear()  # the mailbox is fixed
            today = datetime.now(timezone.utc).date().isoformat()
            bulk = await asyncio.to_thread(run_ncpi, "outbox", "resend", "--failed", "--kind", "reminder", "--since",
                                           today, "--by", "ops.desk", env=env)
            assert bulk.returncode == 0, bulk.stderr
            assert bulk.stdout.splitlines() == [f"re-sending notification {ids[0]} to {liaison}",
                                                f"re-sending 1 failed notification of kind reminder since {today}"]
            rest = await asyncio.to_thread(run_ncpi, "outbox", "resend", "--failed", env=env)
            assert rest.returncode == 0, rest.stderr
            assert rest.stdout.splitlines()[-1] == "re-sending 2 failed notifications"
            for i in ids:
                for _ in range(200):
                    if (await row(sessions, i)).status == "sent":
                        break
                    await asyncio.sleep(0.1)
            none_left = await asyncio.to_thread(run_ncpi, "outbox", "resend", "--failed", env=env)
            assert none_left.returncode == 0 and none_left.stdout.strip() == "no failed notifications"
        await mailer.close()
    resent = {m.message["X-NCPI-Reference"]: m for m in smtp.messages if m.rcpt_tos == [liaison]}
    assert len(resent) == 3
    for i in ids:
        done = await row(sessions, i)
        assert done.status == "sent" and done.rendered == rendered[i]
        sent = resent[done.idempotency_key]
        assert sent.data.rstrip(b"\r\n") == rendered[i].rstrip(b"\r\n")  # as first rendered, before the change
        assert b"Changed after the failure" not in sent.data


def test_resend_refuses_bad_requests_in_one_line(cli_env):
    for args, expected in [
        (["99999999999999999999"], "no notification 99999999999999999999 in the outbox"),
        (["12x"], "is not a notification id"),
        ([], "give either one notification ID or --failed"),
        (["3", "--failed"], "give either one notification ID or --failed"),
        (["3", "--kind", "reminder"], "--since and --kind go with --failed"),
        (["--failed", "--since", "yesterday"], "--since: 'yesterday' is not a date"),
    ]:
        result = run_ncpi("outbox", "resend", *args, env=cli_env)
        assert result.returncode == 1, (args, result.stderr)
        assert len(result.stderr.splitlines()) == 1 and expected in result.stderr, (args, result.stderr)


# ---------------------------------------------------------------- (d) a stuck workflow is visible


BROKEN = {"R1"}


@workflow.defn(name="RecommendationFollowUp")
class FakeRecommendation:
    """Stands in for a follow-up: R1's task fails on every attempt (as a non-determinism error
    does) until BROKEN is cleared; the others wait."""

    @workflow.run
    async def run(self, *args) -> None:
        if workflow.info().workflow_id.rsplit("/", 1)[-1] in BROKEN:
            raise RuntimeError("[TMPRL1100] Nondeterminism error: No command scheduled for event TimerStarted")
        await workflow.wait_condition(lambda: False)


@workflow.defn(name="InspectionFollowUp")
class FakeInspection:
    @workflow.run
    async def run(self, *args) -> None:
        await workflow.wait_condition(lambda: False)


async def _stuck_rows(sessions):
    async with sessions() as session:
        return list((await session.scalars(select(StuckWorkflow))).all())


async def test_a_stuck_workflow_is_reported_by_the_reconciler_health_and_status(
    dev_server_env, sessions, migrated_database_url, tmp_path, caplog
):
    from ncpi_workflow.jobs import deployment_problems, reconcile, task_attempts, describe_workflow

    await _cumbria_records(sessions)
    client = dev_server_env.client
    queue = f"stuck-{os.getpid()}-{next(_queues)}"
    settings = Settings(database_url=migrated_database_url, task_queue=queue, stuck_task_attempts=2,
                        data_dir=tmp_path / "data")
    ids = ["ncpi/CUM/2017-01-26", "ncpi/CUM/2017-01-26/R1", "ncpi/CUM/2017-01-26/R2"]
    async with Worker(client, task_queue=queue, workflows=[FakeRecommendation, FakeInspection],
                      workflow_runner=UnsandboxedWorkflowRunner()):
        handles = [await client.start_workflow("InspectionFollowUp" if i == ids[0] else "RecommendationFollowUp",
                                               id=i, task_queue=queue) for i in ids]
        try:
            for _ in range(300):
                if task_attempts(await describe_workflow(client, ids[1])) >= 2:
                    break
                await asyncio.sleep(0.1)
            caplog.set_level(logging.INFO, logger="ncpi.jobs")
            assert await reconcile(sessions, client, settings) == []
            [stuck] = await _stuck_rows(sessions)
            assert stuck.workflow_id == ids[1] and stuck.workflow_type == "RecommendationFollowUp"
            assert stuck.error.startswith("WORKFLOW_WORKER_UNHANDLED_FAILURE: [TMPRL1100] Nondeterminism error")
            errors = [r for r in caplog.records if r.levelno == logging.ERROR and "is stuck" in r.getMessage()]
            assert len(errors) == 1 and ids[1] in errors[0].getMessage() and "TMPRL1100" in errors[0].getMessage()
            assert await reconcile(sessions, client, settings) == []  # a second pass: still stuck, not logged again
            assert len([r for r in caplog.records if r.levelno == logging.ERROR and "is stuck" in r.getMessage()]) == 1

            problems = await deployment_problems(sessions, client, settings)
            assert [s.workflow_id for s in problems.stuck] == [ids[1]] and problems.stuck_source == "temporal"

            env = _cli_env(dev_server_env, migrated_database_url, queue, tmp_path, NCPI_STUCK_TASK_ATTEMPTS="2")
            health = await asyncio.to_thread(run_ncpi, "health", env=env)
            assert health.returncode == 2, health.stdout + health.stderr
            lines = health.stdout.splitlines()
            assert lines[0] == "degraded: database and Temporal reachable; 1 problem"
            [line] = [l for l in lines if l.startswith("stuck: ")]
            assert line.startswith(f"stuck: {ids[1]} (RecommendationFollowUp): workflow task tried ")
            assert "last failure: WORKFLOW_WORKER_UNHANDLED_FAILURE: [TMPRL1100] Nondeterminism error" in line

            status = await asyncio.to_thread(run_ncpi, "status", env=env)
            assert status.returncode == 0, status.stderr
            [r1] = [l for l in status.stdout.splitlines() if "CUM-2017-01-26-R1" in l]
            assert r1.endswith("STUCK: WORKFLOW_WORKER_UNHANDLED_FAILURE: [TMPRL1100] Nondeterminism error: "
                               "No command scheduled for event TimerStarted")
            assert "STUCK" not in "".join(l for l in status.stdout.splitlines() if "CUM-2017-01-26-R2" in l)
            records = json.loads((await asyncio.to_thread(run_ncpi, "status", "--json", env=env)).stdout)
            assert [r["recommendation_id"] for r in records if "stuck" in r] == ["CUM-2017-01-26-R1"]
            assert not any("inspection_stuck" in r for r in records)

            # Mended (a worker with the fix): its next task attempt succeeds, and the next pass forgets it.
            BROKEN.clear()
            for _ in range(600):
                if task_attempts(await describe_workflow(client, ids[1])) == 0:
                    break
                await asyncio.sleep(0.1)
            assert await reconcile(sessions, client, settings) == []
            assert await _stuck_rows(sessions) == []
            status = await asyncio.to_thread(run_ncpi, "status", env=env)
            assert "STUCK" not in status.stdout
        finally:
            BROKEN.add("R1")
            for h in handles:
                try:
                    await h.terminate(reason="test finished")
                except Exception:
                    pass


# ---------------------------------------------------------------- the connection held until the outcome is durable


async def test_the_connection_carries_no_message_until_the_previous_one_is_marked_sent(sessions, migrated_database_url):
    """A burst over one connection, marking "sent" slow for real (a trigger, ~150 ms a commit): each
    message reaches the relay only once every message before it on the connection is marked sent,
    so a worker killed at any moment leaves at most the one in flight accepted and not recorded."""
    from tests.test_delivery_kill import _slow_marks

    await _cumbria_records(sessions)
    ids = [await _notify(sessions, f"r2/c1/reminder/held/{i}", "reminder", REMINDER) for i in range(6)]
    await _slow_marks(migrated_database_url, on=True)
    loop = asyncio.get_running_loop()
    unmarked_at_arrival: list[int] = []

    async def sent_rows() -> int:
        async with sessions() as session:
            return len([r for r in (await session.scalars(select(Notification))).all() if r.status == "sent"])

    with _capture() as (port, smtp):
        real_handle = smtp.handle_DATA

        async def check_then_accept(server, session, envelope):
            # In the capture's own thread: ask the test's loop how many rows are marked sent now.
            marked = await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(sent_rows(), loop))
            unmarked_at_arrival.append(len(smtp.messages) - marked)
            return await real_handle(server, session, envelope)

        smtp.handle_DATA = check_then_accept
        mailer = mailer_for(port)
        activities = delivery(sessions, mailer)
        assert await asyncio.gather(*(activities.deliver_notification(i) for i in ids)) == ["sent"] * 6
        await mailer.close()
    assert len(smtp.messages) == 6 and mailer.connections_opened == 1
    assert unmarked_at_arrival == [0] * 6  # none accepted before it and not yet marked sent


# ---------------------------------------------------------------- heartbeats while waiting for the connection


@workflow.defn(name="ShortHeartbeatDelivery")
class ShortHeartbeatDelivery:
    """The delivery activity under a heartbeat timeout far shorter than its wait for the connection."""

    @workflow.run
    async def run(self, notification_id: int) -> str:
        return await workflow.execute_activity(
            "deliver_notification", notification_id, start_to_close_timeout=timedelta(minutes=1),
            heartbeat_timeout=timedelta(seconds=2), retry_policy=RetryPolicy(initial_interval=timedelta(seconds=1)),
            result_type=str,
        )


async def test_a_delivery_waiting_for_a_slow_relay_heartbeats_and_is_not_timed_out(dev_server_env, sessions):
    """The relay takes 5 s over each message; two deliveries share the connection, so the second
    waits 5 s for it and then 5 s more: against a 2 s heartbeat timeout both finish in their first
    attempt (the activity heartbeats while it waits and sends), each message sent once."""
    await _cumbria_records(sessions)
    ids = [await _notify(sessions, f"r2/c1/reminder/slow/{i}", "reminder", REMINDER) for i in range(2)]
    with _capture() as (port, smtp):
        real_handle = smtp.handle_DATA

        async def slow(server, session, envelope):
            await asyncio.sleep(5.0)
            return await real_handle(server, session, envelope)

        smtp.handle_DATA = slow
        mailer = mailer_for(port)
        activities = delivery(sessions, mailer)
        queue = f"reliability-{os.getpid()}-{next(_queues)}"
        async with Worker(dev_server_env.client, task_queue=queue, workflows=[ShortHeartbeatDelivery],
                          activities=activities.all(), workflow_runner=UnsandboxedWorkflowRunner()):
            handles = [await dev_server_env.client.start_workflow(
                "ShortHeartbeatDelivery", i, id=f"test/{uuid.uuid4()}", task_queue=queue,
                execution_timeout=timedelta(minutes=2)) for i in ids]
            assert [await h.result() for h in handles] == ["sent", "sent"]
            attempts = [[e.activity_task_started_event_attributes.attempt async for e in h.fetch_history_events()
                         if e.HasField("activity_task_started_event_attributes")] for h in handles]
        await mailer.close()
    assert attempts == [[1], [1]]
    assert sorted(m.message["X-NCPI-Reference"] for m in smtp.messages) == sorted(
        [(await row(sessions, i)).idempotency_key for i in ids])


async def test_a_new_delivery_has_a_heartbeat_timeout_behind_its_patch(dev_server_env, sessions):
    """NotificationDelivery schedules the activity with DELIVERY_HEARTBEAT_TIMEOUT behind its patch."""
    from workflows.common import DELIVERY_HEARTBEAT_PATCH, DELIVERY_HEARTBEAT_TIMEOUT

    await _cumbria_records(sessions)
    notification_id = await _notify(sessions, "r2/c1/reminder/options", "reminder", REMINDER)
    with _capture() as (port, smtp):
        mailer = mailer_for(port)
        async with delivery_worker(dev_server_env, delivery(sessions, mailer)) as queue:
            handle = await dev_server_env.client.start_workflow(
                "NotificationDelivery", notification_id, id=f"test/{uuid.uuid4()}", task_queue=queue,
                execution_timeout=timedelta(minutes=2))
            assert await handle.result() == "sent"
            events = [e async for e in handle.fetch_history_events()]
        await mailer.close()
    [scheduled] = [e.activity_task_scheduled_event_attributes for e in events
                   if e.HasField("activity_task_scheduled_event_attributes")]
    assert scheduled.heartbeat_timeout.ToTimedelta() == DELIVERY_HEARTBEAT_TIMEOUT
    markers = [e.marker_recorded_event_attributes for e in events if e.HasField("marker_recorded_event_attributes")]
    assert any(DELIVERY_HEARTBEAT_PATCH in str(m) for m in markers)  # the patch's marker (old histories have none)


async def test_postgresql_restarted_between_deliveries_sends_nothing_twice(postgres_cluster, tmp_path):
    """A real crash and restart (`pg_ctl stop -m immediate`) between two deliveries of one worker:
    its pooled connections (the main pool's and the pool that marks sent) are dead. The next
    attempt is held while the pool finds out, then delivers; every message goes once."""
    from ncpi_workflow import db
    from tests.conftest import _create_pg_database
    from tests.test_jobs import _restart_postgres

    url = await _create_pg_database(postgres_cluster)
    await db.upgrade(url)
    async with db.open_database(url) as sessions:
        await _cumbria_records(sessions)
        ids = [await _notify(sessions, f"r2/c1/reminder/restart/{i}", "reminder", REMINDER) for i in range(2)]
        with _capture() as (port, smtp):
            mailer = mailer_for(port)
            activities = delivery(sessions, mailer)
            assert await activities.deliver_notification(ids[0]) == "sent"
            await asyncio.to_thread(_restart_postgres, postgres_cluster)
            outcomes = []
            for _ in range(5):  # Temporal's retries, at once
                try:
                    outcomes.append(await activities.deliver_notification(ids[1]))
                    break
                except ApplicationError as exc:
                    assert exc.type == HELD, exc
                    outcomes.append("held")
            await mailer.close()
        assert outcomes[-1] == "sent", outcomes
        assert sorted(m.message["X-NCPI-Reference"] for m in smtp.messages) == [f"r2/c1/reminder/restart/{i}" for i in range(2)]
        assert [(await row(sessions, i)).status for i in ids] == ["sent", "sent"]
