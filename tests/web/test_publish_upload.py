"""Publishing from the web: a bad file is refused with exactly the lines `ncpi validate` prints
for it (one per problem, naming the file, the line, the field and the reason), as a GOV.UK error
summary linked to the file field, and nothing is written or started."""

from __future__ import annotations

import subprocess
import sys

from sqlalchemy import func, select

from ncpi_workflow.app import publishing
from ncpi_workflow.models import AuditEvent, Inspection, Recommendation
from ncpi_workflow.web.app import create_app
from tests.conftest import ROOT
from tests.web.conftest import add_user, browser, error_summary, web_settings

BAD = ROOT / "tests" / "bad_reports"


def validate_lines() -> dict[str, list[str]]:
    """`ncpi validate` over the whole corpus, run in its folder so that each line starts with the bare file name."""
    files = sorted(p.name for p in BAD.glob("*.yaml"))
    result = subprocess.run([sys.executable, "-m", "ncpi_workflow.cli", "validate", *files], cwd=BAD,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and result.stdout == ""
    lines = [line.removeprefix("ncpi: ") for line in result.stderr.splitlines()]
    by_file = {name: [line for line in lines if line.startswith(name + ":")] for name in files}
    assert sum(map(len, by_file.values())) == len(lines), "a line of `ncpi validate` names no file"
    return by_file


async def counts(sessions) -> tuple[int, int, int]:
    async with sessions() as session:
        return tuple([await session.scalar(select(func.count()).select_from(m)) for m in (Inspection, Recommendation, AuditEvent)])


async def test_bad_reports_show_the_lines_of_ncpi_validate_and_start_nothing(sqlite_sessions, tmp_path):
    url, sessions = sqlite_sessions
    expected = validate_lines()
    app = create_app(web_settings(url, tmp_path), sessions=sessions)
    b = browser(app)
    try:
        await b.sign_in(await add_user(sessions, "admin"))
        before = await counts(sessions)
        for name, lines in expected.items():
            assert lines, f"{name}: `ncpi validate` found nothing wrong"
            response = await b.post("/publish", files={"report": (name, (BAD / name).read_bytes(), "application/yaml")},
                                    from_page="/publish")
            assert response.status_code == 400, name
            summary = error_summary(response.text)
            assert [text for _, text in summary] == [" ".join(line.split()) for line in lines], name
            assert {href for href, _ in summary} == {"#report"}
            assert 'id="report"' in response.text and "govuk-file-upload" in response.text
        assert await counts(sessions) == before
    finally:
        await b.aclose()


async def test_no_file_and_an_oversized_file(sqlite_sessions, tmp_path):
    url, sessions = sqlite_sessions
    settings = web_settings(url, tmp_path, report_max_bytes=2000)
    app = create_app(settings, sessions=sessions)
    b = browser(app)
    try:
        await b.sign_in(await add_user(sessions, "admin"))
        nothing = await b.post("/publish", {}, from_page="/publish")
        assert nothing.status_code == 400 and error_summary(nothing.text) == [("#report", "Select a report file (YAML)")]
        big = await b.post("/publish", files={"report": ("big.yaml", b"a: b\n" * 1000, "application/yaml")}, from_page="/publish")
        assert big.status_code == 400
        [(href, text)] = error_summary(big.text)
        assert href == "#report" and text == "big.yaml: file is 5,000 bytes, over the 2,000-byte limit for a report"
        huge = await b.post("/publish", files={"report": ("huge.yaml", b"x" * 200_000, "application/yaml")}, from_page="/publish")
        assert huge.status_code == 413
    finally:
        await b.aclose()


def test_upload_names_never_become_paths():
    assert publishing.upload_name("../../etc/passwd") == "passwd"
    assert publishing.upload_name("C:\\reports\\cumbria 2017.yaml") == "cumbria-2017.yaml"
    assert publishing.upload_name("") == "report.yaml" and publishing.upload_name(None) == "report.yaml"
    assert publishing.upload_name("....") == "report.yaml"
