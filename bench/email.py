"""Email benchmark (issue 6, item 6; issue 15): notifications per second to the loopback SMTP server
(ncpi_workflow.smtp_capture, aiosmtpd in a thread of this process) over one reused connection
(ncpi_workflow.mailer.Mailer) against a baseline of one connection per message (aiosmtplib.send),
run in the same invocation; and the delivery activity (DeliveryActivities.deliver_notification)
for a quarter as many notifications, against `Mailer.send` alone.

The delivery rows measure what a worker's delivery does with rows recorded through the event path
(`RecordActivities.record_notification` with the worker's `OutboxRenderer`, activities/rendering.py):
the message was rendered, its access links issued (a portal link and a plus-addressed Reply-To) and
its bytes stored when it was recorded, so the timed part is the delivery's hot path only: take the
turn on the SMTP connection, lease the row and read its bytes (one statement), fill in the links'
tokens, send, mark sent. The recording is not timed. For comparison, `delivery_path_render_on_delivery`
times rows recorded without a renderer (as before issue 15, and as rows from older workers): the
delivery then reads the email's context, renders both templates, builds MIME and issues the links
at its first attempt. Each on SQLite and, when PostgreSQL's binaries are installed, on a throwaway
PostgreSQL cluster (tests/postgres.py). The delivery holds the SMTP connection from a message's send
until it is marked sent (at most the message in flight is at risk when a worker dies), so its rate
includes the mark-sent round trip of every message in turn; `Mailer.send` alone includes neither
the database nor the heartbeat.

Slow relay: the same two measurements against an SMTP server that takes 50 ms per message
(`SLOW_SMTP_SECONDS`, the aiosmtpd handler sleeps before accepting), as a real relay over a network
does: there the relay's time dominates both, and the ratio says what the delivery adds to it.

`.venv/bin/python -m bench.email [--quick]` prints JSON (2,000 messages, 500 deliveries, 100 on the
slow relay; quick: 200, 50, 20).
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import aiosmtplib
from sqlalchemy import func, select

from activities.delivery import DeliveryActivities, DeliverySettings
from activities.records import InspectorateAddresses, RecordActivities
from activities.rendering import OutboxRenderer
from bench.common import ROOT
from ncpi_workflow import db
from ncpi_workflow.access_links import LinkSettings
from ncpi_workflow.clocks import calendar_for_report, plan_report
from ncpi_workflow.forces import load_forces
from ncpi_workflow.lifecycle import NotificationRequest
from ncpi_workflow.mailer import Mailer, SmtpConfig, build_message, message_id_for
from ncpi_workflow.models import AccessLink, Notification, utcnow
from ncpi_workflow.policy import Policy
from ncpi_workflow.report import load_report
from ncpi_workflow.smtp_capture import CaptureHandler, start_capture
from ncpi_workflow.store import insert_report, load_reference_forces
from tests.postgres import free_port

MAIL_FROM = "ncpi-followup@inspectorate.example"
REPLY_TO = "ncpi-replies@inspectorate.example"
LINKS = LinkSettings(key=b"bench-email-link-key-of-32-bytes-at-least", web_url="http://127.0.0.1:8000", reply_to=REPLY_TO)
"""As the worker's (ncpi_workflow/service/worker.py, `LinkSettings.from_settings`), with a fixed key."""
CUMBRIA = ROOT / "examples" / "cumbria-2017.yaml"
TEXT = ("Recommendation R2 of the Cumbria Constabulary child protection inspection is due on "
        "Wednesday 26 April 2017. Please send your update to the inspectorate.\n") * 8


def _messages(count: int, tag: str) -> list:
    out = []
    for i in range(count):
        key = f"bench/{tag}/{i}"
        out.append(build_message(
            mail_from=MAIL_FROM, reply_to=None, to=["liaison@cumbria.police.example"],
            subject=f"Reminder {i}: Recommendation R2 due Wednesday 26 April 2017", text=TEXT,
            html="<html><body>" + "<p>" + TEXT.replace("\n", "</p><p>") + "</p></body></html>",
            message_id=message_id_for(key, MAIL_FROM), reference=key,
        ))
    return out


def _mailer(port: int) -> Mailer:
    return Mailer(SmtpConfig("127.0.0.1", port, None, None, False, False, 10.0, 0.0, 30.0))


def _cpu_ms(cpu_seconds: float, count: int) -> float:
    return round(cpu_seconds * 1000 / count, 2)


CPU_MEANS = ("process CPU time per message over the timed part (this process's threads, the loopback "
             "server's included): indicative where the wall-clock rate is not, on a loaded machine")

_last_cpu: dict[str, float] = {}


