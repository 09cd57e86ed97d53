"""Projections go stale (issue 11): each projection write carries a version that grows with the
workflow's history (run of the continue-as-new chain, history length, order within the task), so the
newest write wins, even across a retried workflow task; and the inspection is projected again when
one of its recommendations is decided."""

from __future__ import annotations

import uuid
from datetime import date

from sqlalchemy import select
from temporalio import activity, workflow
from temporalio.worker import Interceptor, WorkflowInboundInterceptor, WorkflowInterceptorClassInput

from activities.records import RecordActivities
from ncpi_workflow.lifecycle import EventWrite, EventWritten, InspectionProjection, ProgressRequest, RecommendationProjection
from ncpi_workflow.models import Inspection, Recommendation
from tests.lifecycle_support import harness, write_report
from tests.test_lifecycle_timeskipping import _phase_is, at, decide, eventually, insp_view, revisit_and_evidence, start
from tests.test_replay_stuck import ADDRESSES, TASK_TIMEOUT, _eventually, _records, _worker
from workflows.common import ProjectionVersions

HIGHEST = ProjectionVersions.MAX_RUN * ProjectionVersions.RUN + (ProjectionVersions.RUN - 1)


async def _published(sessions, tmp_path) -> tuple[str, str]:
    from ncpi_workflow.clocks import calendar_for_report, plan_report
    from ncpi_workflow.forces import load_forces
    from ncpi_workflow.policy import load_policy
    from ncpi_workflow.report import load_report
    from ncpi_workflow.settings import Settings
    from ncpi_workflow.store import insert_report, load_reference_forces

    settings = Settings()
    forces = load_forces(settings.forces_file)
    published = date(2024, 3, 7)
    loaded = load_report(write_report(tmp_path, "NWA", published, [("R1", "within_three_months")]),
                         known_forces=set(forces), max_bytes=settings.report_max_bytes)
    policy = load_policy(settings.policy)
    timeline = plan_report(published, [("R1", loaded.report.recommendations[0].timeframe)], policy, calendar_for_report(policy, published))
    async with sessions.begin() as session:
        await load_reference_forces(session, forces)
        await insert_report(session, loaded, timeline, actor="test")
    return "NWA-2024-03-07", "NWA-2024-03-07-R1"


async def test_the_newer_projection_wins_and_the_highest_version_fits_both_databases(sessions, tmp_path):
    inspection_id, rec_id = await _published(sessions, tmp_path)
    records = RecordActivities(sessions, ADDRESSES)

    def rec(version: int, phase: str, action: str = "revisit") -> RecommendationProjection:
        return RecommendationProjection(rec_id, version, phase, 1, None, None, action, None)

    assert await records.project_recommendation(rec(ProjectionVersions.RUN + 40 * 256, "in_progress"))
    # A first attempt's activity landing after its retry's write (a lower history length): skipped.
    assert not await records.project_recommendation(rec(ProjectionVersions.RUN + 37 * 256 + 3, "force_notified"))
    # The highest version there is: 32 bits on PostgreSQL hold it. A next action too long for its column is cut.
    assert await records.project_recommendation(rec(HIGHEST, "under_review", "x" * 500))
    assert not await records.project_recommendation(rec(HIGHEST, "closed"))
    assert await records.project_inspection(InspectionProjection(inspection_id, HIGHEST, "revisit_open", 1, "y" * 300, None))
    async with sessions() as session:
        row = await session.get(Recommendation, rec_id)
        inspection = await session.get(Inspection, inspection_id)
    assert (row.phase, row.projection_version, len(row.next_action)) == ("under_review", HIGHEST, 200)
    assert (inspection.phase, len(inspection.next_action)) == ("revisit_open", 200)
    assert HIGHEST < 2**31


def test_a_new_run_versions_above_everything_written_before_it():
    R = ProjectionVersions.RUN
    assert ProjectionVersions.next_run(0, 0) == 1  # a new follow-up
    assert ProjectionVersions.next_run(0, 57) == 1  # a counter of the histories from before: below run 1
    assert ProjectionVersions.next_run(1, R + 40 * 256) == 2  # continue-as-new
    assert ProjectionVersions.next_run(0, 3 * R + 7) == 4  # restarted from the records (the reconciler) over run 3
    assert ProjectionVersions.next_run(ProjectionVersions.MAX_RUN, HIGHEST) == ProjectionVersions.MAX_RUN


class FailTheFirstProgressTask(Interceptor):
    """The workflow task that ran a progress Update, and wrote its projection, is lost: the Update
    handler finished, then the task fails (as if its worker had died before completing it)."""

    def __init__(self) -> None:
        self.failed = False

    def workflow_interceptor_class(self, input: WorkflowInterceptorClassInput):
        outer = self

        class Inbound(WorkflowInboundInterceptor):
            async def handle_update_handler(self, input):
                result = await super().handle_update_handler(input)
                if input.update == "submit_progress" and not outer.failed and not workflow.unsafe.is_replaying():
                    outer.failed = True
                    raise RuntimeError("injected: this workflow task is lost")
                return result

        return Inbound


