"""Email content: Jinja2 templates (plain text and HTML) for every kind of notification.

The delivery activity builds an `EmailContext` from the outbox row and the records, then
`render_email` turns it into a subject, a text part and an HTML part. Templates live in
ncpi_workflow/templates/email/; NCPI_TEMPLATES_DIR names a folder whose files override them
(`templates_dir_from_env()` reads it; pass the result to `render_email`).

Overrides work file by file: the override folder is searched first, then the packaged folder, so
a folder holding only `reminder.txt.j2` changes the plain text of reminders and nothing else.
`.html.j2` templates escape every value; `.txt.j2` templates do not. A template that uses a value
the context does not have fails (StrictUndefined) instead of sending a half-empty email.

The worked examples from the Cumbria report (rendered into docs/emails/) live in
`ncpi_workflow.email_examples`, apart from the code the worker imports.
"""

from __future__ import annotations

import os
import re
import textwrap
from dataclasses import dataclass, field, fields
from datetime import date, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2

from ncpi_workflow import formatting
from ncpi_workflow.errors import UserError


@dataclass
class RecommendationFacts:
    ref: str
    text: str
    timeframe: str
    due: date | None = None
    original_due: date | None = None
    phase: str | None = None
    outcome: str | None = None
    illustrative: bool = False
    """The text is written for demonstration, not quoted from the published report."""


@dataclass
class DecisionFacts:
    outcome: str
    rationale: str
    decided_by: str
    decided_at: datetime


@dataclass
class DigestItem:
    force_code: str
    inspection_id: str
    what: str
    when: datetime | date | None = None


@dataclass
class EmailContext:
    """Everything a template may use. Dates are dates; templates format them (see formatting.py)."""

    kind: str
    """published, reminder, due_today, overdue, escalation, evidence_request, revisit_notice,
    revisit_opened, decision, further_follow_up, reopened, revisit_outcome, delivery_failed, digest,
    portal_link, reply_acknowledgement."""
    subject: str
    force_code: str
    force_name: str
    inspection_id: str
    inspection_title: str
    published: date
    source_url: str
    scheduled_for: datetime
    recipients: list[str] = field(default_factory=list)
    """Roles addressed (liaison_officer, chief_officer, pcc, lead_hm_inspector, inspectors)."""
    deadline_label: str | None = None
    """e.g. 'Force action plan', 'Recommendation R2', 'Evidence for recommendation R2'."""
    deadline_key: str | None = None
    due: date | None = None
    working_days: int | None = None
    """Positive: working days before the deadline; negative: working days overdue."""
    rung: str | None = None
    """Escalation rung: chief_officer, chief_officer_and_pcc, lead_hm_inspector, not_achieved."""
    cycle: int = 1
    recommendation: RecommendationFacts | None = None
    recommendations: list[RecommendationFacts] = field(default_factory=list)
    """All of the report's recommendations (published notice, revisit outcome)."""
    report_deadlines: dict[str, date] = field(default_factory=dict)
    """Report-level deadlines by key (immediate_update, action_plan, pcc_response, revisit_by)."""
    decision: DecisionFacts | None = None
    outcomes: dict[str, str] = field(default_factory=dict)
    """Revisit outcome: outcome by recommendation ref."""
    revisit_trigger: str | None = None
    failed_notification: dict[str, Any] | None = None
    """delivery_failed: {"id", "kind", "subject", "to", "error"}."""
    digest: dict[str, list[DigestItem]] = field(default_factory=dict)
    """digest: {"revisits_due": [...], "overdue": [...], "decisions_awaited": [...]}."""
    reply_to: str | None = None
    """Where a reply goes: for a force-facing email, the follow-up mailbox plus-addressed with the
    email's reply link (ncpi_workflow/access_links.py)."""
    portal_url: str | None = None
    """Force-facing emails: the force portal's page for exactly what the email is about (its token is
    a placeholder until the email is sent; see access_links)."""
    link_expires: date | None = None
    """The last day (Europe/London) the portal link works."""
    reference: str | None = None
    """The notification's reference (the outbox row id), shown in the footer."""
    triggered_by: str | None = None
    """revisit_opened: who opened the revisit when revisit_trigger is 'inspector'."""
    evidence_what: str | None = None
    """evidence_request: what evidence the inspectorate asks for."""
    reopen_reason: str | None = None
    """reopened: why an inspector re-opened the closed recommendation."""
    reopened_by: str | None = None
    reopened_at: datetime | None = None
    acknowledgement: dict[str, Any] | None = None
    """reply_acknowledgement: what a reply recorded ({"ref", "about", "item", "received",
    "original_subject", "progress", "claim", "recorded": [{"filename", "size"}], "refused":
    [{"filename", "reason"}]}; ncpi_workflow/inbound/acknowledgement.py)."""


