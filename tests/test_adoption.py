"""Adoption (issue 14 §1) on the time-skipping server, with a real SMTP capture: a follow-up taken over
part-way runs exactly as if the product had run it from the start, sends nothing for the past, and
applies the actions already taken (imported) itself, in time order.

Each test runs the same report twice in one harness, under two force codes: once from the start (the
clock skipped through the past, every message sent on its day, every action taken on its day) and once
adopted at that instant; the two end in the same state. The adopted one is started with the same time
scale as the other (anchored at publication), so that both follow one calendar on the skipping clock;
`ncpi publish --adopt` does the same in real time (tests/test_import.py covers that path)."""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta, timezone

from sqlalchemy import select

from ncpi_workflow.clocks import TimeScale, calendar_for_report, plan_report
from ncpi_workflow.forces import load_forces
from ncpi_workflow.lifecycle import (
    DecisionRequest,
    DeliveryRequest,
    ImportedDecision,
    ImportedDelivery,
    ImportedInspection,
    ImportedProgress,
    ImportedRecommendation,
    ImportedRegisterEntry,
    ImportedRevisit,
    InspectionInput,
    ProgressRequest,
    RecommendationRef,
    RegisterStatusRequest,
    TriggerRevisitRequest,
    inspection_workflow_id,
)
from ncpi_workflow.models import Deadline, Decision, ProgressUpdate, Revisit
from ncpi_workflow.policy import load_policy
from ncpi_workflow.publishing import publish
from ncpi_workflow.report import load_report
from ncpi_workflow.store import insert_report, load_reference_forces, recommendation_id
from tests.conftest import ROOT
from tests.lifecycle_support import harness, local_date, skip_to, write_report
from tests.test_lifecycle_timeskipping import at, eventually, insp_view, rec_view, summary

KENT = ROOT / "examples" / "kent-2017.yaml"
REFS = ("R1", "R2", "R3", "R4", "R5")


# ---------------------------------------------------------------- starting the two runs


async def start_from_the_start(h, file, published: date) -> None:
    """Published with its clock anchored at the server's now: the skipping clock runs through its past."""
    h.anchor = await h.env.get_current_time()
    h.published_at = at(published.year, published.month, published.day)
    assert (await publish(h.settings, h.client, file, anchor=h.anchor)).started


async def start_adopted(h, file, adopted_at: datetime, imported: ImportedInspection | None = None,
                        recommendations: dict[str, ImportedRecommendation] | None = None, started: list | None = None) -> str:
    """The records as `publish` writes them, then the follow-up started adopted at `adopted_at` (a calendar
    instant), on the same calendar as the run from the start."""
    forces = load_forces(h.settings.forces_file)
    loaded = load_report(file, known_forces=set(forces), max_bytes=h.settings.report_max_bytes)
    report = loaded.report
    policy = load_policy(h.settings.policy)
    calendar = calendar_for_report(policy, report.published)
    timeline = plan_report(report.published, [(r.ref, r.timeframe) for r in report.recommendations], policy, calendar)
    workflow_id = inspection_workflow_id(report.inspection_id)
    async with h.sessions.begin() as session:
        await load_reference_forces(session, forces)
        await insert_report(session, loaded, timeline, actor="test", workflow_id=workflow_id)
    recommendations = recommendations or {}
    handle = await h.client.start_workflow(
        "InspectionFollowUp",
        InspectionInput(
            inspection_id=report.inspection_id, force_code=report.force, force_name=forces[report.force].name,
            programme=report.programme, title=report.title, published=report.published,
            recommendations=[RecommendationRef(recommendation_id(report.inspection_id, r.ref), r.ref, r.timeframe.value,
                                               imported=recommendations.get(r.ref)) for r in report.recommendations],
            policy=policy, calendar=calendar, time_scale=TimeScale(1.0, h.published_at, h.anchor),
            adopted_at=adopted_at, imported=imported,
        ),
        id=workflow_id, task_queue=h.settings.task_queue,
    )
    if started is not None:
        started.append(handle)
    return report.inspection_id


