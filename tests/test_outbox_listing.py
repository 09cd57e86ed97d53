"""`ncpi outbox`: the kind column fits every kind (the longest, `reply_acknowledgement`, included),
so the status, recipients and subject columns line up on every line."""

from __future__ import annotations

import asyncio
import re
from datetime import datetime, timezone

from ncpi_workflow import db
from ncpi_workflow.emails import KINDS
from ncpi_workflow.models import Notification
from ncpi_workflow.views import render_outbox
from tests.conftest import run_ncpi

UTC = timezone.utc
LINE = re.compile(r"^ *(\d+)  (.{22}) (\S+) +(pending|sent|failed) +(\S+)  (.*)$")


def _record(i: int, kind: str, status: str = "pending") -> dict:
    return {"id": i, "scheduled_for": datetime(2017, 5, 12, 14, 5, tzinfo=UTC).isoformat(), "kind": kind,
            "status": status, "inspection_id": None, "recommendation_id": None, "to": [f"x{i}@force.example"],
            "subject": f"Subject {i}", "attempts": 0, "sent_at": None, "last_error": None}


def _status_column(line: str, status: str) -> int:
    return line.index(f" {status} ") + 1


def test_every_kind_fits_its_column_and_the_columns_line_up():
    assert max(KINDS, key=len) == "reply_acknowledgement"  # the longest today: the case this guards
    lines = render_outbox([_record(i, kind) for i, kind in enumerate(KINDS, start=1)])
    assert len(lines) == len(KINDS)
    columns = {_status_column(line, "pending") for line in lines}
    assert len(columns) == 1, lines  # one status column, whatever the kind
    for line, kind in zip(lines, KINDS):
        match = LINE.match(line)
        assert match and match.group(3) == kind, line  # the kind whole, never run into the status
    # A kind longer than any known (an older row, a future kind) widens the column rather than break it.
    longer = render_outbox([_record(1, "reminder"), _record(2, "a_kind_longer_than_any_known_kind", "sent")])
    assert _status_column(longer[0], "pending") == _status_column(longer[1], "sent")


def test_ncpi_outbox_lists_an_acknowledgement_in_line_with_the_notices(cli_env):
    assert run_ncpi("db", "upgrade", env=cli_env).returncode == 0

    async def seed():
        async with db.open_database(cli_env["NCPI_DATABASE_URL"]) as sessions:
            async with sessions.begin() as session:
                for i, kind in enumerate(("reminder", "reply_acknowledgement", "due_today"), start=1):
                    session.add(Notification(
                        idempotency_key=f"test/{i}", kind=kind, recipients={"to": [f"x{i}@force.example"], "roles": []},
                        subject=f"Subject {i}", status="pending", attempts=0,
                        scheduled_for=datetime(2017, 5, 12, 13, i, tzinfo=UTC),
                    ))

    asyncio.run(seed())
    result = run_ncpi("outbox", env=cli_env)
    assert (result.returncode, result.stderr) == (0, "")
    lines = result.stdout.splitlines()
    assert len(lines) == 3 and any("reply_acknowledgement pending" in line for line in lines), lines
    assert len({_status_column(line, "pending") for line in lines}) == 1, lines
    assert len({re.search(r" x\d@force\.example", line).start() for line in lines}) == 1, lines
