"""The state file of `ncpi import` (docs/state-format.md): the model, its JSON Schema, and every check
against the report, each problem one line naming the file, the line, the field and the reason."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import jsonschema
import pytest
import yaml

from ncpi_workflow.lifecycle import ImportedDecision, ImportedDelivery, ImportedRevisit
from ncpi_workflow.report import load_report
from ncpi_workflow.state_file import StateInvalid, load_state, state_json_schema
from tests.conftest import ROOT, run_ncpi

KENT = ROOT / "examples" / "kent-2017.yaml"
KENT_STATE = ROOT / "examples" / "states" / "kent-2017-state.yaml"
TODAY = date(2026, 12, 2)


def kent():
    return load_report(KENT, known_forces=None, max_bytes=1 << 20).report


def problems(tmp_path: Path, text: str, today: date = TODAY) -> list[str]:
    path = tmp_path / "state.yaml"
    path.write_text(text)
    with pytest.raises(StateInvalid) as caught:
        load_state(path, kent(), today=today)
    return [line.removeprefix(f"{path}:") for line in caught.value.problems]


HEAD = "format_version: 1\ninspection: KEN-2017-04-21\n"


def test_the_example_loads_into_the_workflows_imports():
    inspection, recommendations = load_state(KENT_STATE, kent(), today=TODAY)
    assert [d.item for d in inspection.deliveries] == ["immediate_update", "action_plan", "pcc_response"]
    assert inspection.deliveries[1] == ImportedDelivery(item="action_plan", on=date(2017, 5, 31), by="Alex Morgan (HMICFRS)",
                                                        url="https://www.kent.police.uk/ncpi-action-plan-2017")
    assert inspection.revisits == [ImportedRevisit(1, date(2017, 10, 2), "Sam Patel (HMICFRS)"),
                                   ImportedRevisit(2, date(2018, 1, 22), "Sam Patel (HMICFRS)")]
    assert set(recommendations) == {"R1", "R2", "R3", "R4", "R5"}
    r3 = recommendations["R3"]
    assert [(e.on, e.status) for e in r3.register] == [(date(2017, 6, 5), "being progressed"), (date(2017, 11, 2), "will be progressed")]
    assert [(d.cycle, d.outcome) for d in r3.decisions] == [(1, "partially_achieved"), (2, "achieved")]
    assert r3.decisions[1] == ImportedDecision(2, date(2018, 2, 8), "achieved", r3.decisions[1].rationale, "Sam Patel (HMICFRS)")
    assert [p.claim for p in r3.progress] == ["in_progress"]


def test_the_committed_json_schema_is_generated_from_the_model():
    committed = json.loads((ROOT / "docs" / "state.schema.json").read_text())
    assert committed == state_json_schema(), "run `ncpi schema --state > docs/state.schema.json`"


def test_the_example_validates_against_the_json_schema():
    document = json.loads(json.dumps(yaml.safe_load(KENT_STATE.read_text()), default=str))  # dates as JSON strings
    validator = jsonschema.Draft202012Validator(state_json_schema(), format_checker=jsonschema.FormatChecker())
    validator.validate(document)
    document["deliveries"][0]["colour"] = "red"
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(document)


def test_ncpi_schema_state_prints_the_schema(cli_env):
    result = run_ncpi("schema", "--state", env=cli_env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == state_json_schema()


def test_the_model_refuses_unknown_and_misspelt_fields_and_bad_values(tmp_path):
    assert problems(tmp_path, HEAD + """\
deliveries:
  - item: action_plan
    date: 2017-05-31
    by: A
    url: ftp://example.org/plan
    colour: red
  - item: action_pln
    date: 2017-05-31
    by: A
recommendations:
  - ref: R1
    decisons: []
  - ref: r2
""") == [
        "7: deliveries[0].url: URL scheme should be 'http' or 'https'",
        "8: deliveries[0].colour: unknown field (`ncpi schema --state` lists the fields)",
        "9: deliveries[1].item: 'action_pln' is not one of: 'immediate_update', 'action_plan' or 'pcc_response'",
        "14: recommendations[0].decisons: unknown field; did you mean 'decisions'? (`ncpi schema --state` lists the fields)",
        "15: recommendations[1].ref: String should match pattern '^R[0-9]{1,3}$'",
    ]


def test_a_bare_on_is_explained(tmp_path):
    assert problems(tmp_path, HEAD + "revisits:\n  - cycle: 1\n    on: 2017-10-02\n    by: A\n") == [
        "5: mapping keys must be plain words, got True (quote it if it is a word); "
        "the day an action happened is given as `date:` (YAML reads a bare `on` as true)"
    ]


def test_every_check_against_the_report(tmp_path):
    assert problems(tmp_path, """\
