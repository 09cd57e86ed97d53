"""Email templates: every kind renders, values are escaped in HTML only, overrides and docs/emails/."""

from __future__ import annotations

import dataclasses
from datetime import date, datetime, timezone
from pathlib import Path

import jinja2
import pytest

from ncpi_workflow import emails, formatting
from ncpi_workflow.emails import (
    KINDS,
    DecisionFacts,
    DigestItem,
    EmailContext,
    EmailTemplateError,
    render_email,
)
from ncpi_workflow.email_examples import escalation_examples, example_contexts, write_examples

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "emails"

PAYLOAD = '<script>alert(1)</script> & "quotes"'
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &#34;quotes&#34;"


def all_examples() -> list[tuple[str, EmailContext]]:
    named = list(example_contexts().items())
    named += [(f"escalation-{rung}", ctx) for rung, ctx in escalation_examples().items()]
    return named


def flat(text: str) -> str:
    """Text with line wrapping undone, so a phrase can be found across a line break."""
    return " ".join(text.split())


# --- every kind ----------------------------------------------------------------------------------


def test_there_is_an_example_and_both_templates_for_every_kind():
    assert set(example_contexts()) == set(KINDS)
    assert set(escalation_examples()) == set(emails.ESCALATION_RUNGS)
    for kind in KINDS:
        assert (emails.PACKAGE_TEMPLATES / f"{kind}.txt.j2").is_file()
        assert (emails.PACKAGE_TEMPLATES / f"{kind}.html.j2").is_file()


@pytest.mark.parametrize("name,ctx", all_examples(), ids=[name for name, _ in all_examples()])
def test_every_example_renders_both_parts(name, ctx):
    email = render_email(ctx)
    assert email.subject == emails.subject_with_reference(ctx.subject, emails.reference_of(ctx))
    assert email.text.strip() and email.html.strip()
    assert email.html.startswith("<!DOCTYPE html>")
    assert "HM Inspectorate of Constabulary and Fire &amp; Rescue Services — Inspection follow-up" in email.html
    assert "sent automatically by ncpi-followup" in email.html
    assert "sent automatically by ncpi-followup" in email.text
    assert f"Notification reference: {ctx.reference}" in email.text
    assert f"Notification reference: {ctx.reference}" in email.html
    assert "<style" not in email.html  # inline CSS only
    if ctx.kind != "digest":
        for part in (email.text, email.html):
            assert "Cumbria Constabulary" in part
            assert "CUM-2017-01-26" in part
            assert "Thursday 26 January 2017" in part
            assert ctx.source_url in part
    for line in email.text.splitlines():
        assert len(line) <= 100 or line.startswith("http"), line


def test_reminder_for_the_action_plan_gives_the_long_date_force_and_what_to_do():
    email = render_email(example_contexts()["reminder"])
    assert "Thursday 9 March 2017" in email.text
    assert "Thursday 9 March 2017" in email.html
    assert "For: liaison officer, Cumbria Constabulary" in email.text
    text = flat(email.text)
    assert "falls in 10 working days, on Thursday 9 March 2017" in text
    assert "Send the force's action plan by replying to this email, quoting reference CUM-2017-01-26" in text
    assert "ncpi progress" not in text and "ncpi evidence" not in text


def test_published_notice_lists_every_deadline_and_recommendation():
    email = render_email(example_contexts()["published"])
    text = flat(email.text)
    for day in (
        "Thursday 23 February 2017",
        "Thursday 9 March 2017",
        "Thursday 23 March 2017",
        "Wednesday 26 April 2017",
        "Wednesday 26 July 2017",
    ):
        assert day in text
        assert day in email.html
    for ref in ("R1", "R2", "R3", "R4", "R5"):
        assert f"Recommendation {ref}" in text
    assert "illustrative text, not quoted from the published report" in text
    assert "Police and Crime Commissioner" in text


def test_recommendation_deadlines_quote_the_recommendation():
    for kind in ("due_today", "overdue", "escalation"):
        ctx = example_contexts()[kind]
        email = render_email(ctx)
        text = flat(email.text)
        assert "Wednesday 26 April 2017" in text
        assert "Recommendation R2 (within three months)" in text
        assert flat(ctx.recommendation.text) in text
        assert ctx.recommendation.text in email.html
        assert "Reply to this email with your update on recommendation R2" in text


def test_original_due_date_is_shown_only_when_it_differs():
    ctx = example_contexts()["overdue"]
    assert "originally" not in render_email(ctx).text
    ctx.due = ctx.recommendation.due = date(2017, 5, 10)
    ctx.recommendation.original_due = date(2017, 4, 26)
    email = render_email(ctx)
    assert "Wednesday 10 May 2017 (originally Wednesday 26 April 2017)" in flat(email.text)
    assert "Wednesday 10 May 2017 (originally Wednesday 26 April 2017)" in email.html


