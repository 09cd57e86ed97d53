"""`make run` (`ncpi dev`) as a newcomer runs it: everything up on embedded defaults, mail arriving,
Ctrl-C stopping it all, and a second run resuming instead of publishing again."""

from __future__ import annotations

import email
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_ncpi
from tests.postgres import free_port


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NCPI_")}
    env.update(
        NCPI_DATA_DIR=str(tmp_path / "data"),
        NCPI_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'ncpi.db'}",
        NCPI_TEMPORAL_ADDRESS=f"127.0.0.1:{free_port()}",
        NCPI_SMTP_PORT=str(free_port()),
        NCPI_DEV_UI_PORT=str(free_port()),
        NCPI_WEB_PORT=str(free_port()),
        NCPI_DEV_TIME_SCALE="200000",  # the first reminder (14 days in) after about 6 seconds
        NCPI_SETTINGS_FILE=str(tmp_path / "none.toml"),
        NCPI_WORKER_ALIVE_FILE=str(tmp_path / "worker.alive"),  # not the machine-wide default in /tmp
    )
    return env


def _start(env) -> tuple[subprocess.Popen, list[str]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "ncpi_workflow.cli", "dev"], cwd=ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    lines: list[str] = []
    deadline = time.monotonic() + 90
    for line in process.stdout:
        lines.append(line.rstrip("\n"))
        if line.strip() == "ready":
            return process, lines
        if time.monotonic() > deadline:
            break
    process.kill()
    pytest.fail("ncpi dev did not get ready:\n" + "\n".join(lines))


def _stop(process: subprocess.Popen) -> tuple[int, str]:
    process.send_signal(signal.SIGINT)
    try:
        rest, _ = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail("ncpi dev did not stop within 60 s of Ctrl-C")
    return process.returncode, rest


def _mail(folder: Path) -> list[email.message.Message]:
    return [email.message_from_bytes(p.read_bytes()) for p in sorted(folder.glob("*.eml"))]


def _wait_for_mail(folder: Path, count: int, seconds: float = 60) -> list:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if len(messages := _mail(folder)) >= count:
            return messages
        time.sleep(0.5)
    pytest.fail(f"fewer than {count} emails in {folder} after {seconds:.0f} s: {len(_mail(folder))}")


def _port_open(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=0.5).close()
        return True
    except OSError:
        return False


def _sign_in_and_see_the_dashboard(address: str, email_address: str, password: str) -> None:
    import re

    import httpx

    with httpx.Client(base_url=address, follow_redirects=True, timeout=10) as web:
        assert web.get("/healthz").status_code == 200
        form = web.get("/sign-in")
        token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
        assert token, form.text[:500]
        page = web.post("/sign-in", data={"email": email_address, "password": password, "csrf_token": token[1]})
        assert page.status_code == 200 and "Cumbria" in page.text, page.text[:500]


def test_make_run_brings_everything_up_sends_mail_and_resumes(tmp_path):
    env = _env(tmp_path)
    process, lines = _start(env)
    try:
        text = "\n".join(lines)
        assert "Published       CUM-2017-01-26 (the Cumbria example)" in text
        assert f"UI http://127.0.0.1:{env['NCPI_DEV_UI_PORT']}" in text
        mail = _wait_for_mail(tmp_path / "data" / "mail", 2)
        assert mail[0]["X-NCPI-Reference"] == "ncpi/CUM/2017-01-26/published"
        assert "Reminder" in mail[1]["Subject"]
        status = run_ncpi("status", "--json", env=env)
        assert status.returncode == 0 and "CUM-2017-01-26-R1" in status.stdout
        # The web app, with the demonstration inspector's sign-in printed: the password works.
        web_line = next(line for line in lines if line.strip().startswith("Web app"))
        address = web_line.split()[2]
        assert address == f"http://127.0.0.1:{env['NCPI_WEB_PORT']}"
        password = web_line.rsplit("password ", 1)[1].rstrip(")")
        _sign_in_and_see_the_dashboard(address, web_line.split("sign in as ", 1)[1].split(",")[0], password)
        health = run_ncpi("health", "--worker", env=env)  # the compose health check, during `make run`
        assert health.returncode == 0, health.stderr
        assert health.stdout.startswith("ok: database and Temporal reachable, worker alive")
        listing = subprocess.run(
            [str(Path(sys.executable).parent / "temporal"), "workflow", "list", "--address", env["NCPI_TEMPORAL_ADDRESS"],
             "--query", 'ForceCode="CUM"'], capture_output=True, text=True, timeout=30,
        )
        assert listing.returncode == 0 and "ncpi/CUM/2017-01-26" in listing.stdout
    finally:
        code, rest = _stop(process)
    assert code == 0, rest
    assert "stopped" in rest
    assert not Path(env["NCPI_WORKER_ALIVE_FILE"]).exists(), "a stopped worker is not alive"
    assert not _port_open(env["NCPI_TEMPORAL_ADDRESS"]), "the Temporal dev server it started must stop with it"

    process, lines = _start(env)
    try:
        assert any(line.strip().startswith("Resumed") for line in lines)
        time.sleep(3)
        published = [m for m in _mail(tmp_path / "data" / "mail") if m["X-NCPI-Reference"] == "ncpi/CUM/2017-01-26/published"]
        assert len(published) == 1
    finally:
        code, _ = _stop(process)
    assert code == 0
