"""The report format: the examples are valid, every malformed file is refused in one line by
`ncpi validate` with nothing written, and the JSON Schema stays in step with the model."""

from __future__ import annotations

import hashlib
import json
from datetime import date
from pathlib import Path

import jsonschema
import pytest
import yaml

from ncpi_workflow.forces import load_forces
from ncpi_workflow.report import ReportInvalid, load_report, report_json_schema
from tests.conftest import ROOT, run_ncpi

BAD_DIR = ROOT / "tests" / "bad_reports"
BAD_FILES = sorted(BAD_DIR.glob("*.yaml"))
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
FORCES = set(load_forces(ROOT / "config" / "forces.yaml"))


def expected_message(file: Path) -> str:
    first = file.read_bytes().split(b"\n", 1)[0].decode("ascii")
    assert first.startswith("# expect: "), f"{file.name} must start with '# expect: <part of the message>'"
    return first.removeprefix("# expect: ")


def test_the_corpus_is_large_enough():
    assert len(BAD_FILES) >= 20
    assert len(EXAMPLES) >= 3


@pytest.mark.parametrize("file", EXAMPLES, ids=lambda p: p.name)
def test_examples_are_valid(file):
    loaded = load_report(file, known_forces=FORCES, max_bytes=1 << 20)
    assert loaded.report.recommendations
    assert len(loaded.sha256) == 64


def test_cumbria_example_follows_the_press_release():
    report = load_report(ROOT / "examples" / "cumbria-2017.yaml", known_forces=FORCES, max_bytes=1 << 20).report
    assert (report.force, report.published, report.inspection_id) == ("CUM", date(2017, 1, 26), "CUM-2017-01-26")
    assert report.fieldwork.start.month == report.fieldwork.end.month == 7 and report.fieldwork.start.year == 2016
    concerns = [f for f in report.findings if f.kind != "strength"]
    assert len(concerns) == 5 and len(report.findings) == 10
    # The recommendation texts are not in our sources: every one must say so.
    assert all(r.illustrative for r in report.recommendations)
    assert {r.timeframe.value for r in report.recommendations} == {"immediately", "within_three_months", "within_six_months"}


@pytest.fixture(scope="module")
def validated_database(tmp_path_factory):
    """A migrated database whose bytes must not change while bad files are validated."""
    tmp = tmp_path_factory.mktemp("validate")
    env = {"NCPI_DATABASE_URL": f"sqlite+aiosqlite:///{tmp / 'ncpi.db'}", "NCPI_SETTINGS_FILE": str(tmp / "none.toml")}
    import os

    env = {**{k: v for k, v in os.environ.items() if not k.startswith("NCPI_")}, **env}
    assert run_ncpi("db", "upgrade", env=env).returncode == 0
    return env, tmp


def database_fingerprint(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.glob("ncpi.db*")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


@pytest.mark.parametrize("file", BAD_FILES, ids=lambda p: p.name)
def test_ncpi_validate_refuses_each_bad_file_in_one_line_and_writes_nothing(file, validated_database):
    env, folder = validated_database
    before = database_fingerprint(folder)
    result = run_ncpi("validate", str(file), env=env)
    assert result.returncode != 0
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert str(file) in lines[0]
    assert expected_message(file) in lines[0]
    assert database_fingerprint(folder) == before


def test_an_oversized_file_is_refused_before_parsing(tmp_path, cli_env):
    big = tmp_path / "huge.yaml"
    source = (ROOT / "examples" / "cumbria-2017.yaml").read_text()
    big.write_text(source + "\n# padding\n" + ("#" * 1000 + "\n") * 1100)
    result = run_ncpi("validate", str(big), env=cli_env)
    assert result.returncode != 0
    assert result.stderr.strip().endswith("over the 1,048,576-byte limit for a report")
    assert len(result.stderr.splitlines()) == 1


def test_validate_reports_every_problem_with_file_line_and_field(tmp_path):
    text = (ROOT / "examples" / "cumbria-2017.yaml").read_text()
    text = text.replace("timeframe: within_six_months", "timeframe: next_year").replace("force: CUM", "force: ZZZ")
    bad = tmp_path / "two-problems.yaml"
    bad.write_text(text)
    with pytest.raises(ReportInvalid) as caught:
        load_report(bad, known_forces=FORCES, max_bytes=1 << 20)
    problems = caught.value.problems
    assert problems[0] == f"{bad}:7: force: unknown force code 'ZZZ'; `ncpi forces` lists the 43 codes"
    assert any(p.startswith(f"{bad}:") and "recommendations[3].timeframe: 'next_year' is not one of" in p for p in problems)
    assert len(problems) == 3  # the force and both six-month recommendations


def test_valid_files_print_a_summary_and_exit_zero(cli_env):
    result = run_ncpi("validate", *map(str, EXAMPLES), env=cli_env)
    assert result.returncode == 0, result.stderr
    assert "examples/cumbria-2017.yaml: valid: CUM-2017-01-26, 5 recommendations" in result.stdout


def test_a_mix_of_good_and_bad_files_fails(cli_env):
    result = run_ncpi("validate", str(EXAMPLES[0]), str(BAD_FILES[0]), env=cli_env)
    assert result.returncode != 0
    assert "valid" in result.stdout and len(result.stderr.splitlines()) == 1


def test_the_committed_json_schema_is_generated_from_the_model():
    committed = json.loads((ROOT / "docs" / "report.schema.json").read_text())
    assert committed == report_json_schema(), "run `ncpi schema > docs/report.schema.json`"


def _as_json(value):
    if isinstance(value, dict):
        return {k: _as_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_json(v) for v in value]
    return value.isoformat() if isinstance(value, date) else value


@pytest.mark.parametrize("file", EXAMPLES, ids=lambda p: p.name)
def test_examples_validate_against_the_json_schema(file):
    document = _as_json(yaml.safe_load(file.read_text()))
    jsonschema.Draft202012Validator(report_json_schema()).validate(document)


def test_ncpi_schema_prints_the_schema(cli_env):
    result = run_ncpi("schema", env=cli_env)
    assert result.returncode == 0
    schema = json.loads(result.stdout)
    assert schema["title"] == "Report" and "recommendations" in schema["allOf"][0]["else"]["required"]
