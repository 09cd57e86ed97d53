"""The inspectorate's records on SQLite and PostgreSQL: schema, reference data, reports, clocks,
evidence, the outbox and the append-only audit trail."""

from __future__ import annotations

import hashlib
from datetime import date
from pathlib import Path

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError, IntegrityError

from ncpi_workflow import db
from ncpi_workflow.clocks import calendar_for_report, plan_report
from ncpi_workflow.forces import load_forces
from ncpi_workflow.models import (
    AuditEvent,
    Base,
    Contact,
    Deadline,
    Decision,
    Evidence,
    Finding,
    Force,
    Inspection,
    Notification,
    Recommendation,
)
from ncpi_workflow.policy import Policy
from ncpi_workflow.report import load_report
from ncpi_workflow.store import (
    append_audit,
    count_rows,
    insert_if_absent,
    insert_report,
    load_reference_forces,
    revise_deadline,
    store_evidence,
)
from ncpi_workflow.errors import UserError
from tests.conftest import ROOT

FORCES = load_forces(ROOT / "config" / "forces.yaml")
CUMBRIA = ROOT / "examples" / "cumbria-2017.yaml"


def cumbria():
    loaded = load_report(CUMBRIA, known_forces=set(FORCES), max_bytes=1 << 20)
    policy = Policy()
    published = loaded.report.published
    timeline = plan_report(
        published, [(r.ref, r.timeframe) for r in loaded.report.recommendations], policy, calendar_for_report(policy, published)
    )
    return loaded, timeline


async def publish_cumbria(sessions):
    loaded, timeline = cumbria()
    async with sessions.begin() as session:
        await load_reference_forces(session, FORCES)
        return await insert_report(session, loaded, timeline, actor="test")


def test_reference_data_holds_the_43_forces():
    assert len(FORCES) == 43
    assert FORCES["CUM"].name == "Cumbria Constabulary"
    regions = {f.region for f in FORCES.values()}
    assert "Wales" in regions and "London" in regions
    emails = [c.email for f in FORCES.values() for c in (f.contacts.liaison_officer, f.contacts.chief_officer, f.contacts.pcc)]
    assert len(set(emails)) == 129
    assert all(e.endswith(".example") for e in emails)


async def test_migrations_match_the_models(migrated_database_url):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    engine = db.create_engine(migrated_database_url)
    try:
        async with engine.connect() as connection:
            diff = await connection.run_sync(
                lambda sync: compare_metadata(MigrationContext.configure(sync, opts={"compare_type": True}), Base.metadata)
            )
    finally:
        await engine.dispose()
    assert diff == []


async def test_upgrade_is_idempotent_and_downgrade_works(database_url):
    await db.upgrade(database_url)
    await db.upgrade(database_url)
    await __import__("asyncio").to_thread(__import__("alembic.command", fromlist=["downgrade"]).downgrade, db.alembic_config(database_url), "base")
    await db.upgrade(database_url)


async def test_forces_load_idempotently_and_follow_reference_changes(sessions):
    async with sessions.begin() as session:
        assert await load_reference_forces(session, FORCES) == 43 * 4
    async with sessions.begin() as session:
        assert await load_reference_forces(session, FORCES) == 0
        assert await count_rows(session, Force) == 43
        assert await count_rows(session, Contact) == 129
    changed = dict(FORCES)
    cum = changed["CUM"]
    changed["CUM"] = cum.model_copy(
        update={"contacts": cum.contacts.model_copy(update={"liaison_officer": cum.contacts.liaison_officer.model_copy(update={"email": "new@cumbria.police.example"})})}
    )
    async with sessions.begin() as session:
        assert await load_reference_forces(session, changed) == 1
        contact = await session.scalar(select(Contact).where(Contact.force_code == "CUM", Contact.role == "liaison_officer"))
        assert contact.email == "new@cumbria.police.example"


async def test_a_report_is_written_once_with_its_findings_recommendations_and_deadlines(sessions):
    first = await publish_cumbria(sessions)
    second = await publish_cumbria(sessions)
    assert first.created and not second.created
    assert first.inspection_id == "CUM-2017-01-26"
    async with sessions() as session:
        inspection = await session.get(Inspection, "CUM-2017-01-26")
        assert inspection.published_on == date(2017, 1, 26)
        assert await count_rows(session, Inspection) == 1
        assert await count_rows(session, Finding) == 10
        recs = (await session.scalars(select(Recommendation).order_by(Recommendation.id))).all()
        assert [r.id for r in recs] == [f"CUM-2017-01-26-R{i}" for i in range(1, 6)]
        assert all(r.illustrative and r.phase == "published" for r in recs)
        answered = await session.get(Finding, recs[0].finding_id)
        assert answered.ref == "C1" and answered.kind == "cause_of_concern"
        deadlines = {d.key: d for d in (await session.scalars(select(Deadline))).all()}
        assert deadlines["action_plan"].original_due == date(2017, 3, 9)
        assert deadlines["revisit_by"].current_due == date(2017, 7, 26)
        assert deadlines["recommendation:R4"].recommendation_id == "CUM-2017-01-26-R4"
        audit = (await session.scalars(select(AuditEvent))).all()
        assert [(a.action, a.entity_id) for a in audit] == [("report.published", "CUM-2017-01-26")]


