"""Replies by email: the parsing rules, then end to end through `ncpi inbound smtp`'s own server.

End to end: a report is published on the time-skipping server with the loopback SMTP capture; the
liaison officer's real email is taken from the capture and answered, with smtplib, to its Reply-To
on the inbound SMTP server (the one `ncpi inbound smtp` runs), and the workflow, the records, the
triage list and the capture (the acknowledgement) are checked.
"""

from __future__ import annotations

import asyncio
import smtplib
from datetime import date, timedelta
from email.message import EmailMessage
from email.utils import make_msgid

import pytest
from sqlalchemy import func, select

from ncpi_workflow.inbound.parsing import (
    automatic_reason,
    claim_from,
    parse_message,
    parse_reply,
    references,
    reply_tokens,
    strip_quoted,
    without_tokens,
)
from ncpi_workflow.models import AuditEvent, Evidence, InboundMessage, Notification, ProgressUpdate, utcnow
from tests.lifecycle_support import harness, skip_to, write_report
from tests.postgres import free_port
from tests.test_lifecycle_timeskipping import at, eventually, rec_view, start

REPLY_TO = "ncpi-replies@inspectorate.example"
TOKEN = "A" * 20 + "b" * 20 + "-_9"
LIAISON = "liaison@cumbria.police.example"
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
EXE = b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff\x00\x00" + b"\x00" * 200 + b"This program cannot be run in DOS mode"


# ---------------------------------------------------------------- parsing


def _message(headers: dict[str, str], text: str = "Hello", content_type: str | None = None) -> bytes:
    message = EmailMessage()
    message["From"] = LIAISON
    message["To"] = f"ncpi-replies+{TOKEN}@inspectorate.example"
    message["Subject"] = "Re: Reminder"
    message["Message-ID"] = make_msgid(domain="cumbria.police.example")
    for name, value in headers.items():
        message[name] = value
    message.set_content(text)
    if content_type:
        message.replace_header("Content-Type", content_type)
    return message.as_bytes()


@pytest.mark.parametrize("headers,expected", [
    ({"Auto-Submitted": "auto-replied"}, "Auto-Submitted: auto-replied"),
    ({"Auto-Submitted": "auto-generated; owner-email=x@y"}, "Auto-Submitted"),
    ({"X-Autoreply": "yes"}, "X-Autoreply"),
    ({"X-Autorespond": "Out of office"}, "X-Autorespond"),
    ({"Precedence": "bulk"}, "Precedence: bulk"),
    ({"Precedence": "auto_reply"}, "Precedence: auto_reply"),
    ({"Precedence": "list"}, "Precedence: list"),
    ({"Precedence": "junk"}, "Precedence: junk"),
    ({"List-Id": "<news.example>"}, "List-Id"),
    ({"List-Unsubscribe": "<mailto:leave@example>"}, "List-Unsubscribe"),
    ({"Return-Path": "<>"}, "empty Return-Path"),
])
def test_automatic_mail_is_recognised(headers, expected):
    assert expected in (automatic_reason(parse_message(_message(headers))) or "")


def test_a_delivery_report_and_an_empty_envelope_sender_are_automatic_and_a_person_is_not():
    report = _message({}, content_type='multipart/report; report-type=delivery-status; boundary="b"')
    assert "multipart/report" in automatic_reason(parse_message(report))
    plain = parse_message(_message({"Auto-Submitted": "no", "Precedence": "first-class"}))
    assert automatic_reason(plain) is None
    assert automatic_reason(plain, envelope_from="<>").startswith("empty envelope sender")
    daemon = parse_message(_message({}).replace(LIAISON.encode(), b"MAILER-DAEMON@cumbria.police.example"))
    assert "mail system" in automatic_reason(daemon)


def test_the_token_is_the_plus_part_of_the_reply_address_only():
    assert reply_tokens([f"ncpi-replies+{TOKEN}@inspectorate.example"], REPLY_TO) == ((TOKEN,), False)
    assert reply_tokens([f"NCPI-Replies+{TOKEN}@Inspectorate.Example"], REPLY_TO) == ((TOKEN,), False)
    assert reply_tokens([f"someone+{TOKEN}@inspectorate.example"], REPLY_TO) == ((), False)
    assert reply_tokens(["ncpi-replies+short@inspectorate.example"], REPLY_TO) == ((), True)
    assert reply_tokens(["ncpi-replies@inspectorate.example"], REPLY_TO) == ((), False)
    twice = [f"ncpi-replies+{TOKEN}@inspectorate.example"] * 2
    assert reply_tokens(twice, REPLY_TO) == ((TOKEN,), False)


def test_the_token_is_found_in_delivered_to_and_in_the_envelope():
    data = _message({"Delivered-To": f"ncpi-replies+{TOKEN}@inspectorate.example"}).replace(
        f"ncpi-replies+{TOKEN}@".encode(), b"ncpi-replies@", 1)
    parsed = parse_reply(data, reply_to=REPLY_TO)
    assert parsed.tokens == (TOKEN,)
    bare = _message({}).replace(f"ncpi-replies+{TOKEN}@".encode(), b"ncpi-replies@")
    assert parse_reply(bare, reply_to=REPLY_TO).tokens == ()
    assert parse_reply(bare, reply_to=REPLY_TO, envelope_to=[f"ncpi-replies+{TOKEN}@inspectorate.example"]).tokens == (TOKEN,)