def test_overdue_says_how_late_and_who_is_copied():
    text = flat(render_email(example_contexts()["overdue"]).text)
    assert "is now 15 working days overdue" in text
    assert "also goes to the chief officer and PCC" in text


# --- escaping ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["decision", "further_follow_up"])
def test_html_escapes_values_and_text_keeps_them(kind):
    ctx = example_contexts()[kind]
    ctx.recommendation.text = PAYLOAD
    ctx.decision.rationale = PAYLOAD
    ctx.decision.decided_by = PAYLOAD
    email = render_email(ctx)
    assert "<script>" not in email.html
    assert email.html.count(ESCAPED) >= 3
    assert email.text.count(PAYLOAD) + flat(email.text).count(PAYLOAD) >= 3
    assert "&lt;" not in email.text and "&amp;" not in email.text


def test_html_escapes_the_not_achieved_escalation_and_digest():
    ctx = escalation_examples()["not_achieved"]
    ctx.decision.rationale = PAYLOAD
    ctx.force_name = PAYLOAD
    email = render_email(ctx)
    assert "<script>" not in email.html and ESCAPED in email.html
    assert PAYLOAD in flat(email.text)

    digest = example_contexts()["digest"]
    digest.digest["overdue"].append(DigestItem("CUM", "CUM-2017-01-26", PAYLOAD, date(2017, 6, 1)))
    email = render_email(digest)
    assert "<script>" not in email.html and ESCAPED in email.html
    assert PAYLOAD in flat(email.text)


def test_subject_is_one_line():
    ctx = example_contexts()["reminder"]
    ctx.subject = "Reminder:\r\n force action plan\n due"
    email = render_email(ctx)
    assert email.subject == "Reminder: force action plan due [CUM-2017-01-26]"
    assert "<title>Reminder: force action plan due [CUM-2017-01-26]</title>" in email.html


@pytest.mark.parametrize("name,ctx", all_examples(), ids=[name for name, _ in all_examples()])
def test_every_subject_ends_with_a_short_reference_the_inbound_parser_reads(name, ctx):
    from ncpi_workflow.inbound.parsing import references, subject_reference

    subject = render_email(ctx).subject
    assert len(subject) <= 110, subject  # readable in a mail client's list; one folded header line at most
    if ctx.kind == "digest":
        assert "[" not in subject  # about no inspection: nothing to refer to
        return
    expected = f"{ctx.inspection_id}-{ctx.recommendation.ref}" if ctx.recommendation else ctx.inspection_id
    assert subject.endswith(f" [{expected}]"), subject
    assert subject.count(ctx.inspection_id) == 1, subject  # the older "(CUM-...)" suffix became the tag
    reply = f"RE: [EXTERNAL] {subject}"  # as a force's mail system may send it back
    assert subject_reference(reply) == (ctx.inspection_id, expected if ctx.recommendation else None)
    inspections, refs = references(reply)
    assert inspections == {ctx.inspection_id}
    if ctx.recommendation:
        assert ctx.recommendation.ref in refs


def test_real_workflow_subjects_gain_the_reference():
    """The workflows' subjects (lifecycle.message_subject) carry no inspection ID: rendering adds it."""
    from ncpi_workflow.lifecycle import message_subject

    ctx = example_contexts()["due_today"]
    ctx.subject = message_subject("due_today", "Recommendation R2", date(2017, 4, 26), "Cumbria Constabulary")
    assert render_email(ctx).subject == "Due today: Recommendation R2 (Wednesday 26 April 2017) [CUM-2017-01-26-R2]"
    ctx = example_contexts()["reminder"]
    ctx.subject = message_subject("reminder", "Force action plan", date(2017, 3, 9), "Cumbria Constabulary")
    assert render_email(ctx).subject == "Reminder: Force action plan due Thursday 9 March 2017 [CUM-2017-01-26]"
    assert emails.subject_with_reference("Already tagged [CUM-2017-01-26]", "CUM-2017-01-26") == "Already tagged [CUM-2017-01-26]"
    assert emails.subject_with_reference("Old style (CUM-2017-01-26)", "CUM-2017-01-26-R3") == "Old style [CUM-2017-01-26-R3]"
    assert emails.subject_with_reference("Digest", None) == "Digest"


# --- escalations, decisions, revisits --------------------------------------------------------------


