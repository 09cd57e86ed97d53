"""The post-inspection review's report (`programme: PIR`, ncpi_workflow/revisit_reports.py): checked
by `ncpi validate` with the file, line, field and reason; recorded by `ncpi publish` against the
reviewed inspection's revisit (opening it back-dated to the fieldwork start when it is not open
yet), on the time-skipping server with a real worker and SQLite and PostgreSQL; refused with
nothing recorded or opened when the inspection or a recommendation is unknown or a date is
impossible; shown on the inspectors' pages and in the public register (HTML, JSON, CSV); and
`ncpi publish` of one end to end on the real dev server."""

from __future__ import annotations

import csv
import io
import json
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path

import jsonschema
import pytest
import yaml
from sqlalchemy import func, select

from ncpi_workflow.errors import UserError
from ncpi_workflow.formatting import LONDON
from ncpi_workflow.models import AuditEvent, Recommendation, Revisit, RevisitFinding, RevisitReport
from ncpi_workflow.register import build_register, export_register, load_register_json, register_csv, register_json
from ncpi_workflow.report import ReportInvalid, load_report, report_json_schema
from ncpi_workflow.revisit_reports import record_review
from ncpi_workflow.web.app import create_app
from tests.conftest import ROOT, run_ncpi
from tests.lifecycle_support import harness, skip_to, write_report
from tests.test_lifecycle_timeskipping import at, eventually, insp_view, start
from tests.web.conftest import FORCES, add_user, browser, web_settings

EXAMPLE = ROOT / "examples" / "reviews" / "cumbria-2017-pir.yaml"
P = date(2017, 1, 26)
INSPECTION = "CUM-2017-01-26"
FINDINGS_R1 = "The constabulary now takes part in every initial strategy discussion.\nThe change is well established."
FINDINGS_R2 = "A problem profile has been completed with partners, but is not yet used to direct activity."


def pir(**changes) -> dict:
    doc = {
        "format_version": 1, "force": "CUM", "programme": "PIR", "follows": INSPECTION, "illustrative": True,
        "title": "Cumbria Constabulary - post-inspection review (illustrative)",
        "source_url": "https://www.justiceinspectorates.gov.uk/hmicfrs/cumbria-pir/",
        "fieldwork": {"start": "2017-02-20", "end": "2017-02-24"}, "published": "2017-03-08",
        "inspectors": ["A. Inspector", "B. Inspector"],
        "revisit_findings": [{"recommendation": "R1", "findings": FINDINGS_R1}, {"recommendation": "R2", "findings": FINDINGS_R2}],
    }
    doc.update(changes)
    return {k: v for k, v in doc.items() if v is not None}


