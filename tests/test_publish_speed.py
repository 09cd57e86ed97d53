"""`ncpi publish A B ...` (publish_many) with the database's part batched: the forces read once, one
query for what is recorded, the records of every report in one write transaction committed before
any of their workflows starts; the per-file path (`publish`) whenever the batch cannot settle a file.
Behaviour only: what is read, written and started, never how fast."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import date

import pytest
from sqlalchemy import event, func, select
from temporalio.client import Client, Interceptor, OutboundInterceptor

from ncpi_workflow import db, publishing
from ncpi_workflow.app.publishing import check_file, publish_files
from ncpi_workflow.clocks import calendar_for_report, plan_report
from ncpi_workflow.lifecycle import inspection_workflow_id
from ncpi_workflow.models import AuditEvent, Inspection, Recommendation
from ncpi_workflow.policy import load_policy
from ncpi_workflow.store import insert_report
from tests.lifecycle_support import harness, write_report
from tests.test_publishing import _database_url

RECS = [("R1", "within_six_months"), ("R2", "within_three_months")]


@pytest.fixture
def statements(monkeypatch):
    """Every statement and commit on the engines opened once `armed` is set (publishing's: the harness's
    and the worker's are opened before); db.open_database wrapped, not replaced."""
    seen = {"sql": [], "commits": 0, "armed": False}
    real = db.open_database

    @contextlib.asynccontextmanager
    async def watched(url, **options):
        async with real(url, **options) as sessions:
            if not seen["armed"]:
                yield sessions
                return
            engine = sessions.kw["bind"].sync_engine
            event.listen(engine, "before_cursor_execute", lambda _c, _cur, sql, *_: seen["sql"].append(sql))

            def committed(_conn):
                seen["commits"] += 1

            event.listen(engine, "commit", committed)
            yield sessions

    monkeypatch.setattr(publishing.db, "open_database", watched)
    return seen


class _SeeRecordsAtStart(Interceptor):
    """At each StartWorkflow, whether the report's records are committed (read on another connection)."""

    def __init__(self, sessions):
        self.sessions, self.committed_at_start, self.looks = sessions, {}, 0
        self.on_look = None

    def intercept_client(self, next: OutboundInterceptor) -> OutboundInterceptor:
        spy = self

        class Outbound(OutboundInterceptor):
            async def start_workflow(self, input):
                async with spy.sessions() as session:
                    inspection_id = input.args[0].inspection_id
                    spy.committed_at_start[inspection_id] = await session.get(Inspection, inspection_id) is not None
                return await super().start_workflow(input)

            async def describe_workflow(self, input):
                spy.looks += 1
                if spy.on_look is not None:
                    await spy.on_look(input.id)
                return await super().describe_workflow(input)

        return Outbound(next)


async def _count(h, model, *where) -> int:
    async with h.sessions() as session:
        return await session.scalar(select(func.count()).select_from(model).where(*where))


def _writes(sql: list[str], table: str) -> int:
    return sum(1 for s in sql if s.lstrip().upper().startswith("INSERT INTO " + table.upper()))


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_records_in_one_transaction_forces_read_once(time_skipping_env, tmp_path, request, backend, statements):
    url = await _database_url(request, backend)
    forces = {"sqlite": ["AVS", "BED", "CAM", "CHE", "CLE"], "postgresql": ["COL", "CUM", "DER", "DOR", "DUR"]}[backend]
    files = [write_report(tmp_path, force, date(2019, 10, 8), RECS) for force in forces]
    async with harness(time_skipping_env, tmp_path, database_url=url, publish_concurrency=2) as h:
        spy = _SeeRecordsAtStart(h.sessions)
        client = Client(**{**h.client.config(), "interceptors": [spy]})
        statements["armed"] = True
        outcomes = await publish_files(h.settings, client, [check_file(h.settings, f) for f in files],
                                       anchor=await h.env.get_current_time())
        assert [o.refused for o in outcomes] == [None] * len(files)
        assert all(o.publication.started for o in outcomes)
        assert [o.publication.inspection_id for o in outcomes] == [f"{f}-2019-10-08" for f in forces]
        # The forces and contacts read once (publish_many's own look), not once more per report.
        assert sum(1 for s in statements["sql"] if "FROM forces" in s) == 1
        assert sum(1 for s in statements["sql"] if "FROM contacts" in s) == 1
        # Which reports are recorded: one query for all of them (and insert_report's own look, in the write).
        assert sum(1 for s in statements["sql"] if "FROM inspections" in s) == 1 + len(files)
        # Two commits: the reference data (nothing changed, committed all the same), then every report's records.
        assert statements["commits"] == 2
        assert _writes(statements["sql"], "inspections") == len(files)
        # Every workflow started after its records were committed, each exactly once.
        assert spy.committed_at_start == {f"{f}-2019-10-08": True for f in forces}
        assert spy.looks == len(files)  # and each looked for first (a workflow without records is refused)
        assert await _count(h, Recommendation) == 2 * len(files)
        assert await _count(h, AuditEvent, AuditEvent.action == "report.published") == len(files)

        # Again: one query, nothing written, nothing started (their follow-ups have projected meanwhile).
        statements["sql"].clear()
        spy.committed_at_start.clear()
        await _wait_projected(h, [f"{f}-2019-10-08" for f in forces])
        again = await publish_files(h.settings, client, [check_file(h.settings, f) for f in files],
                                    anchor=await h.env.get_current_time())
        assert [o.publication.started for o in again] == [False] * len(files)
        assert spy.committed_at_start == {} and spy.looks == len(files)  # recorded: no look for a workflow either
        assert _writes(statements["sql"], "inspections") == 0
        assert sum(1 for s in statements["sql"] if "FROM inspections" in s) == 1


async def _wait_projected(h, inspection_ids: list[str]) -> None:
    for _ in range(600):
        if await _count(h, Inspection, Inspection.id.in_(inspection_ids), Inspection.projection_version > 0) == len(inspection_ids):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the follow-ups never projected")


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_a_report_recorded_meanwhile_undoes_the_batch_and_each_goes_alone(time_skipping_env, tmp_path, request, backend):
    """Another publisher commits one report's records between the batch's look and its write (and has not
    started its workflow yet): nothing of the batch is written twice, every report is published once."""
    url = await _database_url(request, backend)
    forces = {"sqlite": ["GLO", "GMP", "GWE"], "postgresql": ["HAM", "HER", "HUM"]}[backend]
    files = [write_report(tmp_path, force, date(2019, 10, 15), RECS) for force in forces]
    async with harness(time_skipping_env, tmp_path, database_url=url) as h:
        spy = _SeeRecordsAtStart(h.sessions)
        policy = load_policy(h.settings.policy)
        checked = [check_file(h.settings, f) for f in files]
        meanwhile = checked[1].loaded

        async def other_publisher(workflow_id: str) -> None:
            if workflow_id == inspection_workflow_id(meanwhile.report.inspection_id) and spy.looks == len(files):
                calendar = calendar_for_report(policy, meanwhile.report.published)
                timeline = plan_report(meanwhile.report.published, [(r.ref, r.timeframe) for r in meanwhile.report.recommendations],
                                       policy, calendar)
                async with h.sessions.begin() as session:
                    await insert_report(session, meanwhile, timeline, actor="other", workflow_id=workflow_id)

        client = Client(**{**h.client.config(), "interceptors": [spy]})
        # The middle file's look comes last: the others' looks done, the other publisher commits then.
        order = {inspection_workflow_id(c.loaded.report.inspection_id): i for i, c in enumerate(checked)}

        async def look(workflow_id):
            if order[workflow_id] == 1:
                while spy.looks < len(files):
                    await asyncio.sleep(0.01)
            await other_publisher(workflow_id)

        spy.on_look = look
        outcomes = await publish_files(h.settings, client, checked, anchor=await h.env.get_current_time())
        assert [o.refused for o in outcomes] == [None] * len(files)
        # Every workflow started (the one recorded by the other publisher too: its records were there,
        # its workflow was not), each after its records were committed.
        assert [o.publication.started for o in outcomes] == [True] * len(files)
        assert spy.committed_at_start == {f"{f}-2019-10-15": True for f in forces}
        assert await _count(h, Inspection) == len(files) and await _count(h, Recommendation) == 2 * len(files)
        assert await _count(h, AuditEvent, AuditEvent.action == "report.published") == len(files)
        async with h.sessions() as session:
            actors = dict((await session.execute(select(AuditEvent.entity_id, AuditEvent.actor)
                                                 .where(AuditEvent.action == "report.published"))).all())
        assert actors == {f"{forces[0]}-2019-10-15": "cli", f"{forces[1]}-2019-10-15": "other", f"{forces[2]}-2019-10-15": "cli"}
