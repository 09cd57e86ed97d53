"""The public register: every published recommendation with its dated trail in the register's four
words, its themes and its clocks, as one document (`RegisterDocument`) that is the single source of
the static HTML register (`ncpi register export DIR`), the web app's `/register`, `register.json`,
`register.csv` and the figures (ncpi_workflow/metrics.py).

THE PUBLICATION RULE (what is public). `build_register` reads only these, and nothing else:

- inspections: force code and name, title, source URL, programme, publication date;
- recommendations that are NOT `restricted` (report file): reference, verbatim text, timeframe,
  themes, whether the text is illustrative;
- the register trail (`register_entries`): the date (Europe/London), the status in the four words
  and the comment. The comment is public by design: inspectors write it for the register (a closing
  decision's rationale and a re-opening's reason become the comment of the step they set: the
  workflow writes them so). Who set it (`set_by`) is left out;
- the current due date of each recommendation's own clock and of the report-level clocks (action
  plan, PCC response, revisit-by limit), when each report-level item was received, when the revisit
  opened; the outcome and date of the decision that closed a recommendation;
- a report's areas for improvement (`areas_for_improvement`: reference and text, as published);
- the post-inspection reviews' reports (`revisit_reports`): the cycle, title, URL, publication date and
  fieldwork dates, and their re-inspection findings on each (not restricted) recommendation
  (`revisit_findings`), as published in the review's report. Not the inspectors' names, who recorded
  it, nor the file's hash.

Left out, by construction (never selected): the force's own progress notes and claims
(`progress_updates`), evidence files and their names, descriptions and hashes (`evidence`,
`evidence_requests`), decisions' rationale as stored in `decisions` and re-open reasons, who decided,
set or triggered anything (inspectors and force staff alike), contacts (names, email addresses),
notifications and their contents, inbound replies, access links, deadline revisions' reasons and
authors, the audit trail, users, and every recommendation marked `restricted: true`.
"""

from __future__ import annotations

import csv
import io
import json
import os
import stat
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from ncpi_workflow.errors import UserError
from ncpi_workflow.formatting import local_date
from ncpi_workflow.lifecycle import CLOSING_OUTCOMES, RegisterStatus
from ncpi_workflow.models import (
    AreaForImprovement,
    Deadline,
    Decision,
    Force,
    Inspection,
    Recommendation,
    RecommendationTheme,
    RegisterStatusEntry,
    Revisit,
    RevisitFinding,
    RevisitReport,
)
from ncpi_workflow.report import THEMES_FILE, load_themes

REGISTER_FORMAT = "ncpi-register"
REGISTER_VERSION = 1
STATUSES = [s.value for s in RegisterStatus]
PUBLISHED_COMMENT = "Recommendation made in the published inspection report."
"""The comment of every trail's first step (the publication date, "awaiting review")."""


@dataclass(frozen=True)
class TrailStep:
    on: date
    status: str
    comment: str


@dataclass(frozen=True)
class ReinspectionFinding:
    """A post-inspection review's published findings on one recommendation, with the review's report."""

    cycle: int
    findings: str
    report_title: str
    report_url: str
    report_published_on: date


@dataclass(frozen=True)
class AreaForImprovementItem:
    ref: str
    text: str


@dataclass(frozen=True)
class RevisitReportItem:
    """A post-inspection review's published report (programme PIR) of one cycle's revisit."""

    cycle: int
    title: str
    url: str
    published_on: date
    fieldwork_start: date
    fieldwork_end: date


@dataclass
class RegisterRecommendation:
    id: str
    inspection_id: str
    ref: str
    force_code: str
    force_name: str
    report_title: str
    report_url: str
    published_on: date
    text: str
    timeframe: str
    themes: list[str]
    status: str
    trail: list[TrailStep]
    due_on: date | None
    closed_on: date | None
    outcome: str | None
    open: bool
    overdue_days: int | None
    illustrative: bool = False
    reinspection_findings: list[ReinspectionFinding] = field(default_factory=list)
    """Re-inspection findings from the post-inspection reviews' reports, by cycle."""

    @property
    def status_on(self) -> date:
        """The date of the latest step of the trail."""
        return self.trail[-1].on if self.trail else self.published_on