@dataclass
class RenderedEmail:
    subject: str
    text: str
    html: str


# --- Rendering -----------------------------------------------------------------------------------

KINDS = (
    "published",
    "reminder",
    "due_today",
    "overdue",
    "escalation",
    "evidence_request",
    "revisit_notice",
    "revisit_opened",
    "decision",
    "further_follow_up",
    "reopened",
    "revisit_outcome",
    "delivery_failed",
    "digest",
    "portal_link",
    "reply_acknowledgement",
)
"""Every value of EmailContext.kind; each has KIND.txt.j2 and KIND.html.j2."""

ESCALATION_RUNGS = ("chief_officer", "chief_officer_and_pcc", "lead_hm_inspector", "not_achieved")

PACKAGE_TEMPLATES = Path(__file__).parent / "templates" / "email"

TEMPLATES_DIR_ENV = "NCPI_TEMPLATES_DIR"

TEXT_WIDTH = 78
"""Plain-text lines are wrapped to this width; a single long word (a URL) stays whole."""

REPORT_DEADLINE_LABELS = {
    "immediate_update": "Update on recommendations to be acted on immediately",
    "action_plan": "Force action plan",
    "pcc_response": "Police and Crime Commissioner's published response",
    "revisit_by": "Revisit (post-inspection review) no later than",
}


class EmailTemplateError(UserError):
    """A template is missing, refers to a value the context does not have, or cannot be rendered."""


def templates_dir_from_env() -> Path | None:
    """The override folder named by NCPI_TEMPLATES_DIR, if any (for the delivery activity)."""
    value = os.environ.get(TEMPLATES_DIR_ENV, "").strip()
    return Path(value) if value else None


def _autoescape(template_name: str | None) -> bool:
    """HTML templates escape every value; plain-text templates keep values as they are."""
    return bool(template_name) and template_name.endswith((".html.j2", ".html"))


def _long_date_filter(value: date | datetime | None) -> str:
    if value is None:
        raise ValueError("long_date: no date given")
    return formatting.long_date_london(value)


def _short_datetime_filter(value: datetime | None) -> str:
    if value is None:
        raise ValueError("short_datetime: no date and time given")
    return formatting.short_datetime(formatting.as_utc_if_naive(value))


