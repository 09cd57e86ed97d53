"""The public register at /register: read-only, no sign-in, the same pages as the static export
(`ncpi register export`) built from the same document (ncpi_workflow/register.py)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ncpi_workflow.app import read_models
from ncpi_workflow.register import (
    STATUSES,
    RegisterDocument,
    areas_csv,
    build_register,
    national_by_theme,
    page_context,
    register_csv,
    register_json,
)
from ncpi_workflow.web.auth import services
from ncpi_workflow.web.rendering import render, security_headers
from ncpi_workflow.web.services import london_today

router = APIRouter()


class WebUrls:
    static = False
    stylesheet = "/govuk/govuk-frontend.min.css"
    assets = "/assets"

    @staticmethod
    def index(force: str | None = None, status: str | None = None, theme: str | None = None) -> str:
        query = {k: v for k, v in (("force", force), ("status", status), ("theme", theme)) if v}
        return "/register" + ("?" + urlencode(query) if query else "")

    @staticmethod
    def recommendation(rec_id: str) -> str:
        return f"/register/{quote(rec_id)}"

    @staticmethod
    def themes() -> str:
        return "/register/themes"

    @staticmethod
    def download(name: str) -> str:
        return f"/register/{name}"


async def _document(request: Request) -> RegisterDocument:
    svc = services(request)
    if svc.today is london_today:
        now = datetime.fromtimestamp(svc.clock(), timezone.utc)
        today = await read_models.calendar_today(svc.sessions, svc.client, now)
    else:
        today = svc.today()
    async with svc.sessions() as session:
        return await build_register(session, today=today)


def _page(request: Request, template: str, doc: RegisterDocument, status_code: int = 200, **context):
    request.state.user = None  # public, and no session here (the app's middleware skips /register)
    return render(request, template, status_code, **page_context(doc, WebUrls, **context))


@router.get("/register")
async def register_index(request: Request, force: str | None = None, status: str | None = None, theme: str | None = None):
    doc = await _document(request)
    filters = {}
    problems = []
    if force:
        if force not in dict(doc.forces()):
            problems.append("force: no recommendation of that force is on the register")
        filters["force"] = force
    if status:
        if status not in STATUSES:
            problems.append(f"status: not one of {', '.join(STATUSES)}")
        filters["status"] = status
    if theme:
        if theme not in doc.themes:
            problems.append("theme: not a theme of config/themes.yaml")
        filters["theme"] = theme
    if problems:
        return _page(request, "register_message.html", doc, 400, title="This page cannot be shown",
                     message="Check the filter: " + "; ".join(problems) + ".")
    return _page(request, "register_index.html", doc, recommendations=doc.filtered(**filters), filters=filters)


@router.get("/register/themes")
async def register_themes(request: Request):
    doc = await _document(request)
    return _page(request, "register_themes.html", doc, rows=national_by_theme(doc))


def _download(content: str, media_type: str, name: str) -> Response:
    response = Response(content, media_type=media_type, headers={"Content-Disposition": f'attachment; filename="{name}"'})
    security_headers(response)
    return response


@router.get("/register/register.json")
async def register_download_json(request: Request):
    doc = await _document(request)
    return _download(json.dumps(register_json(doc), indent=2, ensure_ascii=False) + "\n", "application/json", "register.json")


@router.get("/register/register.csv")
async def register_download_csv(request: Request):
    doc = await _document(request)
    return _download(register_csv(doc), "text/csv; charset=utf-8", "register.csv")


@router.get("/register/areas-for-improvement.csv")
async def register_download_areas(request: Request):
    doc = await _document(request)
    return _download(areas_csv(doc), "text/csv; charset=utf-8", "areas-for-improvement.csv")


@router.get("/register/{rec_id}")
async def register_recommendation(request: Request, rec_id: str):
    doc = await _document(request)
    rec = doc.recommendation(rec_id)
    if rec is None:
        return _page(request, "register_message.html", doc, 404, title="Page not found",
                     message="No recommendation on the register has this address. If you typed it, check it is correct.")
    return _page(request, "register_recommendation.html", doc, rec=rec, inspection=doc.inspection(rec.inspection_id))
