"""Publish a report: upload its YAML. A bad file shows the same one-line-per-problem errors as
`ncpi validate` and starts nothing.

A report whose deadlines have already passed is refused as `ncpi publish` refuses it: the page says
what catch-up would send at once and offers the three choices as radios. The upload is kept (under
the data directory, by its SHA-256) so that choosing re-submits the very same file; it is checked
again in full then, and removed once published."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse

from ncpi_workflow.app import publishing
from ncpi_workflow.errors import UserError
from ncpi_workflow.evidence_files import open_evidence
from ncpi_workflow.report import ReportInvalid
from ncpi_workflow.web.auth import Principal, admin_only, checked_form, services
from ncpi_workflow.web.forms import Refusal
from ncpi_workflow.web.rendering import render

router = APIRouter()

FIELD = "report"
PAST_FIELD = "past"
CHOICE_NAMES = {publishing.PastChoice.CATCH_UP: "Catch up", publishing.PastChoice.ADOPT: "Adopt",
                publishing.PastChoice.ANCHOR_NOW: "Anchor now"}
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _pending_folder(settings):
    return settings.data_dir / "publish-pending"


def _keep(settings, content: bytes) -> str:
    """Keep a refused upload for the choice that follows: its SHA-256 names it. Written to a new file and
    renamed into place, so a link planted under that name is replaced, never followed."""
    sha = hashlib.sha256(content).hexdigest()
    folder = _pending_folder(settings)
    folder.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(prefix=".incoming-", suffix=".partial", dir=folder)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(content)
        os.replace(partial, folder / f"{sha}.yaml")
    finally:
        Path(partial).unlink(missing_ok=True)
    return sha


def _kept(settings, sha: str) -> bytes | None:
    """The upload kept under this SHA-256, read without following a link and within the report limit."""
    if not _SHA256.match(sha):
        return None
    try:
        fd, _ = open_evidence(_pending_folder(settings) / f"{sha}.yaml", settings.report_max_bytes)
    except UserError:
        return None
    with os.fdopen(fd, "rb") as handle:
        content = handle.read(settings.report_max_bytes + 1)
    return content if hashlib.sha256(content).hexdigest() == sha else None


def _forget(settings, sha: str | None) -> None:
    if sha and _SHA256.match(sha):
        (_pending_folder(settings) / f"{sha}.yaml").unlink(missing_ok=True)


def _past_context(exc: publishing.PastDeadlines, sha: str, name: str, chosen: str | None = None) -> dict:
    summary = exc.summary
    return {
        "past": summary,
        "past_sends": [send.line for send in summary.sends],
        "past_first": exc.lines[0],
        "past_choices": [{"value": c.value, "text": f"{CHOICE_NAMES[c]} (--{c.value})",
                          "hint": {"text": publishing.PAST_CHOICE_HELP[c][:1].upper() + publishing.PAST_CHOICE_HELP[c][1:] + "."},
                          "checked": chosen == c.value} for c in publishing.PastChoice],
        "pending": sha,
        "pending_name": name,
    }


async def _record_review(request: Request, svc, user: Principal, filename, content: bytes, refusal: Refusal):
    """A post-inspection review's report: recorded against the reviewed inspection's revisit, no follow-up started."""
    from ncpi_workflow import revisit_reports

    name = publishing.upload_name(filename)
    try:
        review = await revisit_reports.record_review_upload(svc.settings, await svc.client(), filename, content, by=user.email)
    except ReportInvalid as exc:
        for problem in exc.problems:
            refusal.add(FIELD, problem, sentence=False)
        return render(request, "publish.html", 400, title="Publish a report", **refusal.context())
    except UserError as exc:
        refusal.add(FIELD, str(exc), sentence=not str(exc).startswith(name))
        return render(request, "publish.html", 400, title="Publish a report", **refusal.context())
    if review.created:
        opened = "; the revisit was opened as of its fieldwork start" if review.opened_revisit else ""
        request.session["flash"] = (f"Recorded the post-inspection review of {review.inspection_id} (cycle {review.cycle}): "
                                    f"findings on {review.findings} recommendations{opened}.")
    else:
        request.session["flash"] = f"The review of cycle {review.cycle} of {review.inspection_id} is already recorded from this file; nothing changed."
    return RedirectResponse(f"/inspections/{review.inspection_id}#reviews", status_code=303)


@router.get("/publish")
async def publish_page(request: Request, user: Principal = Depends(admin_only)):
    return render(request, "publish.html", title="Publish a report")


@router.post("/publish")
async def publish(request: Request, user: Principal = Depends(admin_only)):
    svc = services(request)
    limit = svc.settings.report_max_bytes
    refusal = Refusal("publish")
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit + 64 * 1024:
        refusal.add(FIELD, f"The file is over the {limit:,}-byte limit for a report")
        return render(request, "publish.html", 413, title="Publish a report", **refusal.context())
    form = await checked_form(request, max_files=1, max_fields=10)
    upload = form.get(FIELD)
    chosen = form.get(PAST_FIELD)
    chosen = chosen if isinstance(chosen, str) and chosen else None
    pending = form.get("pending")
    pending = pending if isinstance(pending, str) and pending else None
    if (upload is None or isinstance(upload, str) or not upload.filename) and pending:
        # The choice for a report refused because its deadlines had passed: the same upload again.
        content = _kept(svc.settings, pending)
        filename = form.get("pending_name") if isinstance(form.get("pending_name"), str) else None
        if content is None:
            refusal.add(FIELD, "The file chosen before is no longer here: select the report file again")
            return render(request, "publish.html", 400, title="Publish a report", **refusal.context())
    else:
        if upload is None or isinstance(upload, str) or not upload.filename:
            refusal.add(FIELD, "Select a report file (YAML)")
            return render(request, "publish.html", 400, title="Publish a report", **refusal.context())
        if upload.size is not None and upload.size > limit:
            name = publishing.upload_name(upload.filename)
            refusal.add(FIELD, f"{name}: file is {upload.size:,} bytes, over the {limit:,}-byte limit for a report", sentence=False)
            return render(request, "publish.html", 400, title="Publish a report", **refusal.context())
        content = await upload.read(limit + 1)
        filename = upload.filename
    past = None
    if chosen is not None:
        try:
            past = publishing.PastChoice(chosen)
        except ValueError:
            refusal.add(PAST_FIELD, "Choose how to follow up a report whose deadlines have passed")
            return render(request, "publish.html", 400, title="Publish a report", **refusal.context())
    checked = publishing.check_upload(svc.settings, filename, content)
    if not checked.ok:
        for problem in checked.problems:
            refusal.add(FIELD, problem, sentence=False)
        return render(request, "publish.html", 400, title="Publish a report", **refusal.context())
    if checked.loaded.report.is_review:  # programme: PIR: recorded against the revisit (ncpi_workflow/revisit_reports.py)
        return await _record_review(request, svc, user, filename, content, refusal)
    try:
        result = await publishing.publish_upload(svc.settings, await svc.client(), filename, content, by=user.email, past=past)
    except publishing.PastDeadlines as exc:
        sha = _keep(svc.settings, content)
        refusal.add(PAST_FIELD, f"{len(exc.summary.passed)} of the report's deadlines have passed: choose how to follow it up")
        return render(request, "publish.html", 400, title="Publish a report", **refusal.context(),
                      **_past_context(exc, sha, publishing.upload_name(filename)))
    except ReportInvalid as exc:
        for problem in exc.problems:
            refusal.add(FIELD, problem, sentence=False)
        return render(request, "publish.html", 400, title="Publish a report", **refusal.context())
    except UserError as exc:
        refusal.add(FIELD, str(exc), sentence=not str(exc).startswith(publishing.upload_name(filename)))
        return render(request, "publish.html", 400, title="Publish a report", **refusal.context())
    _forget(svc.settings, pending)
    if result.started:
        how = {publishing.PastChoice.ADOPT: ", adopted: nothing was sent for the past",
               publishing.PastChoice.CATCH_UP: ", catching up from its publication date",
               publishing.PastChoice.ANCHOR_NOW: ", as if published now"}.get(past, "")
        request.session["flash"] = (f"Published {result.inspection_id}: its follow-up has started "
                                    f"({result.recommendations} recommendations{how}).")
    else:
        request.session["flash"] = f"{result.inspection_id} is already published from this file; nothing was started."
    return RedirectResponse(f"/inspections/{result.inspection_id}", status_code=303)
