"""Publishing: records and workflow together or not at all; the same report twice starts nothing."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import date

import pytest
from sqlalchemy import func, select
from temporalio.client import Client, Interceptor, OutboundInterceptor, StartWorkflowInput

from ncpi_workflow.errors import UserError
from ncpi_workflow.lifecycle import InspectionView
from ncpi_workflow.models import AuditEvent, Contact, Inspection, Recommendation
from ncpi_workflow.publishing import publish
from tests.conftest import ROOT
from tests.lifecycle_support import harness, write_report


async def counts(h):
    async with h.sessions() as session:
        published = select(func.count()).select_from(AuditEvent).where(AuditEvent.action == "report.published")
        return [await session.scalar(select(func.count()).select_from(m)) for m in (Inspection, Recommendation)] + [
            await session.scalar(published)
        ]


async def _database_url(request, backend: str) -> str | None:
    """None (the harness's own SQLite file) or a fresh PostgreSQL database at the latest schema."""
    if backend != "postgresql":
        return None
    from tests.conftest import _create_pg_database

    return await _create_pg_database(request.getfixturevalue("postgres_cluster"), migrated=True)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_publish_once_then_already_published(time_skipping_env, tmp_path, request, backend):
    url = await _database_url(request, backend)
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


# ---------------------------------------------------------------- what the workflow's first activities find


class _SeeAtStart(Interceptor):
    """A client interceptor on the real client: `look` runs just before each StartWorkflow RPC leaves."""

    def __init__(self, look):
        self.look = look

    def intercept_client(self, next: OutboundInterceptor) -> OutboundInterceptor:
        look = self.look

        class Outbound(OutboundInterceptor):
            async def start_workflow(self, input: StartWorkflowInput):
                await look(input)
                return await super().start_workflow(input)

        return Outbound(next)


async def _no_transaction_open(url: str) -> bool:
    """Nobody holds a write transaction on the database: SQLite's write lock can be taken at once,
    and PostgreSQL has no other session idle in a transaction (as one left open across an RPC is)."""
    if url.startswith("sqlite"):
        connection = sqlite3.connect(url.split(":///", 1)[1], timeout=0)
        try:
            connection.execute("BEGIN IMMEDIATE")
            connection.rollback()
            return True
        except sqlite3.OperationalError:
            return False
        finally:
            connection.close()
    import asyncpg

    connection = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        open_ones = await connection.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND state LIKE 'idle in transaction%'"
        )
        return open_ones == 0
    finally:
        await connection.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_the_records_are_committed_before_the_workflow_starts(time_skipping_env, tmp_path, request, backend):
    """The publication notice, the workflow's first activity, resolves the liaison officer's address
    from the contacts: they (and the inspection's records) must be committed when the workflow
    starts, or a worker that picks it up at once finds "no liaison_officer address". And no database
    transaction is held open across the StartWorkflow call. Seen from another connection, at the
    moment the start leaves, on a fresh database (no forces loaded before the first publication)."""
    url = await _database_url(request, backend)
    force = {"sqlite": "LIN", "postgresql": "MER"}[backend]
    report = write_report(tmp_path, force, date(2017, 3, 9), [("R1", "within_three_months"), ("R2", "immediately")])
    async with harness(time_skipping_env, tmp_path, database_url=url) as h:
        seen = []

        async def look(start: StartWorkflowInput) -> None:
            async with h.sessions() as session:  # another connection than publish's own
                contacts = {c.role: c.email for c in (await session.scalars(
                    select(Contact).where(Contact.force_code == force))).all()}
                recommendations = await session.scalar(
                    select(func.count()).select_from(Recommendation).where(Recommendation.inspection_id == f"{force}-2017-03-09"))
                inspection = await session.get(Inspection, f"{force}-2017-03-09")
            seen.append((start.id, sorted(contacts), inspection is not None, recommendations,
                         await _no_transaction_open(h.settings.database_url)))

        client = Client(**{**h.client.config(), "interceptors": [_SeeAtStart(look)]})
        result = await publish(h.settings, client, report, anchor=await h.env.get_current_time())
        assert result.started
        assert seen == [(f"ncpi/{force}/2017-03-09", ["chief_officer", "liaison_officer", "pcc"], True, 2, True)]

        # And the worker's first activity indeed found the addresses: the publication notice is recorded.
        async def notice():
            return [n for n in await h.notifications() if n.kind == "published"]

        for _ in range(100):
            if await notice():
                break
            await asyncio.sleep(0.1)
        [published] = await notice()
        async with h.sessions() as session:
            liaison = await session.scalar(
                select(Contact.email).where(Contact.force_code == force, Contact.role == "liaison_officer"))
        assert liaison in published.recipients["to"]


async def test_a_start_that_fails_after_the_commit_is_made_good_by_publishing_again(time_skipping_env, tmp_path):
    """Temporal goes away between the check and the start: the committed records stay (nothing
    holds them open), and the same file published again starts the follow-up they describe."""
    from temporalio.service import RPCError, RPCStatusCode

    report = write_report(tmp_path, "GLO", date(2017, 3, 10), [("R1", "within_three_months")])
    async with harness(time_skipping_env, tmp_path) as h:
        async def gone(start: StartWorkflowInput) -> None:
            raise RPCError("connection refused", RPCStatusCode.UNAVAILABLE, b"")

        down = Client(**{**h.client.config(), "interceptors": [_SeeAtStart(gone)]})
        with pytest.raises(RPCError):
            await publish(h.settings, down, report, anchor=await h.env.get_current_time())
        assert await counts(h) == [1, 1, 1]
        with pytest.raises(RPCError) as missing:
            await h.inspection("GLO-2017-03-10").describe()
        assert missing.value.status is RPCStatusCode.NOT_FOUND

        again = await publish(h.settings, h.client, report, anchor=await h.env.get_current_time())
        assert again.started and again.workflow_id == "ncpi/GLO/2017-03-10"
        view = await h.inspection("GLO-2017-03-10").query("state", result_type=InspectionView)
        assert view.state.open_recommendations == ["GLO-2017-03-10-R1"]
        assert await counts(h) == [1, 1, 1]
