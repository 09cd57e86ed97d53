"""The public register (ncpi_workflow/register.py): themes in the report file, the register document
built from records written through the worker's record activities (SQLite and PostgreSQL), its
JSON and CSV forms, the publication rule, and `ncpi register export DIR`."""

from __future__ import annotations

import csv
import io
import json
import os
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from activities.records import InspectorateAddresses, RecordActivities
from ncpi_workflow import db
from ncpi_workflow.clocks import calendar_for_report, plan_report
from ncpi_workflow.errors import UserError
from ncpi_workflow.forces import load_forces
from ncpi_workflow.lifecycle import (
    DeadlineMetRecord,
    DecisionRecord,
    EvidenceRecord,
    EvidenceRequestInput,
    NotificationRequest,
    ProgressRecord,
    RecommendationProjection,
    RegisterRecord,
    ReopenRecord,
    RevisitRecord,
)
from ncpi_workflow.policy import load_policy
from ncpi_workflow.register import (
    CSV_COLUMNS,
    STATUSES,
    build_register,
    export_register,
    load_register_json,
    national_by_theme,
    register_csv,
    register_json,
)
from ncpi_workflow.report import ReportInvalid, load_report, report_json_schema
from ncpi_workflow.store import insert_report, load_reference_forces
from tests.conftest import ROOT, run_ncpi

FORCES = load_forces(ROOT / "config" / "forces.yaml")
TODAY = date(2026, 6, 15)

# Planted: each must appear in no exported file and on no /register page.
INTERNAL_NOTE = "Planted-internal-note-Zebrafinch: the DCI doubts the figures"
STAFF_NAME = "Quentin Blackwood-Marsh"
INSPECTOR_NAME = "Ophelia Thistlewaite"
EVIDENCE_FILE = "planted-custody-log-Kestrel.xlsx"
EVIDENCE_DESCRIPTION = "Planted-evidence-description-Heron"
RATIONALE = "Planted-decision-rationale-Osprey"
REOPEN_REASON = "Planted-reopen-reason-Merlin"
RESTRICTED_TEXT = "Planted-restricted-recommendation-Nightjar"
NOTIFICATION_SUBJECT = "Planted-notification-subject-Plover"
PLANTED = [INTERNAL_NOTE, STAFF_NAME, INSPECTOR_NAME, EVIDENCE_FILE, EVIDENCE_DESCRIPTION, RATIONALE, REOPEN_REASON,
           RESTRICTED_TEXT, NOTIFICATION_SUBJECT, "liaison@cumbria.police.example", "sha256", "0123456789abcdef" * 4]
PUBLIC_COMMENT = "The force now attends every strategy discussion; no further action is needed."


def report_file(folder: Path, force: str, published: date, recommendations: list[dict]) -> Path:
    fieldwork_end = published - timedelta(days=60)
    document = {
        "format_version": 1, "force": force, "programme": "NCPI", "title": f"Inspection of {force} (illustrative)",
        "source_url": f"https://www.justiceinspectorates.gov.uk/hmicfrs/{force.lower()}/", "illustrative": True,
        "fieldwork": {"start": (fieldwork_end - timedelta(days=11)).isoformat(), "end": fieldwork_end.isoformat()},
        "published": published.isoformat(),
        "findings": [{"ref": "C1", "kind": "concern", "text": "A concern."}],
        "recommendations": recommendations,
    }
    path = folder / f"{force.lower()}-{published.isoformat()}.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def rec(ref: str, timeframe: str, themes: list[str], **extra) -> dict:
    return {"ref": ref, "text": extra.pop("text", f"The force should act on {ref}."), "timeframe": timeframe,
            "themes": themes, **extra}


