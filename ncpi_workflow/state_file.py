"""The state file of `ncpi import`: what has happened in a follow-up already under way when the
product takes it over (docs/state-format.md; `ncpi schema --state` prints its JSON Schema).

A state file belongs to one report. It gives the deliveries already made (the action plan, the PCC's
response, the immediate update), the revisits held, and for each recommendation (by its reference)
its register trail, the decisions and the force's progress reports. `load_state` reads it strictly
(ncpi_workflow.yamlsafe: no aliases, no duplicate keys, every value located), validates it against
the model and then against the report, and raises `StateInvalid` whose lines each name the file, the
line, the field and the reason. It touches nothing but the file.
"""

from __future__ import annotations

import difflib
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from ncpi_workflow.clocks import DeadlineKind, Party, Timeframe, WorkingCalendar, calendar_for_report, make_deadline, report_deadlines
from ncpi_workflow.errors import UserError
from ncpi_workflow.lifecycle import (
    CLOSING_OUTCOMES,
    NAME_MAX,
    SETTABLE_REGISTER_STATUSES,
    TEXT_MAX,
    DeliveryRequest,
    ImportedDecision,
    ImportedDelivery,
    ImportedInspection,
    ImportedProgress,
    ImportedRecommendation,
    ImportedRegisterEntry,
    ImportedRevisit,
    Outcome,
    RegisterStatus,
    check_delivery,
    check_name,
    check_text,
)
from ncpi_workflow.policy import Policy
from ncpi_workflow.report import Report, ReportInvalid, _format_loc
from ncpi_workflow.yamlsafe import line_for, load_located

FORMAT_VERSION = 1
STATE_MAX_BYTES = 2 * 1024 * 1024

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=NAME_MAX)]
Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=TEXT_MAX)]
Ref = Annotated[str, StringConstraints(pattern=r"^R[0-9]{1,3}$")]
Cycle = Annotated[int, Field(ge=1, le=99)]
DeliverableItem = Literal["immediate_update", "action_plan", "pcc_response"]

# `date:` rather than `on:` in the file: YAML 1.1 reads a bare `on` as true.
Day = Annotated[date, Field(alias="date", description="The day it happened (YYYY-MM-DD).")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=False)


class Delivery(_Strict):
    """A report-level item the force or the PCC has delivered."""

    item: DeliverableItem = Field(description="action_plan, pcc_response, or immediate_update (only if a recommendation is to be acted on immediately).")
    day: Day
    by: Name = Field(description="Who recorded its receipt.")
    note: str = Field(default="", max_length=TEXT_MAX)
    url: AnyHttpUrl | None = Field(default=None, description="Where the document is published (https://...).")
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$", description="The document's SHA-256, with filename.")
    filename: str | None = Field(default=None, max_length=255, description="The document's file name, with sha256.")


class Revisit(_Strict):
    """A revisit (post-inspection review) held: the day it opened (its fieldwork start)."""

    cycle: Cycle = Field(description="The follow-up cycle it reviewed: 1 for the first revisit.")
    day: Day
    by: Name = Field(description="The inspector who opened it.")
    trigger: Literal["inspector", "automatic"] = Field(
        default="inspector", description="inspector (opened early), or automatic (it opened by itself at the limit).")


class RegisterEntry(_Strict):
    """A status of the public register's trail, with its public comment."""

    day: Day
    status: str = Field(description='"awaiting review", "being progressed" or "will be progressed" ("no further action needed" comes with a closing decision).')
    comment: Text = Field(description="The public comment published with the status.")
    by: Name


class Decision(_Strict):
    """The inspectors' judgement at a revisit."""

    cycle: Cycle
    day: Day
    outcome: Literal["achieved", "partially_achieved", "not_achieved", "superseded"] = Field(
        description="achieved or superseded close it; partially_achieved or not_achieved start a further cycle.")
    rationale: Text
    by: Name


class Progress(_Strict):
    """A progress report from the force: its own claim, never the inspectorate's judgement."""

    day: Day
    claim: Literal["not_started", "in_progress", "implemented"]
    text: Text
    by: Name