@dataclass
class RegisterInspection:
    id: str
    force_code: str
    force_name: str
    title: str
    url: str
    programme: str
    published_on: date
    action_plan_due_on: date | None
    action_plan_received_on: date | None
    pcc_response_due_on: date | None
    pcc_response_received_on: date | None
    revisit_by: date | None
    revisit_opened_on: date | None
    areas_for_improvement: list[AreaForImprovementItem] = field(default_factory=list)
    revisit_reports: list[RevisitReportItem] = field(default_factory=list)


@dataclass
class RegisterDocument:
    generated_on: date
    recommendations: list[RegisterRecommendation]
    inspections: list[RegisterInspection]
    themes: dict[str, str] = field(default_factory=dict)
    """The controlled list (code -> label) the recommendations' themes come from."""

    def filtered(self, *, force: str | None = None, status: str | None = None, theme: str | None = None) -> list[RegisterRecommendation]:
        return [
            r for r in self.recommendations
            if (not force or r.force_code == force) and (not status or r.status == status) and (not theme or theme in r.themes)
        ]

    def forces(self) -> list[tuple[str, str]]:
        """(code, name) of the forces that have recommendations on the register, by name."""
        return sorted({(r.force_code, r.force_name) for r in self.recommendations}, key=lambda f: f[1])

    def recommendation(self, rec_id: str) -> RegisterRecommendation | None:
        return next((r for r in self.recommendations if r.id == rec_id), None)

    def inspection(self, inspection_id: str) -> RegisterInspection | None:
        return next((i for i in self.inspections if i.id == inspection_id), None)


@dataclass(frozen=True)
class ThemeRow:
    code: str
    label: str
    forces: list[str]
    """Names of the forces with a recommendation of this theme."""
    recommendations: int
    open: int


def national_by_theme(doc: RegisterDocument) -> list[ThemeRow]:
    """Which concerns recur across forces: per theme, the forces and recommendations that carry it,
    most forces first (themes no recommendation carries are left out)."""
    forces: dict[str, set[str]] = defaultdict(set)
    counts: dict[str, int] = defaultdict(int)
    open_counts: dict[str, int] = defaultdict(int)
    for rec in doc.recommendations:
        for code in rec.themes:
            forces[code].add(rec.force_name)
            counts[code] += 1
            open_counts[code] += rec.open
    rows = [ThemeRow(code, doc.themes.get(code, code), sorted(forces[code]), counts[code], open_counts[code]) for code in counts]
    return sorted(rows, key=lambda r: (-len(r.forces), -r.recommendations, r.label))


def _ref_number(ref: str) -> int:
    return int(ref[1:]) if ref[1:].isdigit() else 0


