"""Publishing: records and workflow together or not at all; the same report twice starts nothing."""

from __future__ import annotations

from datetime import date

import pytest
from sqlalchemy import func, select

from ncpi_workflow.errors import UserError
from ncpi_workflow.lifecycle import InspectionView
from ncpi_workflow.models import AuditEvent, Inspection, Recommendation
from ncpi_workflow.publishing import publish
from tests.conftest import ROOT
from tests.lifecycle_support import harness, write_report


async def counts(h):
    async with h.sessions() as session:
        published = select(func.count()).select_from(AuditEvent).where(AuditEvent.action == "report.published")
        return [await session.scalar(select(func.count()).select_from(m)) for m in (Inspection, Recommendation)] + [
            await session.scalar(published)
        ]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_publish_once_then_already_published(time_skipping_env, tmp_path, request, backend):
    url = None
    if backend == "postgresql":
        from tests.conftest import _create_pg_database

        url = await _create_pg_database(request.getfixturevalue("postgres_cluster"))
    force = {"sqlite": "BED", "postgresql": "CHE"}[backend]
    report = write_report(tmp_path, force, date(2017, 3, 7), [("R1", "within_three_months"), ("R2", "immediately")])
    async with harness(time_skipping_env, tmp_path, database_url=url) as h:
        first = await publish(h.settings, h.client, report, anchor=await h.env.get_current_time())
        assert first.started and first.workflow_id == f"ncpi/{force}/2017-03-07" and first.recommendations == 2
        second = await publish(h.settings, h.client, report, anchor=await h.env.get_current_time())
        assert not second.started and second.workflow_id == first.workflow_id
        assert await counts(h) == [1, 2, 1]
        view = await h.inspection(f"{force}-2017-03-07").query("state", result_type=InspectionView)
        assert view.state.open_recommendations == [f"{force}-2017-03-07-R1", f"{force}-2017-03-07-R2"]
        # The same publication date from a different file is refused, not merged.
        changed = report.with_name("changed.yaml")
        changed.write_text(report.read_text().replace("Recommendation R1.", "Recommendation R1, reworded."))
        with pytest.raises(UserError, match="already published from a different file"):
            await publish(h.settings, h.client, changed)


async def test_a_bad_report_writes_nothing_and_starts_nothing(time_skipping_env, tmp_path):
    async with harness(time_skipping_env, tmp_path) as h:
        for bad in sorted((ROOT / "tests" / "bad_reports").glob("*.yaml"))[:5]:
            with pytest.raises(UserError):
                await publish(h.settings, h.client, bad)
        assert await counts(h) == [0, 0, 0]


async def test_a_failed_start_leaves_no_half_published_report(time_skipping_env, tmp_path):
    report = write_report(tmp_path, "DER", date(2017, 3, 8), [("R1", "within_three_months")])
    async with harness(time_skipping_env, tmp_path) as h:
        # Something already holds the business ID (say, the database was restored from an old backup).
        squatter = await h.client.start_workflow("InspectionFollowUp", id="ncpi/DER/2017-03-08", task_queue="nobody-polls-this")
        try:
            with pytest.raises(UserError, match="exists but the database has no record"):
                await publish(h.settings, h.client, report)
            assert await counts(h) == [0, 0, 0]
        finally:
            await squatter.terminate()
