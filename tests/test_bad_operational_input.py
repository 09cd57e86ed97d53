"""Bad operational input (issue 11): each refused in one line that says what is wrong, changing nothing.
No Temporal server is running (NCPI_TEMPORAL_ADDRESS points nowhere): every refusal comes first."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from ncpi_workflow.errors import UserError
from ncpi_workflow.evidence_files import hash_file, keep_file, open_evidence
from ncpi_workflow.lifecycle import check_name, printable
from tests.conftest import ROOT, ncpi_db_upgraded, run_ncpi

REC = "CUM-2017-01-26-R1"
NOWHERE = "127.0.0.1:1"


@pytest.fixture
def env(cli_env):
    cli_env["NCPI_TEMPORAL_ADDRESS"] = NOWHERE
    ncpi_db_upgraded(cli_env)  # `ncpi db upgrade`, exit 0: a copy of what it made once this session
    return cli_env


def _database(env) -> bytes:
    return hashlib.sha256(Path(env["NCPI_DATABASE_URL"].split("///", 1)[1]).read_bytes()).hexdigest()


def _refused(env, *args, timeout: float = 30) -> str:
    result = run_ncpi(*args, env=env, timeout=timeout)
    assert result.returncode == 1, (args, result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ncpi: "), result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    return lines[0].removeprefix("ncpi: ")


# ---------------------------------------------------------------- evidence files


def test_evidence_that_is_not_a_regular_file_is_refused_saying_what_it_is(env, tmp_path):
    secret = tmp_path / "shadow"
    secret.write_text("root:$6$secret:19000:0:99999:7:::\n")
    secret.chmod(0o600)
    link = tmp_path / "audit.pdf"
    link.symlink_to(secret)
    link_to_shadow = tmp_path / "shadow.pdf"
    link_to_shadow.symlink_to("/etc/shadow")
    fifo = tmp_path / "pipe.pdf"
    os.mkfifo(fifo)
    folder = tmp_path / "folder.pdf"
    folder.mkdir()
    before = _database(env)
    cases = {
        link: "is a symbolic link; give the evidence file itself, not a link to it",
        link_to_shadow: "is a symbolic link; give the evidence file itself, not a link to it",
        fifo: "is a FIFO (named pipe), not a regular file; evidence must be a regular file",
        folder: "is a directory, not a regular file; evidence must be a regular file",
        Path("/dev/zero"): "is a character device, not a regular file; evidence must be a regular file",
        tmp_path / "missing.pdf": "no such file",
    }
    for path, why in cases.items():
        # A FIFO must not hang the command waiting for a writer, nor /dev/zero fill the store.
        assert _refused(env, "evidence", REC, "--file", str(path), "--by", "liaison officer", timeout=20) == f"{path}: {why}"
    evidence_dir = Path(env["NCPI_DATA_DIR"]) / "evidence"
    assert not evidence_dir.exists() or not any(p.is_file() for p in evidence_dir.rglob("*"))
    assert _database(env) == before


def test_evidence_is_opened_without_following_links_and_judged_on_what_was_opened(tmp_path, monkeypatch):
    """No window between the check and the read: O_NOFOLLOW on the open, fstat on the descriptor."""
    real = tmp_path / "audit.pdf"
    real.write_bytes(b"%PDF-1.4 audit")
    opened, statted = [], []
    os_open, os_fstat = os.open, os.fstat
    monkeypatch.setattr(os, "open", lambda path, flags, *a: opened.append(flags) or os_open(path, flags, *a))
    monkeypatch.setattr(os, "fstat", lambda fd: statted.append(fd) or os_fstat(fd))
    assert hash_file(real, 1000) == (hashlib.sha256(b"%PDF-1.4 audit").hexdigest(), 14)
    assert opened and all(flags & os.O_NOFOLLOW for flags in opened[:1]) and statted
    link = tmp_path / "link.pdf"
    link.symlink_to(real)
    with pytest.raises(UserError, match="is a symbolic link"):
        open_evidence(link, 1000)
    with pytest.raises(UserError, match="is a symbolic link"):
        keep_file(link, tmp_path / "store", 1000)
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").rglob("*"))


def test_store_evidence_refuses_a_link_too(tmp_path):
    """The records' own evidence store (store.store_evidence) follows the same rule."""
    import asyncio

    from ncpi_workflow.store import store_evidence

    secret = tmp_path / "secret"
    secret.write_text("secret")
    link = tmp_path / "audit.pdf"
    link.symlink_to(secret)
    with pytest.raises(UserError, match="is a symbolic link"):
        asyncio.run(store_evidence(None, recommendation_id=REC, source=link, evidence_dir=tmp_path / "e",
                                   max_bytes=1000, submitted_by="liaison"))