@lru_cache(maxsize=16)
def _environment(templates_dir: str | None) -> jinja2.Environment:
    loaders: list[jinja2.BaseLoader] = []
    if templates_dir is not None:
        loaders.append(jinja2.FileSystemLoader(templates_dir))
    loaders.append(jinja2.FileSystemLoader(str(PACKAGE_TEMPLATES)))
    env = jinja2.Environment(
        loader=jinja2.ChoiceLoader(loaders),
        undefined=jinja2.StrictUndefined,
        autoescape=_autoescape,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(
        long_date=_long_date_filter,
        short_datetime=_short_datetime_filter,
        when=formatting.when_words,
        role=formatting.role_name,
        roles=formatting.role_list,
        and_list=formatting.and_list,
        timeframe=formatting.timeframe,
        outcome=formatting.outcome_words,
        working_days=formatting.working_days_phrase,
    )
    env.globals.update(report_deadline_labels=REPORT_DEADLINE_LABELS)
    return env


def environment(templates_dir: Path | None = None) -> jinja2.Environment:
    """The Jinja2 environment for an override folder (or none), built once per folder."""
    if templates_dir is None:
        return _environment(None)
    folder = Path(templates_dir).resolve()
    if not folder.is_dir():
        raise EmailTemplateError(f"{templates_dir}: email templates folder not found")
    return _environment(str(folder))


def clean_subject(subject: str) -> str:
    """One line: newlines (and runs of spaces) become single spaces."""
    return " ".join(subject.split())


def reference_of(ctx: EmailContext) -> str | None:
    """The short, stable reference an email's subject ends with: the recommendation's ID
    (`CUM-2017-01-26-R2`) for an email about one recommendation, else the inspection's ID; None for
    an email about no inspection (the digest). A liaison officer can quote it, an inspector can give
    it to `ncpi show`, and the inbound parser (`inbound.parsing.subject_reference`) reads it back when
    a mail system has stripped the reply token from the address (a reply is still only recorded with
    a valid token: the reference only tells triage what the reply is about)."""
    if not ctx.inspection_id:
        return None
    if ctx.recommendation is not None and ctx.recommendation.ref:
        return f"{ctx.inspection_id}-{ctx.recommendation.ref}"
    return ctx.inspection_id


def subject_with_reference(subject: str, reference: str | None) -> str:
    """The subject ending with "[REFERENCE]": a trailing "(INSPECTION-ID)" (the older convention)
    becomes the tag; a subject already ending with the tag is kept as it is."""
    subject = clean_subject(subject)
    if not reference:
        return subject
    tag = f"[{reference}]"
    if subject.endswith(tag):
        return subject
    inspection_id = reference if not re.search(r"-R\d+$", reference) else reference.rsplit("-", 1)[0]
    for old in (f" ({inspection_id})", f" ({reference})"):
        if subject.endswith(old):
            subject = subject[: -len(old)]
            break
    return f"{subject} {tag}" if subject else tag


_HANGING = re.compile(r"^(\s*(?:[-*]\s+|[A-Z][A-Za-z' ]{0,15}:\s+)?)")
"""What a wrapped line's continuation lines align under: a '- ' bullet, or a short 'Label:   ' column."""


def wrap_text(text: str, width: int = TEXT_WIDTH) -> str:
    """Wrap long lines, keeping each line's indent (and a '- ' bullet's hanging indent).

    Blank-line runs collapse to one blank line; trailing spaces go; the text ends with one newline.
    """
    out: list[str] = []
    for line in text.splitlines():
        line = line.rstrip()
        if not line:
            if out and out[-1] != "":
                out.append("")
            continue
        if len(line) <= width:
            out.append(line)
            continue
        lead = _HANGING.match(line).group(1)
        out.extend(
            textwrap.wrap(
                line[len(lead):],
                width=width,
                initial_indent=lead,
                subsequent_indent=" " * len(lead),
                break_long_words=False,
                break_on_hyphens=False,
            )
        )
    while out and out[-1] == "":
        out.pop()
    return "\n".join(out) + "\n"


def _tidy_html(html: str) -> str:
    lines = [line.rstrip() for line in html.splitlines()]
    out: list[str] = []
    for line in lines:
        if not line and (not out or out[-1] == ""):
            continue
        out.append(line)
    while out and out[-1] == "":
        out.pop()
    return "\n".join(out) + "\n"


def render_email(ctx: EmailContext, templates_dir: Path | None = None) -> RenderedEmail:
    """Subject, plain-text part and HTML part for one notification. The subject ends with the
    email's reference (`subject_with_reference`, `reference_of`).

    `templates_dir` (an override folder) is searched first, then the packaged templates, file by
    file: an override folder may hold just `reminder.txt.j2`, or just `_base.html.j2`.
    Raises EmailTemplateError naming the template when a template is missing or uses a value the
    context does not have (StrictUndefined).
    """
    if ctx.kind not in KINDS:
        raise EmailTemplateError(f"unknown email kind {ctx.kind!r}; known: {', '.join(KINDS)}")
    env = environment(templates_dir)
    subject = subject_with_reference(ctx.subject, reference_of(ctx))
    values = {f.name: getattr(ctx, f.name) for f in fields(ctx)}
    values["subject"] = subject
    parts = {}
    for suffix in ("txt", "html"):
        name = f"{ctx.kind}.{suffix}.j2"
        try:
            parts[suffix] = env.get_template(name).render(values)
        except jinja2.TemplateNotFound as exc:
            raise EmailTemplateError(f"email template {exc.name} not found") from exc
        except jinja2.UndefinedError as exc:
            raise EmailTemplateError(f"email template {name}: {exc.message}") from exc
        except (jinja2.TemplateError, ValueError, TypeError, AttributeError) as exc:
            raise EmailTemplateError(f"email template {name}: {exc}") from exc
    return RenderedEmail(subject=subject, text=wrap_text(parts["txt"]), html=_tidy_html(parts["html"]))