def test_the_quoted_original_and_the_signature_are_not_the_reply():
    text = ("In progress.\n\nWe have appointed a lead.\n\nOn Thu, 9 Mar 2017 at 09:00, HMICFRS <x@y>\nwrote:\n"
            "> Reminder: ...\n> more\n")
    assert strip_quoted(text) == "In progress.\n\nWe have appointed a lead."
    assert strip_quoted("Done.\n-- \nJo Bloggs\nLiaison officer") == "Done."
    assert strip_quoted("Done.\n\n-----Original Message-----\nFrom: x\n") == "Done."
    assert strip_quoted("Done.\n\nFrom: HMICFRS <x@y>\nSent: 9 March 2017\nTo: me\n") == "Done."
    assert strip_quoted("> quoted\nMine\n> more quoted\nAlso mine") == "Mine\nAlso mine"
    assert strip_quoted("On track: the plan is agreed.") == "On track: the plan is agreed."


def test_the_first_line_can_state_the_claim():
    assert claim_from("Implemented.") == "implemented"
    assert claim_from("R2: in progress") == "in_progress"
    assert claim_from("Status: not started") == "not_started"
    assert claim_from("Claim - implemented") == "implemented"
    assert claim_from("We implemented part of it") is None
    assert claim_from("Implementedness") is None


def test_references_in_a_subject():
    assert references("Re: Evidence requested: recommendation R2, by Friday") == (set(), {"R2"})
    assert references("Re: CUM-2017-01-26-R3 update") == ({"CUM-2017-01-26"}, {"R3"})
    assert references("Re: Report (CUM-2017-01-26)") == ({"CUM-2017-01-26"}, set())
    assert references("RE: PR2 and R12b") == (set(), set())


def test_the_subject_reference_tag_is_read_back():
    from ncpi_workflow.inbound.parsing import subject_reference

    assert subject_reference("RE: [EXTERNAL] Re: Due today: Recommendation R2 [CUM-2017-01-26-R2]") == (
        "CUM-2017-01-26", "CUM-2017-01-26-R2")
    assert subject_reference("Re: Reminder: Force action plan due Thursday 9 March 2017 [CUM-2017-01-26]") == (
        "CUM-2017-01-26", None)
    assert subject_reference("Fw: [LAN-2017-01-26-R1] then [CUM-2017-01-26-R3]") == ("CUM-2017-01-26", "CUM-2017-01-26-R3")
    for untagged in ("Re: CUM-2017-01-26-R2 update", "Re: [EXTERNAL] Reminder", "[cum-2017-01-26]", "[CUM-2017-01-26-R2x]", ""):
        assert subject_reference(untagged) is None, untagged


def test_tokens_are_removed_from_whatever_is_kept():
    kept = without_tokens(f"see https://ncpi.example/portal/{TOKEN} or write to ncpi-replies+{TOKEN}@inspectorate.example; {TOKEN}")
    assert TOKEN not in kept
    assert "/portal/[link removed]" in kept and "ncpi-replies@inspectorate.example" in kept


def test_attachments_and_an_html_only_reply():
    message = EmailMessage()
    message["From"] = LIAISON
    message["To"] = REPLY_TO
    message.set_content("<p>Implemented</p><blockquote>the original</blockquote><img src='cid:logo1'>", subtype="html")
    message.add_attachment(PDF, maintype="application", subtype="pdf", filename="plan.pdf")
    parsed = parse_reply(message.as_bytes(), reply_to=REPLY_TO)
    assert parsed.text == "Implemented"
    assert [(a.filename, a.data) for a in parsed.attachments] == [("plan.pdf", PDF)]
    assert parsed.message_id.startswith("<sha256-")  # no Message-ID: a digest of the message
    assert parse_reply(message.as_bytes(), reply_to=REPLY_TO).message_id == parsed.message_id


def test_a_sender_on_behalf_of_another_is_not_the_contact():
    parsed = parse_reply(_message({"Sender": "assistant@elsewhere.example"}), reply_to=REPLY_TO)
    assert parsed.sender == LIAISON and parsed.sender_problem == f"sent by assistant@elsewhere.example on behalf of {LIAISON}"


# ---------------------------------------------------------------- end to end


class Inbound:
    """`ncpi inbound smtp`'s server, in the test's event loop, over the harness's records and Temporal."""

    def __init__(self, h):
        from ncpi_workflow.inbound.processing import Receiver

        self.h = h
        self.receiver = Receiver(h.settings, h.sessions, h.client)
        self.port = free_port()

    async def __aenter__(self):
        from ncpi_workflow.inbound.smtp_server import start_server

        self.server, self.handler = await start_server(self.receiver, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc):
        self.server.close()
        await self.server.wait_closed()

    async def send(self, message: EmailMessage, sender: str | None = None):
        """Send with smtplib (another thread: the server runs in this loop); the SMTP answer."""

        def go():
            with smtplib.SMTP("127.0.0.1", self.port, timeout=60) as smtp:
                return smtp.send_message(message, from_addr=sender)

        count = len(self.handler.results)
        refused = await asyncio.to_thread(go)
        assert refused == {}
        assert len(self.handler.results) == count + 1
        return self.handler.results[-1]