def test_escalations_name_the_right_people_for_each_rung():
    ex = escalation_examples()

    chief = flat(render_email(ex["chief_officer"]).text)
    assert "the chief officer of Cumbria Constabulary is now copied" in chief
    assert "5 working days overdue" in chief
    assert "PCC" not in chief and "Commissioner" not in chief and "lead HM Inspector" not in chief

    pcc = flat(render_email(ex["chief_officer_and_pcc"]).text)
    assert "the chief officer and the Police and Crime Commissioner (PCC)" in pcc
    assert "Who is told: the liaison officer, chief officer and PCC" in pcc
    assert "lead HM Inspector" not in pcc

    lead = flat(render_email(ex["lead_hm_inspector"]).text)
    assert "the lead HM Inspector has now been told" in lead
    assert "Who is told: the liaison officer, chief officer, PCC and lead HM Inspector" in lead
    assert "20 working days overdue" in lead

    not_achieved = render_email(ex["not_achieved"])
    text = flat(not_achieved.text)
    assert "judged recommendation R4 of its report on Cumbria Constabulary not achieved" in text
    assert "a recommendation judged not achieved is escalated" in text
    assert "lead HM Inspector" in text
    assert "Friday 20 October 2017" in text
    assert ex["not_achieved"].decision.decided_by in text
    assert "the lead HM Inspector are being told" in flat(not_achieved.html)


@pytest.mark.parametrize(
    "outcome,words,next_step",
    [
        ("achieved", "achieved", "The recommendation is closed."),
        ("partially_achieved", "partially achieved", "A further follow-up of this recommendation starts"),
        ("not_achieved", "not achieved", "A further follow-up of this recommendation starts"),
        ("superseded", "superseded", "covered by a later inspection"),
        ("withdrawn", "withdrawn", "The inspectorate has withdrawn this recommendation."),
    ],
)
def test_decision_notice_gives_outcome_rationale_and_who(outcome, words, next_step):
    ctx = example_contexts()["decision"]
    ctx.decision = dataclasses.replace(ctx.decision, outcome=outcome)
    email = render_email(ctx)
    text = flat(email.text)
    assert f"Outcome: {words}" in text
    assert next_step in text
    assert flat(ctx.decision.rationale) in text
    assert f"Decided by: {ctx.decision.decided_by}" in text
    assert "Thu 20 Jul 2017 14:30" in text  # 13:30 UTC, written in London time
    assert "_" not in text.split("Outcome:")[1].split("\n")[0]


def test_further_follow_up_gives_the_new_deadline():
    ctx = example_contexts()["further_follow_up"]
    email = render_email(ctx)
    text = flat(email.text)
    assert "New deadline: Friday 20 October 2017" in text
    assert "cycle 2" in text
    assert "partially achieved" in text
    assert f"Decided by: {ctx.decision.decided_by}, Thu 20 Jul 2017 14:30" in text
    assert flat(ctx.decision.rationale) in text and ctx.decision.rationale in email.html


def test_reopened_notice_gives_the_reason_who_when_and_the_new_deadline():
    ctx = example_contexts()["reopened"]
    email = render_email(ctx)
    text = flat(email.text)
    assert "The inspectorate has re-opened recommendation R1 of its report on Cumbria Constabulary" in text
    assert "A new follow-up cycle of it has started (cycle 2)" in text
    assert f"Re-opened by: {ctx.reopened_by}" in text
    assert "Re-opened on: Fri 3 Nov 2017 11:15" in text
    assert "New deadline: Monday 5 February 2018" in text
    assert flat(ctx.reopen_reason) in text and ctx.reopen_reason in email.html
    assert "You will receive a reminder before the new deadline." in text
    assert "The inspectorate will ask for evidence when it reviews this recommendation again, at the revisit" in text
    for part in (text, email.html):
        assert "achieved" not in part and "Reasons for the decision" not in part
        assert "Monday 5 February 2018" in part and ctx.reopened_by in part


def test_html_escapes_the_reopening_reason_and_who():
    ctx = example_contexts()["reopened"]
    ctx.reopen_reason = ctx.reopened_by = PAYLOAD
    email = render_email(ctx)
    assert "<script>" not in email.html and email.html.count(ESCAPED) == 2
    assert flat(email.text).count(PAYLOAD) == 2


def test_evidence_request_asks_for_a_reply_quoting_the_reference():
    email = render_email(example_contexts()["evidence_request"])
    text = flat(email.text)
    assert "Send your evidence by replying to this email, quoting reference CUM-2017-01-26" in text
    assert "Thursday 13 July 2017" in text
    assert "originally" not in text  # the evidence deadline is not the recommendation's deadline


