"""The report file format: one published inspection report, its findings and recommendations.

A report is YAML (see docs/report-format.md; `ncpi schema` prints the JSON Schema generated from
these models). `load_report` reads and validates a file and raises `ReportInvalid` whose lines
each name the file, the line, the field path and the reason.
"""

from __future__ import annotations

import difflib
import hashlib
from dataclasses import dataclass
from datetime import date
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from functools import lru_cache

from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ncpi_workflow import CONFIG_DIR
from ncpi_workflow.clocks import Timeframe
from ncpi_workflow.errors import UserError
from ncpi_workflow.yamlsafe import line_for, load_located

FORMAT_VERSION = 1

THEMES_FILE = CONFIG_DIR / "themes.yaml"


class _Theme(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    code: str = Field(pattern=r"^[a-z]+(-[a-z]+)*$", max_length=40)
    label: str = Field(min_length=1, max_length=120)


class _ThemesFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    themes: list[_Theme] = Field(min_length=1, max_length=200)


@lru_cache(maxsize=4)
def load_themes(path: Path = THEMES_FILE) -> dict[str, str]:
    """The controlled list of themes (config/themes.yaml), code -> label; a UserError names the file,
    line and field at fault."""
    data, lines = load_located(Path(path), max_bytes=256 * 1024)
    try:
        parsed = _ThemesFile.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(err["loc"])
        raise UserError(f"{path}:{line_for(lines, loc)}: {_format_loc(loc)}: {err['msg']}") from None
    themes: dict[str, str] = {}
    for i, theme in enumerate(parsed.themes):
        if theme.code in themes:
            raise UserError(f"{path}:{line_for(lines, ('themes', i, 'code'))}: themes[{i}].code: duplicate theme {theme.code!r}")
        themes[theme.code] = theme.label
    return themes

Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=20_000)]


class FindingKind(StrEnum):
    STRENGTH = "strength"
    CONCERN = "concern"
    CAUSE_OF_CONCERN = "cause_of_concern"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False)


class Fieldwork(_Strict):
    """When the inspectors were in the force."""

    start: date
    end: date

    @model_validator(mode="after")
    def _ordered(self) -> "Fieldwork":
        if self.end < self.start:
            raise ValueError(f"fieldwork ends ({self.end}) before it starts ({self.start})")
        return self


class Finding(_Strict):
    """A strength or a concern the report describes; some concerns are flagged causes of concern."""

    ref: str = Field(pattern=r"^[A-Z]{1,3}[0-9]{1,3}$", description="Short reference, e.g. S1, C2, CC1.")
    kind: FindingKind
    text: Text


class AreaForImprovement(_Strict):
    """An area for improvement: a finding the report states without a recommendation (no clocks)."""

    ref: str = Field(pattern=r"^AFI[0-9]{1,3}$", description="The report's reference, e.g. AFI1.")
    text: Text = Field(description="The area for improvement, verbatim.")


INSPECTION_ID_PATTERN = r"^[A-Z]{3}-[0-9]{4}-[0-9]{2}-[0-9]{2}$"
NAME_MAX = 200


class RevisitFinding(_Strict):
    """A post-inspection review's re-inspection findings on one recommendation of the original report."""

    recommendation: str = Field(pattern=r"^R[0-9]{1,3}$", description="The original report's reference, e.g. R1.")
    findings: Text = Field(description="The re-inspection findings (narrative), as the review's report gives them.")
    cycle: int | None = Field(
        default=None, ge=1, le=99,
        description="The follow-up cycle whose revisit this review is (default: the follow-up's current cycle).",
    )


Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=NAME_MAX)]


