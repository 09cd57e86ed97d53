"""Back-dated actions (`--on YYYY-MM-DD`) through `ncpi`, run as a user runs it (subprocesses), against
the real Temporal dev server and a worker on its own task queue, on SQLite and on PostgreSQL.

A report published two weeks ago (nothing due yet, so `ncpi publish` needs no choice) has its
progress, register status, action plan, revisit, evidence and decision recorded today as having
happened on earlier days. Every record keeps both dates: when it happened (noon that day, the
calendar's zone) and when it was recorded (now); `ncpi show` prints both. A day in the future, before
publication, or (a decision) before its revisit opened is refused by the workflow with one line naming
--on, and nothing changes; a date that is not one is refused before Temporal is asked.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import select

from ncpi_workflow.models import AuditEvent, Deadline, Decision, Evidence, ProgressUpdate, RegisterStatusEntry, Revisit
from tests.lifecycle_support import harness, long, noon, utc
from tests.test_cli_devserver import Cli, phase_is, refused, rows, settled_snapshot, snapshot, today, view

FORCES = {"sqlite": "GWE", "postgresql": "HUM"}
"""Forces no other dev-server test publishes (one server, one workflow ID per report)."""


def recorded_now(instant: datetime | None, started: datetime) -> bool:
    return instant is not None and started - timedelta(seconds=5) <= utc(instant) <= datetime.now(timezone.utc) + timedelta(seconds=5)


@pytest.fixture
async def cli(dev_server_env, tmp_path, database_url, request):
    async with harness(dev_server_env, tmp_path, database_url=database_url) as h:
        env = {k: v for k, v in os.environ.items() if not k.startswith("NCPI_")}
        env.update(
            NCPI_TEMPORAL_ADDRESS=dev_server_env.address,
            NCPI_DATABASE_URL=h.settings.database_url,
            NCPI_TASK_QUEUE=h.settings.task_queue,
            NCPI_DATA_DIR=str(h.settings.data_dir),
            NCPI_SMTP_HOST=h.settings.smtp_host,
            NCPI_SMTP_PORT=str(h.settings.smtp_port),
            NCPI_SETTINGS_FILE=str(tmp_path / "absent-ncpi.toml"),
        )
        yield Cli(h, env, tmp_path), FORCES["postgresql" if database_url.startswith("postgresql") else "sqlite"]


async def test_back_dated_actions_keep_both_dates(cli):
    cli, force = cli
    h = cli.h
    now = today()
    published = now - timedelta(days=14)
    inspection = await cli.publish(force, [("R1", "within_six_months"), ("R2", "within_six_months")], published=published)
    r1, r2 = f"{inspection}-R1", f"{inspection}-R2"
    started = datetime.now(timezone.utc)
    on = {n: (published + timedelta(days=n)).isoformat() for n in range(8)}
    future, before = (now + timedelta(days=1)).isoformat(), (published - timedelta(days=1)).isoformat()

    # A bad date is refused before Temporal is asked; a day in the future or before publication by the
    # workflow's validator; nothing changes.
    await refused(cli, [
        (("progress", r1, "--claim", "in_progress", "--text", "Started", "--by", "Liaison", "--on", "2026-13-01"),
         "--on: '2026-13-01' is not a date such as 2026-12-31"),
        (("progress", r1, "--claim", "in_progress", "--text", "Started", "--by", "Liaison", "--on", "last week"),
         "--on: 'last week' is not a date such as 2026-12-31"),
    ], [inspection, r1])
    watched = [inspection, r1, r2]
    response = cli.tmp_path / "response.pdf"
    response.write_bytes(b"%PDF-1.4 the PCC's response")
    before_any = await settled_snapshot(cli, watched)
    for args in [
        ("deliver", inspection, "pcc_response", "--by", "Inspector", "--document", response),  # nothing kept in the store
        ("progress", r1, "--claim", "in_progress", "--text", "Started", "--by", "Liaison"),
        ("register", "set", r1, "--status", "being progressed", "--comment", "Under way", "--by", "Inspector"),
        ("deliver", inspection, "action_plan", "--by", "Inspector"),
        ("revisit", inspection, "--by", "Inspector"),
    ]:
        for day, words in ((future, "is in the future"), (before, f"is before the report was published on {published.isoformat()}")):
            result = await cli(*args, "--on", day)
            assert result.returncode != 0, f"{args} --on {day}: {result.stdout}"
            [line] = result.stderr.splitlines()
            assert line.startswith(f"ncpi: --on {day} {words}"), line
            assert result.stdout == ""
    assert await snapshot(cli, watched) == before_any
    async with h.sessions() as session:
        assert (await session.scalars(select(RegisterStatusEntry))).first() is None

    # The force's progress two weeks ago, given today.
    out = await cli.ok("progress", r1, "--claim", "in_progress", "--text", "Started", "--by", "Liaison", "--on", on[1])
    assert out.startswith(f"{r1}: progress recorded (force claims in progress)")
    [progress] = await rows(h, ProgressUpdate, ProgressUpdate.recommendation_id == r1)
    assert utc(progress.submitted_at) == noon(published + timedelta(days=1)) and recorded_now(progress.recorded_at, started)

    # The register status judged earlier.
    await cli.ok("register", "set", r1, "--status", "being progressed", "--comment", "Under way", "--by", "Inspector", "--on", on[2])
    [entry] = await rows(h, RegisterStatusEntry, RegisterStatusEntry.recommendation_id == r1)
    assert utc(entry.set_at) == noon(published + timedelta(days=2)) and recorded_now(entry.recorded_at, started)

    # The action plan received on day 3: its deadline met that day, recorded now.
    out = await cli.ok("deliver", inspection, "action_plan", "--by", "Inspector", "--note", "by post", "--on", on[3])
    assert f"action plan received {(published + timedelta(days=3)):%a} {(published + timedelta(days=3)).day} " in out
    [plan] = await rows(h, Deadline, Deadline.inspection_id == inspection, Deadline.key == "action_plan")
    assert utc(plan.met_at) == noon(published + timedelta(days=3)) and recorded_now(plan.met_recorded_at, started)

    # The revisit's fieldwork started on day 5.
    out = await cli.ok("revisit", inspection, "--by", "Inspector", "--on", on[5])
    assert out.startswith(f"revisit of {inspection} opened ") and "(cycle 1, inspector, by Inspector)" in out
    [revisit] = await rows(h, Revisit, Revisit.inspection_id == inspection)
    assert utc(revisit.opened_at) == noon(published + timedelta(days=5)) and recorded_now(revisit.recorded_at, started)
    await phase_is(h, r1, "evidence_requested")

    # Evidence received on day 6; a day in the future keeps nothing in the evidence store.
    evidence = cli.tmp_path / "profile.pdf"
    evidence.write_bytes(b"%PDF-1.4 problem profile in use")
    result = await cli("evidence", r1, "--file", evidence, "--by", "Liaison", "--on", future)
    assert result.returncode != 0 and result.stderr.startswith(f"ncpi: --on {future} is in the future")
    store = h.settings.evidence_dir
    assert not store.exists() or not [p for p in store.rglob("*") if p.is_file()]
    await cli.ok("evidence", r1, "--file", evidence, "--by", "Liaison", "--on", on[6])
    [kept] = await rows(h, Evidence, Evidence.recommendation_id == r1)
    assert utc(kept.submitted_at) == noon(published + timedelta(days=6)) and recorded_now(kept.recorded_at, started)
    await phase_is(h, r1, "under_review")

    # A decision cannot be dated before its revisit opened; on day 7 it is recorded.
    result = await cli("decide", r1, "--outcome", "achieved", "--rationale", "Profile in use", "--by", "Inspector", "--on", on[4])
    assert result.returncode != 0 and len(result.stderr.splitlines()) == 1 and result.stderr.startswith(f"ncpi: --on {on[4]} ")
    assert "revisit" in result.stderr
    assert await rows(h, Decision, Decision.recommendation_id == r1) == []
    out = await cli.ok("decide", r1, "--outcome", "achieved", "--rationale", "Profile in use", "--by", "Inspector", "--on", on[7])
    assert out.startswith(f"{r1}: achieved; closed")
    [decision] = await rows(h, Decision, Decision.recommendation_id == r1)
    assert utc(decision.decided_at) == noon(published + timedelta(days=7)) and recorded_now(decision.recorded_at, started)
    [audit] = [a for a in await rows(h, AuditEvent, AuditEvent.entity_id == r1) if a.action == "decision.recorded"]
    assert audit.detail["happened_at"] == noon(published + timedelta(days=7)).isoformat()

    # The workflow's own state holds when it happened.
    state = (await view(h, r1)).state
    assert state.phase.value == "closed" and [e.at for e in state.evidence] == [noon(published + timedelta(days=6))]
    [judged] = [e for e in state.register if e.by == "Inspector" and e.status == "being progressed"]
    assert judged.at == noon(published + timedelta(days=2))

    # `ncpi show` prints both dates where they differ.
    recorded = f"(recorded {long(now)})"
    shown = await cli.ok("show", r1)
    assert f"by Liaison, {long(published + timedelta(days=6))} {recorded}" in shown  # the evidence line
    assert f"; met {long(published + timedelta(days=6))} {recorded}" in shown  # its evidence deadline, met by it
    assert f"Closed: {long(published + timedelta(days=7))} {recorded}" in shown
    history = shown.split("History:")[1]
    for n in (1, 2, 6, 7):
        assert f"  {long(published + timedelta(days=n))} {recorded} " in history, (n, history)
    # Said once, in the date column: the workflow's own note of it is not repeated in the detail.
    assert "(recorded" in history and all(line.count("(recorded") <= 1 for line in history.splitlines()), history
    as_json = await cli.json("show", r1)
    assert [(r["happened_at"], r["by"]) for r in as_json["recorded"]] == [
        (noon(published + timedelta(days=n)).isoformat(), by)
        for n, by in ((1, "Liaison"), (2, "Inspector"), (6, "Liaison"), (7, "Inspector"))]
    assert all(recorded_now(datetime.fromisoformat(r["recorded_at"]), started) for r in as_json["recorded"])
    shown = await cli.ok("show", inspection)
    assert f"; met {long(published + timedelta(days=3))} {recorded}" in shown
    assert f"Revisit: opened {long(published + timedelta(days=5))} {recorded} (inspector, by Inspector)" in shown
    # An action taken today shows its time, as before.
    await cli.ok("deliver", inspection, "pcc_response", "--by", "Inspector")
    [pcc] = await rows(h, Deadline, Deadline.inspection_id == inspection, Deadline.key == "pcc_response")
    assert pcc.met_recorded_at is not None and utc(pcc.met_recorded_at) == utc(pcc.met_at)
    shown = await cli.ok("show", inspection)
    [line] = [l for l in shown.splitlines() if l.startswith("  PCC's published response due")]
    assert "recorded" not in line and f"; met {now:%a} {now.day} " in line

