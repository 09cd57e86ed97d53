"""Worked examples of every email, from the Cumbria report of 26 January 2017.

`example_contexts()` and `escalation_examples()` build them; `python -m ncpi_workflow.email_examples
docs/emails` renders them into docs/emails/ (tests/test_email_templates.py fails while that folder is
out of date). Kept apart from `ncpi_workflow.emails`, which the worker imports to render real mail.
"""

from __future__ import annotations

import sys
from datetime import date, datetime
from pathlib import Path
from typing import Any

from ncpi_workflow import formatting
from ncpi_workflow.emails import (
    DecisionFacts,
    DigestItem,
    EmailContext,
    RecommendationFacts,
    render_email,
)

# --- Worked examples (the Cumbria report of 26 January 2017) -------------------------------------

_CUMBRIA_RECOMMENDATIONS = (
    # (ref, timeframe, due, text): the texts are illustrative, as in examples/cumbria-2017.yaml.
    (
        "R1",
        "immediately",
        date(2017, 2, 23),
        "The constabulary should ensure that it is represented at every initial multi-agency strategy "
        "discussion about a child at risk, so that police information contributes to the assessment "
        "and prioritisation of risk from the outset.",
    ),
    (
        "R2",
        "within_three_months",
        date(2017, 4, 26),
        "The constabulary should produce a problem profile of child sexual exploitation across the "
        "force area, with its partners, and use it to set a consistent response in every district.",
    ),
    (
        "R3",
        "within_three_months",
        date(2017, 4, 26),
        "The constabulary should ensure that children who go missing from home repeatedly are "
        "identified, that return interviews inform their risk assessment, and that inter-agency plans "
        "address the link between going missing and sexual exploitation.",
    ),
    (
        "R4",
        "within_six_months",
        date(2017, 7, 26),
        "The constabulary should ensure that serious child abuse cases are allocated only to staff "
        "with the specialist skills and training to investigate them, and that supervisors review "
        "allocation decisions.",
    ),
    (
        "R5",
        "within_six_months",
        date(2017, 7, 26),
        "The constabulary should agree with local authorities arrangements for transferring children "
        "charged and refused bail to appropriate alternative accommodation, and monitor every case "
        "in which a child is held overnight in custody.",
    ),
)

_CUMBRIA_DEADLINES = {
    "immediate_update": date(2017, 2, 23),
    "action_plan": date(2017, 3, 9),
    "pcc_response": date(2017, 3, 23),
    "revisit_by": date(2017, 7, 26),
}

_INSPECTION_ID = "CUM-2017-01-26"
_REPLY_TO = "ncpi-replies@inspectorate.example"
_EXAMPLE_LINK_EXPIRES = {
    # By notification reference: NCPI_LINK_DAYS_AFTER_DEADLINE (30) days after the latest deadline of
    # what each email is about, or after the day it is sent when that is later.
    "101": date(2017, 8, 25),  # published: the whole report (the six-month recommendations, 26 July)
    "109": date(2017, 4, 8),  # the action plan, 9 March
    "115": date(2017, 5, 26),  # R2, 26 April
    "140": date(2017, 6, 17),  # R2 overdue: sent 18 May
    "118": date(2017, 6, 3),  # sent 4 May
    "131": date(2017, 6, 10),  # sent 11 May
    "152": date(2017, 6, 24),  # sent 25 May
    "214": date(2017, 11, 19),  # R4's new deadline, 20 October
    "181": date(2017, 8, 12),  # R2's evidence, 13 July
    "205": date(2017, 11, 19),  # R2's new deadline, 20 October
    "206": date(2017, 11, 19),
    "241": date(2018, 3, 7),  # R1 re-opened, due 5 February 2018
    "220": date(2017, 11, 19),  # the recommendations decided; R2 and R4 due again 20 October
    "132": date(2017, 6, 12),  # a fresh link for R2 (the portal's "ask for a fresh link"), sent 12 May
}
_INSPECTOR = "A. Example, HM Inspectorate (NCPI team)"
_FORCE_CONTACTS = ("liaison_officer",)


def _at(year: int, month: int, day: int, hour: int = 9, minute: int = 0) -> datetime:
    """A London wall-clock time."""
    return datetime(year, month, day, hour, minute, tzinfo=formatting.LONDON)


def _recommendation(ref: str, **changes: Any) -> RecommendationFacts:
    for r, timeframe, due, text in _CUMBRIA_RECOMMENDATIONS:
        if r == ref:
            facts = RecommendationFacts(ref=r, text=text, timeframe=timeframe, due=due, original_due=due, illustrative=True)
            for name, value in changes.items():
                setattr(facts, name, value)
            return facts
    raise KeyError(ref)


