"""A loopback SMTP server that keeps every message: the embedded default for one machine, and the
real SMTP peer of the tests. It never relays anything anywhere."""

from __future__ import annotations

import email
import email.policy
import threading
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

from aiosmtpd.controller import Controller


@dataclass
class Captured:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes

    @property
    def message(self) -> EmailMessage:
        return email.message_from_bytes(self.data, policy=email.policy.default)


class CaptureHandler:
    """Accepts and keeps messages; optionally refuses some recipients (for failure drills)."""

    def __init__(self, folder: Path | None = None):
        self.folder = folder
        self.messages: list[Captured] = []
        self.refuse: dict[str, str] = {}
        """Recipient address -> SMTP answer, e.g. '550 5.1.1 No such mailbox'."""
        self.transactions = 0
        self._lock = threading.Lock()
        self._next_file = 1
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
            # A restarted capture carries on numbering: earlier messages are never overwritten.
            numbers = [int(p.stem) for p in folder.glob("*.eml") if p.stem.isdigit()]
            self._next_file = max(numbers, default=0) + 1

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        captured = Captured(envelope.mail_from, list(envelope.rcpt_tos), envelope.content)
        with self._lock:
            self.messages.append(captured)
            self.transactions += 1
            number, self._next_file = self._next_file, self._next_file + 1
        if self.folder is not None:
            (self.folder / f"{number:06d}.eml").write_bytes(envelope.content)
        return "250 Message accepted for delivery"


def start_capture(host: str = "127.0.0.1", port: int = 8025, folder: Path | None = None) -> tuple[Controller, CaptureHandler]:
    handler = CaptureHandler(folder)
    controller = Controller(handler, hostname=host, port=port)
    controller.start()
    return controller, handler
