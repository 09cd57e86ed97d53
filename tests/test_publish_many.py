"""`ncpi publish A B ...`: every file checked first, then all published with one database engine and
one Temporal client, NCPI_PUBLISH_CONCURRENCY at a time; a refused file does not stop the others."""

from __future__ import annotations

import asyncio
import contextlib
import re
from datetime import date, timedelta

import pytest
from sqlalchemy import func, select
from temporalio.client import Client, Interceptor, OutboundInterceptor, StartWorkflowInput

from ncpi_workflow import db, publishing
from ncpi_workflow.app.publishing import check_file, publish_files
from ncpi_workflow.lifecycle import inspection_workflow_id
from ncpi_workflow.models import Inspection, Recommendation
from ncpi_workflow.publishing import PastDeadlines, _workflow_exists
from ncpi_workflow.report import ReportInvalid
from tests.conftest import ROOT
from tests.lifecycle_support import harness, write_report
from tests.test_cli_devserver import calendar, cli, publication_date  # noqa: F401  (the `cli` fixture)
from tests.test_publishing import _database_url

FORCES = ["AVS", "BED", "CAM", "CHE", "CLE", "COL", "CUM", "DER", "DOR", "DUR"]
RECS = [("R1", "within_six_months"), ("R2", "within_three_months")]


class _InFlight(Interceptor):
    """Counts the StartWorkflow calls in flight on the real client; each waits a little before it
    leaves, so that calls that are allowed to overlap do."""

    def __init__(self, hold: float = 0.5):
        self.hold, self.now, self.most, self.starts = hold, 0, 0, []

    def intercept_client(self, next: OutboundInterceptor) -> OutboundInterceptor:
        counter = self

        class Outbound(OutboundInterceptor):
            async def start_workflow(self, input: StartWorkflowInput):
                counter.now += 1
                counter.most = max(counter.most, counter.now)
                counter.starts.append(input.id)
                try:
                    await asyncio.sleep(counter.hold)
                    return await super().start_workflow(input)
                finally:
                    counter.now -= 1

        return Outbound(next)


@pytest.fixture
def engines(monkeypatch):
    """Every database engine publishing opens, counted (db.open_database wrapped, not replaced)."""
    opened = []
    real = db.open_database

    @contextlib.asynccontextmanager
    async def counting(url, **options):
        opened.append(url)
        async with real(url, **options) as sessions:
            yield sessions

    monkeypatch.setattr(publishing.db, "open_database", counting)
    return opened


async def _count(h, model) -> int:
    async with h.sessions() as session:
        return await session.scalar(select(func.count()).select_from(model))


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_many_files_one_engine_one_client_bounded(time_skipping_env, tmp_path, request, backend, engines):
    url = await _database_url(request, backend)
    files = [write_report(tmp_path, force, date(2019, 5, 7), RECS) for force in FORCES]
    async with harness(time_skipping_env, tmp_path, database_url=url, publish_concurrency=3) as h:
        counter = _InFlight()
        client = Client(**{**h.client.config(), "interceptors": [counter]})
        engines.clear()  # the harness's own
        outcomes = await publish_files(h.settings, client, [check_file(h.settings, f) for f in files],
                                       anchor=await h.env.get_current_time())
        assert len(engines) == 1  # one engine for every file
        assert [o.name for o in outcomes] == [str(f) for f in files]  # in the order given
        assert all(o.refused is None and o.publication.started for o in outcomes)
        assert [o.publication.inspection_id for o in outcomes] == [f"{force}-2019-05-07" for force in FORCES]
        # Every start through the one client given, and never more than 3 at once (but 3 at once).
        assert sorted(counter.starts) == sorted(inspection_workflow_id(f"{force}-2019-05-07") for force in FORCES)
        assert counter.most == 3
        assert await _count(h, Inspection) == len(FORCES) and await _count(h, Recommendation) == 2 * len(FORCES)
        # Again: nothing started, one line each.
        again = await publish_files(h.settings, client, [check_file(h.settings, f) for f in files],
                                    anchor=await h.env.get_current_time())
        assert [o.publication.started for o in again] == [False] * len(FORCES)


