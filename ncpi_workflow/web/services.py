"""What the web app's routes share: settings, one database engine, one Temporal client, the clock."""

from __future__ import annotations

import asyncio
import time
from datetime import date, datetime
from typing import Callable

from ncpi_workflow.errors import UserError
from ncpi_workflow.formatting import LONDON

RETRY_CONNECT_SECONDS = 5.0
"""After Temporal could not be reached, pages say so at once for this long instead of waiting again."""


def london_today() -> date:
    return datetime.now(LONDON).date()


class Services:
    def __init__(
        self,
        settings,
        *,
        sessions=None,
        client=None,
        clock: Callable[[], float] = time.time,
        today: Callable[[], date] = london_today,
    ):
        self.settings = settings
        self.clock = clock
        self.today = today
        self._sessions = sessions
        self._engine = None
        self._client = client
        self._client_lock: asyncio.Lock | None = None
        self._failed: tuple[float, UserError] | None = None
        from ncpi_workflow.web.auth import SignInThrottle

        self.throttle = SignInThrottle(clock)

    @property
    def sessions(self):
        """The session factory (an engine of the app's own, made on first use)."""
        if self._sessions is None:
            from ncpi_workflow import db

            self._engine = db.create_engine(self.settings.database_url)
            self._sessions = db.session_factory(self._engine)
        return self._sessions

    async def client(self):
        """The Temporal client, connected on first use; a UserError while Temporal cannot be reached."""
        if self._client is not None:
            return self._client
        if self._failed is not None and time.monotonic() - self._failed[0] < RETRY_CONNECT_SECONDS:
            raise self._failed[1]
        if self._client_lock is None:
            self._client_lock = asyncio.Lock()
        async with self._client_lock:
            if self._client is None:
                from ncpi_workflow.app.temporal_calls import connect

                try:
                    self._client = await connect(self.settings)
                except UserError as exc:
                    self._failed = (time.monotonic(), exc)
                    raise
                self._failed = None
        return self._client

    async def close(self) -> None:
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None
            self._sessions = None
