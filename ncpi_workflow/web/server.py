"""Running the web app: `ncpi web` (uvicorn on NCPI_WEB_HOST:NCPI_WEB_PORT), and `running_web`
for `ncpi dev` to serve it beside the worker in one event loop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator

from ncpi_workflow.errors import UserError
from ncpi_workflow.settings import Settings

SECRET_FILE = "web-secret.key"


def session_secret(settings: Settings) -> str:
    """NCPI_SECRET_KEY, or a key kept in DATA_DIR/web-secret.key (made on first use, owner-only)."""
    if settings.secret_key:
        return settings.secret_key
    path = Path(settings.data_dir) / SECRET_FILE
    try:
        key = path.read_text().strip()
        if len(key) >= 32:
            return key
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise UserError(f"cannot read the session key {path}: {exc.strerror} (or set NCPI_SECRET_KEY)") from None
    key = secrets.token_urlsafe(48)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(key + "\n")
    except FileExistsError:  # another process made it first: use theirs
        return path.read_text().strip()
    except OSError as exc:
        raise UserError(f"cannot write the session key {path}: {exc.strerror} (or set NCPI_SECRET_KEY)") from None
    return key


def check_listen(host: str, port: int) -> None:
    """A one-line UserError when the address cannot be listened on (taken, or not this machine's)."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UserError(f"the web app cannot listen on {host}:{port} (NCPI_WEB_HOST, NCPI_WEB_PORT): {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise UserError(
                f"the web app cannot listen on {host}:{port} (NCPI_WEB_HOST, NCPI_WEB_PORT): {exc.strerror.lower()}"
            ) from None


def uvicorn_config(settings: Settings, app=None, **overrides):
    import uvicorn

    from ncpi_workflow.web.app import create_app

    options = dict(
        host=settings.web_host,
        port=settings.web_port,
        proxy_headers=True,  # X-Forwarded-Proto/For from a proxy on loopback (FORWARDED_ALLOW_IPS for others)
        server_header=False,
        access_log=False,
        log_level="warning",
        lifespan="on",
    )
    options.update(overrides)
    return uvicorn.Config(app or create_app(settings), **options)


def serve(settings: Settings, announce=None) -> None:
    """`ncpi web`: serve until Ctrl-C or SIGTERM. `announce()` is called once the address is known to be free."""
    import uvicorn

    import signal

    session_secret(settings)  # refuse at once, in one line, when the key cannot be had
    check_listen(settings.web_host, settings.web_port)
    server = uvicorn.Server(uvicorn_config(settings))
    if announce is not None:
        announce()
    # Our own handlers: Ctrl-C and SIGTERM end the server cleanly and the command exits 0 (uvicorn's
    # would re-raise the signal after shutting down).
    server.capture_signals = contextlib.nullcontext

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, lambda: setattr(server, "should_exit", True))
        try:
            await server.serve()
        except SystemExit:  # uvicorn exits when it cannot bind
            pass

    asyncio.run(main())
    if not server.started:
        raise UserError(f"the web app could not listen on {settings.web_host}:{settings.web_port} (NCPI_WEB_HOST, NCPI_WEB_PORT)")


@asynccontextmanager
async def running_web(settings: Settings, app=None, **overrides) -> AsyncIterator[str]:
    """Serve the web app in this event loop until the block ends; yields its address. For `ncpi dev`
    (signals stay with the caller) and for tests on a free port."""
    import uvicorn

    config = uvicorn_config(settings, app, **overrides)
    server = uvicorn.Server(config)
    server.capture_signals = contextlib.nullcontext  # Ctrl-C and SIGTERM stay the caller's
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                try:
                    task.result()
                except SystemExit:  # uvicorn exits when it cannot bind
                    pass
                raise UserError(f"the web app could not listen on {config.host}:{config.port} (NCPI_WEB_HOST, NCPI_WEB_PORT)")
            await asyncio.sleep(0.05)
        yield f"http://{config.host}:{config.port}"
    finally:
        server.should_exit = True
        try:
            await asyncio.wait_for(task, 10)
        except (asyncio.TimeoutError, SystemExit):
            task.cancel()