_EXAMPLE_LINK_KEY = b"docs/emails example key: not a real token"
_PUBLIC_URL = "https://followup.inspectorate.example"


def _example_token(reference: str, purpose: str) -> str:
    """A token as real ones look (ncpi_workflow.access_links), from an example key: it opens nothing."""
    from ncpi_workflow.access_links import derive_token

    for salt in range(256):  # the first made of letters and digits only: easier to read in the examples
        token = derive_token(_EXAMPLE_LINK_KEY + purpose.encode(), int(reference), f"{salt:02x}" * 16)
        if token.isalnum():
            return token
    raise AssertionError("no alphanumeric example token")


def _cumbria(kind: str, subject: str, scheduled_for: datetime, reference: str, **values: Any) -> EmailContext:
    values.setdefault("recipients", list(_FORCE_CONTACTS))
    if any(role in ("liaison_officer", "chief_officer", "pcc") for role in values["recipients"]):
        # Force-facing: the portal link and the plus-addressed reply address, as delivery issues them.
        local, _, domain = _REPLY_TO.rpartition("@")
        values.setdefault("reply_to", f"{local}+{_example_token(reference, 'reply')}@{domain}")
        values.setdefault("portal_url", f"{_PUBLIC_URL}/portal/{_example_token(reference, 'portal')}")
        values.setdefault("link_expires", _EXAMPLE_LINK_EXPIRES[reference])
    values.setdefault("reply_to", _REPLY_TO)
    values.setdefault("report_deadlines", dict(_CUMBRIA_DEADLINES))
    return EmailContext(
        kind=kind,
        subject=subject,
        force_code="CUM",
        force_name="Cumbria Constabulary",
        inspection_id=_INSPECTION_ID,
        inspection_title="Cumbria Constabulary - National child protection inspection",
        published=date(2017, 1, 26),
        source_url="https://www.justiceinspectorates.gov.uk/hmicfrs/publications/cumbria-national-child-protection-inspection/",
        scheduled_for=scheduled_for,
        reference=reference,
        **values,
    )


def _r2_decision() -> DecisionFacts:
    return DecisionFacts(
        outcome="partially_achieved",
        rationale=(
            "A problem profile of child sexual exploitation has been produced with the local authority "
            "and is being used in the west of the county, but two of the three districts have not yet "
            "adopted the common response it sets out."
        ),
        decided_by=_INSPECTOR,
        decided_at=_at(2017, 7, 20, 14, 30),
    )


def _r4_decision() -> DecisionFacts:
    return DecisionFacts(
        outcome="not_achieved",
        rationale=(
            "Of the serious cases examined at the revisit, a third were still allocated to non-specialist "
            "staff, and there was no record of supervisors reviewing allocation decisions."
        ),
        decided_by=_INSPECTOR,
        decided_at=_at(2017, 7, 20, 15, 10),
    )


_OUTCOMES = {
    "R1": "achieved",
    "R2": "partially_achieved",
    "R3": "achieved",
    "R4": "not_achieved",
    "R5": "achieved",
}


def _r2_escalation(rung: str, working_days: int, scheduled_for: datetime, recipients: list[str], reference: str) -> EmailContext:
    who = {
        "chief_officer": "chief officer copied",
        "chief_officer_and_pcc": "chief officer and PCC copied",
        "lead_hm_inspector": "lead HM Inspector told",
    }[rung]
    return _cumbria(
        "escalation",
        f"Escalation: recommendation R2 is {-working_days} working days overdue, {who} ({_INSPECTION_ID})",
        scheduled_for,
        reference,
        recipients=recipients,
        deadline_label="Recommendation R2",
        deadline_key="recommendation:R2",
        due=date(2017, 4, 26),
        working_days=working_days,
        rung=rung,
        recommendation=_recommendation("R2", phase="in_progress"),
    )