async def build_register(session: AsyncSession, *, today: date) -> RegisterDocument:
    """The public register as of `today`, under the publication rule (module docstring)."""
    forces = {f.code: f.name for f in (await session.scalars(select(Force))).all()}
    inspections = {i.id: i for i in (await session.scalars(select(Inspection))).all()}
    recs = [r for r in (await session.scalars(select(Recommendation).where(Recommendation.restricted.is_(False)))).all()]
    themes: dict[str, list[str]] = defaultdict(list)
    for row in (await session.execute(select(RecommendationTheme.recommendation_id, RecommendationTheme.theme)
                                      .order_by(RecommendationTheme.id))).all():
        themes[row.recommendation_id].append(row.theme)
    trail: dict[str, list[TrailStep]] = defaultdict(list)
    for entry in (await session.execute(
        select(RegisterStatusEntry.recommendation_id, RegisterStatusEntry.status, RegisterStatusEntry.comment, RegisterStatusEntry.set_at)
        .order_by(RegisterStatusEntry.set_at, RegisterStatusEntry.id)
    )).all():
        trail[entry.recommendation_id].append(TrailStep(local_date(entry.set_at), entry.status, entry.comment))
    deadlines: dict[tuple[str, str], tuple[int, date, date | None]] = {}
    for d in (await session.execute(select(Deadline.inspection_id, Deadline.key, Deadline.cycle, Deadline.current_due, Deadline.met_at))).all():
        # Report-level items: the first cycle's (the report's own); a recommendation's: its latest cycle.
        current = deadlines.get((d.inspection_id, d.key))
        latest = d.key.startswith("recommendation:")
        if current is None or (d.cycle > current[0] if latest else d.cycle < current[0]):
            deadlines[(d.inspection_id, d.key)] = (d.cycle, d.current_due, local_date(d.met_at) if d.met_at else None)
    closing: dict[str, tuple[str, date]] = {}
    latest_outcome: dict[str, tuple[int, str]] = {}
    for dec in (await session.execute(select(Decision.recommendation_id, Decision.cycle, Decision.outcome, Decision.decided_at,
                                             Decision.reopened_at))).all():
        if dec.reopened_at is not None:
            continue
        if dec.recommendation_id not in latest_outcome or dec.cycle > latest_outcome[dec.recommendation_id][0]:
            latest_outcome[dec.recommendation_id] = (dec.cycle, dec.outcome)
        if dec.outcome in {o.value for o in CLOSING_OUTCOMES}:
            closing[dec.recommendation_id] = (dec.outcome, local_date(dec.decided_at))
    revisits = {v.inspection_id: local_date(v.opened_at)
                for v in (await session.execute(select(Revisit.inspection_id, Revisit.opened_at).where(Revisit.cycle == 1))).all()}
    areas: dict[str, list[AreaForImprovementItem]] = defaultdict(list)
    for a in (await session.execute(select(AreaForImprovement.inspection_id, AreaForImprovement.ref, AreaForImprovement.text))).all():
        areas[a.inspection_id].append(AreaForImprovementItem(a.ref, a.text))
    for items in areas.values():
        items.sort(key=lambda a: (len(a.ref), a.ref))
    reviews: dict[str, list[RevisitReportItem]] = defaultdict(list)
    review_of: dict[int, RevisitReportItem] = {}
    for v in (await session.execute(select(RevisitReport.id, RevisitReport.inspection_id, RevisitReport.cycle, RevisitReport.title,
                                           RevisitReport.source_url, RevisitReport.published_on, RevisitReport.fieldwork_start,
                                           RevisitReport.fieldwork_end).order_by(RevisitReport.cycle))).all():
        review_of[v.id] = RevisitReportItem(v.cycle, v.title, v.source_url, v.published_on, v.fieldwork_start, v.fieldwork_end)
        reviews[v.inspection_id].append(review_of[v.id])
    reinspection: dict[str, list[ReinspectionFinding]] = defaultdict(list)
    for f in (await session.execute(select(RevisitFinding.revisit_report_id, RevisitFinding.recommendation_id, RevisitFinding.text))).all():
        review = review_of[f.revisit_report_id]
        reinspection[f.recommendation_id].append(ReinspectionFinding(review.cycle, f.text, review.title, review.url, review.published_on))
    for found in reinspection.values():
        found.sort(key=lambda f: f.cycle)

    out: list[RegisterRecommendation] = []
    for rec in recs:
        inspection = inspections[rec.inspection_id]
        steps = [TrailStep(inspection.published_on, RegisterStatus.AWAITING_REVIEW.value, PUBLISHED_COMMENT)] + trail[rec.id]
        status = trail[rec.id][-1].status if trail[rec.id] else rec.register_status
        due = deadlines.get((rec.inspection_id, f"recommendation:{rec.ref}"))
        due_on = due[1] if due else None
        closed = closing.get(rec.id)
        is_open = closed is None and rec.phase != "closed"
        outcome = closed[0] if closed else (latest_outcome.get(rec.id, (0, None))[1])
        overdue = (today - due_on).days if is_open and due_on is not None and today > due_on else None
        out.append(RegisterRecommendation(
            id=rec.id, inspection_id=rec.inspection_id, ref=rec.ref, force_code=inspection.force_code,
            force_name=forces.get(inspection.force_code, inspection.force_code), report_title=inspection.title,
            report_url=inspection.source_url, published_on=inspection.published_on, text=rec.text, timeframe=rec.timeframe,
            themes=themes[rec.id], status=status, trail=steps, due_on=due_on, closed_on=closed[1] if closed else None,
            outcome=outcome, open=is_open, overdue_days=overdue, illustrative=rec.illustrative,
            reinspection_findings=reinspection[rec.id],
        ))
    out.sort(key=lambda r: (-r.published_on.toordinal(), r.force_name, r.inspection_id, _ref_number(r.ref)))

    def item(inspection_id: str, key: str) -> tuple[date | None, date | None]:
        found = deadlines.get((inspection_id, key))
        return (found[1], found[2]) if found else (None, None)

    reg_inspections = []
    for i in sorted(inspections.values(), key=lambda i: (-i.published_on.toordinal(), i.id)):
        plan_due, plan_received = item(i.id, "action_plan")
        pcc_due, pcc_received = item(i.id, "pcc_response")
        reg_inspections.append(RegisterInspection(
            id=i.id, force_code=i.force_code, force_name=forces.get(i.force_code, i.force_code), title=i.title,
            url=i.source_url, programme=i.programme, published_on=i.published_on,
            action_plan_due_on=plan_due, action_plan_received_on=plan_received,
            pcc_response_due_on=pcc_due, pcc_response_received_on=pcc_received,
            revisit_by=item(i.id, "revisit_by")[0], revisit_opened_on=revisits.get(i.id),
            areas_for_improvement=areas[i.id], revisit_reports=reviews[i.id],
        ))
    return RegisterDocument(today, out, reg_inspections, dict(load_themes(THEMES_FILE)))


