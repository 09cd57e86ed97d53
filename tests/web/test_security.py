"""Sessions, CSRF, the sign-in throttle and password storage, against the real app and database."""

from __future__ import annotations

import re
import sqlite3

import pytest
from argon2 import PasswordHasher
from sqlalchemy import select

from ncpi_workflow import users
from ncpi_workflow.models import AuditEvent
from ncpi_workflow.users import User
from ncpi_workflow.web.app import ABSOLUTE_SESSION_SECONDS, create_app
from ncpi_workflow.web.sessions import COOKIE
from tests.web.conftest import PASSWORD, FakeClock, add_user, browser, days_ago, error_summary, seed_report, web_settings


@pytest.fixture
async def site(sqlite_sessions, tmp_path):
    url, sessions = sqlite_sessions
    inspection = await seed_report(sessions, tmp_path, "CUM", days_ago(30), [("R1", "within_three_months")])
    clock = FakeClock()
    settings = web_settings(url, tmp_path, web_session_minutes=60)
    app = create_app(settings, sessions=sessions, clock=clock)
    opened = []

    def visitor(**kwargs):
        b = browser(app, **kwargs)
        opened.append(b)
        return b

    yield {"app": app, "sessions": sessions, "clock": clock, "visitor": visitor, "rec": f"{inspection}-R1",
           "url": url, "settings": settings, "tmp": tmp_path}
    for b in opened:
        await b.aclose()


def set_cookie(response) -> str:
    return response.headers.get("set-cookie", "")


# ---------------------------------------------------------------- CSRF


async def test_every_post_needs_the_sessions_csrf_token(site):
    email = await add_user(site["sessions"], "inspector")
    b = site["visitor"]()
    assert (await b.sign_in(email)).status_code == 303
    path = f"/recommendations/{site['rec']}/decision"
    form = {"outcome": "achieved", "rationale": "Profile in use"}

    missing = await b.post(path, form, token=False)
    wrong = await b.post(path, form, token="not-the-token")
    other = site["visitor"]()
    assert (await other.sign_in(await add_user(site["sessions"], "inspector"))).status_code == 303
    someone_elses = await b.post(path, form, token=await other.token("/"))
    for refused in (missing, wrong, someone_elses):
        assert refused.status_code == 403
        assert "This form has expired" in refused.text
    # With the right token the same request is attempted (and refused by Temporal's absence, not by CSRF).
    attempted = await b.post(path, form)
    assert attempted.status_code == 400 and "Cannot reach Temporal" in attempted.text

    # Signing out needs it too: without it, the user stays signed in.
    assert (await b.post("/sign-out", token=False)).status_code == 403
    assert (await b.get("/")).status_code == 200
    out = await b.post("/sign-out")
    assert out.status_code == 303 and out.headers["location"] == "/sign-in"
    assert (await b.get("/")).status_code == 303


async def test_signing_in_needs_the_csrf_token(site):
    email = await add_user(site["sessions"], "viewer")
    b = site["visitor"]()
    refused = await b.post("/sign-in", {"email": email, "password": PASSWORD}, token=False)
    assert refused.status_code == 403
    assert (await b.get("/")).status_code == 303  # not signed in
    assert (await b.sign_in(email)).status_code == 303


async def test_the_csrf_token_changes_when_signing_in(site):
    email = await add_user(site["sessions"], "viewer")
    b = site["visitor"]()
    before = await b.token("/sign-in")
    assert (await b.sign_in(email)).status_code == 303
    after = await b.token("/")
    assert before != after
    assert (await b.post("/sign-out", token=before)).status_code == 403


# ---------------------------------------------------------------- sessions


