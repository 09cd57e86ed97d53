"""The force portal's authorisation matrix and bad input.

Every portal route times every token state, each with its expected answer: valid, expired,
revoked, another force's, another item's, tampered, of another purpose (a reply token), missing. A
token that opens nothing, and an item outside a link, get the same 404 page, which names no force;
nothing is stored. With Temporal a closed port, an action through a valid link is attempted and
refused with the reason (400, a GOV.UK error summary); the end-to-end test below runs the real dev
server. Bad input is refused with a clear message and nothing stored: a 30 MB file, an executable
renamed .pdf, a zip bomb, a file name with ../ or a line break, and HTML in a progress note is
escaped everywhere it is shown.
"""

from __future__ import annotations

import hashlib
import html
import io
import re
import zipfile
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select

from ncpi_workflow import db
from ncpi_workflow.access_links import LinkScope, issue_link, link_key, revoke_link
from ncpi_workflow.models import AccessLink, AuditEvent, Evidence, Notification, ProgressUpdate
from ncpi_workflow.web.app import create_app
from ncpi_workflow.web.routes.portal import csrf_for
from tests.web.conftest import add_user, browser, days_ago, error_summary, seed_report, web_settings

PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\n%%EOF\n"
EXE = b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff\x00\x00" + b"\x00" * 44 + b"\x80\x00\x00\x00PE\x00\x00" + b"\x00" * 200


def zip_bomb() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("[Content_Types].xml", "<Types/>")
        z.writestr("word/document.xml", "<w:document/>")
        z.writestr("word/media/zeros.bin", b"\x00" * (40 * 1024 * 1024))
    return buffer.getvalue()


def tamper(token: str) -> str:
    return token[:-1] + ("A" if token[-1] != "A" else "B")


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
async def world(request, tmp_path_factory):
    """Two forces' reports and links of every state, on SQLite and on PostgreSQL."""
    tmp = tmp_path_factory.mktemp("portal")
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp / 'web.db'}"
    else:
        from tests.conftest import _create_pg_database

        url = await _create_pg_database(request.getfixturevalue("postgres_cluster"))
    await db.upgrade(url)
    settings = web_settings(url, tmp)
    key = link_key(settings)
    async with db.open_database(url) as sessions:
        cum = await seed_report(sessions, tmp, "CUM", days_ago(20), [("R1", "within_three_months"), ("R2", "within_six_months")])
        dur = await seed_report(sessions, tmp, "DUR", days_ago(20), [("R1", "within_three_months")])
        soon, past = datetime.now(timezone.utc) + timedelta(days=30), datetime.now(timezone.utc) - timedelta(minutes=1)
        tokens: dict[str, str] = {}
        ids: dict[str, int] = {}
        async with sessions.begin() as session:
            async def issue(name, scope, expires=soon, purpose="portal"):
                ids[name], tokens[name] = await issue_link(session, purpose=purpose, scope=scope, notification_id=None,
                                                           expires_at=expires, key=key)

            whole = LinkScope("CUM", cum, (f"{cum}-R1", f"{cum}-R2"), ("action_plan", "pcc_response"))
            await issue("valid", whole)
            await issue("expired", whole, expires=past)
            await issue("revoked", whole)
            await issue("other_force", LinkScope("DUR", dur, (f"{dur}-R1",), ()))
            await issue("durham_plan", LinkScope("DUR", dur, (), ("action_plan",)))
            await issue("other_item", LinkScope("CUM", cum, (f"{cum}-R2",), ("pcc_response",)))
            await issue("reply", whole, purpose="reply")
            await issue("r1_only", LinkScope("CUM", cum, (f"{cum}-R1",), ()))
            await issue("plan_only", LinkScope("CUM", cum, (), ("action_plan",)))
            await revoke_link(session, ids["revoked"], by="hmi@inspectorate.example")
        tokens["tampered"] = tamper(tokens["valid"])
        tokens["missing"] = ""
        app = create_app(settings, sessions=sessions)
        visitor = browser(app)
        inspector = browser(app)
        await inspector.sign_in(await add_user(sessions, "inspector"))
        viewer = browser(app)
        await viewer.sign_in(await add_user(sessions, "viewer"))
        yield {"app": app, "settings": settings, "sessions": sessions, "key": key, "tokens": tokens, "ids": ids,
               "cum": cum, "dur": dur, "visitor": visitor, "inspector": inspector, "viewer": viewer, "tmp": tmp}
        for b in (visitor, inspector, viewer):
            await b.aclose()
        await app.state.services.close()


