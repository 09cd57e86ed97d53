"""The figures people ask for (issue 14 §4), computed ONLY from the public register document
(`ncpi_workflow.register.RegisterDocument`), so that every figure can be derived again from the
export (`register.json`, read back with `load_register_json`).

Scope: the recommendations (and inspections) whose report was published within the period
[start, end] (both inclusive; either open-ended), narrowed to one force and/or one theme. Every
figure describes that set as the register stood on `generated_on`. An inspection is in scope for a
theme when one of its recommendations carries the theme.

Figures, for each force and nationally (all the forces in scope):
- made, open, closed: recommendations in scope; closed = no longer open in the register.
- implementation rate by timeframe: achieved / closed, for each timeframe and for all.
- days from publication to closure: median and 90th percentile of (closed_on - published_on) over
  the closed recommendations with a closing date; percentiles by linear interpolation between the
  closest ranks (rank (n - 1) * q of the sorted values: numpy's and Excel PERCENTILE.INC's method).
- overdue items by age band (0-30, 31-90, 91-180, >180 days overdue on generated_on): open
  recommendations with an `overdue_days` in the register, action plans and PCC responses not
  received after their due date (days overdue = generated_on - due_on).
- action plans and PCC responses received on time: received_on <= due_on. Of those due (received,
  or not received with due_on before generated_on): on time, late, not received; those not yet due
  and not received are "pending" and left out of the rate.
- revisits held within six months: revisit_opened_on <= published_on + 6 calendar months
  (dateutil's relativedelta: 31 August + 6 months = 28 or 29 February). Of those due: within,
  later, not held although the six months are over; "pending" ones (not held, six months not over)
  are left out of the rate.
A rate whose denominator is 0 is "no data" (None in JSON), never a division error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterable, Optional

from dateutil.relativedelta import relativedelta

TIMEFRAMES = ("immediately", "within_three_months", "within_six_months")
BANDS: tuple[tuple[str, int, int | None], ...] = (("0-30", 0, 30), ("31-90", 31, 90), ("91-180", 91, 180), (">180", 181, None))
ITEM_KINDS = ("recommendations", "action_plans", "pcc_responses")
KIND_WORDS = {"recommendations": "recommendations", "action_plans": "action plans", "pcc_responses": "PCC responses"}
NO_DATA = "no data"
THEME_CODE = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
THEME_MAX = 64
FORCE_CODE = re.compile(r"^[A-Z]{3}$")


# ---------------------------------------------------------------- the figures


@dataclass(frozen=True)
class Rate:
    """numerator / denominator; `value` None (no data) when the denominator is 0."""

    numerator: int
    denominator: int

    @property
    def value(self) -> float | None:
        return None if self.denominator == 0 else round(self.numerator / self.denominator, 4)

    def words(self) -> str:
        if self.denominator == 0:
            return NO_DATA
        return f"{percent(self.value)} ({self.numerator} of {self.denominator})"


@dataclass(frozen=True)
class Distribution:
    """Days from publication to closure: median and 90th percentile (None: no data)."""

    count: int
    median: float | None
    p90: float | None


@dataclass(frozen=True)
class Timeliness:
    """Report-level items (action plans, PCC responses) or revisits: in time, late, missing
    (not done although due) and pending (not done, not yet due)."""

    in_time: int = 0
    late: int = 0
    missing: int = 0
    pending: int = 0

    @property
    def due(self) -> int:
        return self.in_time + self.late + self.missing

    @property
    def rate(self) -> Rate:
        return Rate(self.in_time, self.due)


@dataclass(frozen=True)
class Figures:
    made: int
    open: int
    closed: int
    outcomes: dict[str, int]
    """The closed recommendations by outcome (achieved, withdrawn, ...)."""
    implementation: dict[str, Rate]
    """achieved / closed for each timeframe of TIMEFRAMES, and "all"."""
    closure_days: Distribution
    overdue: dict[str, dict[str, int]]
    """Age band (BANDS) -> item kind (ITEM_KINDS) -> count."""
    action_plans: Timeliness
    pcc_responses: Timeliness
    revisits: Timeliness
    inspections: int

    @property
    def overdue_total(self) -> int:
        return sum(sum(kinds.values()) for kinds in self.overdue.values())


@dataclass(frozen=True)
class ForceFigures:
    code: str
    name: str
    figures: Figures


@dataclass(frozen=True)
class Metrics:
    generated_on: date
    start: date | None
    end: date | None
    force: str | None
    theme: str | None
    national: Figures
    forces: tuple[ForceFigures, ...] = field(default_factory=tuple)


# ---------------------------------------------------------------- computing them


def percentile(values: Iterable[int], q: float) -> float | None:
    """The q-quantile (0..1) by linear interpolation between closest ranks; None for no values.
    Exact arithmetic, rounded to one decimal place."""
    ordered = sorted(values)
    if not ordered:
        return None
    rank = Fraction(len(ordered) - 1) * Fraction(q).limit_denominator(1000)
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    value = ordered[low] + (rank - low) * (ordered[high] - ordered[low])
    return round(float(value), 1)


def band_of(days: int) -> str:
    for name, low, high in BANDS:
        if days >= low and (high is None or days <= high):
            return name
    raise ValueError(f"overdue days must be 0 or more, not {days}")


def six_months_after(day: date) -> date:
    return day + relativedelta(months=6)


def _in_period(day: date | None, start: date | None, end: date | None) -> bool:
    if day is None:
        return False
    return (start is None or day >= start) and (end is None or day <= end)


def _timeliness(pairs: Iterable[tuple[date | None, date | None]], today: date) -> Timeliness:
    """(due_on, done_on) pairs; a pair without due_on does not apply."""
    in_time = late = missing = pending = 0
    for due, done in pairs:
        if due is None:
            continue
        if done is not None:
            if done <= due:
                in_time += 1
            else:
                late += 1
        elif due < today:
            missing += 1
        else:
            pending += 1
    return Timeliness(in_time, late, missing, pending)


def _figures(recommendations: list, inspections: list, today: date) -> Figures:
    closed = [r for r in recommendations if not r.open]
    outcomes: dict[str, int] = {}
    for r in closed:
        key = r.outcome or "unknown"
        outcomes[key] = outcomes.get(key, 0) + 1
    implementation = {}
    for timeframe in TIMEFRAMES + ("all",):
        these = [r for r in closed if timeframe == "all" or r.timeframe == timeframe]
        implementation[timeframe] = Rate(sum(r.outcome == "achieved" for r in these), len(these))
    days = [(r.closed_on - r.published_on).days for r in closed if r.closed_on is not None and r.published_on is not None]
    overdue = {name: {kind: 0 for kind in ITEM_KINDS} for name, _, _ in BANDS}
    for r in recommendations:
        if r.open and r.overdue_days is not None and r.overdue_days >= 0:
            overdue[band_of(r.overdue_days)]["recommendations"] += 1
    for i in inspections:
        for kind, due, received in (("action_plans", i.action_plan_due_on, i.action_plan_received_on),
                                    ("pcc_responses", i.pcc_response_due_on, i.pcc_response_received_on)):
            if due is not None and received is None and due < today:
                overdue[band_of((today - due).days)][kind] += 1
    return Figures(
        made=len(recommendations),
        open=len(recommendations) - len(closed),
        closed=len(closed),
        outcomes=dict(sorted(outcomes.items())),
        implementation=implementation,
        closure_days=Distribution(len(days), percentile(days, 0.5), percentile(days, 0.9)),
        overdue=overdue,
        action_plans=_timeliness(((i.action_plan_due_on, i.action_plan_received_on) for i in inspections), today),
        pcc_responses=_timeliness(((i.pcc_response_due_on, i.pcc_response_received_on) for i in inspections), today),
        revisits=_timeliness(
            ((six_months_after(i.published_on) if i.published_on else None, i.revisit_opened_on) for i in inspections), today
        ),
        inspections=len(inspections),
    )


def compute_metrics(doc, *, start: date | None = None, end: date | None = None, force: str | None = None,
                    theme: str | None = None) -> Metrics:
    """Every figure from the register document alone (see the module's docstring)."""
    if start is not None and end is not None and start > end:
        raise ValueError(f"the period starts ({start.isoformat()}) after it ends ({end.isoformat()})")
    today = doc.generated_on
    recommendations = [
        r for r in doc.recommendations
        if _in_period(r.published_on, start, end)
        and (force is None or r.force_code == force)
        and (theme is None or theme in (r.themes or ()))
    ]
    themed = {r.inspection_id for r in doc.recommendations if theme is not None and theme in (r.themes or ())}
    inspections = [
        i for i in doc.inspections
        if _in_period(i.published_on, start, end)
        and (force is None or i.force_code == force)
        and (theme is None or i.id in themed)
    ]
    names: dict[str, str] = {}
    for item in (*inspections, *recommendations):
        names.setdefault(item.force_code, item.force_name)
    per_force = tuple(
        ForceFigures(code, names[code], _figures([r for r in recommendations if r.force_code == code],
                                                  [i for i in inspections if i.force_code == code], today))
        for code in sorted(names, key=lambda c: (names[c], c))
    )
    return Metrics(today, start, end, force, theme, _figures(recommendations, inspections, today), per_force)


# ---------------------------------------------------------------- the exported forms


def _rate_json(rate: Rate, numerator: str, denominator: str) -> dict[str, Any]:
    return {numerator: rate.numerator, denominator: rate.denominator, "rate": rate.value}


def _timeliness_json(t: Timeliness, in_time: str) -> dict[str, Any]:
    return {in_time: t.in_time, "late": t.late, "missing": t.missing, "pending": t.pending, "due": t.due,
            "rate": t.rate.value}


def figures_json(f: Figures) -> dict[str, Any]:
    return {
        "recommendations": {"made": f.made, "open": f.open, "closed": f.closed, "closed_by_outcome": dict(f.outcomes)},
        "implementation_rate": {k: _rate_json(v, "achieved", "closed") for k, v in f.implementation.items()},
        "days_to_closure": {"count": f.closure_days.count, "median": f.closure_days.median, "p90": f.closure_days.p90},
        "overdue_by_age": {band: dict(kinds) for band, kinds in f.overdue.items()},
        "action_plans": _timeliness_json(f.action_plans, "on_time"),
        "pcc_responses": _timeliness_json(f.pcc_responses, "on_time"),
        "revisits": _timeliness_json(f.revisits, "within_six_months"),
        "inspections": f.inspections,
    }


def metrics_json(m: Metrics) -> dict[str, Any]:
    """The document `ncpi metrics --json` prints (README: "Figures and pictures")."""
    return {
        "generated_on": m.generated_on.isoformat(),
        "period": {"from": m.start.isoformat() if m.start else None, "to": m.end.isoformat() if m.end else None},
        "filters": {"force": m.force, "theme": m.theme},
        "national": figures_json(m.national),
        "forces": [{"code": f.code, "name": f.name, **figures_json(f.figures)} for f in m.forces],
    }


# ---------------------------------------------------------------- text


def percent(value: float | None) -> str:
    if value is None:
        return NO_DATA
    return f"{round(value * 100)}%"


def days_words(value: float | None) -> str:
    if value is None:
        return NO_DATA
    return f"{value:g} days"


def _timeliness_words(t: Timeliness, late: str, missing: str) -> str:
    if t.due == 0:
        text = NO_DATA
    else:
        text = f"{t.rate.words()}; {t.late} {late}, {t.missing} {missing}"
    return text + (f"; {t.pending} not yet due" if t.pending else "")


def figures_lines(f: Figures) -> list[str]:
    outcomes = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in f.outcomes.items())
    rates = "; ".join(f"{k.replace('_', ' ')} {f.implementation[k].words()}" for k in ("all",) + TIMEFRAMES)
    d = f.closure_days
    closure = NO_DATA if d.count == 0 else f"median {days_words(d.median)}, 90th percentile {days_words(d.p90)} ({d.count} closed)"
    bands = ", ".join(f"{band}: {sum(kinds.values())}" for band, kinds in f.overdue.items())
    kinds = ", ".join(f"{KIND_WORDS[k]} {sum(v[k] for v in f.overdue.values())}" for k in ITEM_KINDS)
    return [
        f"Recommendations: {f.made} made, {f.open} open, {f.closed} closed" + (f" ({outcomes})" if outcomes else ""),
        f"Implementation rate (achieved of closed): {rates}",
        f"Days from publication to closure: {closure}",
        f"Overdue, by days overdue: {bands} (total {f.overdue_total}: {kinds})",
        f"Action plans received on time: {_timeliness_words(f.action_plans, 'late', 'not received')}",
        f"PCC responses received on time: {_timeliness_words(f.pcc_responses, 'late', 'not received')}",
        f"Revisits held within six months: {_timeliness_words(f.revisits, 'later', 'not held')}",
    ]


