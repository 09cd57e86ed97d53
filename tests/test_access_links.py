"""Access links (ncpi_workflow/access_links.py): the portal link and the reply address of every
force-facing email. Real SQLite and PostgreSQL, a real aiosmtpd capture, the real delivery activity.

The raw token is derived (HMAC of the secret key, the row id and a random salt), never stored:
the database and the logs never hold it, the stored rendering holds a placeholder, and the token goes
in only as the bytes go to the relay, so a resend is byte-identical."""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import json
import logging
import re
from datetime import date, datetime, timedelta, timezone

import pytest
from sqlalchemy import inspect as sa_inspect, select, text

from activities.delivery import DeliveryActivities, DeliverySettings
from ncpi_workflow import access_links as al
from ncpi_workflow.access_links import (
    LinkInvalid,
    LinkScope,
    LinkSettings,
    derive_token,
    fill_link_tokens,
    issue_link,
    link_expiry,
    placeholder_for,
    record_link_use,
    resolve_link,
    revoke_link,
    token_hash,
)
from ncpi_workflow.formatting import local_date
from ncpi_workflow.mailer import Mailer, SmtpConfig, build_message, flatten
from ncpi_workflow.models import AccessLink, AuditEvent, Deadline, Notification, utcnow
from ncpi_workflow.settings import Settings, load_settings
from ncpi_workflow.store import insert_if_absent
from tests.conftest import run_ncpi
from tests.test_email_delivery import _capture, _cumbria_records

KEY = b"test-secret-key-of-thirty-two-or-more-characters"
PUBLIC_URL = "https://followup.inspectorate.example"  # 37 characters: the link line is quoted-printable wrapped
REPLY_TO = "ncpi-replies@inspectorate.example"
MAIL_FROM = "ncpi-followup@inspectorate.example"
INSPECTORS = "ncpi-inspectors@inspectorate.example"
CUM = "CUM-2017-01-26"
R2 = f"{CUM}-R2"
FORCE = {"to": ["liaison@cumbria.police.example", "chief.officer@cumbria.police.example", "pcc@cumbria.pcc.example"],
         "roles": ["liaison_officer", "chief_officer", "pcc"]}
LIAISON = {"to": ["liaison@cumbria.police.example"], "roles": ["liaison_officer"]}
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)


def _links_settings(**changes) -> LinkSettings:
    values = dict(key=KEY, web_url=PUBLIC_URL, reply_to=REPLY_TO, days_after_deadline=30)
    values.update(changes)
    return LinkSettings(**values)


def _delivery(sessions, port: int, links: LinkSettings | None = None) -> tuple[Mailer, DeliveryActivities]:
    mailer = Mailer(SmtpConfig("127.0.0.1", port, None, None, False, False, 10.0, 0.0, 30.0))
    settings = DeliverySettings(MAIL_FROM, REPLY_TO, INSPECTORS, None, links=links or _links_settings())
    return mailer, DeliveryActivities(sessions, mailer, settings)


async def _notify(sessions, key: str, kind: str, context: dict, recipients: dict, recommendation_id: str | None = None,
                  subject: str | None = None) -> int:
    async with sessions.begin() as session:
        await insert_if_absent(
            session, Notification, ["idempotency_key"], idempotency_key=key, kind=kind, inspection_id=CUM,
            recommendation_id=recommendation_id, recipients=recipients, subject=subject or f"{kind} ({CUM})",
            context=context, status="pending", attempts=0, scheduled_for=datetime(2017, 2, 23, 9, 0, tzinfo=timezone.utc),
        )
        return await session.scalar(select(Notification.id).where(Notification.idempotency_key == key))


def _portal_token(message) -> str:
    found = set(re.findall(re.escape(PUBLIC_URL) + r"/portal/([A-Za-z0-9_-]{43})\b", message.get_body(("plain",)).get_content()))
    html = set(re.findall(r'href="' + re.escape(PUBLIC_URL) + r'/portal/([A-Za-z0-9_-]{43})"', message.get_body(("html",)).get_content()))
    assert len(found) == 1 and found == html, (found, html)
    return found.pop()


