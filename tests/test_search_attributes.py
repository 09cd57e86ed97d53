"""Search attributes are upserted only when they change (patch `search-attributes-when-changed`): an event
whose projection leaves ForceCode, Programme, Phase and NextDeadline as they are adds no
UpsertWorkflowSearchAttributes to the history (before the patch, every projection upserted them all); one
that changes them upserts those that changed, and the server's attributes are the workflow's."""

from __future__ import annotations

from datetime import date

from ncpi_workflow.lifecycle import ProgressRequest, RecommendationView
from ncpi_workflow.temporal import FORCE_CODE, NEXT_DEADLINE, PHASE, PROGRAMME
from tests.lifecycle_support import harness, skip_to, write_report
from tests.test_lifecycle_timeskipping import at, start, update


def _upserts(events) -> list[set[str]]:
    """The names each UpsertWorkflowSearchAttributes event of a history sets (or unsets), but the SDK's own
    (TemporalChangeVersion, upserted with a patch the first time a run uses it)."""
    names = [set(e.upsert_workflow_search_attributes_event_attributes.search_attributes.indexed_fields) - {"TemporalChangeVersion"}
             for e in events if e.HasField("upsert_workflow_search_attributes_event_attributes")]
    return [n for n in names if n]


def _patches(events) -> set[str]:
    import json

    found = set()
    for e in events:
        if e.HasField("marker_recorded_event_attributes") and e.marker_recorded_event_attributes.marker_name == "core_patch":
            found.add(json.loads(e.marker_recorded_event_attributes.details["patch-data"].payloads[0].data)["id"])
    return found


async def test_an_event_that_changes_no_search_attribute_upserts_none(time_skipping_env, tmp_path):
    report = write_report(tmp_path, "DUR", date(2017, 2, 7), [("R1", "within_three_months")])
    rec_id = "DUR-2017-02-07-R1"
    async with harness(time_skipping_env, tmp_path) as h:
        await start(h, report, date(2017, 2, 7))
        await skip_to(h, at(2017, 2, 20, 12))
        rec = h.recommendation(rec_id)
        view = await update(rec, "submit_progress", ProgressRequest("in_progress", "Started.", "liaison"), RecommendationView)
        assert view.state.phase == "in_progress"
        before = _upserts((await rec.fetch_history()).events)
        # The phase changed (open -> in progress): that one attribute was upserted, nothing else with it.
        assert before and before[-1] == {"Phase"}, before

        # Two more progress reports: each an event with a projection, and nothing a search attribute shows changes.
        for text in ("Halfway.", "Nearly there."):
            view = await update(rec, "submit_progress", ProgressRequest("in_progress", text, "liaison"), RecommendationView)
            assert view.state.phase == "in_progress"
        events = (await rec.fetch_history()).events
        assert _upserts(events) == before  # (before the patch: one upsert of all four for each)
        assert "search-attributes-when-changed" in _patches(events)

        # What the server holds is what the workflow set.
        described = (await rec.describe()).typed_search_attributes
        assert described.get(FORCE_CODE) == "DUR" and described.get(PROGRAMME) == "NCPI"
        assert described.get(PHASE) == "in_progress" and described.get(NEXT_DEADLINE) is not None
