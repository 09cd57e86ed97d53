"""Every figure is derivable from the register export (issue 14 §4): records written as the workers
write them -> `ncpi register export DIR` -> load_register_json(register.json) -> compute_metrics
equals compute_metrics(build_register(...)) for every filter, and equals what `ncpi metrics --json`
prints; `ncpi metrics --svg DIR` writes the same pictures as the export gives."""

from __future__ import annotations

import json
from datetime import date

import pytest

from activities.records import InspectorateAddresses, RecordActivities
from ncpi_workflow import db
from ncpi_workflow.charts import all_charts
from ncpi_workflow.lifecycle import DeadlineMetRecord, DecisionRecord, RecommendationProjection
from ncpi_workflow.metrics import compute_metrics, metrics_json
from ncpi_workflow.register import build_register, load_register_json, register_json
from tests.conftest import run_ncpi
from tests.test_register import TODAY, publish, rec, seed_register, utc

FILTERS = [
    {},
    {"force": "CUM"},
    {"theme": "custody"},
    {"start": date(2026, 1, 1)},
    {"start": date(2025, 1, 1), "end": date(2025, 12, 31), "force": "CUM", "theme": "welfare"},
    {"force": "DUR"},
]


def cli_args(f: dict) -> list[str]:
    names = {"start": "--from", "end": "--to", "force": "--force", "theme": "--theme"}
    out = []
    for key, value in f.items():
        out += [names[key], value.isoformat() if isinstance(value, date) else value]
    return out


async def seed_figures(sessions, folder) -> dict[str, str]:
    """tests/test_register.py's two forces, and a third: one recommendation withdrawn, one achieved,
    the PCC's response received late."""
    ids = await seed_register(sessions, folder)
    w = RecordActivities(sessions, InspectorateAddresses("inspectors@example.org", "lead@example.org"))
    dur = await publish(sessions, folder, "DUR", date(2025, 9, 30), [
        rec("R1", "immediately", ["custody"]), rec("R2", "within_six_months", ["welfare"]),
        rec("R3", "within_three_months", ["missing-children"]),
    ])
    await w.record_decision(DecisionRecord(f"{dur}-R1/d1", f"{dur}-R1", 1, "withdrawn", "Superseded by law.", "HMI",
                                           utc(2025, 12, 1)))
    await w.record_decision(DecisionRecord(f"{dur}-R2/d1", f"{dur}-R2", 1, "achieved", "In use.", "HMI", utc(2026, 3, 31)))
    for n, outcome in ((1, "withdrawn"), (2, "achieved")):
        await w.project_recommendation(RecommendationProjection(f"{dur}-R{n}", 5, "closed", 1, None, outcome, None, None,
                                                                "no further action needed"))
    await w.mark_deadline_met(DeadlineMetRecord(dur, "pcc_response", 1, utc(2026, 1, 15)))
    ids["dur"] = dur
    return ids


@pytest.fixture
async def seeded(tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"  # the database of cli_env
    from tests.conftest import migrate

    await migrate(url)  # db.upgrade: a new SQLite file is a copy of the session's migrated template
    async with db.open_database(url) as sessions:
        yield url, sessions, await seed_figures(sessions, tmp_path)


async def test_every_figure_is_derivable_from_the_export(seeded, tmp_path, cli_env):
    url, sessions, ids = seeded
    out = tmp_path / "register"
    exported = run_ncpi("register", "export", str(out), "--today", TODAY.isoformat(), env=cli_env)
    assert exported.returncode == 0, exported.stderr
    from_export = load_register_json(json.loads((out / "register.json").read_text()))
    async with sessions() as session:
        from_records = await build_register(session, today=TODAY)
    round_trip = load_register_json(json.loads(json.dumps(register_json(from_records))))

    national = compute_metrics(from_export).national
    # Not a vacuous equality: the seeded records give these figures (known answers).
    assert (national.made, national.open, national.closed) == (7, 4, 3)  # CUM R4 is restricted: not on the register
    assert national.outcomes == {"achieved": 2, "withdrawn": 1}
    assert national.implementation["all"].numerator == 2 and national.implementation["all"].denominator == 3
    assert national.closure_days.count == 3
    assert national.action_plans.in_time == 1  # CUM's, received 10 December 2025, due 15 December
    assert national.pcc_responses.late == 1  # DUR's, received 15 January 2026
    assert national.revisits.in_time == 1  # CUM's revisit opened 20 April 2026, within six months of 3 November 2025
    assert national.overdue_total > 0

    for f in FILTERS:
        expected = compute_metrics(from_records, **f)
        assert compute_metrics(from_export, **f) == expected, f
        assert compute_metrics(round_trip, **f) == expected, f
    # What `ncpi metrics` prints (each run costs a couple of seconds: three of them).
    svg = tmp_path / "svg"
    for f, extra in ((FILTERS[0], ["--svg", str(svg)]), (FILTERS[4], [])):
        printed = run_ncpi("metrics", "--json", "--today", TODAY.isoformat(), *cli_args(f), *extra, env=cli_env)
        assert printed.returncode == 0, printed.stderr
        assert json.loads(printed.stdout) == metrics_json(compute_metrics(from_export, **f)), f
        assert (f"wrote ageing.svg, implementation.svg, closure.svg to {svg}\n" == printed.stderr) == bool(extra)
    for chart in all_charts(compute_metrics(from_export)):
        assert (svg / f"{chart.name}.svg").read_text() == chart.svg
    text = run_ncpi("metrics", "--today", TODAY.isoformat(), "--theme", "custody", env=cli_env)
    assert text.returncode == 0, text.stderr
    custody = compute_metrics(from_export, theme="custody").national
    assert custody.made == 4  # CUM R1 and R3, KEN R1, DUR R1
    assert "Figures from the register of 15 June 2026: reports all publication dates, theme custody" in text.stdout
    assert "National (3 forces, 3 inspections)" in text.stdout
    assert "Recommendations: 4 made, 2 open, 2 closed (1 achieved, 1 withdrawn)" in text.stdout
    assert "Implementation rate (achieved of closed): all 50% (1 of 2); immediately 0% (0 of 1); within three months 100% (1 of 1)" in text.stdout


def test_ncpi_metrics_refuses_bad_values_on_one_line(cli_env, tmp_path):
    assert run_ncpi("db", "upgrade", env=cli_env).returncode == 0
    afile = tmp_path / "afile"
    afile.write_text("x")
    for args, message in [
        (["--from", "2026-03-01", "--to", "2026-02-01"], "ncpi: --to: 2026-02-01 is before --from 2026-03-01\n"),
        (["--force", "XYZ"], "ncpi: --force: no force has the code XYZ\n"),
        (["--svg", str(afile)], f"ncpi: --svg: {afile} is not a directory\n"),
    ]:
        result = run_ncpi("metrics", *args, env=cli_env)
        assert (result.returncode, result.stderr) == (1, message), args
    empty = run_ncpi("metrics", "--json", env=cli_env)
    assert empty.returncode == 0, empty.stderr
    assert json.loads(empty.stdout)["national"]["implementation_rate"]["all"] == {"achieved": 0, "closed": 0, "rate": None}