def _reply_token(message) -> str:
    reply_to = str(message["Reply-To"])
    match = re.fullmatch(r"ncpi-replies\+([A-Za-z0-9_-]{43})@inspectorate\.example", reply_to)
    assert match, reply_to
    assert al.token_from_address(reply_to) == match.group(1)
    return match.group(1)


async def _scan(sessions, needles: list[str]) -> dict[str, list[str]]:
    """Every table of the database, every column of every row: where each needle occurs (text, JSON,
    blobs; blobs also with quoted-printable soft line breaks taken out)."""
    hits: dict[str, list[str]] = {n: [] for n in needles}
    async with sessions() as session:
        connection = await session.connection()
        tables = await connection.run_sync(lambda sync: sa_inspect(sync).get_table_names())
        assert {"access_links", "notifications", "audit_events"} <= set(tables)
        for table in tables:
            result = await connection.execute(text(f'SELECT * FROM "{table}"'))
            columns = list(result.keys())
            for row in result.all():
                for column, value in zip(columns, row):
                    if value is None:
                        continue
                    if isinstance(value, (bytes, bytearray, memoryview)):
                        raw = bytes(value)
                        forms = [raw.decode("latin-1"), raw.replace(b"=\r\n", b"").decode("latin-1")]
                    else:
                        forms = [value if isinstance(value, str) else json.dumps(value, default=str)]
                    for needle in needles:
                        if any(needle in form for form in forms):
                            hits[needle].append(f"{table}.{column}")
    return hits


# --- the tokens -----------------------------------------------------------------------------------


def test_tokens_are_keyed_salted_and_carry_at_least_128_random_bits():
    salts = {al.new_salt() for _ in range(2000)}
    assert len(salts) == 2000 and all(len(bytes.fromhex(s)) == 16 for s in salts)  # 128 random bits each
    salt = next(iter(salts))
    token = derive_token(KEY, 7, salt)
    assert len(token) == 43 and re.fullmatch(r"[A-Za-z0-9_-]{43}", token)
    assert len(base64.urlsafe_b64decode(token + "=")) == 32  # HMAC-SHA256: 256 bits
    assert derive_token(KEY, 7, salt) == token  # derived again, never kept
    assert derive_token(KEY + b"x", 7, salt) != token  # keyed: the database alone does not give it
    assert derive_token(KEY, 8, salt) != token
    assert len({derive_token(KEY, 7, s) for s in salts}) == 2000  # the salt changes every bit of it
    assert token_hash(token) != token and len(token_hash(token)) == 64
    with pytest.raises(ValueError):
        derive_token(b"", 7, salt)


def test_placeholders_are_43_literal_characters_that_name_their_link():
    salt = al.new_salt()
    ph = placeholder_for(123, salt)
    assert len(ph) == 43 and ph.startswith("ncpiLink0000000000123") and re.fullmatch(r"[A-Za-z0-9_-]{43}", ph)
    assert fill_link_tokens(f"<{ph}>".encode(), KEY) == f"<{derive_token(KEY, 123, salt)}>".encode()
    assert fill_link_tokens(placeholder_for(0, salt).encode(), KEY) == placeholder_for(0, salt).encode()  # provisional
    assert fill_link_tokens(b"ncpiLink12345 nothing here", KEY) == b"ncpiLink12345 nothing here"
    with pytest.raises(ValueError):
        placeholder_for(1, "00" * 8)


@pytest.mark.parametrize("prefix_length", range(0, 60))
def test_quoted_printable_soft_breaks_inside_a_placeholder_are_filled_across(prefix_length):
    """Whatever column the quoted-printable encoder breaks the link's line at, the filled message
    decodes to the whole token, in the text part, the HTML part and the Reply-To header."""
    salt = al.new_salt()
    ph = placeholder_for(4242, salt)
    url = f"https://followup.example/{'p' * prefix_length}/portal/{ph}"
    data = flatten(build_message(
        mail_from=MAIL_FROM, reply_to=f"ncpi-replies+{ph}@inspectorate.example", to=["x@force.example"], subject="s",
        text=f"Answer online:\n{url}\n", html=f'<p><a href="{url}">Answer online</a></p>\n', message_id="<m@x>",
        reference="r",
    ))
    split = re.search(r"n=?\r?\n?c=?\r?\n?p=?\r?\n?i=?\r?\n?L", data.decode())
    filled = fill_link_tokens(data, KEY)
    token = derive_token(KEY, 4242, salt)
    assert len(filled) == len(data) and fill_link_tokens(data, KEY) == filled  # deterministic, length kept
    message = email.message_from_bytes(filled, policy=email.policy.default)
    assert token in message.get_body(("plain",)).get_content()
    assert f'href="https://followup.example/{"p" * prefix_length}/portal/{token}"' in message.get_body(("html",)).get_content()
    assert str(message["Reply-To"]) == f"ncpi-replies+{token}@inspectorate.example"
    assert ph not in filled.decode() and "ncpiLink" not in filled.replace(b"=\r\n", b"").decode()
    assert split is not None


