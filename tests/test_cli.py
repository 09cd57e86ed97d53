"""The `ncpi` command end to end as a user runs it: database set-up, forces, the plan, `dev`."""

from __future__ import annotations

import json
import re
from datetime import date, datetime

from tests.conftest import ROOT, run_ncpi


def test_db_upgrade_creates_the_schema_and_loads_forces_idempotently(cli_env):
    first = run_ncpi("db", "upgrade", env=cli_env)
    assert first.returncode == 0, first.stderr
    assert "43 forces (172 reference rows changed)" in first.stdout
    second = run_ncpi("db", "upgrade", env=cli_env)
    assert second.returncode == 0 and "43 forces (0 reference rows changed)" in second.stdout


def test_forces_lists_all_43_from_the_database(cli_env):
    before = run_ncpi("forces", env=cli_env)
    assert before.returncode != 0 and before.stderr == "ncpi: the database has no schema yet: run `ncpi db upgrade`\n"
    assert run_ncpi("db", "upgrade", env=cli_env).returncode == 0
    listing = run_ncpi("forces", env=cli_env)
    assert listing.returncode == 0
    lines = listing.stdout.splitlines()
    assert len(lines) == 43
    assert re.match(r"CUM  Cumbria Constabulary\s+North West\s+liaison@cumbria.police.example", next(l for l in lines if l.startswith("CUM")))
    as_json = json.loads(run_ncpi("forces", "--json", env=cli_env).stdout)
    assert len(as_json) == 43
    assert as_json[0]["contacts"].keys() == {"liaison_officer", "chief_officer", "pcc"}


def test_plan_shows_the_cumbria_timeline(cli_env):
    result = run_ncpi("plan", "examples/cumbria-2017.yaml", env=cli_env)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Published Thursday 26 January 2017; 5 recommendations" in out
    assert "Force action plan due Thursday 9 March 2017" in out
    assert "Police and Crime Commissioner's published response due Thursday 23 March 2017" in out
    assert "Revisit (post-inspection review) no later than Wednesday 26 July 2017" in out
    assert "Recommendation R4 (within six months) due Wednesday 26 July 2017" in out
    message_lines = [l for l in out.splitlines() if re.match(r"  (Mon|Tue|Wed|Thu|Fri|Sat|Sun) ", l)]
    assert message_lines and all(not l.lstrip().startswith(("Sat", "Sun")) for l in message_lines)
    # Nobody acting, the revisit opens on 26 July: R4 is chased for evidence, not for the recommendation.
    r4 = [l.split()[5:7] for l in message_lines if "recommendation:R4" in l]
    assert r4 == [["reminder", "recommendation:R4,"], ["reminder", "recommendation:R4,"]]
    assert "  Evidence for recommendation R4 due Wednesday 9 August 2017\n" in out
    assert any(re.match(r"  Wed 26 Jul 2017 09:00 +revisit_opened +revisit_by -> liaison officer, chief officer, inspectors$", l)
               for l in message_lines)
    assert any(re.match(r"  Wed 26 Jul 2017 09:00 +evidence_request +evidence:R4 -> liaison officer$", l) for l in message_lines)
    assert any(re.match(r"  Wed 9 Aug 2017 09:00 +due_today +evidence:R4 -> liaison officer$", l) for l in message_lines)


def test_plan_json_has_every_reminder_on_a_working_day(cli_env):
    result = run_ncpi("plan", "examples/lancashire-2016.yaml", "--json", env=cli_env)
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["inspection_id"] == "LAN-2016-11-29"
    assert all(m["working_day"] for m in plan["messages"])
    assert all(datetime.fromisoformat(m["local"]).weekday() < 5 for m in plan["messages"])
    deadlines = {d["key"]: d for d in plan["deadlines"]}
    # +6 months is the spring bank holiday (Monday 29 May 2017): the force's dates move later, the revisit earlier.
    assert deadlines["revisit_by"]["nominal"] == "2017-05-29" and deadlines["revisit_by"]["due"] == "2017-05-26"
    six_month = [d for d in plan["deadlines"] if d["kind"] == "recommendation" and d["nominal"] == "2017-05-29"]
    assert six_month and all(d["due"] == "2017-05-30" and d["moved"] for d in six_month)
    # The revisit opens (nobody acting) on 26 May, before the six-month deadline: no due-today for it.
    assert plan["revisit_opens_at"] == "2017-05-26T08:00:00+00:00"
    keys = {f"recommendation:{d['recommendation_ref']}" for d in six_month}
    assert not [m for m in plan["messages"] if m["deadline_key"] in keys and m["kind"] in ("due_today", "overdue", "escalation")]
    assert {d["key"] for d in plan["evidence_deadlines"]} >= {k.replace("recommendation", "evidence") for k in keys}
    assert all(d["due"] == "2017-06-12" for d in plan["evidence_deadlines"])


def test_plan_of_a_bad_file_is_one_line(cli_env):
    result = run_ncpi("plan", "tests/bad_reports/unknown-force.yaml", env=cli_env)
    assert result.returncode != 0 and len(result.stderr.splitlines()) == 1


def test_unknown_command_and_missing_file_are_one_line_errors(cli_env):
    unknown = run_ncpi("frobnicate", env=cli_env)
    assert unknown.returncode != 0 and "Traceback" not in unknown.stderr
    missing = run_ncpi("validate", "no/such/report.yaml", env=cli_env)
    assert missing.returncode != 0 and missing.stderr == "ncpi: no/such/report.yaml: no such file\n"
