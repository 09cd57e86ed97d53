"""`ncpi status`: one query for the whole listing, and exactly the text and JSON it has always printed."""

from __future__ import annotations

import asyncio
import json
from datetime import date, datetime, timezone

import pytest

from ncpi_workflow import db
from ncpi_workflow.forces import load_forces
from ncpi_workflow.models import Inspection, Recommendation
from ncpi_workflow.store import load_reference_forces
from ncpi_workflow.views import render_status, status_json, status_records, status_rows
from ncpi_workflow.formatting import long_date
from tests.conftest import ROOT, run_ncpi

FORCES = load_forces(ROOT / "config" / "forces.yaml")
UTC = timezone.utc
NTH, AVS, CUM = "NTH-2017-03-01", "AVS-2017-03-01", "CUM-2017-01-26"


def _inspection(iid, code, published, phase="following_up", cycle=1, next_action=None, next_action_at=None):
    return Inspection(
        id=iid, force_code=code, programme="NCPI", title=f"Inspection {iid}", source_url=f"https://example.org/{iid}",
        fieldwork_start=date(2016, 10, 3), fieldwork_end=date(2016, 10, 14), published_on=published,
        report_sha256="0" * 64, workflow_id=f"ncpi/{iid}", created_at=datetime(2017, 1, 1, tzinfo=UTC),
        phase=phase, cycle=cycle, next_action=next_action, next_action_at=next_action_at,
    )


def _recommendation(iid, ref, timeframe, phase, cycle, force_claim, outcome, next_action, next_action_at):
    from ncpi_workflow.lifecycle import REGISTER_STATUS, Phase

    # The register status is its own projected column (the inspectorate's judgement, not the phase):
    # the listing shows the column; these rows hold the wording the phase used to imply.
    return Recommendation(
        id=f"{iid}-{ref}", inspection_id=iid, ref=ref, text="The force should ...", timeframe=timeframe, phase=phase,
        cycle=cycle, force_claim=force_claim, outcome=outcome, next_action=next_action, next_action_at=next_action_at,
        register_status=REGISTER_STATUS[Phase(phase)], updated_at=datetime(2017, 1, 1, tzinfo=UTC),
    )


def _at(month, day, hour, minute, second=0):
    return datetime(2017, month, day, hour, minute, second, tzinfo=UTC)


# Inserted out of order (R10 before R2, R11 before R1): the listing says R1, R2, ..., R9, R10, R11.
NTH_RECOMMENDATIONS = [
    ("R10", "within_three_months", "evidence_requested", 1, "in_progress", None, "reminder", _at(11, 11, 9, 30)),
    ("R2", "within_six_months", "in_progress", 1, "in_progress", None, "reminder", _at(3, 3, 9, 30)),
    ("R11", "within_six_months", "evidence_submitted", 2, "implemented", None, "reminder", _at(12, 12, 9, 30)),
    ("R1", "within_three_months", "force_notified", 2, "not_started", None, 'reminder: R1 \u201cdue\u201d "soon"', _at(2, 2, 9, 30)),
    ("R3", "immediately", "evidence_requested", 2, "implemented", None, "reminder", _at(4, 4, 9, 30)),
    ("R9", "immediately", "in_progress", 2, "not_started", None, "reminder", _at(10, 10, 9, 30)),
    ("R4", "within_three_months", "evidence_submitted", 1, None, None, "reminder", _at(5, 5, 9, 30)),
    ("R5", "within_six_months", "under_review", 2, "not_started", None, "reminder", None),
    ("R6", "immediately", "closed", 1, "in_progress", "partially_achieved", None, None),
    ("R7", "within_three_months", "published", 2, "implemented", None, "reminder", _at(8, 8, 9, 30)),
    ("R8", "within_six_months", "force_notified", 1, None, None, "reminder", _at(9, 9, 9, 30)),
]


