"""Server-rendered pages: Jinja2 with the GOV.UK Frontend macros (govuk-frontend-jinja), and the
headers every page carries (a content security policy with a per-response nonce, no caching of
signed-in pages, no framing)."""

from __future__ import annotations

import secrets
from datetime import date, datetime
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import BytecodeCache, ChoiceLoader, Environment, FileSystemLoader, PackageLoader, PrefixLoader, select_autoescape

from ncpi_workflow.formatting import LONDON, long_date, outcome_words, role_name
from ncpi_workflow.views import DEADLINE_NAMES, utc, words
from ncpi_workflow.web.auth import CSRF_FIELD, csrf_token

TEMPLATES = Path(__file__).resolve().parent / "templates"
SERVICE_NAME = "NCPI follow-up"

PHASE_TAGS = {
    "published": "grey",
    "force_notified": "",
    "in_progress": "teal",
    "evidence_requested": "yellow",
    "evidence_submitted": "turquoise",
    "under_review": "purple",
    "closed": "green",
    "following_up": "",
    "revisit_open": "purple",
}
"""Tag colours (GOV.UK Frontend 6: no modifier is blue)."""
STATUS_TAGS = {"pending": "yellow", "sent": "green", "failed": "red"}
RAG_TAGS = {"red": ("red", "Overdue"), "amber": ("yellow", "Due within 30 days"), "green": ("green", "On track")}


def _date(value: date | datetime | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        value = utc(value).astimezone(LONDON).date()
    return f"{value.day} {value:%B %Y}"


def _when(value: datetime | None) -> str:
    if value is None:
        return "-"
    local = utc(value).astimezone(LONDON)
    return f"{local.day} {local:%B %Y} {local:%H:%M}"


def _happened(value: datetime | None, recorded_at: datetime | None = None) -> str:
    """When an action happened, and when it was recorded if that was another day (back-dated):
    "22 March 2017 (recorded 2 December 2026)"; otherwise as `when`."""
    if value is None or recorded_at is None or _date(value) == _date(recorded_at):
        return _when(value)
    return f"{_date(value)} (recorded {_date(recorded_at)})"


def _iso(value: date | datetime | None) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return utc(value).astimezone(LONDON).isoformat(timespec="minutes")
    return value.isoformat()


def _tag(value: str | None, colours: dict[str, str] = PHASE_TAGS) -> dict[str, str]:
    """A govukTag's parameters for a phase or a delivery state."""
    colour = colours.get(value or "", "grey")
    return {"text": words(value), "classes": f"govuk-tag--{colour}" if colour else ""}


def _deadline_name(key: str) -> str:
    if key.startswith("recommendation:"):
        return "recommendation"
    if key.startswith("evidence:"):
        return "evidence"
    return DEADLINE_NAMES.get(key, words(key))


def _sentence(value) -> str:
    """First letter capital, the rest as it is ('PCC's published response' stays so; Jinja's
    `capitalize` would lower the rest)."""
    text = str(value)
    return text[:1].upper() + text[1:]


class _SharedBytecodeCache(BytecodeCache):
    """The compiled templates, shared by every environment `build_environment` makes in this process
    (one per app and per static export: the test suite makes hundreds, each compiling every page it
    renders again otherwise). Jinja checks each entry against the checksum of the template's source,
    so an edited template is compiled afresh."""

    def __init__(self) -> None:
        self._code: dict[str, bytes] = {}

    def load_bytecode(self, bucket) -> None:
        code = self._code.get(bucket.key)
        if code is not None:
            bucket.bytecode_from_string(code)

    def dump_bytecode(self, bucket) -> None:
        self._code[bucket.key] = bucket.bytecode_to_string()


_BYTECODE_CACHE = _SharedBytecodeCache()


def build_environment() -> Environment:
    env = Environment(
        bytecode_cache=_BYTECODE_CACHE,  # every environment is built here, with the same options
        loader=ChoiceLoader(
            [
                FileSystemLoader(str(TEMPLATES)),
                PrefixLoader({"govuk_frontend_jinja": PackageLoader("govuk_frontend_jinja")}),
            ]
        ),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        day=_date, when=_when, iso=_iso, words=words, long_date=long_date, outcome=outcome_words, role=role_name,
        deadline_name=_deadline_name, sentence=_sentence, happened=_happened,
    )
    env.globals.update(
        service_name=SERVICE_NAME, phase_tag=_tag, status_tag=lambda s: _tag(s, STATUS_TAGS), rag_tags=RAG_TAGS,
        csrf_field=CSRF_FIELD,
    )
    return env


def security_headers(response, nonce: str | None = None) -> None:
    script = f"'self' 'nonce-{nonce}'" if nonce else "'self'"
    response.headers["Content-Security-Policy"] = (
        f"default-src 'self'; script-src {script}; style-src 'self'; img-src 'self' data:; font-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
    )
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["Cache-Control"] = "no-store"


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    env: Environment = request.app.state.templates
    nonce = secrets.token_urlsafe(16)
    user = getattr(request.state, "user", None)
    flash = request.session.pop("flash", None) if "session" in request.scope else None
    page = env.get_template(template).render(
        request=request,
        user=user,
        csrf_token=csrf_token(request) if "session" in request.scope else "",
        cspNonce=nonce,
        flash=flash,
        errors=context.pop("errors", []),
        field_errors=context.pop("field_errors", {}),
        values=context.pop("values", {}),
        assets_ready=request.app.state.assets_ready,
        **context,
    )
    response = HTMLResponse(page, status_code=status_code)
    security_headers(response, nonce)
    return response
