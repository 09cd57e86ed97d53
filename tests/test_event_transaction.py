"""One transaction per event (issue 15): an Update (and a deadline's message, the revisit's evidence
request) writes its records, notifications and projection in ONE local activity, `record_event`; a
part the database refuses for good leaves nothing of the event written and the workflow as before it;
and an Update that tells the inspection does not wait for the server to confirm the signal (the signal
is started in the same workflow task as the Update's completion). On SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import date, datetime, timezone

import pytest
from sqlalchemy import func, select, text
from temporalio.client import WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.records import RecordActivities
from ncpi_workflow.lifecycle import (
    RECORD_REJECTED,
    DecisionRecord,
    DeliveryRequest,
    EventWrite,
    EventWritten,
    NotificationRequest,
    ProgressRecord,
    ProgressRequest,
    RecommendationProjection,
    RecommendationView,
    RegisterRecord,
)
from ncpi_workflow.models import AuditEvent, Decision, Notification, ProgressUpdate, Recommendation, RegisterStatusEntry
from tests.lifecycle_support import harness, skip_to, write_report
from tests.test_lifecycle_timeskipping import (
    _closed,
    at,
    decide,
    eventually,
    insp_view,
    rec_view,
    revisit_and_evidence,
    start,
    update,
)
from tests.test_projection_versions import _published
from tests.test_replay_stuck import ADDRESSES

# The single-purpose record activities an event used to run one by one (old histories still name them).
SINGLE_PURPOSE = {
    "record_notification", "record_progress", "record_evidence", "record_evidence_request", "record_decision",
    "record_reopen", "record_register_status", "record_deadline_revision", "open_deadline", "mark_deadline_met",
    "record_revisit", "audit",
}


# ---------------------------------------------------------------- reading a history


def _local_activity(event) -> str | None:
    """The activity type of a local activity's marker (None: another event)."""
    if not event.HasField("marker_recorded_event_attributes"):
        return None
    marker = event.marker_recorded_event_attributes
    if marker.marker_name != "core_local_activity":
        return None
    return json.loads(marker.details["data"].payloads[0].data)["activity_type"]


def _task_of(events, index: int) -> int:
    """The WorkflowTaskCompleted event whose completion wrote events[index] (the latest one before it)."""
    return next(e.event_id for e in reversed(events[:index]) if e.HasField("workflow_task_completed_event_attributes"))


def update_spans(events, name: str) -> list[tuple[list[str], int]]:
    """For each completed Update `name`: the local activities it ran (between its acceptance and its
    completion) and the index of its completion event."""
    # By the Update's ID (the time-skipping server leaves the completion's accepted_event_id unset).
    accepted = {a.protocol_instance_id: (e.event_id, a.accepted_request.input.name)
                for e in events if e.HasField("workflow_execution_update_accepted_event_attributes")
                for a in [e.workflow_execution_update_accepted_event_attributes]}
    spans = []
    for index, e in enumerate(events):
        if not e.HasField("workflow_execution_update_completed_event_attributes"):
            continue
        start_id, started = accepted.get(e.workflow_execution_update_completed_event_attributes.meta.update_id, (None, None))
        if started != name:
            continue
        spans.append(([t for x in events if start_id < x.event_id < e.event_id and (t := _local_activity(x))], index))
    return spans


def _local_activities_after(events, index: int) -> list[str]:
    """The local activities written after events[index] in the same workflow task."""
    after = []
    for x in events[index + 1:]:
        if x.HasField("workflow_task_scheduled_event_attributes"):
            break
        if t := _local_activity(x):
            after.append(t)
    return after


def _update_steps(events, name: str) -> list[tuple[list[str], int]]:
    """For each completed Update `name`: the local activities it ran and the workflow task its
    completion was written in."""
    return [(types, _task_of(events, index)) for types, index in update_spans(events, name)]


async def _events(handle) -> list:
    return list((await handle.fetch_history()).events)


async def _count(h, model, *where) -> int:
    async with h.sessions() as session:
        return await session.scalar(select(func.count()).select_from(model).where(*where))


# ---------------------------------------------------------------- a refusing trigger, on either database