def test_revisit_notice_says_when_it_opens_by_itself():
    text = flat(render_email(example_contexts()["revisit_notice"]).text)
    assert "no later than Wednesday 26 July 2017" in text
    assert "opens automatically on Wednesday 26 July 2017" in text
    assert "ncpi revisit CUM-2017-01-26" in text


def test_revisit_opened_says_how():
    ctx = example_contexts()["revisit_opened"]
    text = flat(render_email(ctx).text)
    assert "an inspector opened it (A. Example" in text
    ctx.revisit_trigger, ctx.triggered_by = "automatic", None
    email = render_email(ctx)
    assert "automatically, because nobody had triggered it and it reached the six-month limit" in flat(email.text)
    assert "six-month limit" in email.html


def test_revisit_outcome_lists_each_recommendation():
    text = render_email(example_contexts()["revisit_outcome"]).text
    for line in ("- R1: achieved", "- R2: partially achieved", "- R3: achieved", "- R4: not achieved", "- R5: achieved"):
        assert line in text


def test_delivery_failed_names_the_notification_and_the_command():
    ctx = example_contexts()["delivery_failed"]
    email = render_email(ctx)
    text = flat(email.text)
    assert "ncpi outbox resend 118" in text
    assert "ncpi outbox resend 118" in email.html
    assert "Recipient address rejected: User unknown" in text
    assert "chief.officer@cumbria.police.example" in text
    assert flat(ctx.failed_notification["subject"]) in text
    ctx.failed_notification["to"] = "one@example.org"
    assert "To: one@example.org" in flat(render_email(ctx).text)


def test_digest_with_empty_sections_says_none():
    ctx = example_contexts()["digest"]
    ctx.digest = {"revisits_due": [], "overdue": [], "decisions_awaited": []}
    email = render_email(ctx)
    assert email.text.count("None.") == 3
    assert email.html.count("None.") == 3
    ctx.digest = {}
    assert render_email(ctx).text.count("None.") == 3


def test_digest_lists_items_with_london_times():
    ctx = example_contexts()["digest"]
    ctx.digest["decisions_awaited"] = [
        DigestItem("CUM", "CUM-2017-01-26", "Recommendation R2: evidence submitted", datetime(2017, 7, 1, 8, 0, tzinfo=timezone.utc))
    ]
    email = render_email(ctx)
    text = flat(email.text)
    assert "Daily digest for Wednesday 28 June 2017" in text
    assert "Revisit (post-inspection review) no later than — Wednesday 26 July 2017" in text
    assert "Recommendation R2: evidence submitted — Sat 1 Jul 2017 09:00" in text
    assert "None." not in text
    for heading in ("Revisits due within 30 days", "Overdue items", "Decisions awaited"):
        assert heading in email.text and heading in email.html


# --- overrides and strictness ---------------------------------------------------------------------


def test_an_override_folder_replaces_one_template_only(tmp_path):
    (tmp_path / "reminder.txt.j2").write_text(
        "Custom: {{ force_name }}, {{ deadline_label }} by {{ due|long_date }}.\n", encoding="utf-8"
    )
    ctx = example_contexts()["reminder"]
    email = render_email(ctx, tmp_path)
    assert email.text == "Custom: Cumbria Constabulary, Force action plan by Thursday 9 March 2017.\n"
    assert email.html == render_email(ctx).html  # the packaged HTML template still applies
    assert render_email(ctx).text != email.text  # and the packaged environment is unaffected


def test_an_override_can_replace_the_shared_layout(tmp_path):
    (tmp_path / "_base.html.j2").write_text("<p>{{ force_name }}</p>{% block content %}{% endblock %}", encoding="utf-8")
    email = render_email(example_contexts()["reminder"], tmp_path)
    assert email.html.startswith("<p>Cumbria Constabulary</p>")


def test_a_missing_value_fails_instead_of_rendering_blank(tmp_path):
    (tmp_path / "reminder.txt.j2").write_text("Dear {{ liaison_officer_name }}\n", encoding="utf-8")
    with pytest.raises(EmailTemplateError, match="reminder.txt.j2.*liaison_officer_name") as info:
        render_email(example_contexts()["reminder"], tmp_path)
    assert isinstance(info.value.__cause__, jinja2.UndefinedError)


def test_an_absent_fact_fails_in_the_packaged_templates():
    ctx = example_contexts()["decision"]
    ctx.decision = None  # a decision notice needs the decision
    with pytest.raises(EmailTemplateError, match="decision"):
        render_email(ctx)
    ctx = example_contexts()["reminder"]
    ctx.due = None
    with pytest.raises(EmailTemplateError, match="no date"):
        render_email(ctx)