def scope_words(m: Metrics) -> str:
    def day(d: date) -> str:
        return f"{d.day} {d:%B %Y}"

    if m.start and m.end:
        period = f"published {day(m.start)} to {day(m.end)}"
    elif m.start:
        period = f"published on or after {day(m.start)}"
    elif m.end:
        period = f"published on or before {day(m.end)}"
    else:
        period = "all publication dates"
    extra = "".join(f", {label} {value}" for label, value in (("force", m.force), ("theme", m.theme)) if value)
    return f"Figures from the register of {day(m.generated_on)}: reports {period}{extra}"


def metrics_text(m: Metrics) -> str:
    lines = [scope_words(m), ""]
    n = len(m.forces)
    lines.append(f"National ({n} force{'s' if n != 1 else ''}, {m.national.inspections} inspection{'s' if m.national.inspections != 1 else ''})")
    lines += [f"  {line}" for line in figures_lines(m.national)]
    for f in m.forces:
        lines += ["", f"{f.name} ({f.code})"] + [f"  {line}" for line in figures_lines(f.figures)]
    if not m.forces:
        lines += ["", "No recommendations or inspections in scope: no data."]
    return "\n".join(lines)


# ---------------------------------------------------------------- values at the edge (CLI, web)


def parse_day(text: str, option: str) -> date:
    try:
        return date.fromisoformat(text.strip())
    except ValueError:
        shown = text.strip()[:40]
        raise ValueError(f"{option}: {shown!r} is not a date such as 2017-01-31") from None


