"""Delivery through a relay like a government one: aiosmtpd on loopback with STARTTLS (and with
implicit TLS), AUTH required over TLS, a certificate from a throwaway CA (trustme). On SQLite and
PostgreSQL.

- the right password delivers, over TLS, with the certificate verified against NCPI_SMTP_CA_FILE;
- a wrong password, an untrusted certificate (or one for another host) and a relay outage are
  relay-wide faults: every delivery is held (pending, the reason as its last error), nothing is
  marked failed, the worker logs it at ERROR once, `ncpi health` says what is wrong; once fixed
  (the worker restarted with the right settings, the relay back), everything is delivered.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
import uuid
from datetime import timedelta

import pytest
import trustme
from sqlalchemy import select
from temporalio.exceptions import ApplicationError

from activities.delivery import HELD
from ncpi_workflow.mailer import Mailer, SmtpConfig
from ncpi_workflow.models import Notification, RelayStatus
from ncpi_workflow.settings import Settings
from ncpi_workflow.smtp_capture import start_capture
from tests.conftest import run_ncpi
from tests.postgres import free_port
from tests.test_delivery_reliability import REMINDER, _cli_env, delivery, delivery_worker, row
from tests.test_email_delivery import _cumbria_records, _notify

USER, PASSWORD = "ncpi-relay", "correct horse battery staple"

# aiosmtpd counts only STARTTLS as TLS; on the implicit-TLS relay every byte is encrypted anyway.
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


@pytest.fixture(scope="module")
def ca_file(ca, tmp_path_factory):
    path = tmp_path_factory.mktemp("relay-ca") / "relay-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def server_context(ca, *hosts: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*(hosts or ("127.0.0.1", "localhost"))).configure_cert(context)
    return context


class Relay:
    """The relay on a fixed port, which can go down and come back."""

    def __init__(self, context: ssl.SSLContext, implicit: bool = False):
        self.context, self.implicit, self.port = context, implicit, free_port()
        self.controller = self.smtp = None
        self.logins: list[tuple[str, bool]] = []

    def start(self) -> "Relay":
        self.controller, self.smtp = start_capture(port=self.port, tls_context=self.context, implicit_tls=self.implicit,
                                                   users={USER: PASSWORD})
        self.smtp.accounts.logins = self.logins  # one list across restarts
        return self

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    def mailer(self, password: str = PASSWORD, ca_file: str | None = None, **overrides) -> Mailer:
        config = dict(starttls=not self.implicit, tls=self.implicit, ca_file=ca_file, fault_probe_seconds=0.3)
        config.update(overrides)
        return Mailer(SmtpConfig("127.0.0.1", self.port, USER, password, config["starttls"], config["tls"], 5.0, 0.0, 30.0,
                                 config["ca_file"], config["fault_probe_seconds"]))


async def _statuses(sessions) -> list[str]:
    async with sessions() as session:
        return list((await session.scalars(select(Notification.status).order_by(Notification.id))).all())


async def _relay_rows(sessions) -> list[RelayStatus]:
    async with sessions() as session:
        return list((await session.scalars(select(RelayStatus))).all())


async def _held(activities, notification_id: int) -> str:
    with pytest.raises(ApplicationError) as caught:
        await activities.deliver_notification(notification_id)
    assert caught.value.type == HELD and caught.value.non_retryable is False
    return caught.value.message


@pytest.mark.parametrize("implicit", [False, True], ids=["starttls", "implicit-tls"])
async def test_the_right_password_delivers_over_verified_tls(sessions, ca, ca_file, implicit):
    await _cumbria_records(sessions)
    notification_id = await _notify(sessions, "r2/c1/reminder", "reminder", REMINDER)
    relay = Relay(server_context(ca), implicit=implicit).start()
    try:
        mailer = relay.mailer(ca_file=ca_file)
        assert await delivery(sessions, mailer).deliver_notification(notification_id) == "sent"
        await mailer.close()
    finally:
        relay.stop()
    [message] = relay.smtp.messages
    assert message.tls and message.login == USER
    assert relay.logins == [(USER, True)]
    [state] = await _relay_rows(sessions)
    assert (state.state, state.relay, state.reason) == ("ok", f"127.0.0.1:{relay.port}", None)


async def test_a_certificate_for_another_host_is_not_trusted_even_from_the_right_ca(sessions, ca, ca_file):
    await _cumbria_records(sessions)
    notification_id = await _notify(sessions, "r2/c1/reminder", "reminder", REMINDER)
    relay = Relay(server_context(ca, "relay.other.example")).start()
    try:
        mailer = relay.mailer(ca_file=ca_file)
        reason = await _held(delivery(sessions, mailer), notification_id)
        await mailer.close()
    finally:
        relay.stop()
    assert reason.startswith(f"held: the TLS certificate of relay 127.0.0.1:{relay.port} is not trusted: ")
    assert "mismatch" in reason.lower() and relay.smtp.messages == [] and relay.logins == []


@pytest.mark.parametrize("implicit", [False, True], ids=["starttls", "implicit-tls"])
async def test_an_untrusted_certificate_holds_delivery_says_why_in_one_line_and_the_ca_file_fixes_it(
    sessions, ca, ca_file, implicit, caplog
):
    await _cumbria_records(sessions)
    ids = [await _notify(sessions, f"r2/c1/reminder/{i}", "reminder", REMINDER) for i in range(3)]
    relay = Relay(server_context(ca), implicit=implicit).start()
    caplog.set_level(logging.INFO)
    try:
        untrusting = relay.mailer()  # the system's trust store: the throwaway CA is not in it
        activities = delivery(sessions, untrusting)
        reasons = [await _held(activities, i) for i in ids]
        assert await _statuses(sessions) == ["pending"] * 3
        expected = (f"held: the TLS certificate of relay 127.0.0.1:{relay.port} is not trusted: unable to get local "
                    "issuer certificate; if it is signed by a private CA, name that CA in NCPI_SMTP_CA_FILE")
        assert reasons == [expected] * 3
        assert [(await row(sessions, i)).last_error for i in ids] == [expected] * 3
        [state] = await _relay_rows(sessions)
        assert (state.state, state.category, "held: " + state.reason) == ("failing", "tls", expected)
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith("ncpi")]
        assert len(errors) == 1 and "not trusted" in errors[0].getMessage() and errors[0].exc_info is None
        await untrusting.close()

        trusting = relay.mailer(ca_file=ca_file)  # the worker restarted with NCPI_SMTP_CA_FILE
        assert [await delivery(sessions, trusting).deliver_notification(i) for i in ids] == ["sent"] * 3
        await trusting.close()
    finally:
        relay.stop()
    assert len(relay.smtp.messages) == 3 and all(m.tls for m in relay.smtp.messages)
    assert [r.state for r in await _relay_rows(sessions)] == ["ok"]


async def test_an_unreadable_ca_file_is_a_held_relay_fault(sessions, ca, tmp_path):
    await _cumbria_records(sessions)
    notification_id = await _notify(sessions, "r2/c1/reminder", "reminder", REMINDER)
    relay = Relay(server_context(ca)).start()
    try:
        mailer = relay.mailer(ca_file=str(tmp_path / "missing.pem"))
        reason = await _held(delivery(sessions, mailer), notification_id)
    finally:
        relay.stop()
    assert reason.startswith(f"held: cannot load NCPI_SMTP_CA_FILE {tmp_path / 'missing.pem'}: ")
    assert await _statuses(sessions) == ["pending"]


async def test_a_relay_outage_holds_delivery_and_then_everything_goes(sessions, ca, ca_file):
    await _cumbria_records(sessions)
    ids = [await _notify(sessions, f"r2/c1/reminder/{i}", "reminder", REMINDER) for i in range(3)]
    relay = Relay(server_context(ca))  # down
    mailer = relay.mailer(ca_file=ca_file)
    activities = delivery(sessions, mailer)
    reasons = [await _held(activities, i) for i in ids]
    assert all(r.startswith(f"held: cannot reach relay 127.0.0.1:{relay.port}: ") for r in reasons), reasons
    assert await _statuses(sessions) == ["pending"] * 3
    [state] = await _relay_rows(sessions)
    assert (state.state, state.category) == ("failing", "connection")
    relay.start()
    try:
        await asyncio.sleep(0.4)  # the next probe of the relay is due
        assert [await activities.deliver_notification(i) for i in ids] == ["sent"] * 3
        await mailer.close()
    finally:
        relay.stop()
    assert len(relay.smtp.messages) == 3
    assert [(await row(sessions, i)).last_error for i in ids] == [None] * 3
    assert [r.state for r in await _relay_rows(sessions)] == ["ok"]


async def _until(check, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        assert time.monotonic() < deadline, f"not within {timeout} s"
        await asyncio.sleep(0.2)


async def test_a_wrong_password_holds_every_delivery_is_reported_once_and_the_fix_delivers_everything(
    dev_server_env, sessions, migrated_database_url, ca, ca_file, tmp_path, caplog
):
    """Through Temporal, as the worker runs it: the inspectors' alert path is the same relay, so
    nothing may be marked failed (that would only queue alerts that cannot go either)."""
    await _cumbria_records(sessions)
    ids = [await _notify(sessions, f"r2/c1/reminder/{i}", "reminder", REMINDER) for i in range(4)]
    relay = Relay(server_context(ca)).start()
    caplog.set_level(logging.DEBUG, logger="temporalio")
    caplog.set_level(logging.INFO, logger="ncpi")
    client = dev_server_env.client
    try:
        wrong = relay.mailer(password="Tr0ub4dor&3", ca_file=ca_file, fault_probe_seconds=30.0)
        activities = delivery(sessions, wrong, relay_retry_seconds=1.0)
        async with delivery_worker(dev_server_env, activities) as queue:
            handles = [await client.start_workflow("NotificationDelivery", i, id=f"test/{uuid.uuid4()}", task_queue=queue,
                                                   execution_timeout=timedelta(minutes=10)) for i in ids]

            async def all_held():
                rows = [await row(sessions, i) for i in ids]
                return rows if all(r.attempts >= 2 and (r.last_error or "").startswith("held: ") for r in rows) else None

            held = await _until(all_held)
            env = _cli_env(dev_server_env, migrated_database_url, queue, tmp_path, NCPI_OUTBOX_PENDING_MINUTES="0.001")
            health = await asyncio.to_thread(run_ncpi, "health", env=env)
        await wrong.close()
        reason = (f"relay 127.0.0.1:{relay.port} refused the login as '{USER}': 535 5.7.8 Authentication credentials "
                  "invalid (check NCPI_SMTP_USERNAME and NCPI_SMTP_PASSWORD)")
        assert {r.last_error for r in held} == {f"held: {reason}"}
        assert await _statuses(sessions) == ["pending"] * 4  # nothing failed, no alert queued
        # One login attempt (two mechanisms) per probe interval, not one per message per retry.
        assert 1 <= len(relay.logins) <= 4 and not any(ok for _, ok in relay.logins)
        assert health.returncode == 2, health.stdout + health.stderr
        lines = health.stdout.splitlines()
        assert lines[0] == "degraded: database and Temporal reachable; 2 problems"
        [relay_line] = [l for l in lines if l.startswith("relay: ")]
        assert relay_line.startswith("relay: FAILING (authentication) since ") and reason in relay_line
        assert "none is marked failed" in relay_line
        [outbox_line] = [l for l in lines if l.startswith("outbox: ")]
        assert outbox_line.startswith("outbox: 4 notifications pending for more than 0.001 min") and "4 held by a relay fault" in outbox_line
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith("ncpi")]
        assert len(errors) == 1 and errors[0].name == "ncpi.mailer" and reason in errors[0].getMessage()
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("temporalio")]

        # The operator fixes NCPI_SMTP_PASSWORD and restarts the worker: everything goes, once each.
        right = relay.mailer(ca_file=ca_file, fault_probe_seconds=30.0)
        async with delivery_worker(dev_server_env, delivery(sessions, right, relay_retry_seconds=1.0), queue=queue):
            assert [await h.result() for h in handles] == ["sent"] * 4
            healthy = await asyncio.to_thread(run_ncpi, "health", env={**env, "NCPI_OUTBOX_PENDING_MINUTES": "15"})
        await right.close()
    finally:
        relay.stop()
    assert sorted(m.message["X-NCPI-Reference"] for m in relay.smtp.messages) == sorted(f"r2/c1/reminder/{i}" for i in range(4))
    assert all(m.login == USER and m.tls for m in relay.smtp.messages)
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    first, second = healthy.stdout.splitlines()[:2]
    assert first == "ok: database and Temporal reachable"
    assert second.startswith(f"relay: ok (127.0.0.1:{relay.port}, last confirmed ")
    assert [r.state for r in await _relay_rows(sessions)] == ["ok"]


def test_the_ca_file_setting_reaches_the_mailer(monkeypatch, tmp_path, ca_file):
    settings = Settings(smtp_ca_file=ca_file, smtp_tls=True, smtp_port=465, data_dir=tmp_path)
    config = SmtpConfig.from_settings(settings)
    assert (config.ca_file, config.tls) == (ca_file, True)
    assert Mailer(config).tls_context().verify_mode == ssl.CERT_REQUIRED
    assert Settings(smtp_ca_file="", data_dir=tmp_path).smtp_ca_file is None  # compose passes unset as ""
