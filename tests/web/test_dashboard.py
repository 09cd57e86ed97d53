"""The all-forces dashboard: its aggregates (one SQL query over the projection tables) against a
plain-Python reading of the same records, on SQLite and PostgreSQL; RAG by policy; filters and
sorting by query parameters; the page itself."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import itertools

from sqlalchemy import select, update

from activities.records import InspectorateAddresses, RecordActivities
from ncpi_workflow import db
from ncpi_workflow.app import read_models
from ncpi_workflow.lifecycle import (
    DeadlineMetRecord,
    DeadlineOpenRecord,
    DeadlineRevisionRecord,
    InspectionProjection,
    RecommendationProjection,
)
from ncpi_workflow.models import Deadline, Inspection, Recommendation
from ncpi_workflow.web.app import create_app
from tests.web.conftest import FORCES, add_user, browser, london_today, seed_report, web_settings

TODAY = date(2026, 6, 15)  # a Monday


_versions = itertools.count(1)


def writers(sessions) -> RecordActivities:
    """The worker's record activities (the projection and deadline writes the workflows make)."""
    return RecordActivities(sessions, InspectorateAddresses("inspectors@example.org", "lead@example.org"))


async def set_recommendation(sessions, rec_id: str, phase: str, cycle: int = 1, force_claim: str | None = None,
                             outcome: str | None = None) -> None:
    await writers(sessions).project_recommendation(
        RecommendationProjection(rec_id, next(_versions), phase, cycle, force_claim, outcome, None, None))


async def set_inspection(sessions, inspection_id: str, phase: str, cycle: int = 1) -> None:
    await writers(sessions).project_inspection(InspectionProjection(inspection_id, next(_versions), phase, cycle, None, None))


async def met(sessions, inspection_id: str, key: str, at: datetime) -> None:
    await writers(sessions).mark_deadline_met(DeadlineMetRecord(inspection_id, key, 1, at))


async def seed(sessions, folder, force: str, published: date, recommendations) -> str:
    """A report's records as `ncpi publish` writes them, and its follow-up's first projections (the
    workflows write them as they start: until then the projected columns are empty)."""
    inspection_id = await seed_report(sessions, folder, force, published, recommendations)
    await set_inspection(sessions, inspection_id, "following_up")
    for ref, _ in recommendations:
        await set_recommendation(sessions, f"{inspection_id}-{ref}", "published")
    return inspection_id