def reply_to(captured: EmailMessage, *, sender: str = LIAISON, text: str, attachments=(), headers=None,
             to: str | None = None, message_id: str | None = None) -> EmailMessage:
    reply = EmailMessage()
    reply["From"] = sender
    reply["To"] = to or captured["Reply-To"]
    reply["Subject"] = f"Re: {captured['Subject']}"
    reply["Message-ID"] = message_id or make_msgid(domain="cumbria.police.example")
    reply["In-Reply-To"] = captured["Message-ID"]
    for name, value in (headers or {}).items():
        reply[name] = value
    reply.set_content(text)
    for name, data in attachments:
        reply.add_attachment(data, maintype="application", subtype="pdf", filename=name)
    return reply


def force_email(h, kind_words: str) -> EmailMessage:
    found = [m.message for m in h.smtp.messages if kind_words in m.message["Subject"] and LIAISON in m.message["To"]]
    assert found, [m.message["Subject"] for m in h.smtp.messages]
    return found[-1]


async def count(h, model, *where) -> int:
    async with h.sessions() as session:
        return await session.scalar(select(func.count()).select_from(model).where(*where))


async def _sent_acknowledgements(h):
    return [m for m in h.smtp.messages if (m.message["X-NCPI-Reference"] or "").endswith("/acknowledgement")]


@pytest.fixture
def one_recommendation(tmp_path):
    return write_report(tmp_path, "CUM", date(2017, 1, 26), [("R1", "within_three_months")])


async def test_a_reply_with_text_and_a_pdf_is_recorded_once_and_acknowledged(time_skipping_env, tmp_path, one_recommendation,
                                                                             database_url):
    """On SQLite and PostgreSQL."""
    async with harness(time_skipping_env, tmp_path, database_url, reply_to=REPLY_TO) as h, Inbound(h) as inbound:
        await start(h, one_recommendation, date(2017, 1, 26))
        await eventually(lambda: _published(h))
        notice = force_email(h, "Inspection report published")
        assert notice["Reply-To"].startswith("ncpi-replies+") and notice["Reply-To"].endswith("@inspectorate.example")
        token = notice["Reply-To"].split("+", 1)[1].split("@", 1)[0]
        reply = reply_to(notice, text="Implemented.\n\nThe new referral process is live in every district.\n\n"
                                       "On Thu, 26 Jan 2017 at 09:00, HMICFRS wrote:\n> Inspection report published\n",
                         attachments=[("referral-process.pdf", PDF), ("minutes.pdf", EXE)])
        result = await inbound.send(reply)
        assert result.outcome == "recorded", result.reason
        assert result.recommendation_ids == ["CUM-2017-01-26-R1"]
        view = await rec_view(h, "CUM-2017-01-26-R1")
        assert view.state.force_claim.value == "implemented"
        async with h.sessions() as session:
            progress = (await session.scalars(select(ProgressUpdate))).all()
            evidence = (await session.scalars(select(Evidence))).all()
            row = await session.scalar(select(InboundMessage))
            audit = (await session.scalars(select(AuditEvent).where(AuditEvent.action == "link.reply"))).all()
        assert [p.text for p in progress] == ["Implemented.\n\nThe new referral process is live in every district."]
        assert progress[0].submitted_by.startswith(f"{LIAISON} (reply, link #")
        assert [e.filename for e in evidence] == ["referral-process.pdf"]
        refused = [a for a in result.attachments if a.outcome == "refused"]
        assert [a.filename for a in refused] == ["minutes.pdf"] and "program" in refused[0].reason.lower()
        assert row.outcome == "recorded" and row.mail_from == LIAISON
        assert token not in row.to_addresses and "ncpi-replies@inspectorate.example" in row.to_addresses
        assert token not in row.text_excerpt and "live in every district" in row.text_excerpt
        assert len(audit) == 1 and audit[0].actor.startswith(f"{LIAISON} (reply, link #")

        acks = await eventually(lambda: _sent_acknowledgements(h))
        ack = acks[0].message
        assert acks[0].rcpt_tos == [LIAISON]
        assert ack["Auto-Submitted"] == "auto-replied"
        assert ack["In-Reply-To"] == reply["Message-ID"]
        assert ack["Reply-To"] is None
        body = ack.get_body(("plain",)).get_content()
        assert "referral-process.pdf" in body and "minutes.pdf" in body and refused[0].reason.split(":")[0] in body
        assert "Claim:      implemented" in body

        # The same email delivered again: accepted, recorded once, not acknowledged again.
        again = await inbound.send(reply)
        assert again.outcome == "duplicate"
        await asyncio.sleep(1.0)
        assert await count(h, ProgressUpdate) == 1
        assert await count(h, Evidence) == 1
        assert await count(h, InboundMessage) == 1
        assert await count(h, Notification, Notification.kind == "reply_acknowledgement") == 1
        assert len(await _sent_acknowledgements(h)) == 1

        # A later reply without a claim on its first line keeps the claim made (implemented).
        later = await inbound.send(reply_to(notice, text="Training for every team is booked for March."))
        assert later.outcome == "recorded" and later.reason == "progress note (implemented)"
        assert (await rec_view(h, "CUM-2017-01-26-R1")).state.force_claim.value == "implemented"
        assert await count(h, ProgressUpdate) == 2


async def _published(h):
    return [m for m in h.smtp.messages if "Inspection report published" in (m.message["Subject"] or "")]