async def _refuse_closing(h) -> None:
    """A trigger that refuses the projection of an outcome: the event's last part fails for good."""
    async with h.sessions.begin() as session:
        if session.bind.dialect.name == "sqlite":
            await session.execute(text(
                "CREATE TRIGGER refuse_outcome BEFORE UPDATE OF outcome ON recommendations "
                "WHEN NEW.outcome IS NOT NULL BEGIN SELECT RAISE(ABORT, 'outcome refused by the test'); END"
            ))
        else:
            await session.execute(text(
                "CREATE FUNCTION refuse_outcome() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                "RAISE EXCEPTION 'outcome refused by the test' USING ERRCODE = '23514'; END $$"
            ))
            await session.execute(text(
                "CREATE TRIGGER refuse_outcome BEFORE UPDATE ON recommendations FOR EACH ROW "
                "WHEN (NEW.outcome IS NOT NULL) EXECUTE FUNCTION refuse_outcome()"
            ))


async def _allow_closing(h) -> None:
    async with h.sessions.begin() as session:
        await session.execute(text("DROP TRIGGER refuse_outcome" + ("" if session.bind.dialect.name == "sqlite" else " ON recommendations")))


# ---------------------------------------------------------------- the tests


async def test_each_event_is_one_record_event_and_the_decision_does_not_wait_for_its_signal(time_skipping_env, tmp_path, database_url):
    report = write_report(tmp_path, "DUR", date(2017, 2, 7), [("R1", "within_three_months"), ("R2", "within_three_months")])
    rec_id, inspection_id = "DUR-2017-02-07-R1", "DUR-2017-02-07"
    async with harness(time_skipping_env, tmp_path, database_url=database_url) as h:
        await start(h, report, date(2017, 2, 7))
        await skip_to(h, at(2017, 2, 20, 12))
        rec = h.recommendation(rec_id)
        view = await update(rec, "submit_progress", ProgressRequest("in_progress", "Started.", "liaison"), RecommendationView)
        assert view.state.phase == "in_progress"
        # Everything the Update wrote is there when it returns: the record and the projection.
        assert await _count(h, ProgressUpdate, ProgressUpdate.recommendation_id == rec_id) == 1
        assert await _count(h, Recommendation, Recommendation.id == rec_id, Recommendation.phase == "in_progress") == 1
        await update(h.inspection(inspection_id), "record_delivery", DeliveryRequest("action_plan", "hmi.office"))

        # Past the reminders (a deadline's message: its notification and projection in one), the revisit
        # (each evidence request with its deadline, notification and projection), evidence, a decision.
        await revisit_and_evidence(h, inspection_id, ["R1", "R2"], at(2017, 5, 15, 12))
        view = await decide(h, rec_id, "achieved", "Done everywhere.")
        assert view.state.phase == "closed"
        async with h.sessions() as session:
            decision = await session.scalar(select(Decision).where(Decision.recommendation_id == rec_id))
            assert decision.outcome == "achieved"
            kinds = (await session.scalars(select(Notification.kind).where(Notification.recommendation_id == rec_id))).all()
            assert "decision" in kinds and "evidence_request" in kinds and "reminder" in kinds
            row = await session.get(Recommendation, rec_id)
            assert (row.phase, row.outcome, row.register_status) == ("closed", "achieved", "no further action needed")
            assert await _count(h, RegisterStatusEntry, RegisterStatusEntry.recommendation_id == rec_id) == 1

        events = await _events(rec)
        for name in ("submit_progress", "submit_evidence", "record_decision"):
            spans = update_spans(events, name)
            assert spans, name
            for types, index in spans:
                assert types == ["read_clock", "record_event"], (name, types)
                # Nothing after it in the task that completes it: before patch step-at-the-action-instant
                # the main loop woken by the Update read the clock again there, and the Update waited for it.
                assert _local_activities_after(events, index) == [], name
        # The step after the Update was still taken (its reminders follow the new state): the patch is there.
        assert any(b"step-at-the-action-instant" in e.SerializeToString() for e in events)
        # The decision's signal to the inspection is started in the very task that completes the Update.
        (_, decision_task), = _update_steps(events, "record_decision")
        # (By position: the time-skipping server's workflow_task_completed_event_id names the task's start.)
        settled = [_task_of(events, i) for i, e in enumerate(events)
                   if e.HasField("signal_external_workflow_execution_initiated_event_attributes")
                   and e.signal_external_workflow_execution_initiated_event_attributes.signal_name == "recommendation_settled"]
        assert settled == [decision_task]
        # No record of this run was written by a single-purpose activity: every event went through record_event.
        ran = {t for e in events if (t := _local_activity(e))}
        assert "record_event" in ran and not ran & SINGLE_PURPOSE, ran

        # The inspection received it: R1 settled; deciding R2 closes the revisit and the report.
        assert (await insp_view(h, inspection_id)).state.settled.get(rec_id) == "achieved"
        await decide(h, "DUR-2017-02-07-R2", "achieved")
        await eventually(lambda: _closed(h, inspection_id))
        (delivery,) = _update_steps(await _events(h.inspection(inspection_id)), "record_delivery")
        assert [t for t in delivery[0] if t != "read_clock"] == ["record_event"]