# ---------------------------------------------------------------- the exported forms

RECOMMENDATION_FIELDS = [
    "id", "inspection_id", "ref", "force_code", "force_name", "report_title", "report_url", "published_on", "text",
    "timeframe", "themes", "status", "trail", "due_on", "closed_on", "outcome", "open", "overdue_days", "illustrative",
    "reinspection_findings",
]
INSPECTION_FIELDS = [
    "id", "force_code", "force_name", "title", "url", "programme", "published_on", "action_plan_due_on",
    "action_plan_received_on", "pcc_response_due_on", "pcc_response_received_on", "revisit_by", "revisit_opened_on",
    "areas_for_improvement", "revisit_reports",
]
_INSPECTION_DATES = INSPECTION_FIELDS[6:13]
CSV_COLUMNS = [
    "id", "inspection_id", "ref", "force_code", "force_name", "report_title", "report_url", "published_on",
    "timeframe", "themes", "status", "status_on", "due_on", "closed_on", "outcome", "open", "overdue_days",
    "illustrative", "text", "trail", "reinspection_findings", "reinspection_report_title", "reinspection_report_url",
    "reinspection_published_on",
]
"""register.csv: one row per recommendation (README, "The public register" lists what each means)."""
AREAS_CSV_COLUMNS = [
    "inspection_id", "force_code", "force_name", "report_title", "report_url", "published_on", "ref", "text",
]
"""areas-for-improvement.csv: one row per area for improvement of a report (README, "Areas for improvement")."""


def _iso(value: date | None) -> str | None:
    return value.isoformat() if value is not None else None


def register_json(doc: RegisterDocument) -> dict[str, Any]:
    """register.json: the whole document, dates as ISO 8601 strings."""
    def recommendation(r: RegisterRecommendation) -> dict[str, Any]:
        values = asdict(r)
        for key in ("published_on", "due_on", "closed_on"):
            values[key] = _iso(values[key])
        values["trail"] = [{"on": s.on.isoformat(), "status": s.status, "comment": s.comment} for s in r.trail]
        values["reinspection_findings"] = [
            {"cycle": f.cycle, "findings": f.findings, "report_title": f.report_title, "report_url": f.report_url,
             "report_published_on": f.report_published_on.isoformat()} for f in r.reinspection_findings
        ]
        return {key: values[key] for key in RECOMMENDATION_FIELDS}

    def inspection(i: RegisterInspection) -> dict[str, Any]:
        values = {key: (_iso(value) if isinstance(value, date) else value) for key, value in asdict(i).items()}
        values["areas_for_improvement"] = [{"ref": a.ref, "text": a.text} for a in i.areas_for_improvement]
        values["revisit_reports"] = [
            {"cycle": v.cycle, "title": v.title, "url": v.url, "published_on": v.published_on.isoformat(),
             "fieldwork_start": v.fieldwork_start.isoformat(), "fieldwork_end": v.fieldwork_end.isoformat()}
            for v in i.revisit_reports
        ]
        return {key: values[key] for key in INSPECTION_FIELDS}

    return {
        "format": REGISTER_FORMAT,
        "version": REGISTER_VERSION,
        "generated_on": doc.generated_on.isoformat(),
        "statuses": STATUSES,
        "themes": [{"code": code, "label": label} for code, label in doc.themes.items()],
        "inspections": [inspection(i) for i in doc.inspections],
        "recommendations": [recommendation(r) for r in doc.recommendations],
    }


