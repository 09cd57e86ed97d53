"""Every kind of email scores 0 in SpamAssassin's local tests (`spamassassin -t -L`).

Each message is the real RFC 5322 message the mailer sends (mailer.build_message over the worked
example of that kind, as in docs/emails/), fed to Debian's `spamassassin -t -L` on standard input.
A rule that fires is fixed in the message or its template, never by a threshold. Without
spamassassin the tests skip, except in CI (CI=true), where they fail: .ci/run installs it.
"""

from __future__ import annotations

import email
import email.policy
import os
import re
import shutil
import subprocess
from email.utils import parsedate_to_datetime

import pytest

from ncpi_workflow.email_examples import example_contexts
from ncpi_workflow.emails import render_email
from ncpi_workflow.mailer import build_message, message_id_for
from ncpi_workflow.settings import Settings
from tests.conftest import IN_CI

MAIL_FROM = Settings.model_fields["mail_from"].default
REPLY_TO = Settings.model_fields["reply_to"].default
ADDRESSES = {
    "liaison_officer": "liaison.officer@cumbria.police.example",
    "chief_officer": "chief.officer@cumbria.police.example",
    "pcc": "commissioner@cumbria-pcc.example",
    "lead_hm_inspector": "lead.inspector@inspectorate.example",
    "inspectors": "ncpi-inspectors@inspectorate.example",
}
EXAMPLES = example_contexts()  # one per kind


def message_bytes(kind: str, drop: tuple[str, ...] = ()) -> bytes:
    ctx = EXAMPLES[kind]
    if kind == "reply_acknowledgement":
        # Built as the inbound path builds it: Auto-Submitted: auto-replied, In-Reply-To the reply.
        from ncpi_workflow.inbound.acknowledgement import build

        message, _ = build(Settings(mail_from=MAIL_FROM), ctx, ctx.acknowledgement, [ADDRESSES["liaison_officer"]],
                           ctx.reference, "<reply-1@cumbria.police.example>", ctx.scheduled_for)
        for header in drop:
            del message[header]
        return message.as_bytes(policy=email.policy.SMTP)
    rendered = render_email(ctx)
    message = build_message(
        mail_from=MAIL_FROM,
        reply_to=REPLY_TO if ctx.reply_to else None,
        to=[ADDRESSES[role] for role in ctx.recipients],
        subject=rendered.subject,
        text=rendered.text,
        html=rendered.html,
        message_id=message_id_for(f"{kind}:{ctx.reference}", MAIL_FROM),
        reference=f"{kind}:{ctx.reference}",
    )
    for header in drop:
        del message[header]
    return message.as_bytes(policy=email.policy.SMTP)  # as it goes over SMTP (CRLF)


@pytest.fixture(scope="module")
def spamassassin(tmp_path_factory):
    """Runs `spamassassin -t -L` on a message; returns (score, {rule: points}, output)."""
    program = shutil.which("spamassassin")
    if program is None:
        if IN_CI:
            pytest.fail("spamassassin is not installed, and CI=true: .ci/run installs it (Debian package spamassassin)")
        pytest.skip("spamassassin is not installed (apt-get install spamassassin); CI fails instead of skipping")
    home = tmp_path_factory.mktemp("spamassassin-home")  # user_prefs, Bayes and reputation data: none kept
    env = {**os.environ, "HOME": str(home)}

    def run(message: bytes):
        done = subprocess.run([program, "-t", "-L"], input=message, capture_output=True, env=env, timeout=120)
        assert done.returncode == 0, done.stderr.decode(errors="replace")
        out = done.stdout.decode("utf-8", errors="replace")
        headers = out.split("\n\n", 1)[0].replace("\r\n", "\n")
        status = re.search(r"^X-Spam-Status: (.*(?:\n[ \t].*)*)", headers, re.MULTILINE)
        assert status, f"no X-Spam-Status header in spamassassin's output:\n{out[:2000]}"
        status_text = " ".join(status.group(1).split())
        score = float(re.search(r"\bscore=(-?[0-9.]+)", status_text).group(1))
        details = out.rpartition("Content analysis details:")[2]
        rules = {m.group(2): float(m.group(1))
                 for m in re.finditer(r"^\s*(-?[0-9]+\.[0-9]+)\s+([A-Z0-9_]+)\s", details, re.MULTILINE)}
        return score, rules, status_text

    return run


@pytest.mark.parametrize("kind", sorted(EXAMPLES))
def test_message_has_the_headers_spamassassin_expects(kind):
    message = email.message_from_bytes(message_bytes(kind), policy=email.policy.default)
    assert parsedate_to_datetime(message["Date"]).tzinfo is not None
    assert message["Message-ID"].startswith("<") and message["Message-ID"].endswith(">")
    assert message["Auto-Submitted"] == ("auto-replied" if kind == "reply_acknowledgement" else "auto-generated")
    assert message["Subject"].endswith("]") or kind == "digest"  # the reference tag (emails.reference_of)
    assert message["From"] and message["To"] and message["Subject"]
    assert message.get_content_type() == "multipart/alternative"
    assert [part.get_content_type() for part in message.iter_parts()] == ["text/plain", "text/html"]


@pytest.mark.parametrize("kind", sorted(EXAMPLES))
def test_every_kind_scores_zero(spamassassin, kind):
    score, rules, status = spamassassin(message_bytes(kind))
    scoring = {rule: points for rule, points in rules.items() if points != 0}
    assert score == 0 and not scoring, f"{kind}: {status}; rules that score: {scoring}"


def test_the_check_sees_a_rule_fire(spamassassin):
    """Without its Date: header (as before it was added) a message scores, and MISSING_DATE says why."""
    score, rules, status = spamassassin(message_bytes("reminder", drop=("Date",)))
    assert "MISSING_DATE" in rules and rules["MISSING_DATE"] > 0, status
    assert score > 0, status
