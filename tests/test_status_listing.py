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
        (["status"], EXPECTED_TEXT),
        (["status", "--json"], expected_json),
        (["status", "--force", "nth"], nth_text),
        (["status", "--force", "NTH", "--json"], json.dumps(EXPECTED_RECORDS[:11], indent=2) + "\n"),
        (["status", "--force", "AVS"], EXPECTED_TEXT.splitlines()[0] + "\n"),
        (["status", "--force", "AVS", "--json"], "[]\n"),
        (["status", "--force", "DUR"], "no published inspections for DUR\n"),
        (["status", "--force", "DUR", "--json"], "[]\n"),
    ]:
        result = run_ncpi(*args, env=cli_env)
        assert (result.returncode, result.stderr) == (0, ""), args
        assert result.stdout == stdout, args
    unknown = run_ncpi("status", "--force", "XXX", env=cli_env)
    assert unknown.returncode != 0 and unknown.stderr == "ncpi: unknown force code 'XXX'; `ncpi forces` lists the 43 codes\n"
