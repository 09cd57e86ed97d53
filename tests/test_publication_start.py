"""Publication in one workflow task (issue 15, workflows.inspection PUBLICATION_PATCH): from the histories
of a real publication on the time-skipping server, the inspection's first workflow task starts every
recommendation (no 1 ms timer before, nothing awaited between), with their search attributes; the notice,
the inspection's projection and every recommendation's first projection are ONE record_event; the
recommendations write nothing in their first task; and the dashboard's rows are right as soon as the
recommendations exist."""

from __future__ import annotations

import json
from datetime import date

from sqlalchemy import select
from temporalio.api.enums.v1 import EventType

from ncpi_workflow.lifecycle import EventWrite, RecommendationView
from ncpi_workflow.models import Inspection, Notification, Recommendation
from ncpi_workflow.temporal import FORCE_CODE, NEXT_DEADLINE, PHASE, PROGRAMME
from tests.lifecycle_support import harness, utc, write_report
from tests.test_event_transaction import _local_activity, _task_of
from tests.test_lifecycle_timeskipping import eventually, insp_view, rec_view, start
from workflows.common import ProjectionVersions
from workflows.inspection import PUBLICATION_PATCH

INSPECTION = "DUR-2017-02-07"
RECS = ["R1", "R2", "R3"]
WRITES = {"record_event", "record_notification", "project_inspection", "project_recommendation"}


def _patch_ids(events) -> list[str]:
    ids = []
    for e in events:
        if e.HasField("marker_recorded_event_attributes") and e.marker_recorded_event_attributes.marker_name == "core_patch":
            ids.append(json.loads(e.marker_recorded_event_attributes.details["patch-data"].payloads[0].data)["id"])
    return ids


async def _events(handle) -> list:
    return list((await handle.fetch_history()).events)


async def _recommendations_started(h):
    async with h.sessions() as session:
        rows = list(await session.scalars(select(Recommendation).order_by(Recommendation.id)))
    if len(rows) != len(RECS) or any(r.projection_version == 0 for r in rows):
        return None
    try:
        for r in RECS:
            await h.recommendation(f"{INSPECTION}-{r}").describe()
    except Exception:
        return None
    return rows


