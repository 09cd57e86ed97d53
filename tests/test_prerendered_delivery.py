"""A notification rendered when its event is recorded (activities/rendering.py), delivered by the hot
path only (lease, send, mark sent): byte-identical to the delivery's own rendering, left for the
delivery to render when the event changed what it shows or it cannot be rendered, on SQLite and
PostgreSQL, against a real aiosmtpd server on loopback."""

from __future__ import annotations

import asyncio
import re
from contextlib import contextmanager
from datetime import datetime, timezone

import pytest
from sqlalchemy import delete, event, select, update

from activities.delivery import DeliveryActivities, DeliverySettings
from activities.records import InspectorateAddresses, RecordActivities
from activities.rendering import OutboxRenderer
from ncpi_workflow.access_links import LinkSettings, fill_link_tokens
from ncpi_workflow.lifecycle import NotificationRequest
from ncpi_workflow.mailer import Mailer, SmtpConfig, message_id_for, message_recipients
from ncpi_workflow.models import AccessLink, Contact, Notification, Recommendation
from ncpi_workflow.smtp_capture import start_capture
from ncpi_workflow.store import insert_if_absent
from tests.postgres import free_port
from tests.test_email_delivery import AT_A, AT_B, INSPECTOR_A, INSPECTOR_B, RATIONALE_A, _cumbria_records, _facts

MAIL_FROM = "ncpi-followup@inspectorate.example"
REPLY_TO = "ncpi-replies@inspectorate.example"
INSPECTORATE = InspectorateAddresses("ncpi-inspectors@inspectorate.example", "lead-hmi@inspectorate.example")
LINKS = LinkSettings(key=b"test-prerendered-link-key-32-bytes-long!", web_url="http://127.0.0.1:8000", reply_to=REPLY_TO)
SETTINGS = DeliverySettings(MAIL_FROM, REPLY_TO, INSPECTORATE.inspectors, None, links=LINKS)
INSPECTION, R2 = "CUM-2017-01-26", "CUM-2017-01-26-R2"
WHEN = datetime(2018, 3, 1, 9, 0, tzinfo=timezone.utc)

_DATE = re.compile(rb"^Date: [^\r\n]*\r\n", re.MULTILINE)
_PLACEHOLDER = re.compile(rb"ncpiLink\d{13}[A-Za-z0-9_-]{22}")
_BOUNDARY = re.compile(rb"={15}\d+==")


def _comparable(data: bytes) -> bytes:
    """The bytes less what differs between any two renderings of one notification: the Date header (the
    moment it was rendered), the MIME boundary (random) and the links' placeholders (their row ids and
    random salts)."""
    data = _DATE.sub(b"Date: -\r\n", data, count=1)
    data = _BOUNDARY.sub(b"=" * 15 + b"0==", data)
    data = data.replace(b"=\r\n", b"")  # quoted-printable soft line breaks, which may split a placeholder
    return _PLACEHOLDER.sub(b"ncpiLink" + b"0" * 13 + b"-" * 22, data)


def _request(key: str, kind: str, context: dict, roles=("liaison_officer",), recommendation_id: str | None = R2,
             subject: str | None = None) -> NotificationRequest:
    return NotificationRequest(idempotency_key=key, kind=kind, inspection_id=INSPECTION, recommendation_id=recommendation_id,
                               recipients=tuple(roles), subject=subject or f"{kind} on recommendation R2",
                               scheduled_for=WHEN, context=context)


REQUESTS = [
    _request("pre/r2/reminder", "reminder", {"deadline": "recommendation", "due": "2017-04-26", "working_days": 3, "cycle": 1}),
    _request("pre/r2/escalation", "escalation",
             {"deadline": "recommendation", "due": "2017-04-26", "working_days": -5, "rung": "chief_officer", "cycle": 1},
             roles=("liaison_officer", "chief_officer")),
    _request("pre/published", "published", {}, roles=("liaison_officer", "chief_officer", "pcc"), recommendation_id=None,
             subject="Cumbria Constabulary: inspection published"),
    _request("pre/r2/decision", "decision", _facts("partially_achieved", RATIONALE_A, INSPECTOR_A, AT_A, 1)),
    _request("pre/r2/reopened", "reopened", {"reason": "Complaint received", "by": INSPECTOR_B, "at": AT_B.isoformat(),
                                              "due": "2018-05-01", "cycle": 2, "previous_outcome": "achieved"}),
    _request("pre/r2/inspectors", "decision", _facts("achieved", RATIONALE_A, INSPECTOR_A, AT_A, 1), roles=("inspectors",)),
]