def test_unknown_kind_and_missing_override_folder_are_errors(tmp_path):
    ctx = example_contexts()["reminder"]
    with pytest.raises(EmailTemplateError, match="unknown email kind"):
        render_email(dataclasses.replace(ctx, kind="postcard"))
    with pytest.raises(EmailTemplateError, match="not found"):
        render_email(ctx, tmp_path / "nowhere")


def test_the_environment_is_cached_per_folder_and_escapes_html_only(tmp_path):
    assert emails.environment() is emails.environment()
    assert emails.environment(tmp_path) is emails.environment(tmp_path)
    assert emails.environment(tmp_path) is not emails.environment()
    env = emails.environment()
    assert env.from_string("{{ x }}").render(x="<b>") == "<b>"
    assert env.get_template("reminder.html.j2").environment.autoescape("reminder.html.j2") is True
    assert env.autoescape("reminder.txt.j2") is False


def test_templates_dir_from_env(monkeypatch, tmp_path):
    monkeypatch.delenv("NCPI_TEMPLATES_DIR", raising=False)
    assert emails.templates_dir_from_env() is None
    monkeypatch.setenv("NCPI_TEMPLATES_DIR", str(tmp_path))
    assert emails.templates_dir_from_env() == tmp_path


# --- formatting helpers ---------------------------------------------------------------------------


def test_formatting_helpers():
    assert formatting.long_date(date(2017, 3, 9)) == "Thursday 9 March 2017"
    # 23:30 UTC on 30 June is already 1 July in London (BST).
    assert formatting.long_date_london(datetime(2017, 6, 30, 23, 30, tzinfo=timezone.utc)) == "Saturday 1 July 2017"
    assert formatting.working_days_phrase(10) == "in 10 working days"
    assert formatting.working_days_phrase(1) == "in 1 working day"
    assert formatting.working_days_phrase(0) == "today"
    assert formatting.working_days_phrase(-15) == "15 working days overdue"
    assert formatting.role_list(["liaison_officer", "chief_officer", "pcc"]) == "liaison officer, chief officer and PCC"
    assert formatting.role_list(["lead_hm_inspector"]) == "lead HM Inspector"
    assert formatting.outcome_words("partially_achieved") == "partially achieved"
    assert formatting.when_words(None) == "no date"
    assert formatting.when_words(date(2017, 7, 26)) == "Wednesday 26 July 2017"
    assert formatting.when_words(datetime(2017, 1, 26, 9, 0, tzinfo=timezone.utc)) == "Thu 26 Jan 2017 09:00"
    # Naive instants (SQLite gives them back so) are UTC: 23:30 UTC on 30 June 2017 is 00:30 on 1 July in London.
    assert formatting.when_words(datetime(2017, 6, 30, 23, 30)) == "Sat 1 Jul 2017 00:30"
    assert formatting.long_date_london(datetime(2017, 6, 30, 23, 30)) == "Saturday 1 July 2017"


def test_naive_instants_from_the_database_are_written_in_london_time():
    ctx = example_contexts()["decision"]
    ctx.scheduled_for = datetime(2017, 7, 20, 13, 35)
    ctx.decision.decided_at = datetime(2017, 7, 20, 13, 30)
    email = render_email(ctx)
    assert "Decided on: Thu 20 Jul 2017 14:30" in email.text
    assert "Dated: Thu 20 Jul 2017 14:35 (UK time)" in email.text


def test_decision_facts_are_written_in_london_time():
    decided = DecisionFacts("achieved", "Done.", "An inspector", datetime(2017, 7, 20, 13, 30, tzinfo=timezone.utc))
    ctx = dataclasses.replace(example_contexts()["decision"], decision=decided)
    assert "Decided on: Thu 20 Jul 2017 14:30" in render_email(ctx).text


# --- docs/emails/ ---------------------------------------------------------------------------------


def test_docs_emails_are_up_to_date(tmp_path):
    write_examples(tmp_path)
    expected = sorted(p.name for p in tmp_path.iterdir())
    committed = sorted(p.name for p in DOCS.iterdir()) if DOCS.is_dir() else []
    hint = "docs/emails/ is out of date: run .venv/bin/python -m ncpi_workflow.email_examples docs/emails"
    assert committed == expected, hint
    for name in expected:
        assert (DOCS / name).read_bytes() == (tmp_path / name).read_bytes(), f"{name}: {hint}"


def test_not_achieved_escalation_without_decision_facts_still_renders():
    ctx = escalation_examples()["not_achieved"]
    ctx.decision = None
    text = flat(render_email(ctx).text)
    assert "judged recommendation R4 of its report on Cumbria Constabulary not achieved" in text
    assert "Reasons for the decision" not in text