class Recommendation(_Strict):
    """A recommendation addressed to the force, verbatim from the report."""

    ref: str = Field(pattern=r"^R[0-9]{1,3}$", description="The report's reference, e.g. R1.")
    text: Text = Field(description="The recommendation, verbatim.")
    timeframe: Timeframe
    answers: str | None = Field(default=None, description="The ref of the concern this recommendation answers.")
    illustrative: bool = Field(
        default=False, description="True when the text is not the report's own (written for demonstration)."
    )
    themes: list[str] = Field(
        default_factory=list,
        max_length=10,
        description="Theme codes from config/themes.yaml (the public register's themes), e.g. [custody, welfare].",
    )
    restricted: bool = Field(
        default=False, description="True when the recommendation must not appear on the public register."
    )

    @field_validator("themes")
    @classmethod
    def _known_themes(cls, codes: list[str], info: ValidationInfo) -> list[str]:
        known = (info.context or {}).get("themes")
        if known is None:
            known = load_themes(THEMES_FILE)
        for code in codes:
            if code not in known:
                raise ValueError(f"unknown theme {code!r}; config/themes.yaml lists: {', '.join(known)}")
        if len(set(codes)) != len(codes):
            raise ValueError("a theme is given twice")
        return codes


class Report(_Strict):
    """A published NCPI inspection report of one force, or (programme PIR) the report of the
    post-inspection review (revisit) of an earlier one."""

    format_version: Literal[1] = FORMAT_VERSION
    force: str = Field(pattern=r"^[A-Z]{3}$", description="Force code from config/forces.yaml, e.g. CUM.")
    programme: Literal["NCPI", "PIR"] = Field(
        default="NCPI",
        description="NCPI: an inspection report (its recommendations are followed up); PIR: the report of a "
        "post-inspection review of the inspection named by `follows` (no new follow-up).",
    )
    follows: str | None = Field(
        default=None, pattern=INSPECTION_ID_PATTERN,
        description="PIR only: the inspection reviewed, by its ID (force code and publication date), e.g. KEN-2017-03-22.",
    )
    inspectors: list[Name] = Field(
        default_factory=list, max_length=30, description="PIR only: the inspectors who carried out the review."
    )

    @field_validator("inspectors")
    @classmethod
    def _one_line_names(cls, names: list[str]) -> list[str]:
        for name in names:
            if any(ord(c) < 32 or ord(c) == 127 for c in name):
                raise ValueError(f"{name[:40]!r}: a name is one line, without control characters")
        return names
    title: Text
    source_url: AnyHttpUrl
    fieldwork: Fieldwork
    published: date
    illustrative: bool = Field(
        default=False, description="True when the whole report is invented for demonstration, not a published one."
    )
    findings: list[Finding] = Field(default_factory=list)
    recommendations: list[Recommendation] = Field(
        default_factory=list, max_length=200, description="NCPI: at least one. PIR: none (give revisit_findings)."
    )
    areas_for_improvement: list[AreaForImprovement] = Field(
        default_factory=list, max_length=200,
        description="NCPI only: findings without a recommendation; listed and exported, no clocks.",
    )
    revisit_findings: list[RevisitFinding] = Field(
        default_factory=list, max_length=200,
        description="PIR only (at least one): the re-inspection findings on each recommendation of the original report.",
    )

    @field_validator("force")
    @classmethod
    def _known_force(cls, code: str, info: ValidationInfo) -> str:
        known = (info.context or {}).get("forces")
        if known is not None and code not in known:
            raise ValueError(f"unknown force code {code!r}; `ncpi forces` lists the 43 codes")
        return code

    @field_validator("published")
    @classmethod
    def _after_fieldwork(cls, published: date, info: ValidationInfo) -> date:
        fieldwork = info.data.get("fieldwork")  # validated first: it is declared first
        if fieldwork is not None and published < fieldwork.end:
            raise ValueError(f"published ({published}) before fieldwork ended ({fieldwork.end})")
        if published.year < 2000:
            raise ValueError(f"published ({published}) is implausibly early")
        return published

    @property
    def inspection_id(self) -> str:
        """The business identifier: one force, one programme, one publication date."""
        return f"{self.force}-{self.published.isoformat()}"

    def finding(self, ref: str) -> Finding | None:
        return next((f for f in self.findings if f.ref == ref), None)

    @property
    def is_review(self) -> bool:
        """A post-inspection review's report (programme PIR): recorded against `follows`, no follow-up of its own."""
        return self.programme == "PIR"


@dataclass(frozen=True)
class LoadedReport:
    report: Report
    path: Path
    sha256: str