async def publish(sessions, folder: Path, force: str, published: date, recommendations: list[dict]) -> str:
    loaded = load_report(report_file(folder, force, published, recommendations), known_forces=set(FORCES), max_bytes=1 << 20)
    policy = load_policy(ROOT / "config" / "policy.toml")
    timeline = plan_report(published, [(r.ref, r.timeframe) for r in loaded.report.recommendations], policy,
                           calendar_for_report(policy, published))
    async with sessions.begin() as session:
        await load_reference_forces(session, FORCES)
        await insert_report(session, loaded, timeline, actor="test", workflow_id=None)
    return loaded.report.inspection_id


def utc(y, m, d, hh=12, mm=0) -> datetime:
    return datetime(y, m, d, hh, mm, tzinfo=timezone.utc)


async def seed_register(sessions, folder: Path) -> dict[str, str]:
    """Two forces' follow-ups written as the workflows write them (the worker's record activities):
    CUM with a trail, a closing decision, a re-opened one, a progress note, evidence, a notification
    and a restricted recommendation; KEN untouched (awaiting review). Returns the ids."""
    w = RecordActivities(sessions, InspectorateAddresses("inspectors@example.org", "lead@example.org"))
    cum = await publish(sessions, folder, "CUM", date(2025, 11, 3), [
        rec("R1", "within_three_months", ["custody", "welfare"]),
        rec("R2", "immediately", ["missing-children"]),
        rec("R3", "within_six_months", ["custody"]),
        rec("R4", "within_three_months", ["welfare"], restricted=True, text=RESTRICTED_TEXT),
    ])
    ken = await publish(sessions, folder, "KEN", date(2026, 1, 9), [rec("R1", "within_three_months", ["custody"])])
    r1, r2, r3 = (f"{cum}-R{i}" for i in (1, 2, 3))
    # R1: being progressed (set at 23:30 UTC on 31 March: 1 April in London), then closed achieved.
    await w.record_progress(ProgressRecord(f"{r1}/p1", r1, "in_progress", INTERNAL_NOTE, STAFF_NAME, utc(2026, 1, 5)))
    await w.record_register_status(RegisterRecord(f"{r1}/reg1", r1, 1, "being progressed",
                                                  "The force has started a training programme.", INSPECTOR_NAME,
                                                  utc(2026, 3, 31, 23, 30)))
    await w.record_evidence(EvidenceRecord(f"{r1}/e1", r1, 1, EvidenceRequestInput(
        EVIDENCE_FILE, "0123456789abcdef" * 4, 12, str(folder / EVIDENCE_FILE), "application/vnd.ms-excel", STAFF_NAME,
        EVIDENCE_DESCRIPTION)))
    await w.record_decision(DecisionRecord(f"{r1}/d1", r1, 1, "achieved", RATIONALE, INSPECTOR_NAME, utc(2026, 5, 20)))
    await w.record_register_status(RegisterRecord(f"{r1}/reg2", r1, 1, "no further action needed", PUBLIC_COMMENT,
                                                  INSPECTOR_NAME, utc(2026, 5, 20)))
    # R2: closed, then re-opened ("awaiting review" again): open, no closing date.
    await w.record_decision(DecisionRecord(f"{r2}/d1", r2, 1, "achieved", RATIONALE, INSPECTOR_NAME, utc(2026, 2, 2)))
    await w.record_register_status(RegisterRecord(f"{r2}/reg1", r2, 1, "no further action needed", "Closed on evidence.",
                                                  INSPECTOR_NAME, utc(2026, 2, 2)))
    await w.record_reopen(ReopenRecord(f"{r2}/reopen", r2, 1, REOPEN_REASON, INSPECTOR_NAME, utc(2026, 3, 3)))
    await w.record_register_status(RegisterRecord(f"{r2}/reg2", r2, 2, "awaiting review", "Reopened after the revisit.",
                                                  INSPECTOR_NAME, utc(2026, 3, 3)))
    await w.project_recommendation(RecommendationProjection(r1, 5, "closed", 1, "implemented", "achieved", None, None,
                                                            "no further action needed"))
    await w.record_notification(NotificationRequest(f"{cum}/n1", "reminder", cum, r3, ("liaison_officer",),
                                                    NOTIFICATION_SUBJECT, utc(2026, 1, 1)))
    await w.mark_deadline_met(DeadlineMetRecord(cum, "action_plan", 1, utc(2025, 12, 10)))
    await w.record_revisit(RevisitRecord(f"{cum}/revisit", cum, 1, "inspector", INSPECTOR_NAME, utc(2026, 4, 20)))
    return {"cum": cum, "ken": ken, "r1": r1, "r2": r2, "r3": r3, "ken_r1": f"{ken}-R1"}


