"""The all-forces dashboard: its aggregates (one SQL query over the projection tables) against a
plain-Python reading of the same records, on SQLite and PostgreSQL; RAG by policy; filters and
sorting by query parameters; the page itself."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

from sqlalchemy import select, update

from ncpi_workflow import db
from ncpi_workflow.app import read_models
from ncpi_workflow.models import Deadline, Inspection, Recommendation
from ncpi_workflow.web.app import create_app
from tests.web.conftest import FORCES, add_user, browser, seed_report, web_settings

TODAY = date(2026, 6, 15)  # a Monday


async def set_recommendation(sessions, rec_id: str, **values) -> None:
    async with sessions.begin() as session:
        await session.execute(update(Recommendation).where(Recommendation.id == rec_id).values(**values))


async def set_deadline(sessions, inspection_id: str, key: str, **values) -> None:
    async with sessions.begin() as session:
        await session.execute(update(Deadline).where(Deadline.inspection_id == inspection_id, Deadline.key == key).values(**values))


async def build(sessions, folder) -> dict[str, str]:
    """Crafted follow-ups, one situation per force."""
    ids = {}
    # CUM: R1 in progress and past due (overdue); R2 past due but the force claims it implemented (not
    # overdue); R3 closed (not open); the PCC response not received and past due (overdue, report level);
    # the action plan received. The revisit is open, so its limit is not "due".
    ids["CUM"] = cum = await seed_report(sessions, folder, "CUM", TODAY - timedelta(days=200),
                                         [("R1", "within_three_months"), ("R2", "within_three_months"), ("R3", "immediately")])
    await set_recommendation(sessions, f"{cum}-R1", phase="in_progress")
    await set_recommendation(sessions, f"{cum}-R2", phase="in_progress", force_claim="implemented")
    await set_recommendation(sessions, f"{cum}-R3", phase="closed", outcome="achieved")
    await set_deadline(sessions, cum, "action_plan", met_at=datetime(2026, 1, 10, tzinfo=timezone.utc))
    await set_deadline(sessions, cum, "immediate_update", met_at=datetime(2026, 1, 10, tzinfo=timezone.utc))
    async with sessions.begin() as session:
        await session.execute(update(Inspection).where(Inspection.id == cum).values(phase="revisit_open"))

    # DUR: published ten days ago, an "immediately" recommendation due within 30 days: amber.
    ids["DUR"] = dur = await seed_report(sessions, folder, "DUR", TODAY - timedelta(days=10), [("R1", "immediately")])
    await set_recommendation(sessions, f"{dur}-R1", phase="force_notified")

    # NYP: nothing running soon, but its revisit limit falls within 30 days: amber.
    ids["NYP"] = nyp = await seed_report(sessions, folder, "NYP", TODAY - timedelta(days=165), [("R1", "within_three_months")])
    await set_recommendation(sessions, f"{nyp}-R1", phase="evidence_submitted")
    for key in ("action_plan", "pcc_response"):
        await set_deadline(sessions, nyp, key, met_at=datetime(2026, 2, 1, tzinfo=timezone.utc))

    # WYP: evidence requested and its deadline passed: overdue (red) on the evidence clock.
    ids["WYP"] = wyp = await seed_report(sessions, folder, "WYP", TODAY - timedelta(days=150), [("R1", "within_six_months")])
    await set_recommendation(sessions, f"{wyp}-R1", phase="evidence_requested")
    for key in ("action_plan", "pcc_response"):
        await set_deadline(sessions, wyp, key, met_at=datetime(2026, 2, 1, tzinfo=timezone.utc))
    async with sessions.begin() as session:
        session.add(Deadline(inspection_id=wyp, recommendation_id=f"{wyp}-R1", key="evidence:R1", kind="evidence", cycle=1,
                             original_due=TODAY - timedelta(days=1), current_due=TODAY - timedelta(days=1)))
        await session.execute(update(Inspection).where(Inspection.id == wyp).values(phase="revisit_open"))

    # KEN: published ten days ago, only a six-month recommendation; the action plan (six weeks) is
    # more than 30 days away: green.
    ids["KEN"] = await seed_report(sessions, folder, "KEN", TODAY - timedelta(days=10), [("R1", "within_six_months")])
    await set_recommendation(sessions, f"{ids['KEN']}-R1", phase="in_progress")

    # SUR: a second cycle's deadline, revised to tomorrow (the revision is what counts).
    ids["SUR"] = sur = await seed_report(sessions, folder, "SUR", TODAY - timedelta(days=120), [("R1", "within_three_months")])
    await set_recommendation(sessions, f"{sur}-R1", phase="in_progress", cycle=2)
    for key in ("action_plan", "pcc_response"):
        await set_deadline(sessions, sur, key, met_at=datetime(2026, 2, 1, tzinfo=timezone.utc))
    async with sessions.begin() as session:
        session.add(Deadline(inspection_id=sur, recommendation_id=f"{sur}-R1", key="recommendation:R1", kind="recommendation",
                             cycle=2, original_due=TODAY + timedelta(days=40), current_due=TODAY + timedelta(days=1)))
        await session.execute(update(Inspection).where(Inspection.id == sur).values(phase="revisit_open"))
    return ids


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