def copy_of(folder, source, force: str):
    text = source.read_text()
    path = folder / f"{force.lower()}-{source.name}"
    path.write_text(re.sub(r"(?m)^force: \w+$", f"force: {force}", text))
    return path


async def skip_in_short_steps(h, calendar_instant: datetime, step: timedelta = timedelta(days=5)) -> None:
    """skip_to in shorter steps: on a loaded machine each step (one RPC) stays well inside its timeout."""
    target = h.anchor + (calendar_instant - h.published_at)
    while (now := await h.env.get_current_time()) < target:
        await h.env.sleep(min(target - now, step))


async def calendar_now(h) -> datetime:
    return TimeScale(1.0, h.published_at, h.anchor).to_calendar(await h.env.get_current_time())


# ---------------------------------------------------------------- comparing the two


def minute(instant: datetime | None):
    if instant is None:
        return None
    if instant.tzinfo is None:
        instant = instant.replace(tzinfo=timezone.utc)
    return instant.astimezone(timezone.utc).replace(second=0, microsecond=0)


NOT_SENT = " not sent (before adoption)"
RECORDED = re.compile(r" \(recorded \d{4}-\d{2}-\d{2}\)$")
ID = re.compile(r"[A-Z]{3}-\d{4}-\d{2}-\d{2}-")


def events(entries):
    """A history without the notifications (sent in one run, not sent in the other), to the minute."""
    return sorted((minute(e.at), ID.sub("", e.event), e.by, ID.sub("", RECORDED.sub("", e.detail))) for e in entries
                  if not e.event.endswith(" sent") and not e.event.endswith(NOT_SENT) and e.event != "import refused")


def deadline_shape(d):
    if d is None:
        return None
    return (d.key, d.kind, d.cycle, d.original_due, d.due, minute(d.opened_at), minute(d.met_at), sorted(set(d.handled)),
            minute(d.silent_from))


def inspection_shape(view):
    s = view.state
    return dict(
        phase=s.phase, cycle=s.cycle, open=[r.rsplit("-", 1)[-1] for r in s.open_recommendations],
        settled={r.rsplit("-", 1)[-1]: o for r, o in s.settled.items()},
        revisit=(minute(s.revisit_opened_at), s.revisit_trigger, s.revisit_by),
        deadlines=[deadline_shape(d) for d in s.deadlines], history=events(s.history),
    )


def recommendation_shape(view):
    s = view.state
    return dict(
        phase=s.phase, cycle=s.cycle, claim=s.force_claim, outcome=s.outcome, review_open=s.review_open,
        review_opened_at=minute(s.review_opened_at), closed_at=minute(s.closed_at),
        deadline=deadline_shape(s.deadline), evidence_deadline=deadline_shape(s.evidence_deadline),
        register=[(e.status, e.comment, e.by, minute(e.at)) for e in s.register], history=events(s.history),
    )


def sent(entries):
    return sorted((minute(e.at), e.event[: -len(" sent")], e.detail) for e in entries if e.event.endswith(" sent") and not e.event.endswith(NOT_SENT))


def not_sent(entries):
    return sorted((minute(e.at), e.event[: -len(NOT_SENT)], e.detail) for e in entries if e.event.endswith(NOT_SENT))


async def shapes(h, inspection_id, refs):
    inspection = await insp_view(h, inspection_id)
    recommendations = {ref: await rec_view(h, f"{inspection_id}-{ref}") for ref in refs}
    return inspection, recommendations