async def document(sessions):
    async with sessions() as session:
        return await build_register(session, today=TODAY)


# ---------------------------------------------------------------- themes in the report file


def test_an_unknown_theme_is_refused_on_one_line_naming_file_field_and_reason(tmp_path):
    path = report_file(tmp_path, "CUM", date(2025, 11, 3), [rec("R1", "immediately", ["custody", "kustody"])])
    with pytest.raises(ReportInvalid) as refused:
        load_report(path, known_forces=set(FORCES), max_bytes=1 << 20)
    [line] = refused.value.problems
    assert line.startswith(f"{path}:") and "recommendations[0].themes: unknown theme 'kustody'" in line
    assert "config/themes.yaml" in line and "\n" not in line
    twice = report_file(tmp_path, "KEN", date(2025, 11, 3), [rec("R1", "immediately", ["custody", "custody"])])
    with pytest.raises(ReportInvalid, match=r"recommendations\[0\]\.themes: a theme is given twice"):
        load_report(twice, known_forces=set(FORCES), max_bytes=1 << 20)


def test_a_bad_themes_file_is_refused_naming_file_line_and_field(tmp_path):
    from ncpi_workflow.report import load_themes

    bad = tmp_path / "themes.yaml"
    bad.write_text("themes:\n  - code: custody\n    label: Custody\n  - code: Not A Code\n    label: Bad\n")
    with pytest.raises(UserError, match=rf"^{bad}:4: themes\[1\]\.code: String should match pattern"):
        load_themes(bad)
    twice = tmp_path / "twice.yaml"
    twice.write_text("themes:\n  - code: custody\n    label: Custody\n  - code: custody\n    label: Again\n")
    with pytest.raises(UserError, match=r"twice.yaml:4: themes\[1\]\.code: duplicate theme 'custody'"):
        load_themes(twice)
    # A report validated against another controlled list (the validation context) uses that list.
    from pydantic import ValidationError

    from ncpi_workflow.report import Report

    data = yaml.safe_load(report_file(tmp_path, "CUM", date(2025, 11, 3), [rec("R1", "immediately", ["custody"])]).read_text())
    with pytest.raises(ValidationError, match="unknown theme 'custody'"):
        Report.model_validate(data, context={"themes": {"welfare": "Welfare"}})
    assert Report.model_validate(data).recommendations[0].themes == ["custody"]


def test_the_json_schema_lists_the_controlled_themes_and_the_examples_carry_some():
    themes = report_json_schema()["$defs"]["Recommendation"]["properties"]["themes"]
    assert "custody" in themes["items"]["enum"] and "missing-children" in themes["items"]["enum"]
    loaded = load_report(ROOT / "examples" / "cumbria-2017.yaml", known_forces=set(FORCES), max_bytes=1 << 20)
    assert any(r.themes for r in loaded.report.recommendations)


# ---------------------------------------------------------------- the document, on both databases


