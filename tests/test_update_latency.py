"""Update latency (issue 15): the shape of an Update's work. (That its workflow task runs one clock read and
one `record_event` and nothing after it, patch `step-at-the-action-instant`, is checked from the history in
tests/test_event_transaction.py.) `record_event` renders its emails once, before its transaction, from
the rows as the event leaves them, and its transaction only writes (counted with a SQLAlchemy engine event)."""

from __future__ import annotations


# ---------------------------------------------------------------- record_event's statements


def _decision_event(inspection_id: str, rec_id: str, key: str, now):
    from ncpi_workflow.lifecycle import DecisionRecord, EventWrite, NotificationRequest, RecommendationProjection, RegisterRecord

    facts = {"outcome": "achieved", "rationale": "Done.", "by": "hmi", "at": now.isoformat(), "cycle": 1}
    return EventWrite(
        decision=DecisionRecord(key, rec_id, 1, "achieved", "Done.", "hmi", now),
        register=[RegisterRecord(f"{key}/register", rec_id, 1, "no further action needed", "Done.", "hmi", now)],
        notifications=[NotificationRequest(f"{key}/decision", "decision", inspection_id, rec_id,
                                           ("liaison_officer", "chief_officer"), "Decision on recommendation R1: achieved",
                                           now, facts)],
        recommendation_projection=RecommendationProjection(rec_id, (1 << 24) + 256, "closed", 1, None, "achieved", None, None,
                                                           "no further action needed"),
    )


async def test_a_decision_events_transaction_only_writes_and_its_email_is_the_deliverys_rendering(sessions, tmp_path):
    """The decision's event (its record, register step, email with its links, projection): rendered before the
    transaction, which then reads nothing and issues 12 statements (before: 23, 12 of them reads of the email's
    rows again, the recipients and the ids). The bytes kept are what the delivery renders from the committed rows."""
    import uuid
    from datetime import datetime, timezone

    from temporalio.testing import ActivityEnvironment

    from activities.records import RecordActivities
    from activities.rendering import OutboxRenderer
    from ncpi_workflow.email_context import email_context
    from ncpi_workflow.models import Notification, Recommendation
    from tests.test_prerendered_delivery import INSPECTORATE, SETTINGS, _comparable, _statements
    from tests.test_projection_versions import _published

    inspection_id, rec_id = await _published(sessions, tmp_path)
    renderer = OutboxRenderer(sessions, SETTINGS, INSPECTORATE.by_role)
    records = RecordActivities(sessions, INSPECTORATE, renderer=renderer)
    write = _decision_event(inspection_id, rec_id, f"test/{uuid.uuid4()}", datetime(2024, 6, 3, 9, tzinfo=timezone.utc))
    prepare = renderer.prepare
    phases: list[int] = []

    async def noted_prepare(*args, **kwargs):
        out = await prepare(*args, **kwargs)
        phases.append(len(seen))  # statements up to the end of the rendering
        return out

    renderer.prepare = noted_prepare
    with _statements(sessions) as seen:
        written = await ActivityEnvironment().run(records.record_event, write)
    in_transaction = seen[phases[0]:]
    assert not [s for s in in_transaction if s.startswith("SELECT")], in_transaction
    verbs = [" ".join(s.split(" ", 3)[:3]) for s in in_transaction]
    assert len(in_transaction) == 12, verbs
    assert renderer.kept == 1 and renderer.left_unrendered == 0
    async with sessions() as session:
        row = await session.get(Notification, written.notification_ids[0])
        assert row.rendered is not None and row.message_id is not None
        assert (await session.get(Recommendation, rec_id)).phase == "closed"
        # What the delivery would have rendered from the committed rows (the renderer's own guarded path).
        again = OutboxRenderer(sessions, SETTINGS, INSPECTORATE.by_role)
        [fresh] = await again.prepare([write.notifications[0]])
        ctx = await email_context(session, row)
    assert _comparable(row.rendered) == _comparable(fresh.data)
    assert ctx.recommendation.phase == "closed" and ctx.recommendation.outcome == "achieved"