format_version: 1
inspection: KEN-2017-04-22
deliveries:
  - item: immediate_update
    date: 2017-04-01
    by: A
  - item: action_plan
    date: 2031-05-31
    by: A
  - item: action_plan
    date: 2017-06-01
    by: A
    sha256: "0000000000000000000000000000000000000000000000000000000000000000"
revisits:
  - cycle: 2
    date: 2017-10-02
    by: Sam
recommendations:
  - ref: R9
  - ref: R1
    register:
      - date: 2017-05-22
        status: no further action needed
        comment: x
        by: y
      - date: 2017-05-21
        status: done
        comment: x
        by: y
    decisions:
      - cycle: 1
        date: 2017-06-01
        outcome: achieved
        rationale: r
        by: s
      - cycle: 2
        date: 2017-07-01
        outcome: achieved
        rationale: r
        by: s
  - ref: R1
""") == [
        "2: inspection: this state file is for KEN-2017-04-22, not for the report's KEN-2017-04-21",
        "5: deliveries[0].date: 2017-04-01 is before the report was published (2017-04-21)",
        "8: deliveries[1].date: 2031-05-31 is in the future (today is 2026-12-02)",
        "10: deliveries[2].item: action_plan is delivered twice (also deliveries[1])",
        "10: deliveries[2]: a document needs both its file name and its SHA-256",
        "15: revisits[0].cycle: revisits are given cycle by cycle (1, 2, ...): expected cycle 1, got 2",
        "15: revisits[0].cycle: no recommendation went on to cycle 2 (a partially_achieved or not_achieved decision in cycle 1)",
        "19: recommendations[0].ref: the report has no recommendation R9 (it has R1, R2, R3, R4, R5)",
        "23: recommendations[1].register[0].status: \"no further action needed\" is not set by hand: it comes with a "
        "closing decision (give the decision under decisions)",
        "26: recommendations[1].register[1].date: 2017-05-21 is before the entry above it (2017-05-22): give them in date order",
        "27: recommendations[1].register[1].status: 'done' is not a register status; use one of: awaiting review, "
        "being progressed, will be progressed",
        "31: recommendations[1].decisions[0].cycle: no revisit of cycle 1 was held on or before 2017-06-01 (or the limit, "
        "2017-10-20, when it opens by itself): a decision is made at a revisit (give it under revisits)",
        "36: recommendations[1].decisions[1]: R1 was closed (achieved) on 2017-06-01: no decision follows a closing one",
        "41: recommendations[2].ref: R1 is given twice (also recommendations[1])",
    ]


def test_cycles_revisits_and_closing(tmp_path):
    decision = "      - cycle: {cycle}\n        date: {day}\n        outcome: {outcome}\n        rationale: r\n        by: s\n"
    text = HEAD + """\
deliveries:
  - item: immediate_update
    date: 2017-05-18
    by: A
revisits:
  - cycle: 1
    date: 2017-10-25
    by: Sam
  - cycle: 2
    date: 2017-11-20
    by: Sam
  - cycle: 2
    date: 2017-12-01
    by: Sam
recommendations:
  - ref: R1
    decisions:
""" + decision.format(cycle=1, day="2017-11-01", outcome="not_achieved") + decision.format(cycle=3, day="2017-12-01", outcome="achieved") + """\
  - ref: R2
    decisions:
""" + decision.format(cycle=1, day="2017-09-01", outcome="superseded") + """\
    progress:
      - date: 2017-09-01
        claim: implemented
        text: Done.
        by: Liaison officer