async def build(sessions, folder) -> dict[str, str]:
    """Crafted follow-ups, one situation per force, written as the workflows write them (projections,
    deadlines opened, moved and met through the record activities)."""
    ids = {}
    w = writers(sessions)
    # CUM: R1 in progress and past due (overdue); R2 past due but the force claims it implemented (not
    # overdue); R3 closed (not open); the PCC response not received and past due (overdue, report level);
    # the action plan received. The revisit is open, so its limit is not "due".
    ids["CUM"] = cum = await seed(sessions, folder, "CUM", TODAY - timedelta(days=200),
                                         [("R1", "within_three_months"), ("R2", "within_three_months"), ("R3", "immediately")])
    await set_recommendation(sessions, f"{cum}-R1", "in_progress")
    await set_recommendation(sessions, f"{cum}-R2", "in_progress", force_claim="implemented")
    await set_recommendation(sessions, f"{cum}-R3", "closed", outcome="achieved")
    await met(sessions, cum, "action_plan", datetime(2026, 1, 10, tzinfo=timezone.utc))
    await met(sessions, cum, "immediate_update", datetime(2026, 1, 10, tzinfo=timezone.utc))
    await set_inspection(sessions, cum, "revisit_open")

    # DUR: published ten days ago, an "immediately" recommendation due within 30 days: amber.
    # Its inspection's workflow has not projected yet: its report-level items are read the long way.
    ids["DUR"] = dur = await seed_report(sessions, folder, "DUR", TODAY - timedelta(days=10), [("R1", "immediately")])
    await set_recommendation(sessions, f"{dur}-R1", "force_notified")

    # NYP: nothing running soon, but its revisit limit falls within 30 days: amber.
    # Its inspection not projected either, two of its items met (refreshed), the revisit limit not.
    ids["NYP"] = nyp = await seed_report(sessions, folder, "NYP", TODAY - timedelta(days=165), [("R1", "within_three_months")])
    await set_recommendation(sessions, f"{nyp}-R1", "evidence_submitted")
    for key in ("action_plan", "pcc_response"):
        await met(sessions, nyp, key, datetime(2026, 2, 1, tzinfo=timezone.utc))

    # WYP: evidence requested and its deadline passed: overdue (red) on the evidence clock. The
    # projection comes before the evidence deadline's row, as it may after a retried activity.
    ids["WYP"] = wyp = await seed(sessions, folder, "WYP", TODAY - timedelta(days=150), [("R1", "within_six_months")])
    await set_recommendation(sessions, f"{wyp}-R1", "evidence_requested")
    for key in ("action_plan", "pcc_response"):
        await met(sessions, wyp, key, datetime(2026, 2, 1, tzinfo=timezone.utc))
    await w.open_deadline(DeadlineOpenRecord(wyp, f"{wyp}-R1", "evidence:R1", "evidence", 1, TODAY - timedelta(days=1)))
    await set_inspection(sessions, wyp, "revisit_open")

    # KEN: published ten days ago, only a six-month recommendation; the action plan (six weeks) is
    # more than 30 days away: green. Nothing of it projected yet (just published, its workflows not
    # started): every figure read from its deadlines.
    ids["KEN"] = await seed_report(sessions, folder, "KEN", TODAY - timedelta(days=10), [("R1", "within_six_months")])

    # SUR: a second cycle's deadline, revised to tomorrow (the revision is what counts).
    ids["SUR"] = sur = await seed(sessions, folder, "SUR", TODAY - timedelta(days=120), [("R1", "within_three_months")])
    await set_recommendation(sessions, f"{sur}-R1", "in_progress", cycle=2)
    for key in ("action_plan", "pcc_response"):
        await met(sessions, sur, key, datetime(2026, 2, 1, tzinfo=timezone.utc))
    await w.open_deadline(DeadlineOpenRecord(sur, f"{sur}-R1", "recommendation:R1", "recommendation", 2, TODAY + timedelta(days=40)))
    await w.record_deadline_revision(DeadlineRevisionRecord(
        f"{sur}/revise", sur, "recommendation:R1", 2, f"{sur}-R1", "recommendation", TODAY + timedelta(days=40),
        TODAY + timedelta(days=40), TODAY + timedelta(days=1), "agreed with the force", "hmi@example.org"))
    await set_inspection(sessions, sur, "revisit_open")
    return ids


def running_clock(rec: Recommendation, deadlines: list[Deadline]) -> date | None:
    """The due date of a recommendation's running clock, read off its records (None: none runs)."""
    running = (rec.phase in read_models.RUNNING_PHASES and rec.force_claim != "implemented") or rec.phase == "evidence_requested"
    kind = "evidence" if rec.phase == "evidence_requested" else "recommendation"
    clock = [d for d in deadlines if d.recommendation_id == rec.id and d.cycle == rec.cycle and d.kind == kind]
    return clock[0].current_due if running and clock else None


async def assert_projection_agrees(sessions) -> int:
    """Every projected column equals what the records say, on every row refreshed since it was
    written (a row never refreshed has no force yet, and no due date). The rows not refreshed, counted."""
    async with sessions() as session:
        inspections = {i.id: i for i in await session.scalars(select(Inspection))}
        recs = list(await session.scalars(select(Recommendation)))
        deadlines = list(await session.scalars(select(Deadline)))
    fresh = 0
    for rec in recs:
        if rec.force_code is None:
            assert rec.clock_due is None and rec.projection_version == 0, rec.id
            fresh += 1
            continue
        assert rec.force_code == inspections[rec.inspection_id].force_code, rec.id
        assert rec.clock_due == running_clock(rec, deadlines), rec.id
    for d in deadlines:
        insp = inspections[d.inspection_id]
        if d.key not in (*read_models.REPORT_ITEMS, "revisit_by"):
            continue
        if d.force_code is None:
            assert d.waiting_due is None and insp.projection_version == 0, (d.inspection_id, d.key)
            fresh += 1
            continue
        waiting = insp.phase != "closed" and (
            (d.key in read_models.REPORT_ITEMS and d.met_at is None)
            or (d.key == "revisit_by" and d.cycle == insp.cycle and insp.phase == "following_up"))
        assert d.force_code == insp.force_code, (d.inspection_id, d.key)
        assert d.waiting_due == (d.current_due if waiting else None), (d.inspection_id, d.key, d.cycle)
    return fresh


