"""Back-dated actions from the inspectors' web app, end to end on the real Temporal dev server, a worker
on its own task queue and the database (SQLite and PostgreSQL): the delivery, revisit, decision and
register-status forms have an optional GOV.UK "Date it happened" input; a bad, future or too-early
date is an error summary linked to that input and changes nothing; a viewer may not back-date (403);
the pages show both dates, "22 March 2017 (recorded 2 December 2026)", where they differ."""

from __future__ import annotations

from datetime import date, timedelta

from ncpi_workflow.app import force_responses
from ncpi_workflow.app.publishing import publish_file
from ncpi_workflow.models import Deadline, Decision, RegisterStatusEntry, Revisit
from ncpi_workflow.web.app import create_app
from tests.lifecycle_support import harness, long, noon, utc, write_report
from tests.test_cli_devserver import eventually, phase_is, projected, rows, today
from tests.web.conftest import SECRET, add_user, browser, error_summary

FORCES = {"sqlite": "TVP", "postgresql": "SYP"}
"""Forces no other dev-server test publishes (one server, one workflow ID per report)."""


def on(day: date) -> dict[str, str]:
    return {"on-day": str(day.day), "on-month": str(day.month), "on-year": str(day.year)}


async def flash(b, response) -> str:
    assert response.status_code == 303, response.text[:3000]
    return (await b.get(response.headers["location"])).text


