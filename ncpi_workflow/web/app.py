"""The inspectors' web application (FastAPI, server-rendered with the GOV.UK Design System).

Every page works without JavaScript. Every action is a form that goes through `ncpi_workflow.app`
and the same Temporal Update (with its validator) as the CLI, with the signed-in user as `by`.
"""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager
from pathlib import Path
from datetime import date
from typing import Callable

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from urllib.parse import urlencode

from ncpi_workflow.settings import Settings
from ncpi_workflow.web import assets
from ncpi_workflow.web.auth import CsrfRefused, Forbidden, SignInRequired, current_user
from ncpi_workflow.web.rendering import build_environment, render, security_headers
from ncpi_workflow.web.services import Services, london_today
from ncpi_workflow.web.sessions import SignedSessionMiddleware

log = logging.getLogger("ncpi.web")

STATIC = Path(__file__).resolve().parent / "static"
ABSOLUTE_SESSION_SECONDS = 12 * 60 * 60
"""A session ends 12 hours after signing in, however active."""


def create_app(
    settings: Settings,
    *,
    secret_key: str | None = None,
    sessions=None,
    client=None,
    clock: Callable[[], float] = time.time,
    today: Callable[[], date] = london_today,
) -> FastAPI:
    """The app. `sessions` (a session factory) and `client` (Temporal) are made from the settings
    when not given; `clock` and `today` exist for tests and demonstrations."""
    from ncpi_workflow.web.server import session_secret

    services = Services(settings, sessions=sessions, client=client, clock=clock, today=today)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        try:
            yield
        finally:
            await services.close()

    app = FastAPI(title="NCPI follow-up", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.services = services
    app.state.templates = build_environment()
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    dist = assets.dist_dir()
    app.state.assets_ready = dist is not None
    if dist is not None:
        app.mount("/govuk", StaticFiles(directory=dist), name="govuk")
        app.mount("/assets", StaticFiles(directory=dist / "assets"), name="assets")
    else:
        log.warning("GOV.UK Frontend is not installed (%s): pages are served unstyled; run `make` or "
                    "`npm install` in the project folder", assets.DIST)

    app.add_middleware(
        SignedSessionMiddleware,
        secret_key=secret_key or session_secret(settings),
        idle_seconds=settings.web_session_minutes * 60,
        absolute_seconds=ABSOLUTE_SESSION_SECONDS,
        secure_always=settings.web_secure_cookies,
        clock=clock,
        # The portal: no session, the link is the credential; the public register: no session, no cookie.
        skip_prefixes=("/govuk/", "/assets/", "/static/", "/healthz", "/portal", "/register"),
    )
    from ncpi_workflow.web.routes.portal import PortalHeaders

    app.add_middleware(PortalHeaders)

    @app.exception_handler(SignInRequired)
    async def _sign_in(request: Request, exc: SignInRequired):
        target = "/sign-in"
        if exc.next_url and exc.next_url != "/":
            target += "?" + urlencode({"next": exc.next_url})
        return RedirectResponse(target, status_code=303)

    @app.exception_handler(Forbidden)
    async def _forbidden(request: Request, exc: Forbidden):
        return render(request, "error.html", 403, title="You cannot do this",
                      message="Your role does not allow this. Ask an administrator if you need it.")

    @app.exception_handler(CsrfRefused)
    async def _csrf(request: Request, exc: CsrfRefused):
        await current_user(request)
        return render(request, "error.html", 403, title="This form has expired",
                      message="The form was not sent from this service's page, or your session changed since it was "
                              "shown. Go back, reload the page and try again.")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        if request.url.path.startswith(("/govuk/", "/assets/", "/static/")) or "session" not in request.scope:
            response = PlainTextResponse(str(exc.detail), status_code=exc.status_code)
            security_headers(response)
            return response
        await current_user(request)
        titles = {404: "Page not found", 405: "Not allowed"}
        return render(request, "error.html", exc.status_code, title=titles.get(exc.status_code, "Something went wrong"),
                      message=str(exc.detail) if exc.status_code != 404 else "If you typed the address, check it is correct.")

    from sqlalchemy.exc import OperationalError, ProgrammingError

    @app.exception_handler(OperationalError)
    @app.exception_handler(ProgrammingError)
    async def _database(request: Request, exc: Exception):
        from ncpi_workflow.app.temporal_calls import database_errors
        from ncpi_workflow.errors import UserError

        try:
            with database_errors(settings):
                raise exc
        except UserError as reason:
            message = str(reason)
        except Exception:  # not a database problem after all
            message = f"internal error: {type(exc).__name__}"
        log.error("web: %s %s: %s", request.method, request.url.path, message)
        request.state.user = None
        return render(request, "error.html", 503, title="The service is not available",
                      message=message[:1].upper() + message[1:])

    from ncpi_workflow.web.routes import account, dashboard, forces, inspections, outbox, portal, publish, recommendations, staff

    for module in (account, dashboard, forces, inspections, recommendations, outbox, publish, staff, portal):
        app.include_router(module.router)
    from ncpi_workflow.web.routes import inbox  # replies by email that were not recorded (ncpi_workflow/inbound/)

    app.include_router(inbox.router)
    from ncpi_workflow.web.routes import register  # the public register: no sign-in (ncpi_workflow/register.py)

    app.include_router(register.router)
    from ncpi_workflow.web.routes import metrics  # the figures and their pictures (ncpi_workflow/metrics.py)

    app.include_router(metrics.router)
    return app
