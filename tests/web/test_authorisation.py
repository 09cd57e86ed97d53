"""The authorisation matrix: every route times every kind of visitor, each with its expected answer.

Visitors: anonymous; a viewer; an inspector; an admin; a user whose account was disabled after
signing in. Pages send anonymous (and disabled) visitors to /sign-in with a 303; a role that may
not do something gets 403; a role that may act has its action attempted (Temporal is a closed
port here, so an action that needs it is refused with the reason, as a GOV.UK error summary, and
a 400). The same rules hold for the evidence download, the outbox's re-send, publishing and users.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from urllib.parse import parse_qs, urlsplit

import pytest

from ncpi_workflow import db, users
from ncpi_workflow.evidence_files import keep_file
from ncpi_workflow.models import Evidence, Notification
from ncpi_workflow.web.app import create_app
from tests.lifecycle_support import write_report
from tests.web.conftest import FakeClock, add_user, browser, days_ago, error_summary, seed_report, web_settings

VISITORS = ("anonymous", "disabled", "viewer", "inspector", "admin")


@pytest.fixture(scope="module")
async def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("authz")
    url = f"sqlite+aiosqlite:///{tmp / 'web.db'}"
    from tests.conftest import migrate

    await migrate(url)  # db.upgrade: a new SQLite file is a copy of the session's migrated template
    settings = web_settings(url, tmp)
    async with db.open_database(url) as sessions:
        inspection = await seed_report(sessions, tmp, "CUM", days_ago(30), [("R1", "within_three_months"), ("R2", "immediately")])
        rec = f"{inspection}-R1"
        source = tmp / "plan.txt"
        source.write_text("the force's action plan")
        kept = keep_file(source, settings.evidence_dir, settings.evidence_max_bytes)
        async with sessions.begin() as session:
            evidence = Evidence(recommendation_id=rec, filename="plan.txt", content_type="text/plain", size_bytes=kept.size_bytes,
                                sha256=kept.sha256, storage_path=str(kept.storage_path), submitted_by="liaison")
            failed = Notification(idempotency_key="test/failed", kind="reminder", inspection_id=inspection, recommendation_id=rec,
                                  recipients={"roles": ["liaison_officer"], "to": ["old@cumbria.example"]}, subject="Reminder",
                                  status="failed", attempts=3, last_error="550 no such mailbox",
                                  scheduled_for=datetime.now(timezone.utc))
            session.add_all([evidence, failed])
        ids = {"inspection": inspection, "rec": rec, "evidence": evidence.id, "notification": failed.id}
        emails = {role: await add_user(sessions, role) for role in ("viewer", "inspector", "admin")}
        emails["disabled"] = await add_user(sessions, "inspector")
        victim = await add_user(sessions, "viewer")
        ids["victim"] = next(u.id for u in await users.list_users(sessions) if u.email == victim)

        app = create_app(settings, sessions=sessions, clock=FakeClock())
        visitors = {}
        for name in VISITORS:
            b = browser(app)
            if name != "anonymous":
                response = await b.sign_in(emails[name])
                assert response.status_code == 303, response.text
            visitors[name] = b
        await users.disable_user(sessions, emails["disabled"], by="test")
        report = write_report(tmp, "DUR", days_ago(3), [("R1", "within_six_months")], name="durham.yaml").read_bytes()
        yield {"app": app, "visitors": visitors, "ids": ids, "sessions": sessions, "report": report, "settings": settings}
        for b in visitors.values():
            await b.aclose()
        await app.state.services.close()


# (route, kind): kind "read" = any signed-in user; "admin-read" = admins only; "act" = inspector or admin;
# "admin-act" = admins only.
PAGES = [
    ("/", "read"),
    ("/?programme=NCPI&phase=in_progress&sort=overdue&order=desc", "read"),
    ("/forces/CUM", "read"),
    ("/inspections/{inspection}", "read"),
    ("/recommendations/{rec}", "read"),
    ("/outbox", "read"),
    ("/outbox?status=failed&kind=reminder&force=CUM", "read"),
    ("/evidence/{evidence}", "read"),
    ("/inbox", "read"),
    ("/inbox?show=all", "read"),
    ("/publish", "admin-read"),
    ("/users", "admin-read"),
    ("/metrics", "read"),  # the figures (ncpi_workflow/web/routes/metrics.py): viewers may read
    ("/metrics?from=2017-01-01&to=2030-12-31&force=CUM&theme=custody", "read"),
    # The public register: everyone, signed in or not (ncpi_workflow/web/routes/register.py).
    ("/register", "public"),
    ("/register?force=CUM&status=awaiting+review&theme=custody", "public"),
    ("/register/{rec}", "public"),
    ("/register/themes", "public"),
    ("/register/register.json", "public"),
    ("/register/register.csv", "public"),
]

ACTIONS = [
    ("/inspections/{inspection}/revisit", {}, "act"),
    ("/inspections/{inspection}/deliveries", {"item": "action_plan", "note": "by email"}, "act"),
    ("/inspections/{inspection}/deadlines", {"deadline": "action_plan", "new_due-day": "1", "new_due-month": "3",
                                             "new_due-year": "2031", "reason": "force asked"}, "act"),
    ("/recommendations/{rec}/decision", {"outcome": "achieved", "rationale": "Profile in use"}, "act"),
    ("/recommendations/{rec}/reopen", {"reason": "new evidence"}, "act"),
    ("/recommendations/{rec}/withdraw", {"reason": "superseded by law"}, "act"),
    ("/recommendations/{rec}/deadline", {"deadline": "recommendation", "new_due-day": "2", "new_due-month": "3",
                                         "new_due-year": "2031", "reason": "force asked"}, "act"),
    ("/recommendations/{rec}/register", {"status": "being progressed", "comment": "Work has started."}, "act"),
    ("/outbox/{notification}/resend", {}, "act"),
    ("/publish", "upload", "admin-act"),
    ("/users", "new-user", "admin-act"),
    ("/users/{victim}/disable", {}, "admin-act"),
]

ALLOWED = {"read": {"viewer", "inspector", "admin"}, "admin-read": {"admin"}, "act": {"inspector", "admin"},
           "admin-act": {"admin"}}


def expect_sign_in(response, path: str | None = None) -> None:
    assert response.status_code == 303, response.text[:400]
    location = urlsplit(response.headers["location"])
    assert location.path == "/sign-in"
    if path is not None and path != "/":
        assert parse_qs(location.query)["next"] == [path]


@pytest.mark.parametrize("visitor", VISITORS)
@pytest.mark.parametrize("route,kind", PAGES, ids=[p for p, _ in PAGES])
async def test_pages(world, visitor, route, kind):
    path = route.format(**world["ids"])
    response = await world["visitors"][visitor].get(path)
    if kind == "public":
        assert response.status_code == 200, response.text[:400]
        assert "Sign out" not in response.text and "/sign-in" not in response.headers.get("location", "")
        return
    if visitor in ("anonymous", "disabled"):
        expect_sign_in(response, path)
    elif visitor in ALLOWED[kind]:
        assert response.status_code == 200, response.text[:400]
    else:
        assert response.status_code == 403
        assert "You cannot do this" in response.text


_new_users = iter(range(1, 1000))


@pytest.mark.parametrize("visitor", VISITORS)
@pytest.mark.parametrize("route,form,kind", ACTIONS, ids=[a for a, _, _ in ACTIONS])
async def test_actions(world, visitor, route, form, kind):
    path = route.format(**world["ids"])
    b = world["visitors"][visitor]
    files = None
    if form == "upload":
        form, files = {}, {"report": ("durham.yaml", world["report"], "application/yaml")}
    elif form == "new-user":
        form = {"email": f"new{next(_new_users)}@inspectorate.example", "role": "viewer", "password": "a long enough password"}
    # A valid CSRF token where the visitor has a session, so that only their role decides.
    token = True if visitor not in ("anonymous", "disabled") else (await b.token("/sign-in"))
    response = await b.post(path, form, token=token, files=files)
    if visitor in ("anonymous", "disabled"):
        expect_sign_in(response)
        return
    if visitor not in ALLOWED[kind]:
        assert response.status_code == 403, response.text[:400]
        assert "You cannot do this" in response.text
        return
    if route.startswith("/users"):
        assert response.status_code == 303 and response.headers["location"] == "/users"
        return
    # Attempted: Temporal is unreachable, so the refusal says so in a GOV.UK error summary.
    assert response.status_code == 400, response.text[:400]
    [(href, text)] = error_summary(response.text)
    assert text.startswith("Cannot reach Temporal at ")
    field_id = href.removeprefix("#")
    assert f'id="{field_id}"' in response.text, f"the error summary links to {href}, which is not on the page"


async def test_health_and_sign_in_page_for_everyone(world):
    for name, b in world["visitors"].items():
        health = await b.get("/healthz")
        assert health.status_code == 200 and health.text == "ok\n"
        page = await b.get("/sign-in")
        if name in ("anonymous", "disabled"):
            assert page.status_code == 200 and 'name="email"' in page.text and 'name="password"' in page.text
        else:
            assert page.status_code == 303 and page.headers["location"] == "/"


async def test_what_each_role_is_shown(world):
    """Forms and links follow the same rules: a viewer sees no action, an inspector no admin links."""
    rec = world["ids"]["rec"]
    pages = {name: (await world["visitors"][name].get(f"/recommendations/{rec}")).text for name in ("viewer", "inspector", "admin")}
    assert "/decision" not in pages["viewer"] and "/withdraw" not in pages["viewer"]
    assert "/decision" in pages["inspector"] and "/withdraw" in pages["inspector"]
    assert 'href="/publish"' not in pages["inspector"] and 'href="/users"' not in pages["inspector"]
    assert 'href="/publish"' in pages["admin"] and 'href="/users"' in pages["admin"]
    outbox = {name: (await world["visitors"][name].get("/outbox")).text for name in ("viewer", "inspector")}
    assert "/resend" not in outbox["viewer"] and "/resend" in outbox["inspector"]


async def test_the_evidence_download_is_the_stored_file(world):
    response = await world["visitors"]["viewer"].get(f"/evidence/{world['ids']['evidence']}")
    assert response.content == b"the force's action plan"
    assert hashlib.sha256(response.content).hexdigest() == hashlib.sha256(b"the force's action plan").hexdigest()
    assert 'attachment; filename="plan.txt"' in response.headers["content-disposition"]
    assert (await world["visitors"]["viewer"].get("/evidence/99999")).status_code == 404
