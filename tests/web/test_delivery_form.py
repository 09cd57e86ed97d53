"""The inspection page's "Record a delivery" form with a document: a refused upload is a GOV.UK error
summary at the file field and nothing is kept, before Temporal is asked anything (here Temporal is
a closed port; the accepted path runs on the dev server in tests/web/test_web_devserver.py)."""

from __future__ import annotations

import pytest

from ncpi_workflow import db
from ncpi_workflow.models import AuditEvent
from ncpi_workflow.web.app import create_app
from tests.web.conftest import FakeClock, add_user, browser, days_ago, error_summary, seed_report, web_settings

EXE = b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff\x00\x00" + b"\x00" * 200 + b"This program cannot be run in DOS mode"
LIMIT = 4096


@pytest.fixture
async def inspector(tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path / 'web.db'}"
    from tests.conftest import migrate

    await migrate(url)  # db.upgrade: a new SQLite file is a copy of the session's migrated template
    settings = web_settings(url, tmp_path, evidence_max_bytes=LIMIT)
    async with db.open_database(url) as sessions:
        inspection = await seed_report(sessions, tmp_path, "DER", days_ago(5), [("R1", "within_three_months")])
        app = create_app(settings, sessions=sessions, clock=FakeClock())
        b = browser(app)
        assert (await b.sign_in(await add_user(sessions, "inspector"))).status_code == 303
        yield b, f"/inspections/{inspection}", settings, sessions
        await b.aclose()
        await app.state.services.close()


def stored_files(settings) -> list:
    store = settings.evidence_dir
    return [p for p in store.rglob("*") if p.is_file()] if store.exists() else []


async def test_the_form_offers_a_document_and_a_web_address(inspector):
    b, page, _, _ = inspector
    html = (await b.get(page)).text
    assert 'action="' + page + '/deliveries" enctype="multipart/form-data"' in html
    assert 'id="delivery-document"' in html and 'name="document"' in html and 'type="file"' in html
    assert 'id="delivery-url"' in html and 'name="url"' in html


@pytest.mark.parametrize("name,content,data,status,expected", [
    ("plan.pdf", EXE, {"item": "action_plan"}, 400,
     ("#delivery-document", "plan.pdf: the name says a PDF document but the content is a Windows program (EXE); send PDF, "
                            "Word (DOCX), Excel (XLSX), OpenDocument (ODT, ODS), PNG, JPEG, GIF, plain text or CSV")),
    ("../../plan.pdf", b"%PDF-1.4 plan", {"item": "action_plan"}, 400,
     ("#delivery-document", "the file name ../../plan.pdf points outside its folder ('..'); send the file under its own name")),
    ("plan.pdf", b"%PDF-1.4 " + b"x" * (LIMIT + 100), {"item": "action_plan"}, 400,
     ("#delivery-document", f"plan.pdf: the file is {LIMIT + 109:,} bytes, over the {LIMIT:,}-byte limit")),
    ("plan.pdf", b"%PDF-1.4 " + b"x" * (LIMIT + 70 * 1024), {"item": "action_plan"}, 413,
     ("#delivery-document", f"The file is over the {LIMIT:,}-byte limit")),
    ("plan.pdf", b"%PDF-1.4 plan", {"item": "action_plan", "url": "https://www.der.example/plan"}, 400,
     ("#delivery-url", "Give the document or its web address, not both")),
    ("plan.pdf", b"%PDF-1.4 plan", {}, 400, ("#delivery-item", "Select what was received")),
])
async def test_a_refused_document_is_an_error_summary_and_nothing_is_kept(inspector, name, content, data, status, expected):
    b, page, settings, sessions = inspector
    response = await b.post(f"{page}/deliveries", {**data, "note": "came by post"}, files={"document": (name, content, "application/pdf")},
                            from_page=page)
    assert response.status_code == status, response.text[:600]
    assert error_summary(response.text) == [expected]
    assert f'id="{expected[0][1:]}"' in response.text  # the summary links to a field on the page
    assert stored_files(settings) == []
    async with sessions() as session:
        from sqlalchemy import select

        assert not (await session.scalars(select(AuditEvent).where(AuditEvent.action.like("%.received")))).all()
