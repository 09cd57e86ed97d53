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
    """A published NCPI inspection report of one force."""

    format_version: Literal[1] = FORMAT_VERSION
    force: str = Field(pattern=r"^[A-Z]{3}$", description="Force code from config/forces.yaml, e.g. CUM.")
    programme: Literal["NCPI"] = "NCPI"
    title: Text
    source_url: AnyHttpUrl
    fieldwork: Fieldwork
    published: date
    illustrative: bool = Field(
        default=False, description="True when the whole report is invented for demonstration, not a published one."
    )
    findings: list[Finding] = Field(default_factory=list)
    recommendations: list[Recommendation] = Field(min_length=1, max_length=200)

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
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://ncpi-followup.example/schema/report-v1.json"
    return schema
