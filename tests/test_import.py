"""`ncpi import REPORT STATE`: both files checked first (every problem one line, nothing written), then
the report published in adopt mode, in real time, with the state's actions: the follow-up ends where
the same actions taken live on their days end it (tests/test_adoption.py's comparison), with both dates
on every record and not one email for the past."""

from __future__ import annotations

import re
from datetime import date, datetime, timezone
from zoneinfo import ZoneInfo

from sqlalchemy import select

from ncpi_workflow.app import inspector_actions
from ncpi_workflow.app.force_responses import submit_progress
from ncpi_workflow.app.publishing import import_file
from ncpi_workflow.publishing import inspection_input_from_records
from ncpi_workflow.models import AuditEvent, Deadline, Decision, Inspection, ProgressUpdate, RegisterStatusEntry, Revisit
from tests.conftest import ROOT, run_ncpi
from tests.lifecycle_support import harness, noon, skip_to, utc
from tests.test_adoption import (
    REFS,
    addresses,
    inspection_shape,
    received_by,
    recommendation_shape,
    rows_of,
    shapes,
    start_from_the_start,
)
from tests.test_cli_devserver import cli, eventually  # noqa: F401  (the `cli` fixture)
from tests.test_lifecycle_timeskipping import insp_view
from tests.test_publish_past import _started_with

KENT = ROOT / "examples" / "kent-2017.yaml"
KENT_STATE = ROOT / "examples" / "states" / "kent-2017-state.yaml"
LONDON = ZoneInfo("Europe/London")


def copies(folder, force: str):
    """The Kent example and its state file under another force code (one workflow ID per report)."""
    report = folder / f"{force.lower()}-2017.yaml"
    report.write_text(re.sub(r"(?m)^force: KEN$", f"force: {force}", KENT.read_text()))
    state = folder / f"{force.lower()}-2017-state.yaml"
    state.write_text(KENT_STATE.read_text().replace("inspection: KEN-2017-04-21", f"inspection: {force}-2017-04-21"))
    return report, state


def test_every_problem_of_both_files_and_nothing_written(cli_env, tmp_path):
    state = tmp_path / "state.yaml"
    state.write_text("format_version: 1\ninspection: KEN-2017-04-21\nrevisits:\n  - cycle: 2\n    date: 2017-10-02\n    by: A\n"
                     "recommendations:\n  - ref: R7\n")
    result = run_ncpi("import", str(KENT), str(state), env=cli_env)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.splitlines() == [
        f"ncpi: {state}:4: revisits[0].cycle: revisits are given cycle by cycle (1, 2, ...): expected cycle 1, got 2",
        f"ncpi: {state}:4: revisits[0].cycle: no recommendation went on to cycle 2 (a partially_achieved or not_achieved "
        "decision in cycle 1)",
        f"ncpi: {state}:8: recommendations[0].ref: the report has no recommendation R7 (it has R1, R2, R3, R4, R5)",
    ]
    bad_report = tmp_path / "bad.yaml"
    bad_report.write_text(KENT.read_text().replace("timeframe: immediately", "timeframe: at_once"))
    result = run_ncpi("import", str(bad_report), str(KENT_STATE), env=cli_env)
    assert result.returncode == 1 and len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith(f"ncpi: {bad_report}:") and "at_once" in result.stderr
    missing = run_ncpi("import", str(KENT), str(tmp_path / "absent.yaml"), env=cli_env)
    assert missing.returncode == 1 and missing.stderr == f"ncpi: {tmp_path / 'absent.yaml'}: no such file\n"
    assert not (tmp_path / "cli.db").exists()  # never connected to the database, let alone wrote to it


async def _closed(h, inspection_id: str):
    async with h.sessions() as session:
        row = await session.get(Inspection, inspection_id, populate_existing=True)
        return row is not None and row.phase == "closed"