def _day(value: Any) -> date | None:
    return date.fromisoformat(value) if value is not None else None


def load_register_json(data: dict[str, Any]) -> RegisterDocument:
    """Read back what `register_json` wrote (a UserError for anything else)."""
    if not isinstance(data, dict) or data.get("format") != REGISTER_FORMAT or data.get("version") != REGISTER_VERSION:
        raise UserError(f"not a register export (format {REGISTER_FORMAT!r}, version {REGISTER_VERSION})")
    try:
        recs = []
        for r in data["recommendations"]:
            values = {key: r[key] for key in RECOMMENDATION_FIELDS if key != "reinspection_findings"}
            for key in ("published_on", "due_on", "closed_on"):
                values[key] = _day(values[key])
            values["trail"] = [TrailStep(date.fromisoformat(s["on"]), s["status"], s["comment"]) for s in r["trail"]]
            values["reinspection_findings"] = [  # absent from exports made before the reviews were recorded
                ReinspectionFinding(int(f["cycle"]), f["findings"], f["report_title"], f["report_url"],
                                    date.fromisoformat(f["report_published_on"]))
                for f in r.get("reinspection_findings", [])
            ]
            recs.append(RegisterRecommendation(**values))
        inspections = []
        for i in data["inspections"]:
            values = {key: i[key] for key in INSPECTION_FIELDS if key not in ("areas_for_improvement", "revisit_reports")}
            for key in _INSPECTION_DATES:
                values[key] = _day(values[key])
            values["areas_for_improvement"] = [AreaForImprovementItem(a["ref"], a["text"]) for a in i.get("areas_for_improvement", [])]
            values["revisit_reports"] = [
                RevisitReportItem(int(v["cycle"]), v["title"], v["url"], date.fromisoformat(v["published_on"]),
                                  date.fromisoformat(v["fieldwork_start"]), date.fromisoformat(v["fieldwork_end"]))
                for v in i.get("revisit_reports", [])
            ]
            inspections.append(RegisterInspection(**values))
        themes = {t["code"]: t["label"] for t in data["themes"]}
        return RegisterDocument(date.fromisoformat(data["generated_on"]), recs, inspections, themes)
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"register export is malformed: {type(exc).__name__}: {exc}") from None


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = value.isoformat() if isinstance(value, date) else str(value)
    # A spreadsheet would run a cell that starts like a formula: such text is prefixed with '.
    return "'" + text if text.startswith(_FORMULA_START) else text


