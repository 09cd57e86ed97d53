"""The loopback SMTP capture of the fault-injection suite (bench/chaos.py), in a process of its own
so that the suite can stop it for an SMTP outage and start it again on the same port.

    python -m bench.chaos_smtp PORT FOLDER

Every message is kept as FOLDER/NNNNNN.eml (numbering carries on across restarts), and one JSON
line is appended to FOLDER/index.jsonl before the server answers 250: the wall-clock time, the
file, the Message-ID header, the SHA-256 of the bytes and the client's address (host:port, one per
SMTP connection). SIGTERM stops the server (an outage: every connection is closed) and the process.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import json
import signal
import sys
import threading
import time
from pathlib import Path

from ncpi_workflow.smtp_capture import CaptureHandler


class IndexedCapture(CaptureHandler):
    def __init__(self, folder: Path):
        super().__init__(folder)
        self.index = (folder / "index.jsonl").open("a", buffering=1)
        self._index_lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):
        number = self._next_file
        answer = await super().handle_DATA(server, session, envelope)
        data = envelope.content if isinstance(envelope.content, bytes) else envelope.content.encode()
        header = email.message_from_bytes(data, policy=email.policy.compat32).get("Message-ID", "")
        peer = session.peer if isinstance(session.peer, tuple) else (str(session.peer), 0)
        line = {"t": time.time(), "file": f"{number:06d}.eml", "message_id": str(header).strip(),
                "sha256": hashlib.sha256(data).hexdigest(), "peer": f"{peer[0]}:{peer[1]}", "bytes": len(data)}
        with self._index_lock:
            self.index.write(json.dumps(line) + "\n")
        return answer


def main() -> None:
    from aiosmtpd.controller import Controller

    port, folder = int(sys.argv[1]), Path(sys.argv[2])
    folder.mkdir(parents=True, exist_ok=True)
    handler = IndexedCapture(folder)
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print("listening", flush=True)
    stop.wait()
    controller.stop()
    handler.index.close()


if __name__ == "__main__":
    main()
