"""`ncpi users add|list|disable` and `ncpi web`, run as a user runs them (subprocesses).

cli.py registers them (see ncpi_workflow/cli_web.py); until it does, these tests run `ncpi`'s own
entry point with the same two lines of registration, so that they check the real `main()`
(one line on stderr, the exit status)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import httpx
import pytest

from tests.conftest import ROOT, ncpi_db_upgraded
from tests.postgres import free_port

ENTRY = (
    "from ncpi_workflow import cli\n"
    "if 'users' not in {g.name for g in cli.app.registered_groups}:\n"
    "    from ncpi_workflow.cli_web import users_app, web\n"
    "    cli.app.add_typer(users_app, name='users')\n"
    "    cli.app.command()(web)\n"
    "cli.main()\n"
)


@pytest.fixture
def env(cli_env):
    ncpi_db_upgraded(cli_env)  # `ncpi db upgrade`, exit 0: a copy of what it made once this session
    return cli_env


def ncpi(*args: str, env: dict, stdin: str = "", timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", ENTRY, *args], input=stdin, env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def test_users_add_list_disable(env):
    added = ncpi("users", "add", "Alice.Inspector@Inspectorate.example", "--role", "inspector", env=env,
                 stdin="a long enough password\n")
    assert (added.returncode, added.stdout, added.stderr) == (0, "added alice.inspector@inspectorate.example (inspector)\n", "")
    listed = ncpi("users", "list", env=env)
    assert listed.returncode == 0 and re.fullmatch(r"alice\.inspector@inspectorate\.example\s+inspector\s+active\n", listed.stdout)
    as_json = ncpi("users", "list", "--json", env=env)
    assert '"role": "inspector"' in as_json.stdout and "argon2" not in as_json.stdout and "password" not in as_json.stdout
    disabled = ncpi("users", "disable", "alice.inspector@inspectorate.example", env=env)
    assert disabled.returncode == 0 and disabled.stdout == "disabled alice.inspector@inspectorate.example\n"
    assert "disabled" in ncpi("users", "list", env=env).stdout


@pytest.mark.parametrize(
    "args,stdin,reason",
    [
        (("users", "add", "b@inspectorate.example", "--role", "admin"), "", "ncpi: the password is empty\n"),
        (("users", "add", "b@inspectorate.example", "--role", "admin"), "\n", "ncpi: the password is empty\n"),
        (("users", "add", "b@inspectorate.example", "--role", "admin"), "short\n",
         "ncpi: the password is too short: at least 12 characters\n"),
        (("users", "add", "b@inspectorate.example", "--role", "boss"), "a long enough password\n",
         "ncpi: role 'boss' is not one of: viewer, inspector, admin\n"),
        (("users", "add", "not-an-email", "--role", "viewer"), "a long enough password\n",
         "ncpi: 'not-an-email' is not an email address\n"),
        (("users", "disable", "nobody@inspectorate.example"), "", "ncpi: no user nobody@inspectorate.example\n"),
    ],
)
def test_users_refusals_are_one_line(env, args, stdin, reason):
    result = ncpi(*args, env=env, stdin=stdin)
    assert (result.returncode, result.stdout, result.stderr) == (1, "", reason)


def test_the_password_is_never_an_argument(env):
    result = ncpi("users", "add", "c@inspectorate.example", "--role", "admin", "--password", "a long enough password", env=env)
    assert result.returncode != 0 and "--password" in result.stderr and "a long enough password" not in result.stdout
    assert "c@inspectorate.example" not in ncpi("users", "list", env=env).stdout


def test_ncpi_web_serves_until_sigterm(env):
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", ENTRY, "web"], env={**env, "NCPI_WEB_PORT": str(port)}, cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise AssertionError(f"ncpi web did not start: {server.stderr.read() if server.poll() is not None else ''}")
                time.sleep(0.2)
        assert health.status_code == 200 and health.text == "ok\n"
        home = httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
        assert home.status_code == 303 and home.headers["location"] == "/sign-in"
        sign_in = httpx.get(f"http://127.0.0.1:{port}/sign-in", timeout=5)
        assert 'name="email"' in sign_in.text and 'name="password"' in sign_in.text
        assert re.search(r'<input type="hidden" name="csrf_token" value="[^"]{20,}">', sign_in.text)
        css = httpx.get(f"http://127.0.0.1:{port}/govuk/govuk-frontend.min.css", timeout=5)
        assert css.status_code == 200 and "govuk-template" in css.text
        assert httpx.get(f"http://127.0.0.1:{port}/assets/fonts/bold-b542beb274-v2.woff2", timeout=5).status_code == 200
        key = os.path.join(env["NCPI_DATA_DIR"], "web-secret.key")
        assert os.stat(key).st_mode & 0o077 == 0  # the generated session key is the owner's alone
    finally:
        server.send_signal(signal.SIGTERM)
        out, err = server.communicate(timeout=30)
    assert server.returncode == 0, err
    assert f"web app on http://127.0.0.1:{port}" in err