async def test_automatic_and_untrusted_replies_record_nothing_and_are_triaged(time_skipping_env, tmp_path, one_recommendation):
    from ncpi_workflow.access_links import LinkScope, issue_link, link_key

    from ncpi_workflow.publishing import publish

    lancashire_report = write_report(tmp_path, "LAN", date(2017, 1, 26), [("R1", "within_three_months")])
    async with harness(time_skipping_env, tmp_path, reply_to=REPLY_TO) as h, Inbound(h) as inbound:
        await start(h, one_recommendation, date(2017, 1, 26))
        assert (await publish(h.settings, h.client, lancashire_report, anchor=h.anchor)).started
        await skip_to(h, at(2017, 2, 24, 12))  # the action plan's reminder, 10 working days before 9 March
        reminder = await eventually(lambda: _reminder(h))

        out_of_office = reply_to(reminder, text="I am out of the office until Monday.",
                                 headers={"Auto-Submitted": "auto-replied", "X-Autoreply": "yes"})
        result = await inbound.send(out_of_office)
        assert result.outcome == "automatic" and "Auto-Submitted" in result.reason

        stranger = reply_to(reminder, sender="someone@gmail.example", text="Implemented")
        result = await inbound.send(stranger)
        assert result.outcome == "triaged" and "unknown sender someone@gmail.example" in result.reason

        lancashire = reply_to(reminder, sender="liaison@lancashire.police.example", text="Implemented")
        result = await inbound.send(lancashire)
        assert result.outcome == "triaged" and "contact of force LAN, not of CUM" in result.reason

        key = link_key(h.settings)
        async with h.sessions.begin() as session:
            _, expired = await issue_link(session, purpose="reply", key=key, notification_id=None,
                                          scope=LinkScope("CUM", "CUM-2017-01-26", ("CUM-2017-01-26-R1",)),
                                          expires_at=utcnow() - timedelta(seconds=1))
        result = await inbound.send(reply_to(reminder, text="Implemented", to=f"ncpi-replies+{expired}@inspectorate.example"))
        assert result.outcome == "triaged" and result.reason == "reply link expired"
        # Force A's address answering force B's real email (its token):
        lancashire_email = next(m.message for m in h.smtp.messages
                                if "liaison@lancashire.police.example" in (m.message["To"] or ""))
        other_force = lancashire_email["Reply-To"].split("+", 1)[1].split("@", 1)[0]
        result = await inbound.send(reply_to(lancashire_email, text="Implemented"))
        assert result.outcome == "triaged" and "contact of force CUM, not of LAN" in result.reason
        result = await inbound.send(reply_to(reminder, text="Implemented", to=REPLY_TO))
        assert result.outcome == "triaged" and "no reply token" in result.reason

        await asyncio.sleep(1.0)
        for rec in ("CUM-2017-01-26-R1", "LAN-2017-01-26-R1"):
            assert (await rec_view(h, rec)).state.force_claim is None
        assert await count(h, ProgressUpdate) == 0
        assert await count(h, Notification, Notification.kind == "reply_acknowledgement") == 0
        assert await _sent_acknowledgements(h) == []
        assert not [m for m in h.smtp.messages if "someone@gmail.example" in m.rcpt_tos]

        from ncpi_workflow.inbound.inbox import list_inbox

        listed = await list_inbox(h.sessions)
        assert [r["outcome"] for r in listed].count("triaged") == 5
        assert [r["outcome"] for r in listed].count("automatic") == 1
        assert all(expired not in r["to"] and other_force not in r["to"] for r in listed)


async def _reminder(h):
    found = [m.message for m in h.smtp.messages if (m.message["Subject"] or "").startswith("Reminder") and LIAISON in m.message["To"]]
    return found[-1] if found else None


