"""`ncpi inbound smtp`: an SMTP server (aiosmtpd) that takes replies in and records them.

It listens on NCPI_INBOUND_SMTP_HOST:NCPI_INBOUND_SMTP_PORT (default 127.0.0.1:2525) in the
process's own event loop (the receiver's database engine and Temporal client live there too), and
accepts mail only for the reply address (NCPI_REPLY_TO, with or without a plus part): any other
recipient gets 550, so it is nobody's open mailbox. A message over NCPI_INBOUND_MAX_BYTES is
refused by the server (552) before it is read to the end. Every accepted message is answered only
once it has been processed: 250 when recorded, triaged, automatic or already received; 451 (try
again later) when Temporal or the database cannot be reached, so the sending relay delivers it
again and nothing is lost.

Put it behind the organisation's MX (a relay that does spam filtering and SPF/DKIM/DMARC checks
and forwards the reply address's domain here), not on the open internet.
"""

from __future__ import annotations

import asyncio
import logging

from aiosmtpd.smtp import SMTP

from ncpi_workflow.inbound.parsing import is_reply_address
from ncpi_workflow.inbound.processing import Receiver, TryLater

log = logging.getLogger("ncpi.inbound")


class InboundHandler:
    def __init__(self, receiver: Receiver):
        self.receiver = receiver
        self.results = []
        """What each message became (for tests and logs), newest last."""

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if not is_reply_address(address, self.receiver.settings.reply_to):
            return "550 5.1.1 No such mailbox here: this server takes replies for the inspectorate's follow-up only"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        data = envelope.original_content or envelope.content
        if isinstance(data, str):
            data = data.encode("utf-8", "surrogateescape")
        try:
            result = await self.receiver.receive(
                data, channel="smtp", envelope_from=envelope.mail_from, envelope_to=list(envelope.rcpt_tos)
            )
        except TryLater as exc:
            log.warning("inbound smtp: message deferred (451): %s", exc)
            return "451 4.3.0 Temporarily unable to record the reply; please try again later"
        except Exception:  # noqa: BLE001 - never a traceback to the client; the relay tries again
            log.exception("inbound smtp: message deferred (451) after an unexpected error")
            return "451 4.3.0 Temporarily unable to record the reply; please try again later"
        self.results.append(result)
        return "250 2.0.0 Message accepted"


async def start_server(receiver: Receiver, host: str, port: int) -> tuple[asyncio.AbstractServer, InboundHandler]:
    """Listen in the running event loop; close the returned server to stop."""
    handler = InboundHandler(receiver)
    limit = receiver.settings.inbound_max_bytes
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, data_size_limit=limit, hostname="ncpi-inbound", ident="ncpi-followup inbound"),
        host=host, port=port,
    )
    return server, handler


async def serve(settings, stop: asyncio.Event | None = None, *, ready=None) -> None:
    """`ncpi inbound smtp`: connect to the database and Temporal, then serve until `stop` is set."""
    from ncpi_workflow import db
    from ncpi_workflow.app.temporal_calls import connect

    client = await connect(settings)
    async with db.open_database(settings.database_url) as sessions:
        receiver = Receiver(settings, sessions, client)
        server, _ = await start_server(receiver, settings.inbound_smtp_host, settings.inbound_smtp_port)
        if ready is not None:
            ready(server)
        try:
            if stop is None:
                stop = asyncio.Event()
            await stop.wait()
        finally:
            server.close()
            await server.wait_closed()