class ReportInvalid(UserError):
    """A report that failed validation; `problems` holds one line per problem."""

    def __init__(self, problems: list[str]):
        super().__init__(problems[0] if len(problems) == 1 else f"{problems[0]} (and {len(problems) - 1} more)")
        self.problems = problems


def _format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _closest_field(loc: tuple[Any, ...]) -> str | None:
    """For an unknown field, the closest field name the model has at that place."""
    model: Any = Report
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        annotation = model.model_fields[part].annotation
        model = next((a for a in getattr(annotation, "__args__", ()) if isinstance(a, type) and issubclass(a, BaseModel)), annotation)
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
    match = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1)
    return match[0] if match else None


def _reference_problems(data: Report) -> list[tuple[tuple[Any, ...], str]]:
    """Cross-references a model validator cannot place on a field: duplicates and dangling refs."""
    problems: list[tuple[tuple[Any, ...], str]] = []
    seen: dict[str, int] = {}
    for i, finding in enumerate(data.findings):
        if finding.ref in seen:
            problems.append((("findings", i, "ref"), f"duplicate finding reference {finding.ref!r} (also findings[{seen[finding.ref]}])"))
        seen.setdefault(finding.ref, i)
    seen = {}
    for i, rec in enumerate(data.recommendations):
        if rec.ref in seen:
            problems.append(
                (("recommendations", i, "ref"), f"duplicate recommendation reference {rec.ref!r} (also recommendations[{seen[rec.ref]}])")
            )
        seen.setdefault(rec.ref, i)
        if rec.answers is not None:
            finding = data.finding(rec.answers)
            if finding is None:
                problems.append((("recommendations", i, "answers"), f"no finding has reference {rec.answers!r}"))
            elif finding.kind is FindingKind.STRENGTH:
                problems.append(
                    (("recommendations", i, "answers"), f"{rec.answers!r} is a strength; a recommendation answers a concern")
                )
    seen = {}
    for i, area in enumerate(data.areas_for_improvement):
        if area.ref in seen:
            problems.append((("areas_for_improvement", i, "ref"),
                             f"duplicate area for improvement reference {area.ref!r} (also areas_for_improvement[{seen[area.ref]}])"))
        seen.setdefault(area.ref, i)
    return problems + _programme_problems(data)


def _programme_problems(data: Report) -> list[tuple[tuple[Any, ...], str]]:
    """What an inspection report (NCPI) and a post-inspection review's report (PIR) each must and must not hold."""
    problems: list[tuple[tuple[Any, ...], str]] = []
    if not data.is_review:
        if not data.recommendations:
            problems.append((("recommendations",), "an inspection report needs at least one recommendation"))
        for name in ("follows", "inspectors", "revisit_findings"):
            if getattr(data, name):
                problems.append(((name,), f"only a post-inspection review's report (programme: PIR) has {name}"))
        return problems
    if data.follows is None:
        problems.append((("programme",), "a post-inspection review's report needs `follows`: the ID of the inspection it reviews"))
    else:
        if not data.follows.startswith(data.force + "-"):
            problems.append((("follows",), f"{data.follows} is not an inspection of force {data.force}"))
        try:
            original = date.fromisoformat(data.follows[4:])
        except ValueError:
            problems.append((("follows",), f"{data.follows!r} does not end in a real date"))
        else:
            if original >= data.fieldwork.start:
                problems.append((("fieldwork", "start"),
                                 f"the review's fieldwork ({data.fieldwork.start}) starts on or before the reviewed report "
                                 f"was published ({original})"))
    if not data.inspectors:
        problems.append((("inspectors",), "a post-inspection review's report names its inspectors (at least one)"))
    if not data.revisit_findings:
        problems.append((("revisit_findings",), "a post-inspection review's report gives findings on at least one recommendation"))
    for name, what in (("recommendations", "recommendations"), ("areas_for_improvement", "areas for improvement"),
                       ("findings", "findings")):
        if getattr(data, name):
            problems.append(((name, 0), f"a post-inspection review's report has no {what} of its own here; "
                                      "give the re-inspection findings per recommendation in revisit_findings"))
    seen: dict[str, int] = {}
    for i, finding in enumerate(data.revisit_findings):
        if finding.recommendation in seen:
            problems.append((("revisit_findings", i, "recommendation"),
                             f"findings on {finding.recommendation} are given twice (also revisit_findings[{seen[finding.recommendation]}])"))
        seen.setdefault(finding.recommendation, i)
    cycles = {f.cycle for f in data.revisit_findings if f.cycle is not None}
    if len(cycles) > 1:
        i = next(i for i, f in enumerate(data.revisit_findings) if f.cycle is not None and f.cycle != min(cycles))
        problems.append((("revisit_findings", i, "cycle"),
                         f"one review's report is the report of one revisit; its findings name cycles {sorted(cycles)}"))
    return problems