@contextmanager
def _capture():
    port = free_port()
    controller, smtp = start_capture(port=port)
    try:
        yield port, smtp
    finally:
        controller.stop()


def _mailer(port: int) -> Mailer:
    return Mailer(SmtpConfig("127.0.0.1", port, None, None, False, False, 10.0, 0.0, 30.0))


def _records(sessions, settings: DeliverySettings = SETTINGS) -> tuple[RecordActivities, OutboxRenderer]:
    renderer = OutboxRenderer(sessions, settings, INSPECTORATE.by_role)
    return RecordActivities(sessions, INSPECTORATE, renderer=renderer), renderer


async def _row(sessions, notification_id: int) -> Notification:
    async with sessions() as session:
        return await session.get(Notification, notification_id)


@contextmanager
def _statements(*factories):
    """Every SQL statement run on these session factories' engines meanwhile (a real engine event, no
    stand-in; the delivery marks sent through an engine of its own on PostgreSQL)."""
    seen: list[str] = []
    engines = list({id(f.kw["bind"]): f.kw["bind"].sync_engine for f in factories}.values())

    def note(conn, cursor, statement, parameters, context, executemany):
        statement = " ".join(statement.split())
        if statement.split(" ", 1)[0].upper() in ("SELECT", "INSERT", "UPDATE", "DELETE", "WITH"):
            seen.append(statement)  # data statements (not a BEGIN a connection may issue)

    for engine in engines:
        event.listen(engine, "before_cursor_execute", note)
    try:
        yield seen
    finally:
        for engine in engines:
            event.remove(engine, "before_cursor_execute", note)


async def _warm_delivery(sessions, port: int):
    """A mailer with its SMTP connection open and the relay's state recorded (once, not per message),
    and the delivery activities using it: what a worker has after its first message."""
    mailer = _mailer(port)
    delivery = DeliveryActivities(sessions, mailer, SETTINGS)
    await mailer.send_bytes(b"Subject: warm\r\n\r\nx\r\n", MAIL_FROM, ["warm@example.org"])
    delivery.mailer.recorded(mailer.relay_report())
    return mailer, delivery


async def test_rendered_at_record_time_is_byte_identical_to_the_deliverys_own_rendering(sessions):
    await _cumbria_records(sessions)
    records, renderer = _records(sessions)
    ids = [await records.record_notification(r) for r in REQUESTS]
    assert renderer.kept == len(REQUESTS) and renderer.left_unrendered == 0
    at_record = {}
    for request, notification_id in zip(REQUESTS, ids):
        row = await _row(sessions, notification_id)
        assert row.rendered is not None and row.message_id == message_id_for(request.idempotency_key, MAIL_FROM)
        at_record[notification_id] = row.rendered
    async with sessions() as session:
        links = list(await session.scalars(select(AccessLink).order_by(AccessLink.id)))
    # Force-facing emails carry a portal and a reply link, issued with the rendering; the inspectors' one none.
    assert sorted({link.notification_id for link in links}) == sorted(ids[:-1])
    assert all(len([link for link in links if link.notification_id == i]) == 2 for i in ids[:-1])

    # The same rows, unrendered, rendered by the delivery at its first attempt as before.
    async with sessions.begin() as session:
        await session.execute(delete(AccessLink))
        await session.execute(update(Notification).values(rendered=None, message_id=None))
    with _capture() as (port, smtp):
        mailer = _mailer(port)
        delivery = DeliveryActivities(sessions, mailer, SETTINGS)
        assert [await delivery.deliver_notification(i) for i in ids] == ["sent"] * len(ids)
        await mailer.close()
    for notification_id in ids:
        by_delivery = (await _row(sessions, notification_id)).rendered
        assert by_delivery is not None and by_delivery != at_record[notification_id]  # rendered again: new Date, new salts
        assert _comparable(by_delivery) == _comparable(at_record[notification_id]), notification_id
    assert len(smtp.messages) == len(ids)


