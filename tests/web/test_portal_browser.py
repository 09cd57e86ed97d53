"""The force portal in a real browser: Debian's Chromium driven by Python Playwright, against a real
uvicorn server, the Temporal dev server, a worker, the database and the SMTP capture. The liaison
officer opens the link taken from the report notice in the capture, states a claim (a refusal
first), uploads evidence (a bad file first), sends the action plan's web address, and asks for a
fresh link; an inspector revokes the link. axe-core runs on every portal page: no WCAG 2.1 A or AA
violation. Screenshots go to $NCPI_SCREENSHOTS (`NCPI_SCREENSHOTS=docs/screenshots` refreshes the
README's portal-*.png), else to the test's temporary folder.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from sqlalchemy import select

from ncpi_workflow.app import publishing
from ncpi_workflow.models import AuditEvent, Evidence, ProgressUpdate
from ncpi_workflow.web.app import create_app
from ncpi_workflow.web.server import running_web
from tests.lifecycle_support import harness, write_report
from tests.postgres import free_port
from tests.test_cli_devserver import eventually, projected, publication_date
from tests.web.conftest import FORCES, PASSWORD, SECRET, add_user
from tests.web.test_web_browser import CHROMIUM, Pages, playwright_ready  # noqa: F401  (the fixture)

FORCE = "DYF"  # a force no other dev-server test publishes (one server, one workflow ID per report)
LINK = re.compile(r"(http://127\.0\.0\.1:\d+/portal/[A-Za-z0-9_-]{43})")


def mail_text(message) -> str:
    return next(p.get_content() for p in message.walk() if p.get_content_type() == "text/plain")


async def test_a_liaison_officer_answers_from_the_link_in_an_email(playwright_ready, dev_server_env, tmp_path):  # noqa: F811
    from playwright.async_api import async_playwright

    shots = Pages(Path(os.environ["NCPI_SCREENSHOTS"]) if os.environ.get("NCPI_SCREENSHOTS") else tmp_path / "screenshots")
    async with harness(dev_server_env, tmp_path, secret_key=SECRET, web_port=free_port()) as h:
        settings = h.settings.model_copy(update={"temporal_address": dev_server_env.address})
        app = create_app(settings)
        published = publication_date()
        inspection_id = f"{FORCE}-{published.isoformat()}"
        r1 = f"{inspection_id}-R1"
        report = write_report(tmp_path, FORCE, published, [("R1", "within_three_months"), ("R2", "within_six_months")],
                              name="norfolk.yaml")
        await publishing.publish_file(settings, h.client, report, by="test")
        await projected(h, inspection_id, 2)
        liaison = FORCES[FORCE].contacts.liaison_officer.email

        async def notice():
            return [m for m in h.smtp.messages if m.message["Subject"].startswith("Inspection report published")
                    and liaison in m.message["To"]]

        [mail] = await eventually(notice, timeout=60)
        [url] = set(LINK.findall(mail_text(mail.message)))
        evidence = tmp_path / "training-register.pdf"
        evidence.write_bytes(b"%PDF-1.4\n% the training register, signed\n%%EOF\n")
        disguised = tmp_path / "report.pdf"
        disguised.write_bytes(b"MZ\x90\x00\x03\x00\x00\x00" + b"\x00" * 52 + b"\x80\x00\x00\x00PE\x00\x00" + b"\x00" * 300)
        inspector_email = await add_user(h.sessions, "inspector", "hmi.portal@inspectorate.example")

        async with running_web(settings, app) as address, async_playwright() as p:
            assert url.startswith(address + "/portal/")
            browser = await p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
            try:
                context = await browser.new_context(viewport={"width": 1280, "height": 900}, bypass_csp=True)
                page = await context.new_page()
                response = await page.goto(url)
                assert response.headers["referrer-policy"] == "no-referrer" and response.headers["cache-control"] == "no-store"
                assert await context.cookies() == []
                assert "Recommendations" in await page.content()
                await shots.check(page, "portal-report")

                # One recommendation: a claim without its note is refused, at the field.
                await page.click(f"a[href$='/recommendations/{r1}']")
                await shots.check(page, "portal-recommendation")
                await page.check("input[name=claim][value=in_progress]")
                await page.click("button:has-text('Send the progress note')")
                summary = page.locator(".govuk-error-summary")
                await summary.wait_for()
                assert "Enter a progress note" in await summary.inner_text()
                await shots.check(page, "portal-refused")
                await page.click(".govuk-error-summary a[href='#progress-text']")
                assert await page.evaluate("document.activeElement.id") == "progress-text"
                await page.fill("#progress-text", "Training for all 1,200 officers started in March; 40% done. <b>Not markup</b>.")
                await page.click("button:has-text('Send the progress note')")
                await page.wait_for_selector(".govuk-notification-banner--success")
                assert "Not markup" in await page.locator("table", has_text="Your claims").inner_text()
                await shots.check(page, "portal-progress-recorded")

                # Evidence: an executable named .pdf is refused and says what it is; then the real file.
                await page.set_input_files("#evidence-file", str(disguised))
                await page.click("button:has-text('Send the evidence')")
                await summary.wait_for()
                assert "report.pdf: the name says a PDF document but the content is a Windows program (EXE)" in await summary.inner_text()
                await shots.check(page, "portal-upload-refused")
                await page.set_input_files("#evidence-file", str(evidence))
                await page.fill("#evidence-description", "The register of officers trained")
                await page.click("button:has-text('Send the evidence')")
                await page.wait_for_selector(".govuk-notification-banner--success")
                assert "Your evidence has been received" in await page.locator(".govuk-notification-banner").inner_text()
                await shots.check(page, "portal-evidence-sent")

                # The action plan, as the web address where it is published.
                await page.click("a.govuk-back-link")
                await page.click("a[href$='/items/action_plan']")
                await shots.check(page, "portal-action-plan")
                await page.fill("#item-url", "https://www.norfolk.police.example/action-plan")
                await page.click("form[action$='/items/action_plan'] button")
                await page.wait_for_selector(".govuk-notification-banner--success")
                assert "nothing more is asked of you" in await page.content()
                await shots.check(page, "portal-action-plan-sent")

                # A fresh link, asked for the liaison officer's address: the same answer whatever the address.
                await page.fill("#fresh-email", liaison)
                await page.click("button:has-text('Send me a fresh link')")
                await page.wait_for_selector("h1:has-text('Check your email')")
                await shots.check(page, "portal-fresh-link")

                async def fresh():
                    return [m for m in h.smtp.messages if m.message["Subject"].startswith("Your link to answer the inspectorate")]

                [fresh_mail] = await eventually(fresh, timeout=60)
                [fresh_url] = set(LINK.findall(mail_text(fresh_mail.message)))
                assert fresh_url != url

                # What was recorded, as the link's.
                async with h.sessions() as session:
                    [progress] = list(await session.scalars(select(ProgressUpdate)))
                    [kept] = list(await session.scalars(select(Evidence)))
                    plan = await session.scalar(select(AuditEvent).where(AuditEvent.action == "action_plan.received"))
                assert progress.submitted_by.startswith(f"{FORCE} liaison (link #") and progress.claim == "in_progress"
                assert (kept.filename, kept.submitted_by) == ("training-register.pdf", progress.submitted_by)
                assert plan.detail["url"] == "https://www.norfolk.police.example/action-plan"

                # An inspector revokes the link from the recommendation page; it then opens nothing.
                staff = await (await browser.new_context(base_url=address, viewport={"width": 1280, "height": 900})).new_page()
                await staff.goto("/sign-in")
                await staff.fill("#email", inspector_email)
                await staff.fill("#password", PASSWORD)
                await staff.click("button:has-text('Sign in')")
                await staff.wait_for_url(f"{address}/")
                await staff.goto(f"/recommendations/{r1}")
                assert "Not markup" in await staff.content()
                first = staff.locator("#links tbody tr").first  # the report notice's portal link, the oldest
                assert "(portal)" in await first.inner_text() and "active" in await first.inner_text()
                await first.locator("button:has-text('Revoke')").click()
                await staff.wait_for_selector(".govuk-notification-banner--success")
                assert "is revoked" in await staff.locator(".govuk-notification-banner").inner_text()
                assert "revoked" in await staff.locator("#links tbody tr").first.inner_text()
                await staff.goto(f"/inspections/{inspection_id}")
                assert "https://www.norfolk.police.example/action-plan" in await staff.locator("#documents").inner_text()

                response = await page.goto(url)
                assert response.status == 404
                assert "Dyfed" not in await page.content() and inspection_id not in await page.content()
                await shots.check(page, "portal-not-found")
                assert (await page.goto(fresh_url)).status == 200  # the fresh link still works
            finally:
                await browser.close()
        await app.state.services.close()
    assert len(shots.checked) == 10