def register_csv(doc: RegisterDocument) -> str:
    """register.csv: one row per recommendation, CSV_COLUMNS in order (RFC 4180, CRLF line ends)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for r in doc.recommendations:
        latest = r.reinspection_findings[-1] if r.reinspection_findings else None
        row = {
            **{key: getattr(r, key) for key in CSV_COLUMNS[:20] if key not in ("themes", "trail", "status_on")},
            "themes": ";".join(r.themes),
            "status_on": r.status_on,
            "trail": "\n".join(f"{s.on.isoformat()} {s.status}: {s.comment}" for s in r.trail),
            "reinspection_findings": "\n".join(f"cycle {f.cycle}: {' '.join(f.findings.split())}" for f in r.reinspection_findings),
            "reinspection_report_title": latest.report_title if latest else None,
            "reinspection_report_url": latest.report_url if latest else None,
            "reinspection_published_on": latest.report_published_on if latest else None,
        }
        writer.writerow([_cell(row[key]) for key in CSV_COLUMNS])
    return out.getvalue()


def areas_csv(doc: RegisterDocument) -> str:
    """areas-for-improvement.csv: one row per area for improvement, AREAS_CSV_COLUMNS in order
    (RFC 4180, CRLF line ends; formula-like cells defused as in register.csv)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(AREAS_CSV_COLUMNS)
    for i in doc.inspections:
        for a in i.areas_for_improvement:
            row = {"inspection_id": i.id, "force_code": i.force_code, "force_name": i.force_name, "report_title": i.title,
                   "report_url": i.url, "published_on": i.published_on, "ref": a.ref, "text": a.text}
            writer.writerow([_cell(row[key]) for key in AREAS_CSV_COLUMNS])
    return out.getvalue()


# ---------------------------------------------------------------- the static HTML register


def status_slug(status: str) -> str:
    return status.replace(" ", "-")


class StaticUrls:
    """Links between the exported pages, relative so that the folder works from file:// or any host."""

    static = True

    def __init__(self, depth: int):
        self.root = "../" * depth

    def index(self, force: str | None = None, status: str | None = None, theme: str | None = None) -> str:
        if force:
            return f"{self.root}force/{force}.html"
        if status:
            return f"{self.root}status/{status_slug(status)}.html"
        if theme:
            return f"{self.root}theme/{theme}.html"
        return f"{self.root}index.html"

    def recommendation(self, rec_id: str) -> str:
        return f"{self.root}recommendations/{rec_id}.html"

    def themes(self) -> str:
        return f"{self.root}themes.html"

    def download(self, name: str) -> str:
        return f"{self.root}{name}"

    @property
    def stylesheet(self) -> str:
        return f"{self.root}govuk/govuk-frontend.min.css"

    @property
    def assets(self) -> str:
        return f"{self.root}assets"


