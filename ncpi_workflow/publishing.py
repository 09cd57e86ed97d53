"""Publishing a report: its records in one transaction and one follow-up workflow, or nothing."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time
from pathlib import Path

from sqlalchemy import select
from temporalio.client import Client
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError

from ncpi_workflow import db
from ncpi_workflow.clocks import TimeScale, calendar_for_report, plan_report
from ncpi_workflow.errors import UserError
from ncpi_workflow.forces import load_forces
from ncpi_workflow.lifecycle import InspectionInput, RecommendationRef, inspection_workflow_id
from ncpi_workflow.models import Inspection
from ncpi_workflow.policy import load_policy
from ncpi_workflow.report import load_report
from ncpi_workflow.settings import Settings
from ncpi_workflow.store import insert_report, load_reference_forces, recommendation_id


@dataclass(frozen=True)
class Publication:
    inspection_id: str
    workflow_id: str
    started: bool
    recommendations: int


def time_scale_for(settings: Settings, calendar_origin: datetime, anchor: datetime | None) -> TimeScale:
    """Real time (the identity) unless compressed or anchored: then publication maps to `anchor`."""
    if settings.time_scale == 1 and anchor is None:
        return TimeScale()
    return TimeScale(settings.time_scale, calendar_origin, anchor or datetime.now(calendar_origin.tzinfo))


async def publish(settings: Settings, client: Client, file: Path, anchor: datetime | None = None, by: str = "cli") -> Publication:
    """Validate, write, start. A report that fails validation writes nothing and starts nothing;
    a start that fails rolls the records back; the same report again starts nothing."""
    forces = load_forces(settings.forces_file)
    loaded = load_report(file, known_forces=set(forces), max_bytes=settings.report_max_bytes)
    report = loaded.report
    policy = load_policy(settings.policy)
    calendar = calendar_for_report(policy, report.published)
    timeline = plan_report(report.published, [(r.ref, r.timeframe) for r in report.recommendations], policy, calendar)
    workflow_id = inspection_workflow_id(report.inspection_id)
    published_at = calendar.next_send_time(calendar.at(report.published, time(0, 0)))
    scale = time_scale_for(settings, published_at, anchor)

    async with db.open_database(settings.database_url) as sessions:
        async with sessions() as session:
            await session.begin()
            existing = await session.get(Inspection, report.inspection_id)
            if existing is not None:
                if existing.report_sha256 != loaded.sha256:
                    raise UserError(
                        f"{file}: {report.inspection_id} is already published from a different file "
                        f"(sha256 {existing.report_sha256[:12]}); a published report is not replaced"
                    )
                return Publication(report.inspection_id, workflow_id, False, len(report.recommendations))
            await load_reference_forces(session, forces)
            await insert_report(session, loaded, timeline, actor=by, workflow_id=workflow_id)
            force = forces[report.force]
            try:
                handle = await client.start_workflow(
                    "InspectionFollowUp",
                    InspectionInput(
                        inspection_id=report.inspection_id,
                        force_code=report.force,
                        force_name=force.name,
                        programme=report.programme,
                        title=report.title,
                        published=report.published,
                        recommendations=[
                            RecommendationRef(recommendation_id(report.inspection_id, r.ref), r.ref, r.timeframe.value)
                            for r in report.recommendations
                        ],
                        policy=policy,
                        calendar=calendar,
                        time_scale=scale,
                    ),
                    id=workflow_id,
                    task_queue=settings.task_queue,
                    id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                )
            except WorkflowAlreadyStartedError:
                raise UserError(
                    f"{report.inspection_id}: a follow-up workflow {workflow_id} exists but the database has no record "
                    "of this report (was the database replaced?); nothing was written"
                ) from None
            # Leaving the block without commit rolls everything back (validation or start failed).
            try:
                await session.commit()
            except Exception:
                await handle.terminate(reason="publication records could not be written")
                raise
        return Publication(report.inspection_id, workflow_id, True, len(report.recommendations))


async def published_ids(settings: Settings) -> list[str]:
    async with db.open_database(settings.database_url) as sessions:
        async with sessions() as session:
            return list((await session.scalars(select(Inspection.id).order_by(Inspection.id))).all())


async def inspection_input_from_records(
    session,
    inspection_id: str,
    *,
    policy,
    time_scale: TimeScale,
    calendar=None,
    carried=None,
) -> InspectionInput:
    """The InspectionInput `publish` starts a follow-up with, rebuilt from the records instead of
    the report file (for the reconciler's restarts). `calendar` defaults to the one `publish`
    computes for the publication date; pass the original run's policy, calendar and time scale
    when they are known, so that a restarted follow-up keeps the clocks it started with."""
    from ncpi_workflow.models import Force, Recommendation

    inspection = await session.get(Inspection, inspection_id)
    if inspection is None:
        raise LookupError(f"no inspection {inspection_id}")
    force = await session.get(Force, inspection.force_code)
    recommendations = (
        await session.scalars(select(Recommendation).where(Recommendation.inspection_id == inspection_id))
    ).all()
    recommendations = sorted(recommendations, key=lambda r: (len(r.ref), r.ref))  # report order: R1, R2, ... R10
    return InspectionInput(
        inspection_id=inspection.id,
        force_code=inspection.force_code,
        force_name=force.name if force is not None else inspection.force_code,
        programme=inspection.programme,
        title=inspection.title,
        published=inspection.published_on,
        recommendations=[RecommendationRef(r.id, r.ref, r.timeframe) for r in recommendations],
        policy=policy,
        calendar=calendar or calendar_for_report(policy, inspection.published_on),
        time_scale=time_scale,
        carried=carried,
    )
