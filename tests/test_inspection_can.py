"""A re-opening that comes in while the inspection settles its deliveries before continuing-as-new
(issue 11): its signal handler finishes before the new run starts, and the SDK has no
`UnfinishedSignalHandlersWarning` to give.

The sequence, on PostgreSQL, with the real worker, aiosmtpd capture and time-skipping server:
both recommendations are decided "achieved" with the relay slow (12 s for the outcome notice), so the
inspection closes with its revisit-outcome notice still being delivered. R1 is re-opened: a new
cycle, so the inspection continues-as-new, once its deliveries settle (up to a minute). While it
waits, R2 is re-opened, and its handler's projection is slow for real (a trigger, `pg_sleep`): the
outcome notice is delivered while the handler still runs. Before the fix the workflow
continued-as-new there, leaving the handler unfinished (the warning, and the handler's projection
never written).
"""

from __future__ import annotations

import asyncio
import warnings
from datetime import date

from sqlalchemy import text
from temporalio.workflow import UnfinishedSignalHandlersWarning

from ncpi_workflow import db
from ncpi_workflow.lifecycle import ReasonRequest, RecommendationView
from ncpi_workflow.models import Inspection
from tests.conftest import _create_pg_database
from tests.lifecycle_support import harness, write_report
from workflows.inspection import HANDLERS_BEFORE_CAN_PATCH
from tests.test_lifecycle_timeskipping import _closed, at, decide, eventually, insp_view, revisit_and_evidence, start, update

RELAY_SECONDS = 12.0
"""How long the relay takes over the revisit-outcome notice (the others go at once)."""
HANDLER_PROJECTION_SECONDS = 20
"""How long one projection of the inspection takes once R1's handler is done (under the 30 s timeout)."""


async def _slow_inspection_projections(url: str) -> None:
    engine = db.create_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.execute(text(
                f"CREATE FUNCTION slow_projection() RETURNS trigger AS $$ BEGIN PERFORM pg_sleep({HANDLER_PROJECTION_SECONDS}); "
                "RETURN NEW; END $$ LANGUAGE plpgsql"))
            await connection.execute(text(
                "CREATE TRIGGER slow_projection BEFORE UPDATE ON inspections FOR EACH ROW EXECUTE FUNCTION slow_projection()"))
    finally:
        await engine.dispose()


async def _cycle_in_records(h, inspection_id: str, cycle: int):
    async with h.sessions() as session:
        row = await session.get(Inspection, inspection_id, populate_existing=True)
        return row if row.cycle == cycle else None


async def test_a_reopening_during_the_settling_before_continue_as_new_finishes_first(time_skipping_env, postgres_cluster, tmp_path):
    url = await _create_pg_database(postgres_cluster, migrated=True)
    report = write_report(tmp_path, "NOR", date(2017, 2, 14), [("R1", "within_three_months"), ("R2", "within_three_months")])
    inspection_id, r1, r2 = "NOR-2017-02-14", "NOR-2017-02-14-R1", "NOR-2017-02-14-R2"
    async with harness(time_skipping_env, tmp_path, database_url=url) as h:
        real_handle, slow = h.smtp.handle_DATA, asyncio.Event()

        async def slow_relay(server, session, envelope):
            if slow.is_set() and b"/revisit_outcome" in envelope.content:
                await asyncio.sleep(RELAY_SECONDS)
            return await real_handle(server, session, envelope)

        h.smtp.handle_DATA = slow_relay  # before the first connection: aiosmtpd binds its hooks per connection
        await start(h, report, date(2017, 2, 14))
        await revisit_and_evidence(h, inspection_id, ["R1", "R2"], at(2017, 5, 16, 12))
        await decide(h, r1, "achieved")
        slow.set()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            await decide(h, r2, "achieved")  # the inspection closes; its outcome notice takes 8 s or more
            await eventually(lambda: _closed(h, inspection_id))
            closed_run = (await insp_view(h, inspection_id)).state.run
            reason = ReasonRequest(reason="A serious case review found the practice lapsed.", by="hmi.lead")
            await update(h.recommendation(r1), "reopen", reason, result_type=RecommendationView)
            await eventually(lambda: _cycle_in_records(h, inspection_id, 2))  # R1's handler done; now settling
            await _slow_inspection_projections(url)
            await update(h.recommendation(r2), "reopen", reason, result_type=RecommendationView)
            view = await eventually(lambda: _next_run_with(h, inspection_id, closed_run, {r1, r2}), timeout=60)
            await asyncio.sleep(1.0)
        unfinished = [w for w in caught if issubclass(w.category, UnfinishedSignalHandlersWarning)]
        assert unfinished == [], [str(w.message) for w in unfinished]
        assert view.state.cycle == 2 and view.state.phase == "following_up"
        # The case arose: R2's handler was still running when the deliveries settled, and the closed
        # run waited for it (its patch marker) before continuing as new.
        first = [e async for e in h.inspection(inspection_id).fetch_history_events()][0]
        previous = first.workflow_execution_started_event_attributes.continued_execution_run_id
        events = [e async for e in h.client.get_workflow_handle(h.inspection(inspection_id).id, run_id=previous).fetch_history_events()]
        assert any(e.HasField("marker_recorded_event_attributes") and HANDLERS_BEFORE_CAN_PATCH in str(e) for e in events)


async def _next_run_with(h, inspection_id: str, closed_run: int, open_recommendations: set[str]):
    """The inspection's run after continue-as-new, with both re-opened recommendations open."""
    view = await insp_view(h, inspection_id)
    if view.state.run <= closed_run:
        return None
    return view if set(view.state.open_recommendations) == open_recommendations else None