async def test_an_event_refused_for_good_writes_nothing_and_the_workflow_carries_on(time_skipping_env, tmp_path, database_url):
    report = write_report(tmp_path, "DUR", date(2017, 2, 7), [("R1", "within_three_months")])
    rec_id, inspection_id = "DUR-2017-02-07-R1", "DUR-2017-02-07"
    async with harness(time_skipping_env, tmp_path, database_url=database_url) as h:
        await start(h, report, date(2017, 2, 7))
        await revisit_and_evidence(h, inspection_id, ["R1"], at(2017, 5, 15, 12))
        await eventually(lambda: _phase(h, rec_id, "under_review"))
        audits = await _count(h, AuditEvent)
        await _refuse_closing(h)
        with pytest.raises(WorkflowUpdateFailedError) as refused:
            await decide(h, rec_id, "achieved", "Done.")
        cause = refused.value.cause
        assert cause.type == RECORD_REJECTED
        assert cause.message.startswith("project_recommendation: the database refused the record: ")
        assert "outcome refused by the test" in cause.message
        # Nothing of the event: no decision, no outbox row, no register step, no audit, the old projection.
        assert await _count(h, Decision, Decision.recommendation_id == rec_id) == 0
        assert await _count(h, Notification, Notification.recommendation_id == rec_id, Notification.kind == "decision") == 0
        assert await _count(h, RegisterStatusEntry, RegisterStatusEntry.recommendation_id == rec_id) == 0
        assert await _count(h, AuditEvent) == audits
        assert await _count(h, Recommendation, Recommendation.id == rec_id, Recommendation.phase == "under_review") == 1
        # Nor in the workflow: its state is as before the event, and it takes the decision once the database does.
        view = await rec_view(h, rec_id)
        assert (view.state.phase, view.state.outcome, view.state.history[-1].event) == ("under_review", None, "evidence submitted")
        assert rec_id not in (await insp_view(h, inspection_id)).state.settled
        await _allow_closing(h)
        view = await decide(h, rec_id, "achieved", "Done.")
        assert view.state.phase == "closed"
        assert await _count(h, Decision, Decision.recommendation_id == rec_id) == 1
        assert await _count(h, Notification, Notification.recommendation_id == rec_id, Notification.kind == "decision") == 1
        await eventually(lambda: _closed(h, inspection_id))


async def _phase(h, rec_id, phase):
    return (await rec_view(h, rec_id)).state.phase == phase


class _Renderer:
    """A stand-in for activities.rendering.OutboxRenderer (engineer B's), recording how it is called."""

    def __init__(self, sessions) -> None:
        self.sessions = sessions
        self.calls: list[tuple] = []

    async def prepare(self, requests, after=None):
        self.calls.append(("prepare", [r.idempotency_key for r in requests]))
        return [f"prepared {r.idempotency_key}" for r in requests]

    async def store(self, session, notification_id, prepared) -> None:
        assert session.in_transaction()
        # Inside the event's transaction: the row it stores for is there, not yet committed.
        row = await session.get(Notification, notification_id)
        self.calls.append(("store", notification_id, prepared, row.idempotency_key))