class RecommendationState(_Strict):
    """One recommendation's past, by its reference in the report."""

    ref: Ref = Field(description="The report's reference, e.g. R1.")
    trail: list[RegisterEntry] = Field(default_factory=list, max_length=500, alias="register",
                                       description="The public register's dated trail of statuses, in date order.")
    decisions: list[Decision] = Field(default_factory=list, max_length=99)
    progress: list[Progress] = Field(default_factory=list, max_length=500)


class StateFile(_Strict):
    """What has happened in the follow-up of one report since its publication (`ncpi import`)."""

    format_version: Literal[1] = FORMAT_VERSION
    inspection: str = Field(pattern=r"^[A-Z]{3}-[0-9]{4}-[0-9]{2}-[0-9]{2}$",
                            description="The report's inspection ID (force code and publication date), e.g. KEN-2017-04-21.")
    deliveries: list[Delivery] = Field(default_factory=list, max_length=3)
    revisits: list[Revisit] = Field(default_factory=list, max_length=99)
    recommendations: list[RecommendationState] = Field(default_factory=list, max_length=200)


class StateInvalid(ReportInvalid):
    """A state file that failed validation; `problems` holds one line per problem."""


Loc = tuple[Any, ...]


def _closest_field(loc: Loc) -> str | None:
    model: Any = StateFile
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = next((f for n, f in model.model_fields.items() if (f.alias or n) == part), None)
        if field is None:
            return None
        annotation = field.annotation
        model = next((a for a in getattr(annotation, "__args__", ()) if isinstance(a, type) and issubclass(a, BaseModel)), annotation)
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
    names = [f.alias or n for n, f in model.model_fields.items()]
    match = difflib.get_close_matches(str(loc[-1]), names, n=1)
    return match[0] if match else None


