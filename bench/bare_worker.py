"""A worker for the bare baselines, in its own process like `ncpi worker`:
`python -m bench.bare_worker ADDRESS TASK_QUEUE ALIVE_FILE [DATABASE_URL [SMTP_PORT]]` runs until SIGTERM.

With DATABASE_URL (a SQLAlchemy async URL) it also runs the same-work activities (bench/bare_work.py):
their tables are created there if absent; their emails go to the SMTP server on 127.0.0.1:SMTP_PORT."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from temporalio.client import Client
from temporalio.worker import Worker

from bench.bare import BareFollowUp, BareWorkflow, bare_nothing


async def serve(address: str, task_queue: str, alive_file: Path, database_url: str | None = None,
                smtp_port: int | None = None) -> None:
    client = await Client.connect(address)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    activities: list = [bare_nothing]
    work = None
    if database_url:
        from bench.bare_work import BareWork, create_schema

        await create_schema(database_url)
        work = BareWork(database_url, smtp_port)
        activities += work.all()
    try:
        async with Worker(client, task_queue=task_queue, workflows=[BareWorkflow, BareFollowUp], activities=activities):
            alive_file.touch()
            await stop.wait()
    finally:
        if work is not None:
            await work.close()


if __name__ == "__main__":
    args = sys.argv[1:]
    asyncio.run(serve(args[0], args[1], Path(args[2]), args[3] if len(args) > 3 else None,
                      int(args[4]) if len(args) > 4 else None))
    os._exit(0)  # the Temporal SDK can crash the interpreter at exit (sdk-python issue 300)
