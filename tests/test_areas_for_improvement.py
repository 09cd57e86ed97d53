"""Areas for improvement (report file `areas_for_improvement`): findings without a recommendation and
without clocks. Validated with the file, line, field and reason; stored (migration 0011) on SQLite
and PostgreSQL; listed on the inspectors' inspection page; exported in register.json, on the
register's recommendation pages and in areas-for-improvement.csv. Also the inspection page's
"Action plan and PCC response" table: each item's due date, the day it was received and the
document or address received (records written through the worker's record activities)."""

from __future__ import annotations

import csv
import io
import json
from datetime import date, datetime, time, timedelta, timezone

import jsonschema
import pytest
import yaml
from sqlalchemy import select

from activities.records import InspectorateAddresses, RecordActivities
from ncpi_workflow.clocks import calendar_for_report, plan_report
from ncpi_workflow.formatting import LONDON
from ncpi_workflow.lifecycle import AuditRecord, DeadlineMetRecord
from ncpi_workflow.models import AreaForImprovement, Deadline
from ncpi_workflow.policy import load_policy
from ncpi_workflow.register import (
    AREAS_CSV,
    AREAS_CSV_COLUMNS,
    build_register,
    export_register,
    load_register_json,
    areas_csv,
    register_json,
)
from ncpi_workflow.report import ReportInvalid, load_report, report_json_schema
from ncpi_workflow.store import insert_report, load_reference_forces
from ncpi_workflow.web.app import create_app
from tests.conftest import ROOT, run_ncpi
from tests.web.conftest import FORCES, add_user, browser, web_settings

PUBLISHED = date(2017, 1, 26)
LONG_TEXT = "The force should improve how it records the voice of the child. " * 312  # just under 20,000 characters
AREAS = [
    {"ref": "AFI2", "text": "=The force should check its formula-like text is defused in CSV."},
    {"ref": "AFI1", "text": "The force should improve how it records the voice of the child in its investigations."},
    {"ref": "AFI10", "text": LONG_TEXT.strip()},
]


def document(**changes) -> dict:
    doc = {
        "format_version": 1, "force": "CUM", "programme": "NCPI", "title": "Cumbria Constabulary - inspection (illustrative)",
        "source_url": "https://www.justiceinspectorates.gov.uk/hmicfrs/cumbria/", "illustrative": True,
        "fieldwork": {"start": "2016-07-04", "end": "2016-07-15"}, "published": PUBLISHED.isoformat(),
        "findings": [{"ref": "C1", "kind": "concern", "text": "A concern."}],
        "recommendations": [{"ref": "R1", "text": "The force should act.", "timeframe": "within_three_months", "answers": "C1"}],
        "areas_for_improvement": AREAS,
    }
    doc.update(changes)
    return doc