def status_fixture() -> list:
    """Three inspections: two published the same day (the ID breaks the tie), one of them without
    recommendations, and one published later whose ID sorts first. Instants in summer and winter
    time, one with microseconds."""
    return [
        _inspection(CUM, "CUM", date(2017, 5, 4), next_action="revisit", next_action_at=_at(11, 3, 9, 0)),
        _inspection(NTH, "NTH", date(2017, 3, 1), cycle=2, next_action="revisit no later than",
                    next_action_at=datetime(2017, 8, 31, 8, 0, 0, 123456, tzinfo=UTC)),
        _inspection(AVS, "AVS", date(2017, 3, 1), phase="closed"),
        *(_recommendation(NTH, *r) for r in NTH_RECOMMENDATIONS),
        _recommendation(CUM, "R2", "immediately", "closed", 1, None, "achieved", None, None),
        _recommendation(CUM, "R1", "within_six_months", "force_notified", 1, None, None, "evidence", _at(12, 29, 23, 59, 59)),
    ]


async def seed(sessions) -> None:
    async with sessions.begin() as session:
        await load_reference_forces(session, FORCES)
    async with sessions.begin() as session:
        session.add_all(status_fixture())


EXPECTED_TEXT = """\
AVS-2017-03-01  Avon and Somerset Constabulary, published Wednesday 1 March 2017: closed, cycle 1

NTH-2017-03-01  Northamptonshire Police, published Wednesday 1 March 2017: following up, cycle 2; next: revisit no later than, Thu 31 Aug 2017 09:00
  NTH-2017-03-01-R1    within three months  force notified      cycle 2  awaiting review            force claims not started; next: reminder: R1 \u201cdue\u201d "soon", Thu 2 Feb 2017 09:30
  NTH-2017-03-01-R2    within six months    in progress         cycle 1  being progressed           force claims in progress; next: reminder, Fri 3 Mar 2017 09:30
  NTH-2017-03-01-R3    immediately          evidence requested  cycle 2  being progressed           force claims implemented; next: reminder, Tue 4 Apr 2017 10:30
  NTH-2017-03-01-R4    within three months  evidence submitted  cycle 1  awaiting review            next: reminder, Fri 5 May 2017 10:30
  NTH-2017-03-01-R5    within six months    under review        cycle 2  awaiting review            force claims not started; next: reminder
  NTH-2017-03-01-R6    immediately          closed              cycle 1  no further action needed   force claims in progress; outcome partially achieved
  NTH-2017-03-01-R7    within three months  published           cycle 2  awaiting review            force claims implemented; next: reminder, Tue 8 Aug 2017 10:30
  NTH-2017-03-01-R8    within six months    force notified      cycle 1  awaiting review            next: reminder, Sat 9 Sep 2017 10:30
  NTH-2017-03-01-R9    immediately          in progress         cycle 2  being progressed           force claims not started; next: reminder, Tue 10 Oct 2017 10:30
  NTH-2017-03-01-R10   within three months  evidence requested  cycle 1  being progressed           force claims in progress; next: reminder, Sat 11 Nov 2017 09:30
  NTH-2017-03-01-R11   within six months    evidence submitted  cycle 2  awaiting review            force claims implemented; next: reminder, Tue 12 Dec 2017 09:30

CUM-2017-01-26  Cumbria Constabulary, published Thursday 4 May 2017: following up, cycle 1; next: revisit, Fri 3 Nov 2017 09:00
  CUM-2017-01-26-R1    within six months    force notified      cycle 1  awaiting review            next: evidence, Fri 29 Dec 2017 23:59
  CUM-2017-01-26-R2    immediately          closed              cycle 1  no further action needed   outcome achieved
"""

INSPECTION_FIELDS = {
    NTH: {"inspection_id": NTH, "force": "NTH", "published": "2017-03-01", "inspection_phase": "following_up", "inspection_cycle": 2,
          "inspection_next_action": "revisit no later than", "inspection_next_action_at": "2017-08-31T09:00:00.123456+01:00"},
    CUM: {"inspection_id": CUM, "force": "CUM", "published": "2017-05-04", "inspection_phase": "following_up", "inspection_cycle": 1,
          "inspection_next_action": "revisit", "inspection_next_action_at": "2017-11-03T09:00:00+00:00"},
}
RECOMMENDATION_KEYS = ["recommendation_id", "ref", "timeframe", "phase", "register_status", "cycle", "force_claim", "outcome",
                       "next_action", "next_action_at"]
