"""The loopback SMTP capture of the fault-injection suite (bench/chaos.py), in a process of its own
so that the suite can stop it for an SMTP outage and start it again on the same port.

    python -m bench.chaos_smtp PORT FOLDER

Every message is kept as FOLDER/NNNNNN.eml (numbering carries on across restarts), and one JSON
line is appended to FOLDER/index.jsonl before the server answers 250: the wall-clock time, the
file, the Message-ID header, the SHA-256 of the bytes and the client's address (host:port, one per
SMTP connection). SIGTERM stops the server (an outage) and the process: new messages are refused
with 421 for half a second, so that every message kept is answered, then every connection is closed.

**The kill, aimed.** When FOLDER/kill-request.json exists (`{"id": K, "pid": P, "peers": [...]}`,
written by the suite with the SMTP connections of worker process P), the next message to arrive on
one of those connections is stored and indexed, then P gets SIGKILL *before* the server answers
250: the relay has the message and the worker dies without knowing, the one window no design
closes. The request is removed and FOLDER/kill-K.json says when, on which connection, and which
message. Aimed from here, the kill lands in that window every time, a few microseconds after the
message is kept; aimed from another process it would land after the worker had recorded it.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

from ncpi_workflow.smtp_capture import CaptureHandler

KILL_REQUEST = "kill-request.json"


class IndexedCapture(CaptureHandler):
    def __init__(self, folder: Path):
        super().__init__(folder)
        self.index = (folder / "index.jsonl").open("a", buffering=1)
        self._index_lock = threading.Lock()

    stopping = False
    """Set on SIGTERM: new messages are refused (421) while those already being kept are answered."""

    async def handle_DATA(self, server, session, envelope):
        if self.stopping:
            return "421 4.3.2 Service shutting down"
        number = self._next_file
        answer = await super().handle_DATA(server, session, envelope)
        data = envelope.content if isinstance(envelope.content, bytes) else envelope.content.encode()
        header = email.message_from_bytes(data, policy=email.policy.compat32).get("Message-ID", "")
        peer = session.peer if isinstance(session.peer, tuple) else (str(session.peer), 0)
        line = {"t": time.time(), "file": f"{number:06d}.eml", "message_id": str(header).strip(),
                "sha256": hashlib.sha256(data).hexdigest(), "peer": f"{peer[0]}:{peer[1]}", "bytes": len(data)}
        with self._index_lock:
            self.index.write(json.dumps(line) + "\n")
        self._kill_if_asked(line)
        return answer

    def _kill_if_asked(self, line: dict) -> None:
        """SIGKILL to the worker that sent this message, if the suite asked for it (see the module)."""
        request = self.folder / KILL_REQUEST
        try:
            asked = json.loads(request.read_text())
        except (OSError, ValueError):
            return  # none (or being replaced: the next message looks again)
        if line["peer"] not in asked.get("peers", ()):
            return
        try:
            request.unlink()
        except FileNotFoundError:
            return  # withdrawn meanwhile
        try:
            os.kill(int(asked["pid"]), signal.SIGKILL)
            outcome = "killed"
        except ProcessLookupError:
            outcome = "already gone"
        done = {"t": time.time(), "outcome": outcome, "peer": line["peer"], "message_id": line["message_id"],
                "file": line["file"], "message_at": line["t"]}
        target = self.folder / f"kill-{asked['id']}.json"
        target.with_suffix(".tmp").write_text(json.dumps(done))
        target.with_suffix(".tmp").replace(target)


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
    # Like a relay shutting down: refuse new messages, let those being kept get their 250, then close
    # every connection. A message kept but never answered would be sent again and counted as a
    # duplicate of the outage; only the aimed kill leaves one (see above).
    handler.stopping = True
    time.sleep(0.5)
    controller.stop()
    handler.index.close()


if __name__ == "__main__":
    main()