async def test_cookie_is_signed_httponly_samesite_and_secure_over_https(site):
    email = await add_user(site["sessions"], "viewer")
    plain = site["visitor"]()
    response = await plain.sign_in(email)
    cookie = set_cookie(response)
    assert cookie.startswith(f"{COOKIE}=") and "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert "Secure" not in cookie
    assert f"Max-Age={ABSOLUTE_SESSION_SECONDS}" in cookie

    tls = site["visitor"](base_url="https://testserver")
    assert "Secure" in set_cookie(await tls.sign_in(email))

    behind_proxy = create_app(web_settings(site["url"], site["tmp"], web_secure_cookies=True), sessions=site["sessions"])
    proxied = browser(behind_proxy)
    try:
        assert "Secure" in set_cookie(await proxied.sign_in(email))
    finally:
        await proxied.aclose()


async def test_a_tampered_or_foreign_cookie_is_no_session(site):
    email = await add_user(site["sessions"], "admin")
    b = site["visitor"]()
    await b.sign_in(email)
    value = b.http.cookies[COOKIE]
    payload, _, signature = value.rpartition(".")
    forged = site["visitor"]()
    forged.http.cookies.set(COOKIE, payload + "." + ("A" if signature[0] != "A" else "B") + signature[1:])
    assert (await forged.get("/")).status_code == 303
    # Signed with another key: no session either.
    other = create_app(web_settings(site["url"], site["tmp"], secret_key="another-secret-key-of-thirty-two-or-more"),
                       sessions=site["sessions"])
    stranger = browser(other)
    try:
        stranger.http.cookies.set(COOKIE, value)
        assert (await stranger.get("/")).status_code == 303
    finally:
        await stranger.aclose()


async def test_a_session_expires_when_idle_and_after_twelve_hours(site):
    clock = site["clock"]
    email = await add_user(site["sessions"], "viewer")
    b = site["visitor"]()
    await b.sign_in(email)
    assert (await b.get("/")).status_code == 200
    # In use: each request within the idle limit (60 minutes) keeps it.
    for _ in range(5):
        clock.advance(59 * 60)
        assert (await b.get("/")).status_code == 200
    # Idle for more than 60 minutes: ended, and the sign-in page says why.
    clock.advance(61 * 60)
    expired = await b.get("/forces/CUM")
    assert expired.status_code == 303 and expired.headers["location"].startswith("/sign-in?next=%2Fforces%2FCUM")
    await b.sign_in(email)
    assert (await b.get("/")).status_code == 200
    clock.advance(61 * 60)
    page = await b.get("/sign-in")
    assert page.status_code == 200 and "Your session ended" in page.text

    # However active, 12 hours after signing in it ends.
    await b.sign_in(email)
    for _ in range(12):
        clock.advance(59 * 60)
        assert (await b.get("/")).status_code == 200
    clock.advance(59 * 60)
    assert (await b.get("/")).status_code == 303


async def test_disabling_a_user_ends_their_session(site):
    email = await add_user(site["sessions"], "inspector")
    b = site["visitor"]()
    await b.sign_in(email)
    assert (await b.get("/")).status_code == 200
    await users.disable_user(site["sessions"], email, by="test")
    assert (await b.get("/")).status_code == 303
    refused = await site["visitor"]().sign_in(email)
    assert refused.status_code == 400
    assert error_summary(refused.text)[0][0] == "#email"


async def test_no_open_redirect_after_signing_in(site):
    email = await add_user(site["sessions"], "viewer")
    for target, expected in (("//evil.example/x", "/"), ("https://evil.example", "/"), ("/\\evil", "/"),
                             ("/forces/CUM", "/forces/CUM")):
        b = site["visitor"]()
        response = await b.sign_in(email, next=target)
        assert response.status_code == 303 and response.headers["location"] == expected


async def test_pages_carry_security_headers(site):
    email = await add_user(site["sessions"], "viewer")
    b = site["visitor"]()
    await b.sign_in(email)
    page = await b.get("/")
    csp = page.headers["content-security-policy"]
    nonce = re.search(r"'nonce-([^']+)'", csp).group(1)
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "form-action 'self'" in csp
    assert f'nonce="{nonce}"' in page.text  # the template's one inline script carries it
    assert page.headers["x-frame-options"] == "DENY" and page.headers["cache-control"] == "no-store"