async def stored(world) -> dict:
    """Everything an action could have stored."""
    async with world["sessions"]() as session:
        counts = {m.__name__: await session.scalar(select(func.count()).select_from(m)) for m in (ProgressUpdate, Evidence, Notification)}
        counts["audit (not views)"] = await session.scalar(select(func.count()).select_from(AuditEvent).where(
            AuditEvent.action.notlike("link.portal.viewed")))
    evidence_dir = world["settings"].evidence_dir
    counts["files"] = sorted(str(p) for p in evidence_dir.rglob("*")) if evidence_dir.exists() else []
    return counts


def nothing_of_any_force(html: str, world) -> None:
    for word in ("Cumbria", "Durham", world["cum"], world["dur"], "Recommendation R", "Test inspection"):
        assert word not in html, word
    assert "This link does not work" in html


STATES = ("valid", "expired", "revoked", "other_force", "other_item", "tampered", "reply", "missing")

# (method, route, form): the target is always Cumbria's R1 or its action plan.
ROUTES = [
    ("GET", "/portal/{token}", None),
    ("GET", "/portal/{token}/recommendations/{rec}", None),
    ("GET", "/portal/{token}/items/action_plan", None),
    ("POST", "/portal/{token}/recommendations/{rec}/progress", {"claim": "in_progress", "text": "Training has started."}),
    ("POST", "/portal/{token}/recommendations/{rec}/evidence", "evidence"),
    ("POST", "/portal/{token}/items/action_plan", {"url": "https://www.cumbria.police.uk/action-plan"}),
    ("POST", "/portal/{token}/fresh-link", {"email": "liaison.officer@cumbria.police.example"}),
]


async def call(world, method: str, route: str, form, token: str):
    path = route.format(token=token, rec=f"{world['cum']}-R1")
    b = world["visitor"]
    if method == "GET":
        return await b.get(path)
    files = None
    if form == "evidence":
        form, files = {"description": "The plan"}, {"evidence": ("plan.pdf", PDF, "application/pdf")}
    data = dict(form)
    # The right CSRF token for the token in the address, so that only the token decides.
    data["csrf_token"] = csrf_for(world["key"], token)
    return await b.http.post(path, data=data, files=files)


@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("method,route,form", ROUTES, ids=[f"{m} {r}" for m, r, _ in ROUTES])
async def test_every_route_for_every_token_state(world, state, method, route, form):
    token = world["tokens"][state]
    before = await stored(world)
    response = await call(world, method, route, form, token)
    fresh = route.endswith("/fresh-link")
    if state == "missing":
        assert response.status_code == 404
        assert "Cumbria" not in response.text and world["cum"] not in response.text
        assert await stored(world) == before
        return
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["cache-control"] == "no-store"
    assert "set-cookie" not in response.headers
    if fresh:
        # The same answer whatever the token and address; only a genuine, unrevoked link can send one.
        assert response.status_code == 200, response.text[:300]
        assert "If that address is one the inspectorate has for your force" in response.text
        assert "Cumbria" not in response.text and "Durham" not in response.text
        return
    if state == "valid":
        if method == "GET":
            assert response.status_code == 200 and "Cumbria Constabulary" in response.text
            assert "Durham" not in response.text and world["dur"] not in response.text
        else:
            assert response.status_code == 400, response.text[:300]
            [(href, text)] = error_summary(response.text)
            assert text.startswith("Cannot reach Temporal at ")
            assert f'id="{href[1:]}"' in response.text
            after = await stored(world)
            assert after == before
        return
    if state == "other_force" and route == "/portal/{token}":
        # Durham's own page: nothing of Cumbria.
        assert response.status_code == 200 and "Durham Constabulary" in response.text
        assert "Cumbria" not in response.text and world["cum"] not in response.text
        return
    if state == "other_item" and route == "/portal/{token}":
        # Its own items (R2, the PCC's response): nothing of R1 or the action plan.
        assert response.status_code == 200 and "Recommendation R2" in response.text
        assert f"{world['cum']}-R1" not in response.text and "Recommendation R1." not in response.text
        assert "action_plan" not in response.text
        return
    assert response.status_code == 404, (state, response.status_code, response.text[:300])
    nothing_of_any_force(response.text, world)
    assert await stored(world) == before