EXPECTED_RECORDS = [
    {**INSPECTION_FIELDS[iid], **dict(zip(RECOMMENDATION_KEYS, (f"{iid}-{ref}", ref, *rest)))}
    for iid, ref, *rest in [
        (NTH, "R1", "within_three_months", "force_notified", "awaiting review", 2, "not_started", None,
         'reminder: R1 \u201cdue\u201d "soon"', "2017-02-02T09:30:00+00:00"),
        (NTH, "R2", "within_six_months", "in_progress", "being progressed", 1, "in_progress", None, "reminder", "2017-03-03T09:30:00+00:00"),
        (NTH, "R3", "immediately", "evidence_requested", "being progressed", 2, "implemented", None, "reminder", "2017-04-04T10:30:00+01:00"),
        (NTH, "R4", "within_three_months", "evidence_submitted", "awaiting review", 1, None, None, "reminder", "2017-05-05T10:30:00+01:00"),
        (NTH, "R5", "within_six_months", "under_review", "awaiting review", 2, "not_started", None, "reminder", None),
        (NTH, "R6", "immediately", "closed", "no further action needed", 1, "in_progress", "partially_achieved", None, None),
        (NTH, "R7", "within_three_months", "published", "awaiting review", 2, "implemented", None, "reminder", "2017-08-08T10:30:00+01:00"),
        (NTH, "R8", "within_six_months", "force_notified", "awaiting review", 1, None, None, "reminder", "2017-09-09T10:30:00+01:00"),
        (NTH, "R9", "immediately", "in_progress", "being progressed", 2, "not_started", None, "reminder", "2017-10-10T10:30:00+01:00"),
        (NTH, "R10", "within_three_months", "evidence_requested", "being progressed", 1, "in_progress", None, "reminder", "2017-11-11T09:30:00+00:00"),
        (NTH, "R11", "within_six_months", "evidence_submitted", "awaiting review", 2, "implemented", None, "reminder", "2017-12-12T09:30:00+00:00"),
        (CUM, "R1", "within_six_months", "force_notified", "awaiting review", 1, None, None, "evidence", "2017-12-29T23:59:59+00:00"),
        (CUM, "R2", "immediately", "closed", "no further action needed", 1, None, "achieved", None, None),
    ]
]
FORCE_NAMES = {code: force.name for code, force in FORCES.items()}


async def test_status_rows_give_the_listing_in_order_on_both_databases(sessions):
    # Naive instants on SQLite, zoned ones on PostgreSQL: the same London times either way.
    await seed(sessions)
    async with sessions() as session:
        rows = await status_rows(session)
        nth = await status_rows(session, "NTH")
        avs = await status_rows(session, "AVS")
        durham = await status_rows(session, "DUR")
    assert status_records(rows) == EXPECTED_RECORDS
    assert "\n".join(render_status(rows, FORCE_NAMES)) + "\n" == EXPECTED_TEXT
    assert status_records(nth) == [r for r in EXPECTED_RECORDS if r["force"] == "NTH"]
    assert status_records(avs) == [] and render_status(avs, FORCE_NAMES) == [EXPECTED_TEXT.splitlines()[0]]
    assert durham == []


@pytest.mark.parametrize(
    "records",
    [
        [],
        EXPECTED_RECORDS,
        # Strings that look like the separators status_json rewrites, and ones json escapes.
        [{"a": 'x},\n    {"y', "b": 1, "c": None}, {"a": "\u00e9\\\t\u2028}", "b": -2, "c": "},{"}],
    ],
)
def test_status_json_is_json_dumps_with_indent_2_byte_for_byte(records):
    assert status_json(records) == json.dumps(records, indent=2)