async def same_state(h, live_id, adopted_id, refs):
    """Both runs' states, once equal (the adopted one catches up in moments): the comparison is the test."""
    async def equal():
        live, live_recs = await shapes(h, live_id, refs)
        adopted, adopted_recs = await shapes(h, adopted_id, refs)
        if adopted.state.imports is not None and (adopted.state.imports.deliveries or adopted.state.imports.revisits):
            return None
        if inspection_shape(live) != inspection_shape(adopted):
            return None
        if any(recommendation_shape(live_recs[r]) != recommendation_shape(adopted_recs[r]) for r in refs):
            return None
        return live, live_recs, adopted, adopted_recs

    try:
        return await eventually(equal, timeout=60)
    except AssertionError:
        live, live_recs = await shapes(h, live_id, refs)
        adopted, adopted_recs = await shapes(h, adopted_id, refs)
        for key, value in inspection_shape(adopted).items():
            assert value == inspection_shape(live)[key], key
        for ref in refs:
            assert recommendation_shape(adopted_recs[ref]) == recommendation_shape(live_recs[ref]), ref
        raise


def addresses(h, force: str) -> set[str]:
    contacts = load_forces(h.settings.forces_file)[force].contacts
    return {c.email.lower() for c in (contacts.liaison_officer, contacts.chief_officer, contacts.pcc)}


def received_by(h, emails: set[str]):
    return [m for m in h.smtp.messages if emails & {r.lower() for r in m.rcpt_tos}]


async def rows_of(h, inspection_id):
    return [n for n in await h.notifications() if n.inspection_id == inspection_id]


# ---------------------------------------------------------------- the tests


async def test_kent_adopted_sends_nothing_for_the_past_and_runs_as_if_from_the_start(time_skipping_env, tmp_path):
    # Kent 2017 (published Friday 21 April 2017), nobody acting: by Monday 6 November 2017 every report-level
    # deadline has passed with all its reminders and escalations, the revisit opened by itself at its limit
    # (Friday 20 October) and the evidence it asked for was due on Friday 3 November.
    live_file, adopted_file = copy_of(tmp_path, KENT, "ESS"), copy_of(tmp_path, KENT, "KEN")
    async with harness(time_skipping_env, tmp_path) as h:
        await start_from_the_start(h, live_file, date(2017, 4, 21))
        await skip_to(h, at(2017, 11, 6, 10))
        adopted_at = await calendar_now(h)
        before = len(h.smtp.messages)
        kent = await start_adopted(h, adopted_file, adopted_at)
        live, live_recs, adopted, adopted_recs = await same_state(h, "ESS-2017-04-21", kent, REFS)

        # The revisit opened at the limit's own instant, not at adoption; the evidence deadline counts from it.
        assert adopted.state.phase == "revisit_open" and adopted.state.revisit_trigger == "automatic"
        assert minute(adopted.state.revisit_opened_at) == minute(at(2017, 10, 20, 9))
        for ref in REFS:
            rec = adopted_recs[ref].state
            assert rec.phase == "evidence_requested" and rec.evidence_deadline.due == date(2017, 11, 3)
            assert minute(rec.review_opened_at) == minute(at(2017, 10, 20, 9))
        # Every message the run from the start sent is, in the adopted one, "not sent (before adoption)";
        # and only those, with the publication notice, the revisit's and the evidence requests.
        assert not_sent(adopted.state.history) == sorted([
            *sent(live.state.history),
            (minute(at(2017, 4, 21, 9)), "published", "Inspection report published: Kent Police - National child protection inspection (illustrative)"),
            (minute(at(2017, 10, 20, 9)), "revisit_opened", "Revisit of Kent Police opened (at the six-month limit)"),
        ])
        assert len(sent(live.state.history)) >= 10  # reminders, due-today notices, overdue reminders, escalations
        for ref in REFS:
            live_sent, skipped = sent(live_recs[ref].state.history), not_sent(adopted_recs[ref].state.history)
            assert [s for s in skipped if s[1] != "evidence_request"] == live_sent
            assert [s[1] for s in skipped if s[1] == "evidence_request"] == ["evidence_request"]

        # Nothing in the outbox for the past, nothing sent to Kent; the run from the start sent its own.
        assert await rows_of(h, kent) == []
        assert received_by(h, addresses(h, "KEN")) == []
        assert len(await rows_of(h, "ESS-2017-04-21")) > 40 and before > 0
        async with h.sessions() as session:
            [revisit] = (await session.scalars(select(Revisit).where(Revisit.inspection_id == kent))).all()
            assert (revisit.trigger, minute(revisit.opened_at)) == ("automatic", minute(at(2017, 10, 20, 9)))
            assert minute(revisit.recorded_at) == minute(adopted_at)

        # The next message, in the future at adoption, IS sent when its time comes: the evidence is five
        # working days overdue on Friday 10 November 2017 (the chief officer is told).
        await skip_to(h, at(2017, 11, 10, 12))
        expected = [("2017-11-10", "escalation", ref) for ref in REFS]
        assert sorted(summary(await eventually(lambda: _rows_when(h, kent, 5)))) == expected
        assert sorted(r for r in summary(await rows_of(h, "ESS-2017-04-21")) if r[0] == "2017-11-10") == expected
        mails = await eventually(lambda: _mails(h, addresses(h, "KEN"), 5))
        assert all("liaison@kent.police.example" in {r.lower() for r in m.rcpt_tos} for m in mails)
        await same_state(h, "ESS-2017-04-21", kent, REFS)


