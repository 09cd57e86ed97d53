"""Update latency (issue 15): the shape of an Update's work. Its workflow task runs one clock read and one
`record_event` and nothing after it (the main loop's next step is taken at the Update's own instant,
patch `step-at-the-action-instant`); `record_event` renders its emails once, before its transaction, from
the rows as the event leaves them, and its transaction only writes (counted with a SQLAlchemy engine event)."""

from __future__ import annotations

from datetime import date

from ncpi_workflow.lifecycle import ProgressRequest, RecommendationView
from tests.lifecycle_support import harness, skip_to, write_report
from tests.test_event_transaction import _events, _local_activity
from tests.test_lifecycle_timeskipping import at, decide, revisit_and_evidence, start, update


def _after_each_update(events, name: str) -> list[tuple[list[str], list[str]]]:
    """For each completed Update `name`: the local activities between its acceptance and its completion,
    and those written after its completion in the same workflow task (before the next task is scheduled)."""
    accepted = {a.protocol_instance_id: (e.event_id, a.accepted_request.input.name)
                for e in events if e.HasField("workflow_execution_update_accepted_event_attributes")
                for a in [e.workflow_execution_update_accepted_event_attributes]}
    out = []
    for index, e in enumerate(events):
        if not e.HasField("workflow_execution_update_completed_event_attributes"):
            continue
        start_id, started = accepted.get(e.workflow_execution_update_completed_event_attributes.meta.update_id, (None, None))
        if started != name:
            continue
        during = [t for x in events if start_id < x.event_id < e.event_id and (t := _local_activity(x))]
        after = []
        for x in events[index + 1:]:
            if x.HasField("workflow_task_scheduled_event_attributes"):
                break
            if t := _local_activity(x):
                after.append(t)
        out.append((during, after))
    return out


async def test_an_update_reads_the_clock_once_and_its_task_runs_nothing_after_it(time_skipping_env, tmp_path, database_url):
    """Before the patch, the main loop woken by the Update read the clock again (a `read_clock` local activity)
    in the task that completes the Update, which waited for it."""
    report = write_report(tmp_path, "DUR", date(2017, 2, 7), [("R1", "within_three_months")])
    rec_id, inspection_id = "DUR-2017-02-07-R1", "DUR-2017-02-07"
    async with harness(time_skipping_env, tmp_path, database_url=database_url) as h:
        await start(h, report, date(2017, 2, 7))
        await skip_to(h, at(2017, 2, 20, 12))
        rec = h.recommendation(rec_id)
        view = await update(rec, "submit_progress", ProgressRequest("in_progress", "Started.", "liaison"), RecommendationView)
        assert view.state.phase == "in_progress"
        await revisit_and_evidence(h, inspection_id, ["R1"], at(2017, 5, 15, 12))
        await decide(h, rec_id, "achieved", "Done.")
        events = await _events(rec)
        for name in ("submit_progress", "submit_evidence", "record_decision"):
            steps = _after_each_update(events, name)
            assert steps, name
            for during, after in steps:
                assert during == ["read_clock", "record_event"], (name, during)
                assert after == [], (name, after)
        # The step after the Update was still taken (its reminders follow the new state): the patch is there.
        assert any(b"step-at-the-action-instant" in e.SerializeToString() for e in events)