def test_ncpi_status_prints_what_it_always_printed(cli_env):
    assert run_ncpi("db", "upgrade", env=cli_env).returncode == 0

    async def seed_cli_database():
        async with db.open_database(cli_env["NCPI_DATABASE_URL"]) as sessions:
            await seed(sessions)

    asyncio.run(seed_cli_database())
    expected_json = json.dumps(EXPECTED_RECORDS, indent=2) + "\n"
    nth_text = "\n".join(EXPECTED_TEXT.split("\n\n")[1].splitlines()) + "\n"
    for args, stdout in [
        # --all: the whole listing alone, as `ncpi status` printed before the summary and paging.
        (["status", "--all"], EXPECTED_TEXT),
        (["status", "--json"], expected_json),
        (["status", "--force", "nth", "--all"], nth_text),
        (["status", "--force", "NTH", "--json"], json.dumps(EXPECTED_RECORDS[:11], indent=2) + "\n"),
        (["status", "--force", "AVS", "--all"], EXPECTED_TEXT.splitlines()[0] + "\n"),
        (["status", "--force", "AVS", "--json"], "[]\n"),
        (["status", "--force", "DUR"], "no published inspections for DUR\n"),
        (["status", "--force", "DUR", "--all"], "no published inspections for DUR\n"),
        (["status", "--force", "DUR", "--json"], "[]\n"),
    ]:
        result = run_ncpi(*args, env=cli_env)
        assert (result.returncode, result.stderr) == (0, ""), args
        assert result.stdout == stdout, args
    unknown = run_ncpi("status", "--force", "XXX", env=cli_env)
    assert unknown.returncode != 0 and unknown.stderr == "ncpi: unknown force code 'XXX'; `ncpi forces` lists the 43 codes\n"

    # By default: the summary per force, then the first page of the listing (here all of it) and the page line.
    from datetime import datetime as _datetime

    from ncpi_workflow.formatting import LONDON

    today = _datetime.now(LONDON).date()
    summary = _summary_text(today, SUMMARY_ROWS)
    listing = EXPECTED_TEXT.splitlines()
    nth_heading = listing[2]
    for args, stdout in [
        (["status"], summary + "\n" + EXPECTED_TEXT + "\npage 1 of 1\n"),
        (["status", "--page-size", "5"], summary + "\n" + "\n".join(listing[:7]) + "\n\npage 1 of 3; --page 2 for more\n"),
        # A page that starts inside an inspection repeats its heading.
        (["status", "--page", "2", "--page-size", "5"],
         summary + "\n" + "\n".join([nth_heading, *listing[7:12]]) + "\n\npage 2 of 3; --page 3 for more\n"),
        (["status", "--page", "3", "--page-size", "5"], summary + "\n" + "\n".join([nth_heading, *listing[12:]]) + "\n\npage 3 of 3\n"),
        (["status", "--force", "CUM"], _summary_text(today, SUMMARY_ROWS[1:2]) + "\n" + "\n".join(listing[-3:]) + "\n\npage 1 of 1\n"),
    ]:
        result = run_ncpi(*args, env=cli_env)
        assert (result.returncode, result.stderr) == (0, ""), args
        assert result.stdout == stdout, args
    for args, message in [
        (["--page", "4", "--page-size", "5"], "--page: 4 is past the last page (3 of 5 rows)"),
        (["--page", "0"], "--page: 0 is not a page number (1 or more)"),
        (["--page-size", "0"], "--page-size: 0 is not between 1 and 10,000"),
        (["--page-size", "10001"], "--page-size: 10001 is not between 1 and 10,000"),
        (["--json", "--page", "2"], "--page and --page-size page the default text, not --json"),
        (["--all", "--page-size", "5"], "--page and --page-size page the default text, not --all"),
    ]:
        refused = run_ncpi("status", *args, env=cli_env)
        assert (refused.returncode, refused.stdout, refused.stderr) == (1, "", f"ncpi: {message}\n"), args


# ---------------------------------------------------------------- the summary, paging and streaming (issue 15)


def _summary_text(today, rows) -> str:
    """The summary table as `ncpi status` should print it, from (code, name, reports, open, closed,
    overdue, revisits due) rows, written out by hand rather than by render_status_summary."""
    label = max(len(f"{code}  {name}") for code, name, *_ in rows)
    heads = ["reports", "open", "closed", "overdue", "revisits due"]
    totals = [sum(r[i] for r in rows) for i in range(2, 7)]
    widths = [max(len(h), *(len(str(r[i + 2])) for r in rows), len(str(totals[i]))) for i, h in enumerate(heads)]

    def line(name, values):
        return f"{name:<{label}}  " + "  ".join(f"{v:>{w}}" for v, w in zip(values, widths))

    lines = [f"Summary ({long_date(today)}; overdue and revisits due as on the dashboard)", line("force", heads)]
    lines += [line(f"{code}  {name}", values) for code, name, *values in rows]
    lines.append(line("total", totals))
    return "\n".join(lines) + "\n"