async def test_a_link_page_shows_exactly_what_it_covers(world):
    b, cum = world["visitor"], world["cum"]
    r1 = (await b.get(f"/portal/{world['tokens']['r1_only']}")).text
    assert "Recommendation R1" in r1 and "Recommendation R2." not in r1 and "action plan" not in r1.lower().split("history")[0]
    assert f"/portal/{world['tokens']['r1_only']}/recommendations/{cum}-R2" not in r1
    assert (await b.get(f"/portal/{world['tokens']['r1_only']}/recommendations/{cum}-R2")).status_code == 404
    plan = html.unescape((await b.get(f"/portal/{world['tokens']['plan_only']}")).text)
    assert "The force's action plan" in plan and "Recommendation R1" not in plan
    assert (await b.get(f"/portal/{world['tokens']['plan_only']}/items/pcc_response")).status_code == 404
    whole = (await b.get(f"/portal/{world['tokens']['valid']}")).text
    for ref in ("R1", "R2"):
        assert f"/portal/{world['tokens']['valid']}/recommendations/{cum}-{ref}" in whole
    assert "/items/action_plan" in whole and "/items/pcc_response" in whole and "/items/immediate_update" not in whole
    # The inspectorate's own pages are not reachable through it, and the portal sets no session.
    assert (await b.get("/")).status_code == 303


async def test_an_item_address_is_always_the_links_own_report(world):
    """/items/action_plan names no report: through Durham's link it is Durham's action plan, never Cumbria's."""
    page = await world["visitor"].get(f"/portal/{world['tokens']['durham_plan']}/items/action_plan")
    assert page.status_code == 200 and "Durham Constabulary" in page.text
    assert "Cumbria" not in page.text and world["cum"] not in page.text


async def test_forms_need_the_links_csrf_token(world):
    token, rec = world["tokens"]["valid"], f"{world['cum']}-R1"
    before = await stored(world)
    for sent in (None, "", csrf_for(world["key"], world["tokens"]["r1_only"]), csrf_for(b"another key", token)):
        data = {"claim": "in_progress", "text": "Forged."}
        if sent is not None:
            data["csrf_token"] = sent
        response = await world["visitor"].http.post(f"/portal/{token}/recommendations/{rec}/progress", data=data)
        assert response.status_code == 403 and "This form has expired" in response.text
    assert await stored(world) == before


async def test_views_are_recorded_on_the_link(world):
    token = world["tokens"]["r1_only"]
    await world["visitor"].get(f"/portal/{token}")
    async with world["sessions"]() as session:
        row = await session.get(AccessLink, world["ids"]["r1_only"])
        assert row.last_used_at is not None
        actors = set(await session.scalars(select(AuditEvent.actor).where(AuditEvent.entity_type == "access_link",
                                                                         AuditEvent.entity_id == str(row.id))))
    assert actors == {f"CUM liaison (link #{row.id})"}