async def _reused(port: int, messages: list) -> tuple[float, int]:
    mailer = _mailer(port)
    started, cpu = time.perf_counter(), time.process_time()
    for message in messages:
        await mailer.send(message)
    seconds = time.perf_counter() - started
    _last_cpu["reused"] = time.process_time() - cpu
    await mailer.close()
    return seconds, mailer.connections_opened


async def _one_per_message(port: int, messages: list) -> float:
    started = time.perf_counter()
    for message in messages:
        await aiosmtplib.send(message, hostname="127.0.0.1", port=port, timeout=10.0)
    return time.perf_counter() - started


SLOW_SMTP_SECONDS = 0.05
"""The slow relay's time per message."""

INSPECTORATE = InspectorateAddresses("ncpi-inspectors@inspectorate.example", "lead-hmi@inspectorate.example")


class SlowHandler(CaptureHandler):
    """The capture server's handler, taking SLOW_SMTP_SECONDS over each message before accepting it."""

    async def handle_DATA(self, server, session, envelope):
        await asyncio.sleep(SLOW_SMTP_SECONDS)
        return await super().handle_DATA(server, session, envelope)


def _start_slow_capture(port: int):
    from aiosmtpd.controller import Controller

    handler = SlowHandler()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    return controller, handler


def _settings() -> DeliverySettings:
    return DeliverySettings(MAIL_FROM, REPLY_TO, INSPECTORATE.inspectors, None, links=LINKS)


async def _delivery_path(port: int, count: int, url: str, *, rendered_at_record: bool = True) -> dict:
    """The Cumbria report and `count` pending reminders about R2, recorded as a worker records them (through
    `record_notification`, with the worker's renderer unless not `rendered_at_record`), then all delivered
    at once, timed."""
    await db.upgrade(url)
    forces = load_forces(ROOT / "config" / "forces.yaml")
    loaded = load_report(CUMBRIA, known_forces=set(forces), max_bytes=1 << 20)
    policy = Policy()
    timeline = plan_report(loaded.report.published, [(r.ref, r.timeframe) for r in loaded.report.recommendations],
                           policy, calendar_for_report(policy, loaded.report.published))
    async with db.open_database(url) as sessions:
        async with sessions.begin() as session:
            await load_reference_forces(session, forces)
            await insert_report(session, loaded, timeline, actor="bench")
        renderer = OutboxRenderer(sessions, _settings(), INSPECTORATE.by_role) if rendered_at_record else None
        records = RecordActivities(sessions, INSPECTORATE, renderer=renderer)
        recorded_s = time.perf_counter()
        ids = []
        for i in range(count):
            ids.append(await records.record_notification(NotificationRequest(
                idempotency_key=f"ncpi/CUM/2017-01-26/R2/c1/bench/{i}", kind="reminder",
                inspection_id="CUM-2017-01-26", recommendation_id="CUM-2017-01-26-R2", recipients=("liaison_officer",),
                subject=f"Reminder {i}: Recommendation R2 due Wednesday 26 April 2017", scheduled_for=utcnow(),
                context={"deadline": "recommendation", "due": "2017-04-26", "working_days": 3, "cycle": 1},
            )))
        recorded_s = time.perf_counter() - recorded_s
        async with sessions() as session:
            prerendered = await session.scalar(
                select(func.count()).select_from(Notification).where(Notification.rendered.is_not(None)))
        mailer = _mailer(port)
        activities = DeliveryActivities(sessions, mailer, _settings())
        started, cpu = time.perf_counter(), time.process_time()
        # Concurrently, as a worker runs a morning's burst of activities (the Mailer serialises the sends).
        statuses = await asyncio.gather(*(activities.deliver_notification(i) for i in ids))
        seconds = time.perf_counter() - started
        cpu = time.process_time() - cpu
        await mailer.close()
        async with sessions() as session:
            sent = await session.scalar(select(func.count()).select_from(Notification).where(Notification.status == "sent"))
            links = await session.scalar(select(func.count(func.distinct(AccessLink.notification_id))))
    assert statuses == ["sent"] * count and sent == count, f"delivery path: {sent} of {count} sent"
    assert links == count, f"delivery path: access links issued for {links} of {count} notifications"
    assert prerendered == (count if rendered_at_record else 0), f"delivery path: {prerendered} of {count} rendered at record time"
    return {"notifications": count, "seconds": round(seconds, 2), "per_second": round(count / seconds, 1),
            "connections_opened": mailer.connections_opened, "with_access_links": links,
            "rendered_at_record": prerendered, "recording_seconds_not_timed": round(recorded_s, 2),
            "cpu_ms_per_message": _cpu_ms(cpu, count)}


def _delivery_row(path: dict, database: str, reused_rate: float) -> dict:
    return {
        **path,
        "database": database,
        "baseline": f"Mailer.send alone over a reused connection: {round(reused_rate, 1)} msg/s",
        "ratio": round(path["per_second"] / reused_rate, 3),
        "ratio_means": "deliver_notification rate / bare Mailer.send rate (same server, same invocation)",
        "cpu_ms_per_message_means": CPU_MEANS,
    }