async def test_default_concurrency_is_eight(time_skipping_env, tmp_path):
    files = [write_report(tmp_path, force, date(2019, 6, 4), [("R1", "immediately")]) for force in FORCES]
    async with harness(time_skipping_env, tmp_path) as h:
        assert h.settings.publish_concurrency == 8
        counter = _InFlight(hold=1.0)  # long enough for the eight to be in flight together on a loaded machine
        client = Client(**{**h.client.config(), "interceptors": [counter]})
        await publish_files(h.settings, client, [check_file(h.settings, f) for f in files], anchor=await h.env.get_current_time())
        assert counter.most == 8 and len(counter.starts) == len(FORCES)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_a_bad_file_among_good_ones_publishes_nothing(time_skipping_env, tmp_path, request, backend, engines):
    url = await _database_url(request, backend)
    good = [write_report(tmp_path, force, date(2019, 5, 7), RECS) for force in FORCES[:3]]
    bad = ROOT / "tests" / "bad_reports" / "answers-unknown-finding.yaml"
    async with harness(time_skipping_env, tmp_path, database_url=url) as h:
        checked = [check_file(h.settings, f) for f in [good[0], bad, good[1], good[2]]]
        engines.clear()
        with pytest.raises(ReportInvalid) as refused:
            await publish_files(h.settings, h.client, checked, anchor=await h.env.get_current_time())
        assert refused.value.problems and all(p.startswith(str(bad)) for p in refused.value.problems)
        assert engines == []  # not even connected
        assert await _count(h, Inspection) == 0
        for force in FORCES[:3]:
            assert not await _workflow_exists(h.client, inspection_workflow_id(f"{force}-2019-05-07"))


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_a_past_report_among_them_is_refused_alone(time_skipping_env, tmp_path, request, backend):
    url = await _database_url(request, backend)
    soon = date.today() - timedelta(days=1)  # real time, no anchor: nothing due before today but the notice
    good = [write_report(tmp_path, force, soon, [("R1", "within_six_months")]) for force in ("AVS", "BED")]
    old = write_report(tmp_path, "CAM", date(2018, 3, 5), RECS)
    async with harness(time_skipping_env, tmp_path, database_url=url) as h:
        files = [good[0], old, good[1]]
        outcomes = await publish_files(h.settings, h.client, [check_file(h.settings, f) for f in files])
        assert [o.publication is not None for o in outcomes] == [True, False, True]
        assert isinstance(outcomes[1].refused, PastDeadlines) and outcomes[1].name == str(old)
        assert re.match(rf"{re.escape(str(old))}: (\d+) of the \1 deadlines of CAM-2018-03-05 have passed", outcomes[1].refused.lines[0])
        async with h.sessions() as session:
            assert await session.get(Inspection, "CAM-2018-03-05") is None
            assert await session.get(Inspection, f"AVS-{soon.isoformat()}") is not None
        assert not await _workflow_exists(h.client, inspection_workflow_id("CAM-2018-03-05"))
        # The choice applies to every file: --adopt publishes the past one; the others are published already.
        adopted = await publish_files(h.settings, h.client, [check_file(h.settings, f) for f in files],
                                      past=publishing.PastChoice.ADOPT)
        assert [o.publication.started for o in adopted] == [False, True, False]


async def test_cli_publish_many(cli):
    day = publication_date() - timedelta(days=2)
    while not calendar().is_working_day(day):
        day -= timedelta(days=1)
    a = write_report(cli.tmp_path, "NOR", day, [("R1", "within_six_months")])
    b = write_report(cli.tmp_path, "SUF", day, [("R1", "within_six_months"), ("R2", "within_six_months")])
    old = write_report(cli.tmp_path, "WAR", date(2018, 3, 5), RECS)
    bad = ROOT / "tests" / "bad_reports" / "answers-unknown-finding.yaml"

    refused = await cli("publish", a, bad, b)
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.splitlines()[-1] == "ncpi: nothing was published from any of the 3 files"
    assert all(line.startswith(f"ncpi: {bad}") for line in refused.stderr.splitlines()[:-1])
    async with cli.h.sessions() as session:
        assert await session.get(Inspection, f"NOR-{day.isoformat()}") is None

    result = await cli("publish", a, old, b)
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        f"published NOR-{day.isoformat()}: workflow {inspection_workflow_id(f'NOR-{day.isoformat()}')}, 1 recommendations",
        f"published SUF-{day.isoformat()}: workflow {inspection_workflow_id(f'SUF-{day.isoformat()}')}, 2 recommendations",
    ]
    [line] = result.stderr.splitlines()
    assert re.match(rf"ncpi: {re.escape(str(old))}: (\d+) of the \1 deadlines of WAR-2018-03-05 have passed", line)
    assert line.endswith("; publish it alone to see what would be sent, or again with --catch-up, --adopt or --anchor-now")

    again = await cli.ok("publish", a, b)
    assert again.splitlines() == [
        f"NOR-{day.isoformat()} is already published (workflow {inspection_workflow_id(f'NOR-{day.isoformat()}')}); nothing started",
        f"SUF-{day.isoformat()} is already published (workflow {inspection_workflow_id(f'SUF-{day.isoformat()}')}); nothing started",
    ]


class _LookAfterTheFirstStart(_InFlight):
    """The race of two publishers of one report: the first asks whether its workflow exists at once;
    every later one only once the first has started it (after its first look at the database)."""

    def __init__(self):
        super().__init__(hold=0)
        self.started, self.looks = asyncio.Event(), 0

    def intercept_client(self, next: OutboundInterceptor) -> OutboundInterceptor:
        counter, outbound = self, super().intercept_client(next)

        class Outbound(type(outbound)):
            async def start_workflow(self, input):
                try:
                    return await super().start_workflow(input)
                finally:
                    counter.started.set()

            async def describe_workflow(self, input):
                counter.looks += 1
                if counter.looks > 1:
                    await asyncio.wait_for(counter.started.wait(), 10)
                return await super().describe_workflow(input)

        return Outbound(next)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_the_same_report_twice_among_them_is_published_once(time_skipping_env, tmp_path, request, backend):
    url = await _database_url(request, backend)
    report = write_report(tmp_path, "DOR", date(2019, 7, 2), RECS)
    copy = tmp_path / "copy" / report.name
    copy.parent.mkdir()
    copy.write_bytes(report.read_bytes())
    async with harness(time_skipping_env, tmp_path, database_url=url) as h:
        counter = _LookAfterTheFirstStart()
        client = Client(**{**h.client.config(), "interceptors": [counter]})
        outcomes = await publish_files(h.settings, client, [check_file(h.settings, f) for f in (report, copy, report)],
                                       anchor=await h.env.get_current_time())
        assert all(o.refused is None for o in outcomes), [o.refused for o in outcomes]
        assert sorted(o.publication.started for o in outcomes) == [False, False, True]
        assert await _count(h, Inspection) == 1 and await _count(h, Recommendation) == 2
        assert counter.looks == 3 and len(counter.starts) >= 1