BAD_UPLOADS = [
    ("a 30 MB file", "big.pdf", PDF + b"0" * (30 * 1024 * 1024), 413, "The file is over the 25 MB limit (26,214,400 bytes)"),
    # Past the limit but within the form's allowance: read only up to one byte past the limit, so the
    # limit is what is reported (not "26,214,401 bytes", the bytes read).
    ("a file just over 25 MB", "big.pdf", PDF + b"0" * (25 * 1024 * 1024), 400,
     "The file is larger than 25 MB, the limit (26,214,400 bytes)"),
    ("an executable renamed .pdf", "plan.pdf", EXE, 400,
     "plan.pdf: the name says a PDF document but the content is a Windows program (EXE)"),
    ("a zip bomb", "plan.docx", None, 400, "plan.docx: a part of the document is compressed"),
    ("a name with ../", "../../etc/plan.pdf", PDF, 400, "the file name ../../etc/plan.pdf points outside its folder ('..')"),
    ("a name with a line break", "plan\n.pdf", PDF, 400, "the file name plan\\n.pdf holds a line break or a control character"),
    ("a name with a carriage return", "plan\r.pdf", PDF, 400, "the file name plan\\r.pdf holds a line break or a control character"),
    ("HTML in a name", "<img src=x onerror=alert(1)>.pdf", EXE, 400, "_img src=x onerror=alert(1)_.pdf: the name says a PDF"),
    ("quotes in a name", "O'Brien & \"co\".pdf", EXE, 400, "O'Brien & _co_.pdf: the name says a PDF"),
]


@pytest.mark.parametrize("what,name,content,status,message", BAD_UPLOADS, ids=[b[0] for b in BAD_UPLOADS])
@pytest.mark.parametrize("form", ["evidence", "action plan"])
async def test_bad_uploads_are_refused_with_a_clear_message_and_nothing_stored(world, what, name, content, status, message, form):
    token, rec = world["tokens"]["valid"], f"{world['cum']}-R1"
    content = zip_bomb() if content is None else content
    before = await stored(world)
    if form == "evidence":
        path, field, data = f"/portal/{token}/recommendations/{rec}/evidence", "evidence", {}
        field_id = "evidence-file"
    else:
        path, field, data = f"/portal/{token}/items/action_plan", "document", {}
        field_id = "item-document"
    data["csrf_token"] = csrf_for(world["key"], token)
    response = await world["visitor"].http.post(path, data=data, files={field: (name, content, "application/pdf")})
    assert response.status_code == status, response.text[:500]
    [(href, text)] = error_summary(response.text)
    assert href == f"#{field_id}" and text.startswith(message), text
    assert f'id="{field_id}"' in response.text
    assert "<img src=x" not in response.text  # escaped, never markup
    assert await stored(world) == before


async def test_form_problems_name_their_field(world):
    token, rec = world["tokens"]["valid"], f"{world['cum']}-R1"
    csrf = csrf_for(world["key"], token)
    b = world["visitor"].http
    before = await stored(world)
    empty = await b.post(f"/portal/{token}/recommendations/{rec}/progress", data={"csrf_token": csrf})
    assert empty.status_code == 400 and error_summary(empty.text) == [
        ("#progress-claim", "Select how far the recommendation has got"),
        ("#progress-text", "Enter a progress note: what has been done, and what is still to do")]
    nothing = await b.post(f"/portal/{token}/recommendations/{rec}/evidence", data={"csrf_token": csrf})
    assert error_summary(nothing.text) == [("#evidence-file", "Select the file of evidence to send")]
    neither = await b.post(f"/portal/{token}/items/action_plan", data={"csrf_token": csrf})
    assert error_summary(neither.text) == [("#item-document", "Choose the document to send, or enter the web address where it is published")]
    both = await b.post(f"/portal/{token}/items/action_plan", data={"csrf_token": csrf, "url": "https://x.example/p"},
                        files={"document": ("plan.pdf", PDF, "application/pdf")})
    assert error_summary(both.text) == [("#item-url", "Send the document or its web address, not both")]
    for bad in ("javascript:alert(1)", "ftp://x.example/plan", "https://", "plan.pdf", "https://x.example/a b"):
        refused = await b.post(f"/portal/{token}/items/action_plan", data={"csrf_token": csrf, "url": bad})
        [(href, text)] = error_summary(refused.text)
        assert href == "#item-url" and text.startswith("Enter the document's address as a web address starting https://"), bad
    email = await b.post(f"/portal/{token}/fresh-link", data={"csrf_token": csrf, "email": "not an address"})
    assert email.status_code == 400 and error_summary(email.text) == [
        ("#fresh-email", "Enter your email address, for example name@force.police.uk")]
    assert await stored(world) == before


