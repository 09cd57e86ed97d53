"""The application layer (ncpi_workflow/app) and the web package: nothing imports upwards, and
the use cases give one-line reasons."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from ncpi_workflow.app import inspector_actions, read_models, temporal_calls
from ncpi_workflow.errors import UserError
from tests.conftest import ROOT
from tests.web.conftest import closed_port, web_settings

LAYERED = [ROOT / "ncpi_workflow" / "app", ROOT / "ncpi_workflow" / "web", ROOT / "ncpi_workflow" / "users.py",
           ROOT / "ncpi_workflow" / "cli_web.py"]
UPWARDS = ("worker", "workflows", "activities", "ncpi_workflow.cli", "ncpi_workflow.devstack")


def imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_nothing_in_the_app_layer_or_the_web_imports_upwards():
    files = [p for base in LAYERED for p in ([base] if base.is_file() else sorted(base.rglob("*.py")))]
    assert len(files) > 15
    offenders = {
        str(p.relative_to(ROOT)): sorted(n for n in imported(p) if any(n == u or n.startswith(u + ".") for u in UPWARDS))
        for p in files
    }
    assert {p: names for p, names in offenders.items() if names} == {}


async def test_unreachable_temporal_is_one_line(tmp_path):
    settings = web_settings(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}", tmp_path, temporal_address=f"127.0.0.1:{closed_port()}")
    with pytest.raises(UserError) as caught:
        await temporal_calls.connect(settings)
    message = str(caught.value)
    assert message.startswith(f"cannot reach Temporal at {settings.temporal_address} (NCPI_TEMPORAL_ADDRESS, namespace default)")
    assert "\n" not in message


@pytest.mark.parametrize(
    "call,reason",
    [
        (lambda: inspector_actions.trigger_revisit(None, None, "cumbria", "x"), "'cumbria' is not an inspection ID such as CUM-2017-01-26"),
        (lambda: inspector_actions.record_decision(None, None, "CUM-2017-01-26", "achieved", "r", "x"),
         "'CUM-2017-01-26' is not a recommendation ID such as CUM-2017-01-26-R1"),
        (lambda: inspector_actions.revise_deadline(None, None, "CUM-2017-01-26", "action_plan", "31/12/2026", "r", "x"),
         "--to: '31/12/2026' is not a date such as 2026-12-31"),
        (lambda: read_models.show(None, None, "nonsense"),
         "'nonsense' is not an inspection ID such as CUM-2017-01-26 or a recommendation ID such as CUM-2017-01-26-R1"),
    ],
)
async def test_bad_identifiers_are_refused_before_temporal(call, reason):
    with pytest.raises(UserError) as caught:
        await call()
    assert str(caught.value) == reason


async def test_dashboard_refuses_unknown_sort_and_phase(sqlite_sessions):
    from datetime import date

    _, sessions = sqlite_sessions
    with pytest.raises(UserError, match="sort: 'x' is not one of"):
        await read_models.dashboard(sessions, today=date(2026, 1, 5), sort="x")
    with pytest.raises(UserError, match="phase: 'closed' is not one of"):
        await read_models.dashboard(sessions, today=date(2026, 1, 5), phase="closed")
    board = await read_models.dashboard(sessions, today=date(2026, 1, 5))
    assert len(board.forces) == 0  # no reference data loaded in this database: nothing invented


def test_the_resend_workflow_id_is_the_workflows_own():
    """app/outbox.py cannot import workflows.delivery (no upward imports): the two must agree."""
    from ncpi_workflow.app.outbox import RESEND_WORKFLOW, resend_workflow_id
    from workflows.delivery import DeliveryWorkflow
    from workflows.delivery import resend_workflow_id as workflows_own

    assert all(resend_workflow_id(n) == workflows_own(n) for n in (1, 42, 2**31 - 1))
    assert DeliveryWorkflow.__temporal_workflow_definition.name == RESEND_WORKFLOW


def test_the_domain_package_never_imports_the_top_level_worker_or_workflows():
    """Only ncpi_workflow/service/ builds the worker (it registers workflows/ and activities/);
    nothing else in the package reaches up to the top-level `worker`, `workflows` or `activities`."""
    files = [p for p in sorted((ROOT / "ncpi_workflow").rglob("*.py")) if "service" not in p.relative_to(ROOT).parts]
    upwards = ("worker", "workflows", "activities")
    offenders = {
        str(p.relative_to(ROOT)): sorted(n for n in imported(p) if any(n == u or n.startswith(u + ".") for u in upwards))
        for p in files
    }
    assert {p: names for p, names in offenders.items() if names} == {}
