"""Replay saved histories against today's workflow code: a change that would break workflows
already running (a non-deterministic change not guarded by workflow.patched()) fails here."""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer, UnsandboxedWorkflowRunner

from ncpi_workflow.temporal import DATA_CONVERTER
from worker import WORKFLOW_RUNNER, WORKFLOWS

# One folder per shape of the workflows that ever ran: v1 (records as activities), v2 (records as
# local activities, behind workflow.patched("records-as-local-activities")), v3 (an inspection's
# recommendations started together, behind workflow.patched("recommendations-started-together")), v4
# (one action at a time, the register trail, the calendar kept ahead, the revisit limit told, a
# re-opened recommendation waiting for its deadline: each behind its own workflow.patched()), v5 (each
# step's clock from history and a timer before every message, behind "clock-from-history"; the
# inspection projected when a recommendation settles, behind "inspection-projected-on-settlement"), v6
# (the same, and adopted-*: a follow-up adopted part-way, catching up with imported actions across
# continue-as-new, then back-dated actions on every Update).
HISTORIES = sorted((Path(__file__).parent / "histories").glob("v*/*.json"))
VERSIONS = sorted({p.parent.name for p in HISTORIES})


@pytest.mark.parametrize("version", VERSIONS)
def test_histories_cover_both_workflows_and_continue_as_new(version):
    names = [p.stem for p in HISTORIES if p.parent.name == version]
    assert any(n.startswith("inspection-run2") for n in names), "the inspection's second cycle (continue-as-new)"
    assert any(n.startswith("recommendation-") and n.endswith("run2") for n in names)


def test_both_shapes_are_kept():
    assert {"v1", "v2", "v3", "v4", "v5", "v6"} <= set(VERSIONS)


def test_v6_has_an_adopted_follow_up_across_continue_as_new():
    names = {p.stem for p in HISTORIES if p.parent.name == "v6"}
    assert {"adopted-inspection-run1", "adopted-inspection-run2", "adopted-recommendation-R2-run2"} <= names
    import base64
    import json

    events = json.loads((Path(__file__).parent / "histories" / "v6" / "adopted-inspection-run1.json").read_text())["events"]
    payload = events[0]["workflowExecutionStartedEventAttributes"]["input"]["payloads"][0]["data"]
    started = json.loads(base64.b64decode(payload))
    assert started["adopted_at"] and started["imported"]["revisits"] and started["imported"]["deliveries"]


def _patches(path) -> set[str]:
    import base64
    import json

    found = set()
    for event in json.loads(path.read_text())["events"]:
        marker = event.get("markerRecordedEventAttributes")
        if marker and marker["markerName"] == "core_patch":
            found.add(json.loads(base64.b64decode(marker["details"]["patch-data"]["payloads"][0]["data"]))["id"])
    return found


def test_the_clock_from_history_is_in_v5_only():
    for path in HISTORIES:
        if path.stem.endswith("run1"):
            assert ("clock-from-history" in _patches(path)) == (path.parent.name >= "v5"), path


@pytest.mark.parametrize("path", HISTORIES, ids=lambda p: f"{p.parent.name}/{p.stem}")
async def test_saved_history_replays(path):
    history = WorkflowHistory.from_json(path.stem, path.read_text())
    replayer = Replayer(workflows=WORKFLOWS, workflow_runner=WORKFLOW_RUNNER, data_converter=DATA_CONVERTER)
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None, f"{path.name}: {result.replay_failure}"


async def test_a_breaking_change_is_caught(monkeypatch):
    """The guard works: add a command to what the recommendation workflow does and replay must fail.
    (Projecting twice no longer does: since v8 a projection written with its event and unchanged
    search attributes add no command.)"""
    from datetime import timedelta

    from temporalio import workflow

    from workflows import recommendation

    original = recommendation.RecommendationWorkflow._project

    async def project_then_wait(self):
        await original(self)
        await workflow.sleep(timedelta(milliseconds=1))  # a timer the recorded history does not have

    monkeypatch.setattr(recommendation.RecommendationWorkflow, "_project", project_then_wait)
    path = next(p for p in HISTORIES if p.parent.name == VERSIONS[-1] and p.stem == "recommendation-R1-run1")
    history = WorkflowHistory.from_json(path.stem, path.read_text())
    # Unsandboxed, so that the patched class is the one replayed (the sandbox re-imports workflows/).
    replayer = Replayer(workflows=WORKFLOWS, workflow_runner=UnsandboxedWorkflowRunner(), data_converter=DATA_CONVERTER)
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is not None
