"""The figures as pictures: SVG drawn on the server by matplotlib (the Agg/SVG canvases, no pyplot
and no display), deterministic and accessible.

Deterministic: `svg.hashsalt` is fixed (the ids of clip paths and glyphs do not change between runs),
no date or tool version is written into the metadata, and the input is the Metrics alone, so the
same figures give byte-identical files. Accessible: `svg.fonttype = 'none'` keeps text as text
(readable, selectable, scalable); each SVG starts with <title> and <desc> (the figures in words) and
carries role="img" with aria-labelledby; the web page shows the same figures as a table beside it.
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

from ncpi_workflow.metrics import BANDS, ITEM_KINDS, NO_DATA, Metrics, percent

HASHSALT = "ncpi-metrics"
RC = {
    "svg.hashsalt": HASHSALT,
    "svg.fonttype": "none",
    "font.family": "sans-serif",
    "font.sans-serif": ["Arial", "Helvetica", "DejaVu Sans"],
    "font.size": 11,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.edgecolor": "#505a5f",
    "axes.labelcolor": "#0b0c0c",
    "xtick.color": "#0b0c0c",
    "ytick.color": "#0b0c0c",
    "text.color": "#0b0c0c",
    "path.simplify": False,
}
# GOV.UK Design System colours, each with at least 3:1 contrast against white (WCAG 1.4.11).
COLOURS = {"recommendations": "#1d70b8", "action_plans": "#d4351c", "pcc_responses": "#4c2c92"}
KIND_LABELS = {"recommendations": "Recommendations", "action_plans": "Action plans", "pcc_responses": "PCC responses"}
KIND_WORDS = {"recommendations": ("recommendation", "recommendations"), "action_plans": ("action plan", "action plans"),
              "pcc_responses": ("PCC response", "PCC responses")}
MEDIAN, P90 = "#1d70b8", "#003078"
NAMES = ("ageing", "implementation", "closure")


@dataclass(frozen=True)
class Chart:
    name: str
    title: str
    desc: str
    svg: str

    def data_uri(self) -> str:
        import base64

        return "data:image/svg+xml;base64," + base64.b64encode(self.svg.encode("utf-8")).decode("ascii")


def _svg(figure, name: str, title: str, desc: str) -> str:
    from matplotlib.backends.backend_svg import FigureCanvasSVG

    FigureCanvasSVG(figure)
    out = io.StringIO()
    figure.savefig(out, format="svg", metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    text = out.getvalue()
    text = re.sub(r"<metadata>.*?</metadata>\s*", "", text, flags=re.S)
    match = re.search(r"<svg\b[^>]*>", text)
    assert match, "matplotlib wrote no <svg> element"
    opening = match.group(0)[:-1] + f' role="img" aria-labelledby="{name}-title {name}-desc">'
    head = f'\n <title id="{name}-title">{escape(title)}</title>\n <desc id="{name}-desc">{escape(desc)}</desc>'
    return text[: match.start()] + opening + head + text[match.end():]


def _figure(width: float, height: float):
    import matplotlib

    matplotlib.use("Agg")  # no display, ever: pictures are drawn on the server (and no pyplot state is used)
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=72, layout="constrained")


def _no_data(ax) -> None:
    ax.text(0.5, 0.5, "No data", ha="center", va="center", transform=ax.transAxes, fontsize=14, color="#505a5f")
    ax.set_xticks([])
    ax.set_yticks([])


def ageing_chart(m: Metrics) -> Chart:
    import matplotlib

    bands = [name for name, _, _ in BANDS]
    with matplotlib.rc_context(RC):
        fig = _figure(5.6, 3.6)
        ax = fig.add_subplot()
        totals = [sum(m.national.overdue[b].values()) for b in bands]
        if sum(totals) == 0:
            _no_data(ax)
        else:
            bottom = [0] * len(bands)
            for kind in ITEM_KINDS:
                values = [m.national.overdue[b][kind] for b in bands]
                ax.bar(bands, values, bottom=bottom, color=COLOURS[kind], label=KIND_LABELS[kind], edgecolor="white", width=0.6)
                bottom = [a + b for a, b in zip(bottom, values)]
            for x, total in enumerate(totals):
                ax.text(x, total, f"{total}", ha="center", va="bottom", fontsize=11, fontweight="bold")
            ax.set_ylim(0, max(totals) * 1.2 + 0.5)
            ax.yaxis.get_major_locator().set_params(integer=True)
            fig.legend(frameon=False, loc="outside lower center", ncols=3)
        ax.set_xlabel("Days overdue")
        ax.set_ylabel("Overdue items")
        ax.set_title("Overdue items by days overdue", loc="left", fontsize=12, fontweight="bold")
        parts = []
        for b, total in zip(bands, totals):
            detail = ", ".join(f"{n} {KIND_WORDS[k][n != 1]}" for k in ITEM_KINDS if (n := m.national.overdue[b][k]))
            parts.append(f"{b} days: {total}" + (f" ({detail})" if detail else ""))
        desc = ("No overdue items." if sum(totals) == 0 else "Overdue items by days overdue. " + "; ".join(parts) + ".")
        title = "Overdue items by days overdue"
        return Chart("ageing", title, desc, _svg(fig, "ageing", title, desc))


def implementation_chart(m: Metrics) -> Chart:
    import matplotlib

    rows = [("National", m.national.implementation["all"])] + [(f.name, f.figures.implementation["all"]) for f in m.forces]
    with matplotlib.rc_context(RC):
        fig = _figure(5.6, 1.3 + 0.36 * len(rows))
        ax = fig.add_subplot()
        labels = [name for name, _ in rows][::-1]
        rates = [rate for _, rate in rows][::-1]
        if all(r.denominator == 0 for r in rates):
            _no_data(ax)
        else:
            values = [(r.value or 0) * 100 for r in rates]
            colours = [P90 if label == "National" else MEDIAN for label in labels]
            ax.barh(labels, values, color=colours, height=0.6)
            for y, r in enumerate(rates):
                text = NO_DATA if r.denominator == 0 else f"{percent(r.value)} ({r.numerator} of {r.denominator})"
                ax.text((r.value or 0) * 100 + 1.5, y, text, va="center", fontsize=9)
            ax.set_xlim(0, 130)
            ax.set_xticks([0, 25, 50, 75, 100], ["0%", "25%", "50%", "75%", "100%"])
            ax.set_xlabel("Achieved, of the closed recommendations")
        ax.set_title("Implementation rate per force", loc="left", fontsize=12, fontweight="bold")
        desc = "Implementation rate (achieved of closed recommendations): " + "; ".join(
            f"{name} {rate.words()}" for name, rate in rows) + "."
        title = "Implementation rate per force"
        return Chart("implementation", title, desc, _svg(fig, "implementation", title, desc))


def closure_chart(m: Metrics) -> Chart:
    import matplotlib

    rows = [("National", m.national.closure_days)] + [(f.name, f.figures.closure_days) for f in m.forces]
    with matplotlib.rc_context(RC):
        fig = _figure(5.6, 1.5 + 0.5 * len(rows))
        ax = fig.add_subplot()
        if all(d.count == 0 for _, d in rows):
            _no_data(ax)
        else:
            ordered = rows[::-1]
            ys = list(range(len(ordered)))
            ax.barh([y + 0.18 for y in ys], [d.median or 0 for _, d in ordered], height=0.36, color=MEDIAN, label="Median")
            ax.barh([y - 0.18 for y in ys], [d.p90 or 0 for _, d in ordered], height=0.36, color=P90, label="90th percentile")
            top = max((d.p90 or 0) for _, d in ordered) or 1
            for y, (_, d) in zip(ys, ordered):
                if d.count == 0:
                    ax.text(top * 0.01, y, NO_DATA, va="center", fontsize=9)
                    continue
                ax.text((d.median or 0) + top * 0.01, y + 0.18, f"{d.median:g}", va="center", fontsize=9)
                ax.text((d.p90 or 0) + top * 0.01, y - 0.18, f"{d.p90:g}", va="center", fontsize=9)
            ax.set_yticks(ys, [name for name, _ in ordered])
            ax.set_xlim(0, top * 1.15)
            ax.set_xlabel("Days from publication to closure")
            fig.legend(frameon=False, loc="outside lower center", ncols=2)
        ax.set_title("Time to closure", loc="left", fontsize=12, fontweight="bold")
        desc = "Days from publication to closure: " + "; ".join(
            f"{name} " + (NO_DATA if d.count == 0 else f"median {d.median:g}, 90th percentile {d.p90:g} ({d.count} closed)")
            for name, d in rows) + "."
        title = "Time to closure"
        return Chart("closure", title, desc, _svg(fig, "closure", title, desc))


def all_charts(m: Metrics) -> list[Chart]:
    return [ageing_chart(m), implementation_chart(m), closure_chart(m)]


def write_charts(m: Metrics, folder: Path) -> list[Path]:
    """ageing.svg, implementation.svg and closure.svg in `folder` (made if missing). Refuses a folder
    that is a symbolic link or not a directory, and never writes through a symbolic link."""
    folder = Path(folder)
    if folder.is_symlink():
        raise ValueError(f"--svg: {folder} is a symbolic link; give a real directory")
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--svg: {folder} is not a directory")
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for chart in all_charts(m):
        path = folder / f"{chart.name}.svg"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as exc:
            raise ValueError(f"--svg: cannot write {path}: {exc.strerror or exc}") from None
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(chart.svg)
        written.append(path)
    return written