def _write(root: Path, relative: str, content: bytes) -> Path:
    """Write one file below `root`, making its folders; a symbolic link anywhere on the way (or as
    the file itself) is refused, never followed."""
    parts = Path(relative).parts
    for i in range(1, len(parts)):
        directory = root.joinpath(*parts[:i])
        try:
            mode = os.lstat(directory).st_mode
        except FileNotFoundError:
            directory.mkdir()
            continue
        if stat.S_ISLNK(mode):
            raise UserError(f"{directory}: is a symbolic link; the register export never follows one")
        if not stat.S_ISDIR(mode):
            raise UserError(f"{directory}: is not a folder")
    target = root / relative
    if os.path.islink(target):
        raise UserError(f"{target}: is a symbolic link; the register export never follows one")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(target, flags, 0o644)
    except OSError as exc:
        raise UserError(f"{target}: cannot be written: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as handle:
        handle.write(content)
    return target


def check_export_dir(directory: Path) -> Path:
    """The export folder: created when absent; a symbolic link or a non-folder is refused."""
    directory = Path(directory)
    try:
        mode = os.lstat(directory).st_mode
    except FileNotFoundError:
        if not directory.parent.is_dir():
            raise UserError(f"{directory}: its parent folder does not exist") from None
        directory.mkdir()
        return directory
    if stat.S_ISLNK(mode):
        raise UserError(f"{directory}: is a symbolic link; give the real folder")
    if not stat.S_ISDIR(mode):
        raise UserError(f"{directory}: is not a folder")
    return directory


REGISTER_TAGS = {
    "awaiting review": "govuk-tag--grey",
    "being progressed": "",  # GOV.UK Frontend 6: no modifier is blue
    "will be progressed": "govuk-tag--yellow",
    "no further action needed": "govuk-tag--green",
}


def register_tag(status: str) -> dict[str, str]:
    """A govukTag's parameters for one of the four words (as written: no capital)."""
    return {"text": status[:1].upper() + status[1:], "classes": REGISTER_TAGS.get(status, "govuk-tag--grey")}


def page_context(doc: RegisterDocument, urls, filters: dict[str, str] | None = None, **context: Any) -> dict[str, Any]:
    """What every register page's template reads (the web app's and the export's alike)."""
    filters = filters or {}

    def options(pairs, chosen: str | None, everything: str) -> list[dict[str, Any]]:
        return [{"value": "", "text": everything}] + [
            {"value": value, "text": text, "selected": value == chosen} for value, text in pairs
        ]

    return dict(
        doc=doc, urls=urls, filters=filters, statuses=STATUSES, register_tag=register_tag,
        options={
            "force": options(doc.forces(), filters.get("force"), "All forces"),
            "status": options([(s, s[:1].upper() + s[1:]) for s in STATUSES], filters.get("status"), "All statuses"),
            "theme": options(doc.themes.items(), filters.get("theme"), "All themes"),
        },
        **context,
    )


def render_page(env, template: str, urls, doc: RegisterDocument, **context: Any) -> str:
    return env.get_template(template).render(**page_context(doc, urls, **context))


AREAS_CSV = "areas-for-improvement.csv"


def export_register(doc: RegisterDocument, directory: Path) -> list[Path]:
    """Write the static register into `directory`: index.html (and one filtered index per force,
    status and theme), one page per recommendation, themes.html (the national view), register.json,
    register.csv and the GOV.UK Frontend stylesheet, fonts and images, so it works offline."""
    from ncpi_workflow.web import assets
    from ncpi_workflow.web.rendering import build_environment

    root = check_export_dir(directory)
    dist = assets.dist_dir()
    if dist is None:
        raise UserError(f"GOV.UK Frontend is not installed ({assets.DIST}): run `npm install` in the project folder")
    env = build_environment()
    written: list[Path] = []

    def page(relative: str, template: str, depth: int, **context: Any) -> None:
        html = render_page(env, template, StaticUrls(depth), doc, assets_ready=True, **context)
        written.append(_write(root, relative, html.encode("utf-8")))

    page("index.html", "register_index.html", 0, recommendations=doc.recommendations, filters={})
    for code, _name in doc.forces():
        page(f"force/{code}.html", "register_index.html", 1, recommendations=doc.filtered(force=code), filters={"force": code})
    for status in STATUSES:
        page(f"status/{status_slug(status)}.html", "register_index.html", 1, recommendations=doc.filtered(status=status),
             filters={"status": status})
    for code in doc.themes:
        page(f"theme/{code}.html", "register_index.html", 1, recommendations=doc.filtered(theme=code), filters={"theme": code})
    for rec in doc.recommendations:
        page(f"recommendations/{rec.id}.html", "register_recommendation.html", 1, rec=rec, inspection=doc.inspection(rec.inspection_id))
    page("themes.html", "register_themes.html", 0, rows=national_by_theme(doc))
    written.append(_write(root, "register.json", (json.dumps(register_json(doc), indent=2, ensure_ascii=False) + "\n").encode("utf-8")))
    written.append(_write(root, "register.csv", register_csv(doc).encode("utf-8")))
    written.append(_write(root, AREAS_CSV, areas_csv(doc).encode("utf-8")))
    # The stylesheet's own URLs are absolute (/assets/...): made relative to where it is copied.
    css = (dist / "govuk-frontend.min.css").read_text(encoding="utf-8").replace("url(/assets/", "url(../assets/")
    written.append(_write(root, "govuk/govuk-frontend.min.css", css.encode("utf-8")))
    for source in sorted((dist / "assets").rglob("*")):
        if source.is_file() and not source.is_symlink():
            written.append(_write(root, f"assets/{source.relative_to(dist / 'assets').as_posix()}", source.read_bytes()))
    return written


__all__ = [
    "RegisterDocument", "RegisterInspection", "RegisterRecommendation", "TrailStep", "build_register", "register_json",
    "register_csv", "load_register_json", "export_register", "national_by_theme", "CSV_COLUMNS", "STATUSES",
    "ReinspectionFinding", "AreaForImprovementItem", "RevisitReportItem", "areas_csv", "AREAS_CSV", "AREAS_CSV_COLUMNS",
]