def write(folder: Path, doc: dict, name: str = "pir.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def load(path: Path):
    return load_report(path, known_forces=set(FORCES), max_bytes=1 << 20)


def line_of(path: Path, key: str, occurrence: int = 0) -> int:
    """The line (1-based) of the `occurrence`-th `key:` in the file."""
    found = [n for n, text in enumerate(path.read_text().splitlines(), 1) if text.lstrip("- ").startswith(f"{key}:")]
    return found[occurrence]


# ---------------------------------------------------------------- the file: `ncpi validate`


def test_the_example_review_is_valid_and_matches_the_json_schema():
    report = load(EXAMPLE).report
    assert (report.programme, report.follows, report.is_review) == ("PIR", "CUM-2017-01-26", True)
    assert report.fieldwork.start == date(2017, 6, 12) and report.published == date(2017, 9, 21)  # DESIGN.md's Cumbria
    assert [f.recommendation for f in report.revisit_findings] == ["R1", "R2", "R4"] and report.inspectors
    validator = jsonschema.Draft202012Validator(report_json_schema())
    validator.validate(json.loads(json.dumps(yaml.safe_load(EXAMPLE.read_text()), default=str)))
    # The schema holds the programme's rules too.
    for bad in (pir(follows=None), pir(inspectors=[]), pir(recommendations=[{"ref": "R1", "text": "x", "timeframe": "immediately"}])):
        assert list(validator.iter_errors(json.loads(json.dumps(bad)))), bad
    ncpi = yaml.safe_load((ROOT / "examples" / "cumbria-2017.yaml").read_text())
    validator.validate(json.loads(json.dumps({**ncpi, "areas_for_improvement": []}, default=str)))
    assert list(validator.iter_errors(json.loads(json.dumps({**ncpi, "recommendations": []}, default=str))))
    assert list(validator.iter_errors(json.loads(json.dumps({**ncpi, "follows": INSPECTION}, default=str))))


@pytest.mark.parametrize("changes,key,occurrence,reason", [
    (dict(follows=None), "programme", 0, "a post-inspection review's report needs `follows`: the ID of the inspection it reviews"),
    (dict(follows="KEN-2017-01-26"), "follows", 0, "KEN-2017-01-26 is not an inspection of force CUM"),
    (dict(follows="CUM-2017-02-30"), "follows", 0, "'CUM-2017-02-30' does not end in a real date"),
    (dict(follows="CUM-2017-02-20"), "start", 0,
     "the review's fieldwork (2017-02-20) starts on or before the reviewed report was published (2017-02-20)"),
    (dict(inspectors=[]), "inspectors", 0, "a post-inspection review's report names its inspectors (at least one)"),
    (dict(inspectors=["x" * 201]), "inspectors+1", 0, "inspectors[0]: String should have at most 200 characters"),
    (dict(inspectors=["A. Inspector\nB. Inspector"]), "inspectors+1", 0, "inspectors: 'A. Inspector\\nB. Inspector': a name is one line"),
    (dict(revisit_findings=[]), "revisit_findings", 0, "a post-inspection review's report gives findings on at least one recommendation"),
    (dict(revisit_findings=[{"recommendation": "R1", "findings": "a"}, {"recommendation": "R1", "findings": "b"}]),
     "recommendation", 1, "findings on R1 are given twice (also revisit_findings[0])"),
    (dict(revisit_findings=[{"recommendation": "R1", "findings": "a", "cycle": 1}, {"recommendation": "R2", "findings": "b", "cycle": 2}]),
     "cycle", 1, "one review's report is the report of one revisit; its findings name cycles [1, 2]"),
    (dict(revisit_findings=[{"recommendation": "X1", "findings": "a"}]), "recommendation", 0, "String should match pattern '^R[0-9]{1,3}$'"),
    (dict(revisit_findings=[{"recommendation": "R1", "findings": "  "}]), "findings", 0, "String should have at least 1 character"),
    (dict(revisit_findings=[{"recommendation": "R1", "findings": "a", "cycle": 0}]), "cycle", 0, "Input should be greater than or equal to 1"),
    (dict(recommendations=[{"ref": "R1", "text": "x", "timeframe": "immediately"}]), "recommendations+1", 0,
     "recommendations[0]: a post-inspection review's report has no recommendations of its own here"),
    (dict(areas_for_improvement=[{"ref": "AFI1", "text": "x"}]), "areas_for_improvement+1", 0,
     "areas_for_improvement[0]: a post-inspection review's report has no areas for improvement of its own here"),
    (dict(programme="NCPI", recommendations=[{"ref": "R1", "text": "x", "timeframe": "immediately"}]), "follows", 0,
     "only a post-inspection review's report (programme: PIR) has follows"),
    (dict(programme="HMIC"), "programme", 0, "Input should be 'NCPI' or 'PIR'"),
])
def test_a_bad_review_file_names_the_file_line_field_and_reason(tmp_path, changes, key, occurrence, reason):
    path = write(tmp_path, pir(**changes))
    with pytest.raises(ReportInvalid) as caught:
        load(path)
    problems = [p for p in caught.value.problems if reason in p]
    assert problems, caught.value.problems
    key, _, below = key.partition("+")  # "+1": the line below the key's (a list's first item)
    line = line_of(path, key, occurrence) + int(below or 0)
    assert problems[0].startswith(f"{path}:{line}: "), (problems[0], line)


def test_ncpi_validate_and_plan_of_a_review(tmp_path, cli_env):
    result = run_ncpi("validate", str(EXAMPLE), env=cli_env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{EXAMPLE}: valid: post-inspection review of CUM-2017-01-26, findings on 3 recommendations\n"
    bad = write(tmp_path, pir(inspectors=[]))
    result = run_ncpi("validate", str(bad), env=cli_env)
    assert result.returncode != 0 and result.stdout == ""
    assert result.stderr.splitlines() == [f"ncpi: {bad}:{line_of(bad, 'inspectors')}: inspectors: a post-inspection review's "
                                          "report names its inspectors (at least one)"]
    result = run_ncpi("plan", str(EXAMPLE), env=cli_env)
    assert result.returncode != 0 and len(result.stderr.splitlines()) == 1 and "starts no clocks" in result.stderr


# ---------------------------------------------------------------- recorded against the revisit (time-skipping server)


def noon(day: date) -> datetime:
    return datetime.combine(day, time(12, 0), tzinfo=LONDON).astimezone(timezone.utc)


def utc(instant: datetime) -> datetime:
    return instant if instant.tzinfo is not None else instant.replace(tzinfo=timezone.utc)


async def counts(h) -> tuple[int, int, int, int]:
    async with h.sessions() as session:
        return tuple([await session.scalar(select(func.count()).select_from(m)) for m in (RevisitReport, RevisitFinding, Revisit)]
                     + [await session.scalar(select(func.count()).select_from(AuditEvent)
                                             .where(AuditEvent.action == "revisit_report.recorded"))])


async def refused(h, path: Path, expected: str) -> None:
    """`ncpi publish`'s use case refuses the file with one line naming it; nothing is recorded or opened."""
    before = await counts(h)
    phase = (await insp_view(h, INSPECTION)).state.phase
    with pytest.raises(UserError) as caught:
        await record_review(h.settings, h.client, load(path), by="test")
    message = str(caught.value)
    assert message.startswith(f"{path}") and expected in message and "\n" not in message, message
    assert await counts(h) == before
    assert (await insp_view(h, INSPECTION)).state.phase == phase


async def test_a_review_is_recorded_against_the_revisit_it_opens_back_dated(time_skipping_env, tmp_path, database_url):
    report = write_report(tmp_path, "CUM", P, [("R1", "within_six_months"), ("R2", "within_three_months")])
    async with harness(time_skipping_env, tmp_path, database_url=database_url) as h:
        await start(h, report, P)
        await skip_to(h, at(2017, 3, 10, 10))  # the follow-up's calendar: Friday 10 March 2017
        assert (await insp_view(h, INSPECTION)).state.phase == "following_up"

        # Refused, nothing recorded, nothing opened.
        r9 = write(tmp_path, pir(revisit_findings=[{"recommendation": "R9", "findings": "x"}]), "r9.yaml")
        await refused(h, r9, f"{r9}:{line_of(r9, 'recommendation')}: revisit_findings[0].recommendation: CUM-2017-01-26 has no "
                             "recommendation R9 (it has R1, R2); nothing was recorded")
        await refused(h, write(tmp_path, pir(published="2017-03-13"), "future.yaml"), "published: 2017-03-13 is in the future")
        await refused(h, write(tmp_path, pir(fieldwork={"start": "2017-03-11", "end": "2017-03-12"}, published="2017-03-12"),
                               "future-fieldwork.yaml"), "published: 2017-03-12 is in the future (today is 2017-03-")
        await refused(h, write(tmp_path, pir(follows="CUM-2017-01-27"), "unknown.yaml"),
                      "follows: no published inspection CUM-2017-01-27")
        await refused(h, write(tmp_path, pir(revisit_findings=[{"recommendation": "R1", "findings": "x", "cycle": 2}]), "cycle2.yaml"),
                      "revisit_findings[0].cycle: the follow-up of CUM-2017-01-26 is in cycle 1; cycle 2 has not begun")
        assert await counts(h) == (0, 0, 0, 0)

        # Recorded: the revisit opens as on the first day of fieldwork, recorded today.
        path = write(tmp_path, pir())
        loaded = load(path)
        result = await record_review(h.settings, h.client, loaded, by="hmi.lead")
        assert (result.inspection_id, result.cycle, result.created, result.opened_revisit, result.findings) == (INSPECTION, 1, True, True, 2)
        view = await insp_view(h, INSPECTION)
        assert view.state.phase == "revisit_open" and utc(view.state.revisit_opened_at) == noon(date(2017, 2, 20))
        async with h.sessions() as session:
            revisit = (await session.scalars(select(Revisit))).one()
            row = (await session.scalars(select(RevisitReport))).one()
            findings = {f.recommendation_id: f.text for f in (await session.scalars(select(RevisitFinding))).all()}
            audit = (await session.scalars(select(AuditEvent).where(AuditEvent.action == "revisit_report.recorded"))).one()
        assert utc(revisit.opened_at) == noon(date(2017, 2, 20)) and revisit.trigger == "inspector"
        assert utc(revisit.recorded_at) > utc(revisit.opened_at)  # both dates kept (recorded on 10 March, calendar time)
        assert (row.inspection_id, row.cycle, row.revisit_id, row.title, row.source_url, row.published_on, row.fieldwork_start,
                row.fieldwork_end, row.inspectors, row.report_sha256, row.recorded_by) == (
            INSPECTION, 1, revisit.id, "Cumbria Constabulary - post-inspection review (illustrative)",
            "https://www.justiceinspectorates.gov.uk/hmicfrs/cumbria-pir/", date(2017, 3, 8), date(2017, 2, 20), date(2017, 2, 24),
            ["A. Inspector", "B. Inspector"], loaded.sha256, "hmi.lead")
        assert findings == {f"{INSPECTION}-R1": FINDINGS_R1, f"{INSPECTION}-R2": FINDINGS_R2}
        assert audit.actor == "hmi.lead" and audit.detail["cycle"] == 1 and audit.detail["sha256"] == loaded.sha256
        # The recommendations are under review (the workflow's own rules: evidence is asked for).
        async def asked():
            async with h.sessions() as session:
                phases = [r.phase for r in (await session.scalars(select(Recommendation))).all()]
            return phases if all(p == "evidence_requested" for p in phases) else None
        await eventually(asked)

        # The same file again changes nothing; another file for the same revisit is refused.
        before = await counts(h)
        again = await record_review(h.settings, h.client, load(path), by="hmi.lead")
        assert (again.created, again.opened_revisit) == (False, False) and await counts(h) == before
        await refused(h, write(tmp_path, pir(title="Another title"), "other.yaml"),
                      "the review of cycle 1 of CUM-2017-01-26 is already recorded from a different file")

        # Shown: the public register (HTML, JSON, CSV) and the inspectors' pages.
        async with h.sessions() as session:
            doc = await build_register(session, today=date(2017, 3, 10))
        r1 = doc.recommendation(f"{INSPECTION}-R1")
        [found] = r1.reinspection_findings
        assert (found.cycle, found.findings, found.report_title, found.report_published_on) == (
            1, FINDINGS_R1, "Cumbria Constabulary - post-inspection review (illustrative)", date(2017, 3, 8))
        [review] = doc.inspection(INSPECTION).revisit_reports
        assert (review.cycle, review.url, review.fieldwork_start, review.fieldwork_end) == (
            1, "https://www.justiceinspectorates.gov.uk/hmicfrs/cumbria-pir/", date(2017, 2, 20), date(2017, 2, 24))
        exported = register_json(doc)
        assert load_register_json(json.loads(json.dumps(exported))) == doc
        text = json.dumps(exported)
        assert "A. Inspector" not in text and loaded.sha256 not in text and "hmi.lead" not in text  # the publication rule
        rows = {r["id"]: r for r in csv.DictReader(io.StringIO(register_csv(doc)))}
        assert rows[f"{INSPECTION}-R2"]["reinspection_findings"] == f"cycle 1: {FINDINGS_R2}"
        assert rows[f"{INSPECTION}-R1"]["reinspection_findings"] == "cycle 1: " + " ".join(FINDINGS_R1.split())
        assert rows[f"{INSPECTION}-R1"]["reinspection_published_on"] == "2017-03-08"
        assert rows[f"{INSPECTION}-R1"]["reinspection_report_url"] == "https://www.justiceinspectorates.gov.uk/hmicfrs/cumbria-pir/"
        readme = (ROOT / "README.md").read_text()
        assert "## Post-inspection reviews" in readme
        for column in ("reinspection_findings", "reinspection_report_title", "reinspection_report_url", "reinspection_published_on"):
            assert f"`{column}`" in readme
        out = tmp_path / "register"
        export_register(doc, out)
        page = (out / f"recommendations/{INSPECTION}-R1.html").read_text()
        assert 'id="reinspection-findings"' in page and "Re-inspection findings" in page and FINDINGS_R2 not in page
        assert "The constabulary now takes part in every initial strategy discussion." in page
        assert '<time datetime="2017-03-08">8 March 2017</time>' in page
        assert 'href="https://www.justiceinspectorates.gov.uk/hmicfrs/cumbria-pir/"' in page and "A. Inspector" not in page

        app = create_app(web_settings(h.settings.database_url, tmp_path), sessions=h.sessions)
        viewer = browser(app)
        try:
            assert (await viewer.sign_in(await add_user(h.sessions, "viewer"))).status_code == 303
            inspection_page = (await viewer.get(f"/inspections/{INSPECTION}")).text
            rec_page = (await viewer.get(f"/recommendations/{INSPECTION}-R2")).text
        finally:
            await viewer.aclose()
        section = inspection_page[inspection_page.index('id="reviews"'):]
        section = section[:section.index('govuk-table__caption--m">Recommendations<')]  # the review, under "Revisit"
        assert "Revisit of cycle 1 (illustrative)" in section and "Cumbria Constabulary - post-inspection review (illustrative)" in section
        assert "8 March 2017" in section and "20 February 2017 to 24 February 2017" in section
        assert "A. Inspector, B. Inspector" in section and "by hmi.lead" in section and loaded.sha256[:12] in section
        assert FINDINGS_R2 in section and f'href="/recommendations/{INSPECTION}-R1"' in section
        reinspection = rec_page[rec_page.index('id="reinspection-findings"'):]
        assert FINDINGS_R2 in reinspection and FINDINGS_R1 not in reinspection
        assert "Recommendation from the inspection report" in reinspection and "Recommendation R2." in reinspection
        assert "published 8 March 2017" in reinspection


async def test_a_review_of_a_revisit_already_held_opens_nothing(time_skipping_env, tmp_path, database_url):
    report = write_report(tmp_path, "CUM", P, [("R1", "within_six_months"), ("R2", "within_three_months")])
    async with harness(time_skipping_env, tmp_path, database_url=database_url) as h:
        await start(h, report, P)
        from ncpi_workflow.app.inspector_actions import trigger_revisit
        await skip_to(h, at(2017, 3, 10, 10))
        opened = await trigger_revisit(h.settings, h.client, INSPECTION, "hmi.deputy")  # opened live, today
        assert opened.cycle == 1
        # Its report names the fieldwork before the day the revisit was recorded as opened: the revisit stands.
        # The same file recorded twice at once (two inspectors, say): one record, and neither call fails.
        import asyncio

        loaded = load(write(tmp_path, pir(published="2017-03-10")))
        results = await asyncio.gather(*(record_review(h.settings, h.client, loaded, by=f"hmi.{n}") for n in ("lead", "deputy")))
        assert sorted(r.created for r in results) == [False, True]
        assert {(r.opened_revisit, r.cycle) for r in results} == {(False, 1)}
        assert await counts(h) == (1, 2, 1, 1)
        async with h.sessions() as session:
            revisit = (await session.scalars(select(Revisit))).one()
            row = (await session.scalars(select(RevisitReport))).one()
        assert utc(revisit.opened_at) == utc(opened.opened_at) and revisit.triggered_by == "hmi.deputy"  # unchanged
        assert row.revisit_id == revisit.id and row.cycle == 1


# ---------------------------------------------------------------- `ncpi publish` of a review, end to end (dev server)


async def test_ncpi_publish_of_a_review_records_it_and_starts_no_follow_up(dev_server_env, tmp_path):
    from tests.test_cli_devserver import Cli, projected, today

    async with harness(dev_server_env, tmp_path) as h:
        import os

        env = {k: v for k, v in os.environ.items() if not k.startswith("NCPI_")}
        env.update(NCPI_TEMPORAL_ADDRESS=dev_server_env.address, NCPI_DATABASE_URL=h.settings.database_url,
                   NCPI_TASK_QUEUE=h.settings.task_queue, NCPI_DATA_DIR=str(h.settings.data_dir),
                   NCPI_SMTP_HOST=h.settings.smtp_host, NCPI_SMTP_PORT=str(h.settings.smtp_port),
                   NCPI_SETTINGS_FILE=str(tmp_path / "absent-ncpi.toml"))
        cli = Cli(h, env, tmp_path)
        now = today()
        published = now - timedelta(days=20)  # no deadline has passed yet (the first, the action plan's, is at six weeks)
        original = write_report(tmp_path, "NOT", published, [("R1", "within_six_months")])
        inspection = f"NOT-{published.isoformat()}"
        assert (await cli.ok("publish", original)).startswith(f"published {inspection}")
        await projected(h, inspection, 1)
        review = write(tmp_path, pir(force="NOT", follows=inspection,
                                     fieldwork={"start": (published + timedelta(days=5)).isoformat(),
                                                "end": (published + timedelta(days=8)).isoformat()},
                                     published=(published + timedelta(days=15)).isoformat(),
                                     revisit_findings=[{"recommendation": "R1", "findings": FINDINGS_R1}]), "not-pir.yaml")
        # A refusal first: one line, non-zero, nothing recorded.
        bad = write(tmp_path, {**yaml.safe_load(review.read_text()), "revisit_findings": [{"recommendation": "R2", "findings": "x"}]},
                    "not-pir-r2.yaml")
        result = await cli("publish", bad)
        assert result.returncode != 0 and result.stdout == ""
        assert result.stderr.splitlines() == [
            f"ncpi: {bad}:{line_of(bad, 'recommendation')}: revisit_findings[0].recommendation: {inspection} has no "
            "recommendation R2 (it has R1); nothing was recorded"]
        # The web app's publish form takes the same file: a refusal names the uploaded file (error summary).
        from tests.web.conftest import SECRET, error_summary

        settings = h.settings.model_copy(update={"temporal_address": dev_server_env.address, "secret_key": SECRET})
        admin = browser(create_app(settings, sessions=h.sessions))
        try:
            assert (await admin.sign_in(await add_user(h.sessions, "admin"))).status_code == 303
            response = await admin.post("/publish", files={"report": ("not-pir-r2.yaml", bad.read_bytes(), "application/yaml")},
                                        from_page="/publish")
            assert response.status_code == 400, response.text[:2000]
            [(href, text)] = error_summary(response.text)
            assert text == (f"not-pir-r2.yaml:{line_of(bad, 'recommendation')}: revisit_findings[0].recommendation: {inspection} "
                            "has no recommendation R2 (it has R1); nothing was recorded")
            out = await cli.ok("publish", review)
            response = await admin.post("/publish", files={"report": ("not-pir.yaml", review.read_bytes(), "application/yaml")},
                                        from_page="/publish")
            assert response.status_code == 303 and response.headers["location"] == f"/inspections/{inspection}#reviews"
            page = (await admin.get(response.headers["location"])).text
            assert f"The review of cycle 1 of {inspection} is already recorded from this file; nothing changed." in page
            assert 'id="review-cycle-1"' in page
        finally:
            await admin.aclose()
        assert out == (f"recorded the post-inspection review of {inspection} (cycle 1): findings on 1 recommendations; "
                       "the revisit was opened as of its fieldwork start\n")
        assert await cli.ok("publish", review) == (
            f"the review of cycle 1 of {inspection} is already recorded from this file; nothing changed\n")
        async with h.sessions() as session:
            revisit = (await session.scalars(select(Revisit).where(Revisit.inspection_id == inspection))).one()
            assert utc(revisit.opened_at) == noon(published + timedelta(days=5))
            assert (await session.scalars(select(RevisitReport))).one().inspection_id == inspection
            from ncpi_workflow.models import Inspection

            assert [i.id for i in (await session.scalars(select(Inspection))).all()] == [inspection]  # no new follow-up


async def test_a_review_names_its_cycle_or_reports_the_current_one(time_skipping_env, tmp_path):
    from tests.test_lifecycle_timeskipping import _cycle, decide, revisit_and_evidence

    published, inspection = date(2017, 2, 7), "WYP-2017-02-07"
    report = write_report(tmp_path, "WYP", published, [("R1", "within_three_months")])
    async with harness(time_skipping_env, tmp_path) as h:
        await start(h, report, published)
        await revisit_and_evidence(h, inspection, ["R1"], at(2017, 5, 15, 12))  # cycle 1's revisit, opened live
        await decide(h, f"{inspection}-R1", "partially_achieved", "Profile written; not yet used in districts.")
        await eventually(lambda: _cycle(h, inspection, 2))
        await skip_to(h, at(2017, 6, 1, 10))
        # The action plan arrives today: the follow-up's calendar has reached 1 June (its workflow ran then).
        from ncpi_workflow.app.inspector_actions import record_delivery

        await record_delivery(h.settings, h.client, inspection, "action_plan", "hmi.lead")
        review = lambda name, **changes: write(tmp_path, pir(
            force="WYP", follows=inspection, revisit_findings=[{"recommendation": "R1", "findings": FINDINGS_R1,
                                                               **({"cycle": changes.pop("cycle")} if "cycle" in changes else {})}],
            **changes), name)

        # Cycle 1's report, while the follow-up is in cycle 2: recorded against cycle 1's revisit, nothing opened.
        result = await record_review(h.settings, h.client, load(review(
            "cycle1.yaml", cycle=1, fieldwork={"start": "2017-05-15", "end": "2017-05-16"}, published="2017-05-31")), by="hmi.lead")
        assert (result.cycle, result.created, result.opened_revisit) == (1, True, False)
        assert (await insp_view(h, inspection)).state.phase == "following_up"

        # Without a cycle: the current one's (2). Its fieldwork cannot start before cycle 1's revisit opened.
        early = review("early.yaml", fieldwork={"start": "2017-05-10", "end": "2017-05-12"}, published="2017-05-31")
        with pytest.raises(UserError) as caught:
            await record_review(h.settings, h.client, load(early), by="hmi.lead")
        assert str(caught.value) == (
            f"{early}:{line_of(early, 'start')}: fieldwork.start: the review's fieldwork (2017-05-10) starts before the revisit "
            "of cycle 1 opened (2017-05-15): it cannot be cycle 2's; nothing was recorded")
        result = await record_review(h.settings, h.client, load(review(
            "cycle2.yaml", fieldwork={"start": "2017-05-22", "end": "2017-05-24"}, published="2017-05-31")), by="hmi.lead")
        assert (result.cycle, result.created, result.opened_revisit) == (2, True, True)
        async with h.sessions() as session:
            revisits = {r.cycle: r for r in (await session.scalars(select(Revisit))).all()}
            reports = {r.cycle: r for r in (await session.scalars(select(RevisitReport))).all()}
        assert utc(revisits[2].opened_at) == noon(date(2017, 5, 22)) and local_date_of(revisits[1].opened_at) == date(2017, 5, 15)
        assert {c: r.revisit_id for c, r in reports.items()} == {1: revisits[1].id, 2: revisits[2].id}
        assert {c: r.fieldwork_start for c, r in reports.items()} == {1: date(2017, 5, 15), 2: date(2017, 5, 22)}
        async with h.sessions() as session:
            doc = await build_register(session, today=date(2017, 6, 1))
        assert [(f.cycle, f.report_published_on) for f in doc.recommendation(f"{inspection}-R1").reinspection_findings] == [
            (1, date(2017, 5, 31)), (2, date(2017, 5, 31))]
        rows = {r["id"]: r for r in csv.DictReader(io.StringIO(register_csv(doc)))}
        assert rows[f"{inspection}-R1"]["reinspection_findings"].splitlines() == [
            "cycle 1: " + " ".join(FINDINGS_R1.split()), "cycle 2: " + " ".join(FINDINGS_R1.split())]


def local_date_of(instant: datetime) -> date:
    return utc(instant).astimezone(LONDON).date()
