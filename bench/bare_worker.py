"""A worker for the bare baselines, in its own process like `ncpi worker`:
`python -m bench.bare_worker ADDRESS TASK_QUEUE ALIVE_FILE` runs until SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from temporalio.client import Client
from temporalio.worker import Worker

from bench.bare import BareFollowUp, BareWorkflow, bare_nothing


async def serve(address: str, task_queue: str, alive_file: Path) -> None:
    client = await Client.connect(address)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with Worker(client, task_queue=task_queue, workflows=[BareWorkflow, BareFollowUp], activities=[bare_nothing]):
        alive_file.touch()
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1], sys.argv[2], Path(sys.argv[3])))
    os._exit(0)  # the Temporal SDK can crash the interpreter at exit (sdk-python issue 300)