def escalation_examples() -> dict[str, EmailContext]:
    """One escalation per rung: the R2 deadline (26 April 2017) overdue, then R4 judged not achieved."""
    return {
        "chief_officer": _r2_escalation(
            "chief_officer", -5, _at(2017, 5, 4), ["liaison_officer", "chief_officer"], "118"
        ),
        "chief_officer_and_pcc": _r2_escalation(
            "chief_officer_and_pcc", -10, _at(2017, 5, 11), ["liaison_officer", "chief_officer", "pcc"], "131"
        ),
        "lead_hm_inspector": _r2_escalation(
            "lead_hm_inspector",
            -20,
            _at(2017, 5, 25),
            ["liaison_officer", "chief_officer", "pcc", "lead_hm_inspector"],
            "152",
        ),
        "not_achieved": _cumbria(
            "escalation",
            f"Escalation: recommendation R4 judged not achieved ({_INSPECTION_ID})",
            _at(2017, 7, 20, 15, 15),
            "214",
            recipients=["liaison_officer", "chief_officer", "pcc", "lead_hm_inspector"],
            deadline_label="Recommendation R4",
            deadline_key="recommendation:R4",
            due=date(2017, 10, 20),
            rung="not_achieved",
            cycle=2,
            recommendation=_recommendation(
                "R4", phase="in_progress", outcome="not_achieved", due=date(2017, 10, 20), original_due=date(2017, 10, 20)
            ),
            decision=_r4_decision(),
        ),
    }


def _reply_acknowledgement() -> EmailContext:
    """The liaison officer replied to the R2 reminder (12 May 2017): the text recorded as progress,
    one file as evidence, one refused. Built as ncpi_workflow/inbound/acknowledgement.py builds it:
    no Reply-To and no portal link (replying to it reaches no token), the inbound key as reference."""
    import dataclasses

    at = _at(2017, 5, 12, 15, 5)
    ctx = _cumbria(
        "reply_acknowledgement",
        f"Received: your update on recommendation R2 ({_INSPECTION_ID})",
        at,
        "ncpi/inbound/17/acknowledgement",
        recipients=[],
        recommendation=_recommendation("R2", phase="in_progress"),
        acknowledgement={
            "ref": "R2", "about": "recommendation R2", "item": None,
            "received": formatting.short_datetime(at) + " (UK time)",
            "original_subject": f"Re: Overdue: recommendation R2, 15 working days [{_INSPECTION_ID}-R2]",
            "progress": True, "claim": "in progress",
            "recorded": [{"filename": "cse-problem-profile-2017.pdf", "size": "412 KB"}],
            "refused": [{"filename": "district-procedures.pdf",
                         "reason": "the name says a PDF document but the content is a Windows program (EXE); send PDF, "
                                   "Word (DOCX), Excel (XLSX), OpenDocument (ODT, ODS), PNG, JPEG, GIF, plain text or CSV"}],
        },
    )
    return dataclasses.replace(ctx, recipients=["liaison_officer"], reply_to=None)