async def test_the_first_task_starts_the_recommendations_after_one_record_event(time_skipping_env, tmp_path, database_url):
    report = write_report(tmp_path, "DUR", date(2017, 2, 7), [(r, "within_three_months") for r in RECS])
    async with harness(time_skipping_env, tmp_path, database_url=database_url) as h:
        await start(h, report, date(2017, 2, 7))
        rows = await eventually(lambda: _recommendations_started(h))

        # -- the dashboard's rows, as soon as the recommendations exist: their first projections are written
        # (by the inspection, at the lowest version of the recommendation's first run), the inspection's too.
        async with h.sessions() as session:
            inspection = await session.get(Inspection, INSPECTION)
            notices = list(await session.scalars(select(Notification).where(Notification.kind == "published")))
        assert inspection.projection_version > 0 and inspection.phase == "following_up" and inspection.next_action
        assert len(notices) == 1
        for row in rows:
            assert (row.phase, row.cycle, row.projection_version) == ("force_notified", 1, ProjectionVersions.RUN), row.id
            assert row.next_action and row.next_action_at is not None, row.id
            assert row.force_code == "DUR" and row.clock_due is not None, row.id  # the dashboard's clock
            view: RecommendationView = await rec_view(h, row.id)
            # The recommendation knows the version its first projection was written at (the reconciler
            # compares the two), and the row says what its query says.
            assert view.state.projection_version == row.projection_version
            assert (view.next_action, utc(view.next_action_at)) == (row.next_action, utc(row.next_action_at))
        assert (await insp_view(h, INSPECTION)).state.projection_version == inspection.projection_version

        # -- the inspection's history: everything up to the starts in its first workflow task.
        events = await _events(h.inspection(INSPECTION))
        first_task = next(e.event_id for e in events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED)
        starts = [i for i, e in enumerate(events) if e.event_type == EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED]
        assert len(starts) == len(RECS)
        assert {_task_of(events, i) for i in starts} == {first_task}, "every recommendation started in the first task"
        before = events[: starts[0]]
        assert not [e for e in before if e.event_type == EventType.EVENT_TYPE_TIMER_STARTED], "no 1 ms timer"
        assert PUBLICATION_PATCH in _patch_ids(events)
        writes = [(i, t) for i, e in enumerate(events) if (t := _local_activity(e)) in WRITES]
        assert [t for i, t in writes if i < starts[0]] == ["record_event"], "one write before the starts"
        assert [t for i, t in writes if _task_of(events, i) == first_task] == ["record_event"]
        # What that one write wrote: the notice, the inspection's projection (above) and every recommendation's
        # first projection, at a version only `first_projection` writes (the recommendations wrote nothing).

        # -- each recommendation: started with its search attributes, nothing written in its first task.
        for r in RECS:
            handle = h.recommendation(f"{INSPECTION}-{r}")
            rec_events = await _events(handle)
            started = rec_events[0].workflow_execution_started_event_attributes
            assert {FORCE_CODE.name, PROGRAMME.name, PHASE.name, NEXT_DEADLINE.name} <= set(started.search_attributes.indexed_fields)
            attributes = (await handle.describe()).typed_search_attributes
            assert (attributes.get(FORCE_CODE), attributes.get(PROGRAMME), attributes.get(PHASE)) == ("DUR", "NCPI", "force_notified")
            assert attributes.get(NEXT_DEADLINE) is not None
            rec_first = next(e.event_id for e in rec_events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED)
            first_writes = [t for i, e in enumerate(rec_events) if (t := _local_activity(e)) in WRITES and _task_of(rec_events, i) == rec_first]
            assert first_writes == [], f"{r} wrote {first_writes} in its first task"
            after = next(i for i, e in enumerate(rec_events) if e.event_id == rec_first)
            in_first = [e for i, e in enumerate(rec_events) if i > after and _task_of(rec_events, i) == rec_first]
            upserts = [e for e in in_first if e.event_type == EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES]
            assert len(upserts) == len(_patch_ids(in_first)), "no upsert of its own: only the patches' (TemporalChangeVersion)"


def test_an_event_write_carries_first_projections():
    """The field record_event reads: empty by default, so an event without it is as before."""
    assert EventWrite().first_projections == [] and EventWrite().empty()


async def test_a_publication_still_to_come_waits_for_its_instant_then_does_the_same(time_skipping_env, tmp_path):
    """Publication an hour ahead of the workflow's start (the anchor in the future): its timer, nothing
    written nor started before it fires; then the notice, the projections and the starts, as above."""
    from datetime import timedelta

    from ncpi_workflow.publishing import publish

    report = write_report(tmp_path, "DUR", date(2017, 2, 7), [(r, "within_three_months") for r in RECS])
    async with harness(time_skipping_env, tmp_path) as h:
        anchor = await h.env.get_current_time() + timedelta(hours=1)
        assert (await publish(h.settings, h.client, report, anchor=anchor)).started
        handle = h.inspection(INSPECTION)

        async def waiting():
            events = await _events(handle)
            return events if any(e.event_type == EventType.EVENT_TYPE_TIMER_STARTED for e in events) else None

        events = await eventually(waiting)
        assert not [e for e in events if e.event_type == EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED]
        assert not [e for e in events if _local_activity(e) in WRITES]
        async with h.sessions() as session:
            assert not list(await session.scalars(select(Recommendation).where(Recommendation.projection_version > 0)))
        await h.env.sleep(timedelta(hours=2))
        rows = await eventually(lambda: _recommendations_started(h))
        assert {r.projection_version for r in rows} == {ProjectionVersions.RUN}
        events = await _events(handle)
        fired = next(i for i, e in enumerate(events) if e.event_type == EventType.EVENT_TYPE_TIMER_FIRED)
        starts = [i for i, e in enumerate(events) if e.event_type == EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED]
        writes = [i for i, e in enumerate(events) if _local_activity(e) in WRITES]
        assert len(starts) == len(RECS) and len({_task_of(events, i) for i in starts}) == 1
        assert [i for i in writes if i < starts[0]] == [w for w in writes if fired < w < starts[0]]
        assert [_local_activity(events[i]) for i in writes if i < starts[0]] == ["record_event"]