"""
    assert problems(tmp_path, text) == [
        "9: revisits[0].date: 2017-10-25 is after the revisit-by limit of cycle 1 (2017-10-20), when the revisit opens by itself: "
        "give that day with trigger: automatic",
        "11: revisits[1].cycle: cycle 1 is not decided: no decision for R3, R4, R5",
        "14: revisits[2].cycle: cycle 2 has two revisits; a cycle has one",
        "25: recommendations[0].decisions[1].cycle: expected cycle 2, got 3: a further cycle follows only a "
        "partially_achieved or not_achieved decision",
        "33: recommendations[1].decisions[0].date: 2017-09-01 is before the revisit of cycle 1 opened (2017-10-25)",
        "38: recommendations[1].progress[0].date: R2 was closed on 2017-09-01: progress cannot change on or after that day",
    ]


def test_an_automatic_revisit_is_on_the_limit_and_may_be_left_out(tmp_path):
    assert problems(tmp_path, HEAD + "revisits:\n  - cycle: 1\n    date: 2017-10-19\n    by: A\n    trigger: automatic\n") == [
        "5: revisits[0].date: an automatic revisit opens at the revisit-by limit of cycle 1, 2017-10-20; 2017-10-19 would be an "
        "inspector's (trigger: inspector)"
    ]
    path = tmp_path / "ok.yaml"
    path.write_text(HEAD + "recommendations:\n  - ref: R4\n    decisions:\n      - cycle: 1\n        date: 2017-10-20\n"
                    "        outcome: achieved\n        rationale: Seen at the revisit.\n        by: A\n")
    _, recommendations = load_state(path, kent(), today=TODAY)  # the revisit opened by itself at the limit
    assert recommendations["R4"].decisions[0].on == date(2017, 10, 20)


def test_a_later_cycle_has_its_own_limit(tmp_path):
    """Cycle 2 opens when the last decision of cycle 1 is made (1 November 2017); its revisit is due no later
    than three months on (the previous working day: Thursday 1 February 2018)."""
    example = KENT_STATE.read_text()
    late = example.replace("  - cycle: 2\n    date: 2018-01-22", "  - cycle: 2\n    date: 2018-02-05")
    assert late != example
    assert problems(tmp_path, late) == [
        "31: revisits[1].date: 2018-02-05 is after the revisit-by limit of cycle 2 (2018-02-01), when the revisit opens "
        "by itself: give that day with trigger: automatic"
    ]
    automatic = example.replace("  - cycle: 2\n    date: 2018-01-22\n    by: Sam Patel (HMICFRS)\n",
                                "  - cycle: 2\n    date: 2018-02-01\n    by: Sam Patel (HMICFRS)\n    trigger: automatic\n")
    assert automatic != example
    path = tmp_path / "automatic.yaml"
    path.write_text(automatic)
    inspection, _ = load_state(path, kent(), today=TODAY)
    assert inspection.revisits[1] == ImportedRevisit(2, date(2018, 2, 1), "Sam Patel (HMICFRS)", "automatic")


def test_an_immediate_update_needs_an_immediate_recommendation(tmp_path):
    from tests.lifecycle_support import write_report

    file = write_report(tmp_path, "CUM", date(2019, 3, 5), [("R1", "within_three_months")])
    report = load_report(file, known_forces=None, max_bytes=1 << 20).report
    path = tmp_path / "state.yaml"
    path.write_text("format_version: 1\ninspection: CUM-2019-03-05\n"
                    "deliveries:\n  - item: immediate_update\n    date: 2019-03-06\n    by: A\n")
    with pytest.raises(StateInvalid) as caught:
        load_state(path, report, today=TODAY)
    assert caught.value.problems == [
        f"{path}:4: deliveries[0].item: the report has no immediate_update deadline (no recommendation is to be acted on immediately)"
    ]


def test_limits_and_unreadable_files(tmp_path):
    long = "x" * 201
    assert problems(tmp_path, HEAD + f"revisits:\n  - cycle: 1\n    date: 2017-10-02\n    by: {long}\n") == [
        "6: revisits[0].by: String should have at most 200 characters"
    ]
    lines = problems(tmp_path, HEAD + "revisits:\n  - cycle: 1\n    date: 2017-10-02\n    by: \"A\\u0007B\"\n")
    assert len(lines) == 1 and lines[0].startswith("6: revisits[0].by: ") and "control character" in lines[0]  # lifecycle.check_name
    assert problems(tmp_path, "- a\n- b\n") == ["1: the file must hold a mapping of state fields, not list"]
    assert problems(tmp_path, HEAD + "revisits: &a []\nextra: *a\n") == ["4: not valid YAML: YAML aliases (*name) are not allowed in this file"]
    missing = tmp_path / "absent.yaml"
    with pytest.raises(StateInvalid) as caught:
        load_state(missing, kent(), today=TODAY)
    assert caught.value.problems == [f"{missing}: no such file"]