async def test_the_hot_path_reads_no_context_renders_nothing_and_sends_the_stored_bytes(sessions):
    await _cumbria_records(sessions)
    records, _ = _records(sessions)
    ids = [await records.record_notification(r) for r in REQUESTS[:3]]
    stored = {i: (await _row(sessions, i)).rendered for i in ids}
    with _capture() as (port, smtp):
        mailer, delivery = await _warm_delivery(sessions, port)
        with _statements(sessions, delivery.mark_sessions) as seen:
            assert [await delivery.deliver_notification(i) for i in ids] == ["sent"] * len(ids)
        await mailer.close()
    # Per message: the lease that reads the bytes, and the mark sent. No SELECT of the records, no links issued.
    assert len(seen) == 2 * len(ids), seen
    assert all(s.startswith("UPDATE notifications SET") for s in seen), seen
    assert sum("RETURNING" in s for s in seen) == len(ids)
    sent = {m.message["X-NCPI-Reference"]: m for m in smtp.messages if m.message["X-NCPI-Reference"]}
    for request, notification_id in zip(REQUESTS, ids):
        row = await _row(sessions, notification_id)
        assert row.status == "sent" and row.attempts == 1 and row.rendered == stored[notification_id]
        message = sent[request.idempotency_key]
        sent_bytes = fill_link_tokens(stored[notification_id], LINKS.key)
        assert message.data.replace(b"\r\n", b"\n").rstrip() == sent_bytes.replace(b"\r\n", b"\n").rstrip()
        assert message.message["Message-ID"] == row.message_id


async def test_a_resend_to_corrected_addresses_changes_only_the_to_header(sessions):
    await _cumbria_records(sessions)
    records, _ = _records(sessions)
    notification_id = await records.record_notification(REQUESTS[0])
    before = (await _row(sessions, notification_id)).rendered
    async with sessions.begin() as session:
        await session.execute(update(Notification).where(Notification.id == notification_id).values(
            recipients={"to": ["new.liaison@cumbria.police.example"], "roles": ["liaison_officer"]}))
    with _capture() as (port, smtp):
        mailer = _mailer(port)
        assert await DeliveryActivities(sessions, mailer, SETTINGS).deliver_notification(notification_id) == "sent"
        await mailer.close()
    row = await _row(sessions, notification_id)
    assert message_recipients(row.rendered) == ["new.liaison@cumbria.police.example"]
    assert [m.rcpt_tos for m in smtp.messages] == [["new.liaison@cumbria.police.example"]]
    assert row.rendered.replace(b"new.liaison@", b"liaison@", 1) == before
    assert row.message_id == message_id_for(REQUESTS[0].idempotency_key, MAIL_FROM)


async def test_an_event_that_changes_what_the_email_shows_leaves_it_for_the_delivery(sessions):
    """Prepared before the transaction; the transaction then changes the recommendation (as the event's
    projection does) before the row is stored: the stale rendering is not kept, the delivery renders
    the committed state."""
    await _cumbria_records(sessions)
    _, renderer = _records(sessions)
    request = _request("pre/r2/decision-changed", "decision", _facts("achieved", RATIONALE_A, INSPECTOR_A, AT_A, 1))
    [prepared] = await renderer.prepare([request])
    assert prepared is not None
    async with sessions.begin() as session:
        await session.execute(update(Recommendation).where(Recommendation.id == R2).values(outcome="achieved", phase="closed"))
        notification_id = await _insert(session, request, prepared.recipients)
        assert await renderer.store(session, notification_id, prepared) is False
    row = await _row(sessions, notification_id)
    assert row.rendered is None and row.message_id is None
    async with sessions() as session:
        assert list(await session.scalars(select(AccessLink))) == []  # no links for a rendering not kept

    # Contacts changed between prepare and the transaction: not kept either.
    request = _request("pre/r2/contact-changed", "reminder", REQUESTS[0].context)
    [prepared] = await renderer.prepare([request])
    async with sessions.begin() as session:
        await session.execute(update(Contact).where(Contact.force_code == "CUM", Contact.role == "liaison_officer")
                              .values(email="moved.liaison@cumbria.police.example"))
        recipients = {"to": ["moved.liaison@cumbria.police.example"], "roles": ["liaison_officer"]}
        other_id = await _insert(session, request, recipients)
        assert await renderer.store(session, other_id, prepared) is False
    with _capture() as (port, smtp):
        mailer = _mailer(port)
        delivery = DeliveryActivities(sessions, mailer, SETTINGS)
        assert [await delivery.deliver_notification(i) for i in (notification_id, other_id)] == ["sent", "sent"]
        await mailer.close()
    assert (await _row(sessions, notification_id)).rendered is not None
    assert [m.rcpt_tos for m in smtp.messages][1] == ["moved.liaison@cumbria.police.example"]
    assert renderer.kept == 0 and renderer.left_unrendered == 2


async def _insert(session, request: NotificationRequest, recipients: dict) -> int:
    await insert_if_absent(
        session, Notification, ["idempotency_key"], idempotency_key=request.idempotency_key, kind=request.kind,
        inspection_id=request.inspection_id, recommendation_id=request.recommendation_id, recipients=recipients,
        subject=request.subject, context=request.context, status="pending", attempts=0, scheduled_for=request.scheduled_for,
    )
    return await session.scalar(select(Notification.id).where(Notification.idempotency_key == request.idempotency_key))