def check_force(code: str, option: str = "--force", known: Iterable[str] | None = None) -> str:
    code = code.strip()
    if not FORCE_CODE.match(code):
        raise ValueError(f"{option}: {code[:40]!r} is not a force code (three capital letters, such as CUM)")
    if known is not None and code not in set(known):
        raise ValueError(f"{option}: no force has the code {code}")
    return code


def check_theme(code: str, option: str = "--theme", known: Iterable[str] | None = None) -> str:
    code = code.strip()
    if len(code) > THEME_MAX or not THEME_CODE.match(code):
        raise ValueError(f"{option}: {code[:40]!r} is not a theme code (lower-case words joined by hyphens, such as custody)")
    if known is not None and code not in set(known):
        raise ValueError(f"{option}: {code} is not a theme of config/themes.yaml")
    return code


# ---------------------------------------------------------------- `ncpi metrics` (registered in cli.py)


def _typer_option(*args, **kwargs):
    import typer

    return typer.Option(*args, **kwargs)


def _known_themes() -> dict[str, str]:
    from ncpi_workflow.report import THEMES_FILE, load_themes

    return dict(load_themes(THEMES_FILE))


def checked_filters(start: str | None, end: str | None, force: str | None, theme: str | None, *,
                    known_forces: Iterable[str] | None, known_themes: Iterable[str] | None, names=None):
    """(start, end, force, theme) checked: dates, a known force code, a theme of the controlled list,
    a period that does not end before it starts. ValueError with one line naming the option."""
    names = names or {"start": "--from", "end": "--to", "force": "--force", "theme": "--theme"}
    first = parse_day(start, names["start"]) if start else None
    last = parse_day(end, names["end"]) if end else None
    if first and last and first > last:
        raise ValueError(f"{names['end']}: {last.isoformat()} is before {names['start']} {first.isoformat()}")
    code = check_force(force, names["force"], known_forces) if force else None
    chosen = check_theme(theme, names["theme"], known_themes) if theme else None
    return first, last, code, chosen