async def test_a_revised_deadline_keeps_its_original_date_reason_and_author(sessions):
    await publish_cumbria(sessions)
    async with sessions.begin() as session:
        deadline = await session.scalar(select(Deadline).where(Deadline.key == "action_plan"))
        await revise_deadline(session, deadline.id, date(2017, 3, 23), "Force restructure agreed with lead HMI", "inspector.jones", "rev-1")
        await revise_deadline(session, deadline.id, date(2017, 3, 23), "Force restructure agreed with lead HMI", "inspector.jones", "rev-1")
        with pytest.raises(UserError, match="needs a reason"):
            await revise_deadline(session, deadline.id, date(2017, 3, 30), "  ", "inspector.jones")
    async with sessions() as session:
        deadline = await session.scalar(select(Deadline).where(Deadline.key == "action_plan"))
        await session.refresh(deadline, ["revisions"])
        assert (deadline.original_due, deadline.current_due) == (date(2017, 3, 9), date(2017, 3, 23))
        assert [(r.previous_due, r.new_due, r.changed_by) for r in deadline.revisions] == [
            (date(2017, 3, 9), date(2017, 3, 23), "inspector.jones")
        ]
        actions = (await session.scalars(select(AuditEvent.action))).all()
        assert actions.count("deadline.revised") == 1


async def test_evidence_is_stored_by_hash_once_and_the_size_limit_holds(sessions, tmp_path):
    await publish_cumbria(sessions)
    content = b"Minutes of the strategy meeting, 3 March 2017.\n" * 100
    source = tmp_path / "minutes.txt"
    source.write_bytes(content)
    store = tmp_path / "evidence"
    kwargs = dict(recommendation_id="CUM-2017-01-26-R1", evidence_dir=store, max_bytes=10_000, submitted_by="liaison@cumbria")
    async with sessions.begin() as session:
        evidence, created = await store_evidence(session, source=source, **kwargs)
    async with sessions.begin() as session:
        again, created_again = await store_evidence(session, source=source, **kwargs)
    assert created and not created_again and again.id == evidence.id
    digest = hashlib.sha256(content).hexdigest()
    assert evidence.sha256 == digest and evidence.size_bytes == len(content) and evidence.content_type == "text/plain"
    assert Path(evidence.storage_path).read_bytes() == content
    big = tmp_path / "big.pdf"
    big.write_bytes(b"x" * 10_001)
    async with sessions.begin() as session:
        with pytest.raises(UserError, match="over the 10,000-byte limit"):
            await store_evidence(session, source=big, **kwargs)
    async with sessions() as session:
        assert await count_rows(session, Evidence) == 1


async def test_outbox_rows_are_unique_by_idempotency_key(sessions):
    await publish_cumbria(sessions)
    row = dict(
        idempotency_key="ncpi/CUM/2017-01-26/reminder/action_plan/10",
        kind="reminder",
        inspection_id="CUM-2017-01-26",
        recipients={"to": ["liaison@cumbria.police.example"]},
        subject="Action plan due Thursday 9 March 2017",
        context={},
        status="pending",
        attempts=0,
    )
    async with sessions.begin() as session:
        assert await insert_if_absent(session, Notification, ["idempotency_key"], **row)
    async with sessions.begin() as session:
        assert not await insert_if_absent(session, Notification, ["idempotency_key"], **row)
        assert await count_rows(session, Notification) == 1


async def test_audit_trail_is_append_only_in_the_database(sessions):
    async with sessions.begin() as session:
        assert await append_audit(session, actor="a", action="x", entity_type="t", entity_id="1", idempotency_key="k1")
        assert not await append_audit(session, actor="a", action="x", entity_type="t", entity_id="1", idempotency_key="k1")
    for statement in ("UPDATE audit_events SET actor = 'mallory'", "DELETE FROM audit_events"):
        with pytest.raises(DBAPIError, match="append-only"):
            async with sessions.begin() as session:
                await session.execute(text(statement))
    async with sessions() as session:
        assert (await session.scalars(select(AuditEvent.actor))).all() == ["a"]


async def test_constraints_refuse_bad_records(sessions):
    await publish_cumbria(sessions)
    bad_rows = [
        Decision(recommendation_id="CUM-2017-01-26-R1", cycle=1, outcome="sort_of", rationale="x", decided_by="i"),
        Decision(recommendation_id="CUM-2017-01-26-R1", cycle=1, outcome="achieved", rationale="", decided_by="i"),
        Decision(recommendation_id="CUM-2017-01-26-R99", cycle=1, outcome="achieved", rationale="x", decided_by="i"),
    ]
    for row in bad_rows:
        with pytest.raises(IntegrityError):
            async with sessions.begin() as session:
                session.add(row)
    async with sessions.begin() as session:
        session.add(Decision(recommendation_id="CUM-2017-01-26-R1", cycle=1, outcome="achieved", rationale="ok", decided_by="i"))
    with pytest.raises(IntegrityError):
        async with sessions.begin() as session:
            session.add(Decision(recommendation_id="CUM-2017-01-26-R1", cycle=1, outcome="achieved", rationale="twice", decided_by="i"))