SUMMARY_ROWS = [
    ("AVS", "Avon and Somerset Constabulary", 1, 0, 0, 0, 0),
    ("CUM", "Cumbria Constabulary", 1, 1, 1, 0, 0),
    ("NTH", "Northamptonshire Police", 1, 10, 1, 0, 0),
]


async def test_status_summary_counts_reports_open_closed_per_force_on_both_databases(sessions):
    from ncpi_workflow.app.read_models import dashboard
    from ncpi_workflow.views import status_summary

    await seed(sessions)
    today = date(2017, 6, 1)
    async with sessions() as session:
        summary = await status_summary(session, today=today)
        nth = await status_summary(session, "NTH", today=today)
        durham = await status_summary(session, "DUR", today=today)
    assert [(f["force"], f["name"], f["reports"], f["open"], f["closed"]) for f in summary] == [r[:5] for r in SUMMARY_ROWS]
    assert nth == [f for f in summary if f["force"] == "NTH"] and durham == []
    # Overdue and revisits due are the dashboard's, force by force.
    board = {f.code: f for f in (await dashboard(sessions, today=today)).forces}
    assert [(f["overdue"], f["revisits_due"]) for f in summary] == [(board[f["force"]].overdue, board[f["force"]].revisits_due)
                                                                     for f in summary]


async def test_status_page_gives_one_page_of_the_listing_rows(sessions):
    from ncpi_workflow.app.read_models import status_page
    from ncpi_workflow.errors import UserError

    await seed(sessions)
    async with sessions() as session:
        every = await status_rows(session)
    assert len(every) == 14  # AVS (no recommendations), NTH R1..R11, CUM R1, R2
    today = date(2017, 6, 1)
    pages = [await status_page(sessions, page=n, page_size=5, today=today) for n in (1, 2, 3)]
    assert [p.rows for p in pages] == [every[:5], every[5:10], every[10:]]
    assert {(p.pages, p.total_rows) for p in pages} == {(3, 14)}
    whole = await status_page(sessions, today=today)
    assert (whole.rows, whole.page, whole.pages) == (every, 1, 1)
    nth = await status_page(sessions, "NTH", page=3, page_size=5, today=today)
    assert (nth.rows, nth.pages, [f["force"] for f in nth.summary]) == (every[11:12], 3, ["NTH"])
    for page, size, message in [(4, 5, "--page: 4 is past the last page (3 of 5 rows)"), (0, 5, "--page: 0 is not a page number (1 or more)"),
                                (1, 0, "--page-size: 0 is not 1 or more")]:
        with pytest.raises(UserError) as refused:
            await status_page(sessions, page=page, page_size=size, today=today)
        assert str(refused.value) == message


async def _streamed(sessions, force_code=None, stuck=None, chunk=None) -> str:
    from ncpi_workflow.views import stream_status_json

    pieces: list[str] = []
    async with sessions() as session:
        if chunk is None:
            await stream_status_json(session, pieces.append, force_code, stuck)
        else:
            await stream_status_json(session, pieces.append, force_code, stuck, chunk=chunk)
    return "".join(pieces)