async def test_back_dating_from_the_web_forms(dev_server_env, tmp_path, database_url):
    force = FORCES["postgresql" if database_url.startswith("postgresql") else "sqlite"]
    async with harness(dev_server_env, tmp_path, database_url=database_url) as h:
        settings = h.settings.model_copy(update={"temporal_address": dev_server_env.address, "secret_key": SECRET})
        app = create_app(settings)
        inspector, viewer = browser(app), browser(app)
        try:
            assert (await inspector.sign_in(await add_user(h.sessions, "inspector"))).status_code == 303
            assert (await viewer.sign_in(await add_user(h.sessions, "viewer"))).status_code == 303
            now = today()
            published = now - timedelta(days=14)
            report = write_report(tmp_path, force, published, [("R1", "within_six_months"), ("R2", "within_six_months")])
            inspection = (await publish_file(settings, h.client, report, by="test")).inspection_id
            await projected(h, inspection, 2)
            r1, r2 = f"{inspection}-R1", f"{inspection}-R2"
            page_of = f"/inspections/{inspection}"
            recorded = f"(recorded {long(now)})"

            # The forms offer the optional date; the viewer sees none of them.
            page = (await inspector.get(page_of)).text
            for form in ("delivery", "revisit"):
                assert f'id="{form}-on"' in page and f'id="{form}-on-day"' in page and 'name="on-year"' in page
            assert "Date it happened (optional)" in page
            assert 'id="delivery-on"' not in (await viewer.get(page_of)).text

            # A date that is not one, or half of one, is refused before Temporal is asked; a day in the
            # future or before publication by the workflow's validator, at the same field.
            cases = [
                ({"on-day": "31", "on-month": "2", "on-year": str(now.year)},
                 "The date it happened must be a real date, for example 27 3 2027"),
                ({"on-day": "3"}, "The date it happened must include a month and year"),
                (on(now + timedelta(days=1)), f"The date it happened ({long(now + timedelta(days=1))}) is in the future"),
                (on(published - timedelta(days=1)),
                 f"The date it happened ({long(published - timedelta(days=1))}) is before the report was published on "
                 f"{published.isoformat()}"),
            ]
            for fields, reason in cases:
                response = await inspector.post(f"{page_of}/deliveries", {"item": "action_plan", "note": "by post", **fields},
                                                from_page=page_of)
                assert response.status_code == 400, response.text[:2000]
                [(href, text)] = error_summary(response.text)
                assert href == "#delivery-on-day" and text.startswith(reason), text
                assert f'value="{fields["on-day"]}"' in response.text  # the form keeps what was typed
                response = await inspector.post(f"{page_of}/revisit", fields, from_page=page_of)
                assert response.status_code == 400, response.text[:2000]
                [(href, text)] = error_summary(response.text)
                assert href == "#revisit-on-day" and text.startswith(reason), text

            # A viewer may not act, back-dated or not.
            for path, data in ((f"{page_of}/deliveries", {"item": "action_plan", **on(published)}),
                               (f"{page_of}/revisit", on(published)),
                               (f"/recommendations/{r2}/register", {"status": "being progressed", "comment": "x", **on(published)}),
                               (f"/recommendations/{r2}/decision", {"outcome": "achieved", "rationale": "x", **on(published)})):
                assert (await viewer.post(path, data, from_page="/")).status_code == 403, path
            [plan] = await rows(h, Deadline, Deadline.inspection_id == inspection, Deadline.key == "action_plan")
            assert plan.met_at is None and await rows(h, Revisit) == [] and await rows(h, RegisterStatusEntry) == []

            # The action plan received on day 3, recorded today.
            day3 = published + timedelta(days=3)
            text = await flash(inspector, await inspector.post(f"{page_of}/deliveries", {"item": "action_plan", **on(day3)},
                                                               from_page=page_of))
            assert f"Force action plan: receipt recorded, received {long(day3)}; its reminders stop." in text
            [plan] = await rows(h, Deadline, Deadline.inspection_id == inspection, Deadline.key == "action_plan")
            assert utc(plan.met_at) == noon(day3) and utc(plan.met_recorded_at).date() >= now - timedelta(days=1)
            assert f"{long(day3)} {recorded}" in text  # the deadlines table's "Met"

            # The revisit's fieldwork started on day 5.
            day5 = published + timedelta(days=5)
            text = await flash(inspector, await inspector.post(f"{page_of}/revisit", on(day5), from_page=page_of))
            assert f"The revisit is open (cycle 1) on {long(day5)}." in text
            assert f"Opened {long(day5)} {recorded} (inspector, by " in text
            [revisit] = await rows(h, Revisit, Revisit.inspection_id == inspection)
            assert utc(revisit.opened_at) == noon(day5)
            await phase_is(h, r1, "evidence_requested")

            # The force's evidence, received on day 6 (the application layer, as `ncpi evidence --on`).
            day6 = published + timedelta(days=6)
            evidence = tmp_path / "profile.pdf"
            evidence.write_bytes(b"%PDF-1.4 problem profile in use")
            await force_responses.submit_evidence(settings, h.client, r1, evidence, by="Liaison officer", on=day6)
            await phase_is(h, r1, "under_review")

            # The decision: not before the revisit opened; then on day 7.
            rec_page = f"/recommendations/{r1}"
            page = (await inspector.get(rec_page)).text
            assert 'id="decision-on"' in page and 'id="register-on"' in page
            assert f"{long(day6)} {recorded}" in page  # the evidence table
            response = await inspector.post(f"{rec_page}/decision", {"outcome": "achieved", "rationale": "In use",
                                                                     **on(published + timedelta(days=4))}, from_page=rec_page)
            assert response.status_code == 400, response.text[:2000]
            [(href, text)] = error_summary(response.text)
            assert href == "#decision-on-day" and "revisit" in text, text
            assert await rows(h, Decision) == []
            day7 = published + timedelta(days=7)
            text = await flash(inspector, await inspector.post(f"{rec_page}/decision", {"outcome": "achieved", "rationale": "In use",
                                                                                      **on(day7)}, from_page=rec_page))
            assert f"Decision recorded: achieved. The recommendation is closed. It was decided on {long(day7)}." in text
            assert f"{long(day7)} {recorded}" in text  # the decisions table (and the history)
            [decision] = await rows(h, Decision, Decision.recommendation_id == r1)
            assert utc(decision.decided_at) == noon(day7) and decision.recorded_at is not None

            # The register status of R2, judged on day 2; one set today shows its time only.
            day2 = published + timedelta(days=2)
            r2_page = f"/recommendations/{r2}"
            text = await flash(inspector, await inspector.post(f"{r2_page}/register", {"status": "being progressed",
                                                                                       "comment": "Under way", **on(day2)},
                                                               from_page=r2_page))
            assert f"Register status set: being progressed (judged on {long(day2)})." in text
            assert f"{long(day2)} {recorded}" in text
            [entry] = await rows(h, RegisterStatusEntry, RegisterStatusEntry.recommendation_id == r2)
            assert utc(entry.set_at) == noon(day2)
            text = await flash(inspector, await inspector.post(f"{r2_page}/register", {"status": "will be progressed",
                                                                                       "comment": "Plan agreed"},
                                                               from_page=r2_page))
            assert "Register status set: will be progressed." in text

            async def two_entries():
                return len(await rows(h, RegisterStatusEntry, RegisterStatusEntry.recommendation_id == r2)) == 2

            await eventually(two_entries)
            _, latest = await rows(h, RegisterStatusEntry, RegisterStatusEntry.recommendation_id == r2,
                                   order_by=RegisterStatusEntry.id)
            assert utc(latest.recorded_at) == utc(latest.set_at)
        finally:
            await inspector.aclose()
            await viewer.aclose()
            await app.state.services.close()
