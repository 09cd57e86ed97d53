"""Settings from the environment and a settings file; policy files; clear errors for bad values."""

from __future__ import annotations

from datetime import time
from pathlib import Path

import pytest

from ncpi_workflow.errors import UserError
from ncpi_workflow.policy import Period, Policy, load_policy
from ncpi_workflow.settings import Settings, load_settings
from tests.conftest import ROOT, run_ncpi

CONTRACT = [
    "NCPI_DATABASE_URL", "NCPI_TEMPORAL_ADDRESS", "NCPI_TEMPORAL_NAMESPACE", "NCPI_TASK_QUEUE", "NCPI_SMTP_HOST",
    "NCPI_SMTP_PORT", "NCPI_SMTP_USERNAME", "NCPI_SMTP_PASSWORD", "NCPI_SMTP_STARTTLS", "NCPI_MAIL_FROM",
    "NCPI_POLICY", "NCPI_TIME_SCALE",
]


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for name in list(__import__("os").environ):
        if name.startswith("NCPI_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("NCPI_SETTINGS_FILE", str(tmp_path / "ncpi.toml"))
    return monkeypatch


def test_embedded_defaults_run_on_one_machine(clean_env):
    s = load_settings()
    assert s.database_url == "sqlite+aiosqlite:///.data/ncpi.db"
    assert (s.temporal_address, s.temporal_namespace, s.task_queue) == ("localhost:7233", "default", "ncpi-followup")
    assert (s.smtp_host, s.smtp_port, s.smtp_starttls) == ("127.0.0.1", 8025, False)
    assert s.time_scale == 1.0
    assert s.policy == ROOT / "config" / "policy.toml"


def test_every_contract_variable_is_read_from_the_environment(clean_env, tmp_path):
    values = {
        "NCPI_DATABASE_URL": "postgresql+asyncpg://ncpi:secret@db:5432/ncpi",
        "NCPI_TEMPORAL_ADDRESS": "temporal:7233",
        "NCPI_TEMPORAL_NAMESPACE": "ncpi",
        "NCPI_TASK_QUEUE": "followup",
        "NCPI_SMTP_HOST": "smtp.example",
        "NCPI_SMTP_PORT": "587",
        "NCPI_SMTP_USERNAME": "user",
        "NCPI_SMTP_PASSWORD": "pw",
        "NCPI_SMTP_STARTTLS": "true",
        "NCPI_MAIL_FROM": "followup@hmicfrs.example",
        "NCPI_POLICY": str(tmp_path / "policy.toml"),
        "NCPI_TIME_SCALE": "1440",
    }
    assert set(values) == set(CONTRACT)
    for name, value in values.items():
        clean_env.setenv(name, value)
    s = load_settings()
    assert s.database_url.startswith("postgresql+asyncpg://")
    assert (s.temporal_address, s.temporal_namespace, s.task_queue) == ("temporal:7233", "ncpi", "followup")
    assert (s.smtp_host, s.smtp_port, s.smtp_username, s.smtp_password, s.smtp_starttls) == ("smtp.example", 587, "user", "pw", True)
    assert s.mail_from == "followup@hmicfrs.example"
    assert s.policy == tmp_path / "policy.toml"
    assert s.time_scale == 1440.0


def test_the_settings_file_is_read_and_the_environment_wins(clean_env, tmp_path):
    (tmp_path / "ncpi.toml").write_text('task_queue = "from-file"\ntime_scale = 60\nmail_from = "file@x.example"\n')
    clean_env.setenv("NCPI_MAIL_FROM", "env@x.example")
    s = load_settings()
    assert (s.task_queue, s.time_scale, s.mail_from) == ("from-file", 60.0, "env@x.example")


@pytest.mark.parametrize(
    "name, value, reason",
    [
        ("NCPI_TIME_SCALE", "-5", "NCPI_TIME_SCALE: Input should be greater than 0"),
        ("NCPI_TIME_SCALE", "0", "NCPI_TIME_SCALE: Input should be greater than 0"),
        ("NCPI_TIME_SCALE", "fast", "NCPI_TIME_SCALE: Input should be a valid number"),
        ("NCPI_DATABASE_URL", "not a url", "NCPI_DATABASE_URL: cannot parse database URL 'not a url'"),
        ("NCPI_DATABASE_URL", "mysql://x/y", "NCPI_DATABASE_URL: unsupported database driver 'mysql'"),
        ("NCPI_SMTP_PORT", "70000", "NCPI_SMTP_PORT: Input should be less than or equal to 65535"),
        ("NCPI_TEMPORAL_ADDRESS", "localhost", "NCPI_TEMPORAL_ADDRESS: expected HOST:PORT"),
    ],
)
def test_a_bad_value_is_a_clear_startup_error(clean_env, name, value, reason):
    clean_env.setenv(name, value)
    with pytest.raises(UserError) as caught:
        load_settings()
    assert str(caught.value).startswith(f"settings: {reason}")


def test_the_command_refuses_to_start_on_a_bad_setting(cli_env):
    result = run_ncpi("plan", "examples/cumbria-2017.yaml", env={**cli_env, "NCPI_TIME_SCALE": "-1"})
    assert result.returncode != 0
    assert result.stderr == "ncpi: settings: NCPI_TIME_SCALE: Input should be greater than 0\n"


def test_the_default_policy_file_holds_the_brief_clocks():
    policy = load_policy(ROOT / "config" / "policy.toml")
    assert policy == Policy()
    assert policy.deadlines.action_plan == Period(weeks=6)
    assert policy.deadlines.revisit_by == Period(months=6)
    assert policy.calendar.send_at == time(9, 0)
    assert [r.rung for r in policy.escalation] == ["chief_officer", "chief_officer_and_pcc", "lead_hm_inspector"]


@pytest.mark.parametrize(
    "toml, reason",
    [
        ("[deadlines]\naction_plan = { fortnights = 3 }", "deadlines.action_plan: expected a table of days, weeks and/or months"),
        ("[deadlines]\nrevisit = { months = 6 }", "deadlines.revisit: unknown deadline"),
        ("[calendar]\nsend_at = \"07:00\"", "calendar.send_at: must fall inside working hours"),
        ("[calendar]\ntimezone = \"Mars/Olympus\"", "calendar.timezone: unknown time zone"),
        ("[reminders]\nworking_days_before = [10, -3]", "reminders.working_days_before: expected a list of whole numbers > 0"),
        ("[[escalation]]\nrung = \"x\"\nafter_working_days_overdue = 5\nnotify = [\"mayor\"]", "escalation[0].notify: expected a list of roles"),
        ("[oops]", "unknown section(s): oops"),
        ("deadlines = [", "not valid TOML"),
    ],
)
def test_a_bad_policy_file_names_the_key_and_reason(tmp_path, toml, reason):
    file = tmp_path / "policy.toml"
    file.write_text(toml)
    with pytest.raises(UserError) as caught:
        load_policy(file)
    assert str(caught.value).startswith(f"{file}: ")
    assert reason in str(caught.value)


def test_a_changed_policy_changes_the_plan(tmp_path, cli_env):
    policy = (ROOT / "config" / "policy.toml").read_text().replace("action_plan = { weeks = 6 }", "action_plan = { weeks = 8 }")
    (tmp_path / "policy.toml").write_text(policy)
    result = run_ncpi("plan", "examples/cumbria-2017.yaml", env={**cli_env, "NCPI_POLICY": str(tmp_path / "policy.toml")})
    assert result.returncode == 0, result.stderr
    assert "Force action plan due Thursday 23 March 2017" in result.stdout
