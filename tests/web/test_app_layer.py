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
UPWARDS = ("worker", "workflows", "activities", "ncpi_workflow.cli", "ncpi_workflow.devstack", "ncpi_workflow.service")
APP_UPWARDS = UPWARDS + ("ncpi_workflow.web", "ncpi_workflow.cli_web")
"""The application layer serves every front end: it imports none of them."""


def _module_of(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path, source: str | None = None) -> set[str]:
    """Every module a file imports, wherever the import stands (in a function too): `import a.b`,
    `from a import b` (both `a` and `a.b`, since b may be a module), relative imports resolved
    against the file's package, and `importlib.import_module("a.b")` / `__import__("a")` with a
    literal name."""
    package = _module_of(path)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(source if source is not None else path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)] if package else []
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module:
                names.add(module)
            names.update(f"{module}.{alias.name}" if module else alias.name for alias in node.names if alias.name != "*")
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            called = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
            if called in ("import_module", "__import__"):
                names.add(node.args[0].value)
    return names


def _offenders(files: list[Path], upwards: tuple[str, ...]) -> dict[str, list[str]]:
    found = {
        str(p.relative_to(ROOT)): sorted(n for n in imported(p) if any(n == u or n.startswith(u + ".") for u in upwards))
        for p in files
    }
    return {p: names for p, names in found.items() if names}


def test_the_import_guard_sees_every_form_of_import():
    """The guard below is only as good as `imported`: each form of an upward import is seen."""
    path = ROOT / "ncpi_workflow" / "app" / "example.py"
    source = """
import worker
from ncpi_workflow import cli
from .. import web
from ..web.routes import outbox
from . import read_models
import importlib

def later():
    from workflows.delivery import DeliveryWorkflow
    importlib.import_module("activities.records")
    __import__("ncpi_workflow.devstack")
"""
    names = imported(path, source)
    assert {"worker", "ncpi_workflow.cli", "ncpi_workflow.web", "ncpi_workflow.web.routes.outbox",
            "ncpi_workflow.app.read_models", "workflows.delivery", "activities.records", "ncpi_workflow.devstack"} <= names


def test_nothing_in_the_app_layer_or_the_web_imports_upwards():
    files = [p for base in LAYERED for p in ([base] if base.is_file() else sorted(base.rglob("*.py")))]
    assert len(files) > 15
    assert _offenders(files, UPWARDS) == {}


def test_the_application_layer_imports_no_front_end():
    files = sorted((ROOT / "ncpi_workflow" / "app").rglob("*.py"))
    assert len(files) >= 7
    assert _offenders(files, APP_UPWARDS) == {}


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
    """Only the worker service (ncpi_workflow/service/worker.py) registers workflows/ and activities/;
    nothing else in the package reaches up to the top-level `worker`, `workflows` or `activities`."""
    registers = ROOT / "ncpi_workflow" / "service" / "worker.py"
    assert {"workflows.inspection", "activities.records"} <= imported(registers)  # the exemption is still needed
    files = [p for p in sorted((ROOT / "ncpi_workflow").rglob("*.py")) if p != registers]
    assert _offenders(files, ("worker", "workflows", "activities")) == {}


async def test_a_resend_is_committed_before_its_delivery_starts(time_skipping_env, tmp_path):
    """The delivery workflow's first activity reads the notification row: when the start leaves, the
    row must be committed as pending (a delivery that finds it still failed sends nothing), and no
    database transaction is held open across the StartWorkflow call. Seen from another connection."""
    from datetime import date

    from temporalio.client import Client

    from ncpi_workflow.app import outbox
    from ncpi_workflow.forces import load_forces
    from ncpi_workflow.models import AuditEvent, Notification
    from sqlalchemy import select
    from tests.lifecycle_support import harness, write_report
    from tests.test_lifecycle_timeskipping import eventually, start
    from tests.test_publishing import _no_transaction_open, _SeeAtStart

    liaison = load_forces(ROOT / "config" / "forces.yaml")["KEN"].contacts.liaison_officer.email
    report = write_report(tmp_path, "KEN", date(2017, 3, 14), [("R1", "within_three_months")])
    async with harness(time_skipping_env, tmp_path) as h:
        h.smtp.refuse[liaison] = "550 5.1.1 mailbox unavailable"
        await start(h, report, date(2017, 3, 14))

        async def failed_notice():
            rows = await h.notifications()
            alerted = any(r.kind == "delivery_failed" and r.status == "sent" for r in rows)
            return next((r for r in rows if r.kind == "published" and r.status == "failed"), None) if alerted else None

        failed = await eventually(failed_notice)
        h.smtp.refuse.clear()  # the address is fixed
        seen = []

        async def look(start_input) -> None:
            async with h.sessions() as session:
                row = await session.get(Notification, failed.id, populate_existing=True)
                audited = await session.scalar(select(AuditEvent.id).where(AuditEvent.action == "notification.resend"))
            seen.append((start_input.workflow, row.status, audited is not None,
                         await _no_transaction_open(h.settings.database_url)))

        client = Client(**{**h.client.config(), "interceptors": [_SeeAtStart(look)]})
        assert liaison in await outbox.resend(h.settings, client, h.sessions, failed.id, by="ops.desk")
        assert seen == [("NotificationDelivery", "pending", True, True)]

        async def sent():
            async with h.sessions() as session:
                return (await session.get(Notification, failed.id, populate_existing=True)).status == "sent"

        await eventually(sent)


TEMPORAL_CALLS = {"start_workflow", "execute_update", "start_update", "query", "signal", "get_workflow_handle",
                  "list_workflows", "terminate", "cancel"}


def _calls_and_imports(source: str) -> tuple[set[str], set[str]]:
    tree = ast.parse(source)
    calls = {n.func.attr for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)}
    return calls & TEMPORAL_CALLS, imported(ROOT / "ncpi_workflow" / "cli.py", source)


def test_the_cli_is_an_adapter_it_makes_no_temporal_call_and_keeps_no_file_of_its_own():
    """Every Query, Update, signal and workflow start of `ncpi` goes through ncpi_workflow/app (one
    copy of each business step, shared with the web); the CLI parses, calls, prints."""
    calls, names = _calls_and_imports((ROOT / "ncpi_workflow" / "cli.py").read_text())
    assert calls == set()
    assert {n for n in names if n.split(".")[0] == "temporalio" or n.startswith(("ncpi_workflow.evidence_files",
            "ncpi_workflow.uploads", "ncpi_workflow.publishing"))} == set()
    # ... and the check would see one:
    calls, names = _calls_and_imports("from ncpi_workflow.evidence_files import keep_file\n"
                                      "async def f(client):\n    await client.get_workflow_handle('x').signal('s')\n")
    assert calls == {"get_workflow_handle", "signal"} and "ncpi_workflow.evidence_files.keep_file" in names