async def oracle(sessions, today: date, programme: str | None = None, phase: str | None = None) -> dict[str, dict]:
    """The policy of read_models' docstring, read off ORM objects one by one."""
    soon = today + timedelta(days=read_models.SOON_DAYS)
    async with sessions() as session:
        inspections = list(await session.scalars(select(Inspection)))
        recs = list(await session.scalars(select(Recommendation)))
        deadlines = list(await session.scalars(select(Deadline)))
    out = {code: {"inspections": 0, "open": 0, "overdue": 0, "items": 0, "next": [], "revisits": 0} for code in FORCES}
    by_id = {i.id: i for i in inspections}
    for insp in inspections:
        if programme and insp.programme != programme:
            continue
        if phase and not any(r.inspection_id == insp.id and r.phase == phase for r in recs):
            continue
        f = out[insp.force_code]
        f["inspections"] += 1
        if insp.phase == "closed":
            continue
        for d in deadlines:
            if d.inspection_id != insp.id:
                continue
            waiting_item = d.recommendation_id is None and d.key in read_models.REPORT_ITEMS and d.met_at is None
            waiting_revisit = d.key == "revisit_by" and d.cycle == insp.cycle and insp.phase == "following_up"
            if not (waiting_item or waiting_revisit):
                continue
            if d.current_due < today:
                f["items"] += 1
            else:
                f["next"].append(d.current_due)
                if waiting_revisit and d.current_due <= soon:
                    f["revisits"] += 1
    for r in recs:
        insp = by_id[r.inspection_id]
        if r.phase == "closed" or (programme and insp.programme != programme) or (phase and r.phase != phase):
            continue
        f = out[insp.force_code]
        f["open"] += 1
        running = (r.phase in read_models.RUNNING_PHASES and r.force_claim != "implemented") or r.phase == "evidence_requested"
        kind = "evidence" if r.phase == "evidence_requested" else "recommendation"
        clock = [d for d in deadlines if d.recommendation_id == r.id and d.cycle == r.cycle and d.kind == kind]
        if running and clock:
            if clock[0].current_due < today:
                f["overdue"] += 1
            else:
                f["next"].append(clock[0].current_due)
    return out


def compare(board, expected) -> None:
    assert len(board.forces) == 43
    for f in board.forces:
        e = expected[f.code]
        got = (f.inspections, f.open_recommendations, f.overdue_recommendations, f.overdue_items, f.next_deadline, f.revisits_due)
        want = (e["inspections"], e["open"], e["overdue"], e["items"], min(e["next"], default=None), e["revisits"])
        assert got == want, f"{f.code}: {got} != {want}"