async def test_a_fresh_link_goes_only_to_the_forces_own_contacts(world):
    from ncpi_workflow.forces import load_forces
    from tests.conftest import ROOT

    forces = load_forces(ROOT / "config" / "forces.yaml")
    cumbria = forces["CUM"].contacts.liaison_officer.email
    durham = forces["DUR"].contacts.liaison_officer.email
    token = world["tokens"]["r1_only"]
    csrf = csrf_for(world["key"], token)
    b = world["visitor"].http

    async def notifications():
        async with world["sessions"]() as session:
            return list(await session.scalars(select(Notification).where(Notification.kind == "portal_link").order_by(Notification.id)))

    before = await notifications()
    answers = []
    for address in (durham, "attacker@evil.example", "hmi@inspectorate.example"):
        answers.append((await b.post(f"/portal/{token}/fresh-link", data={"csrf_token": csrf, "email": address})).text)
    assert await notifications() == before
    answers.append((await b.post(f"/portal/{token}/fresh-link", data={"csrf_token": csrf, "email": cumbria.upper()})).text)
    [sent] = [n for n in await notifications() if n not in before]
    assert sent.recipients == {"roles": ["liaison_officer"], "to": [cumbria]}
    assert sent.recommendation_id == f"{world['cum']}-R1" and sent.status == "pending"
    # The answer is the same page each time (but for the nonce of its script).
    strip = [re.sub(r'nonce="[^"]+"', "", a) for a in answers]
    assert len(set(strip)) == 1
    # At most five a day from one link: it cannot flood a mailbox.
    for _ in range(6):
        await b.post(f"/portal/{token}/fresh-link", data={"csrf_token": csrf, "email": cumbria})
    assert len([n for n in await notifications() if n not in before]) == 5
    # From an expired link too (that is when one asks); never from a revoked one.
    for state, expect in (("expired", 1), ("revoked", 0), ("tampered", 0)):
        t = world["tokens"][state]
        count = len(await notifications())
        await b.post(f"/portal/{t}/fresh-link", data={"csrf_token": csrf_for(world["key"], t), "email": cumbria})
        assert len(await notifications()) == count + expect, state


async def test_inspectors_see_and_revoke_links(world):
    cum = world["cum"]
    page = (await world["inspector"].get(f"/recommendations/{cum}-R1")).text
    link_id = world["ids"]["r1_only"]
    assert f"#{link_id} (portal)" in page and f'action="/links/{link_id}/revoke"' in page
    assert world["tokens"]["r1_only"] not in page
    viewer_page = (await world["viewer"].get(f"/recommendations/{cum}-R1")).text
    assert f"#{link_id} (portal)" in viewer_page and "/revoke" not in viewer_page
    assert (await world["viewer"].post(f"/links/{link_id}/revoke", {"next": f"/recommendations/{cum}-R1"},
                                       from_page=f"/recommendations/{cum}-R1")).status_code == 403
    inspection_page = (await world["inspector"].get(f"/inspections/{cum}")).text
    assert f'action="/links/{world["ids"]["plan_only"]}/revoke"' in inspection_page
    assert (await world["visitor"].get(f"/portal/{world['tokens']['r1_only']}")).status_code == 200
    response = await world["inspector"].post(f"/links/{link_id}/revoke", {"next": f"/recommendations/{cum}-R1"},
                                             from_page=f"/recommendations/{cum}-R1")
    assert response.status_code == 303 and response.headers["location"] == f"/recommendations/{cum}-R1#links"
    assert "is revoked" in (await world["inspector"].get(response.headers["location"])).text
    gone = await world["visitor"].get(f"/portal/{world['tokens']['r1_only']}")
    assert gone.status_code == 404
    nothing_of_any_force(gone.text, world)
    async with world["sessions"]() as session:
        row = await session.get(AccessLink, link_id)
        assert row.revoked_by == world["inspector"].email
    assert (await world["inspector"].post("/links/999999/revoke", {"next": "/"}, from_page="/")).status_code == 404


