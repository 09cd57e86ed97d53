"""The lifecycle commands of `ncpi`, run as a user runs them (subprocesses) against a real Temporal
dev server and an in-process worker on its own task queue and SQLite database.

The dev server runs in real time: every report is published on the last working day before today,
so its first reminder is days away and nothing fires on its own while a test runs. Workflow IDs are
global on the (session-wide) server, so each test uses its own force code.

Every refusal is checked the same way: a non-zero exit, exactly one line `ncpi: <the validator's
reason>` on stderr, and nothing changed, neither in the database nor in the workflows' state.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from pydantic import TypeAdapter
from sqlalchemy import func, select

from ncpi_workflow.clocks import WorkingCalendar, calendar_for_report
from ncpi_workflow.formatting import long_date
from ncpi_workflow.lifecycle import (
    EvidenceRequestInput,
    InspectionView,
    RecommendationView,
    inspection_workflow_id,
    recommendation_workflow_id,
)
from ncpi_workflow.models import (
    AuditEvent,
    Contact,
    Deadline,
    DeadlineRevision,
    Decision,
    Evidence,
    EvidenceRequest,
    Inspection,
    Notification,
    ProgressUpdate,
    Recommendation,
    Revisit,
)
from ncpi_workflow.policy import load_policy
from tests.conftest import ROOT, run_ncpi
from tests.lifecycle_support import Harness, harness, write_report

LONDON = ZoneInfo("Europe/London")


# ---------------------------------------------------------------- dates


def today() -> date:
    """Today on the policy calendar (the workflows' 'today' at time scale 1)."""
    return datetime.now(LONDON).date()


def utc_today() -> date:
    """The date some validators print: the UTC date of an instant (differs from London's around midnight in summer)."""
    return datetime.now(timezone.utc).date()


def calendar() -> WorkingCalendar:
    from ncpi_workflow import CONFIG_DIR

    return calendar_for_report(load_policy(CONFIG_DIR / "policy.toml"), today())


def publication_date() -> date:
    """The last working day before today: its publication notice (09:00 that day) is already past."""
    cal = calendar()
    day = today() - timedelta(days=1)
    while not cal.is_working_day(day):
        day -= timedelta(days=1)
    return day


def next_saturday_after(day: date) -> date:
    return day + timedelta(days=(5 - day.weekday()) % 7 or 7)


# ---------------------------------------------------------------- running `ncpi`


@dataclass
class Cli:
    h: Harness
    env: dict[str, str]
    tmp_path: Path

    async def __call__(self, *args: str, **env: str) -> subprocess.CompletedProcess:
        # In a thread: the worker runs on this event loop and must keep serving while `ncpi` waits.
        return await asyncio.to_thread(run_ncpi, *[str(a) for a in args], env={**self.env, **env})

    async def ok(self, *args: str, **env: str) -> str:
        result = await self(*args, **env)
        assert result.returncode == 0, f"ncpi {' '.join(map(str, args))}: {result.stderr}"
        assert result.stderr == ""
        return result.stdout

    async def json(self, *args: str) -> object:
        return json.loads(await self.ok(*args, "--json"))

    async def publish(self, force: str, recommendations: list[tuple[str, str]], published: date | None = None) -> str:
        published = published or publication_date()
        report = write_report(self.tmp_path, force, published, recommendations)
        out = await self.ok("publish", report)
        inspection_id = f"{force}-{published.isoformat()}"
        assert out == (
            f"published {inspection_id}: workflow {inspection_workflow_id(inspection_id)}, "
            f"{len(recommendations)} recommendations\n"
        )
        await projected(self.h, inspection_id, len(recommendations))
        return inspection_id


@pytest.fixture
async def cli(dev_server_env, tmp_path):
    async with harness(dev_server_env, tmp_path) as h:
        env = {k: v for k, v in os.environ.items() if not k.startswith("NCPI_")}
        env.update(
            NCPI_TEMPORAL_ADDRESS=dev_server_env.address,
            NCPI_DATABASE_URL=h.settings.database_url,
            NCPI_TASK_QUEUE=h.settings.task_queue,
            NCPI_DATA_DIR=str(h.settings.data_dir),
            NCPI_SMTP_HOST=h.settings.smtp_host,
            NCPI_SMTP_PORT=str(h.settings.smtp_port),
            NCPI_SETTINGS_FILE=str(tmp_path / "absent-ncpi.toml"),
            NCPI_WORKER_ALIVE_FILE=str(tmp_path / "worker.alive"),  # not the machine-wide default in /tmp
        )
        yield Cli(h, env, tmp_path)


# ---------------------------------------------------------------- reading what happened


async def eventually(check, timeout: float = 15.0, interval: float = 0.1):
    """Poll until `check()` returns something truthy: workflows record their effects asynchronously."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await check()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last: {result!r})")
        await asyncio.sleep(interval)


async def rows(h: Harness, model, *where, order_by=None) -> list:
    async with h.sessions() as session:
        query = select(model).where(*where)
        if order_by is not None:
            query = query.order_by(order_by)
        return list((await session.scalars(query)).all())


async def recommendation_row(h: Harness, rec_id: str) -> Recommendation:
    async with h.sessions() as session:
        return await session.get(Recommendation, rec_id)


async def inspection_row(h: Harness, inspection_id: str) -> Inspection | None:
    async with h.sessions() as session:
        return await session.get(Inspection, inspection_id)


async def projected(h: Harness, inspection_id: str, recommendations: int) -> None:
    """Wait until the inspection and each recommendation workflow has written its first projection."""

    async def ready():
        insp = await rows(h, Inspection, Inspection.id == inspection_id)
        recs = await rows(h, Recommendation, Recommendation.inspection_id == inspection_id)
        return (
            len(insp) == 1 and insp[0].projection_version >= 1 and len(recs) == recommendations
            and all(r.projection_version >= 1 for r in recs)
        )

    await eventually(ready)


async def phase_is(h: Harness, rec_id: str, phase: str, cycle: int | None = None):
    async def check():
        row = await recommendation_row(h, rec_id)
        return row if row.phase == phase and (cycle is None or row.cycle == cycle) else None

    return await eventually(check)


async def view(h: Harness, business_id: str):
    if business_id.count("-") == 4:
        return await h.client.get_workflow_handle(recommendation_workflow_id(business_id)).query(
            "state", result_type=RecommendationView
        )
    return await h.client.get_workflow_handle(inspection_workflow_id(business_id)).query("state", result_type=InspectionView)


COUNTED = (Decision, DeadlineRevision, Evidence, EvidenceRequest, ProgressUpdate, Revisit)
DELIVERY_AUDIT = ("notification.sent", "notification.failed")
"""Email delivery runs in the background and may still be writing these: they are not the command's doing."""


async def snapshot(cli: Cli, watched: list[str]) -> dict:
    """Everything a refused command could have changed: row counts, deadlines, projections, workflow states."""
    h = cli.h
    async with h.sessions() as session:
        counts = {m.__tablename__: await session.scalar(select(func.count()).select_from(m)) for m in COUNTED}
        counts["audit_events"] = await session.scalar(
            select(func.count()).select_from(AuditEvent).where(AuditEvent.action.not_in(DELIVERY_AUDIT))
        )
        counts["notifications"] = await session.scalar(
            select(func.count()).select_from(Notification).where(Notification.kind != "delivery_failed")
        )
        deadlines = [(d.key, d.cycle, d.current_due, d.met_at) for d in (await session.scalars(select(Deadline).order_by(Deadline.id))).all()]
        projections = [
            (r.id, r.phase, r.cycle, r.force_claim, r.outcome, r.projection_version)
            for r in (await session.scalars(select(Recommendation).order_by(Recommendation.id))).all()
        ]
    states = {}
    for business_id in watched:
        v = await view(h, business_id)
        states[business_id] = TypeAdapter(type(v.state)).dump_python(v.state, mode="json")
    store = h.settings.evidence_dir
    files = sorted(str(p.relative_to(store)) for p in store.rglob("*") if p.is_file()) if store.exists() else []
    return {"counts": counts, "deadlines": deadlines, "projections": projections, "states": states, "files": files}


async def settled_snapshot(cli: Cli, watched: list[str]) -> dict:
    """A snapshot taken once two in a row agree (signals between workflows may still be landing)."""
    previous = await snapshot(cli, watched)
    for _ in range(50):
        await asyncio.sleep(0.15)
        current = await snapshot(cli, watched)
        if current == previous:
            return current
        previous = current
    raise AssertionError("the records kept changing")


async def refused(cli: Cli, cases: list[tuple[tuple, str]], watched: list[str]) -> None:
    """Run refused commands (concurrently: none may change anything) and check each says exactly why."""
    before = await settled_snapshot(cli, watched)
    results = await asyncio.gather(*(cli(*args) for args, _ in cases))
    for (args, reason), result in zip(cases, results):
        command = "ncpi " + " ".join(map(str, args))
        assert result.returncode != 0, f"{command} was not refused: {result.stdout}"
        assert result.stderr.splitlines() == [f"ncpi: {reason}"], f"{command}: {result.stderr!r}"
        assert result.stdout == "", command
    await asyncio.sleep(0.3)
    assert await snapshot(cli, watched) == before


# ---------------------------------------------------------------- publishing, status, show, visibility


async def test_publish_status_show_and_temporal_visibility(cli):
    h = cli.h
    published = publication_date()
    insp = await cli.publish("NTH", [("R1", "immediately"), ("R2", "within_three_months"), ("R3", "within_six_months")])
    assert insp == f"NTH-{published.isoformat()}"
    recs = [f"{insp}-R{n}" for n in (1, 2, 3)]
    report = cli.tmp_path / f"nth-{published.isoformat()}.yaml"
    handle = h.client.get_workflow_handle(inspection_workflow_id(insp))
    first_run = (await handle.describe()).run_id

    # The same file again: exit 0, nothing started, nothing written.
    before = await settled_snapshot(cli, [insp])
    again = await cli("publish", report)
    assert again.returncode == 0, again.stderr
    assert again.stdout == f"{insp} is already published (workflow ncpi/NTH/{published.isoformat()}); nothing started\n"
    assert (await handle.describe()).run_id == first_run
    assert await snapshot(cli, [insp]) == before

    # A bad file: the same one line `validate` gives first, nothing written, no workflow.
    bad = write_report(cli.tmp_path, "NUM", published, [("R1", "someday")], name="bad.yaml")
    validate = await cli("validate", bad)
    result = await cli("publish", bad)
    assert result.returncode != 0 and result.stdout == ""
    assert result.stderr.splitlines() == [validate.stderr.splitlines()[0]]
    assert "recommendations[0].timeframe: 'someday' is not one of" in result.stderr
    assert await snapshot(cli, [insp]) == before
    assert await inspection_row(h, f"NUM-{published.isoformat()}") is None
    from temporalio.service import RPCError, RPCStatusCode

    with pytest.raises(RPCError) as missing:
        await h.client.get_workflow_handle(f"ncpi/NUM/{published.isoformat()}").describe()
    assert missing.value.status is RPCStatusCode.NOT_FOUND

    # Read-only commands, run side by side: status from the database projection, show from the workflows.
    wf = f"ncpi/NTH/{published.isoformat()}"
    (status_text, status_json, status_nth, status_avs_json, status_avs, status_xxx, plan_json,
     show_insp, show_insp_json, show_rec, show_rec_json, show_avs, show_r9, show_bad) = await asyncio.gather(
        cli("status", "--all"), cli("status", "--json"), cli("status", "--force", "nth", "--json"),
        cli("status", "--force", "AVS", "--json"), cli("status", "--force", "AVS"), cli("status", "--force", "XXX"),
        cli("plan", report, "--json"),
        cli("show", insp), cli("show", insp, "--json"), cli("show", f"{wf}/R2"), cli("show", recs[1], "--json"),
        cli("show", f"AVS-{published.isoformat()}"), cli("show", f"{insp}-R9"), cli("show", "CUM/2017"),
    )
    for result in (status_text, status_json, status_nth, status_avs_json, status_avs, plan_json,
                   show_insp, show_insp_json, show_rec, show_rec_json):
        assert result.returncode == 0 and result.stderr == "", result.args

    # status: one line per recommendation under its inspection, with the public register's wording
    text = status_text.stdout.splitlines()
    assert text[0].startswith(f"{insp}  Northamptonshire Police, published {long_date(published)}: following up, cycle 1")
    assert [line.split()[0] for line in text[1:]] == recs
    assert all("force notified" in line and "awaiting review" in line for line in text[1:])
    assert "immediately" in text[1] and "within three months" in text[2] and "within six months" in text[3]
    listing = json.loads(status_json.stdout)
    assert [r["recommendation_id"] for r in listing] == recs
    assert {(r["inspection_id"], r["force"], r["phase"], r["register_status"], r["cycle"]) for r in listing} == {
        (insp, "NTH", "force_notified", "awaiting review", 1)
    }
    assert all(r["next_action"].startswith("reminder: Recommendation") and r["next_action_at"] for r in listing)
    assert json.loads(status_nth.stdout) == listing
    assert json.loads(status_avs_json.stdout) == []
    assert status_avs.stdout == "no published inspections for AVS\n"
    assert status_xxx.returncode != 0 and status_xxx.stderr == "ncpi: unknown force code 'XXX'; `ncpi forces` lists the 43 codes\n"

    # show: the live workflow state, by business ID or workflow ID, as text and as JSON
    plan = {d["key"]: d["due"] for d in json.loads(plan_json.stdout)["deadlines"]}
    shown = show_insp.stdout
    assert shown.splitlines()[:2] == [f"{insp} (workflow {wf})", "Phase: following up, cycle 1"]
    assert f"  force action plan due {long_date(date.fromisoformat(plan['action_plan']))}\n" in shown
    assert f"  revisit no later than {long_date(date.fromisoformat(plan['revisit_by']))}\n" in shown
    assert f"Open recommendations: {', '.join(recs)}\n" in shown
    assert "published: 3 recommendations" in shown
    as_json = json.loads(show_insp_json.stdout)
    assert as_json["inspection_id"] == insp and as_json["state"]["phase"] == "following_up"
    assert {d["key"]: d["due"] for d in as_json["state"]["deadlines"]} == {
        k: plan[k] for k in ("immediate_update", "action_plan", "pcc_response", "revisit_by")
    }
    shown = show_rec.stdout
    assert shown.splitlines()[:3] == [
        f"{recs[1]} (workflow {wf}/R2)",
        "Phase: force notified, cycle 1; public register: awaiting review",
        "Force's claim: -; outcome: -",
    ]
    assert f"  recommendation due {long_date(date.fromisoformat(plan['recommendation:R2']))}\n" in shown
    rec_json = json.loads(show_rec_json.stdout)
    assert rec_json["recommendation_id"] == recs[1] and rec_json["register_status"] == "awaiting review"
    assert rec_json["state"]["deadline"]["original_due"] == rec_json["state"]["deadline"]["due"] == plan["recommendation:R2"]
    assert rec_json["state"]["history"][0]["event"] == "force notified"
    for result, message in [
        (show_avs, f"no follow-up workflow for AVS-{published.isoformat()} (is it published?)"),
        (show_r9, f"no follow-up workflow for {insp}-R9 (is it published?)"),
        (show_bad, "'CUM/2017' is not an inspection ID such as CUM-2017-01-26 or a recommendation ID such as CUM-2017-01-26-R1"),
    ]:
        assert result.returncode != 0 and result.stdout == "" and result.stderr == f"ncpi: {message}\n"

    # Temporal's own tooling finds the report's workflows by the ForceCode search attribute.
    temporal = str(Path(sys.executable).parent / "temporal")
    expected = {inspection_workflow_id(insp), *(recommendation_workflow_id(r) for r in recs)}

    async def listed():
        result = await asyncio.to_thread(
            subprocess.run,
            [temporal, "workflow", "list", "--address", cli.env["NCPI_TEMPORAL_ADDRESS"], "--query", 'ForceCode="NTH"'],
            capture_output=True, text=True, timeout=30,
        )
        assert result.returncode == 0, result.stderr
        ids = {line.split()[1] for line in result.stdout.splitlines()[1:] if len(line.split()) > 1}
        return ids if ids == expected else None

    await eventually(listed, timeout=10, interval=0.5)


async def test_publish_anchor_now_and_temporal_unreachable(cli):
    from tests.postgres import free_port

    h = cli.h
    report = write_report(cli.tmp_path, "SUR", date(2017, 3, 7), [("R1", "within_three_months")])
    nowhere = {"NCPI_TEMPORAL_ADDRESS": f"127.0.0.1:{free_port()}"}
    down = await cli("publish", report, **nowhere)
    assert down.returncode != 0 and len(down.stderr.splitlines()) == 1
    assert down.stderr.startswith(f"ncpi: cannot reach Temporal at {nowhere['NCPI_TEMPORAL_ADDRESS']} (NCPI_TEMPORAL_ADDRESS")
    assert await inspection_row(h, "SUR-2017-03-07") is None
    for args in (("show", "SUR-2017-03-07"), ("progress", "SUR-2017-03-07-R1", "--claim", "in_progress", "--text", "x", "--by", "y")):
        result = await cli(*args, **nowhere)
        assert result.returncode != 0 and len(result.stderr.splitlines()) == 1 and "NCPI_TEMPORAL_ADDRESS" in result.stderr

    # --anchor-now: a 2017 report followed up as if published now; its calendar starts at publication.
    out = await cli.ok("publish", report, "--anchor-now")
    assert out == "published SUR-2017-03-07: workflow ncpi/SUR/2017-03-07, 1 recommendations\n"
    await projected(h, "SUR-2017-03-07", 1)
    shown = await cli.json("show", "SUR-2017-03-07-R1")
    now = datetime.fromisoformat(shown["calendar_now"]).astimezone(LONDON)
    assert now.date() == date(2017, 3, 7) and now.hour == 9
    assert shown["state"]["phase"] == "force_notified"
    assert "(calendar now Tue 7 Mar 2017 09:" in await cli.ok("show", "SUR-2017-03-07")


# ---------------------------------------------------------------- the force's side: progress, evidence, deliveries; deadlines


async def test_progress_evidence_deliveries_and_deadline_revisions(cli):
    h = cli.h
    insp = await cli.publish("NWA", [("R1", "immediately"), ("R2", "within_three_months"), ("R3", "within_six_months")])
    r1, r2, r3 = (f"{insp}-R{n}" for n in (1, 2, 3))
    watched = [insp, r1, r2, r3]
    day = today()

    # progress
    out = await cli.ok("progress", r1, "--claim", "in_progress", "--text", "Training under way.", "--by", "liaison officer")
    # The force's claim never sets the public register status (the inspectorate's judgement does).
    assert out == f"{r1}: progress recorded (force claims in progress); in progress, awaiting review\n"
    [update] = await rows(h, ProgressUpdate)
    assert (update.recommendation_id, update.claim, update.text, update.submitted_by) == (r1, "in_progress", "Training under way.", "liaison officer")
    row = await phase_is(h, r1, "in_progress")
    assert row.force_claim == "in_progress"

    # evidence: kept by its SHA-256 under the data folder, recorded by the workflow and the activity
    content = b"%PDF-1.4 action plan, signed by the chief constable\n"
    source = cli.tmp_path / "action-plan.pdf"
    source.write_bytes(content)
    sha = hashlib.sha256(content).hexdigest()
    big = cli.tmp_path / "too-big.pdf"
    big.write_bytes(b"x" * 64)
    result = await cli("evidence", r2, "--file", big, "--by", "liaison officer", NCPI_EVIDENCE_MAX_BYTES="32")
    assert result.returncode != 0 and result.stderr == f"ncpi: {big}: evidence file is 64 bytes, over the 32-byte limit\n"
    assert not (h.settings.data_dir / "evidence").exists()
    out = await cli.ok("evidence", r2, "--file", source, "--by", "liaison officer", "--description", "The action plan")
    assert out == f"{r2}: evidence action-plan.pdf recorded ({len(content)} bytes, sha256 {sha[:12]}); evidence submitted, awaiting review\n"
    stored = h.settings.data_dir / "evidence" / sha[:2] / sha
    assert stored.read_bytes() == content
    assert [p.name for p in (h.settings.data_dir / "evidence").rglob("*") if p.is_file()] == [sha]
    [item] = await rows(h, Evidence)
    assert (item.recommendation_id, item.filename, item.sha256, item.size_bytes, item.content_type, item.description, item.submitted_by) == (
        r2, "action-plan.pdf", sha, len(content), "application/pdf", "The action plan", "liaison officer"
    )
    assert Path(item.storage_path) == stored.resolve()
    await phase_is(h, r2, "evidence_submitted")
    assert "  action-plan.pdf (%d bytes, sha256 %s), cycle 1, by liaison officer" % (len(content), sha[:12]) in await cli.ok("show", r2)

    # a delivery meets its deadline
    out = await cli.ok("deliver", insp, "action_plan", "--by", "hmi.office", "--note", "received by email")
    assert out.startswith(f"{insp}: action plan received ")
    [plan_row] = await rows(h, Deadline, Deadline.key == "action_plan")
    assert plan_row.met_at is not None
    plan = next(d for d in (await cli.json("show", insp))["state"]["deadlines"] if d["key"] == "action_plan")
    assert plan["met_at"] is not None

    # deadline revisions keep the original date and say who and why
    cal = calendar()
    state = (await view(h, insp)).state
    due = {d.key: d.due for d in state.deadlines}
    new_pcc = cal.add_working_days(due["pcc_response"], 5)
    out = await cli.ok("revise-deadline", insp, "--deadline", "pcc_response", "--to", new_pcc.isoformat(),
                       "--reason", "PCC election period", "--by", "hmi.office")
    assert out == f"{insp}: pcc_response deadline moved from {due['pcc_response']} to {new_pcc} (originally {due['pcc_response']})\n"
    [pcc] = await rows(h, Deadline, Deadline.key == "pcc_response")
    assert (pcc.original_due, pcc.current_due) == (due["pcc_response"], new_pcc)
    [revision] = await rows(h, DeadlineRevision, DeadlineRevision.deadline_id == pcc.id)
    assert (revision.previous_due, revision.new_due, revision.reason, revision.changed_by) == (
        due["pcc_response"], new_pcc, "PCC election period", "hmi.office"
    )
    shown = await cli.ok("show", insp)
    assert f"  PCC's published response due {long_date(new_pcc)} (originally {long_date(due['pcc_response'])})\n" in shown
    assert f"by hmi.office: {due['pcc_response']} -> {new_pcc} (PCC election period)" in shown

    r3_due = (await view(h, r3)).state.deadline.due
    new_r3 = cal.add_working_days(r3_due, 10)
    out = await cli.ok("revise-deadline", r3, "--deadline", "recommendation", "--to", new_r3.isoformat(),
                       "--reason", "Depends on national guidance", "--by", "hmi.lead")
    assert out == f"{r3}: recommendation deadline moved from {r3_due} to {new_r3} (originally {r3_due})\n"
    [r3_row] = await rows(h, Deadline, Deadline.key == "recommendation:R3")
    assert (r3_row.original_due, r3_row.current_due) == (r3_due, new_r3)
    r3_state = (await cli.json("show", r3))["state"]["deadline"]
    assert (r3_state["original_due"], r3_state["due"]) == (r3_due.isoformat(), new_r3.isoformat())
    assert [(r["by"], r["reason"]) for r in r3_state["revisions"]] == [("hmi.lead", "Depends on national guidance")]

    # every refusal: one line with the validator's reason, nothing changed
    saturday = next_saturday_after(day + timedelta(days=7))
    revisit_by = due["revisit_by"]
    later = cal.next_working_day(revisit_by + timedelta(days=1))
    revise = ("revise-deadline", insp, "--deadline")
    await refused(cli, [
        (("progress", r1, "--claim", "done", "--text", "Finished.", "--by", "liaison officer"),
         "unknown claim 'done'; use one of: not_started, in_progress, implemented"),
        (("deliver", insp, "action_plan", "--by", "hmi.office"), f"the action plan was already received on {utc_today()}"),
        (("deliver", insp, "mission_statement", "--by", "hmi.office"),
         "unknown item 'mission_statement'; use one of: immediate_update, action_plan, pcc_response"),
        ((*revise, "immediate_update", "--to", cal.add_working_days(due["immediate_update"], 3).isoformat(), "--reason", "", "--by", "hmi.office"),
         "--reason must not be empty"),
        ((*revise, "immediate_update", "--to", day.isoformat(), "--reason", "Asked for", "--by", "hmi.office"),
         f"the new date {day} is not after today ({day})"),
        ((*revise, "immediate_update", "--to", saturday.isoformat(), "--reason", "Asked for", "--by", "hmi.office"),
         f"{saturday} is not a working day"),
        ((*revise, "mission_statement", "--to", cal.add_working_days(day, 5).isoformat(), "--reason", "Asked for", "--by", "hmi.office"),
         "no open deadline 'mission_statement' here"),
        ((*revise, "revisit_by", "--to", later.isoformat(), "--reason", "Inspectors busy", "--by", "hmi.office"),
         f"the revisit_by date cannot move later than {revisit_by} (no later than six months)"),
        (("revise-deadline", r3, "--deadline", "evidence", "--to", cal.add_working_days(day, 5).isoformat(), "--reason", "Asked for", "--by", "hmi.office"),
         "no open deadline 'evidence' here"),
    ], watched)

    # and the same file of evidence twice is refused before anything is stored
    await refused(cli, [
        (("evidence", r2, "--file", source, "--by", "liaison officer"),
         "this file (action-plan.pdf) was already submitted for this recommendation"),
    ], watched)

    # A file name the workflow accepted from another front end (its validator allows what a file
    # system does, terminal escapes and line breaks too) is printed escaped by `ncpi show`, on its line.
    odd = "scan\x1b[2J\nof the plan.pdf"
    await h.recommendation(r3).execute_update("submit_evidence", EvidenceRequestInput(
        filename=odd, sha256=hashlib.sha256(odd.encode()).hexdigest(), size_bytes=99,
        storage_path="/evidence/odd", content_type="application/pdf", by="liaison officer",
    ), result_type=RecommendationView)
    shown = await cli.ok("show", r3)
    assert "\x1b" not in shown
    [line] = [line for line in shown.splitlines() if line.startswith("  scan")]  # the Evidence section's
    assert line.startswith("  scan\\x1b[2J\\nof the plan.pdf (99 bytes, sha256 "), line


async def test_deliver_with_the_document_or_its_address(cli):
    """`ncpi deliver --document FILE` checks the file as the portal checks an upload and keeps it by
    SHA-256; `--url` records the address; a bad document is refused with one line and nothing kept."""
    h = cli.h
    insp = await cli.publish("SWA", [("R1", "within_three_months")])
    watched = [insp, f"{insp}-R1"]
    exe = cli.tmp_path / "plan.pdf"
    exe.write_bytes(b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff\x00\x00" + b"\x00" * 200 + b"This program cannot be run in DOS mode")
    plan = cli.tmp_path / "action-plan.pdf"
    content = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
    plan.write_bytes(content)
    sha = hashlib.sha256(content).hexdigest()
    deliver = ("deliver", insp, "action_plan", "--by", "hmi.office")
    await refused(cli, [
        ((*deliver, "--document", exe),
         "--document: plan.pdf: the name says a PDF document but the content is a Windows program (EXE); send PDF, "
         "Word (DOCX), Excel (XLSX), OpenDocument (ODT, ODS), PNG, JPEG, GIF, plain text or CSV"),
        ((*deliver, "--document", cli.tmp_path / "absent.pdf"), f"--document: {cli.tmp_path / 'absent.pdf'}: no such file"),
        ((*deliver, "--document", plan, "--url", "https://www.swa.example/plan"), "give --document or --url, not both"),
        ((*deliver, "--url", "ftp://plan"), "enter the document's address as a web address starting https://, for example "
                                           "https://www.example.police.uk/action-plan"),
        (("deliver", insp, "mission_statement", "--by", "hmi.office", "--document", plan),
         "unknown item 'mission_statement'; use one of: immediate_update, action_plan, pcc_response"),
    ], watched)
    assert not h.settings.evidence_dir.exists() or not [p for p in h.settings.evidence_dir.rglob("*") if p.is_file()]

    out = await cli.ok(*deliver, "--document", plan, "--note", "sent by post")
    assert out.startswith(f"{insp}: action plan received ") and out.endswith(f", document action-plan.pdf (sha256 {sha[:12]})\n")
    stored = h.settings.evidence_dir / sha[:2] / sha
    assert stored.read_bytes() == content
    [audit] = await rows(h, AuditEvent, AuditEvent.action == "action_plan.received")
    assert (audit.actor, audit.detail["filename"], audit.detail["sha256"], audit.detail["note"]) == (
        "hmi.office", "action-plan.pdf", sha, "sent by post")
    url = "https://www.swa-pcc.example/ncpi-response"
    out = await cli.ok("deliver", insp, "pcc_response", "--by", "hmi.office", "--url", url)
    assert out.startswith(f"{insp}: pcc response received "), out
    assert out.endswith(f", at {url}\n")
    [pcc_audit] = await rows(h, AuditEvent, AuditEvent.action == "pcc_response.received")
    assert pcc_audit.detail["url"] == url and "sha256" not in pcc_audit.detail
    met = {d.key: d.met_at for d in (await view(h, insp)).state.deadlines}
    assert met["action_plan"] is not None and met["pcc_response"] is not None
    history = [e.detail for e in (await view(h, insp)).state.history if e.event.endswith("received")]
    assert history == ["sent by post; action-plan.pdf", url]

    # A second document for an item already received is refused before it is kept.
    second = cli.tmp_path / "action-plan-v2.pdf"
    second.write_bytes(content + b"%v2\n")
    await refused(cli, [((*deliver, "--document", second), f"the action plan was already received on {today()}")], watched)
    assert [p.name for p in h.settings.evidence_dir.rglob("*") if p.is_file()] == [sha]


# ---------------------------------------------------------------- the inspectorate's side: revisit, decisions, re-opening


async def test_revisit_decisions_withdraw_reopen_and_outbox(cli):
    h = cli.h
    insp = await cli.publish("NYP", [("R1", "immediately"), ("R2", "within_three_months"), ("R3", "within_six_months")])
    r1, r2, r3 = (f"{insp}-R{n}" for n in (1, 2, 3))
    watched = [insp, r1, r2, r3]
    day = today()
    evidence_file = cli.tmp_path / "r1-audit.txt"
    evidence_file.write_text("Audit of referrals, R1.\n")

    await refused(cli, [
        (("decide", r1, "--outcome", "achieved", "--rationale", "Looks done.", "--by", "hmi.cunningham"),
         "a decision needs the recommendation under review (at the revisit, with evidence or past the evidence "
         "deadline); it is force notified"),
        (("reopen", r2, "--reason", "Second thoughts.", "--by", "hmi.cunningham"),
         "only a closed recommendation can be re-opened; it is force notified"),
    ], watched)

    # Withdrawn before the revisit: closed, and the inspection stops waiting for it.
    out = await cli.ok("withdraw", r3, "--reason", "Superseded by national guidance.", "--by", "hmi.cunningham")
    assert out == f"{r3}: withdrawn; closed (no further action needed)\n"
    [withdrawn] = await rows(h, Decision, Decision.recommendation_id == r3)
    assert (withdrawn.cycle, withdrawn.outcome, withdrawn.rationale, withdrawn.decided_by) == (
        1, "withdrawn", "Superseded by national guidance.", "hmi.cunningham"
    )
    await phase_is(h, r3, "closed")

    async def inspection_forgot_r3():
        return r3 not in (await view(h, insp)).state.open_recommendations

    await eventually(inspection_forgot_r3)

    await cli.ok("evidence", r1, "--file", evidence_file, "--by", "liaison officer")
    await phase_is(h, r1, "evidence_submitted")

    out = await cli.ok("revisit", insp, "--by", "hmi.cunningham")
    assert out.startswith(f"revisit of {insp} opened ") and out.endswith("(cycle 1, inspector, by hmi.cunningham)\n")
    [revisit] = await rows(h, Revisit)
    assert (revisit.inspection_id, revisit.cycle, revisit.trigger, revisit.triggered_by) == (insp, 1, "inspector", "hmi.cunningham")
    await phase_is(h, r1, "under_review")  # its evidence was already in
    await phase_is(h, r2, "evidence_requested")
    [request] = await rows(h, EvidenceRequest)
    assert request.recommendation_id == r2
    # The register status is the inspectorate's judgement: opening the revisit changes nothing of it ...
    assert (await cli.json("status"))[1]["register_status"] == "awaiting review"
    # ... an inspector sets it, with a public comment, and the listing shows it.
    out = await cli.ok("register", "set", r2, "--status", "being progressed", "--comment", "Plan agreed with partners.", "--by", "hmi.cunningham")
    assert out == f"{r2}: register status 'being progressed' set by hmi.cunningham\n"
    assert (await cli.json("status"))[1]["register_status"] == "being progressed"
    await refused(cli, [
        (("register", "set", r2, "--status", "no further action needed", "--comment", "Done.", "--by", "hmi.cunningham"),
         '"no further action needed" is set by a closing decision (achieved, superseded or withdrawn)'),
        (("register", "set", r2, "--status", "sorted", "--comment", "Done.", "--by", "hmi.cunningham"),
         "unknown register status 'sorted'; use one of: awaiting review, being progressed, will be progressed"),
    ], watched)

    await refused(cli, [
        (("revisit", insp, "--by", "hmi.cunningham"), f"the revisit of cycle 1 is already open (since {utc_today()})"),
        (("decide", r1, "--outcome", "brilliant", "--rationale", "Looks done.", "--by", "hmi.cunningham"),
         "unknown outcome 'brilliant'; use one of: achieved, partially_achieved, not_achieved, superseded, withdrawn"),
        (("decide", r1, "--outcome", "achieved", "--rationale", "   ", "--by", "hmi.cunningham"), "--rationale must not be empty"),
        (("withdraw", r3, "--reason", "Again.", "--by", "hmi.cunningham"), "the recommendation is already closed (withdrawn)"),
    ], watched)

    out = await cli.ok("decide", r1, "--outcome", "achieved", "--rationale", "Referrals audited monthly since March.", "--by", "hmi.cunningham")
    assert out == f"{r1}: achieved; closed (no further action needed)\n"
    row = await phase_is(h, r1, "closed")
    assert row.outcome == "achieved"
    [decision] = await rows(h, Decision, Decision.recommendation_id == r1)
    assert (decision.cycle, decision.outcome, decision.decided_by) == (1, "achieved", "hmi.cunningham")

    await cli.ok("evidence", r2, "--file", evidence_file, "--by", "liaison officer", "--description", "Same audit")
    await phase_is(h, r2, "under_review")
    await cli.ok("decide", r2, "--outcome", "achieved", "--rationale", "The audit covers it.", "--by", "hmi.cunningham")

    async def inspection_closed():
        row = await inspection_row(h, insp)
        return row.phase == "closed"

    await eventually(inspection_closed)

    await refused(cli, [
        (("decide", r1, "--outcome", "achieved", "--rationale", "Again.", "--by", "hmi.cunningham"),
         "the recommendation is already closed (achieved); re-open it first"),
        (("progress", r1, "--claim", "implemented", "--text", "All done.", "--by", "liaison officer"),
         "the recommendation is closed; progress can no longer be reported"),
        (("withdraw", r1, "--reason", "No longer relevant.", "--by", "hmi.cunningham"), "the recommendation is already closed (achieved)"),
        (("revisit", insp, "--by", "hmi.cunningham"), "every recommendation of this report is closed; there is nothing to revisit"),
    ], watched)

    # Re-opened: a second cycle with a new deadline; the closed inspection opens a cycle of its own.
    out = await cli.ok("reopen", r1, "--reason", "Referral backlog found on a later visit.", "--by", "hmi.lead")
    row = await phase_is(h, r1, "in_progress", cycle=2)
    assert out == f"{r1}: re-opened; cycle 2, in progress, due {(await view(h, r1)).state.deadline.due}\n"
    [decision] = await rows(h, Decision, Decision.recommendation_id == r1)
    assert (decision.reopened_by, decision.reopen_reason) == ("hmi.lead", "Referral backlog found on a later visit.")
    shown = await cli.json("show", r1)
    assert (shown["state"]["phase"], shown["state"]["cycle"], shown["register_status"]) == ("in_progress", 2, "awaiting review")

    async def inspection_reopened():
        state = (await view(h, insp)).state
        return state.phase == "following_up" and state.cycle == 2 and state.open_recommendations == [r1]

    await eventually(inspection_reopened)

    # The outbox holds every notification the lifecycle produced.
    async def all_recorded():
        kinds = [r["kind"] for r in await cli.json("outbox")]
        wanted = ["published", "decision", "revisit_opened", "evidence_request", "revisit_outcome", "reopened"]
        return kinds if all(k in kinds for k in wanted) else None

    kinds = await eventually(all_recorded, timeout=20, interval=0.5)
    assert kinds.count("decision") == 3  # R3 withdrawn, R1 and R2 achieved
    outbox = await cli.json("outbox")
    by_id = {r["id"]: r for r in outbox}
    published_notice = next(r for r in outbox if r["kind"] == "published")
    contacts = {c.role: c.email for c in await rows(h, Contact, Contact.force_code == "NYP")}
    assert published_notice["to"] == [contacts["liaison_officer"], contacts["chief_officer"], contacts["pcc"]]
    assert published_notice["inspection_id"] == insp
    assert datetime.fromisoformat(published_notice["scheduled_for"]).hour == 9
    evidence_request = next(r for r in outbox if r["kind"] == "evidence_request")
    assert evidence_request["recommendation_id"] == r2 and evidence_request["subject"].startswith("Evidence requested: recommendation R2")
    text = (await cli.ok("outbox")).splitlines()
    assert len(text) == len(outbox)
    assert any("evidence_request" in line and "Evidence requested: recommendation R2" in line for line in text)
    split = {status: await cli.json("outbox", "--status", status) for status in ("pending", "sent", "failed")}
    assert sorted(r["id"] for part in split.values() for r in part) == sorted(by_id)
    assert all(r["status"] == status for status, part in split.items() for r in part)
    bad = await cli("outbox", "--status", "lost")
    assert bad.returncode != 0 and bad.stderr == "ncpi: --status: 'lost' is not one of: pending, sent, failed\n"


# ---------------------------------------------------------------- the worker command


async def test_worker_command_runs_until_sigterm(cli):
    log = cli.tmp_path / "worker.log"
    env = {**cli.env, "NCPI_TASK_QUEUE": f"{cli.env['NCPI_TASK_QUEUE']}-cli-worker"}
    with log.open("w") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "ncpi_workflow.cli", "worker"], env=env, cwd=ROOT,
                                   stdout=subprocess.PIPE, stderr=stderr, text=True)
    try:
        async def running():
            return "worker running on" in log.read_text() or process.poll() is not None

        await eventually(running, timeout=30, interval=0.2)
        assert process.poll() is None, log.read_text()
        process.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(process.wait, 30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert code == 0, log.read_text()
    assert "shutting down" in log.read_text() and "Traceback" not in log.read_text()
    assert process.stdout.read() == ""
