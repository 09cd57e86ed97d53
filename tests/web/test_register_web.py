"""The public register in the web app (/register): no sign-in, read-only, filterable by force, status
and theme, one page per recommendation with its dated trail, the national view by theme; the
publication rule on every page; axe-clean in Chromium (and the static export's pages too)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from ncpi_workflow import db
from ncpi_workflow.register import export_register, register_csv, register_json
from ncpi_workflow.web.app import create_app
from ncpi_workflow.web.server import running_web
from tests.postgres import free_port
from tests.test_register import PLANTED, PUBLIC_COMMENT, TODAY, document, seed_register
from tests.web.conftest import add_user, browser, web_settings
from tests.web.test_web_browser import CHROMIUM, Pages, playwright_ready  # noqa: F401  (a fixture)


@pytest.fixture
async def world(tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path / 'web.db'}"
    await db.upgrade(url)
    settings = web_settings(url, tmp_path)
    async with db.open_database(url) as sessions:
        ids = await seed_register(sessions, tmp_path)
        app = create_app(settings, sessions=sessions, today=lambda: TODAY)
        yield {"app": app, "ids": ids, "sessions": sessions, "settings": settings}
        await app.state.services.close()


def rows_of(html: str) -> list[str]:
    return re.findall(r'href="/register/([A-Z]{3}-[0-9-]+-R[0-9]+)"', html)


async def test_the_register_is_public_filterable_and_leaves_out_what_the_rule_excludes(world):
    ids = world["ids"]
    b = browser(world["app"])
    try:
        index = await b.get("/register")
        assert index.status_code == 200 and "set-cookie" not in index.headers
        assert set(rows_of(index.text)) == {ids["r1"], ids["r2"], ids["r3"], ids["ken_r1"]}
        assert "4 recommendations" in index.text
        assert set(rows_of((await b.get("/register?force=KEN")).text)) == {ids["ken_r1"]}
        assert set(rows_of((await b.get("/register?status=no+further+action+needed")).text)) == {ids["r1"]}
        assert set(rows_of((await b.get("/register?theme=missing-children")).text)) == {ids["r2"]}
        assert set(rows_of((await b.get("/register?force=CUM&theme=custody")).text)) == {ids["r1"], ids["r3"]}
        assert '<option value="CUM" selected>' in (await b.get("/register?force=CUM")).text
        for bad in ("/register?force=XXX", "/register?status=done", "/register?theme=nope"):
            assert (await b.get(bad)).status_code == 400
        assert (await b.get(f"/register/{ids['cum']}-R4")).status_code == 404  # restricted
        assert (await b.get("/register/NOPE-R1")).status_code == 404
        assert (await b.post("/register", data={})).status_code == 405  # read-only

        page = (await b.get(f"/register/{ids['r1']}")).text
        trail = re.search(r'<table class="govuk-table" id="trail">.*?</table>', page, re.S).group(0)
        steps = re.findall(r'<time datetime="([0-9-]+)">.*?</time></td>\s*<td class="govuk-table__cell">([^<]+)</td>', trail, re.S)
        assert steps == [("2025-11-03", "Awaiting review"), ("2026-04-01", "Being progressed"),
                         ("2026-05-20", "No further action needed")]
        assert PUBLIC_COMMENT in trail and "Children in custody" in page
        assert '<a class="govuk-link" href="https://www.justiceinspectorates.gov.uk/hmicfrs/cum/">' in page

        themes = (await b.get("/register/themes")).text
        first = re.search(r'<tbody class="govuk-table__body">\s*<tr class="govuk-table__row">(.*?)</tr>', themes, re.S).group(1)
        assert "Children in custody" in first and ">2</td>" in first and "Cumbria Constabulary, Kent Police" in first

        doc = await document(world["sessions"])
        assert (await b.get("/register/register.json")).json() == register_json(doc)
        assert (await b.get("/register/register.csv")).text == register_csv(doc)

        # Every page of the register (followed from its links), and nothing planted on any.
        seen, queue = set(), ["/register"]
        while queue:
            path = queue.pop()
            if path in seen:
                continue
            seen.add(path)
            response = await b.get(path)
            assert response.status_code == 200, path
            for planted in PLANTED:
                assert planted not in response.text, f"{planted!r} on {path}"
            queue.extend(href.replace("&amp;", "&") for href in re.findall(r'href="(/register[^"#]*)"', response.text))
        assert len(seen) >= 8
    finally:
        await b.aclose()


async def test_a_signed_in_inspector_sees_the_same_public_page(world):
    email = await add_user(world["sessions"], "inspector")
    b = browser(world["app"])
    try:
        assert (await b.sign_in(email)).status_code == 303
        page = await b.get(f"/register/{world['ids']['r1']}")
        assert page.status_code == 200 and email not in page.text and "Sign out" not in page.text
    finally:
        await b.aclose()


@pytest.fixture
async def examples_world(tmp_path):
    """The three example reports, with a few steps of their trails (the README's screenshots)."""
    from activities.records import InspectorateAddresses, RecordActivities
    from ncpi_workflow.clocks import calendar_for_report, plan_report
    from ncpi_workflow.lifecycle import DecisionRecord, RegisterRecord
    from ncpi_workflow.policy import load_policy
    from ncpi_workflow.report import load_report
    from ncpi_workflow.store import insert_report, load_reference_forces
    from tests.conftest import ROOT
    from tests.test_register import FORCES, utc

    url = f"sqlite+aiosqlite:///{tmp_path / 'examples.db'}"
    await db.upgrade(url)
    policy = load_policy(ROOT / "config" / "policy.toml")
    async with db.open_database(url) as sessions:
        for name in ("cumbria-2017", "kent-2017", "lancashire-2016"):
            loaded = load_report(ROOT / "examples" / f"{name}.yaml", known_forces=set(FORCES), max_bytes=1 << 20)
            published = loaded.report.published
            timeline = plan_report(published, [(r.ref, r.timeframe) for r in loaded.report.recommendations], policy,
                                   calendar_for_report(policy, published))
            async with sessions.begin() as session:
                await load_reference_forces(session, FORCES)
                await insert_report(session, loaded, timeline, actor="test")
        w = RecordActivities(sessions, InspectorateAddresses("inspectors@example.org", "lead@example.org"))
        steps = [
            ("CUM-2017-01-26-R1", "being progressed", "The force has agreed a rota so that it attends every strategy discussion.", utc(2017, 3, 14)),
            ("CUM-2017-01-26-R3", "will be progressed", "Return interviews are to be commissioned jointly with the local authority.", utc(2017, 5, 2)),
            ("KEN-2017-04-21-R1", "being progressed", "Referrals now reach the hub the same day in two of three districts.", utc(2017, 7, 11)),
            ("LAN-2016-11-29-R2", "being progressed", "Custody sergeants now record when an appropriate adult was called.", utc(2017, 2, 20)),
        ]
        for i, (rec_id, status, comment, at) in enumerate(steps):
            await w.record_register_status(RegisterRecord(f"shot/{i}", rec_id, 1, status, comment, "an inspector", at))
        await w.record_decision(DecisionRecord("shot/d", "CUM-2017-01-26-R1", 1, "achieved", "checked", "an inspector", utc(2017, 9, 5)))
        await w.record_register_status(RegisterRecord("shot/close", "CUM-2017-01-26-R1", 1, "no further action needed",
                                                      "The revisit found police present at every strategy discussion sampled.",
                                                      "an inspector", utc(2017, 9, 5)))
        app = create_app(web_settings(url, tmp_path), sessions=sessions, today=lambda: TODAY)
        yield {"app": app, "sessions": sessions, "settings": web_settings(url, tmp_path)}
        await app.state.services.close()


async def test_register_pages_and_the_export_are_axe_clean_in_chromium(playwright_ready, examples_world, tmp_path):  # noqa: F811
    from playwright.async_api import async_playwright

    world = examples_world
    shots = Pages(Path(os.environ["NCPI_SCREENSHOTS"]) if os.environ.get("NCPI_SCREENSHOTS") else tmp_path / "screenshots")
    settings = world["settings"].model_copy(update={"web_port": free_port()})
    out = tmp_path / "export"
    export_register(await document(world["sessions"]), out)
    r1 = "CUM-2017-01-26-R1"
    async with running_web(settings, world["app"]) as address, async_playwright() as p:
        chromium = await p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        try:
            page = await (await chromium.new_context(base_url=address, viewport={"width": 1280, "height": 900},
                                                     bypass_csp=True)).new_page()
            await page.goto("/register?force=LAN")
            await page.select_option("#theme", "online-abuse")
            await page.click("button:has-text('Apply filters')")
            await page.wait_for_url(re.compile(r".*theme=online-abuse.*"))
            assert await page.locator("#count").inner_text() == "2 recommendations"
            await page.goto("/register")
            assert await page.locator("#count").inner_text() == "16 recommendations"
            await shots.check(page, "register")
            await page.goto(f"/register/{r1}")
            assert await page.locator("#trail tbody tr").count() == 3
            await shots.check(page, "register-recommendation")
            await page.goto("/register/themes")
            await shots.check(page, "register-themes")
            # The static export, from the files alone (file://): styled (the copied stylesheet and fonts load) and clean.
            await page.goto((out / "index.html").as_uri())
            colour = await page.evaluate("getComputedStyle(document.querySelector('.govuk-header')).backgroundColor")
            assert colour != "rgba(0, 0, 0, 0)", "the export's stylesheet did not load"
            await shots.check(page, "register-export")
            await page.click(f"a[href='recommendations/{r1}.html']")
            assert "present at every strategy discussion sampled" in await page.content()
            await shots.check(page, "register-export-recommendation")
        finally:
            await chromium.close()
    assert json.loads((out / "register.json").read_text())["generated_on"] == TODAY.isoformat()


async def test_reviews_and_areas_for_improvement_pages_are_axe_clean_in_chromium(playwright_ready, tmp_path):  # noqa: F811
    """The public register's page of a recommendation with re-inspection findings and its report's areas
    for improvement (the web app's and the static export's), and the inspectors' inspection and
    recommendation pages with the review report, the areas and the action plan's receipt."""
    from datetime import date

    import yaml
    from playwright.async_api import async_playwright

    from activities.records import InspectorateAddresses, RecordActivities
    from ncpi_workflow.clocks import calendar_for_report, plan_report
    from ncpi_workflow.lifecycle import AuditRecord, DeadlineMetRecord
    from ncpi_workflow.models import RevisitFinding, RevisitReport
    from ncpi_workflow.policy import load_policy
    from ncpi_workflow.report import load_report
    from ncpi_workflow.store import insert_report, load_reference_forces
    from tests.conftest import ROOT
    from tests.test_register import FORCES, utc
    from tests.web.conftest import PASSWORD

    document_ = yaml.safe_load((ROOT / "examples" / "cumbria-2017.yaml").read_text())
    document_["areas_for_improvement"] = [
        {"ref": "AFI1", "text": "The force should improve how it records the voice of the child."},
        {"ref": "AFI2", "text": "The force should make sure supervisors review missing-person risk assessments."},
    ]
    path = tmp_path / "cumbria-afi.yaml"
    path.write_text(yaml.safe_dump(document_, sort_keys=False))
    url = f"sqlite+aiosqlite:///{tmp_path / 'reviews.db'}"
    await db.upgrade(url)
    policy = load_policy(ROOT / "config" / "policy.toml")
    findings = "Police now attend every initial strategy discussion; the inspectors sampled 40 cases."
    async with db.open_database(url) as sessions:
        loaded = load_report(path, known_forces=set(FORCES), max_bytes=1 << 20)
        published = loaded.report.published
        timeline = plan_report(published, [(r.ref, r.timeframe) for r in loaded.report.recommendations], policy,
                               calendar_for_report(policy, published))
        async with sessions.begin() as session:
            await load_reference_forces(session, FORCES)
            await insert_report(session, loaded, timeline, actor="test")
            report = RevisitReport(inspection_id="CUM-2017-01-26", cycle=1, title="Cumbria: post-inspection review",
                                   source_url="https://www.justiceinspectorates.gov.uk/hmicfrs/cumbria-pir/",
                                   published_on=date(2017, 9, 21), fieldwork_start=date(2017, 6, 12),
                                   fieldwork_end=date(2017, 6, 16), inspectors=["A. Inspector"], report_sha256="cd" * 32,
                                   recorded_by="hmi.lead")
            report.findings = [RevisitFinding(recommendation_id="CUM-2017-01-26-R1", text=findings)]
            session.add(report)
        w = RecordActivities(sessions, InspectorateAddresses("inspectors@example.org", "lead@example.org"))
        await w.mark_deadline_met(DeadlineMetRecord("CUM-2017-01-26", "action_plan", 1, utc(2017, 3, 6)))
        await w.audit(AuditRecord("axe/plan", "hmi.lead", "action_plan.received", "inspection", "CUM-2017-01-26",
                                  {"note": "", "url": "https://www.cumbria.police.example/action-plan"}))
        settings = web_settings(url, tmp_path).model_copy(update={"web_port": free_port()})
        app = create_app(settings, sessions=sessions, today=lambda: TODAY)
        email = await add_user(sessions, "viewer")
        shots = Pages(Path(os.environ["NCPI_SCREENSHOTS"]) if os.environ.get("NCPI_SCREENSHOTS") else tmp_path / "screenshots")
        out = tmp_path / "export"
        export_register(await document(sessions), out)
        r1 = "CUM-2017-01-26-R1"
        try:
            async with running_web(settings, app) as address, async_playwright() as p:
                chromium = await p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
                try:
                    page = await (await chromium.new_context(base_url=address, viewport={"width": 1280, "height": 900},
                                                             bypass_csp=True)).new_page()
                    await page.goto(f"/register/{r1}")
                    assert findings in await page.locator("#reinspection-findings ~ .govuk-summary-card").first.inner_text()
                    assert "voice of the child" in await page.content()
                    await shots.check(page, "register-reinspection")
                    await page.goto((out / f"recommendations/{r1}.html").as_uri())
                    assert findings in await page.content()
                    await shots.check(page, "register-export-reinspection")
                    await page.goto("/sign-in")
                    await page.fill("#email", email)
                    await page.fill("#password", PASSWORD)
                    await page.click("button:has-text('Sign in')")
                    await page.wait_for_url(re.compile(r".*/$"))
                    await page.goto("/inspections/CUM-2017-01-26")
                    assert await page.locator("#received-items tbody tr").count() == 3  # action plan, PCC response, immediate update
                    assert "Cumbria: post-inspection review" in await page.locator("#review-cycle-1").inner_text()
                    await shots.check(page, "inspection-review")
                    await page.goto(f"/recommendations/{r1}")
                    assert findings in await page.content()
                    await shots.check(page, "recommendation-reinspection")
                finally:
                    await chromium.close()
        finally:
            await app.state.services.close()
