"""A force: its inspections and their follow-up state."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Request

from ncpi_workflow.app import read_models
from ncpi_workflow.web.auth import Principal, services, signed_in
from ncpi_workflow.web.rendering import render

router = APIRouter()


@router.get("/forces/{code}")
async def force(request: Request, code: str, user: Principal = Depends(signed_in)):
    try:
        page = await read_models.force_page(services(request).sessions, code)
    except LookupError:
        raise HTTPException(404) from None
    return render(request, "force.html", title=page.force.name, page=page)