async def _slow_relay(results: dict, count: int) -> None:
    """Mailer.send alone and the delivery path (rendered at record time, SQLite) against a relay taking 50 ms a message."""
    port = free_port()
    controller, smtp = _start_slow_capture(port)
    try:
        reused_s, _ = await _reused(port, _messages(count, "slow"))
        assert len(smtp.messages) == count, f"the slow server received {len(smtp.messages)} of {count}"
        rate = count / reused_s
        results["smtp_send_slow"] = {
            "messages": count, "server_seconds_per_message": SLOW_SMTP_SECONDS,
            "reused_connection_per_second": round(rate, 1), "reused_connection_seconds": round(reused_s, 2),
            "ceiling_per_second": round(1 / SLOW_SMTP_SECONDS, 1), "cpu_ms_per_message": _cpu_ms(_last_cpu["reused"], count),
        }
        with tempfile.TemporaryDirectory(prefix="ncpi-bench-email-") as tmp:
            path = await _delivery_path(port, count, f"sqlite+aiosqlite:///{Path(tmp) / 'delivery-slow.db'}")
        row = _delivery_row(path, "sqlite", rate)
        row["baseline"] = f"Mailer.send alone to the same 50 ms-per-message server: {round(rate, 1)} msg/s"
        results["delivery_path_slow_smtp"] = {**row, "server_seconds_per_message": SLOW_SMTP_SECONDS}
    finally:
        controller.stop()


async def run(results: dict, quick: bool, cluster=None) -> None:
    """`cluster`: a PostgreSQL cluster shared with other sections (bench/run.py), else one of its own."""
    count = 200 if quick else 2_000
    port = free_port()
    controller, smtp = start_capture(port=port)
    try:
        await _reused(port, _messages(20, "warm"))  # warm up the server thread and the import paths
        await _one_per_message(port, _messages(20, "warm1"))
        smtp.messages.clear()

        reused_s, connections = await _reused(port, _messages(count, "reused"))
        reused_cpu = _last_cpu["reused"]
        baseline_s = await _one_per_message(port, _messages(count, "per-message"))
        assert len(smtp.messages) == 2 * count, f"the server received {len(smtp.messages)} of {2 * count}"
        reused_rate, baseline_rate = count / reused_s, count / baseline_s
        results["smtp_send"] = {
            "messages": count,
            "reused_connection_per_second": round(reused_rate, 1),
            "reused_connection_seconds": round(reused_s, 2),
            "connections_opened": connections,
            "reused_connection_cpu_ms_per_message": _cpu_ms(reused_cpu, count),
            "cpu_ms_per_message_means": CPU_MEANS,
            "one_connection_per_message_per_second": round(baseline_rate, 1),
            "one_connection_per_message_seconds": round(baseline_s, 2),
            "baseline": f"aiosmtplib.send, one connection per message: {round(baseline_rate, 1)} msg/s",
            "ratio": round(reused_rate / baseline_rate, 2),
            "ratio_means": "reused-connection rate / one-connection-per-message rate",
        }
        smtp.messages.clear()
        deliveries = max(count // 4, 1)
        with tempfile.TemporaryDirectory(prefix="ncpi-bench-email-") as tmp:
            path = await _delivery_path(port, deliveries, f"sqlite+aiosqlite:///{Path(tmp) / 'delivery.db'}")
            old = await _delivery_path(port, deliveries, f"sqlite+aiosqlite:///{Path(tmp) / 'delivery-old.db'}",
                                       rendered_at_record=False)
        results["delivery_path"] = _delivery_row(path, "sqlite", reused_rate)
        results["delivery_path_render_on_delivery"] = _delivery_row(old, "sqlite", reused_rate)
        pg = await _on_postgresql(port, deliveries, cluster)
        if pg is not None:
            results["delivery_path_postgresql"] = _delivery_row(pg, "postgresql", reused_rate)
    finally:
        controller.stop()
    await _slow_relay(results, 20 if quick else 100)


async def _on_postgresql(port: int, count: int, cluster=None) -> dict | None:
    """The delivery path on PostgreSQL (`cluster`, else a throwaway cluster), or None without PostgreSQL's binaries."""
    from bench.common import create_database, maybe_postgres
    from tests.postgres import find_pg_bin

    if cluster is None and find_pg_bin() is None:
        return None
    async with maybe_postgres(cluster) as (cluster, reason):
        if cluster is None:
            raise RuntimeError(reason)
        return await _delivery_path(port, count, await create_database(cluster, "bench_email"))


if __name__ == "__main__":
    out: dict = {}
    asyncio.run(run(out, "--quick" in sys.argv))
    print(json.dumps(out, indent=2))
