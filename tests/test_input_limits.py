"""One long value halts a recommendation on PostgreSQL (issue 11): every value is checked at the edge
against the column sizes, the same on both databases, and a record the database refuses for good
fails at once (an Update fails with the reason; the workflow carries on), never retried for ever."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from datetime import date, datetime, timezone

import pytest
from temporalio.client import WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.records import RecordActivities
from ncpi_workflow import lifecycle as lc
from ncpi_workflow import models
from ncpi_workflow.lifecycle import (
    DecisionRequest,
    DeliveryRequest,
    EvidenceRequestInput,
    Phase,
    ProgressRecord,
    ProgressRequest,
    ReasonRequest,
    RecommendationState,
    RegisterStatusRequest,
    ReviseDeadlineRequest,
    TriggerRevisitRequest,
)
from tests.conftest import run_ncpi
from tests.test_replay_stuck import ADDRESSES, TASK_TIMEOUT, _records, _worker


def _length(column) -> int:
    return column.type.length


def test_the_limits_are_the_column_sizes():
    people = [
        models.ProgressUpdate.submitted_by, models.Evidence.submitted_by, models.Decision.decided_by,
        models.Decision.reopened_by, models.RegisterStatusEntry.set_by, models.DeadlineRevision.changed_by,
        models.Revisit.triggered_by, models.AuditEvent.actor,
    ]
    assert {_length(c) for c in people} == {lc.NAME_MAX}
    assert _length(models.Evidence.filename) == lc.FILENAME_MAX
    assert _length(models.Evidence.content_type) == lc.CONTENT_TYPE_MAX
    assert _length(models.Recommendation.next_action) == _length(models.Inspection.next_action) == lc.NEXT_ACTION_MAX


def _state(phase=Phase.UNDER_REVIEW) -> RecommendationState:
    from ncpi_workflow.clocks import DeadlineKind, Party

    deadline = lc.TrackedDeadline("recommendation", DeadlineKind.RECOMMENDATION, Party.FORCE, date(2024, 6, 7), date(2024, 6, 7),
                                  datetime(2024, 3, 7, tzinfo=timezone.utc))
    return RecommendationState(phase=phase, cycle=1, deadline=deadline)


LONG_NAME = "x" * (lc.NAME_MAX + 1)
LONG_TEXT = "y" * (lc.TEXT_MAX + 1)


def _evidence(**overrides) -> EvidenceRequestInput:
    values = dict(filename="audit.pdf", sha256="a" * 64, size_bytes=10, storage_path="/e/a", content_type="application/pdf", by="liaison")
    return EvidenceRequestInput(**{**values, **overrides})


@pytest.mark.parametrize("check", [
    lambda: lc.check_progress(_state(Phase.IN_PROGRESS), ProgressRequest("in_progress", "Started.", LONG_NAME)),
    lambda: lc.check_progress(_state(Phase.IN_PROGRESS), ProgressRequest("in_progress", LONG_TEXT, "liaison")),
    lambda: lc.check_evidence(_state(), _evidence(by=LONG_NAME)),
    lambda: lc.check_evidence(_state(), _evidence(filename="f" * (lc.FILENAME_MAX + 1))),
    lambda: lc.check_evidence(_state(), _evidence(description=LONG_TEXT)),
    lambda: lc.check_evidence(_state(), _evidence(content_type="t" * (lc.CONTENT_TYPE_MAX + 1))),
    lambda: lc.check_decision(_state(), DecisionRequest("achieved", "Done.", LONG_NAME), None, None),
    lambda: lc.check_decision(_state(), DecisionRequest("achieved", LONG_TEXT, "hmi"), None, None),
    lambda: lc.check_withdraw(_state(), ReasonRequest("Gone.", LONG_NAME)),
    lambda: lc.check_reopen(_state(Phase.CLOSED), ReasonRequest(LONG_TEXT, "hmi")),
    lambda: lc.check_register_status(_state(), RegisterStatusRequest("being progressed", "Ok.", LONG_NAME)),
    lambda: lc.check_revision(None, ReviseDeadlineRequest("action_plan", date(2030, 1, 1), "Why.", LONG_NAME), date(2024, 1, 1)),
    lambda: lc.check_trigger_revisit(TriggerRevisitRequest(LONG_NAME)),
    lambda: lc.check_delivery(DeliveryRequest("action_plan", LONG_NAME)),
    lambda: lc.check_delivery(DeliveryRequest("action_plan", "hmi", LONG_TEXT)),
], ids=lambda _: "")
def test_every_check_refuses_a_value_over_its_limit_in_one_line(check):
    with pytest.raises(ValueError) as refused:
        check()
    message = str(refused.value)
    assert "\n" not in message and ("at most" in message), message


def test_values_at_the_limit_are_taken():
    lc.check_progress(_state(Phase.IN_PROGRESS), ProgressRequest("in_progress", "y" * lc.TEXT_MAX, "x" * lc.NAME_MAX))
    lc.check_evidence(_state(), _evidence(filename="f" * lc.FILENAME_MAX, description="d" * lc.TEXT_MAX))
    lc.check_trigger_revisit(TriggerRevisitRequest("  " + "x" * lc.NAME_MAX + "  "))  # kept stripped


async def test_a_value_the_database_refuses_fails_the_record_at_once(sessions, migrated_database_url):
    """Past the edge (a client that skips the validators): PostgreSQL refuses a name too long for its
    column, both refuse a row whose recommendation does not exist. Not retryable: the same row would be
    refused again."""
    from tests.test_projection_versions import _published

    _, rec_id = await _published(sessions, __import__("pathlib").Path(__import__("tempfile").mkdtemp()))
    records = RecordActivities(sessions, ADDRESSES)
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, activity_type="record_progress")
    now = datetime.now(timezone.utc)
    refused = [ProgressRecord(f"k/{uuid.uuid4()}", "NWA-2024-03-07-R9", "in_progress", "Started.", "liaison", now)]
    if migrated_database_url.startswith("postgresql"):
        refused.append(ProgressRecord(f"k/{uuid.uuid4()}", rec_id, "in_progress", "Started.", "x" * 500, now))
    for record in refused:
        with pytest.raises(ApplicationError) as failure:
            await env.run(records.record_progress, record)
        assert failure.value.non_retryable and failure.value.type == lc.RECORD_REJECTED
        assert failure.value.message.startswith("record_progress: the database refused the record: ")
        assert "\n" not in failure.value.message
    await env.run(records.record_progress, ProgressRecord(f"k/{uuid.uuid4()}", rec_id, "in_progress", "Started.", "liaison", now))


async def test_an_update_whose_record_is_refused_fails_and_the_workflow_carries_on(dev_server_env, tmp_path):
    """A follow-up whose recommendation is missing from the database (its records refused): the Update
    fails within seconds with the database's reason, the next one is not stuck behind it, the
    workflow still answers and runs. And a value over its limit never gets that far: the validator
    refuses it before anything is recorded."""
    from ncpi_workflow.clocks import TimeScale
    from ncpi_workflow.lifecycle import RecommendationInput, RecommendationView
    from workflows.recommendation import RecommendationWorkflow

    from ncpi_workflow import db

    published = date(2024, 3, 7)
    settings, policy, calendar, force_name = await _records(tmp_path, "NWA", published, [("R1", "within_three_months")])
    client = dev_server_env.client
    queue = f"limits-{uuid.uuid4()}"
    async with db.open_database(settings.database_url) as sessions:
        async with _worker(client, queue, sessions, policy, delivered=[]):
            handle = await client.start_workflow(
                RecommendationWorkflow.run,
                RecommendationInput(
                    inspection_id="NWA-2024-03-07", recommendation_id="NWA-2024-03-07-R7", ref="R7", force_code="NWA",
                    force_name=force_name, timeframe="within_three_months", published=published, policy=policy,
                    calendar=calendar, time_scale=TimeScale(), parent_workflow_id="ncpi/NWA/2024-03-07",
                ),
                id=f"ncpi/NWA/2024-03-07/R7/{uuid.uuid4()}", task_queue=queue, task_timeout=TASK_TIMEOUT,
            )
            with pytest.raises(WorkflowUpdateFailedError) as too_long:
                await asyncio.wait_for(handle.execute_update("submit_progress", ProgressRequest("in_progress", "Started.", "x" * 500)), 10)
            assert str(too_long.value.cause.message) == "who is reporting (by) is 500 characters; at most 200 are kept"
            for _ in range(2):
                with pytest.raises(WorkflowUpdateFailedError) as refused:
                    await asyncio.wait_for(handle.execute_update("submit_progress", ProgressRequest("in_progress", "Started.", "liaison")), 10)
                message = refused.value.cause.message
                assert message.startswith("record_progress: the database refused the record: ") and "FOREIGN KEY" in message.upper()
            view = await handle.query("state", result_type=RecommendationView)
            assert view.state.phase is Phase.FORCE_NOTIFIED and view.state.force_claim is None
            assert (await handle.describe()).status.name == "RUNNING"
            await handle.terminate()


def test_the_cli_refuses_a_long_value_in_one_line_before_asking_anyone(cli_env):
    cli_env["NCPI_TEMPORAL_ADDRESS"] = "127.0.0.1:1"  # nobody there: a refusal must come first
    rec = "CUM-2017-01-26-R1"
    cases = [
        (("progress", rec, "--claim", "in_progress", "--text", "Started.", "--by", "x" * 500), "--by is 500 characters; at most 200 are kept"),
        (("progress", rec, "--claim", "in_progress", "--text", "t" * 10_001, "--by", "liaison"), "--text is 10,001 characters; at most 10,000 are kept"),
        (("decide", rec, "--outcome", "achieved", "--rationale", "Done.", "--by", "x" * 201), "--by is 201 characters; at most 200 are kept"),
        (("withdraw", rec, "--reason", "r" * 10_001, "--by", "hmi"), "--reason is 10,001 characters; at most 10,000 are kept"),
        (("revisit", "CUM-2017-01-26", "--by", "x" * 300), "--by is 300 characters; at most 200 are kept"),
        (("deliver", "CUM-2017-01-26", "action_plan", "--by", "hmi", "--note", "n" * 10_001), "--note is 10,001 characters; at most 10,000 are kept"),
    ]
    for args, message in cases:
        result = run_ncpi(*args, env=cli_env)
        assert (result.returncode, result.stdout, result.stderr) == (1, "", f"ncpi: {message}\n"), args[0]