async def test_the_register_document_from_the_records(sessions, tmp_path):
    ids = await seed_register(sessions, tmp_path)
    doc = await document(sessions)
    by_id = {r.id: r for r in doc.recommendations}
    assert set(by_id) == {ids["r1"], ids["r2"], ids["r3"], ids["ken_r1"]}  # R4 is restricted
    r1 = by_id[ids["r1"]]
    assert [(s.on, s.status) for s in r1.trail] == [
        (date(2025, 11, 3), "awaiting review"),
        (date(2026, 4, 1), "being progressed"),  # 23:30 UTC on 31 March is 1 April in London
        (date(2026, 5, 20), "no further action needed"),
    ]
    assert r1.trail[-1].comment == PUBLIC_COMMENT
    assert (r1.status, r1.open, r1.closed_on, r1.outcome, r1.overdue_days) == ("no further action needed", False, date(2026, 5, 20), "achieved", None)
    assert r1.themes == ["custody", "welfare"] and r1.force_name == "Cumbria Constabulary"
    r2 = by_id[ids["r2"]]
    assert (r2.status, r2.open, r2.closed_on) == ("awaiting review", True, None)
    assert [s.status for s in r2.trail] == ["awaiting review", "no further action needed", "awaiting review"]
    r3 = by_id[ids["r3"]]
    assert r3.due_on is not None and r3.overdue_days == (TODAY - r3.due_on).days > 0
    assert all(step.status in STATUSES for r in doc.recommendations for step in r.trail)
    cum = doc.inspection(ids["cum"])
    assert cum.action_plan_received_on == date(2025, 12, 10) and cum.action_plan_due_on is not None
    assert cum.revisit_opened_on == date(2026, 4, 20) and cum.pcc_response_received_on is None
    assert doc.inspection(ids["ken"]).revisit_opened_on is None
    # The national view: custody recurs across two forces.
    rows = {row.code: row for row in national_by_theme(doc)}
    assert rows["custody"].forces == ["Cumbria Constabulary", "Kent Police"] and rows["custody"].recommendations == 3
    assert rows["welfare"].recommendations == 1  # the restricted R4 is not counted
    assert national_by_theme(doc)[0].code == "custody"
    # Nothing of the publication rule's exclusions is in the document's forms.
    text = json.dumps(register_json(doc)) + register_csv(doc)
    for planted in PLANTED:
        assert planted not in text


async def test_json_reads_back_to_the_same_document_and_csv_has_the_documented_columns(sqlite_url_sessions, tmp_path):
    sessions = sqlite_url_sessions
    await seed_register(sessions, tmp_path)
    doc = await document(sessions)
    again = load_register_json(json.loads(json.dumps(register_json(doc))))
    assert again == doc
    rows = list(csv.DictReader(io.StringIO(register_csv(doc))))
    assert list(rows[0]) == CSV_COLUMNS
    readme = (ROOT / "README.md").read_text()
    for column in CSV_COLUMNS:
        assert f"`{column}`" in readme, f"README does not document the CSV column {column}"
    r1 = next(r for r in rows if r["id"].endswith("CUM-2025-11-03-R1"))
    assert r1["themes"] == "custody;welfare" and r1["open"] == "false" and r1["closed_on"] == "2026-05-20"
    assert r1["trail"].splitlines()[1] == "2026-04-01 being progressed: The force has started a training programme."
    with pytest.raises(UserError, match="not a register export"):
        load_register_json({"format": "something else"})


def test_a_csv_cell_that_starts_like_a_formula_is_defused():
    from ncpi_workflow.register import RegisterDocument, RegisterRecommendation, TrailStep

    doc = RegisterDocument(TODAY, [RegisterRecommendation(
        "X-R1", "X", "R1", "CUM", "Cumbria Constabulary", "=HYPERLINK(\"http://evil\")", "https://example.org/", TODAY,
        "+1 text", "immediately", [], "awaiting review", [TrailStep(TODAY, "awaiting review", "ok")], None, None, None,
        True, None)], [])
    row = next(csv.DictReader(io.StringIO(register_csv(doc))))
    assert row["report_title"].startswith("'=") and row["text"] == "'+1 text"


# ---------------------------------------------------------------- ncpi register export