async def test_aggregates_agree_with_the_records(migrated_database_url, tmp_path):
    async with db.open_database(migrated_database_url) as sessions:
        ids = await build(sessions, tmp_path)
        assert await assert_projection_agrees(sessions) > 0  # some read the long way, as just published
        board = await read_models.dashboard(sessions, today=TODAY)
        compare(board, await oracle(sessions, TODAY))
        by_code = {f.code: f for f in board.forces}
        assert (by_code["CUM"].open_recommendations, by_code["CUM"].overdue_recommendations, by_code["CUM"].overdue_items) == (2, 1, 1)
        assert by_code["CUM"].rag == "red"
        assert by_code["DUR"].rag == "amber" and by_code["DUR"].overdue == 0
        assert by_code["NYP"].rag == "amber" and by_code["NYP"].revisits_due == 1 and by_code["NYP"].open_recommendations == 1
        assert by_code["WYP"].rag == "red" and by_code["WYP"].overdue_recommendations == 1
        assert by_code["KEN"].rag == "green" and by_code["KEN"].next_deadline > TODAY + timedelta(days=30)
        assert by_code["SUR"].next_deadline == TODAY + timedelta(days=1) and by_code["SUR"].rag == "amber"
        untouched = [f for f in board.forces if f.code not in ids]
        assert untouched and all(f.rag == "green" and f.inspections == 0 and f.next_deadline is None for f in untouched)

        # The same on other days: a month on, more is overdue; the oracle agrees every time.
        for later in (TODAY + timedelta(days=31), TODAY - timedelta(days=100), TODAY + timedelta(days=400)):
            compare(await read_models.dashboard(sessions, today=later), await oracle(sessions, later))

        # Filters: by recommendation phase (only inspections with one in that phase, only those counted)...
        for phase in read_models.OPEN_PHASES:
            compare(await read_models.dashboard(sessions, today=TODAY, phase=phase), await oracle(sessions, TODAY, phase=phase))
        evidence = {f.code: f for f in (await read_models.dashboard(sessions, today=TODAY, phase="evidence_requested")).forces}
        assert evidence["WYP"].open_recommendations == 1 and evidence["CUM"].open_recommendations == 0
        # ... and by programme.
        async with sessions.begin() as session:
            await session.execute(update(Inspection).where(Inspection.id == ids["DUR"]).values(programme="JTAI"))
        jtai = await read_models.dashboard(sessions, today=TODAY, programme="JTAI")
        compare(jtai, await oracle(sessions, TODAY, programme="JTAI"))
        assert {f.code for f in jtai.forces if f.inspections} == {"DUR"} and jtai.programmes == ["JTAI", "NCPI"]

        # Sorting.
        by_overdue = await read_models.dashboard(sessions, today=TODAY, sort="overdue", descending=True)
        assert [f.overdue for f in by_overdue.forces] == sorted((f.overdue for f in by_overdue.forces), reverse=True)
        by_next = await read_models.dashboard(sessions, today=TODAY, sort="next_deadline")
        dated = [f.next_deadline for f in by_next.forces if f.next_deadline]
        assert dated == sorted(dated) and by_next.forces[0].code == "SUR"
        by_rag = await read_models.dashboard(sessions, today=TODAY, sort="rag")
        assert [f.rag for f in by_rag.forces][:2] == ["red", "red"]


async def test_the_dashboard_page(sqlite_sessions, tmp_path):
    url, sessions = sqlite_sessions
    await build(sessions, tmp_path)
    app = create_app(web_settings(url, tmp_path), sessions=sessions, today=lambda: TODAY)
    b = browser(app)
    try:
        await b.sign_in(await add_user(sessions, "viewer"))
        page = await b.get("/")
        assert page.status_code == 200
        assert page.text.count('<tr class="govuk-table__row">') == 44  # the header row and 43 forces
        assert 'href="/forces/CUM">Cumbria Constabulary</a>' in page.text
        cumbria_row = page.text.split('href="/forces/CUM"', 1)[1].split("</tr>", 1)[0]
        assert "govuk-tag--red" in cumbria_row and "Overdue" in cumbria_row
        durham_row = page.text.split('href="/forces/DUR"', 1)[1].split("</tr>", 1)[0]
        assert "govuk-tag--yellow" in durham_row and "Due within 30 days" in durham_row
        assert 'aria-sort="ascending"' in page.text  # sorted by force name

        sorted_page = await b.get("/?sort=overdue&order=desc&phase=in_progress")
        assert sorted_page.status_code == 200
        assert 'aria-sort="descending"' in sorted_page.text
        assert '<option value="in_progress" selected>' in sorted_page.text
        first_row = sorted_page.text.split("<tbody", 1)[1].split("</tr>", 1)[0]
        assert "/forces/CUM" in first_row
        assert (await b.get("/?sort=nonsense")).status_code == 400
        assert (await b.get("/?phase=closed")).status_code == 400
    finally:
        await b.aclose()


# ---------------------------------------------------------------- against the workflows themselves


def workflow_clock(state) -> date | None:
    """The due date of the clock a recommendation workflow runs now (its `_active_deadlines`, and its
    own deadline while published), from its live state."""
    if state.phase.value in read_models.RUNNING_PHASES and (state.force_claim is None or state.force_claim.value != "implemented"):
        return state.deadline.due
    if state.phase.value == "evidence_requested" and state.evidence_deadline is not None:
        return state.evidence_deadline.due
    return None