async def _rows_when(h, inspection_id, count):
    rows = await rows_of(h, inspection_id)
    return rows if len(rows) >= count else None


async def _mails(h, emails, count):
    mails = received_by(h, emails)
    return mails if len(mails) >= count else None


# Tuesday 7 February 2017, two "within three months" recommendations (due Monday 8 May).
PUBLISHED = date(2017, 2, 7)


async def test_imported_actions_end_as_the_same_actions_taken_live(time_skipping_env, tmp_path):
    live_file = write_report(tmp_path, "NTH", PUBLISHED, [("R1", "within_three_months"), ("R2", "within_three_months")])
    adopted_file = write_report(tmp_path, "NUM", PUBLISHED, [("R1", "within_three_months"), ("R2", "within_three_months")])
    live_id, adopted_id = "NTH-2017-02-07", "NUM-2017-02-07"
    async with harness(time_skipping_env, tmp_path) as h:
        await start_from_the_start(h, live_file, PUBLISHED)
        insp = h.inspection(live_id)
        r1, r2 = h.recommendation(f"{live_id}-R1"), h.recommendation(f"{live_id}-R2")

        # The same actions, live at noon on their days...
        await skip_to(h, at(2017, 2, 20, 12))
        await r1.execute_update("submit_progress", ProgressRequest("in_progress", "Training has started.", "liaison officer"))
        await skip_to(h, at(2017, 3, 1, 12))
        await insp.execute_update("record_delivery", DeliveryRequest("action_plan", "hmi.office", "received by email"))
        await skip_to(h, at(2017, 3, 6, 12))
        await r2.execute_update("set_register_status", RegisterStatusRequest("being progressed", "The plan names an owner.", "hmi.lead"))
        await skip_to(h, at(2017, 3, 29, 12))
        await insp.execute_update("record_delivery", DeliveryRequest("pcc_response", "hmi.office", url="https://pcc.example/response"))
        await skip_to(h, at(2017, 4, 3, 12))
        await insp.execute_update("trigger_revisit", TriggerRevisitRequest("hmi.lead"))
        # The evidence was due on Wednesday 19 April (after Easter); none came, so the inspectors judge without it.
        await skip_to(h, at(2017, 4, 24, 12))
        await r1.execute_update("record_decision", DecisionRequest("achieved", "Every officer is trained.", "hmi.lead"))
        await skip_to(h, at(2017, 4, 25, 12))
        await r2.execute_update("record_decision", DecisionRequest("partially_achieved", "Half the districts only.", "hmi.lead"))
        await eventually(lambda: _cycle_is(h, live_id, 2))
        await skip_to(h, at(2017, 5, 15, 12))
        await r2.execute_update("submit_progress", ProgressRequest("in_progress", "The other districts start in June.", "liaison officer"))

        # ... and imported into a follow-up adopted on Thursday 1 June 2017, with one action its checks refuse.
        await skip_to(h, at(2017, 6, 1, 10))
        adopted_at = await calendar_now(h)
        imported = ImportedInspection(
            deliveries=[ImportedDelivery("pcc_response", date(2017, 3, 29), "hmi.office", url="https://pcc.example/response"),
                        ImportedDelivery("action_plan", date(2017, 3, 1), "hmi.office", "received by email")],
            revisits=[ImportedRevisit(1, date(2017, 4, 3), "hmi.lead")],
        )
        recommendations = {
            "R1": ImportedRecommendation(
                progress=[ImportedProgress(date(2017, 2, 20), "in_progress", "Training has started.", "liaison officer")],
                decisions=[ImportedDecision(1, date(2017, 4, 24), "achieved", "Every officer is trained.", "hmi.lead")],
                # R1 is closed by then: refused, in history, and the follow-up carries on.
                register=[ImportedRegisterEntry(date(2017, 5, 2), "being progressed", "Too late.", "hmi.lead")],
            ),
            "R2": ImportedRecommendation(
                register=[ImportedRegisterEntry(date(2017, 3, 6), "being progressed", "The plan names an owner.", "hmi.lead")],
                decisions=[ImportedDecision(1, date(2017, 4, 25), "partially_achieved", "Half the districts only.", "hmi.lead")],
                progress=[ImportedProgress(date(2017, 5, 15), "in_progress", "The other districts start in June.", "liaison officer")],
            ),
        }
        await start_adopted(h, adopted_file, adopted_at, imported, recommendations)
        # Both workflows continue-as-new while they catch up: watch the records, not the workflows, until they
        # are done (a query landing as a workflow continues-as-new can hold the test server's clock for good).
        await eventually(lambda: _caught_up_in_records(h, adopted_id), timeout=60)
        live, live_recs, adopted, adopted_recs = await same_state(h, live_id, adopted_id, ("R1", "R2"))

        assert (adopted.state.phase, adopted.state.cycle) == ("following_up", 2)
        assert [d.met_at is not None for d in adopted.state.deadlines if d.key in ("action_plan", "pcc_response")] == [True, True]
        assert (adopted_recs["R1"].state.phase, adopted_recs["R1"].state.outcome) == ("closed", "achieved")
        r2_state = adopted_recs["R2"].state
        assert (r2_state.phase, r2_state.cycle, r2_state.deadline.due) == ("in_progress", 2, date(2017, 7, 25))
        assert [e.status for e in r2_state.register] == ["awaiting review", "being progressed"]
        refused = [e for e in adopted_recs["R1"].state.history if e.event == "import refused"]
        assert [(local_date(e.at), e.detail) for e in refused] == [
            (date(2017, 5, 2), "register of 2017-05-02: the recommendation is closed; re-open it before changing its register status")
        ]
        assert adopted_recs["R1"].state.imports.register == [] and adopted_recs["R2"].state.imports.progress == []
        # The decision waited for its review: R2's cycle 2 counts from the decision, and so does the inspection's.
        assert [d.due for d in adopted.state.deadlines if d.key == "revisit_by"] == [date(2017, 7, 25)]

        # Nothing sent for the past: no outbox row, no email to Northumbria.
        assert await rows_of(h, adopted_id) == []
        assert received_by(h, addresses(h, "NUM")) == []
        assert any(n.kind == "decision" for n in await rows_of(h, live_id))

        async with h.sessions() as session:
            def mine(rows, prefix):
                return [r for r in rows if r.recommendation_id.startswith(prefix)]

            decisions = (await session.scalars(select(Decision).order_by(Decision.recommendation_id))).all()
            live_rows = [(d.recommendation_id[-2:], d.cycle, d.outcome, local_date(minute(d.decided_at))) for d in mine(decisions, live_id)]
            adopted_rows = [(d.recommendation_id[-2:], d.cycle, d.outcome, local_date(minute(d.decided_at))) for d in mine(decisions, adopted_id)]
            assert adopted_rows == live_rows == [("R1", 1, "achieved", date(2017, 4, 24)), ("R2", 1, "partially_achieved", date(2017, 4, 25))]
            assert {minute(d.recorded_at) for d in mine(decisions, adopted_id)} == {minute(adopted_at)}
            revisits = (await session.scalars(select(Revisit).order_by(Revisit.inspection_id))).all()
            assert [(r.inspection_id, r.cycle, r.trigger, r.triggered_by, local_date(minute(r.opened_at))) for r in revisits] == [
                (live_id, 1, "inspector", "hmi.lead", date(2017, 4, 3)), (adopted_id, 1, "inspector", "hmi.lead", date(2017, 4, 3)),
            ]
            progress = (await session.scalars(select(ProgressUpdate).order_by(ProgressUpdate.submitted_at))).all()
            assert [(p.recommendation_id[-2:], local_date(minute(p.submitted_at))) for p in mine(progress, adopted_id)] == [
                ("R1", date(2017, 2, 20)), ("R2", date(2017, 5, 15))
            ]
            met = (await session.scalars(select(Deadline).where(Deadline.met_at.is_not(None)).order_by(Deadline.key))).all()
            assert sorted((d.inspection_id, d.key, local_date(minute(d.met_at))) for d in met) == sorted(
                (i, k, day) for i in (live_id, adopted_id) for k, day in (("action_plan", date(2017, 3, 1)), ("pcc_response", date(2017, 3, 29)))
            )

        # Cycle 2 goes on as the live one does: the next reminder of R2's new deadline is sent on its day.
        await skip_in_short_steps(h, at(2017, 7, 11, 12))
        adopted_rows = summary(await eventually(lambda: _rows_when(h, adopted_id, 3)))
        assert ("2017-07-11", "reminder", "R2") in adopted_rows and all(row[0] >= "2017-06-01" for row in adopted_rows)
        assert sorted(adopted_rows) == sorted(r for r in summary(await rows_of(h, live_id)) if r[0] >= "2017-06-01")