async def test_the_projected_clock_set_with_the_projection_is_the_refreshs(sessions, tmp_path):
    """The projection's UPDATE sets `clock_due` and `force_code` itself (one statement, not two): the same values
    `refresh_recommendation_clocks` computes from the row, for an evidence deadline opened in the same event."""
    from datetime import date, datetime, timezone

    from temporalio.testing import ActivityEnvironment

    from activities.records import RecordActivities
    from ncpi_workflow.app.read_models import refresh_recommendation_clocks
    from ncpi_workflow.lifecycle import DeadlineOpenRecord, EventWrite, RecommendationProjection
    from ncpi_workflow.models import Recommendation
    from tests.test_prerendered_delivery import INSPECTORATE
    from tests.test_projection_versions import _published

    inspection_id, rec_id = await _published(sessions, tmp_path)
    records = RecordActivities(sessions, INSPECTORATE)
    env = ActivityEnvironment()
    due = date(2024, 7, 1)
    await env.run(records.record_event, EventWrite(
        deadlines_opened=[DeadlineOpenRecord(inspection_id, rec_id, "evidence:R1", "evidence", 1, due)],
        recommendation_projection=RecommendationProjection(rec_id, (1 << 24) + 256, "evidence_requested", 1, None, None,
                                                           "evidence", datetime(2024, 6, 3, tzinfo=timezone.utc)),
    ))
    async with sessions() as session:
        row = await session.get(Recommendation, rec_id)
        assert (row.clock_due, row.force_code) == (due, "NWA")
    async with sessions.begin() as session:
        await session.execute(refresh_recommendation_clocks(Recommendation.id == rec_id))
    async with sessions() as session:
        again = await session.get(Recommendation, rec_id)
        assert (again.clock_due, again.force_code) == (due, "NWA")
    # Closed: no clock runs.
    await env.run(records.record_event, EventWrite(recommendation_projection=RecommendationProjection(
        rec_id, (1 << 24) + 512, "closed", 1, None, "achieved", None, None)))
    async with sessions() as session:
        assert (await session.get(Recommendation, rec_id)).clock_due is None


async def test_an_emails_rows_as_the_event_leaves_them_a_new_cycles_deadline_and_phase(sessions, tmp_path):
    """A further follow-up (the event opens cycle 2's deadline and projects the new phase): its email, rendered
    before the transaction, already shows the new deadline and phase, as a rendering of the committed rows does."""
    import uuid
    from datetime import date, datetime, timezone

    from temporalio.testing import ActivityEnvironment

    from activities.records import RecordActivities
    from activities.rendering import OutboxRenderer
    from ncpi_workflow.email_context import email_context
    from ncpi_workflow.lifecycle import DeadlineOpenRecord, EventWrite, NotificationRequest, RecommendationProjection
    from ncpi_workflow.models import Notification
    from tests.test_prerendered_delivery import INSPECTORATE, SETTINGS, _comparable
    from tests.test_projection_versions import _published

    inspection_id, rec_id = await _published(sessions, tmp_path)
    renderer = OutboxRenderer(sessions, SETTINGS, INSPECTORATE.by_role)
    records = RecordActivities(sessions, INSPECTORATE, renderer=renderer)
    now = datetime(2024, 6, 3, 9, tzinfo=timezone.utc)
    due = date(2024, 9, 2)
    key = f"test/{uuid.uuid4()}"
    write = EventWrite(
        deadlines_opened=[DeadlineOpenRecord(inspection_id, rec_id, "recommendation:R1", "recommendation", 2, due)],
        notifications=[NotificationRequest(
            f"{key}/further", "further_follow_up", inspection_id, rec_id, ("liaison_officer", "chief_officer"),
            "Further follow-up: recommendation R1", now,
            {"outcome": "partially_achieved", "rationale": "Half done.", "by": "hmi", "at": now.isoformat(), "cycle": 2,
             "due": due.isoformat(), "why": "further follow-up after partially achieved"})],
        recommendation_projection=RecommendationProjection(rec_id, (1 << 24) + 256, "in_progress", 2, None, None,
                                                           "reminder", None),
    )
    prepare, prepared = renderer.prepare, []

    async def kept_prepare(*args, **kwargs):
        prepared.extend(await prepare(*args, **kwargs))
        return prepared

    renderer.prepare = kept_prepare
    written = await ActivityEnvironment().run(records.record_event, write)
    assert renderer.kept == 1
    # Rendered before the transaction, from the rows as it was about to leave them: cycle 2's deadline, the new phase.
    rendered_from = prepared[0].context.recommendation
    assert (rendered_from.due, rendered_from.phase) == (due, "in_progress")
    async with sessions() as session:
        row = await session.get(Notification, written.notification_ids[0])
        ctx = await email_context(session, row)
        [fresh] = await OutboxRenderer(sessions, SETTINGS, INSPECTORATE.by_role).prepare([write.notifications[0]])
    assert (ctx.recommendation.due, ctx.recommendation.phase) == (due, "in_progress")
    assert _comparable(row.rendered) == _comparable(fresh.data)
