"""The `web` service of docker-compose.yml (checked by the real Compose v2 parser, as tests/test_compose.py does)."""

from __future__ import annotations

import json
import os
import subprocess

from ncpi_workflow.settings import Settings
from tests.conftest import ROOT
from tests.test_compose import _CLEARED, _CLEARED_PREFIXES, COMPOSE_FILE, compose_binary


def resolved(tmp_path) -> dict:
    env_file = tmp_path / "empty.env"
    env_file.write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith(_CLEARED_PREFIXES) and k not in _CLEARED}
    env["DOCKER_CONFIG"] = str(tmp_path / "docker-config")
    result = subprocess.run([str(compose_binary()), "--project-directory", str(ROOT), "--env-file", str(env_file),
                             "-f", str(COMPOSE_FILE), "config", "--format", "json"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_web_service(tmp_path, monkeypatch):
    model = resolved(tmp_path)
    web, worker = model["services"]["web"], model["services"]["worker"]
    assert web["command"] == ["web"] and web["image"] == worker["image"]
    assert {k: v for k, v in web["environment"].items() if not k.startswith("NCPI_WEB_")} \
        == worker["environment"], "the web service shares the workers' settings (with the public address and the key)"
    assert worker["environment"]["NCPI_PUBLIC_URL"] == "http://127.0.0.1:8000" and "NCPI_SECRET_KEY" in worker["environment"]
    assert web["environment"]["NCPI_WEB_HOST"] == "0.0.0.0" and web["environment"]["NCPI_WEB_PORT"] == "8000"
    assert any(p["target"] == 8000 and p["host_ip"] == "127.0.0.1" for p in web["ports"])
    assert "/healthz" in " ".join(web["healthcheck"]["test"])
    assert web["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    # Its environment is one the settings accept (the empty secret key means "generate one").
    for key in [k for k in os.environ if k.startswith("NCPI_")]:
        monkeypatch.delenv(key)
    for key, value in web["environment"].items():
        if value is not None:
            monkeypatch.setenv(key, value)
    monkeypatch.setenv("NCPI_SETTINGS_FILE", str(tmp_path / "absent.toml"))
    settings = Settings()
    assert settings.web_port == 8000 and settings.secret_key is None and settings.web_url == "http://127.0.0.1:8000"