async def _caught_up_in_records(h, inspection_id):
    from ncpi_workflow.models import Inspection, Recommendation

    async with h.sessions() as session:
        inspection = await session.get(Inspection, inspection_id)
        r1 = await session.get(Recommendation, f"{inspection_id}-R1")
        r2 = await session.get(Recommendation, f"{inspection_id}-R2")
        progress = (await session.scalars(select(ProgressUpdate).where(ProgressUpdate.recommendation_id == f"{inspection_id}-R2"))).all()
        return (inspection.cycle, inspection.phase, r1.phase, r2.cycle, len(progress)) == (2, "following_up", "closed", 2, 1)


async def _cycle_is(h, inspection_id, cycle):
    return (await insp_view(h, inspection_id)).state.cycle == cycle


async def test_a_refused_import_never_holds_the_follow_up_up(time_skipping_env, tmp_path):
    # The inspection refuses the imported revisit (an unknown trigger): the recommendation, waiting for that
    # revisit before its later imported progress, carries on by its own next message after the adoption.
    report = write_report(tmp_path, "HER", PUBLISHED, [("R1", "within_three_months")])
    async with harness(time_skipping_env, tmp_path) as h:
        h.anchor = await h.env.get_current_time()
        h.published_at = at(2017, 2, 7)
        await skip_to(h, at(2017, 4, 3, 10))
        adopted_at = await calendar_now(h)
        inspection_id = await start_adopted(
            h, report, adopted_at, ImportedInspection(revisits=[ImportedRevisit(1, date(2017, 3, 1), "hmi.lead", trigger="visit")]),
            {"R1": ImportedRecommendation(progress=[ImportedProgress(date(2017, 3, 10), "in_progress", "Started.", "liaison officer")])},
        )
        refused = await eventually(lambda: _refusals(h, inspection_id))
        assert [(local_date(e.at), e.by, e.detail) for e in refused] == [
            (date(2017, 3, 1), "hmi.lead", "revisit of 2017-03-01: unknown revisit trigger 'visit'; use inspector or automatic")]
        view = await rec_view(h, f"{inspection_id}-R1")
        assert view.state.force_claim is None and len(view.state.imports.progress) == 1  # waiting for the revisit
        assert (await insp_view(h, inspection_id)).state.phase == "following_up"

        # Its deadline is Monday 8 May 2017: the first reminder comes, and the progress is taken in with it.
        await skip_to(h, at(2017, 5, 8, 12))
        view = await eventually(lambda: _claimed(h, f"{inspection_id}-R1"))
        assert [(local_date(e.at), e.event) for e in view.state.history if e.event == "progress reported"] == [
            (date(2017, 3, 10), "progress reported")]
        rows = summary(await rows_of(h, inspection_id))
        assert ("2017-05-08", "due_today", "R1") in rows and any(r[1] == "reminder" and r[2] == "R1" for r in rows)
        assert all(r[0] >= "2017-04-03" for r in rows)