def example_contexts() -> dict[str, EmailContext]:
    """One realistic context per kind, from the Cumbria report (recommendation texts illustrative)."""
    all_recommendations = [_recommendation(ref) for ref, *_ in _CUMBRIA_RECOMMENDATIONS]
    examples = {
        "published": _cumbria(
            "published",
            f"Inspection report published: Cumbria Constabulary, follow-up deadlines ({_INSPECTION_ID})",
            _at(2017, 1, 26),
            "101",
            recipients=["liaison_officer", "chief_officer", "pcc"],
            recommendations=all_recommendations,
        ),
        "reminder": _cumbria(
            "reminder",
            f"Reminder: force action plan due Thursday 9 March 2017 ({_INSPECTION_ID})",
            _at(2017, 2, 23),
            "109",
            deadline_label="Force action plan",
            deadline_key="action_plan",
            due=date(2017, 3, 9),
            working_days=10,
        ),
        "due_today": _cumbria(
            "due_today",
            f"Due today: recommendation R2 ({_INSPECTION_ID})",
            _at(2017, 4, 26),
            "115",
            deadline_label="Recommendation R2",
            deadline_key="recommendation:R2",
            due=date(2017, 4, 26),
            working_days=0,
            recommendation=_recommendation("R2", phase="in_progress"),
        ),
        "overdue": _cumbria(
            "overdue",
            f"Overdue: recommendation R2, 15 working days ({_INSPECTION_ID})",
            _at(2017, 5, 18),
            "140",
            recipients=["liaison_officer", "chief_officer", "pcc"],
            deadline_label="Recommendation R2",
            deadline_key="recommendation:R2",
            due=date(2017, 4, 26),
            working_days=-15,
            rung="chief_officer_and_pcc",
            recommendation=_recommendation("R2", phase="in_progress"),
        ),
        "escalation": escalation_examples()["chief_officer"],
        "evidence_request": _cumbria(
            "evidence_request",
            f"Evidence requested for recommendation R2 by Thursday 13 July 2017 ({_INSPECTION_ID})",
            _at(2017, 6, 29, 9, 30),
            "181",
            deadline_label="Evidence for recommendation R2",
            deadline_key="evidence:R2",
            due=date(2017, 7, 13),
            working_days=10,
            recommendation=_recommendation("R2", phase="evidence_requested"),
            evidence_what=(
                "The child sexual exploitation problem profile, the minutes of the partnership meeting "
                "that agreed it, and each district's procedure showing how the profile sets its response."
            ),
        ),
        "revisit_notice": _cumbria(
            "revisit_notice",
            f"Revisit due: Cumbria Constabulary no later than Wednesday 26 July 2017 ({_INSPECTION_ID})",
            _at(2017, 6, 28),
            "176",
            recipients=["inspectors"],
            reply_to=None,
            deadline_label="Revisit (post-inspection review) no later than",
            deadline_key="revisit_by",
            due=date(2017, 7, 26),
            working_days=20,
            recommendations=[
                _recommendation("R1", phase="in_progress"),
                _recommendation("R2", phase="in_progress"),
                _recommendation("R3", phase="in_progress"),
                _recommendation("R4", phase="force_notified"),
                _recommendation("R5", phase="in_progress"),
            ],
        ),
        "revisit_opened": _cumbria(
            "revisit_opened",
            f"Revisit opened: Cumbria Constabulary ({_INSPECTION_ID})",
            _at(2017, 6, 29, 9, 25),
            "180",
            recipients=["inspectors"],
            reply_to=None,
            deadline_label="Revisit (post-inspection review) no later than",
            deadline_key="revisit_by",
            due=date(2017, 7, 26),
            revisit_trigger="inspector",
            triggered_by=_INSPECTOR,
            recommendations=all_recommendations,
        ),
        "decision": _cumbria(
            "decision",
            f"Decision on recommendation R2: partially achieved ({_INSPECTION_ID})",
            _at(2017, 7, 20, 14, 35),
            "205",
            recipients=["liaison_officer", "chief_officer"],
            deadline_label="Recommendation R2",
            deadline_key="recommendation:R2",
            recommendation=_recommendation("R2", phase="closed", outcome="partially_achieved"),
            decision=_r2_decision(),
        ),
        "further_follow_up": _cumbria(
            "further_follow_up",
            f"Further follow-up: recommendation R2, new deadline Friday 20 October 2017 ({_INSPECTION_ID})",
            _at(2017, 7, 20, 14, 35),
            "206",
            recipients=["liaison_officer", "chief_officer"],
            deadline_label="Recommendation R2",
            deadline_key="recommendation:R2",
            due=date(2017, 10, 20),
            cycle=2,
            recommendation=_recommendation(
                "R2", phase="in_progress", outcome="partially_achieved", due=date(2017, 10, 20), original_due=date(2017, 10, 20)
            ),
            decision=_r2_decision(),
        ),
        "reopened": _cumbria(
            "reopened",
            f"Recommendation R1 re-opened: new deadline Monday 5 February 2018 ({_INSPECTION_ID})",
            _at(2017, 11, 3, 11, 20),
            "241",
            recipients=["liaison_officer", "chief_officer"],
            deadline_label="Recommendation R1",
            deadline_key="recommendation:R1",
            due=date(2018, 2, 5),
            cycle=2,
            recommendation=_recommendation("R1", phase="in_progress", due=date(2018, 2, 5), original_due=date(2018, 2, 5)),
            reopen_reason=(
                "A complaint received in October 2017 shows that the constabulary was not represented at two "
                "initial strategy discussions in West Cumbria, so the arrangement judged in place at the revisit "
                "is not yet reliable."
            ),
            reopened_by=_INSPECTOR,
            reopened_at=_at(2017, 11, 3, 11, 15),
        ),
        "revisit_outcome": _cumbria(
            "revisit_outcome",
            f"Revisit outcome: Cumbria Constabulary ({_INSPECTION_ID})",
            _at(2017, 7, 20, 16, 0),
            "220",
            recipients=["liaison_officer", "chief_officer", "pcc"],
            recommendations=[
                _recommendation(ref, outcome=_OUTCOMES[ref]) for ref, *_ in _CUMBRIA_RECOMMENDATIONS
            ],
            outcomes=dict(_OUTCOMES),
        ),
        "portal_link": _cumbria(
            "portal_link",
            f"Your link to answer the inspectorate: recommendation R2 ({_INSPECTION_ID})",
            _at(2017, 5, 12, 14, 20),
            "132",
            recommendation=_recommendation("R2", phase="in_progress"),
        ),
        "reply_acknowledgement": _reply_acknowledgement(),
        "delivery_failed": _cumbria(
            "delivery_failed",
            f"Email not delivered: escalation to Cumbria Constabulary ({_INSPECTION_ID})",
            _at(2017, 5, 4, 9, 5),
            "119",
            recipients=["inspectors"],
            reply_to=None,
            failed_notification={
                "id": 118,
                "kind": "escalation",
                "subject": escalation_examples()["chief_officer"].subject,
                "to": ["liaison@cumbria.police.example", "chief.officer@cumbria.police.example"],
                "error": "550 5.1.1 <chief.officer@cumbria.police.example>: Recipient address rejected: User unknown",
            },
        ),
        "digest": EmailContext(
            kind="digest",
            subject="Inspection follow-up: daily digest for Wednesday 28 June 2017",
            force_code="ALL",
            force_name="All forces",
            inspection_id="",
            inspection_title="Daily digest",
            published=date(2017, 6, 28),
            source_url="",
            scheduled_for=_at(2017, 6, 28, 8, 0),
            recipients=["inspectors"],
            reference="177",
            digest={
                "revisits_due": [
                    DigestItem("CUM", _INSPECTION_ID, "Revisit (post-inspection review) no later than", date(2017, 7, 26)),
                ],
                "overdue": [
                    DigestItem("CUM", _INSPECTION_ID, "Recommendation R3: the force's update was due", date(2017, 4, 26)),
                    DigestItem("CUM", _INSPECTION_ID, "Police and Crime Commissioner's published response was due", date(2017, 3, 23)),
                ],
                "decisions_awaited": [],
            },
        ),
    }
    return examples


