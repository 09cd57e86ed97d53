"""/metrics in a real browser (Debian's Chromium driven by Python Playwright, as
tests/web/test_web_browser.py) against a real uvicorn server and database: no WCAG 2.1 A or AA
violation (axe-core), on the figures and on a refused filter. Screenshots go to $NCPI_SCREENSHOTS
when set (`NCPI_SCREENSHOTS=docs/screenshots` refreshes docs/screenshots/metrics.png)."""

from __future__ import annotations

import os
from pathlib import Path

from ncpi_workflow import db
from ncpi_workflow.web.app import create_app
from ncpi_workflow.web.server import running_web
from tests.postgres import free_port
from tests.test_metrics_register import seed_figures
from tests.test_register import TODAY
from tests.web.conftest import PASSWORD, FakeClock, add_user, web_settings
from tests.web.test_web_browser import CHROMIUM, Pages, playwright_ready  # noqa: F401  (the fixture)


async def test_metrics_page_is_accessible_in_a_browser(playwright_ready, tmp_path):
    from playwright.async_api import async_playwright

    shots = Pages(Path(os.environ["NCPI_SCREENSHOTS"]) if os.environ.get("NCPI_SCREENSHOTS") else tmp_path / "screenshots")
    url = f"sqlite+aiosqlite:///{tmp_path / 'web.db'}"
    await db.upgrade(url)
    async with db.open_database(url) as sessions:
        await seed_figures(sessions, tmp_path)
        viewer = await add_user(sessions, "viewer", "analyst@inspectorate.example")
        settings = web_settings(url, tmp_path, web_port=free_port())
        app = create_app(settings, sessions=sessions, clock=FakeClock(), today=lambda: TODAY)
        async with running_web(settings, app) as address, async_playwright() as p:
            browser = await p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
            try:
                context = await browser.new_context(base_url=address, viewport={"width": 1280, "height": 900}, bypass_csp=True)
                page = await context.new_page()
                await page.goto("/metrics")
                assert page.url.endswith("/sign-in?next=%2Fmetrics")
                await page.fill("#email", viewer)
                await page.fill("#password", PASSWORD)
                await page.click("button:has-text('Sign in')")
                await page.wait_for_url(f"{address}/metrics")
                assert await page.locator("h1").inner_text() == "Figures"
                # The pictures load (data: URIs within the page's content security policy) and have a size.
                for img in await page.locator("figure img").all():
                    assert await img.evaluate("i => i.complete && i.naturalWidth > 0")
                await shots.check(page, "metrics")
                await page.select_option("#force", "CUM")
                await page.fill("#from", "2026-02-30")
                await page.click("button:has-text('Show figures')")
                summary = page.locator(".govuk-error-summary")
                await summary.wait_for()
                assert "Published from: '2026-02-30' is not a date" in await summary.inner_text()
                await shots.check(page, "metrics-refused")
            finally:
                await browser.close()
        await app.state.services.close()
    assert shots.checked == ["metrics", "metrics-refused"]