async def _refusals(h, inspection_id):
    return [e for e in (await insp_view(h, inspection_id)).state.history if e.event == "import refused"] or None


async def _claimed(h, rec_id):
    view = await rec_view(h, rec_id)
    return view if view.state.force_claim == "in_progress" else None


async def test_a_person_backdating_to_before_adoption_still_tells_the_force(time_skipping_env, tmp_path):
    # Adopted on Monday 1 May 2017 with nothing imported; then, live, an inspector records that the revisit
    # opened on Thursday 20 April and, later, decisions dated Tuesday 25 April: both before adoption. What a
    # person does is sent (the evidence requests, the decisions, the revisit's outcome), dated or not;
    # only what the follow-up catches up with on adoption is kept quiet.
    report = write_report(tmp_path, "DEC", PUBLISHED, [("R1", "within_three_months"), ("R2", "within_three_months")])
    async with harness(time_skipping_env, tmp_path) as h:
        h.anchor = await h.env.get_current_time()
        h.published_at = at(PUBLISHED.year, PUBLISHED.month, PUBLISHED.day)
        await skip_to(h, at(2017, 5, 1, 10))
        adopted = await start_adopted(h, report, await calendar_now(h))
        insp = h.inspection(adopted)
        await eventually(lambda: _projected_phase(h, f"{adopted}-R1", "in_progress", "force_notified"))
        assert {n.kind for n in await rows_of(h, adopted)} <= {"reminder", "due_today"}  # nothing for the past

        await skip_to(h, at(2017, 5, 2, 12))
        await insp.execute_update("trigger_revisit", TriggerRevisitRequest("hmi.lead", on=date(2017, 4, 20)))
        requests = await eventually(lambda: _kind_rows(h, adopted, "evidence_request", 2))
        assert all(minute(n.scheduled_for) >= minute(at(2017, 5, 2, 12)) for n in requests)  # sent now, not the past

        # The evidence (due 20 working days after 20 April) never came: the inspectors judge without it.
        await skip_to(h, at(2017, 6, 1, 12))
        for ref in ("R1", "R2"):
            await h.recommendation(f"{adopted}-{ref}").execute_update(
                "record_decision", DecisionRequest("achieved", "Done.", "hmi.lead", on=date(2017, 4, 25)))
        [outcome] = await eventually(lambda: _kind_rows(h, adopted, "revisit_outcome", 1))
        assert len(await _kind_rows(h, adopted, "decision", 2)) == 2
        view = await insp_view(h, adopted)
        assert view.state.phase == "closed" and minute(view.state.closed_at) == minute(at(2017, 4, 25, 12))
        assert minute(outcome.scheduled_for) >= minute(at(2017, 6, 1, 12))


async def _projected_phase(h, rec_id, *phases):
    view = await rec_view(h, rec_id)
    return view if view.state.phase in phases else None


async def _kind_rows(h, inspection_id, kind, count):
    rows = [n for n in await rows_of(h, inspection_id) if n.kind == kind]
    return rows if len(rows) >= count else None
