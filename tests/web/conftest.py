"""The web app against a real database, through httpx's ASGI transport (the real FastAPI app, its
middleware and templates; nothing of ours replaced). Temporal is a closed port unless a test runs
the dev server: actions are then attempted and refused with "cannot reach Temporal"."""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

import httpx
import pytest

from ncpi_workflow import db, users
from ncpi_workflow.clocks import calendar_for_report, plan_report
from ncpi_workflow.forces import load_forces
from ncpi_workflow.policy import load_policy
from ncpi_workflow.report import load_report
from ncpi_workflow.settings import Settings
from ncpi_workflow.store import insert_report, load_reference_forces
from tests.conftest import ROOT, migrate
from tests.lifecycle_support import write_report

PASSWORD = "correct horse battery staple"
SECRET = "test-secret-key-of-at-least-thirty-two-characters"
FORCES = load_forces(ROOT / "config" / "forces.yaml")
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


class FakeClock:
    """The app's clock: seconds since the epoch, moved by the test."""

    def __init__(self, start: float = 1_800_000_000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def closed_port() -> int:
    from tests.postgres import free_port

    return free_port()


def web_settings(database_url: str, tmp_path: Path, **overrides) -> Settings:
    values = dict(
        database_url=database_url,
        data_dir=tmp_path / "data",
        secret_key=SECRET,
        temporal_address=f"127.0.0.1:{closed_port()}",
        task_queue="ncpi-web-test",
    )
    values.update(overrides)
    return Settings(**values)


async def seed_report(sessions, folder: Path, force: str, published: date, recommendations, actor: str = "test") -> str:
    """A report's records as `ncpi publish` writes them, without starting a workflow."""
    path = write_report(folder, force, published, recommendations)
    loaded = load_report(path, known_forces=set(FORCES), max_bytes=1 << 20)
    policy = load_policy(ROOT / "config" / "policy.toml")
    timeline = plan_report(published, [(r.ref, r.timeframe) for r in loaded.report.recommendations], policy,
                           calendar_for_report(policy, published))
    async with sessions.begin() as session:
        await load_reference_forces(session, FORCES)
        await insert_report(session, loaded, timeline, actor=actor, workflow_id=None)
    return loaded.report.inspection_id


_emails = itertools.count(1)


async def add_user(sessions, role: str, email: str | None = None) -> str:
    email = email or f"{role}{next(_emails)}@inspectorate.example"
    await users.add_user(sessions, email, role, PASSWORD, by="test")
    return email


@dataclass
class Browser:
    """One visitor: their own cookies, CSRF token and client address."""

    http: httpx.AsyncClient
    email: str | None = None
    responses: list = field(default_factory=list)

    async def get(self, path: str, **kwargs) -> httpx.Response:
        return await self.http.get(path, **kwargs)

    async def token(self, path: str = "/sign-in") -> str:
        page = await self.http.get(path)
        found = CSRF.search(page.text)
        assert found, f"no CSRF field on {path} ({page.status_code})"
        return found.group(1)

    async def post(self, path: str, data: dict | None = None, *, token: str | bool = True, files=None, from_page: str | None = None):
        data = dict(data or {})
        if token is True:
            data["csrf_token"] = await self.token(from_page or ("/" if self.email else "/sign-in"))
        elif token:
            data["csrf_token"] = token
        return await self.http.post(path, data=data, files=files)

    async def sign_in(self, email: str, password: str = PASSWORD, next: str | None = None) -> httpx.Response:
        data = {"email": email, "password": password}
        if next is not None:
            data["next"] = next
        response = await self.post("/sign-in", data, from_page="/sign-in")
        if response.status_code == 303:
            self.email = email
        return response

    async def aclose(self) -> None:
        await self.http.aclose()


def browser(app, base_url: str = "http://testserver", client=("127.0.0.1", 50000)) -> Browser:
    transport = httpx.ASGITransport(app=app, client=client)
    return Browser(httpx.AsyncClient(transport=transport, base_url=base_url, follow_redirects=False))


def error_summary(html: str) -> list[tuple[str, str]]:
    """(href, text) of each link in the page's GOV.UK error summary."""
    import html as htmlmod

    match = re.search(r'<div class="govuk-error-summary".*?</ul>', html, re.S)
    if not match:
        return []
    return [(href, htmlmod.unescape(" ".join(text.split())))
            for href, text in re.findall(r'<a href="([^"]+)">(.*?)</a>', match.group(0), re.S)]


@pytest.fixture
async def sqlite_sessions(tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path / 'web.db'}"
    await migrate(url)  # a copy of the session's migrated template
    async with db.open_database(url) as sessions:
        yield url, sessions


def london_today() -> date:
    from datetime import datetime

    from ncpi_workflow.formatting import LONDON

    return datetime.now(LONDON).date()


def days_ago(n: int) -> date:
    return london_today() - timedelta(days=n)