async def test_a_template_error_at_record_time_becomes_the_deliverys_permanent_failure_as_before(sessions, tmp_path):
    await _cumbria_records(sessions)
    broken = tmp_path / "templates"
    broken.mkdir()
    (broken / "reminder.txt.j2").write_text("{{ no_such_value.at_all }}\n")
    settings = DeliverySettings(MAIL_FROM, REPLY_TO, INSPECTORATE.inspectors, broken, links=LINKS)
    records, renderer = _records(sessions, settings)
    notification_id = await records.record_notification(REQUESTS[0])
    assert renderer.left_unrendered == 1 and (await _row(sessions, notification_id)).rendered is None
    with _capture() as (port, smtp):
        mailer = _mailer(port)
        assert await DeliveryActivities(sessions, mailer, settings).deliver_notification(notification_id) == "failed"
        await mailer.close()
    row = await _row(sessions, notification_id)
    assert row.status == "failed" and row.last_error.startswith("template error: email template reminder.txt.j2")
    # The inspectors are told, as for any permanent failure (their alert renders with the packaged templates).
    assert [m.rcpt_tos for m in smtp.messages] == [[INSPECTORATE.inspectors]]


async def test_a_role_nobody_holds_still_fails_the_recording_not_the_rendering(sessions):
    await _cumbria_records(sessions)
    records, renderer = _records(sessions)
    from temporalio.exceptions import ApplicationError

    with pytest.raises(ApplicationError, match="no pcc_deputy address for force CUM"):
        await records.record_notification(_request("pre/r2/nobody", "reminder", REQUESTS[0].context, roles=("pcc_deputy",)))
    async with sessions() as session:
        assert list(await session.scalars(select(Notification))) == []


@pytest.mark.parametrize("to", [
    ["liaison@cumbria.police.example"],
    ["liaison@cumbria.police.example", "chief.officer@cumbria.police.example", "pcc@cumbria.pcc.example"],
    [f"a.rather.long.address.number.{i}@some.long.police.domain.example" for i in range(8)],  # folded over lines
])
def test_the_to_header_read_from_the_header_block_is_what_the_full_parser_reads(to):
    from activities.delivery import _to_header
    from ncpi_workflow.mailer import build_message, flatten, with_recipients

    data = flatten(build_message(
        mail_from=MAIL_FROM, reply_to=REPLY_TO, to=to, subject="To: not.this@example.org " * 8,
        text="To: nor.this@example.org\n" * 50, html="<p>To: nor.this@example.org</p>", message_id="<1@x>", reference="r",
    ))
    assert _to_header(data) == message_recipients(data) == to
    moved = with_recipients(data, ["moved@cumbria.police.example", *to])
    assert _to_header(moved) == message_recipients(moved) == ["moved@cumbria.police.example", *to]
    encoded = data.replace(b"\r\nTo: ", b"\r\nTo: =?utf-8?q?Liaison?= <x@example.org>,\r\n ", 1)
    assert _to_header(encoded) == message_recipients(encoded)  # an encoded word: the full parser's answer


@pytest.mark.parametrize("value, rendered", [("true", True), ("false", False)])
def test_ncpi_render_at_record_chooses_whether_the_worker_renders_at_record_time(monkeypatch, value, rendered):
    from ncpi_workflow.service.worker import record_activities
    from ncpi_workflow.settings import Settings

    monkeypatch.setenv("NCPI_RENDER_AT_RECORD", value)
    activities = record_activities(None, Settings())
    assert isinstance(activities.renderer, OutboxRenderer) is rendered
    assert (activities.renderer is None) is not rendered


# ---------------------------------------------------------------- a burst's statements (issue 15)


async def _burst(sessions, count: int) -> list[int]:
    await _cumbria_records(sessions)
    records, _ = _records(sessions)
    return [await records.record_notification(_request(f"pre/burst/{i}", "reminder", REQUESTS[0].context,
                                                       subject=f"Reminder {i} on recommendation R2"))
            for i in range(count)]


