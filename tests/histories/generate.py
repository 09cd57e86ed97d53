"""Record the event histories that tests/test_replay.py replays.

Run it (`.venv/bin/python -m tests.histories.generate vN`) only when a workflow change is meant to
be incompatible and is released behind workflow.patched(): the old folders stay, a new one is added.
v1: every record an activity; v2: records and projections as local activities; v3: an inspection's
recommendations started together; v4: one action at a time, the register trail, the calendar kept
ahead, the revisit limit told to recommendations, a re-opened recommendation waiting for its deadline.
v6 adds a second scenario (the files named adopted-*): a follow-up adopted part-way with imported
deliveries, a revisit, progress, register statuses and decisions (one partial: a second cycle, so
both workflows continue-as-new while catching up), then back-dated actions (`on`) on each Update:
progress, a delivery, a register status, a revisit, evidence and a decision.
v7: one transaction per event (behind workflow.patched("one-transaction-per-event")): each Update, a
deadline's message and the revisit's evidence request write their records, notifications and projection
in one `record_event` local activity, and an Update that tells the inspection starts its signal without
waiting for the server's confirmation (the run waits for it before continuing as new or completing).
The scenario passes through every handler and both continue-as-new paths: progress, a delivery, a
revised deadline, an inspector's revisit, evidence, a partial decision (a second cycle), the
automatic revisit, an achieved decision, a withdrawal and a re-opening.
v8 (issue 15's tuning): the inspection's first task writes the notice, its projection and its
recommendations' first projections in one record_event and starts them with their search attributes
("publication-starts-recommendations-first"); the step after an Update taken at the Update's instant,
no read_clock ("step-at-the-action-instant"); search attributes upserted only when they change
("search-attributes-when-changed").
"""

from __future__ import annotations

import asyncio
import tempfile
from datetime import date
from pathlib import Path

from temporalio.client import WorkflowHistory

from ncpi_workflow.lifecycle import DeliveryRequest, ProgressRequest, ReasonRequest, ReviseDeadlineRequest
from ncpi_workflow.temporal import DATA_CONVERTER, ensure_search_attributes
from tests.lifecycle_support import harness, skip_to, write_report

HERE = Path(__file__).resolve().parent


async def all_runs(client, workflow_id: str, first_run_id: str) -> list[WorkflowHistory]:
    """Every run of a workflow, following continue-as-new from the first."""
    runs, run_id = [], first_run_id
    while run_id:
        history = await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
        runs.append(history)
        run_id = next(
            (e.workflow_execution_continued_as_new_event_attributes.new_execution_run_id
             for e in history.events if e.HasField("workflow_execution_continued_as_new_event_attributes")),
            None,
        )
    return runs


async def _runs(h, prefix: str, workflow_id: str, first_run: str, inspection_id: str, refs) -> dict[str, list[WorkflowHistory]]:
    histories = {f"{prefix}inspection": await all_runs(h.client, workflow_id, first_run)}
    for ref in refs:
        rec_handle = h.recommendation(f"{inspection_id}-{ref}")
        first = next(
            e.child_workflow_execution_started_event_attributes.workflow_execution.run_id
            for e in histories[f"{prefix}inspection"][0].events
            if e.HasField("child_workflow_execution_started_event_attributes")
            and e.child_workflow_execution_started_event_attributes.workflow_execution.workflow_id == rec_handle.id
        )
        histories[f"{prefix}recommendation-{ref}"] = await all_runs(h.client, rec_handle.id, first)
    return histories


