"""Publishing a report: its records in one transaction, committed, then its one follow-up workflow."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
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
from ncpi_workflow.report import LoadedReport, load_report
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


START_RPC_TIMEOUT = timedelta(seconds=30)


async def _workflow_exists(client: Client, workflow_id: str) -> bool:
    """Whether Temporal holds any run (running or closed) under this workflow ID."""
    from temporalio.service import RPCError, RPCStatusCode

    try:
        await client.get_workflow_handle(workflow_id).describe(rpc_timeout=START_RPC_TIMEOUT)
    except RPCError as exc:
        if exc.status is RPCStatusCode.NOT_FOUND:
            return False
        raise
    return True


@dataclass(frozen=True)
class _Published:
    sha256: str
    projection_version: int


async def _published(sessions, inspection_id: str) -> _Published | None:
    async with sessions() as session:
        row = await session.get(Inspection, inspection_id)
        return None if row is None else _Published(row.report_sha256, row.projection_version)


async def publish(
    settings: Settings,
    client: Client,
    file: Path,
    anchor: datetime | None = None,
    by: str = "cli",
    loaded: LoadedReport | None = None,
) -> Publication:
    """Validate, write, start. A report that fails validation writes nothing and starts nothing;
    the same report again starts nothing; a different file for a published report is refused.

    The records (the force's contacts among them) are committed before the workflow starts: its
    first activities read them (the publication notice resolves the liaison officer's address), and
    a worker may run them the moment the workflow exists. No database transaction is held open
    across a Temporal call. A workflow already under the report's ID while the database has no record
    of the report is refused before anything is written. Should the start fail once the records are
    committed, they stay: publishing the same file again starts the follow-up (so does the
    reconciler), for as long as it has never run. `loaded` is the report when the caller has just
    checked `file`."""
    forces = load_forces(settings.forces_file)
    if loaded is None:
        loaded = load_report(file, known_forces=set(forces), max_bytes=settings.report_max_bytes)
    report = loaded.report
    policy = load_policy(settings.policy)
    calendar = calendar_for_report(policy, report.published)
    timeline = plan_report(report.published, [(r.ref, r.timeframe) for r in report.recommendations], policy, calendar)
    workflow_id = inspection_workflow_id(report.inspection_id)
    published_at = calendar.next_send_time(calendar.at(report.published, time(0, 0)))
    scale = time_scale_for(settings, published_at, anchor)
    force = forces[report.force]
    publication = functools.partial(Publication, report.inspection_id, workflow_id, recommendations=len(report.recommendations))

    async with db.open_database(settings.database_url) as sessions:
        existing = await _published(sessions, report.inspection_id)
        created = False
        if existing is None:
            if await _workflow_exists(client, workflow_id):
                raise UserError(
                    f"{report.inspection_id}: a follow-up workflow {workflow_id} exists but the database has no record "
                    "of this report (was the database replaced?); nothing was written"
                )
            try:
                async with sessions.begin() as session:  # committed on leaving the block, before any start
                    await load_reference_forces(session, forces)
                    created = (await insert_report(session, loaded, timeline, actor=by, workflow_id=workflow_id)).created
            except IntegrityError:
                if await _published(sessions, report.inspection_id) is None:
                    raise  # not the report committed meanwhile by another caller
                created = False
            if not created:  # published meanwhile by another caller
                existing = await _published(sessions, report.inspection_id)
        if existing is not None:
            if existing.sha256 != loaded.sha256:
                raise UserError(
                    f"{file}: {report.inspection_id} is already published from a different file "
                    f"(sha256 {existing.sha256[:12]}); a published report is not replaced"
                )
            if existing.projection_version > 0:
                return publication(started=False)  # its follow-up has run: nothing to start
    try:
        await client.start_workflow(
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
            rpc_timeout=START_RPC_TIMEOUT,
        )
    except WorkflowAlreadyStartedError:
        # Started since the check above, from these records (another publisher of the same file, or
        # the reconciler): the follow-up runs on them.
        return publication(started=created)
    return publication(started=True)


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