async def test_record_event_writes_every_part_once_and_calls_the_renderer_around_its_transaction(sessions, tmp_path):
    inspection_id, rec_id = await _published(sessions, tmp_path)
    renderer = _Renderer(sessions)
    records = RecordActivities(sessions, ADDRESSES, renderer=renderer)
    now = datetime(2024, 6, 3, 9, tzinfo=timezone.utc)
    key = f"test/{uuid.uuid4()}"
    notifications = [
        NotificationRequest(f"{key}/n{i}", "decision", inspection_id, rec_id, ("liaison_officer",), f"Subject {i}", now, {"i": i})
        for i in (1, 2)
    ]
    write = EventWrite(
        decision=DecisionRecord(key, rec_id, 1, "achieved", "Done.", "hmi", now),
        notifications=notifications,
        recommendation_projection=RecommendationProjection(rec_id, 1 << 24, "closed", 1, None, "achieved", None, None),
    )
    env = ActivityEnvironment()
    written = await env.run(records.record_event, write)
    assert isinstance(written, EventWritten) and written.projected and len(written.notification_ids) == 2
    async with sessions() as session:
        ids = [await session.scalar(select(Notification.id).where(Notification.idempotency_key == n.idempotency_key)) for n in notifications]
        assert written.notification_ids == ids
        assert (await session.get(Recommendation, rec_id)).phase == "closed"
        assert await session.scalar(select(func.count()).select_from(Decision).where(Decision.recommendation_id == rec_id)) == 1
    assert renderer.calls == [
        ("prepare", [n.idempotency_key for n in notifications]),
        ("store", ids[0], f"prepared {key}/n1", f"{key}/n1"),
        ("store", ids[1], f"prepared {key}/n2", f"{key}/n2"),
    ]
    # Retried (the same event again): the same ids, nothing new stored, the projection not newer.
    renderer.calls.clear()
    again = await env.run(records.record_event, write)
    assert again.notification_ids == ids and not again.projected
    assert [c[0] for c in renderer.calls] == ["prepare"]


async def test_a_refused_part_fails_the_whole_event_at_once_naming_the_part(sessions, tmp_path):
    inspection_id, rec_id = await _published(sessions, tmp_path)
    records = RecordActivities(sessions, ADDRESSES)
    now = datetime(2024, 6, 3, 9, tzinfo=timezone.utc)
    key = f"test/{uuid.uuid4()}"
    write = EventWrite(
        progress=ProgressRecord(key, rec_id, "in_progress", "Started.", "liaison", now),
        notifications=[NotificationRequest(f"{key}/n", "decision", inspection_id, rec_id, ("liaison_officer",), "S", now)],
        # A recommendation that does not exist: its register step is refused (FOREIGN KEY) on both databases.
        register=[RegisterRecord(f"{key}/r", "NWA-2024-03-07-R9", 1, "being progressed", "", "hmi", now)],
    )
    with pytest.raises(ApplicationError) as refused:
        await ActivityEnvironment().run(records.record_event, write)
    assert refused.value.non_retryable and refused.value.type == RECORD_REJECTED
    assert refused.value.message.startswith("record_register_status: the database refused the record: ")
    async with sessions() as session:
        assert await session.scalar(select(func.count()).select_from(ProgressUpdate).where(ProgressUpdate.idempotency_key == key)) == 0
        assert await session.scalar(select(func.count()).select_from(Notification).where(Notification.idempotency_key == f"{key}/n")) == 0


def _markers(path) -> tuple[list[str], set[str]]:
    """A saved history's local activities (in order) and patches."""
    ran, patches = [], set()
    for event in json.loads(path.read_text())["events"]:
        marker = event.get("markerRecordedEventAttributes")
        if not marker:
            continue
        patch = marker["markerName"] == "core_patch"
        data = json.loads(base64.b64decode(marker["details"]["patch-data" if patch else "data"]["payloads"][0]["data"]))
        if patch:
            patches.add(data["id"])
        else:
            ran.append(data["activity_type"])
    return ran, patches


def test_the_v7_histories_write_each_event_in_one_record_event():
    """tests/histories/v7 (replayed by tests/test_replay.py) ran behind the patch: the recommendations'
    events all went through record_event (only each run's first projection is one of its own), and the
    inspection's Updates, reminders and revisits did too."""
    from pathlib import Path

    folder = Path(__file__).parent / "histories" / "v7"
    runs = sorted(folder.glob("*recommendation-*.json"))
    assert runs
    for path in runs:
        ran, patches = _markers(path)
        assert "one-transaction-per-event" in patches, path.name
        assert "record_event" in ran and not set(ran) & SINGLE_PURPOSE, (path.name, ran)
    ran, patches = _markers(folder / "inspection-run1.json")
    assert "one-transaction-per-event" in patches and "record_event" in ran
    # Left single-purpose: the publication notice (before the first event); adoption's imported actions.
    assert [t for t in ran if t in SINGLE_PURPOSE] == ["record_notification"], ran