def metrics_command(
    as_json: bool = _typer_option(False, "--json", help="Machine-readable output (README: \"Figures and pictures\")."),
    start: Optional[str] = _typer_option(None, "--from", metavar="YYYY-MM-DD", help="Only reports published on or after this day."),
    end: Optional[str] = _typer_option(None, "--to", metavar="YYYY-MM-DD", help="Only reports published on or before this day."),
    force: Optional[str] = _typer_option(None, "--force", metavar="CODE", help="Only this force, e.g. CUM."),
    theme: Optional[str] = _typer_option(None, "--theme", metavar="CODE", help="Only recommendations of this theme (config/themes.yaml)."),
    svg: Optional[Path] = _typer_option(None, "--svg", metavar="DIR", help="Also write ageing.svg, implementation.svg and closure.svg to DIR."),
    today: Optional[str] = _typer_option(None, "--today", metavar="YYYY-MM-DD",
                                      help="The date the register is as of (as `ncpi register export --today`); default: today in London."),
) -> None:
    """The figures, per force and nationally, computed from the public register alone: recommendations
    made, open and closed; implementation rate by timeframe; median and 90th-percentile days to
    closure; overdue items by age band; action plans and PCC responses on time; revisits within six
    months."""
    import json
    from datetime import datetime

    import typer

    from ncpi_workflow import db
    from ncpi_workflow.app.temporal_calls import database_errors
    from ncpi_workflow.cli import _forces, run
    from ncpi_workflow.errors import UserError
    from ncpi_workflow.formatting import LONDON
    from ncpi_workflow.register import build_register
    from ncpi_workflow.settings import get_settings

    try:
        as_of = parse_day(today, "--today") if today else datetime.now(LONDON).date()
        first, last, code, chosen = checked_filters(start, end, force, theme, known_forces=set(_forces()),
                                                    known_themes=set(_known_themes()) if theme else None)
        if svg is not None and svg.exists() and (svg.is_symlink() or not svg.is_dir()):
            raise ValueError(f"--svg: {svg} is {'a symbolic link' if svg.is_symlink() else 'not a directory'}")
    except ValueError as exc:
        raise UserError(str(exc)) from None
    settings = get_settings()

    async def build():
        async with db.open_database(settings.database_url) as sessions:
            async with sessions() as session:
                return await build_register(session, today=as_of)

    with database_errors(settings):
        document = run(build())
    figures = compute_metrics(document, start=first, end=last, force=code, theme=chosen)
    if svg is not None:
        from ncpi_workflow.charts import write_charts

        try:
            written = write_charts(figures, svg)
        except ValueError as exc:
            raise UserError(str(exc)) from None
    if as_json:
        typer.echo(json.dumps(metrics_json(figures), indent=2))
    else:
        typer.echo(metrics_text(figures))
    if svg is not None:
        typer.echo(f"wrote {', '.join(p.name for p in written)} to {svg}", err=as_json)
