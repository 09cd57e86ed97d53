"""Publish a report: upload its YAML. A bad file shows the same one-line-per-problem errors as
`ncpi validate` and starts nothing."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse

from ncpi_workflow.app import publishing
from ncpi_workflow.errors import UserError
from ncpi_workflow.report import ReportInvalid
from ncpi_workflow.web.auth import Principal, admin_only, checked_form, services
from ncpi_workflow.web.forms import Refusal
from ncpi_workflow.web.rendering import render

router = APIRouter()

FIELD = "report"


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
    if upload is None or isinstance(upload, str) or not upload.filename:
        refusal.add(FIELD, "Select a report file (YAML)")
        return render(request, "publish.html", 400, title="Publish a report", **refusal.context())
    if upload.size is not None and upload.size > limit:
        name = publishing.upload_name(upload.filename)
        refusal.add(FIELD, f"{name}: file is {upload.size:,} bytes, over the {limit:,}-byte limit for a report", sentence=False)
        return render(request, "publish.html", 400, title="Publish a report", **refusal.context())
    content = await upload.read(limit + 1)
    checked = publishing.check_upload(svc.settings, upload.filename, content)
    if not checked.ok:
        for problem in checked.problems:
            refusal.add(FIELD, problem, sentence=False)
        return render(request, "publish.html", 400, title="Publish a report", **refusal.context())
    try:
        result = await publishing.publish_upload(svc.settings, await svc.client(), upload.filename, content, by=user.email)
    except ReportInvalid as exc:
        for problem in exc.problems:
            refusal.add(FIELD, problem, sentence=False)
        return render(request, "publish.html", 400, title="Publish a report", **refusal.context())
    except UserError as exc:
        refusal.add(FIELD, str(exc), sentence=not str(exc).startswith(publishing.upload_name(upload.filename)))
        return render(request, "publish.html", 400, title="Publish a report", **refusal.context())
    if result.started:
        request.session["flash"] = (f"Published {result.inspection_id}: its follow-up has started "
                                    f"({result.recommendations} recommendations).")
    else:
        request.session["flash"] = f"{result.inspection_id} is already published from this file; nothing was started."
    return RedirectResponse(f"/inspections/{result.inspection_id}", status_code=303)
