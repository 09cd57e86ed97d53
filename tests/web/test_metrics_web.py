"""/metrics through the real app (httpx's ASGI transport, a real SQLite database with records written
by the worker's record activities): signed-in users, viewers too, see the figures computed from the
register, each picture with its table; bad filters are refused with a GOV.UK error summary."""

from __future__ import annotations

import base64
import html
import re
import xml.etree.ElementTree as ET

import pytest

from ncpi_workflow import db
from ncpi_workflow.metrics import compute_metrics
from ncpi_workflow.register import build_register
from ncpi_workflow.web.app import create_app
from tests.test_register import TODAY, seed_register
from tests.web.conftest import FakeClock, add_user, browser, error_summary, web_settings


@pytest.fixture(scope="module")
async def site(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("metrics-web")
    url = f"sqlite+aiosqlite:///{tmp_path / 'web.db'}"
    from tests.conftest import migrate

    await migrate(url)  # db.upgrade: a new SQLite file is a copy of the session's migrated template
    async with db.open_database(url) as sessions:
        await seed_register(sessions, tmp_path)
        viewer = await add_user(sessions, "viewer")
        app = create_app(web_settings(url, tmp_path), sessions=sessions, clock=FakeClock(), today=lambda: TODAY)
        b = browser(app)
        assert (await b.sign_in(viewer)).status_code == 303
        async with sessions() as session:
            doc = await build_register(session, today=TODAY)
        yield b, doc, app
        await b.aclose()
        await app.state.services.close()


def cells(page: str, caption: str) -> list[list[str]]:
    """The rows (header and data cells' text) of the table with this caption."""
    table = re.search(r"<table[^>]*>\s*<caption[^>]*>\s*" + re.escape(caption) + r"\s*</caption>(.*?)</table>", page, re.S)
    assert table, f"no table {caption!r}"
    return [[" ".join(html.unescape(re.sub(r"<[^>]+>", "", c)).split()) for c in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row, re.S)]
            for row in re.findall(r"<tr[^>]*>(.*?)</tr>", table.group(1), re.S)]


async def test_a_viewer_sees_the_figures_of_the_register_with_pictures_and_tables(site):
    b, doc, _ = site
    response = await b.get("/metrics")
    assert response.status_code == 200, response.text[:400]
    page = response.text
    m = compute_metrics(doc)
    assert "Figures from the register of 15 June 2026: reports all publication dates." in page
    summary = cells(page, "Recommendations, per force and nationally")
    assert summary[1][:5] == ["National", str(m.national.made), str(m.national.open), str(m.national.closed),
                              str(m.national.overdue_total)]
    assert summary[1][5:] == ["50% (1 of 2)", "0% (0 of 2)", "100% (1 of 1)"]  # KEN's plan and both PCC responses missing
    assert [r[0] for r in summary[2:]] == [f.name for f in m.forces] == ["Cumbria Constabulary", "Kent Police"]
    closure = cells(page, "Days from publication to closure")
    assert closure[1] == ["National", "1", "198", "198"]  # CUM R1: 3 November 2025 to 20 May 2026
    assert closure[3] == ["Kent Police", "0", "No data", "No data"]
    ageing = cells(page, "Overdue items, nationally, by days overdue")
    assert ageing[0] == ["Days overdue", "0-30", "31-90", "91-180", ">180"]
    assert [r[0] for r in ageing[1:]] == ["Recommendations", "Action plans", "PCC responses", "All"]
    assert ageing[4][1:] == [str(sum(m.national.overdue[b].values())) for b in ("0-30", "31-90", "91-180", ">180")]
    assert sum(int(n) for n in ageing[4][1:]) == m.national.overdue_total
    rates = cells(page, "Implementation rate (achieved of closed) by timeframe")
    assert rates[0] == ["Force", "All", "Immediately", "Within three months", "Within six months"]
    assert rates[1] == ["National", "100% (1 of 1)", "No data", "100% (1 of 1)", "No data"]
    images = re.findall(r'<img src="data:image/svg\+xml;base64,([^"]+)" alt="([^"]+)"', page)
    assert len(images) == 3
    for data, alt in images:
        svg = base64.b64decode(data)
        root = ET.fromstring(svg)
        assert root[0].tag.endswith("title") and root[1].tag.endswith("desc")
        assert html.unescape(alt) == root[1].text  # the picture's words, as its alternative text
    assert 'aria-current="page"' in page and 'href="/metrics"' in page  # in the menu, as the current page


async def test_filters_narrow_the_figures_and_bad_ones_are_refused(site):
    b, doc, _ = site
    page = (await b.get("/metrics?force=CUM&theme=custody&from=2025-01-01&to=2025-12-31")).text
    m = compute_metrics(doc, force="CUM", theme="custody")
    assert "reports published 1 January 2025 to 31 December 2025, force CUM, theme custody." in page
    summary = cells(page, "Recommendations, per force and nationally")
    assert summary[1][:4] == ["National", str(m.national.made), str(m.national.open), str(m.national.closed)] == ["National", "2", "1", "1"]
    assert [r[0] for r in summary[2:]] == ["Cumbria Constabulary"]
    assert '<option value="CUM" selected>' in page
    for query, href, message in [
        ("from=2025-02-30", "#from", "Published from: '2025-02-30' is not a date such as 2017-01-31"),
        ("from=2026-01-01&to=2025-01-01", "#to", "Published to: 2025-01-01 is before Published from 2026-01-01"),
        ("force=XYZ", "#force", "Force: no force has the code XYZ"),
        ("theme=no-such-theme", "#theme", "Theme: no-such-theme is not a theme of config/themes.yaml"),
    ]:
        response = await b.get(f"/metrics?{query}")
        assert response.status_code == 400
        assert error_summary(response.text) == [(href, message)]
        assert "Recommendations, per force and nationally" not in response.text


async def test_metrics_need_signing_in(site):
    _, _, app = site
    anonymous = browser(app)
    response = await anonymous.get("/metrics?force=CUM")
    assert response.status_code == 303 and response.headers["location"] == "/sign-in?next=%2Fmetrics%3Fforce%3DCUM"
    await anonymous.aclose()