async def test_streamed_json_is_the_listing_byte_for_byte_on_both_databases(sessions):
    from ncpi_workflow.app.read_models import status_listing, stream_status_listing
    from ncpi_workflow.models import StuckWorkflow

    await seed(sessions)
    # A few hundred more rows after the fixture's, and stuck follow-ups among them.
    async with sessions.begin() as session:
        for i in range(40):
            iid = f"DUR-2018-{1 + i // 28:02d}-{1 + i % 28:02d}"
            session.add(_inspection(iid, "DUR", date(2018, 1 + i // 28, 1 + i % 28), next_action="revisit",
                                    next_action_at=_at(1 + i % 12, 1 + i % 28, i % 24, i % 60)))
            session.add_all(_recommendation(iid, f"R{j}", "immediately", "in_progress", 1, "in_progress", None, f"reminder {i} {j}",
                                            _at(1 + j, 1 + i % 28, 9, j)) for j in range(1, 9))
        session.add_all([
            StuckWorkflow(workflow_id="ncpi/NTH/2017-03-01/R3", workflow_type="RecommendationFollowUp", attempts=3,
                          error="boom\n  at line 1", since=_at(1, 1, 0, 0), checked_at=_at(1, 1, 0, 0)),
            StuckWorkflow(workflow_id="ncpi/DUR/2018-01-05", workflow_type="InspectionFollowUp", attempts=3,
                          error="inspection stuck", since=_at(1, 1, 0, 0), checked_at=_at(1, 1, 0, 0)),
        ])
    listing = await status_listing(sessions)
    assert len(listing) == 13 + 40 * 8
    assert sum("stuck" in r for r in listing) == 1 and sum("inspection_stuck" in r for r in listing) == 8
    stuck = {"ncpi/NTH/2017-03-01/R3": "boom\n  at line 1", "ncpi/DUR/2018-01-05": "inspection stuck"}
    expected = json.dumps(listing, indent=2)
    # Chunk boundaries everywhere: inside an inspection, on the inspection without recommendations.
    for chunk in (1, 2, 3, 7, 50, 1000, None):
        assert await _streamed(sessions, stuck=stuck, chunk=chunk) == expected, chunk
    pieces: list[str] = []
    await stream_status_listing(sessions, pieces.append)
    assert "".join(pieces) == expected and len(pieces) > 1
    assert await _streamed(sessions, "NTH", stuck, chunk=4) == json.dumps([r for r in listing if r["force"] == "NTH"], indent=2)
    assert await _streamed(sessions, "AVS", chunk=1) == "[]" == json.dumps([], indent=2)


async def test_streamed_json_memory_does_not_grow_with_the_count(sessions, migrated_database_url):
    import hashlib
    import tracemalloc

    from bench.listing import _copy_into_postgresql, _insert_into_sqlite, _rows

    async with sessions.begin() as session:
        await load_reference_forces(session, FORCES)
    insert = _copy_into_postgresql if migrated_database_url.startswith("postgresql") else _insert_into_sqlite
    codes = sorted(FORCES)

    async def peak_of_streaming(recommendations: int) -> tuple[int, int]:
        async with sessions.begin() as session:
            connection = await session.connection()
            await connection.execute(Recommendation.__table__.delete())
            await connection.execute(Inspection.__table__.delete())
        inspections, recs = _rows(recommendations, codes)
        await insert(sessions, [("inspections", inspections), ("recommendations", recs)])
        del inspections, recs
        digest, size = hashlib.sha256(), 0

        def sink(piece: str) -> None:  # written and forgotten, as stdout does
            nonlocal size
            digest.update(piece.encode())
            size += len(piece)

        async with sessions() as session:
            await session.connection()
            tracemalloc.start()
            try:
                from ncpi_workflow.views import stream_status_json

                await stream_status_json(session, sink, chunk=500)
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
        return peak, size

    small_peak, small_size = await peak_of_streaming(2_000)
    large_peak, large_size = await peak_of_streaming(20_000)
    assert large_size > 9 * small_size  # ten times the output ...
    # ... in about the same memory (the whole listing held at once would need ten times as much).
    assert large_peak < 2 * small_peak, (small_peak, large_peak)


def test_the_benchmark_table_has_the_streamed_and_paged_listing_rows():
    from bench import run as bench_run

    figures = {"recommendations": 100000, "status_query_before_ms": 3413.0, "status_query_ms": 472.0, "baseline_ms": 178.0,
               "ratio": 2.7, "cli_status_json_ms": 3007.0, "cli_startup_ms": 310.0,
               "streamed_json_ms": 1200.0, "streamed_json_peak_mib": 8.0, "baseline_json_ms": 1900.0, "baseline_json_peak_mib": 310.5,
               "json_ratio": 1.583, "default_text_ms": 460.0, "baseline_text_ms": 430.0, "text_ratio": 0.935}
    table = bench_run.table({"listing": {"sqlite": figures}})
    rows = [line for line in table.splitlines() if line.startswith("| listing, SQLite")]
    assert len(rows) == 4 and all(row.count("|") == 5 for row in rows), table
    assert rows[2].endswith("| 1,200.0 ms, peak 8.0 MiB | the same columns by bare SQL, all rows at once, the same JSON encoder: "
                            "1,900.0 ms, peak 310.5 MiB | 1.583 |")
    assert rows[3].endswith("| 460.0 ms | the same summary query and the page's rows by bare SQL: 430.0 ms | 0.935 |")