async def _adopted_scenario(h, tmp_path: Path) -> dict[str, list[WorkflowHistory]]:
    """Adopted on the calendar's today (mid-August 2017, after the first scenario), then back-dated actions."""
    from ncpi_workflow.lifecycle import (
        DecisionRequest, ImportedDecision, ImportedDelivery, ImportedInspection, ImportedProgress,
        ImportedRecommendation, ImportedRegisterEntry, ImportedRevisit, RegisterStatusRequest, TriggerRevisitRequest,
    )
    from tests import test_adoption as a
    from tests import test_lifecycle_timeskipping as t

    report = write_report(tmp_path, "NUM", date(2017, 3, 1), [("R1", "within_three_months"), ("R2", "within_three_months")])
    inspection_id = "NUM-2017-03-01"
    imported = ImportedInspection(
        deliveries=[ImportedDelivery("action_plan", date(2017, 3, 20), "hmi.office", "by email")],
        revisits=[ImportedRevisit(1, date(2017, 6, 1), "hmi.lead")],
    )
    recommendations = {
        "R1": ImportedRecommendation(
            progress=[ImportedProgress(date(2017, 3, 15), "in_progress", "Started.", "liaison")],
            decisions=[ImportedDecision(1, date(2017, 6, 20), "achieved", "Done.", "hmi.lead")],
        ),
        "R2": ImportedRecommendation(
            register=[ImportedRegisterEntry(date(2017, 4, 3), "being progressed", "Under way.", "hmi.lead")],
            decisions=[ImportedDecision(1, date(2017, 6, 20), "partially_achieved", "Half done.", "hmi.lead")],
        ),
    }
    started: list = []
    await a.start_adopted(h, report, await a.calendar_now(h), imported, recommendations, started)
    insp = h.inspection(inspection_id)
    first_run = started[0].first_execution_run_id
    await t.eventually(lambda: t._cycle(h, inspection_id, 2), timeout=60)
    r2 = h.recommendation(f"{inspection_id}-R2")
    await t.update(r2, "submit_progress", ProgressRequest("in_progress", "Most districts.", "liaison", on=date(2017, 7, 10)))
    await t.update(insp, "record_delivery", DeliveryRequest("pcc_response", "hmi.office", on=date(2017, 4, 20)))
    await t.update(r2, "set_register_status", RegisterStatusRequest("will be progressed", "Agreed.", "hmi.lead", on=date(2017, 7, 12)))
    await insp.execute_update("trigger_revisit", TriggerRevisitRequest("hmi.lead", on=date(2017, 8, 1)))
    await t.eventually(lambda: t._phase_is(h, f"{inspection_id}-R2", "evidence_requested"))
    evidence = t.evidence("adopted-cycle-2.pdf")
    evidence.on = date(2017, 8, 7)
    await t.update(r2, "submit_evidence", evidence)
    await t.update(r2, "record_decision", DecisionRequest("achieved", "All districts now.", "hmi.lead", on=date(2017, 8, 14)))
    await t.eventually(lambda: t._closed(h, inspection_id))
    return await _runs(h, "adopted-", a.inspection_workflow_id(inspection_id), first_run, inspection_id, ("R1", "R2"))


async def main(version: str) -> None:
    from temporalio.testing import WorkflowEnvironment

    from tests import test_lifecycle_timeskipping as t

    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=str(Path(__import__("sys").executable).parent / "temporal-test-server"),
        data_converter=DATA_CONVERTER,
    )
    await ensure_search_attributes(env.client, "default")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tmp_path = Path(tmp)
            report = write_report(tmp_path, "HUM", date(2017, 2, 7), [("R1", "within_three_months"), ("R2", "immediately"), ("R3", "within_six_months")])
            async with harness(env, tmp_path) as h:
                publication = await t.start(h, report, date(2017, 2, 7))
                insp = h.inspection("HUM-2017-02-07")
                first_inspection_run = (await insp.describe()).run_id
                await t.skip_to(h, t.at(2017, 2, 20, 12))
                await t.update(h.recommendation("HUM-2017-02-07-R1"), "submit_progress", ProgressRequest("in_progress", "Started.", "liaison"))
                await t.update(insp, "record_delivery", DeliveryRequest("action_plan", "hmi.office"))
                await t.update(insp, "revise_deadline", ReviseDeadlineRequest("pcc_response", date(2017, 4, 18), "PCC election purdah.", "hmi.lead"))
                await t.update(h.recommendation("HUM-2017-02-07-R3"), "withdraw", ReasonRequest("Superseded by R1.", "hmi.lead"))
                await t.revisit_and_evidence(h, "HUM-2017-02-07", ["R1", "R2"], t.at(2017, 5, 15, 12))
                await t.decide(h, "HUM-2017-02-07-R1", "partially_achieved")
                await t.decide(h, "HUM-2017-02-07-R2", "achieved")
                await t.eventually(lambda: t._cycle(h, "HUM-2017-02-07", 2))
                await skip_to(h, t.at(2017, 8, 15, 12))
                await t.eventually(lambda: t._phase_is(h, "HUM-2017-02-07-R1", "evidence_requested"))
                await t.update(h.recommendation("HUM-2017-02-07-R1"), "submit_evidence", t.evidence("cycle-2.pdf"))
                await t.decide(h, "HUM-2017-02-07-R1", "achieved")
                await t.eventually(lambda: t._closed(h, "HUM-2017-02-07"))
                await t.update(h.recommendation("HUM-2017-02-07-R2"), "reopen", ReasonRequest("Practice lapsed.", "hmi.lead"))
                await t.eventually(lambda: t._cycle(h, "HUM-2017-02-07", 3))
                histories = await _runs(h, "", publication.workflow_id, first_inspection_run, "HUM-2017-02-07", ("R1", "R2", "R3"))
                if version >= "v6":
                    histories.update(await _adopted_scenario(h, tmp_path))
        folder = HERE / version
        folder.mkdir(exist_ok=True)
        for name, runs in histories.items():
            for index, history in enumerate(runs, start=1):
                (folder / f"{name}-run{index}.json").write_text(history.to_json())
                print(f"wrote {version}/{name}-run{index}.json ({len(history.events)} events)")
    finally:
        await env.shutdown()


if __name__ == "__main__":
    import sys

    if len(sys.argv) != 2:
        sys.exit("usage: python -m tests.histories.generate vN   (a new folder under tests/histories/)")
    asyncio.run(main(sys.argv[1]))