# ---------------------------------------------------------------- end to end, with the real dev server and SMTP capture

TOKEN_IN_MAIL = re.compile(r"/portal/([A-Za-z0-9_-]{43})")


def mail_text(message) -> str:
    parts = [p for p in message.walk() if p.get_content_type() == "text/plain"]
    return parts[0].get_content() if parts else ""


async def test_a_force_answers_through_its_link_end_to_end(dev_server_env, tmp_path):
    from ncpi_workflow.app import publishing
    from ncpi_workflow.forces import load_forces
    from ncpi_workflow.models import Recommendation
    from tests.conftest import ROOT
    from tests.lifecycle_support import harness, write_report
    from tests.test_cli_devserver import eventually, projected, publication_date
    from tests.web.conftest import SECRET

    forces = load_forces(ROOT / "config" / "forces.yaml")
    async with harness(dev_server_env, tmp_path, secret_key=SECRET, public_url="http://portal.test") as h:
        published = publication_date()
        cam, bed = f"COL-{published}", f"DEC-{published}"
        for force, recs in (("COL", [("R1", "within_three_months"), ("R2", "immediately")]), ("DEC", [("R1", "within_six_months")])):
            await publishing.publish_file(h.settings, h.client, write_report(tmp_path, force, published, recs), by="test")
        await projected(h, cam, 2)
        await projected(h, bed, 1)

        async def notice(force):
            to = forces[force].contacts.liaison_officer.email
            found = [m for m in h.smtp.messages if m.message["Subject"].startswith("Inspection report published")
                     and to in m.message["To"]]
            return found[0] if found else None

        mail = await eventually(lambda: notice("COL"), timeout=60)
        [cam_token] = set(TOKEN_IN_MAIL.findall(mail_text(mail.message)))
        bed_token = set(TOKEN_IN_MAIL.findall(mail_text((await eventually(lambda: notice("DEC"), timeout=60)).message))).pop()
        key = link_key(h.settings)
        app = create_app(h.settings, sessions=h.sessions, client=h.client)
        force = browser(app)
        inspector = browser(app)
        try:
            await inspector.sign_in(await add_user(h.sessions, "inspector"))
            home = await force.get(f"/portal/{cam_token}")
            assert home.status_code == 200 and f"/portal/{cam_token}/recommendations/{cam}-R1" in home.text
            csrf = csrf_for(key, cam_token)
            async with h.sessions() as session:
                link_id = await session.scalar(select(AccessLink.id).where(AccessLink.notification_id.is_not(None),
                                                                           AccessLink.inspection_id == cam, AccessLink.purpose == "portal"))
            who = f"COL liaison (link #{link_id})"

            # A claim with a progress note holding HTML: recorded as the link's, shown escaped everywhere.
            note = "<script>alert('x')</script> & <b>bold</b> plan"
            done = await force.http.post(f"/portal/{cam_token}/recommendations/{cam}-R1/progress",
                                         data={"csrf_token": csrf, "claim": "in_progress", "text": note})
            assert done.status_code == 303 and done.headers["location"].endswith("?done=progress")
            shown = await force.get(done.headers["location"])
            assert "Your claim and progress note have been recorded" in shown.text

            async def progress():
                async with h.sessions() as session:
                    return list(await session.scalars(select(ProgressUpdate)))
            [update] = await eventually(progress)
            assert (update.recommendation_id, update.claim, update.text, update.submitted_by) == (f"{cam}-R1", "in_progress", note, who)
            pages = [(await force.get(f"/portal/{cam_token}/recommendations/{cam}-R1")).text,
                     (await inspector.get(f"/recommendations/{cam}-R1")).text]
            for page in pages:
                assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt; plan" in page
                assert "<script>alert(" not in page and "<b>bold</b>" not in page

            # Evidence: kept by SHA-256; the same file twice, and a bad one, store nothing more.
            sent = await force.http.post(f"/portal/{cam_token}/recommendations/{cam}-R1/evidence",
                                         data={"csrf_token": csrf, "description": "The plan, signed"},
                                         files={"evidence": ("C:\\fakepath\\plan.pdf", PDF, "application/pdf")})
            assert sent.status_code == 303, sent.text[:2000]
            [evidence] = await eventually(lambda: _rows(h, Evidence))
            assert (evidence.filename, evidence.content_type, evidence.submitted_by) == ("plan.pdf", "application/pdf", who)
            store = sorted(p for p in h.settings.evidence_dir.rglob("*") if p.is_file())
            again = await force.http.post(f"/portal/{cam_token}/recommendations/{cam}-R1/evidence", data={"csrf_token": csrf},
                                          files={"evidence": ("plan-again.pdf", PDF, "application/pdf")})
            assert again.status_code == 400 and "was already submitted for this recommendation" in error_summary(again.text)[0][1]
            bad = await force.http.post(f"/portal/{cam_token}/recommendations/{cam}-R1/evidence", data={"csrf_token": csrf},
                                        files={"evidence": ("tool.pdf", EXE, "application/pdf")})
            assert bad.status_code == 400 and "Windows program" in error_summary(bad.text)[0][1]
            assert sorted(p for p in h.settings.evidence_dir.rglob("*") if p.is_file()) == store
            assert len(await _rows(h, Evidence)) == 1

            # The action plan as a document, the PCC's response as a web address: shown on the inspection page.
            plan = PDF + b"% the force action plan\n"
            r = await force.http.post(f"/portal/{cam_token}/items/action_plan", data={"csrf_token": csrf, "note": "Signed off"},
                                      files={"document": ("action-plan.pdf", plan, "application/pdf")})
            assert r.status_code == 303, r.text[:2000]
            r = await force.http.post(f"/portal/{cam_token}/items/pcc_response",
                                      data={"csrf_token": csrf, "url": "https://www.cumbria-pcc.example/response"})
            assert r.status_code == 303, r.text[:2000]
            twice = await force.http.post(f"/portal/{cam_token}/items/pcc_response",
                                          data={"csrf_token": csrf, "url": "https://www.cumbria-pcc.example/again"})
            assert twice.status_code == 400 and "was already received" in error_summary(twice.text)[0][1]
            page = (await inspector.get(f"/inspections/{cam}")).text
            sha = hashlib.sha256(plan).hexdigest()
            assert f'href="/inspections/{cam}/documents/{sha}"' in page and "https://www.cumbria-pcc.example/response" in page
            download = await inspector.get(f"/inspections/{cam}/documents/{sha}")
            assert download.content == plan and 'filename="action-plan.pdf"' in download.headers["content-disposition"]
            assert (await force.get(f"/inspections/{cam}/documents/{sha}")).status_code == 303  # inspectors only
            item_page = (await force.get(f"/portal/{cam_token}/items/action_plan")).text
            assert "action-plan.pdf" in item_page and "nothing more is asked of you" in item_page

            # The inspectorate's own notes stay internal: its note on a receipt it recorded, the reason
            # and author of a moved deadline.
            await inspector.post(f"/inspections/{cam}/deliveries", {"item": "immediate_update", "note": "INTERNAL: phoned the DCI"},
                                 from_page=f"/inspections/{cam}")
            moved = await inspector.post(f"/recommendations/{cam}-R1/deadline", {
                "deadline": "recommendation", "reason": "INTERNAL: the chief asked us privately",
                **_working_day_fields(published)}, from_page=f"/recommendations/{cam}-R1")
            assert moved.status_code == 303, error_summary(moved.text)
            immediate = (await force.get(f"/portal/{cam_token}/items/immediate_update")).text
            assert "Recorded by the inspectorate" in immediate and "INTERNAL" not in immediate
            assert inspector.email not in immediate
            rec_page = (await force.get(f"/portal/{cam_token}/recommendations/{cam}-R1")).text
            assert "Deadline moved" in rec_page and "INTERNAL" not in rec_page and inspector.email not in rec_page

            # Force A can never change force B's items, nor B A's.
            for token, target in ((cam_token, f"{bed}-R1"), (bed_token, f"{cam}-R1"), (cam_token, f"{cam}-R3")):
                refused = await force.http.post(f"/portal/{token}/recommendations/{target}/progress",
                                                data={"csrf_token": csrf_for(key, token), "claim": "implemented", "text": "Done"})
                assert refused.status_code == 404
            assert [u.recommendation_id for u in await progress()] == [f"{cam}-R1"]
            async with h.sessions() as session:
                assert (await session.get(Recommendation, f"{bed}-R1")).force_claim is None

            # A fresh link, emailed to the force's own contact, opens the same page.
            liaison = forces["COL"].contacts.liaison_officer.email
            asked = await force.http.post(f"/portal/{cam_token}/fresh-link", data={"csrf_token": csrf, "email": liaison})
            assert asked.status_code == 200 and "Check your email" in asked.text

            async def fresh():
                found = [m for m in h.smtp.messages if m.message["Subject"].startswith("Your link to answer the inspectorate")]
                return found[0] if found else None
            fresh_mail = await eventually(fresh, timeout=60)
            assert fresh_mail.message["To"] == liaison
            [new_token] = set(TOKEN_IN_MAIL.findall(mail_text(fresh_mail.message)))
            assert new_token != cam_token
            reopened = await force.get(f"/portal/{new_token}")
            assert reopened.status_code == 200 and f"/portal/{new_token}/recommendations/{cam}-R1" in reopened.text
        finally:
            await force.aclose()
            await inspector.aclose()
            await app.state.services.close()