async def test_a_burst_is_leased_in_one_statement_and_each_message_marked_sent_in_one(sessions):
    """Deliveries that start together (a morning's burst in one worker) lease their rows together: one
    `UPDATE ... RETURNING` for the burst (it was one per message, in a transaction of its own), then
    one autocommit UPDATE per message to mark it sent, on the connections held for the burst. So 21
    data statements for 20 messages (40 before), and never a SELECT."""
    ids = await _burst(sessions, 20)
    with _capture() as (port, smtp):
        mailer, delivery = await _warm_delivery(sessions, port)
        with _statements(sessions, delivery.mark_sessions) as seen:
            assert await asyncio.gather(*(delivery.deliver_notification(i) for i in ids)) == ["sent"] * len(ids)
        await mailer.close()
    leases = [s for s in seen if "RETURNING" in s]
    marks = [s for s in seen if "RETURNING" not in s]
    assert len(leases) == 1 and len(marks) == len(ids), seen
    assert all(s.startswith("UPDATE notifications SET") for s in seen), seen
    assert len(seen) == len(ids) + 1
    assert len(smtp.messages) == len(ids) + 1  # and the warm-up
    for notification_id in ids:
        row = await _row(sessions, notification_id)
        assert (row.status, row.attempts, row.lease_owner, row.lease_until) == ("sent", 1, None, None)
        assert row.message_id is not None and row.sent_at is not None
    # The burst over, its connections are back in the pool: the next delivery holds them anew.
    assert delivery._lease_connection._connection is None and delivery._mark_connection._connection is None


async def test_a_batched_lease_takes_each_row_for_its_own_deliverer_only_when_free(sessions):
    from activities.delivery import _LeaseBatcher

    ids = await _burst(sessions, 4)
    free, held_by_other, held_by_me, sent = ids
    later = datetime(2999, 1, 1, tzinfo=timezone.utc)
    async with sessions.begin() as session:
        await session.execute(update(Notification).where(Notification.id == held_by_other)
                              .values(lease_owner="other/attempt", lease_until=later))
        await session.execute(update(Notification).where(Notification.id == held_by_me)
                              .values(lease_owner="me/retry", lease_until=later))
        await session.execute(update(Notification).where(Notification.id == sent).values(status="sent"))
    delivery = DeliveryActivities(sessions, _mailer(free_port()), SETTINGS)
    batcher: _LeaseBatcher = delivery._leases
    got = await asyncio.gather(batcher.lease(free, "a/1"), batcher.lease(held_by_other, "b/1"),
                               batcher.lease(held_by_me, "me/retry"), batcher.lease(sent, "c/1"),
                               batcher.lease(free, "d/1"))  # the same row twice: the second in the next statement
    assert batcher.statements == 2
    assert got[0] is not None and got[2] is not None  # free, and the retry of the lease's own holder
    assert got[1] is None and got[3] is None and got[4] is None  # another's lease, sent, and leased just now
    assert got[0][0] == (await _row(sessions, free)).rendered
    rows = {i: await _row(sessions, i) for i in ids}
    assert (rows[free].lease_owner, rows[free].attempts) == ("a/1", 1)
    assert (rows[held_by_other].lease_owner, rows[held_by_other].attempts) == ("other/attempt", 0)
    assert (rows[held_by_me].lease_owner, rows[held_by_me].attempts) == ("me/retry", 1)
    assert rows[held_by_me].lease_until.year < later.year and rows[sent].attempts == 0  # leased anew, for lease_seconds
    await delivery._release_held()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # a setting SQLite alone has
async def test_on_sqlite_the_lease_connection_skips_the_fsync_and_is_given_back_as_it_was(sessions):
    """The lease commits with synchronous=NORMAL (a lost lease only means a retry; see _LeaseBatcher);
    the mark sent keeps the default (it must be durable), and the pool gets its connection back with
    the setting it had."""
    bind = sessions.kw["bind"]
    delivery = DeliveryActivities(sessions, _mailer(free_port()), SETTINGS)

    async def synchronous(held) -> int:
        return (await held._connection.exec_driver_sql("PRAGMA synchronous")).scalar()

    await delivery._lease_connection.execute(select(Notification.id).limit(1), {})
    await delivery._mark_connection.execute(select(Notification.id).limit(1), {})
    raw = delivery._lease_connection._connection.sync_connection.connection.driver_connection  # aiosqlite's
    default = await synchronous(delivery._mark_connection)
    assert await synchronous(delivery._lease_connection) == 1 and default >= 2  # NORMAL; FULL (or EXTRA)
    await delivery._release_held()
    assert delivery._lease_connection._connection is None
    async with bind.connect() as connection:  # the pool's connections, the lease's among them, as they were
        for _ in range(3):
            assert (await connection.exec_driver_sql("PRAGMA synchronous")).scalar() == default
    async with raw.execute("PRAGMA synchronous") as cursor:  # that very connection, in the pool
        assert (await cursor.fetchone())[0] == default