async def test_the_projected_clock_follows_the_workflows_deadlines(dev_server_env, tmp_path):
    """Published, a deadline revised, the revisit, evidence, a decision that starts a further cycle, a
    closing decision and a re-opening: after each, `clock_due` is the due date of the clock the
    workflow itself runs, and the report-level items agree with the records."""
    from ncpi_workflow.app import force_responses, inspector_actions, publishing
    from tests.lifecycle_support import harness, write_report
    from tests.test_cli_devserver import calendar, eventually, phase_is, projected, publication_date, recommendation_row, view

    async with harness(dev_server_env, tmp_path) as h:
        settings = h.settings.model_copy(update={"temporal_address": dev_server_env.address})
        published = publication_date()
        report = write_report(tmp_path, "GLO", published, [("R1", "within_three_months"), ("R2", "within_six_months")])
        await publishing.publish_file(settings, h.client, report, by="test")
        iid = f"GLO-{published.isoformat()}"
        r1, r2 = f"{iid}-R1", f"{iid}-R2"
        await projected(h, iid, 2)

        async def agrees(rec_id: str, phase: str, cycle: int = 1) -> date | None:
            async def check():
                state = (await view(h, rec_id)).state
                row = await recommendation_row(h, rec_id)
                if state.phase.value != phase or state.cycle != cycle or row.projection_version != state.projection_version:
                    return None
                return (row, workflow_clock(state)) if row.clock_due == workflow_clock(state) else None

            row, due = await eventually(check, timeout=30)
            return due

        first = await agrees(r1, "force_notified")
        assert first is not None and first > published
        assert await agrees(r2, "force_notified") is not None
        await assert_projection_agrees(h.sessions)

        # A revision: the projected clock is the new date.
        new_due = calendar().add_working_days(first, 5)
        await inspector_actions.revise_deadline(settings, h.client, r1, "recommendation", new_due, "agreed with the force",
                                                by="hmi@inspectorate.example")
        assert await agrees(r1, "force_notified") == new_due

        # The revisit: evidence requested, the evidence clock runs; the revisit limit is no longer awaited.
        await inspector_actions.trigger_revisit(settings, h.client, iid, by="hmi@inspectorate.example")
        await phase_is(h, r1, "evidence_requested")
        evidence_due = await agrees(r1, "evidence_requested")
        assert evidence_due is not None and evidence_due != new_due
        await eventually(lambda: _inspection_phase(h, iid, "revisit_open"))
        await assert_projection_agrees(h.sessions)

        # Evidence, then a decision that starts a further cycle with a new deadline.
        evidence = tmp_path / "profile.pdf"
        evidence.write_bytes(b"%PDF-1.4 problem profile in use")
        for rec_id in (r1, r2):
            await force_responses.submit_evidence(settings, h.client, rec_id, evidence, by="Liaison officer")
            assert await agrees(rec_id, "under_review") is None
        await inspector_actions.record_decision(settings, h.client, r1, "partially_achieved", "Half done", by="hmi@inspectorate.example")
        second_cycle = await agrees(r1, "in_progress", cycle=2)
        assert second_cycle is not None and second_cycle > published

        # A closing decision (nothing runs), then a re-opening (a new cycle's clock runs).
        await inspector_actions.record_decision(settings, h.client, r2, "achieved", "Done", by="hmi@inspectorate.example")
        assert await agrees(r2, "closed") is None
        await inspector_actions.reopen(settings, h.client, r2, "Not sustained", by="hmi@inspectorate.example")
        assert await agrees(r2, "in_progress", cycle=2) is not None
        await assert_projection_agrees(h.sessions)

        # The dashboard's figures are the records' own.
        today = london_today()
        compare(await read_models.dashboard(h.sessions, today=today), await oracle(h.sessions, today))


async def _inspection_phase(h, inspection_id: str, phase: str) -> bool:
    async with h.sessions() as session:
        return (await session.get(Inspection, inspection_id, populate_existing=True)).phase == phase