async def test_the_inbound_server_takes_mail_for_the_reply_address_only(tmp_path):
    from ncpi_workflow.inbound.processing import Receiver
    from ncpi_workflow.inbound.smtp_server import start_server
    from ncpi_workflow.settings import Settings

    settings = Settings(reply_to=REPLY_TO, inbound_max_bytes=10_000, database_url=f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")
    port = free_port()
    server, _ = await start_server(Receiver(settings, None, None), "127.0.0.1", port)

    def go():
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
            smtp.ehlo()
            assert "size" in smtp.esmtp_features and smtp.esmtp_features["size"] == "10000"
            smtp.mail("a@b.example")
            code, answer = smtp.rcpt("someone@inspectorate.example")
            assert code == 550, answer
            code, _ = smtp.rcpt(f"ncpi-replies+{TOKEN}@inspectorate.example")
            assert code == 250
            smtp.rset()
            with pytest.raises(smtplib.SMTPException) as refused:
                smtp.sendmail("a@b.example", [REPLY_TO], b"Subject: big\r\n\r\n" + b"x" * 20_000)
            return str(refused.value)

    try:
        assert "552" in await asyncio.to_thread(go)
    finally:
        server.close()
        await server.wait_closed()


async def test_the_inbox_page_shows_the_triage_list_escaped_to_a_viewer(sessions, tmp_path):
    """On SQLite and PostgreSQL: triaged and automatic mail on /inbox for a viewer, values escaped,
    recorded replies only under "Recorded"; `ncpi inbox --json` reads the same list."""
    from ncpi_workflow.inbound.inbox import list_inbox
    from ncpi_workflow.web.app import create_app
    from tests.web.conftest import FakeClock, add_user, browser, web_settings

    async with sessions.begin() as session:
        session.add_all([
            InboundMessage(message_id="<1@x>", channel="smtp", mail_from="someone@gmail.example", to_addresses=REPLY_TO,
                           subject="<script>alert(1)</script>", outcome="triaged", reason="unknown sender someone@gmail.example",
                           text_excerpt="Implemented <b>really</b>", recommendation_ids=[], attachments=[]),
            InboundMessage(message_id="<2@x>", channel="imap", mail_from=LIAISON, to_addresses=REPLY_TO, subject="Out of office",
                           outcome="automatic", reason="Auto-Submitted: auto-replied", text_excerpt="", recommendation_ids=[],
                           attachments=[]),
            InboundMessage(message_id="<3@x>", channel="smtp", mail_from=LIAISON, to_addresses=REPLY_TO, subject="Recorded one",
                           outcome="recorded", reason="progress note (in progress)", text_excerpt="", recommendation_ids=[],
                           attachments=[]),
        ])
    assert [r["outcome"] for r in await list_inbox(sessions)] == ["automatic", "triaged"]  # newest first
    assert len(await list_inbox(sessions, everything=True)) == 3
    url = sessions.kw["bind"].url.render_as_string(hide_password=False)
    app = create_app(web_settings(url, tmp_path), sessions=sessions, clock=FakeClock())
    b = browser(app)
    try:
        assert (await b.sign_in(await add_user(sessions, "viewer"))).status_code == 303
        page = (await b.get("/inbox")).text
        assert "unknown sender someone@gmail.example" in page
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>alert(1)" not in page
        assert "Implemented &lt;b&gt;really&lt;/b&gt;" in page
        assert "Out of office" not in page and "Recorded one" not in page
        assert "Out of office" in (await b.get("/inbox?show=automatic")).text
        recorded = (await b.get("/inbox?show=recorded")).text
        assert "Recorded one" in recorded and "unknown sender" not in recorded
        assert 'href="/inbox"' in page
    finally:
        await b.aclose()
        await app.state.services.close()


def test_ncpi_inbound_smtp_and_ncpi_inbox_as_commands(dev_server_env, cli_env):
    """`ncpi inbound smtp` as its own process (the real dev server for Temporal): a reply without a
    token is accepted and triaged; `ncpi inbox` and `--json` list it; SIGTERM stops the server."""
    import json
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import ROOT, run_ncpi

    port = free_port()
    env = dict(cli_env, NCPI_TEMPORAL_ADDRESS=dev_server_env.address, NCPI_REPLY_TO=REPLY_TO,
               NCPI_INBOUND_SMTP_PORT=str(port), NCPI_INBOUND_MAX_BYTES="100000")
    assert run_ncpi("db", "upgrade", env=env).returncode == 0
    assert run_ncpi("inbox", env=env).stdout.strip() == "the triage list is empty"
    server = subprocess.Popen([sys.executable, "-m", "ncpi_workflow.cli", "inbound", "smtp"], env=env, cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                smtp = smtplib.SMTP("127.0.0.1", port, timeout=30)
                break
            except OSError:
                assert server.poll() is None, server.stderr.read()
                assert time.monotonic() < deadline, "ncpi inbound smtp did not listen"
                time.sleep(0.2)
        with smtp:
            message = EmailMessage()
            message["From"] = LIAISON
            message["To"] = REPLY_TO
            message["Subject"] = "Our update"
            message["Message-ID"] = "<update-1@cumbria.police.example>"
            message.set_content("Implemented.")
            assert smtp.send_message(message) == {}
            code, _ = smtp.rcpt("someone@elsewhere.example") if smtp.mail("x@y.example")[0] == 250 else (None, None)
            assert code == 550
    finally:
        server.send_signal(signal.SIGTERM)
        out, err = server.communicate(timeout=30)
    assert server.returncode == 0, err
    assert f"inbound SMTP on 127.0.0.1:{port} for {REPLY_TO}" in err
    listed = run_ncpi("inbox", env=env)
    assert listed.returncode == 0 and "triaged" in listed.stdout and "no reply token" in listed.stdout
    [record] = json.loads(run_ncpi("inbox", "--json", env=env).stdout)
    assert record["outcome"] == "triaged" and record["from"] == LIAISON and record["message_id"] == "<update-1@cumbria.police.example>"
    assert record["text"] == "Implemented."


async def test_a_reply_about_several_recommendations_must_name_one(time_skipping_env, tmp_path):
    """The published notice covers every recommendation: a reply that names none is triaged; one whose
    first line names R2 is recorded on R2 alone; a 30 MB attachment is refused and nothing kept of it."""
    report = write_report(tmp_path, "CUM", date(2017, 1, 26), [("R1", "within_three_months"), ("R2", "within_six_months")])
    async with harness(time_skipping_env, tmp_path, reply_to=REPLY_TO) as h, Inbound(h) as inbound:
        await start(h, report, date(2017, 1, 26))
        await eventually(lambda: _published(h))
        notice = force_email(h, "Inspection report published")
        vague = await inbound.send(reply_to(notice, text="Implemented."))
        assert vague.outcome == "triaged" and "several recommendations (R1, R2)" in vague.reason
        huge = b"%PDF-1.4\n" + b"0" * (30 * 1024 * 1024)
        named = await inbound.send(reply_to(notice, text="R2: in progress\n\nA pilot runs in Carlisle.",
                                            attachments=[("pilot.pdf", PDF), ("scans.pdf", huge)]))
        assert named.outcome == "recorded" and named.recommendation_ids == ["CUM-2017-01-26-R2"], named.reason
        [refused] = [a for a in named.attachments if a.outcome == "refused"]
        assert refused.filename == "scans.pdf" and "limit" in refused.reason
        assert (await rec_view(h, "CUM-2017-01-26-R2")).state.force_claim.value == "in_progress"
        assert (await rec_view(h, "CUM-2017-01-26-R1")).state.force_claim is None
        async with h.sessions() as session:
            assert [e.filename for e in (await session.scalars(select(Evidence))).all()] == ["pilot.pdf"]
        stored = [p for p in (h.settings.evidence_dir).rglob("*") if p.is_file()]
        assert len(stored) == 1 and stored[0].read_bytes() == PDF
        acks = await eventually(lambda: _sent_acknowledgements(h))
        assert len(acks) == 1 and "scans.pdf" in acks[0].message.get_body(("plain",)).get_content()


async def test_a_reply_whose_token_was_stripped_is_triaged_with_what_its_subject_names(sessions):
    """A mail system that drops the plus part: the subject's reference tag tells triage which
    recommendation it is about, and still nothing is recorded (only a valid token records)."""
    from ncpi_workflow.inbound.processing import Receiver
    from ncpi_workflow.settings import Settings

    receiver = Receiver(Settings(reply_to=REPLY_TO), sessions, None)
    message = EmailMessage()
    message["From"], message["To"] = LIAISON, REPLY_TO
    message["Subject"] = "RE: [EXTERNAL] Due today: Recommendation R2 (Wednesday 26 April 2017) [CUM-2017-01-26-R2]"
    message["Message-ID"] = make_msgid(domain="cumbria.police.example")
    message.set_content("Implemented.\n\nThe profile is in use in every district.")
    result = await receiver.receive(message.as_bytes(), channel="smtp")
    assert result.outcome == "triaged"
    assert result.reason == "no reply token in the address it was sent to; its subject names CUM-2017-01-26-R2"
    untagged = EmailMessage()
    untagged["From"], untagged["To"], untagged["Subject"] = LIAISON, REPLY_TO, "Re: our update"
    untagged["Message-ID"] = make_msgid(domain="cumbria.police.example")
    untagged.set_content("Implemented.")
    plain = await receiver.receive(untagged.as_bytes(), channel="smtp")
    assert plain.outcome == "triaged" and plain.reason == "no reply token in the address it was sent to"
    async with sessions() as session:
        rows = {r.message_id: r for r in (await session.scalars(select(InboundMessage))).all()}
        assert await session.scalar(select(func.count()).select_from(ProgressUpdate)) == 0
        assert await session.scalar(select(func.count()).select_from(Notification)) == 0
    assert rows[message["Message-ID"]].recommendation_ids == ["CUM-2017-01-26-R2"]
    assert rows[untagged["Message-ID"]].recommendation_ids == []
    assert rows[message["Message-ID"]].outcome == "triaged"


async def test_junk_and_odd_mail_is_triaged_once_on_both_databases(sessions, monkeypatch):
    """Bytes that are barely an email, 8-bit text in an unknown charset, a file name with a newline:
    each becomes one triaged row (nothing raised, nothing retried), the same bytes again a duplicate."""
    from ncpi_workflow.inbound import processing
    from ncpi_workflow.inbound.processing import Receiver
    from ncpi_workflow.settings import Settings

    receiver = Receiver(Settings(reply_to=REPLY_TO), sessions, None)
    junk = b"\x00\xff\xfe garbage without headers \r\n\r\n\x80\x81"
    odd = (b"From: =?utf-8?q?J=C3=B6?= <jo@x.example>\r\nTo: " + REPLY_TO.encode() + b"\r\nSubject: =?utf-8?q?R=C3=A9ponse?=\r\n"
           b"Message-ID: <odd@x.example>\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
           b"Content-Type: text/plain; charset=x-unknown\r\n\r\nCaf\xe9 <script>x</script>\r\n--b\r\n"
           b"Content-Type: application/pdf\r\nContent-Disposition: attachment; filename*=utf-8''a%0Ab.pdf\r\n\r\n%PDF-1.4\r\n--b--\r\n")
    first = await receiver.receive(junk, channel="smtp")
    assert first.outcome == "triaged" and first.reason == "no reply token in the address it was sent to"
    assert (await receiver.receive(junk, channel="smtp")).outcome == "duplicate"
    second = await receiver.receive(odd, channel="imap")
    assert second.outcome == "triaged"

    def broken(*args, **kwargs):
        raise ValueError("a parser defect")

    monkeypatch.setattr(processing, "parse_reply", broken)  # stands in for a message the parser chokes on
    third = await receiver.receive(b"Subject: x\r\n\r\nbody", channel="smtp")
    assert third.outcome == "triaged" and third.reason.startswith("not readable as an email: ValueError")
    async with sessions() as session:
        rows = {r.message_id: r for r in (await session.scalars(select(InboundMessage))).all()}
    assert len(rows) == 3
    row = rows["<odd@x.example>"]
    assert row.subject == "Réponse" and "Caf" in row.text_excerpt and "<script>" in row.text_excerpt
    assert [a["filename"] for a in row.attachments] == ["a\\nb.pdf"]  # the newline kept visible, on one line


from tests.test_spamassassin import spamassassin  # noqa: E402,F401  (the fixture)


def test_the_acknowledgement_scores_zero_in_spamassassin(spamassassin):  # noqa: F811
    """The acknowledgement as the mailer sends it (over the worked example's report), like every kind."""
    import dataclasses
    import email.policy
    from datetime import datetime, timezone

    from ncpi_workflow.email_examples import example_contexts
    from ncpi_workflow.inbound.acknowledgement import build
    from ncpi_workflow.settings import Settings

    ctx = dataclasses.replace(example_contexts()["evidence_request"], kind="reply_acknowledgement",
                              subject="Received: your update on recommendation R2 (CUM-2017-01-26)",
                              recipients=["liaison_officer"], reference="ncpi/inbound/7/acknowledgement")
    facts = {"ref": "R2", "about": "recommendation R2", "item": None, "received": "Thu 9 Mar 2017 10:12 (UK time)", "original_subject": "Re: Evidence requested",
             "progress": True, "claim": "implemented", "recorded": [{"filename": "plan.pdf", "size": "12 KB"}],
             "refused": [{"filename": "minutes.pdf", "reason": "is a Windows program (EXE), not a PDF document"}]}
    message, message_id = build(Settings(), ctx, facts, [LIAISON], ctx.reference, "<reply-1@cumbria.police.example>",
                                datetime(2017, 3, 9, 10, 13, tzinfo=timezone.utc))
    assert message["Auto-Submitted"] == "auto-replied" and message["Message-ID"] == message_id
    score, rules, status = spamassassin(message.as_bytes(policy=email.policy.SMTP))
    scoring = {rule: points for rule, points in rules.items() if points != 0}
    assert score == 0 and not scoring, f"{status}; rules that score: {scoring}"


async def test_the_action_plan_and_the_pcc_response_by_reply(time_skipping_env, tmp_path, one_recommendation):
    """A reply to the action plan's reminder with the plan attached meets that deadline; the PCC answers
    the publication notice with the address of the published response; each is acknowledged."""
    from ncpi_workflow.lifecycle import InspectionView

    async with harness(time_skipping_env, tmp_path, reply_to=REPLY_TO) as h, Inbound(h) as inbound:
        await start(h, one_recommendation, date(2017, 1, 26))
        await skip_to(h, at(2017, 2, 24, 12))
        reminder = await eventually(lambda: _reminder(h))
        assert "action plan" in reminder["Subject"].lower()
        plan = await inbound.send(reply_to(reminder, text="Our action plan is attached.", attachments=[("action-plan.pdf", PDF)]))
        assert plan.outcome == "recorded" and plan.item == "action_plan", plan.reason
        notice = force_email(h, "Inspection report published")
        pcc = await inbound.send(reply_to(notice, sender="pcc@cumbria.pcc.example",
                                          text="PCC response: https://www.cumbria-pcc.example/ncpi-response.\n\nPublished today."))
        assert pcc.outcome == "recorded" and pcc.item == "pcc_response", pcc.reason
        assert pcc.delivered == "https://www.cumbria-pcc.example/ncpi-response"
        again = await inbound.send(reply_to(reminder, text="Our action plan again.", attachments=[("plan-v2.pdf", PDF + b"%v2")]))
        assert again.outcome == "triaged" and "already received" in again.reason

        view = await h.inspection("CUM-2017-01-26").query("state", result_type=InspectionView)
        met = {d.key: d.met_at for d in view.state.deadlines}
        assert met["action_plan"] is not None and met["pcc_response"] is not None
        acks = await eventually(lambda: _two(_sent_acknowledgements(h)))
        subjects = sorted(a.message["Subject"] for a in acks)
        assert subjects == ["Received: the PCC's response [CUM-2017-01-26]", "Received: the force action plan [CUM-2017-01-26]"]
        assert sorted(a.rcpt_tos[0] for a in acks) == [LIAISON, "pcc@cumbria.pcc.example"]


async def _two(coro):
    found = await coro
    return found if len(found) >= 2 else None


from tests.web.test_web_browser import Pages, playwright_ready  # noqa: E402,F401  (axe-core in Chromium)


async def test_the_inbox_page_in_a_browser_is_accessible(playwright_ready, tmp_path):  # noqa: F811
    """/inbox in Debian's Chromium, with triaged, automatic and recorded mail: no WCAG 2.1 A/AA violation."""
    from playwright.async_api import async_playwright

    from ncpi_workflow import db
    from ncpi_workflow.web.app import create_app
    from ncpi_workflow.web.server import running_web
    from tests.web.conftest import PASSWORD, add_user, web_settings
    from tests.web.test_web_browser import CHROMIUM

    url = f"sqlite+aiosqlite:///{tmp_path / 'inbox.db'}"
    await db.upgrade(url)
    settings = web_settings(url, tmp_path, web_port=free_port())
    async with db.open_database(url) as sessions:
        async with sessions.begin() as session:
            session.add_all([
                InboundMessage(message_id=f"<{n}@x>", channel="smtp", mail_from=sender, to_addresses=REPLY_TO, subject=subject,
                               outcome=outcome, reason=reason, text_excerpt=text, recommendation_ids=recs,
                               attachments=[{"filename": "minutes.pdf", "size_bytes": 1234, "outcome": "refused",
                                             "reason": "is a Windows program (EXE), not a PDF document"}] if n == 1 else [])
                for n, (sender, subject, outcome, reason, text, recs) in enumerate([
                    ("someone@gmail.example", "Re: Reminder", "triaged", "unknown sender someone@gmail.example", "Done.", []),
                    (LIAISON, "Out of office", "automatic", "Auto-Submitted: auto-replied", "Away until Monday.", []),
                    (LIAISON, "Re: Evidence", "recorded", "progress note (implemented)", "Implemented.", ["CUM-2017-01-26-R1"]),
                ], start=1)
            ])
        viewer = await add_user(sessions, "viewer")
        shots = Pages(tmp_path / "screenshots")
        app = create_app(settings, sessions=sessions)
        async with running_web(settings, app) as address, async_playwright() as p:
            browser = await p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
            try:
                page = await (await browser.new_context(base_url=address, viewport={"width": 1280, "height": 900},
                                                        bypass_csp=True)).new_page()
                await page.goto("/sign-in")
                await page.fill("#email", viewer)
                await page.fill("#password", PASSWORD)
                await page.click("button:has-text('Sign in')")
                await page.wait_for_url(f"{address}/")
                await page.click("a.govuk-service-navigation__link:has-text('Inbox')")
                await page.wait_for_url(f"{address}/inbox")
                assert "unknown sender someone@gmail.example" in await page.inner_text("main")
                await shots.check(page, "inbox")
                await page.click("a:has-text('Everything')")
                assert "Away until Monday." in await page.inner_text("main")
                await shots.check(page, "inbox-everything")
            finally:
                await browser.close()


async def test_triage_rules_before_anything_is_recorded(sessions, tmp_path):
    """On SQLite and PostgreSQL, with real links and contacts (no workflow is needed: each of these is
    triaged before anything would be recorded, and the Temporal client is absent to prove it)."""
    from ncpi_workflow.access_links import LinkScope, issue_link, link_key, revoke_link
    from ncpi_workflow.inbound.processing import Receiver
    from ncpi_workflow.settings import Settings
    from tests.web.conftest import seed_report

    inspection = await seed_report(sessions, tmp_path, "CUM", date(2017, 1, 26), [("R1", "immediately"), ("R2", "within_three_months")])
    settings = Settings(reply_to=REPLY_TO, data_dir=tmp_path / "data", secret_key="k" * 40)
    key = link_key(settings)
    later = utcnow() + timedelta(days=30)
    async with sessions.begin() as session:
        one, single = await issue_link(session, purpose="reply", key=key, notification_id=None, expires_at=later,
                                       scope=LinkScope("CUM", inspection, (f"{inspection}-R1",)))
        _, several = await issue_link(session, purpose="reply", key=key, notification_id=None, expires_at=later,
                                      scope=LinkScope("CUM", inspection, (), ("action_plan", "pcc_response")))
        _, portal = await issue_link(session, purpose="portal", key=key, notification_id=None, expires_at=later,
                                     scope=LinkScope("CUM", inspection, (f"{inspection}-R1",)))
        revoked_id, revoked = await issue_link(session, purpose="reply", key=key, notification_id=None, expires_at=later,
                                               scope=LinkScope("CUM", inspection, (f"{inspection}-R1",)))
        await revoke_link(session, revoked_id, by="hmi@inspectorate.example")
    receiver = Receiver(settings, sessions, None)

    def to(token: str) -> str:
        return f"ncpi-replies+{token}@inspectorate.example"

    def mail(address: str, subject: str = "Re: Reminder", text: str = "Implemented.", **headers) -> bytes:
        message = EmailMessage()
        message["From"], message["To"], message["Subject"] = LIAISON, address, subject
        message["Message-ID"] = make_msgid(domain="cumbria.police.example")
        for name, value in headers.items():
            message[name.replace("_", "-")] = value
        message.set_content(text)
        return message.as_bytes()

    cases = [
        (mail(to(single), subject="Re: CUM-2016-05-05-R1 update"), f"names CUM-2016-05-05, but the reply link is for {inspection}"),
        (mail(to(revoked)), "reply link revoked"),
        (mail(to(portal)), "reply link unknown"),  # a portal token is no reply token
        (mail("ncpi-replies+not-a-token@inspectorate.example"), "the reply address carries a malformed reply token"),
        (mail(f"{to(single)}, {to(several)}"), "sent to 2 different reply addresses; one reply answers one email"),
        (mail(to(single), Sender="assistant@elsewhere.example"), f"sender not accepted: sent by assistant@elsewhere.example on behalf of {LIAISON}"),
        (mail(to(several), text="Here is our update."), "the email concerned the force action plan and the PCC's response"),
        (mail(to(single), text=""), "the reply has no text and no attachment"),
    ]
    for data, reason in cases:
        result = await receiver.receive(data, channel="smtp")
        assert result.outcome == "triaged" and result.reason.startswith(reason), (reason, result.reason)
    async with sessions() as session:
        rows = (await session.scalars(select(InboundMessage))).all()
        audit = (await session.scalars(select(AuditEvent.action).where(AuditEvent.action.like("link.%")))).all()
    assert len(rows) == len(cases) and {r.outcome for r in rows} == {"triaged"}
    assert "link.reply" not in audit
    assert all(token not in r.to_addresses for r in rows for token in (single, several, portal, revoked))
    assert await count_rows(sessions, Notification) == 0 and await count_rows(sessions, ProgressUpdate) == 0


async def count_rows(sessions, model) -> int:
    async with sessions() as session:
        return await session.scalar(select(func.count()).select_from(model))
