"""Publishing from the web a report whose deadlines have passed: refused as `ncpi publish` refuses it
(nothing written, nothing started), the page lists what catch-up would send at once and offers the
three choices as GOV.UK radios; choosing one re-submits the same upload (kept by its SHA-256), which
then publishes in that mode. On the real Temporal dev server, with the loopback SMTP capture."""

from __future__ import annotations

import hashlib
import re
from datetime import date
from html import unescape

from sqlalchemy import func, select

from ncpi_workflow.lifecycle import inspection_workflow_id
from ncpi_workflow.models import Inspection, Notification
from ncpi_workflow.publishing import _workflow_exists
from ncpi_workflow.web.app import create_app
from tests.lifecycle_support import harness, write_report
from tests.test_cli_devserver import projected
from tests.web.conftest import SECRET, add_user, browser, error_summary

FORCE = "CHE"  # with a publication date no other dev-server test uses (one server, one workflow ID per report)
PUBLISHED = date(2018, 6, 4)


def sends(html: str) -> list[str]:
    listed = re.search(r'<ul class="govuk-list govuk-list--bullet" id="past-sends">(.*?)</ul>', html, re.S)
    return [unescape(item).strip() for item in re.findall(r"<li>(.*?)</li>", listed.group(1), re.S)] if listed else []


def radios(html: str) -> list[str]:
    return re.findall(r'<input class="govuk-radios__input" id="past[^"]*" name="past" type="radio" value="([^"]+)"', html)


async def test_a_past_report_offers_the_three_choices_and_adopts_the_same_upload(dev_server_env, tmp_path):
    async with harness(dev_server_env, tmp_path, secret_key=SECRET) as h:
        settings = h.settings.model_copy(update={"temporal_address": dev_server_env.address})
        app = create_app(settings)
        admin = browser(app)
        try:
            assert (await admin.sign_in(await add_user(h.sessions, "admin"))).status_code == 303
            report = write_report(tmp_path, FORCE, PUBLISHED, [("R1", "within_three_months"), ("R2", "within_six_months")])
            inspection_id = f"{FORCE}-{PUBLISHED.isoformat()}"
            content = report.read_bytes()
            refused = await admin.post("/publish", files={"report": (report.name, content, "application/yaml")}, from_page="/publish")
            assert refused.status_code == 400
            assert error_summary(refused.text) == [("#past", "5 of the report's deadlines have passed: choose how to follow it up")]
            listed = sends(refused.text)
            assert listed[0] == "published: the report's publication, Monday 4 June 2018 -> liaison officer, chief officer and PCC"
            assert any(line.startswith("revisit opened: the revisit, opening by itself at its limit") for line in listed)
            assert (f"up to these {len(listed)} messages (the revisit, opening at once, may overtake a recommendation&#39;s "
                    "own last reminder) would be sent at once") in refused.text
            assert radios(refused.text) == ["catch-up", "adopt", "anchor-now"]
            sha = hashlib.sha256(content).hexdigest()
            assert f'name="pending" value="{sha}"' in refused.text
            async with h.sessions() as session:
                assert await session.get(Inspection, inspection_id) is None  # nothing written ...
            assert not await _workflow_exists(h.client, inspection_workflow_id(inspection_id))  # ... nothing started

            # A choice that is none of the three is refused on the radios.
            odd = await admin.post("/publish", {"past": "later", "pending": sha, "pending_name": report.name}, from_page="/publish")
            assert odd.status_code == 400 and error_summary(odd.text) == [
                ("#past", "Choose how to follow up a report whose deadlines have passed")]

            # Adopt: the same upload, re-submitted by its SHA-256 alone.
            adopted = await admin.post("/publish", {"past": "adopt", "pending": sha, "pending_name": report.name}, from_page="/publish")
            assert adopted.status_code == 303, adopted.text[:2000]
            assert adopted.headers["location"] == f"/inspections/{inspection_id}"
            page = await admin.get(adopted.headers["location"])
            assert (f"Published {inspection_id}: its follow-up has started (2 recommendations, adopted: nothing was sent "
                    "for the past).") in page.text
            await projected(h, inspection_id, 2)
            async with h.sessions() as session:
                assert await session.scalar(select(func.count()).select_from(Notification)
                                            .where(Notification.inspection_id == inspection_id)) == 0
            assert h.smtp.messages == []
            assert not (settings.data_dir / "publish-pending" / f"{sha}.yaml").exists()  # the kept upload is gone
            gone = await admin.post("/publish", {"past": "adopt", "pending": sha, "pending_name": report.name}, from_page="/publish")
            assert gone.status_code == 400 and error_summary(gone.text) == [
                ("#report", "The file chosen before is no longer here: select the report file again")]
        finally:
            await admin.aclose()


def test_the_kept_upload_never_follows_a_link(tmp_path):
    from ncpi_workflow.settings import Settings
    from ncpi_workflow.web.routes.publish import _keep, _kept, _pending_folder

    settings = Settings(data_dir=tmp_path / "data")
    content = b"force: CUM\n"
    sha = hashlib.sha256(content).hexdigest()
    folder = _pending_folder(settings)
    folder.mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere.yaml"
    elsewhere.write_bytes(b"not to be overwritten")
    (folder / f"{sha}.yaml").symlink_to(elsewhere)
    # Kept: the planted link is replaced by the upload itself; what it pointed at is untouched.
    assert _keep(settings, content) == sha
    assert elsewhere.read_bytes() == b"not to be overwritten"
    assert not (folder / f"{sha}.yaml").is_symlink() and _kept(settings, sha) == content
    assert [p.name for p in folder.iterdir()] == [f"{sha}.yaml"]  # no partial file left behind
    # Read back: a link under the name is not followed, even to a file with the very same content.
    same = tmp_path / "same.yaml"
    same.write_bytes(content)
    (folder / f"{sha}.yaml").unlink()
    (folder / f"{sha}.yaml").symlink_to(same)
    assert _kept(settings, sha) is None
    assert _kept(settings, "../" + sha) is None and _kept(settings, sha.upper()) is None