async def test_the_dashboard_counts_from_the_follow_ups_calendar(dev_server_env, tmp_path):
    """Under a time scale the dashboard's today is the follow-up's calendar day at the app's clock
    instant (its workflow's mapping), not the wall clock's: 70 calendar days after publication the
    action plan (six weeks) is overdue, though by the wall clock it is not due for weeks."""
    from ncpi_workflow.app import publishing
    from ncpi_workflow.formatting import local_date
    from tests.lifecycle_support import harness, write_report
    from tests.test_cli_devserver import projected, publication_date, view
    from tests.web.conftest import SECRET, FakeClock

    scale_factor = 1000.0
    async with harness(dev_server_env, tmp_path, time_scale=scale_factor) as h:
        settings = h.settings.model_copy(update={"temporal_address": dev_server_env.address, "secret_key": SECRET})
        published = publication_date()
        report = write_report(tmp_path, "NOR", published, [("R1", "within_six_months")])
        anchor = datetime.now(timezone.utc)
        await publishing.publish_file(settings, h.client, report, anchor=anchor, by="test")
        iid = f"NOR-{published.isoformat()}"
        await projected(h, iid, 1)
        scale = (await view(h, iid)).time_scale
        assert scale.factor == scale_factor

        clock = FakeClock((anchor + timedelta(days=70) / scale_factor).timestamp())
        expected = local_date(scale.to_calendar(datetime.fromtimestamp(clock(), timezone.utc)))
        assert expected >= published + timedelta(days=69) and expected > london_today() + timedelta(days=30)
        assert await read_models.calendar_today(h.sessions, lambda: _client(h), datetime.fromtimestamp(clock(), timezone.utc)) == expected

        app = create_app(settings, clock=clock)
        b = browser(app)
        try:
            await b.sign_in(await add_user(h.sessions, "viewer"))
            page = await b.get("/")
            assert page.status_code == 200
            assert f"forces on {expected.day} {expected:%B %Y}" in " ".join(page.text.split())
            row = page.text.split('href="/forces/NOR"', 1)[1].split("</tr>", 1)[0]
            assert "govuk-tag--red" in row  # the action plan and the PCC response, on the follow-up's calendar

            # The wall clock's today would show nothing overdue yet.
            wall = {f.code: f for f in (await read_models.dashboard(h.sessions, today=london_today())).forces}
            assert wall["NOR"].overdue == 0
            board = {f.code: f for f in (await read_models.dashboard(h.sessions, today=expected)).forces}
            assert board["NOR"].overdue_items >= 2
        finally:
            await b.aclose()
            await app.state.services.close()


async def _client(h):
    return h.client


async def test_without_temporal_the_dashboard_counts_from_the_wall_clock(sqlite_sessions, tmp_path):
    """A follow-up whose workflow cannot be asked (Temporal a closed port): the page still answers,
    within the time-scale lookup's limit, on the wall clock's London day; and asks again only later."""
    import time as time_module

    url, sessions = sqlite_sessions
    iid = await seed(sessions, tmp_path, "CUM", london_today() - timedelta(days=10), [("R1", "immediately")])
    async with sessions.begin() as session:
        await session.execute(update(Inspection).where(Inspection.id == iid).values(workflow_id=f"ncpi-inspection-{iid}"))
    app = create_app(web_settings(url, tmp_path), sessions=sessions)
    b = browser(app)
    try:
        await b.sign_in(await add_user(sessions, "viewer"))
        started = time_module.monotonic()
        page = await b.get("/")
        assert page.status_code == 200
        assert time_module.monotonic() - started < read_models.SCALE_QUERY_TIMEOUT_SECONDS + 5
        today = london_today()
        assert f"forces on {today.day} {today:%B %Y}" in " ".join(page.text.split())
        assert iid in read_models._unanswered  # not asked again for a while
    finally:
        await b.aclose()
        read_models._unanswered.pop(iid, None)


async def test_migration_0006_backfills_the_rows_written_before_it(migrated_database_url, tmp_path):
    """Records written, the schema taken back to 0005 (the projected columns gone) and upgraded
    again: every row's projected columns are filled from the records, and the figures are the same."""
    import asyncio

    from alembic import command

    async with db.open_database(migrated_database_url) as sessions:
        await build(sessions, tmp_path)
        before = await read_models.dashboard(sessions, today=TODAY)
    config = db.alembic_config(migrated_database_url)
    await asyncio.to_thread(command.downgrade, config, "0005")
    await asyncio.to_thread(command.upgrade, config, "head")
    async with db.open_database(migrated_database_url) as sessions:
        assert await assert_projection_agrees(sessions) == 0  # every row backfilled, none left for the long way
        after = await read_models.dashboard(sessions, today=TODAY)
        compare(after, await oracle(sessions, TODAY))
        assert after.forces == before.forces