async def test_an_import_in_real_time_ends_as_the_same_actions_taken_live(dev_server_env, time_skipping_env, tmp_path):
    """The import runs on the dev server, in real time as `ncpi import` does; the same actions are taken live
    on the time-skipping server, on a follow-up run from the start (tests/test_adoption.py's helpers)."""
    imported_file, imported_state = copies(tmp_path, "SUR")
    live_file, _ = copies(tmp_path, "WAR")
    imported_id, live_id = "SUR-2017-04-21", "WAR-2017-04-21"
    (tmp_path / "imported").mkdir()
    (tmp_path / "live").mkdir()
    async with harness(dev_server_env, tmp_path / "imported") as h:
        before = datetime.now(timezone.utc)
        result = await import_file(h.settings, h.client, imported_file, imported_state, by="test")
        assert result.started and result.inspection_id == imported_id
        # Restarted from publication by the reconciler (its start lost), the follow-up is adopted again with its
        # imports, never caught up: the input rebuilt from the records is the one the import started.
        started = await _started_with(h, imported_id)
        async with h.sessions() as session:
            rebuilt = await inspection_input_from_records(session, imported_id, policy=started.policy,
                                                          calendar=started.calendar, time_scale=started.time_scale)
        assert before <= rebuilt.adopted_at == started.adopted_at
        assert rebuilt.imported == started.imported and rebuilt.imported.deliveries
        assert [r.imported for r in rebuilt.recommendations] == [r.imported for r in started.recommendations]
        assert any(r.imported is not None and r.imported.decisions for r in rebuilt.recommendations)
        await eventually(lambda: _closed(h, imported_id), timeout=60)
        async with h.sessions() as session:
            def of(rows):
                return [r for r in rows if (getattr(r, "recommendation_id", None) or getattr(r, "inspection_id", "")).startswith(imported_id)]

            decisions = of((await session.scalars(select(Decision).order_by(Decision.recommendation_id, Decision.cycle))).all())
            assert [(d.recommendation_id[-2:], d.cycle, d.outcome, utc(d.decided_at)) for d in decisions] == [
                ("R1", 1, "achieved", noon(date(2017, 11, 1))), ("R2", 1, "achieved", noon(date(2017, 11, 1))),
                ("R3", 1, "partially_achieved", noon(date(2017, 11, 1))), ("R3", 2, "achieved", noon(date(2018, 2, 8))),
                ("R4", 1, "achieved", noon(date(2017, 11, 1))), ("R5", 1, "superseded", noon(date(2017, 11, 1))),
            ]
            assert all(before <= utc(d.recorded_at) <= datetime.now(timezone.utc) for d in decisions)  # both dates kept
            revisits = of((await session.scalars(select(Revisit).order_by(Revisit.cycle))).all())
            assert [(r.cycle, r.trigger, r.triggered_by, utc(r.opened_at)) for r in revisits] == [
                (1, "inspector", "Sam Patel (HMICFRS)", noon(date(2017, 10, 2))),
                (2, "inspector", "Sam Patel (HMICFRS)", noon(date(2018, 1, 22))),
            ]
            met = of((await session.scalars(select(Deadline).where(Deadline.met_at.is_not(None), Deadline.recommendation_id.is_(None)))).all())
            assert sorted((d.key, utc(d.met_at)) for d in met if d.key in ("immediate_update", "action_plan", "pcc_response")) == [
                ("action_plan", noon(date(2017, 5, 31))), ("immediate_update", noon(date(2017, 5, 18))),
                ("pcc_response", noon(date(2017, 6, 15))),
            ]
            trail = of((await session.scalars(select(RegisterStatusEntry).where(RegisterStatusEntry.comment.like("The new%")))).all())
            assert [(t.recommendation_id[-2:], t.status, utc(t.set_at)) for t in trail] == [
                ("R3", "will be progressed", noon(date(2017, 11, 2)))
            ]
            progress = of((await session.scalars(select(ProgressUpdate).order_by(ProgressUpdate.submitted_at))).all())
            assert [(p.recommendation_id[-2:], p.claim, utc(p.submitted_at)) for p in progress] == [
                ("R1", "in_progress", noon(date(2017, 5, 18))), ("R3", "in_progress", noon(date(2017, 9, 15)))
            ]
            [audit] = (await session.scalars(select(AuditEvent).where(AuditEvent.action == "report.imported",
                                                                      AuditEvent.entity_id == imported_id))).all()
            assert audit.actor == "test" and audit.detail["past"] == "adopt"
            assert audit.detail["imported"]["recommendations"]["R3"]["decisions"][1]["on"] == "2018-02-08"
            assert [r["on"] for r in audit.detail["imported"]["inspection"]["revisits"]] == ["2017-10-02", "2018-01-22"]
        # Nothing for the past: no outbox row, no email to Surrey.
        assert await rows_of(h, imported_id) == [] and received_by(h, addresses(h, "SUR")) == []
        imported, imported_recs = await shapes(h, imported_id, REFS)
        assert [e.event for e in imported.state.history if e.event.endswith("not sent (before adoption)")][:1] == [
            "published not sent (before adoption)"]
        assert not (imported.state.imports and (imported.state.imports.deliveries or imported.state.imports.revisits))
        assert (imported.state.phase, imported.state.cycle) == ("closed", 2)
        assert {ref: (v.state.phase, v.state.outcome) for ref, v in imported_recs.items()} == {
            "R1": ("closed", "achieved"), "R2": ("closed", "achieved"), "R3": ("closed", "achieved"),
            "R4": ("closed", "achieved"), "R5": ("closed", "superseded"),
        }

    # The same actions taken live, at noon on their days, on a follow-up run from the start.
    async with harness(time_skipping_env, tmp_path / "live") as h:
        await start_from_the_start(h, live_file, date(2017, 4, 21))
        rec = {ref: f"{live_id}-{ref}" for ref in REFS}
        by, officer, liaison = "Sam Patel (HMICFRS)", "Alex Morgan (HMICFRS)", "Liaison officer, Kent Police"
        s, c = h.settings, h.client
        steps = [
            (date(2017, 5, 18), lambda: inspector_actions.record_delivery_received(
                s, c, live_id, "immediate_update", officer, "Update on R1 received by email from the liaison officer.")),
            (date(2017, 5, 18), lambda: submit_progress(s, c, rec["R1"], "in_progress",
                                                        "Daily review of referrals in the multi-agency safeguarding hub began on 15 May.", liaison)),
            (date(2017, 5, 22), lambda: inspector_actions.set_register_status(
                s, c, rec["R1"], "being progressed", "The force has started reviewing every referral from frontline officers within a day.", by)),
            (date(2017, 5, 31), lambda: inspector_actions.record_delivery_received(
                s, c, live_id, "action_plan", officer, url="https://www.kent.police.uk/ncpi-action-plan-2017")),
            (date(2017, 6, 5), lambda: inspector_actions.set_register_status(
                s, c, rec["R2"], "being progressed", "The action plan sets out training for all frontline officers by September.", by)),
            (date(2017, 6, 5), lambda: inspector_actions.set_register_status(
                s, c, rec["R3"], "being progressed", "Information-sharing arrangements with partners are being rewritten.", by)),
            (date(2017, 6, 15), lambda: inspector_actions.record_delivery_received(
                s, c, live_id, "pcc_response", officer, url="https://www.kent-pcc.gov.uk/ncpi-response-2017")),
            (date(2017, 9, 15), lambda: submit_progress(s, c, rec["R3"], "in_progress",
                                                        "The new information-sharing protocol is agreed with two of the three local authorities.", liaison)),
            (date(2017, 10, 2), lambda: inspector_actions.trigger_revisit(s, c, live_id, by)),
            (date(2017, 11, 1), lambda: inspector_actions.record_decision(
                s, c, rec["R1"], "achieved", "Referrals are now reviewed within a day; the revisit sampled 60 and found none delayed.", by)),
            (date(2017, 11, 1), lambda: inspector_actions.record_decision(
                s, c, rec["R2"], "achieved", "Training is complete and referrals now record the child's own views.", by)),
            (date(2017, 11, 1), lambda: inspector_actions.record_decision(
                s, c, rec["R3"], "partially_achieved",
                "The protocol is agreed but disruption tactics are still rarely used outside the specialist team.", by)),
            (date(2017, 11, 1), lambda: inspector_actions.record_decision(
                s, c, rec["R4"], "achieved", "Strategy discussions now include the police in every case sampled.", by)),
            (date(2017, 11, 1), lambda: inspector_actions.record_decision(
                s, c, rec["R5"], "superseded",
                "Superseded by the national guidance on child protection case reviews issued in October 2017.", by)),
            (date(2017, 11, 2), lambda: inspector_actions.set_register_status(
                s, c, rec["R3"], "will be progressed",
                "The new arrangements are agreed but not yet in use outside the specialist team.", by)),
            (date(2018, 1, 22), lambda: inspector_actions.trigger_revisit(s, c, live_id, by)),
            (date(2018, 2, 8), lambda: inspector_actions.record_decision(
                s, c, rec["R3"], "achieved",
                "Disruption tactics are now in use across the force; the second revisit found them in 14 of 20 cases sampled.", by)),
        ]
        for day, act in steps:
            await skip_to(h, noon(day))
            if day == date(2018, 1, 22):
                await eventually(lambda: _cycle_of(h, live_id, 2))  # the cycle opens as the last decision lands
            await act()
        await eventually(lambda: _closed(h, live_id), timeout=60)
        live, live_recs = await shapes(h, live_id, REFS)
    assert inspection_shape(imported) == inspection_shape(live)
    for ref in REFS:
        assert recommendation_shape(imported_recs[ref]) == recommendation_shape(live_recs[ref]), ref


async def _cycle_of(h, inspection_id: str, cycle: int) -> bool:
    return (await insp_view(h, inspection_id)).state.cycle == cycle


async def test_ncpi_import_publishes_once(cli):
    report, state = copies(cli.tmp_path, "HER")
    out = await cli.ok("import", report, state)
    assert out == "published HER-2017-04-21: workflow ncpi/HER/2017-04-21, 5 recommendations\n"
    await eventually(lambda: _closed(cli.h, "HER-2017-04-21"), timeout=60)
    assert await rows_of(cli.h, "HER-2017-04-21") == []
    again = await cli("import", report, state)
    assert again.returncode == 1 and again.stderr == (
        "ncpi: HER-2017-04-21 is already published and its follow-up runs: an import is for a report not yet "
        "published; nothing was imported\n")
    # Publishing the report itself again needs no choice: it starts nothing.
    assert await cli.ok("publish", report) == "HER-2017-04-21 is already published (workflow ncpi/HER/2017-04-21); nothing started\n"
