"""The web app in a real browser: Debian's Chromium driven by Python Playwright (never `playwright
install`), against a real uvicorn server on a free port, the Temporal dev server, a worker, the
database and the SMTP capture. axe-core (npm, in node_modules/) runs on every page shown: no
WCAG 2.1 A or AA violation is allowed.

Screenshots of each page go to $NCPI_SCREENSHOTS when it is set (`NCPI_SCREENSHOTS=docs/screenshots`
refreshes the README's), else to the test's temporary folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ncpi_workflow.app import force_responses
from ncpi_workflow.models import Decision
from ncpi_workflow.web.app import create_app
from ncpi_workflow.web.server import running_web
from tests.conftest import IN_CI, ROOT
from tests.lifecycle_support import harness, write_report
from tests.postgres import free_port
from tests.test_cli_devserver import eventually, phase_is, projected, publication_date, rows
from tests.web.conftest import FORCES, PASSWORD, SECRET, add_user

CHROMIUM = Path("/usr/bin/chromium")
AXE = ROOT / "node_modules" / "axe-core" / "axe.min.js"
FORCE = "WIL"
WCAG = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]


def _unavailable(reason: str):
    if IN_CI:
        pytest.fail(f"{reason}, and CI=true: the browser tests must run in CI")
    pytest.skip(f"{reason}; CI fails instead of skipping")


@pytest.fixture
def playwright_ready():
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        _unavailable("Python Playwright is not installed")
    if not CHROMIUM.exists():
        _unavailable(f"{CHROMIUM} is missing (apt-get install chromium)")
    if not AXE.exists():
        _unavailable(f"{AXE} is missing (`make` installs it with npm)")


class Pages:
    """Checks and screenshots of every page the test shows."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.checked: list[str] = []

    async def check(self, page, name: str) -> None:
        # The context bypasses the pages' content security policy for this injected script only;
        # the policy itself is checked in test_security.py.
        await page.add_script_tag(path=str(AXE))
        result = await page.evaluate("async (tags) => await axe.run(document, {runOnly: {type: 'tag', values: tags}})", WCAG)
        problems = [
            f"{v['id']} ({v['impact']}): {v['help']} -- " + "; ".join(n["html"][:120] for n in v["nodes"][:3])
            for v in result["violations"]
        ]
        assert problems == [], f"{name}: WCAG 2.1 A/AA violations:\n" + "\n".join(problems)
        await page.screenshot(path=str(self.folder / f"{name}.png"), full_page=True)
        self.checked.append(name)