def _model_problems(exc: ValidationError) -> list[tuple[Loc, str]]:
    problems = []
    errors = sorted(exc.errors(), key=lambda err: err["type"] != "extra_forbidden")
    misspelt = {tuple(err["loc"][:-1]) + (_closest_field(tuple(err["loc"])),) for err in errors if err["type"] == "extra_forbidden"}
    for err in errors:
        loc = tuple(err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "missing":
            if loc in misspelt:
                continue
            msg = "required field is missing"
        elif err["type"] == "extra_forbidden":
            closest = _closest_field(loc)
            if loc[-1] == "on" or loc[-1] is True:
                msg = "unknown field; the day is given as `date:`"
            else:
                msg = "unknown field" + (f"; did you mean {closest!r}?" if closest else "") + " (`ncpi schema --state` lists the fields)"
        elif err["type"] == "literal_error":
            msg = f"{err['input']!r} is not one of: {err['ctx']['expected']}"
        problems.append((loc, msg))
    return problems


class _Checker:
    """The checks against the report and between entries (what a model cannot say of one field)."""

    def __init__(self, state: StateFile, report: Report, policy: Policy, calendar: WorkingCalendar, today: date):
        self.state, self.report, self.today, self.policy, self.calendar = state, report, today, policy, calendar
        self.problems: list[tuple[Loc, str]] = []
        timeframes = [(r.ref, Timeframe(r.timeframe)) for r in report.recommendations]
        self.deadlines = {d.key: d for d in report_deadlines(report.published, timeframes, policy, calendar)}

    def add(self, loc: Loc, message: str) -> None:
        self.problems.append((loc, message))

    def guard(self, loc: Loc, check, *args, **kwargs) -> None:
        """The workflows' own checks of a value (lifecycle.check_*): the same limits as a live action."""
        try:
            check(*args, **kwargs)
        except ValueError as exc:
            self.add(loc, str(exc))

    def day(self, loc: Loc, day: date) -> None:
        if day < self.report.published:
            self.add(loc + ("date",), f"{day} is before the report was published ({self.report.published})")
        elif day > self.today:
            self.add(loc + ("date",), f"{day} is in the future (today is {self.today})")

    def run(self) -> None:
        state, report = self.state, self.report
        if state.inspection != report.inspection_id:
            self.add(("inspection",), f"this state file is for {state.inspection}, not for the report's {report.inspection_id}")
        self.deliveries()
        revisits = self.revisits()
        self.recommendations(revisits)

    def deliveries(self) -> None:
        seen: dict[str, int] = {}
        for i, d in enumerate(self.state.deliveries):
            loc = ("deliveries", i)
            if d.item not in self.deadlines:
                self.add(loc + ("item",), f"the report has no {d.item} deadline (no recommendation is to be acted on immediately)")
            if d.item in seen:
                self.add(loc + ("item",), f"{d.item} is delivered twice (also deliveries[{seen[d.item]}])")
            seen.setdefault(d.item, i)
            self.day(loc, d.day)
            self.guard(loc, check_delivery, DeliveryRequest(item=d.item, by=d.by, note=d.note, sha256=d.sha256,
                                                            filename=d.filename, url=str(d.url) if d.url else None))
            self.guard(loc + ("by",), check_name, d.by, "who recorded it (by)")

    def revisits(self) -> dict[int, Revisit]:
        by_cycle: dict[int, Revisit] = {}
        for i, r in enumerate(self.state.revisits):
            loc = ("revisits", i)
            self.day(loc, r.day)
            self.guard(loc + ("by",), check_name, r.by, "who opened the revisit (by)")
            if r.cycle in by_cycle:
                self.add(loc + ("cycle",), f"cycle {r.cycle} has two revisits; a cycle has one")
                continue
            expected = len(by_cycle) + 1
            if r.cycle != expected:
                self.add(loc + ("cycle",), f"revisits are given cycle by cycle (1, 2, ...): expected cycle {expected}, got {r.cycle}")
            if by_cycle and r.day < by_cycle[max(by_cycle)].day:
                self.add(loc + ("date",), f"{r.day} is before the revisit of cycle {max(by_cycle)} ({by_cycle[max(by_cycle)].day})")
            by_cycle[r.cycle] = r
        return by_cycle

    def recommendations(self, revisits: dict[int, Revisit]) -> None:
        refs = {r.ref for r in self.report.recommendations}
        seen: dict[str, int] = {}
        limit = self.deadlines["revisit_by"].due
        open_in: dict[int, set[str]] = {1: set(refs)}
        decided: dict[int, dict[str, date]] = {}
        unrevisited: list[tuple[Loc, Decision]] = []
        for i, rec in enumerate(self.state.recommendations):
            loc = ("recommendations", i)
            if rec.ref not in refs:
                self.add(loc + ("ref",), f"the report has no recommendation {rec.ref} (it has {', '.join(sorted(refs, key=lambda r: (len(r), r)))})")
                continue
            if rec.ref in seen:
                self.add(loc + ("ref",), f"{rec.ref} is given twice (also recommendations[{seen[rec.ref]}])")
                continue
            seen[rec.ref] = i
            closed_on: date | None = None
            for name in ("register", "decisions", "progress"):
                entries = _entries(rec, name)
                for j, entry in enumerate(entries):
                    self.day(loc + (name, j), entry.day)
                    self.guard(loc + (name, j, "by"), check_name, entry.by, "who (by)")
                for j in range(1, len(entries)):
                    if entries[j].day < entries[j - 1].day:
                        self.add(loc + (name, j, "date"),
                                 f"{entries[j].day} is before the entry above it ({entries[j - 1].day}): give them in date order")
            previous = None
            for j, d in enumerate(rec.decisions):
                dloc = loc + ("decisions", j)
                self.guard(dloc + ("rationale",), check_text, d.rationale, "the rationale")
                expected = 1 if previous is None else previous.cycle + 1
                if previous is not None and Outcome(previous.outcome) in CLOSING_OUTCOMES:
                    self.add(dloc, f"{rec.ref} was closed ({previous.outcome}) on {previous.day}: no decision follows a closing one")
                    break
                if d.cycle != expected:
                    why = "a further cycle follows only a partially_achieved or not_achieved decision" if previous else "the first decision is of cycle 1"
                    self.add(dloc + ("cycle",), f"expected cycle {expected}, got {d.cycle}: {why}")
                    break
                revisit = revisits.get(d.cycle)
                if revisit is not None:
                    if revisit.day > d.day:
                        self.add(dloc + ("date",), f"{d.day} is before the revisit of cycle {d.cycle} opened ({revisit.day})")
                else:
                    unrevisited.append((dloc, d))  # checked below, against the cycle's limit
                decided.setdefault(d.cycle, {})[rec.ref] = d.day
                if Outcome(d.outcome) not in CLOSING_OUTCOMES:
                    open_in.setdefault(d.cycle + 1, set()).add(rec.ref)
                else:
                    closed_on = d.day
                previous = d
            for name, what in (("register", "its register status"), ("progress", "progress")):
                for j, entry in enumerate(_entries(rec, name)):
                    eloc = loc + (name, j)
                    if name == "register":
                        self.register_status(eloc, entry)
                    else:
                        self.guard(eloc + ("text",), check_text, entry.text, "the progress text")
                    if closed_on is not None and entry.day >= closed_on:
                        self.add(eloc + ("date",), f"{rec.ref} was closed on {closed_on}: {what} cannot change on or after that day")
        limits: dict[int, date | None] = {1: limit}
        for cycle in range(2, 100):
            before = decided.get(cycle - 1, {})
            if not open_in.get(cycle) or set(open_in.get(cycle - 1, set())) - set(before):
                break
            # The cycle opens when the last recommendation of the one before is decided; its revisit
            # is due no later than the further follow-up period from that day (as the workflow sets it).
            limits[cycle] = make_deadline("revisit_by", DeadlineKind.REVISIT_BY, Party.INSPECTORATE, max(before.values()),
                                          self.policy.deadlines.further_follow_up, self.calendar).due
        for cycle, revisit in revisits.items():
            i = self.state.revisits.index(revisit)
            if cycle > 1:
                before = decided.get(cycle - 1, {})
                if not open_in.get(cycle):
                    self.add(("revisits", i, "cycle"), f"no recommendation went on to cycle {cycle} "
                                                       f"(a partially_achieved or not_achieved decision in cycle {cycle - 1})")
                    continue
                waiting = sorted(open_in.get(cycle - 1, set()) - set(before), key=lambda r: (len(r), r))
                if waiting:
                    self.add(("revisits", i, "cycle"), f"cycle {cycle - 1} is not decided: no decision for {', '.join(waiting)}")
                    continue
                if revisit.day < max(before.values()):
                    self.add(("revisits", i, "date"), f"{revisit.day} is before cycle {cycle} began ({max(before.values())}, "
                                                      f"the last decision of cycle {cycle - 1})")
                    continue
            cycle_limit = limits.get(cycle)
            if cycle_limit is None:
                continue
            if revisit.trigger == "automatic" and revisit.day != cycle_limit:
                self.add(("revisits", i, "date"), f"an automatic revisit opens at the revisit-by limit of cycle {cycle}, "
                                                  f"{cycle_limit}; {revisit.day} would be an inspector's (trigger: inspector)")
            elif revisit.trigger == "inspector" and revisit.day > cycle_limit:
                self.add(("revisits", i, "date"), f"{revisit.day} is after the revisit-by limit of cycle {cycle} ({cycle_limit}), "
                                                  "when the revisit opens by itself: give that day with trigger: automatic")
        for dloc, d in unrevisited:
            cycle_limit = limits.get(d.cycle)
            if cycle_limit is not None and cycle_limit <= d.day:
                continue  # the revisit opened by itself at the limit
            held = f" (or the limit, {cycle_limit}, when it opens by itself)" if cycle_limit is not None else ""
            self.add(dloc + ("cycle",), f"no revisit of cycle {d.cycle} was held on or before {d.day}{held}: "
                                        "a decision is made at a revisit (give it under revisits)")

    def register_status(self, loc: Loc, entry: RegisterEntry) -> None:
        allowed = [str(s) for s in SETTABLE_REGISTER_STATUSES]
        if entry.status == RegisterStatus.NO_FURTHER_ACTION:
            self.add(loc + ("status",), '"no further action needed" is not set by hand: it comes with a closing decision '
                                        "(give the decision under decisions)")
        elif entry.status not in allowed:
            self.add(loc + ("status",), f"{entry.status!r} is not a register status; use one of: {', '.join(allowed)}")
        self.guard(loc + ("comment",), check_text, entry.comment, "the public comment")


def _entries(rec: RecommendationState, name: str) -> list:
    return rec.trail if name == "register" else getattr(rec, name)


def _imports(state: StateFile) -> tuple[ImportedInspection, dict[str, ImportedRecommendation]]:
    inspection = ImportedInspection(
        deliveries=[ImportedDelivery(item=d.item, on=d.day, by=d.by, note=d.note, url=str(d.url) if d.url else None,
                                     sha256=d.sha256, filename=d.filename) for d in state.deliveries],
        revisits=[ImportedRevisit(cycle=r.cycle, on=r.day, by=r.by, trigger=r.trigger) for r in state.revisits],
    )
    recommendations = {
        rec.ref: ImportedRecommendation(
            register=[ImportedRegisterEntry(on=e.day, status=e.status, comment=e.comment, by=e.by) for e in rec.trail],
            decisions=[ImportedDecision(cycle=d.cycle, on=d.day, outcome=d.outcome, rationale=d.rationale, by=d.by)
                       for d in rec.decisions],
            progress=[ImportedProgress(on=p.day, claim=p.claim, text=p.text, by=p.by) for p in rec.progress],
        )
        for rec in state.recommendations
    }
    return inspection, recommendations


def load_state(
    path: Path, report: Report, *, max_bytes: int = STATE_MAX_BYTES, policy: Policy | None = None, today: date | None = None,
) -> tuple[ImportedInspection, dict[str, ImportedRecommendation]]:
    """Read and check a state file against its report: the imports `publish` hands the workflows.
    `today` defaults to today in the policy calendar's zone. Raises StateInvalid (one line per
    problem) or UserError (an unreadable file)."""
    path = Path(path)
    if policy is None:
        from ncpi_workflow.policy import load_policy
        from ncpi_workflow.settings import get_settings

        policy = load_policy(get_settings().policy)
    calendar = calendar_for_report(policy, report.published)
    today = today or datetime.now(ZoneInfo(calendar.timezone)).date()
    try:
        data, lines = load_located(path, max_bytes=max_bytes)
    except UserError as exc:
        line = str(exc).replace("for a report", "for a state file").replace("not a report file", "not a state file")
        if "got True" in line:
            line += "; the day an action happened is given as `date:` (YAML reads a bare `on` as true)"
        raise StateInvalid([line]) from None

    def where(loc: Loc) -> str:
        line = line_for(lines, loc)
        return f"{path}:{line}" if line else str(path)

    if not isinstance(data, dict):
        raise StateInvalid([f"{where(())}: the file must hold a mapping of state fields, not {type(data).__name__}"])
    try:
        state = StateFile.model_validate(data)
    except ValidationError as exc:
        ordered = sorted(_model_problems(exc), key=lambda p: line_for(lines, p[0]) or 0)
        raise StateInvalid([f"{where(loc)}: {_format_loc(loc)}: {msg}" for loc, msg in ordered]) from None
    checker = _Checker(state, report, policy, calendar, today)
    checker.run()
    if checker.problems:
        ordered = sorted(checker.problems, key=lambda p: line_for(lines, p[0]) or 0)  # as a person reads the file
        raise StateInvalid([f"{where(loc)}: {_format_loc(loc)}: {msg}" for loc, msg in ordered])
    return _imports(state)


def state_json_schema() -> dict[str, Any]:
    schema = StateFile.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://ncpi-followup.example/schema/state-v1.json"
    return schema


__all__ = ["StateFile", "StateInvalid", "load_state", "state_json_schema"]