def write(tmp_path, doc, name="report.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def load(path):
    return load_report(path, known_forces=set(FORCES), max_bytes=1 << 20)


# ---------------------------------------------------------------- the report file


def test_areas_for_improvement_are_read_with_the_report_and_match_the_json_schema(tmp_path):
    assert len(LONG_TEXT.strip()) <= 20_000
    report = load(write(tmp_path, document())).report
    assert [(a.ref, a.text[:20]) for a in report.areas_for_improvement] == [
        ("AFI2", "=The force should ch"), ("AFI1", "The force should imp"), ("AFI10", "The force should imp")]
    jsonschema.Draft202012Validator(report_json_schema()).validate(json.loads(json.dumps(document())))
    # Optional: a report without any is as before.
    assert load(write(tmp_path, document(areas_for_improvement=[]), "none.yaml")).report.areas_for_improvement == []


@pytest.mark.parametrize("areas,expected", [
    ([{"ref": "AFI1", "text": "One."}, {"ref": "AFI1", "text": "Two."}],
     ":{line}: areas_for_improvement[1].ref: duplicate area for improvement reference 'AFI1' (also areas_for_improvement[0])"),
    ([{"ref": "A1", "text": "One."}], ":{line}: areas_for_improvement[0].ref: String should match pattern '^AFI[0-9]{{1,3}}$'"),
    ([{"ref": "AFI1", "text": "   "}], ":{line}: areas_for_improvement[0].text: String should have at least 1 character"),
    ([{"ref": "AFI1", "text": "x" * 20_001}], ":{line}: areas_for_improvement[0].text: String should have at most 20000 characters"),
    ([{"ref": "AFI1", "text": "One.", "deadline": "2017-03-01"}], ":{line}: areas_for_improvement[0].deadline: unknown field"),
])
def test_a_bad_area_for_improvement_is_one_line_naming_file_line_field_and_reason(tmp_path, areas, expected):
    path = write(tmp_path, document(areas_for_improvement=areas))
    with pytest.raises(ReportInvalid) as caught:
        load(path)
    [problem] = caught.value.problems
    lines = path.read_text().splitlines()
    index = expected.split("areas_for_improvement[")[1][0]
    field = expected.split("].")[1].split(":")[0]
    # The line of that field of that item in the file.
    starts = [n for n, line in enumerate(lines, 1) if line.startswith("- ref:") or line.startswith("  - ref:")]
    area_starts = [n for n in starts if n > next(n for n, line in enumerate(lines, 1) if line.startswith("areas_for_improvement:"))]
    first = area_starts[int(index)]
    line = next(n for n, text in enumerate(lines, 1) if n >= first and text.lstrip("- ").startswith(f"{field}:"))
    assert problem.startswith(f"{path}{expected.format(line=line)}"), problem


def test_ncpi_validate_accepts_and_refuses_areas_for_improvement(tmp_path, cli_env):
    good = write(tmp_path, document(), "good.yaml")
    bad = write(tmp_path, document(areas_for_improvement=[{"ref": "AFI1", "text": "a"}, {"ref": "AFI1", "text": "b"}]), "bad.yaml")
    result = run_ncpi("validate", str(good), env=cli_env)
    assert result.returncode == 0 and "valid: CUM-2017-01-26, 1 recommendations" in result.stdout, result.stderr
    result = run_ncpi("validate", str(bad), env=cli_env)
    assert result.returncode != 0 and result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith(f"ncpi: {bad}:") and "duplicate area for improvement reference 'AFI1'" in line


# ---------------------------------------------------------------- stored and exported (SQLite and PostgreSQL)


async def publish_records(sessions, tmp_path, doc=None) -> str:
    loaded = load(write(tmp_path, doc or document()))
    policy = load_policy(ROOT / "config" / "policy.toml")
    timeline = plan_report(loaded.report.published, [(r.ref, r.timeframe) for r in loaded.report.recommendations], policy,
                           calendar_for_report(policy, loaded.report.published))
    async with sessions.begin() as session:
        await load_reference_forces(session, FORCES)
        await insert_report(session, loaded, timeline, actor="test", workflow_id=None)
    return loaded.report.inspection_id


async def test_areas_are_stored_and_exported_in_json_csv_and_html(sessions, tmp_path):
    inspection_id = await publish_records(sessions, tmp_path)
    async with sessions() as session:
        rows = (await session.scalars(select(AreaForImprovement).order_by(AreaForImprovement.id))).all()
    assert [(r.inspection_id, r.ref) for r in rows] == [(inspection_id, "AFI2"), (inspection_id, "AFI1"), (inspection_id, "AFI10")]
    assert next(r for r in rows if r.ref == "AFI10").text == LONG_TEXT.strip()  # the whole limit, on either database
    # Publishing the same report's records again writes nothing more.
    await publish_records(sessions, tmp_path)
    async with sessions() as session:
        assert len((await session.scalars(select(AreaForImprovement))).all()) == 3

    async with sessions() as session:
        doc = await build_register(session, today=date(2017, 6, 1))
    [inspection] = doc.inspections
    assert [a.ref for a in inspection.areas_for_improvement] == ["AFI1", "AFI2", "AFI10"]  # report order
    exported = register_json(doc)
    assert exported["inspections"][0]["areas_for_improvement"][0] == {"ref": "AFI1", "text": AREAS[1]["text"]}
    assert load_register_json(json.loads(json.dumps(exported))) == doc
    # An export from before this field still reads back (with none).
    del exported["inspections"][0]["areas_for_improvement"]
    assert load_register_json(json.loads(json.dumps(exported))).inspections[0].areas_for_improvement == []

    rows = list(csv.DictReader(io.StringIO(areas_csv(doc))))
    assert list(rows[0]) == AREAS_CSV_COLUMNS and len(rows) == 3
    assert rows[0] == {"inspection_id": inspection_id, "force_code": "CUM", "force_name": "Cumbria Constabulary",
                       "report_title": "Cumbria Constabulary - inspection (illustrative)",
                       "report_url": "https://www.justiceinspectorates.gov.uk/hmicfrs/cumbria/", "published_on": "2017-01-26",
                       "ref": "AFI1", "text": AREAS[1]["text"]}
    assert rows[1]["text"].startswith("'=")  # a spreadsheet would run it otherwise
    readme = (ROOT / "README.md").read_text()
    assert "## Areas for improvement" in readme
    for column in AREAS_CSV_COLUMNS:
        assert f"`{column}`" in readme, f"README does not document the column {column} of {AREAS_CSV}"

    out = tmp_path / "register"
    export_register(doc, out)
    written = list(csv.DictReader(io.StringIO((out / AREAS_CSV).read_text())))
    assert [r["ref"] for r in written] == ["AFI1", "AFI2", "AFI10"]
    page = (out / f"recommendations/{inspection_id}-R1.html").read_text()
    assert "Areas for improvement in this report" in page and AREAS[1]["text"] in page
    assert f'href="../{AREAS_CSV}"' in page  # the footer's download link, relative in the static export


async def test_a_report_without_areas_exports_none(sessions, tmp_path):
    await publish_records(sessions, tmp_path, document(areas_for_improvement=[]))
    async with sessions() as session:
        doc = await build_register(session, today=date(2017, 6, 1))
    assert doc.inspections[0].areas_for_improvement == []
    assert areas_csv(doc) == ",".join(AREAS_CSV_COLUMNS) + "\r\n"
    out = tmp_path / "register"
    export_register(doc, out)
    assert "Areas for improvement in this report" not in (out / f"recommendations/{doc.recommendations[0].id}.html").read_text()


# ---------------------------------------------------------------- the inspectors' inspection page


def noon(day: date) -> datetime:
    return datetime.combine(day, time(12, 0), tzinfo=LONDON).astimezone(timezone.utc)


async def test_the_inspection_page_lists_areas_and_each_report_item_due_received_and_what(sessions, database_url, tmp_path):
    inspection_id = await publish_records(sessions, tmp_path)
    w = RecordActivities(sessions, InspectorateAddresses("inspectors@example.org", "lead@example.org"))
    # The action plan: a document, received on 6 March 2017, recorded on 2 December 2026 (back-dated).
    sha = "ab" * 32
    await w.mark_deadline_met(DeadlineMetRecord(inspection_id, "action_plan", 1, noon(date(2017, 3, 6)),
                                                datetime(2026, 12, 2, 10, 0, tzinfo=timezone.utc)))
    await w.audit(AuditRecord(f"{inspection_id}/plan", "hmi.lead", "action_plan.received", "inspection", inspection_id,
                              {"note": "By post", "filename": "action-plan.pdf", "sha256": sha}))
    # The PCC's response: its address, received (and recorded) on 20 March 2017.
    await w.mark_deadline_met(DeadlineMetRecord(inspection_id, "pcc_response", 1, noon(date(2017, 3, 20))))
    await w.audit(AuditRecord(f"{inspection_id}/pcc", "hmi.deputy", "pcc_response.received", "inspection", inspection_id,
                              {"note": "", "url": "https://www.cumbria-pcc.example/response"}))
    async with sessions() as session:
        due = {d.key: d.current_due for d in (await session.scalars(select(Deadline).where(Deadline.inspection_id == inspection_id))).all()}

    app = create_app(web_settings(database_url, tmp_path), sessions=sessions)
    viewer = browser(app)
    try:
        assert (await viewer.sign_in(await add_user(sessions, "viewer"))).status_code == 303
        response = await viewer.get(f"/inspections/{inspection_id}")
        assert response.status_code == 200, response.text[:2000]
        page = response.text
    finally:
        await viewer.aclose()
    assert 'id="areas-for-improvement"' in page and AREAS[1]["text"] in page and "<strong>AFI10</strong>" in page
    assert page.index("<strong>AFI1</strong>") < page.index("<strong>AFI2</strong>") < page.index("<strong>AFI10</strong>")
    table = page[page.index('id="received-items"'):]
    table = table[:table.index("</table>")]
    plan = table[table.index("Force action plan"):table.index("PCC&#39;s published response")]
    assert f"{due['action_plan'].day} {due['action_plan']:%B %Y}" in plan
    assert "6 March 2017 (recorded 2 December 2026)" in plan
    assert f'href="/inspections/{inspection_id}/documents/{sha}"' in plan and "action-plan.pdf" in plan
    assert "By post" in plan and "hmi.lead" in plan
    pcc = table[table.index("PCC&#39;s published response"):]
    assert f"{due['pcc_response'].day} {due['pcc_response']:%B %Y}" in pcc and "20 March 2017" in pcc and "recorded" not in pcc
    assert 'href="https://www.cumbria-pcc.example/response"' in pcc and "hmi.deputy" in pcc
    # One row per report-level item of the report (this one has no "immediately" recommendation).
    items = [key for key in ("action_plan", "pcc_response", "immediate_update") if key in due]
    assert items == ["action_plan", "pcc_response"] and table.count('<tr class="govuk-table__row">') == 1 + 2  # the header's
    assert "Not received" not in table