def _example_files() -> list[tuple[str, EmailContext]]:
    files = list(example_contexts().items())
    files.extend((f"escalation-{rung}", ctx) for rung, ctx in escalation_examples().items())
    return files


def write_examples(folder: Path) -> list[Path]:
    """Render every example (and every escalation rung) into FOLDER as KIND.txt and KIND.html.

    Also writes FOLDER/README.md listing them. Uses the packaged templates only, so the result
    does not depend on NCPI_TEMPLATES_DIR. Returns the files written.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    rows: list[str] = []
    for name, ctx in _example_files():
        email = render_email(ctx)
        for suffix, body in (("txt", email.text), ("html", email.html)):
            path = folder / f"{name}.{suffix}"
            path.write_bytes(body.encode("utf-8"))
            written.append(path)
        to = formatting.role_list(ctx.recipients)
        subject = email.subject.replace("|", "\\|")
        rows.append(f"| `{name}` | {to} | {subject} | [text]({name}.txt), [HTML]({name}.html) |")
    readme = "\n".join(
        [
            "# Example emails",
            "",
            "What forces, escalation contacts and inspectors receive, one example per kind of",
            "notification, rendered from the packaged templates in `ncpi_workflow/templates/email/`.",
            "Every example follows the Cumbria Constabulary report published on 26 January 2017",
            "(inspection `CUM-2017-01-26`). The recommendation texts (R1 to R5), the decisions, their",
            "rationales and the re-opening of R1 are **illustrative**: they are not in our sources (see",
            "`examples/cumbria-2017.yaml`). People's names are invented.",
            "",
            "Generated files: do not edit them by hand. After changing a template, regenerate with",
            "",
            "```",
            ".venv/bin/python -m ncpi_workflow.email_examples docs/emails",
            "```",
            "",
            "`tests/test_email_templates.py` fails while this folder is out of date.",
            "",
            "| example | to | subject | files |",
            "| --- | --- | --- | --- |",
            *rows,
            "",
            "`escalation` is the first rung (`escalation-chief_officer`). The three deadline rungs follow",
            "recommendation R2 (due Wednesday 26 April 2017); `escalation-not_achieved` follows R4, judged",
            "not achieved at the revisit. Times are Europe/London.",
            "",
        ]
    )
    readme_path = folder / "README.md"
    readme_path.write_bytes(readme.encode("utf-8"))
    written.append(readme_path)
    return written


def main(argv: list[str] | None = None) -> int:
    """`python -m ncpi_workflow.email_examples FOLDER`: (re)write the example emails into FOLDER."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m ncpi_workflow.email_examples FOLDER", file=sys.stderr)
        return 2
    for path in write_examples(Path(args[0])):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