# ---------------------------------------------------------------- IDs out of range


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_an_outbox_id_out_of_range_is_one_line_on_both_databases(env, database, request, tmp_path):
    if database == "postgresql":
        import asyncio

        from tests.conftest import _create_pg_database

        cluster = request.getfixturevalue("postgres_cluster")
        env = dict(env, NCPI_DATABASE_URL=asyncio.run(_create_pg_database(cluster)))
        assert run_ncpi("db", "upgrade", env=env).returncode == 0
    for number in ("99999999999999999999", "2147483648", "9223372036854775808"):
        line = _refused(env, "outbox", "resend", number)
        assert number in line and "notification" in line


# ---------------------------------------------------------------- names and text


INVALID_UTF8 = os.fsdecode(b"\xff\xfeinspector")


INVALID_UTF8_CASES = [
    (("progress", REC, "--claim", "in_progress", "--text", "Started.", "--by", INVALID_UTF8), "--by"),
    (("progress", REC, "--claim", "in_progress", "--text", INVALID_UTF8, "--by", "liaison"), "--text"),
    (("progress", REC, "--claim", INVALID_UTF8, "--text", "Started.", "--by", "liaison"), "--claim"),
    (("decide", REC, "--outcome", "achieved", "--rationale", INVALID_UTF8, "--by", "hmi"), "--rationale"),
    (("withdraw", REC, "--reason", INVALID_UTF8, "--by", "hmi"), "--reason"),
    (("register", "set", REC, "--status", "being progressed", "--comment", INVALID_UTF8, "--by", "hmi"), "--comment"),
    (("deliver", "CUM-2017-01-26", "action_plan", "--by", INVALID_UTF8), "--by"),
    (("revisit", "CUM-2017-01-26", "--by", INVALID_UTF8), "--by"),
]


def test_invalid_utf8_in_an_argument_is_refused_naming_it(env):
    before = _database(env)
    for args, option in INVALID_UTF8_CASES:
        assert _refused(env, *args) == f"{option} is not valid UTF-8", args
    assert _database(env) == before


def test_an_id_or_file_name_in_invalid_utf8_is_refused_in_one_line(env, tmp_path):
    assert "is not a recommendation ID" in _refused(env, "progress", INVALID_UTF8, "--claim", "in_progress", "--text", "t", "--by", "l")
    bad = Path(os.fsdecode(bytes(tmp_path) + b"/audit\xff.pdf"))
    bad.write_bytes(b"%PDF")
    assert _refused(env, "evidence", REC, "--file", str(bad), "--by", "liaison") == (
        "--file: the file name audit\\udcff.pdf is not valid UTF-8; rename the file"
    )


INVISIBLE = ["\u200b", "\u200b\u200c\u200d", "\ufeff", " \u00a0\u2060 ", "   "]


def test_a_name_of_invisible_characters_is_no_name(env):
    for name in INVISIBLE:
        with pytest.raises(ValueError, match="must not be empty"):
            check_name(name, "who decides (by)")
    for name in INVISIBLE[:2] + ["\u2028"]:
        line = _refused(env, "decide", REC, "--outcome", "achieved", "--rationale", "Done.", "--by", name)
        assert line in ("--by must not be empty (it holds only invisible characters)", "--by must be one line"), line


def test_a_name_with_control_characters_is_refused(env):
    for name in ["hmi\nlead", "hmi\rlead", "hmi\tlead", "hmi\x1b[31mlead", "hmi\x00"]:
        with pytest.raises(ValueError, match="control characters"):
            check_name(name, "who decides (by)")
    for name in ["hmi\nlead", "hmi\x1b[31mlead"]:  # no command line carries a NUL
        line = _refused(env, "withdraw", REC, "--reason", "Gone.", "--by", name)
        assert line.startswith("--by must not contain control characters"), line


def test_a_file_name_with_a_newline_stays_on_its_line(env, tmp_path):
    odd = tmp_path / "audit\nreport.yaml"
    assert _refused(env, "evidence", REC, "--file", str(odd), "--by", "liaison") == f"{tmp_path}/audit\\nreport.yaml: no such file"
    report = (ROOT / "examples" / "cumbria-2017.yaml").read_text()
    odd.write_text(report)
    result = run_ncpi("validate", str(odd), env=env)
    assert result.returncode == 0 and result.stdout == f"{tmp_path}/audit\\nreport.yaml: valid: CUM-2017-01-26, 5 recommendations\n"
    assert printable("a\nb\u200bc") == "a\\nb\\u200bc"
