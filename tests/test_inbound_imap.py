"""`ncpi inbound imap` against a real IMAP server on loopback: Debian's dovecot-imapd, started here
with a throwaway configuration (implicit TLS with a private CA from trustme, one mailbox).

Without dovecot this module is skipped, except with CI=true, where that is a failure (`.ci/run`
installs dovecot-imapd when it is missing)."""

from __future__ import annotations

import imaplib
import os
import pwd
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from datetime import date
from pathlib import Path

import pytest
from sqlalchemy import func, select

from ncpi_workflow.errors import UserError
from ncpi_workflow.models import Evidence, InboundMessage, ProgressUpdate
from tests.conftest import IN_CI
from tests.lifecycle_support import harness, write_report
from tests.postgres import free_port
from tests.test_inbound import LIAISON, PDF, REPLY_TO, _published, eventually, force_email, reply_to
from tests.test_lifecycle_timeskipping import rec_view, start

USER, PASSWORD = "replies", "throwaway-imap-password"


def _dovecot() -> str | None:
    return shutil.which("dovecot") or ("/usr/sbin/dovecot" if os.path.exists("/usr/sbin/dovecot") else None)


class Dovecot:
    def __init__(self, binary: str):
        import trustme

        self.folder = Path(tempfile.mkdtemp(prefix="ncpi-dovecot-"))
        self.folder.chmod(0o755)  # the mail user must reach its folders
        self.port = free_port()
        ca = trustme.CA()
        cert = ca.issue_cert("localhost", "127.0.0.1")
        self.ca_file = self.folder / "ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_file))
        cert.private_key_and_cert_chain_pem.write_to_path(str(self.folder / "server.pem"))
        (self.folder / "server.pem").chmod(0o600)
        if os.getuid() == 0:
            account = pwd.getpwnam("nobody")
            uid, gid = account.pw_uid, account.pw_gid
        else:
            uid, gid = os.getuid(), os.getgid()
        for name in ("mail", "home", "run", "state"):
            (self.folder / name).mkdir()
        for name in ("mail", "home"):
            os.chown(self.folder / name, uid, gid)
        (self.folder / "users").write_text(f"{USER}:{{PLAIN}}{PASSWORD}::::::\n")
        me = pwd.getpwuid(os.getuid()).pw_name
        internal = "dovecot" if os.getuid() == 0 else me
        login = "dovenull" if os.getuid() == 0 else me
        d = self.folder
        (d / "dovecot.conf").write_text(f"""
protocols = imap
listen = 127.0.0.1
base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
ssl = required
ssl_cert = <{d}/server.pem
ssl_key = <{d}/server.pem
disable_plaintext_auth = no
auth_mechanisms = plain login
mail_location = maildir:{d}/mail/%u
first_valid_uid = {min(uid, 1)}
first_valid_gid = 0
default_internal_user = {internal}
default_login_user = {login}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {d}/users
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={d}/home/%u
}}
service imap-login {{
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {self.port}
    ssl = yes
  }}
}}
service stats {{
  unix_listener stats-writer {{
    mode = 0666
  }}
}}
""")
        self.process = subprocess.Popen([binary, "-F", "-c", str(d / "dovecot.conf")],
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"dovecot exited: {self.process.stdout.read().decode()} {self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"dovecot did not listen on {self.port}: {self.log()}")

    def log(self) -> str:
        path = self.folder / "dovecot.log"
        return path.read_text() if path.exists() else ""

    def imap(self) -> imaplib.IMAP4_SSL:
        connection = imaplib.IMAP4_SSL("127.0.0.1", self.port, ssl_context=ssl.create_default_context(cafile=str(self.ca_file)))
        connection.login(USER, PASSWORD)
        return connection

    def deliver(self, data: bytes, mailbox: str = "INBOX") -> None:
        """Put a message into the mailbox as the mail system would (IMAP APPEND, unseen)."""
        connection = self.imap()
        try:
            connection.create(mailbox)
            status, _ = connection.append(mailbox, None, None, data)
            assert status == "OK"
        finally:
            connection.logout()

    def count(self, mailbox: str, criterion: str = "ALL") -> int:
        connection = self.imap()
        try:
            status, _ = connection.select(mailbox)
            if status != "OK":
                return 0
            _, found = connection.search(None, criterion)
            return len(found[0].split())
        finally:
            connection.logout()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture(scope="module")
def dovecot():
    binary = _dovecot()
    if binary is None:
        if IN_CI:
            pytest.fail("dovecot not found, and CI=true: a missing dovecot-imapd is a failure here")
        pytest.skip("dovecot not found (apt-get install dovecot-imapd; CI fails instead of skipping)")
    server = Dovecot(binary)
    yield server
    server.stop()


def imap_settings(h, dovecot, **overrides):
    return h.settings.model_copy(update=dict(
        imap_host="127.0.0.1", imap_port=dovecot.port, imap_username=USER, imap_password=PASSWORD, imap_tls=True,
        imap_ca_file=dovecot.ca_file, imap_mailbox="INBOX", imap_processed_mailbox="Processed", imap_timeout=10.0,
    ) | overrides)


async def count(h, model) -> int:
    async with h.sessions() as session:
        return await session.scalar(select(func.count()).select_from(model))


async def test_replies_in_the_mailbox_are_recorded_once_and_moved(time_skipping_env, tmp_path, dovecot):
    from ncpi_workflow.inbound.imap_poller import poll_once
    from ncpi_workflow.inbound.processing import Receiver

    report = write_report(tmp_path, "CUM", date(2017, 1, 26), [("R1", "within_three_months")])
    async with harness(time_skipping_env, tmp_path, reply_to=REPLY_TO) as h:
        settings = imap_settings(h, dovecot)
        receiver = Receiver(settings, h.sessions, h.client)
        await start(h, report, date(2017, 1, 26))
        await eventually(lambda: _published(h))
        notice = force_email(h, "Inspection report published")
        # No claim on the first line and none made before: in progress.
        reply = reply_to(notice, text="The referral process is being rewritten.",
                         attachments=[("draft-process.pdf", PDF)])
        away = reply_to(notice, text="Out of the office", headers={"Auto-Submitted": "auto-replied"})
        dovecot.deliver(reply.as_bytes())
        dovecot.deliver(away.as_bytes())

        result = await poll_once(settings, receiver)
        assert (result.seen, result.processed, result.deferred) == (2, 2, 0)
        view = await rec_view(h, "CUM-2017-01-26-R1")
        assert view.state.force_claim.value == "in_progress"
        async with h.sessions() as session:
            rows = {r.outcome: r for r in (await session.scalars(select(InboundMessage))).all()}
            assert [p.text for p in (await session.scalars(select(ProgressUpdate))).all()] == [
                "The referral process is being rewritten."]
        assert set(rows) == {"recorded", "automatic"} and all(r.channel == "imap" for r in rows.values())
        assert await count(h, Evidence) == 1
        assert dovecot.count("INBOX") == 0 and dovecot.count("Processed") == 2
        assert dovecot.count("Processed", "UNSEEN") == 0

        # Nothing new: nothing done. The same reply delivered again: recorded once.
        assert (await poll_once(settings, receiver)).seen == 0
        dovecot.deliver(reply.as_bytes())
        again = await poll_once(settings, receiver)
        assert (again.seen, again.processed) == (1, 1)
        assert await count(h, ProgressUpdate) == 1 and await count(h, Evidence) == 1 and await count(h, InboundMessage) == 2
        acks = await eventually(lambda: _acks(h))
        assert len(acks) == 1 and acks[0].rcpt_tos == [LIAISON]

        # A message over NCPI_INBOUND_MAX_BYTES: only its header is read; triaged, nothing recorded.
        small = imap_settings(h, dovecot, inbound_max_bytes=5_000)
        big = reply_to(notice, text="Implemented.", attachments=[("big.pdf", PDF + b"0" * 20_000)])
        dovecot.deliver(big.as_bytes())
        assert (await poll_once(small, Receiver(small, h.sessions, h.client))).processed == 1
        async with h.sessions() as session:
            row = await session.scalar(select(InboundMessage).where(InboundMessage.message_id == big["Message-ID"]))
        assert row.outcome == "triaged" and "over the 5,000-byte limit (NCPI_INBOUND_MAX_BYTES)" in row.reason
        assert await count(h, ProgressUpdate) == 1 and await count(h, Evidence) == 1
        assert dovecot.count("INBOX") == 0

        # Without the private CA the server's certificate is refused; a wrong password is named.
        with pytest.raises(UserError, match="TLS failed"):
            await poll_once(imap_settings(h, dovecot, imap_ca_file=None), receiver)
        with pytest.raises(UserError, match="refused the login"):
            await poll_once(imap_settings(h, dovecot, imap_password="wrong"), receiver)


async def _acks(h):
    return [m for m in h.smtp.messages if (m.message["X-NCPI-Reference"] or "").endswith("/acknowledgement")]


def test_ncpi_inbound_imap_as_a_command(dovecot, dev_server_env, cli_env):
    """`ncpi inbound imap --once` as its own process: a message without a token is read, triaged and
    moved; a wrong password stops the command with one line naming the settings to check."""
    import json
    from email.message import EmailMessage

    from tests.conftest import run_ncpi

    env = dict(cli_env, NCPI_TEMPORAL_ADDRESS=dev_server_env.address, NCPI_REPLY_TO=REPLY_TO,
               NCPI_IMAP_HOST="127.0.0.1", NCPI_IMAP_PORT=str(dovecot.port), NCPI_IMAP_USERNAME=USER,
               NCPI_IMAP_PASSWORD=PASSWORD, NCPI_IMAP_CA_FILE=str(dovecot.ca_file), NCPI_IMAP_MAILBOX="Commands",
               NCPI_IMAP_PROCESSED_MAILBOX="Commands-done")
    assert run_ncpi("db", "upgrade", env=env).returncode == 0
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = LIAISON, REPLY_TO, "No token here"
    message["Message-ID"] = "<imap-command@cumbria.police.example>"
    message.set_content("Implemented.")
    dovecot.deliver(message.as_bytes(), mailbox="Commands")
    done = run_ncpi("inbound", "imap", "--once", env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1 message(s): 1 processed, 0 deferred"
    assert dovecot.count("Commands") == 0 and dovecot.count("Commands-done") == 1
    [record] = json.loads(run_ncpi("inbox", "--json", env=env).stdout)
    assert record["channel"] == "imap" and record["outcome"] == "triaged" and "no reply token" in record["reason"]
    wrong = run_ncpi("inbound", "imap", env=dict(env, NCPI_IMAP_PASSWORD="wrong"))
    assert wrong.returncode == 1
    assert wrong.stderr.strip().splitlines() == [(
        f"ncpi: IMAP 127.0.0.1:{dovecot.port} refused the login as '{USER}' (check NCPI_IMAP_USERNAME and NCPI_IMAP_PASSWORD)")]