async def test_a_retried_task_projects_over_what_its_first_attempt_wrote(dev_server_env, tmp_path):
    """A counter in the workflow's state restarts from the same number in the retried task: its write
    carried the number already written, and was skipped. The history length has grown since."""
    from ncpi_workflow import db
    from ncpi_workflow.lifecycle import RecommendationInput
    from ncpi_workflow.clocks import TimeScale
    from workflows.recommendation import RecommendationWorkflow

    published = date(2024, 3, 7)
    settings, policy, calendar, force_name = await _records(tmp_path, "NWA", published, [("R1", "within_three_months")])
    client = dev_server_env.client
    queue = f"versions-{uuid.uuid4()}"
    writes: list[tuple[int, bool, str | None]] = []
    failing = FailTheFirstProgressTask()
    async with db.open_database(settings.database_url) as sessions:
        records = RecordActivities(sessions, ADDRESSES)

        @activity.defn(name="project_recommendation")
        async def project_recommendation(projection: RecommendationProjection) -> bool:
            applied = await records.project_recommendation(projection)
            writes.append((projection.version, applied, projection.force_claim))
            return applied

        @activity.defn(name="record_event")
        async def record_event(write: EventWrite) -> EventWritten:
            """The progress Update's projection is written with its event (one-transaction-per-event); a
            deadline's message due meanwhile writes its own (not counted here)."""
            written = await records.record_event(write)
            if (projection := write.recommendation_projection) is not None and write.progress is not None:
                writes.append((projection.version, written.projected, projection.force_claim))
            return written

        async with _worker(client, queue, sessions, policy, delivered=[], interceptors=[failing],
                           replace={"project_recommendation": project_recommendation, "record_event": record_event}):
            handle = await client.start_workflow(
                RecommendationWorkflow.run,
                RecommendationInput(
                    inspection_id="NWA-2024-03-07", recommendation_id="NWA-2024-03-07-R1", ref="R1", force_code="NWA",
                    force_name=force_name, timeframe="within_three_months", published=published, policy=policy,
                    calendar=calendar, time_scale=TimeScale(), parent_workflow_id="ncpi/NWA/2024-03-07",
                ),
                id=f"ncpi/NWA/2024-03-07/R1/{uuid.uuid4()}", task_queue=queue, task_timeout=TASK_TIMEOUT,
            )
            await _eventually(lambda: _written(writes, 1))
            await handle.execute_update("submit_progress", ProgressRequest("in_progress", "Started.", "liaison"))
            async with sessions() as session:
                row = await session.get(Recommendation, "NWA-2024-03-07-R1")
            await handle.terminate()
    assert failing.failed
    progress = [w for w in writes if w[2] == "in_progress"]
    assert len(progress) == 2, writes  # the lost attempt's, and the retry's
    (lost_version, _, _), (retry_version, retry_applied, _) = progress
    assert retry_version > lost_version
    assert retry_applied, "the retried task's projection was written"
    assert (row.projection_version, row.phase, row.force_claim) == (retry_version, "in_progress", "in_progress")


async def _written(writes, count):
    return len(writes) >= count


async def test_the_inspection_is_projected_when_a_recommendation_is_decided(time_skipping_env, tmp_path):
    """The inspection waits for two decisions: after the first, its projection says one is left; the
    recommendation that went on to a further cycle projects from its second run."""
    report = write_report(tmp_path, "WYP", date(2017, 2, 7), [("R1", "within_three_months"), ("R2", "within_three_months")])
    async with harness(time_skipping_env, tmp_path) as h:
        await start(h, report, date(2017, 2, 7))
        await revisit_and_evidence(h, "WYP-2017-02-07", ["R1", "R2"], at(2017, 5, 15, 12))
        await eventually(lambda: _inspection_action(h, "decisions awaited on 2 recommendations"))
        await decide(h, "WYP-2017-02-07-R1", "partially_achieved")
        inspection = await eventually(lambda: _inspection_action(h, "decisions awaited on 1 recommendations"))
        assert inspection.phase == "revisit_open"
        await eventually(lambda: _phase_is(h, "WYP-2017-02-07-R1", "in_progress"))
        # The decision's own run projects cycle 2 first; the second run's projection follows and wins.
        rec = await eventually(lambda: _rec_row(h, "WYP-2017-02-07-R1", cycle=2, run=2))
        assert rec.projection_version // ProjectionVersions.RUN == 2, "written by the recommendation's second run"
        # The workflows' state holds the version they wrote last: the reconciler compares it with the row's.
        view = await insp_view(h, "WYP-2017-02-07")
        assert view.state.projection_version == inspection.projection_version


async def _inspection_action(h, action):
    async with h.sessions() as session:
        row = (await session.scalars(select(Inspection))).one()
    return row if row.next_action == action else None


async def _rec_row(h, rec_id, cycle, run=None):
    async with h.sessions() as session:
        row = await session.get(Recommendation, rec_id)
    if run is not None and row.projection_version // ProjectionVersions.RUN != run:
        return None
    return row if row.cycle == cycle and row.phase == "in_progress" else None