async def _rows(h, model):
    async with h.sessions() as session:
        return list(await session.scalars(select(model)))


def _working_day_fields(published) -> dict:
    """A working day well after today, as the three fields of a GOV.UK date input."""
    from ncpi_workflow.clocks import calendar_for_report
    from ncpi_workflow.policy import load_policy
    from tests.conftest import ROOT

    policy = load_policy(ROOT / "config" / "policy.toml")
    day = calendar_for_report(policy, published).add_working_days(datetime.now(timezone.utc).date(), 40)
    return {"new_due-day": str(day.day), "new_due-month": str(day.month), "new_due-year": str(day.year)}


def test_the_delivery_validator_checks_the_document_fields():
    """What `record_delivery`'s validator refuses, whichever front end (portal, email, CLI) asks."""
    from ncpi_workflow.lifecycle import DeliveryRequest, check_delivery

    sha = "a" * 64
    check_delivery(DeliveryRequest("action_plan", "CUM liaison (link #1)"))
    check_delivery(DeliveryRequest("action_plan", "CUM liaison (link #1)", sha256=sha, filename="plan.pdf"))
    check_delivery(DeliveryRequest("pcc_response", "CUM liaison (link #1)", url="https://pcc.example/response"))
    for request, reason in [
        (DeliveryRequest("action_plan", "x", sha256=sha), "a document needs both its file name and its SHA-256"),
        (DeliveryRequest("action_plan", "x", filename="plan.pdf"), "a document needs both its file name and its SHA-256"),
        (DeliveryRequest("action_plan", "x", sha256="A" * 64, filename="plan.pdf"), "64 lowercase hexadecimal"),
        (DeliveryRequest("action_plan", "x", sha256=sha, filename="../plan.pdf"), "must be a file's name, without folders"),
        (DeliveryRequest("action_plan", "x", url="javascript:alert(1)"), "must be a web address starting https://"),
        (DeliveryRequest("action_plan", "x", url="https://a.example/x y"), "must be a web address starting https://"),
        (DeliveryRequest("action_plan", "x", url="https://a.example/" + "x" * 2000), "at most 2,000 are kept"),
    ]:
        with pytest.raises(ValueError, match=re.escape(reason)):
            check_delivery(request)