async def test_inspectors_work_in_a_browser(playwright_ready, dev_server_env, tmp_path):
    from playwright.async_api import async_playwright

    shots = Pages(Path(os.environ["NCPI_SCREENSHOTS"]) if os.environ.get("NCPI_SCREENSHOTS") else tmp_path / "screenshots")
    async with harness(dev_server_env, tmp_path) as h:
        settings = h.settings.model_copy(update={"temporal_address": dev_server_env.address, "secret_key": SECRET,
                                                 "web_port": free_port()})
        app = create_app(settings)
        admin_email = await add_user(h.sessions, "admin", "admin@inspectorate.example")
        inspector_email = await add_user(h.sessions, "inspector", "hmi.cunningham@inspectorate.example")
        published = publication_date()
        inspection_id = f"{FORCE}-{published.isoformat()}"
        r1 = f"{inspection_id}-R1"
        report = write_report(tmp_path, FORCE, published, [("R1", "within_three_months"), ("R2", "immediately")],
                              name="wiltshire.yaml")
        bad = ROOT / "tests" / "bad_reports" / "unknown-timeframe.yaml"
        async with running_web(settings, app) as address, async_playwright() as p:
            browser = await p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
            try:
                # Sign-in (and its error), as the admin.
                admin = await (await browser.new_context(base_url=address, viewport={"width": 1280, "height": 900}, bypass_csp=True)).new_page()
                await admin.goto("/")
                assert admin.url.endswith("/sign-in")
                await shots.check(admin, "sign-in")
                await admin.fill("#email", admin_email)
                await admin.fill("#password", "not the password")
                await admin.click("button:has-text('Sign in')")
                assert await admin.locator(".govuk-error-summary").is_visible()
                await shots.check(admin, "sign-in-error")
                await admin.fill("#password", PASSWORD)
                await admin.click("button:has-text('Sign in')")
                await admin.wait_for_url(f"{address}/")

                # Publishing: a bad file first (the lines of `ncpi validate`), then the report.
                await admin.click("a.govuk-service-navigation__link:has-text('Publish a report')")
                await admin.set_input_files("#report", str(bad))
                await admin.click("button:has-text('Publish')")
                summary = admin.locator(".govuk-error-summary")
                assert "unknown-timeframe.yaml:" in await summary.inner_text()
                await shots.check(admin, "publish-refused")
                await admin.set_input_files("#report", str(report))
                await admin.click("button:has-text('Publish')")
                await admin.wait_for_url(f"{address}/inspections/{inspection_id}")
                await projected(h, inspection_id, 2)
                await admin.goto("/users")
                await shots.check(admin, "users")

                # The inspector: the dashboard, a force, an inspection.
                inspector = await (await browser.new_context(base_url=address, viewport={"width": 1280, "height": 900}, bypass_csp=True)).new_page()
                await inspector.goto("/sign-in")
                await inspector.fill("#email", inspector_email)
                await inspector.fill("#password", PASSWORD)
                await inspector.click("button:has-text('Sign in')")
                await inspector.wait_for_url(f"{address}/")
                row = inspector.locator("tr", has=inspector.locator(f"a[href='/forces/{FORCE}']"))
                assert "Due within 30 days" in await row.inner_text()  # an "immediately" recommendation
                await shots.check(inspector, "dashboard")
                await inspector.click(f"a[href='/forces/{FORCE}']")
                await shots.check(inspector, "force")
                await inspector.click(f"a[href='/inspections/{inspection_id}']")
                assert "Live follow-up state is not available" not in await inspector.content()
                await shots.check(inspector, "inspection")

                # Open the revisit early.
                await inspector.click("#open-revisit")
                await inspector.wait_for_selector(".govuk-notification-banner--success")
                assert "The revisit is open" in await inspector.locator(".govuk-notification-banner").inner_text()
                await phase_is(h, r1, "evidence_requested")
                evidence = tmp_path / "profile.pdf"
                evidence.write_bytes(b"%PDF-1.4 the problem profile")
                await force_responses.submit_evidence(settings, h.client, r1, evidence, by="Liaison officer")

                # Two tabs on the recommendation: decide in one, then try again in the other.
                stale = await inspector.context.new_page()
                await stale.goto(f"/recommendations/{r1}")
                await inspector.goto(f"/recommendations/{r1}")
                await shots.check(inspector, "recommendation")
                await inspector.check("input[name=outcome][value=achieved]")
                await inspector.fill("#decision-rationale", "The problem profile is in use across the force.")
                await inspector.click("button:has-text('Record the decision')")
                await inspector.wait_for_selector(".govuk-notification-banner--success")
                assert "The recommendation is closed" in await inspector.locator(".govuk-notification-banner").inner_text()
                await shots.check(inspector, "recommendation-decided")
                [decision] = await rows(h, Decision, Decision.recommendation_id == r1)
                assert decision.decided_by == inspector_email

                async def decision_mail():
                    return [m for m in h.smtp.messages if m.message["Subject"] == f"Decision on recommendation R1: achieved [{r1}]"]

                [mail] = await eventually(decision_mail, timeout=30)
                assert FORCES[FORCE].contacts.liaison_officer.email in mail.message["To"]

                await stale.check("input[name=outcome][value=not_achieved]")
                await stale.fill("#decision-rationale", "Second thoughts")
                await stale.click("button:has-text('Record the decision')")
                summary = stale.locator(".govuk-error-summary")
                await summary.wait_for()
                assert "The recommendation is already closed (achieved); re-open it first" in await summary.inner_text()
                await shots.check(stale, "decision-refused")
                await stale.click(".govuk-error-summary a[href='#decision-outcome']")
                assert await stale.evaluate("document.activeElement.id") == "decision-outcome"

                await inspector.goto("/outbox")
                await shots.check(inspector, "outbox")
            finally:
                await browser.close()
        await app.state.services.close()
    assert len(shots.checked) == 11