@pytest.fixture
async def sqlite_url_sessions(tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"
    from tests.conftest import migrate

    await migrate(url)  # db.upgrade: a new SQLite file is a copy of the session's migrated template
    async with db.open_database(url) as factory:
        yield factory


async def test_ncpi_register_export_writes_html_json_csv_and_assets(sqlite_url_sessions, tmp_path, cli_env):
    ids = await seed_register(sqlite_url_sessions, tmp_path)
    out = tmp_path / "register"
    result = run_ncpi("register", "export", str(out), "--today", TODAY.isoformat(), env=cli_env)
    assert result.returncode == 0, result.stderr
    assert "register of 4 recommendations" in result.stdout
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert {"index.html", "themes.html", "register.json", "register.csv", "govuk/govuk-frontend.min.css",
            "force/CUM.html", "force/KEN.html", "status/awaiting-review.html", "theme/custody.html",
            f"recommendations/{ids['r1']}.html"} <= files
    assert any(f.startswith("assets/fonts/") for f in files) and "assets/images/govuk-crest.svg" in files
    assert f"recommendations/{ids['cum']}-R4.html" not in files
    css = (out / "govuk/govuk-frontend.min.css").read_text()
    assert "url(/assets/" not in css and "url(../assets/fonts/" in css
    # Every local link and stylesheet of every page resolves to a file of the export (works offline).
    import re

    for page in (p for p in files if p.endswith(".html")):
        html = (out / page).read_text()
        for href in re.findall(r'(?:href|src)="([^"#?]+)"', html):
            if href.startswith(("http://", "https://")):
                continue
            assert (out / page).parent.joinpath(href).resolve().is_file(), f"{page}: {href} is not in the export"
    r1 = (out / f"recommendations/{ids['r1']}.html").read_text()
    assert '<time datetime="2026-04-01">1 April 2026</time>' in r1 and "Being progressed" in r1
    assert "No further action needed" in r1 and PUBLIC_COMMENT in r1
    cum = (out / "force/CUM.html").read_text()
    assert ids["r1"] in cum and ids["ken_r1"] not in cum
    progressed = (out / "status/being-progressed.html").read_text()
    assert "0 recommendations" in progressed  # R1 moved on to "no further action needed"
    custody = (out / "theme/custody.html").read_text()
    assert "3 recommendations" in custody and ids["r2"] not in custody
    themes = (out / "themes.html").read_text()
    assert "Children in custody" in themes and "Cumbria Constabulary, Kent Police" in themes
    exported = json.loads((out / "register.json").read_text())
    assert exported == register_json(await document(sqlite_url_sessions))
    # The publication rule: nothing planted anywhere in the export.
    for path in out.rglob("*"):
        if path.is_file() and path.suffix in (".html", ".json", ".csv"):
            content = path.read_text()
            for planted in PLANTED:
                assert planted not in content, f"{planted!r} in {path.relative_to(out)}"


def test_export_refuses_a_symlinked_or_non_directory_dir_and_never_follows_a_link(tmp_path, cli_env):
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    result = run_ncpi("register", "export", str(link), env=cli_env)
    assert result.returncode != 0 and "is a symbolic link" in result.stderr and not any(real.iterdir())
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    result = run_ncpi("register", "export", str(plain), env=cli_env)
    assert result.returncode != 0 and "is not a folder" in result.stderr and plain.read_text() == "x"
    # A link inside the folder (a planted index.html -> elsewhere, or assets -> elsewhere) is refused, not followed.
    from ncpi_workflow.register import RegisterDocument

    victim = tmp_path / "victim.html"
    victim.write_text("keep me")
    inside = tmp_path / "inside"
    inside.mkdir()
    (inside / "index.html").symlink_to(victim)
    with pytest.raises(UserError, match="index.html: is a symbolic link"):
        export_register(RegisterDocument(TODAY, [], [], {}), inside)
    assert victim.read_text() == "keep me"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    nested = tmp_path / "nested"
    nested.mkdir()
    (nested / "status").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(UserError, match="status: is a symbolic link"):
        export_register(RegisterDocument(TODAY, [], [], {}), nested)
    assert not any(elsewhere.iterdir())
    assert os.path.islink(nested / "status")
