"""Email benchmark (issue 6, item 6): notifications per second to the loopback SMTP server
(ncpi_workflow.smtp_capture, aiosmtpd in a thread of this process) over one reused connection
(ncpi_workflow.mailer.Mailer) against a baseline of one connection per message (aiosmtplib.send),
run in the same invocation; and the full delivery path (DeliveryActivities.deliver_notification:
database read, template rendering, the access links (a portal link and a plus-addressed Reply-To
issued and stored with the rendering, their tokens filled in as it is sent, as the worker's
deliveries do), send, row marked sent) for a quarter as many notifications,
on SQLite and, when PostgreSQL's binaries are installed, on a throwaway PostgreSQL cluster
(tests/postgres.py). The delivery path holds the SMTP connection from a message's send until it is
marked sent (at most the message in flight is at risk when a worker dies), so its rate includes the
mark-sent round trip of every message in turn.

`.venv/bin/python -m bench.email [--quick]` prints JSON (2,000 messages; quick: 200).
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
from bench.common import ROOT
from ncpi_workflow import db
from ncpi_workflow.access_links import LinkSettings
from ncpi_workflow.clocks import calendar_for_report, plan_report
from ncpi_workflow.forces import load_forces
from ncpi_workflow.mailer import Mailer, SmtpConfig, build_message, message_id_for
from ncpi_workflow.models import AccessLink, Notification, utcnow
from ncpi_workflow.policy import Policy
from ncpi_workflow.report import load_report
from ncpi_workflow.smtp_capture import start_capture
from ncpi_workflow.store import insert_if_absent, insert_report, load_reference_forces
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


async def _reused(port: int, messages: list) -> tuple[float, int]:
    mailer = _mailer(port)
    started = time.perf_counter()
    for message in messages:
        await mailer.send(message)
    seconds = time.perf_counter() - started
    await mailer.close()
    return seconds, mailer.connections_opened


async def _one_per_message(port: int, messages: list) -> float:
    started = time.perf_counter()
    for message in messages:
        await aiosmtplib.send(message, hostname="127.0.0.1", port=port, timeout=10.0)
    return time.perf_counter() - started


async def _delivery_path(port: int, count: int, url: str) -> dict:
    """As tests/test_email_delivery.py (_records, _outbox, _delivery): the Cumbria report, `count` pending reminders."""
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
        async with sessions.begin() as session:
            for i in range(count):
                await insert_if_absent(
                    session, Notification, ["idempotency_key"],
                    idempotency_key=f"ncpi/CUM/2017-01-26/R2/c1/bench/{i}", kind="reminder",
                    inspection_id="CUM-2017-01-26", recommendation_id="CUM-2017-01-26-R2",
                    recipients={"to": ["liaison@cumbria.police.example"], "roles": ["liaison_officer"]},
                    subject=f"Reminder {i}: Recommendation R2 due Wednesday 26 April 2017",
                    context={"deadline": "recommendation", "due": "2017-04-26", "working_days": 3, "cycle": 1},
                    status="pending", attempts=0, scheduled_for=utcnow(),
                )
            ids = list((await session.scalars(select(Notification.id).order_by(Notification.id))).all())
        mailer = _mailer(port)
        activities = DeliveryActivities(sessions, mailer, DeliverySettings(MAIL_FROM, REPLY_TO, "ncpi-inspectors@inspectorate.example",
                                                                           None, links=LINKS))
        started = time.perf_counter()
        # Concurrently, as a worker runs a morning's burst of activities (the Mailer serialises the sends).
        statuses = await asyncio.gather(*(activities.deliver_notification(i) for i in ids))
        seconds = time.perf_counter() - started
        await mailer.close()
        async with sessions() as session:
            sent = await session.scalar(select(func.count()).select_from(Notification).where(Notification.status == "sent"))
            links = await session.scalar(select(func.count(func.distinct(AccessLink.notification_id))))
    assert statuses == ["sent"] * count and sent == count, f"delivery path: {sent} of {count} sent"
    assert links == count, f"delivery path: access links issued for {links} of {count} notifications"
    return {"notifications": count, "seconds": round(seconds, 2), "per_second": round(count / seconds, 1),
            "connections_opened": mailer.connections_opened, "with_access_links": links}


async def run(results: dict, quick: bool) -> None:
    count = 200 if quick else 2_000
    port = free_port()
    controller, smtp = start_capture(port=port)
    try:
        await _reused(port, _messages(20, "warm"))  # warm up the server thread and the import paths
        await _one_per_message(port, _messages(20, "warm1"))
        smtp.messages.clear()

        reused_s, connections = await _reused(port, _messages(count, "reused"))
        baseline_s = await _one_per_message(port, _messages(count, "per-message"))
        assert len(smtp.messages) == 2 * count, f"the server received {len(smtp.messages)} of {2 * count}"
        reused_rate, baseline_rate = count / reused_s, count / baseline_s
        results["smtp_send"] = {
            "messages": count,
            "reused_connection_per_second": round(reused_rate, 1),
            "reused_connection_seconds": round(reused_s, 2),
            "connections_opened": connections,
            "one_connection_per_message_per_second": round(baseline_rate, 1),
            "one_connection_per_message_seconds": round(baseline_s, 2),
            "baseline": f"aiosmtplib.send, one connection per message: {round(baseline_rate, 1)} msg/s",
            "ratio": round(reused_rate / baseline_rate, 2),
            "ratio_means": "reused-connection rate / one-connection-per-message rate",
        }
        smtp.messages.clear()
        with tempfile.TemporaryDirectory(prefix="ncpi-bench-email-") as tmp:
            path = await _delivery_path(port, max(count // 4, 1), f"sqlite+aiosqlite:///{Path(tmp) / 'delivery.db'}")
        results["delivery_path"] = {
            **path,
            "database": "sqlite",
            "baseline": f"Mailer.send alone over a reused connection: {round(reused_rate, 1)} msg/s",
            "ratio": round(path["per_second"] / reused_rate, 3),
            "ratio_means": "deliver_notification rate / bare Mailer.send rate",
        }
        pg = await _on_postgresql(port, max(count // 4, 1))
        if pg is not None:
            results["delivery_path_postgresql"] = {
                **pg,
                "database": "postgresql",
                "baseline": f"Mailer.send alone over a reused connection: {round(reused_rate, 1)} msg/s",
                "ratio": round(pg["per_second"] / reused_rate, 3),
                "ratio_means": "deliver_notification rate / bare Mailer.send rate",
            }
    finally:
        controller.stop()


async def _on_postgresql(port: int, count: int) -> dict | None:
    """The delivery path on a throwaway PostgreSQL cluster, or None without PostgreSQL's binaries."""
    from tests.postgres import PostgresCluster, find_pg_bin

    bin_dir = find_pg_bin()
    if bin_dir is None:
        return None
    cluster = await asyncio.to_thread(PostgresCluster.start, bin_dir)
    try:
        import asyncpg

        connection = await asyncpg.connect(host="127.0.0.1", port=cluster.port, user="postgres", database="postgres")
        try:
            await connection.execute('CREATE DATABASE "bench_email"')
        finally:
            await connection.close()
        return await _delivery_path(port, count, cluster.url("bench_email"))
    finally:
        await asyncio.to_thread(cluster.stop)


if __name__ == "__main__":
    out: dict = {}
    asyncio.run(run(out, "--quick" in sys.argv))
    print(json.dumps(out, indent=2))