# ---------------------------------------------------------------- the sign-in throttle


async def test_failed_sign_ins_are_limited_per_email_and_client(site):
    clock = site["clock"]
    email = await add_user(site["sessions"], "inspector")
    b = site["visitor"](client=("10.0.0.5", 40000))
    for _ in range(5):
        wrong = await b.sign_in(email, "wrong password here")
        assert wrong.status_code == 400
        assert "Enter a correct email address and password" in wrong.text
    # The sixth, even with the right password, is refused for 15 minutes.
    limited = await b.sign_in(email)
    assert limited.status_code == 429
    assert "Too many failed sign-in attempts" in limited.text and "Try again in 15 minutes" in limited.text
    assert 0 < int(limited.headers["retry-after"]) <= 15 * 60
    assert error_summary(limited.text)[0][0] == "#email"
    assert (await b.sign_in(email.upper())).status_code == 429  # the same email in capitals
    # Another client, or another email from this client, is not held back.
    assert (await site["visitor"](client=("10.0.0.6", 40000)).sign_in(email)).status_code == 303
    other_email = await add_user(site["sessions"], "viewer")
    assert (await b.sign_in(other_email, "wrong password here")).status_code == 400
    # After the window the right password works, and clears the count.
    clock.advance(14 * 60)
    assert (await b.sign_in(email)).status_code == 429
    clock.advance(61)
    fresh = site["visitor"](client=("10.0.0.5", 40000))
    assert (await fresh.sign_in(email)).status_code == 303


# ---------------------------------------------------------------- passwords


async def test_passwords_are_stored_as_argon2id_hashes_only(site):
    email = await add_user(site["sessions"], "admin", "hash.check@inspectorate.example")
    async with site["sessions"]() as session:
        user = await session.scalar(select(User).where(User.email == email))
        audit = list(await session.scalars(select(AuditEvent).where(AuditEvent.entity_type == "user")))
    assert user.password_hash.startswith("$argon2id$v=19$")
    assert PasswordHasher().verify(user.password_hash, PASSWORD)
    assert PASSWORD not in user.password_hash
    assert audit and all(PASSWORD not in str(a.detail) for a in audit)
    database_file = site["url"].split("///", 1)[1]
    with sqlite3.connect(database_file) as raw:
        raw.execute("PRAGMA wal_checkpoint(FULL)")
    for path in (database_file, database_file + "-wal"):
        try:
            content = open(path, "rb").read()
        except FileNotFoundError:
            continue
        assert PASSWORD.encode() not in content
    assert await users.authenticate(site["sessions"], email, PASSWORD) is not None
    assert await users.authenticate(site["sessions"], email, PASSWORD + "x") is None
    assert await users.authenticate(site["sessions"], "nobody@inspectorate.example", PASSWORD) is None


async def test_users_refuse_bad_input(site):
    from ncpi_workflow.errors import UserError

    sessions = site["sessions"]
    for email, role, password, reason in (
        ("not-an-email", "viewer", PASSWORD, "is not an email address"),
        ("a@inspectorate.example", "boss", PASSWORD, "is not one of: viewer, inspector, admin"),
        ("a@inspectorate.example", "viewer", "", "the password is empty"),
        ("a@inspectorate.example", "viewer", "   ", "the password is empty"),
        ("a@inspectorate.example", "viewer", "short", "too short"),
    ):
        with pytest.raises(UserError, match=reason):
            await users.add_user(sessions, email, role, password)
    await users.add_user(sessions, "Twice@Inspectorate.example", "viewer", PASSWORD)
    with pytest.raises(UserError, match="already exists"):
        await users.add_user(sessions, "twice@inspectorate.example", "admin", PASSWORD)