def test_some_quoted_printable_breaks_do_fall_inside_the_placeholder():
    """The case above is real: for these lengths the encoder's soft break lands inside the placeholder."""
    salt = al.new_salt()
    ph = placeholder_for(4242, salt)
    inside = 0
    for prefix_length in range(0, 60):
        url = f"https://followup.example/{'p' * prefix_length}/portal/{ph}"
        data = flatten(build_message(mail_from=MAIL_FROM, reply_to=None, to=["x@force.example"], subject="s",
                                     text=f"Answer online:\n{url}\n", html="<p>x</p>\n", message_id="<m@x>", reference="r"))
        inside += ph.encode() not in data and ph.encode() in data.replace(b"=\r\n", b"")
    assert inside >= 30


def test_a_forged_placeholder_gives_no_working_token():
    """A placeholder copied into a reply with a made-up salt is filled with a token of no link."""
    forged = placeholder_for(1, "ab" * 16)
    assert fill_link_tokens(forged.encode(), KEY).decode() == derive_token(KEY, 1, "ab" * 16)
    # ... which names no row: the real link 1 has its own random salt (tested below: 'unknown').


def test_expiry_is_days_after_the_latest_deadline_and_never_sooner_than_days_after_today():
    end = link_expiry(date(2017, 3, 9), date(2017, 2, 23), 30)
    assert end.tzinfo is not None and local_date(end) == date(2017, 4, 8)
    assert end.astimezone(al_london()).time().isoformat() == "23:59:59"
    assert local_date(link_expiry(date(2017, 3, 9), date(2017, 5, 1), 30)) == date(2017, 5, 31)
    assert local_date(link_expiry(None, date(2017, 5, 1), 7)) == date(2017, 5, 8)


def al_london():
    from ncpi_workflow.formatting import LONDON

    return LONDON


# --- settings and the shared key ------------------------------------------------------------------