def validate_report_data(
    data: Any, file: Path, lines: dict, known_forces: set[str] | None
) -> Report:
    def where(loc: tuple[Any, ...]) -> str:
        line = line_for(lines, loc)
        return f"{file}:{line}" if line else str(file)

    if not isinstance(data, dict):
        raise ReportInvalid([f"{where(())}: the file must hold a mapping of report fields, not {type(data).__name__}"])
    try:
        report = Report.model_validate(data, context={"forces": known_forces})
    except ValidationError as exc:
        problems = []
        # A misspelt field also makes the real one "missing": lead with the misspelling, it is the cause.
        errors = sorted(exc.errors(), key=lambda err: err["type"] != "extra_forbidden")
        misspelt = {
            tuple(err["loc"][:-1]) + (_closest_field(tuple(err["loc"])),)
            for err in errors
            if err["type"] == "extra_forbidden"
        }
        for err in errors:
            loc = tuple(err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "missing":
                if loc in misspelt:
                    continue  # already explained by the misspelling
                msg = "required field is missing"
            elif err["type"] == "extra_forbidden":
                closest = _closest_field(loc)
                hint = f"; did you mean {closest!r}?" if closest else ""
                msg = f"unknown field{hint} (`ncpi schema` lists the fields)"
            elif err["type"] == "enum":
                msg = f"{err['input']!r} is not one of: {err['ctx']['expected']}"
            problems.append(f"{where(loc)}: {_format_loc(loc)}: {msg}")
        raise ReportInvalid(problems) from None
    ref_problems = _reference_problems(report)
    if ref_problems:
        raise ReportInvalid([f"{where(loc)}: {_format_loc(loc)}: {msg}" for loc, msg in ref_problems])
    return report


def load_report(file: Path, *, known_forces: set[str] | None, max_bytes: int) -> LoadedReport:
    """Read, parse and validate a report file. Touches nothing but the file."""
    file = Path(file)
    data, lines = load_located(file, max_bytes=max_bytes)
    report = validate_report_data(data, file, lines, known_forces)
    return LoadedReport(report, file, hashlib.sha256(file.read_bytes()).hexdigest())


def report_json_schema() -> dict[str, Any]:
    schema = Report.model_json_schema()
    themes = schema["$defs"]["Recommendation"]["properties"]["themes"]
    themes["items"] = {"type": "string", "enum": list(load_themes(THEMES_FILE))}
    themes["uniqueItems"] = True
    # What each programme must hold (the model checks it in _programme_problems, with the file's line).
    schema["allOf"] = [{
        "if": {"properties": {"programme": {"const": "PIR"}}, "required": ["programme"]},
        "then": {
            "required": ["follows", "inspectors", "revisit_findings"],
            "properties": {"inspectors": {"minItems": 1}, "revisit_findings": {"minItems": 1},
                           "recommendations": {"maxItems": 0}, "areas_for_improvement": {"maxItems": 0},
                           "findings": {"maxItems": 0}},
        },
        "else": {
            "required": ["recommendations"],
            "properties": {"recommendations": {"minItems": 1}, "follows": {"type": "null"},
                           "inspectors": {"maxItems": 0}, "revisit_findings": {"maxItems": 0}},
        },
    }]
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://ncpi-followup.example/schema/report-v1.json"
    return schema