async def test_first_projections_are_written_as_one_statement_and_never_over_a_newer_row(sessions, tmp_path):
    """record_event's first projections: a row still unprojected takes its first projection (with the
    dashboard's clock and force); a row already newer keeps what it has. On SQLite and PostgreSQL."""
    from activities.records import RecordActivities
    from ncpi_workflow.lifecycle import RecommendationProjection
    from tests.test_projection_versions import _published
    from tests.test_replay_stuck import ADDRESSES

    _, rec_id = await _published(sessions, tmp_path)
    records = RecordActivities(sessions, ADDRESSES)
    first = RecommendationProjection(rec_id, ProjectionVersions.RUN, "force_notified", 1, None, None, "reminder: R1", None,
                                     register_status="awaiting review")
    await records.record_event(EventWrite(first_projections=[first]))
    async with sessions() as session:
        row = await session.get(Recommendation, rec_id)
        assert (row.projection_version, row.phase, row.next_action, row.register_status) == (
            ProjectionVersions.RUN, "force_notified", "reminder: R1", "awaiting review")
        assert row.force_code == "NWA" and row.clock_due is not None
    newer = RecommendationProjection(rec_id, ProjectionVersions.RUN + 9 * 256, "in_progress", 1, "in_progress", None, "revisit", None)
    assert await records.project_recommendation(newer)
    await records.record_event(EventWrite(first_projections=[first]))
    async with sessions() as session:
        row = await session.get(Recommendation, rec_id)
        assert (row.projection_version, row.phase, row.register_status) == (newer.version, "in_progress", "awaiting review")


def test_the_reconcilers_mark_of_a_first_projection_is_the_workflows_run_unit():
    from ncpi_workflow.lifecycle import PROJECTION_RUN, never_projected_by_itself

    assert PROJECTION_RUN == ProjectionVersions.RUN
    assert never_projected_by_itself(0) and never_projected_by_itself(ProjectionVersions.RUN)
    assert not never_projected_by_itself(ProjectionVersions.RUN + 3 * 256) and not never_projected_by_itself(7)


async def test_the_reconciler_takes_rows_projected_by_publication_alone_for_a_publication_not_finished(time_skipping_env, tmp_path):
    """The inspection gone after its publication's write, before it started any recommendation: rows projected
    (the inspection's, the recommendations' first projections) and no workflow. The reconciler restarts the
    inspection as publish starts it, and leaves the recommendations to it (restarted beside it, each would be
    started twice)."""
    from sqlalchemy import update as sa_update

    from ncpi_workflow.jobs import reconcile
    from tests.test_projection_versions import _published

    async with harness(time_skipping_env, tmp_path) as h:
        inspection_id, rec_id = await _published(h.sessions, tmp_path)
        async with h.sessions.begin() as session:
            await session.execute(sa_update(Inspection).where(Inspection.id == inspection_id).values(projection_version=ProjectionVersions.RUN + 3 * 256))
            await session.execute(sa_update(Recommendation).where(Recommendation.id == rec_id).values(projection_version=ProjectionVersions.RUN))
        repairs = await reconcile(h.sessions, h.client, h.settings)
        assert len(repairs) == 1 and repairs[0].startswith("restarted ncpi/NWA/2024-03-07 (was missing)"), repairs
        await eventually(lambda: rec_view(h, rec_id))  # started by the inspection, as at publication
        started = (await _events(h.recommendation(rec_id)))[0].workflow_execution_started_event_attributes
        assert started.parent_workflow_execution.workflow_id == "ncpi/NWA/2024-03-07"
        assert json.loads(started.input.payloads[0].data)["started_by_publication"] is True