def test_public_url_defaults_to_the_web_apps_own_address_and_the_policy_is_a_setting(tmp_path, monkeypatch):
    for name in [k for k in __import__("os").environ if k.startswith("NCPI_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("NCPI_SETTINGS_FILE", str(tmp_path / "none.toml"))
    settings = Settings(data_dir=tmp_path, web_host="10.1.2.3", web_port=8123)
    links = LinkSettings.from_settings(settings)
    assert links.web_url == "http://10.1.2.3:8123" and links.days_after_deadline == 30
    assert al.portal_url(settings, "T" * 43) == "http://10.1.2.3:8123/portal/" + "T" * 43
    assert al.reply_address(settings, "T" * 43) == "ncpi-replies+" + "T" * 43 + "@inspectorate.example"
    assert len(al.reply_address(settings, "T" * 43).rpartition("@")[0]) <= 64  # RFC 5321
    public = Settings(data_dir=tmp_path, public_url="https://followup.example/", link_days_after_deadline=45)
    assert al.portal_url(public, "T" * 43) == "https://followup.example/portal/" + "T" * 43
    assert LinkSettings.from_settings(public).days_after_deadline == 45
    monkeypatch.setenv("NCPI_LINK_DAYS_AFTER_DEADLINE", "0")
    with pytest.raises(Exception, match="NCPI_LINK_DAYS_AFTER_DEADLINE"):
        load_settings()
    monkeypatch.delenv("NCPI_LINK_DAYS_AFTER_DEADLINE")
    monkeypatch.setenv("NCPI_REPLY_TO", "a-follow-up-mailbox-name@inspectorate.example")
    with pytest.raises(Exception, match="NCPI_REPLY_TO: .*at most 20"):
        load_settings()


def test_the_worker_and_the_web_app_derive_with_the_same_key(tmp_path):
    from ncpi_workflow.web.server import session_secret

    made = Settings(data_dir=tmp_path / "data")
    key = al.link_key(made)
    assert key == session_secret(made).encode() and len(key) >= 32
    assert (tmp_path / "data" / "web-secret.key").exists()
    assert al.link_key(Settings(data_dir=tmp_path / "data")) == key  # another process: the same file
    given = Settings(data_dir=tmp_path / "other", secret_key="s" * 40)
    assert al.link_key(given) == b"s" * 40 and session_secret(given) == "s" * 40


# --- issuing, resolving, revoking -----------------------------------------------------------------


async def test_resolve_accepts_a_valid_token_and_refuses_every_other_with_its_reason(sessions):
    await _cumbria_records(sessions)
    scope = LinkScope("CUM", CUM, (R2,), ())
    expires = NOW + timedelta(days=30)
    async with sessions.begin() as session:
        portal_id, portal = await issue_link(session, purpose="portal", scope=scope, notification_id=None, expires_at=expires, key=KEY)
        reply_id, reply = await issue_link(session, purpose="reply", scope=scope, notification_id=None, expires_at=expires, key=KEY)
        old_id, old = await issue_link(session, purpose="portal", scope=scope, notification_id=None,
                                       expires_at=NOW - timedelta(seconds=1), key=KEY)
        gone_id, gone = await issue_link(session, purpose="portal", scope=LinkScope("CUM", CUM, (), ("action_plan",)),
                                         notification_id=None, expires_at=expires, key=KEY)
    async with sessions.begin() as session:
        assert await revoke_link(session, gone_id, "HMI Cunningham") is True
        assert await revoke_link(session, gone_id, "HMI Cunningham") is False  # already
        with pytest.raises(LookupError):
            await revoke_link(session, 999_999, "HMI Cunningham")
    async with sessions() as session:
        link = await resolve_link(session, portal, "portal", NOW)
        assert (link.link_id, link.purpose, link.scope, link.notification_id) == (portal_id, "portal", scope, None)
        assert link.expires_at == expires
        assert (await resolve_link(session, reply, "reply", NOW)).link_id == reply_id

        async def reason(token, purpose="portal", now=NOW):
            with pytest.raises(LinkInvalid) as caught:
                await resolve_link(session, token, purpose, now)
            assert not token or token not in str(caught.value)
            return caught.value.reason

        assert await reason(old) == "expired"
        assert await reason(portal, now=expires) == "expired"
        assert await reason(gone) == "revoked"
        assert await reason(reply, "portal") == "unknown" and await reason(portal, "reply") == "unknown"  # wrong purpose
        tampered = portal[:20] + ("A" if portal[20] != "A" else "B") + portal[21:]
        assert await reason(tampered) == "unknown"
        assert await reason(derive_token(KEY, portal_id, "ab" * 16)) == "unknown"  # a forged placeholder's token
        assert await reason(derive_token(b"another key, another deployment!", portal_id, (await session.get(AccessLink, portal_id)).salt)) == "unknown"
        for bad in ("", portal[:-1], portal + "x", portal[:42] + "=", portal[:42] + "é", "../../etc/passwd", None):
            assert await reason(bad) == "malformed"
    async with sessions() as session:
        rows = {r.id: r for r in await session.scalars(select(AccessLink))}
    assert rows[portal_id].token_hash == token_hash(portal) and rows[portal_id].recommendation_ids == [R2]
    assert rows[gone_id].revoked_by == "HMI Cunningham" and rows[gone_id].items == ["action_plan"]
    assert len({r.salt for r in rows.values()}) == 4


async def test_a_use_is_audited_naming_the_link_and_sets_last_used(sessions):
    await _cumbria_records(sessions)
    async with sessions.begin() as session:
        link_id, raw = await issue_link(session, purpose="portal", scope=LinkScope("CUM", CUM, (R2,), ()),
                                        notification_id=None, expires_at=NOW + timedelta(days=3), key=KEY)
    async with sessions.begin() as session:
        link = await resolve_link(session, raw, "portal", NOW)
        await record_link_use(session, link, "progress", "in progress: profile drafted")
        await record_link_use(session, link, "reply", actor="liaison@cumbria.police.example (reply, link #%d)" % link_id)
    async with sessions() as session:
        row = await session.get(AccessLink, link_id)
        audit = list(await session.scalars(select(AuditEvent).where(AuditEvent.entity_type == "access_link").order_by(AuditEvent.id)))
    assert row.last_used_at is not None
    assert [(a.action, a.actor, a.entity_id) for a in audit] == [
        ("link.progress", f"CUM liaison (link #{link_id})", str(link_id)),
        ("link.reply", f"liaison@cumbria.police.example (reply, link #{link_id})", str(link_id)),
    ]
    assert audit[0].detail["recommendation_ids"] == [R2] and audit[0].detail["detail"] == "in progress: profile drafted"
    with pytest.raises(ValueError):
        async with sessions.begin() as session:
            await record_link_use(session, link, "")


# --- every force-facing email, through the real delivery activity and SMTP ------------------------


async def test_force_facing_emails_carry_working_links_scoped_to_their_items_and_no_token_is_stored_or_logged(sessions, caplog):
    await _cumbria_records(sessions)
    ids = {
        "published": await _notify(sessions, "cum/published", "published", {}, FORCE),
        "r2": await _notify(sessions, "cum/r2/reminder", "reminder",
                            {"deadline": "recommendation", "due": "2017-04-26", "working_days": 3, "cycle": 1}, LIAISON, R2),
        "plan": await _notify(sessions, "cum/action_plan/reminder", "reminder",
                              {"deadline": "action_plan", "due": "2017-03-09", "working_days": 10}, LIAISON),
        "inspectors": await _notify(sessions, "cum/revisit_notice", "revisit_notice",
                                    {"deadline": "revisit_by", "due": "2017-07-26", "working_days": 20},
                                    {"to": [INSPECTORS], "roles": ["inspectors"]}),
    }
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.INFO, logger="sqlalchemy.engine")  # every statement and its parameters
    with _capture() as (port, smtp):
        mailer, activities = _delivery(sessions, port)
        for notification_id in ids.values():
            assert await activities.deliver_notification(notification_id) == "sent"
        await mailer.close()
    by_ref = {m.message["X-NCPI-Reference"]: m for m in smtp.messages}
    assert set(by_ref) == {"cum/published", "cum/r2/reminder", "cum/action_plan/reminder", "cum/revisit_notice"}
    inspectors = by_ref["cum/revisit_notice"].message
    assert "/portal/" not in inspectors.get_body(("plain",)).get_content() and inspectors["Reply-To"] == REPLY_TO

    today = local_date(utcnow())
    async with sessions() as session:
        deadlines = {d.key: d.current_due for d in await session.scalars(select(Deadline).where(Deadline.inspection_id == CUM))}
        all_recs = tuple(f"{CUM}-R{i}" for i in range(1, 6))
        expected = {
            "cum/published": (ids["published"], all_recs, ("action_plan", "pcc_response", "immediate_update"), max(deadlines.values())),
            "cum/r2/reminder": (ids["r2"], (R2,), (), deadlines["recommendation:R2"]),
            "cum/action_plan/reminder": (ids["plan"], (), ("action_plan",), deadlines["action_plan"]),
        }
        tokens = []
        for ref, (notification_id, recs, items, latest) in expected.items():
            message = by_ref[ref].message
            portal, reply = _portal_token(message), _reply_token(message)
            tokens += [portal, reply]
            for raw, purpose in ((portal, "portal"), (reply, "reply")):
                link = await resolve_link(session, raw, purpose, utcnow())
                assert link.scope == LinkScope("CUM", CUM, recs, items), ref
                assert link.notification_id == notification_id
                assert link.expires_at == link_expiry(latest, today, 30)
            with pytest.raises(LinkInvalid):
                await resolve_link(session, portal, "reply", utcnow())
            assert f"until {__import__('ncpi_workflow.formatting', fromlist=['x']).long_date(local_date(link.expires_at))}" \
                in " ".join(message.get_body(("plain",)).get_content().split())
        assert len(set(tokens)) == 6
        assert await session.scalar(select(__import__("sqlalchemy").func.count()).select_from(AccessLink)) == 6
        rendered = (await session.get(Notification, ids["published"])).rendered
    # The stored rendering holds placeholders (here broken by quoted-printable soft line breaks), not tokens.
    assert b"ncpiLink" in rendered.replace(b"=\r\n", b"") and rendered.count(b"=\r\n") > 0

    hits = await _scan(sessions, tokens + [token_hash(t) for t in tokens])
    assert all(hits[token_hash(t)] == ["access_links.token_hash"] for t in tokens)  # the scan sees that table
    assert {t: hits[t] for t in tokens} == {t: [] for t in tokens}, "a raw token is stored in the database"
    logged = caplog.text
    assert token_hash(tokens[0]) in logged  # the SQL parameters are in the log ...
    assert not [t for t in tokens if t in logged], "a raw token was logged"  # ... and no token is


async def test_a_resend_sends_the_same_bytes_with_the_same_token(sessions):
    await _cumbria_records(sessions)
    notification_id = await _notify(sessions, "cum/r2/reminder", "reminder",
                                    {"deadline": "recommendation", "due": "2017-04-26", "working_days": 3, "cycle": 1}, LIAISON, R2)
    with _capture() as (port, smtp):
        mailer, activities = _delivery(sessions, port)
        assert await activities.deliver_notification(notification_id) == "sent"
        async with sessions.begin() as session:  # what `ncpi outbox resend` does before delivering again
            (await session.get(Notification, notification_id)).status = "pending"
        _, again = _delivery(sessions, port)  # another worker: the same key, another process
        assert await again.deliver_notification(notification_id) == "sent"
        await mailer.close()
    first, second = smtp.messages
    assert first.data == second.data
    async with sessions() as session:
        assert await session.scalar(select(__import__("sqlalchemy").func.count()).select_from(AccessLink)) == 2
        assert (await resolve_link(session, _portal_token(second.message), "portal", utcnow())).notification_id == notification_id


async def test_a_soft_break_inside_the_placeholder_still_sends_a_working_link(sessions):
    """A public address whose length puts the quoted-printable break of the link's line inside the token."""
    await _cumbria_records(sessions)
    url = "https://followup.inspectorate.example/ab"  # the text line's break falls inside the placeholder
    notification_id = await _notify(sessions, "cum/r2/due_today", "due_today",
                                    {"deadline": "recommendation", "due": "2017-04-26", "working_days": 0, "cycle": 1}, LIAISON, R2)
    with _capture() as (port, smtp):
        mailer, activities = _delivery(sessions, port, _links_settings(web_url=url))
        assert await activities.deliver_notification(notification_id) == "sent"
        await mailer.close()
    async with sessions() as session:
        rendered = (await session.get(Notification, notification_id)).rendered
        [portal] = await session.scalars(select(AccessLink).where(AccessLink.purpose == "portal"))
    placeholder = placeholder_for(portal.id, portal.salt).encode()
    # At least one of its occurrences (text part, HTML part) is split by a soft line break.
    assert rendered.replace(b"=\r\n", b"").count(placeholder) > rendered.count(placeholder)
    [captured] = smtp.messages
    plain = captured.message.get_body(("plain",)).get_content()
    [token] = re.findall(re.escape(url) + r"/portal/([A-Za-z0-9_-]{43})", plain)
    async with sessions() as session:
        assert (await resolve_link(session, token, "portal", utcnow())).link_id == portal.id


async def test_a_delivery_without_a_force_contact_issues_no_link(sessions):
    await _cumbria_records(sessions)
    notification_id = await _notify(sessions, "cum/revisit_opened", "revisit_opened",
                                    {"trigger": "automatic", "deadline": "revisit_by", "due": "2017-07-26"},
                                    {"to": [INSPECTORS], "roles": ["inspectors"]})
    with _capture() as (port, smtp):
        mailer, activities = _delivery(sessions, port)
        assert await activities.deliver_notification(notification_id) == "sent"
        await mailer.close()
    async with sessions() as session:
        assert list(await session.scalars(select(AccessLink))) == []
    assert "/portal/" not in smtp.messages[0].data.decode()


# --- the CLI ----------------------------------------------------------------------------------------


async def test_links_list_shows_no_token_and_revoke_stops_the_link(cli_env):
    from ncpi_workflow import db

    url = cli_env["NCPI_DATABASE_URL"]
    await db.upgrade(url)
    async with db.open_database(url) as sessions:
        await _cumbria_records(sessions)
        notification_id = await _notify(sessions, "cum/r2/reminder", "reminder",
                                        {"deadline": "recommendation", "due": "2017-04-26", "working_days": 3, "cycle": 1},
                                        LIAISON, R2)
        key = al.link_key(Settings(data_dir=cli_env["NCPI_DATA_DIR"]))
        with _capture() as (port, smtp):
            mailer, activities = _delivery(sessions, port, _links_settings(key=key))
            assert await activities.deliver_notification(notification_id) == "sent"
            await mailer.close()
        portal = _portal_token(smtp.messages[0].message)
        reply = _reply_token(smtp.messages[0].message)
        async with sessions() as session:
            rows = list(await session.scalars(select(AccessLink).order_by(AccessLink.id)))

        listed = await asyncio.to_thread(run_ncpi, "links", "list", R2, env=cli_env)
        assert listed.returncode == 0, listed.stderr
        lines = listed.stdout.splitlines()
        assert len(lines) == 2 and [line.split()[:3] for line in lines] == [[str(rows[0].id), "portal", "active"],
                                                                            [str(rows[1].id), "reply", "active"]]
        assert "last used -" in lines[0] and f"notification {notification_id}" in lines[0] and "R2" in lines[0]
        as_json = await asyncio.to_thread(run_ncpi, "links", "list", CUM, "--json", env=cli_env)
        records = json.loads(as_json.stdout)
        assert [r["id"] for r in records] == [r.id for r in rows] and records[0]["recommendation_ids"] == [R2]
        for output in (listed.stdout, as_json.stdout):
            for secret in (portal, reply, rows[0].token_hash, rows[0].salt):
                assert secret not in output
        assert (await asyncio.to_thread(run_ncpi, "links", "list", f"{CUM}-R1", env=cli_env)).stdout.strip() == f"no links for {CUM}-R1"

        revoked = await asyncio.to_thread(run_ncpi, "links", "revoke", str(rows[0].id), "--by", "HMI Cunningham", env=cli_env)
        assert revoked.returncode == 0 and revoked.stdout.strip() == f"link {rows[0].id} revoked", revoked.stderr
        async with sessions() as session:
            with pytest.raises(LinkInvalid) as caught:
                await resolve_link(session, portal, "portal", utcnow())
            assert caught.value.reason == "revoked"
            assert (await resolve_link(session, reply, "reply", utcnow())).link_id == rows[1].id  # the other stays
            audit = await session.scalar(select(AuditEvent).where(AuditEvent.action == "link.revoked"))
            assert audit.actor == "HMI Cunningham" and audit.entity_id == str(rows[0].id)
        again = await asyncio.to_thread(run_ncpi, "links", "list", R2, env=cli_env)
        assert again.stdout.splitlines()[0].split()[2:5] == ["revoked", "by", "HMI"]
        twice = await asyncio.to_thread(run_ncpi, "links", "revoke", str(rows[0].id), "--by", "HMI Cunningham", env=cli_env)
        assert twice.returncode == 0 and "already revoked" in twice.stdout

        for args, message in (
            (("links", "revoke", "999999", "--by", "HMI Cunningham"), "no link 999999"),
            (("links", "revoke", "abc", "--by", "HMI Cunningham"), "is not a link id"),
            (("links", "revoke", str(rows[1].id), "--by", " "), "--by must not be empty"),
            (("links", "list", "not-an-id"), "is not an inspection ID"),
            (("links", "list", "WAR-2017-03-09"), "no inspection or recommendation WAR-2017-03-09"),
        ):
            refused = await asyncio.to_thread(run_ncpi, *args, env=cli_env)
            assert refused.returncode != 0 and len(refused.stderr.splitlines()) == 1 and message in refused.stderr, refused.stderr


# --- the real worker ----------------------------------------------------------------------------------


async def test_the_worker_issues_links_for_the_published_notice(time_skipping_env, tmp_path):
    """Through `ncpi worker`'s own wiring (service/worker.py): the key from DATA_DIR, the web app's address."""
    from tests.lifecycle_support import harness, write_report
    from tests.test_email_delivery import settled
    from tests.test_lifecycle_timeskipping import eventually, start

    report = write_report(tmp_path, "WAR", date(2017, 3, 9), [("R1", "within_three_months")])
    async with harness(time_skipping_env, tmp_path, web_port=8765) as h:
        await start(h, report, date(2017, 3, 9))
        await eventually(lambda: settled(h, 1))
        [message] = [m.message for m in h.smtp.messages if m.message["X-NCPI-Reference"].endswith("/published")]
        text_part = message.get_body(("plain",)).get_content()
        [token] = re.findall(r"http://127\.0\.0\.1:8765/portal/([A-Za-z0-9_-]{43})", text_part)
        reply = al.token_from_address(str(message["Reply-To"]))
        async with h.sessions() as session:
            link = await resolve_link(session, token, "portal", utcnow())
            assert await resolve_link(session, reply, "reply", utcnow())
        assert link.scope.force_code == "WAR" and link.scope.recommendation_ids == ("WAR-2017-03-09-R1",)
        assert set(link.scope.items) == {"action_plan", "pcc_response"}
        key = al.link_key(h.settings)  # the web app's key, from the same DATA_DIR
        assert (tmp_path / "data" / "web-secret.key").exists()
        async with h.sessions() as session:
            row = await session.get(AccessLink, link.link_id)
        assert derive_token(key, row.id, row.salt) == token


async def test_expiry_follows_the_latest_deadline_of_exactly_the_items_in_scope(sessions):
    await _cumbria_records(sessions)
    today = date(2017, 2, 1)
    r2 = await _notify(sessions, "cum/r2/reminder", "reminder",
                       {"deadline": "recommendation", "due": "2017-04-26", "working_days": 3, "cycle": 1}, LIAISON, R2)
    plan_id = await _notify(sessions, "cum/plan", "reminder", {"deadline": "action_plan", "due": "2017-03-09"}, LIAISON)
    published = await _notify(sessions, "cum/published", "published", {}, FORCE)
    later = await _notify(sessions, "cum/r2/further", "further_follow_up", {"due": "2017-10-20", "cycle": 2}, LIAISON, R2)
    async with sessions() as session:
        plans = {name: await al.plan_links(session, nid, _links_settings(), today=today)
                 for name, nid in (("r2", r2), ("plan", plan_id), ("published", published), ("later", later))}
        by_policy = await al.policy_expiry(session, LinkScope("CUM", CUM, (), ("pcc_response",)), 30, today=today)
    assert local_date(plans["r2"].expires_at) == date(2017, 5, 26)  # R2 due 26 April
    assert local_date(plans["plan"].expires_at) == date(2017, 4, 8)  # the action plan, 9 March
    assert local_date(plans["published"].expires_at) == date(2017, 8, 25)  # the latest of the report: 26 July
    assert local_date(plans["later"].expires_at) == date(2017, 11, 19)  # the new deadline the email names
    assert local_date(by_policy) == date(2017, 4, 22)  # the PCC's response, 23 March
    assert plans["plan"].scope.items == ("action_plan",) and plans["plan"].scope.recommendation_ids == ()
    assert plans["r2"].portal_url.startswith(f"{PUBLIC_URL}/portal/ncpiLink0000000000000")  # provisional until issued
    assert plans["r2"].reply_to.startswith("ncpi-replies+ncpiLink0000000000000")
    async with sessions() as session:
        assert await al.plan_links(session, r2, _links_settings(reply_to=None), today=today) is not None
        assert [p.purpose for p in (await al.plan_links(session, r2, _links_settings(reply_to=None))).planned] == ["portal"]
