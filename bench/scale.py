"""The scaling curve (issue 15): how cost grows with the work. `make bench-scale`.

- Lifecycle throughput (recommendations/s, publication to the end of the re-opening window, as
  bench/lifecycle.py drives it: every reminder and escalation sent, the revisit's evidence submitted,
  "achieved" recorded, the re-opening window waited out) and the peak resident set of the worker
  process(es), at 100, 1,000 and 5,000 recommendations, on a throwaway PostgreSQL, with one
  `ncpi worker` process and with two on the one task queue.
- Its baseline at the same sizes: bare workflows of the same shape (bench/bare.py `BareFollowUp`,
  read from our own first run's histories by bench/shape.py: the same timers, as many activities
  that do nothing, child starts, signals and Updates) in one worker process (bench/bare_worker.py).
  What it leaves out is exactly ours: the database, the templates, SMTP, the sandboxed workflow code.
- The web dashboard (`GET /` through the real app, server time, p50 / p95, as bench/web.py measures
  it) at 1,000, 10,000 and 100,000 recommendations on PostgreSQL and SQLite, against the bare
  aggregate (open recommendations counted per force) on the same rows.

Each lifecycle run has a Temporal dev server (in memory) and a PostgreSQL database of its own, so no
run pays for the histories of the one before. Every report is for a different force (a week later for
the next 43 reports), ten recommendations each; publication is `publish_many`, as `ncpi publish A B ...`.

Time: the policy calendar runs `TIME_SCALE` times faster than the wall clock (19 months of follow-up in
about 12 s). At 100 recommendations the run is bound by that calendar (ours and bare alike) and runs
to the end; from 1,000 on it is bound by the work (the figure is the stack's capacity, and a run to
the end would take size / capacity: half an hour at 5,000), so those points run for a time window
(`WINDOW`, 30 s from the end of the publication, every inspection workflow started, which start
their recommendations; the files are read and checked before the clock starts): the activities and local activities completed in it (read from a
sample of the histories after the window, each event counted only if it falls in it) over one whole
lifecycle's count per recommendation (the 100-recommendation run's own histories, ours' for ours and
bare's for bare) give recommendations' worth of work per second; the peak RSS is the window's. Each
run prints its time as it ends (standard error); SIGTERM or Ctrl-C stops the curve and cleans up
(workers, dev servers, the PostgreSQL cluster, the temporary folder).

`.venv/bin/python -m bench.scale [--sizes 100,1000,5000] [--web-sizes 1000,10000,100000]
[--workers 1,2] [--no-sqlite-web] [--time-scale N] [--window S] [--full-up-to N] [--publish]` writes bench/results/scale.json,
docs/bench-scale.svg and the README's table between the `bench-scale` markers (with the default
sizes or `--publish`; otherwise bench/results/scale-custom.json and docs/bench-scale-custom.svg).
"""

from __future__ import annotations

import asyncio
import datetime
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from xml.sax.saxutils import escape

from bench import lifecycle
from bench.common import ROOT, create_database, dev_server, postgres_or_reason, run_until_signalled

HERE = Path(__file__).resolve().parent
SIZES = (100, 1_000, 5_000)
WEB_SIZES = (1_000, 10_000, 100_000)
WORKERS = (1, 2)
# 19 months of the policy calendar in about 12 s: short enough that the 5,000-recommendation runs are
# bound by the work, long enough that the driver's polls (0.2 s) and Updates answer before the
# evidence deadline (ten working days: 0.3 s) at the small sizes.
TIME_SCALE = 4_000_000.0
# Sizes above FULL_UP_TO run for WINDOW seconds from the end of their publication, their work (activities
# and local activities completed) counted against one whole lifecycle's (the first size's run, to the end).
WINDOW = 30.0
FULL_UP_TO = 100
PUBLISHED = datetime.date(2025, 3, 3)  # a Monday: each run has its own dev server, so the same IDs
RESULTS = HERE / "results" / "scale.json"
SVG = ROOT / "docs" / "bench-scale.svg"
README = ROOT / "README.md"
README_START, README_END = "<!-- bench-scale:start -->", "<!-- bench-scale:end -->"


# ---------------------------------------------------------------- measuring


async def _lifecycle_run(cluster, workdir: Path, size: int, kind: str, workers: int, time_scale: float, shape: dict,
                         token: str, window: float | None = None) -> dict:
    """One point: to the end (`window` None), or a time window of `window` seconds whose work is counted
    against the whole lifecycle's of the first full run of the same kind (`shape`)."""
    reports = max(1, size // lifecycle.RECS_PER_REPORT)
    run_dir = workdir / f"lifecycle-{kind}-{size}-{workers}w"
    run_dir.mkdir()
    if window is not None and f"work_{kind}" not in shape:
        raise RuntimeError(f"no full run of {kind} to count a window's work against")
    per_recommendation = shape.get(f"work_{kind}")
    async with dev_server(namespaces=()) as env:
        if kind == "ours":
            url = await create_database(cluster, f"ncpi_scale_{token}_{size}_{workers}w")
            figures = await lifecycle._ours(env, run_dir, url, PUBLISHED, reports, workers=workers, time_scale=time_scale,
                                            many=True, window=window, per_recommendation=per_recommendation)
        else:
            figures = await lifecycle._bare(env, run_dir, *shape["steps"], reports, workers=workers, window=window,
                                            per_recommendation=per_recommendation)
    if window is None:
        if kind == "ours":
            steps = (figures.pop("inspection_steps"), figures.pop("recommendation_steps"))
            shape.setdefault("steps", steps)
        shape.setdefault(f"work_{kind}", figures["work_per_recommendation"])
    figures.pop("timeline", None)
    figures.update(recommendations=reports * lifecycle.RECS_PER_REPORT, workers=workers,
                   measured="window" if window is not None else "to the end")
    return figures


async def measure(workdir: Path, sizes=SIZES, web_sizes=WEB_SIZES, workers=WORKERS, time_scale: float = TIME_SCALE,
                  sqlite_web: bool = True, progress=print, cluster=None, window: float | None = WINDOW,
                  full_up_to: int = FULL_UP_TO) -> dict:
    """Every run of the curve; a PostgreSQL cluster for all of them (a database each): `cluster`, or a
    throwaway one started (and stopped) here. Sizes up to `full_up_to` (and the first size) run to the
    end; the larger ones for a `window` of seconds (None: every size to the end)."""
    import uuid

    from bench import web
    from ncpi_workflow.formatting import LONDON

    results: dict = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "date": datetime.date.today().isoformat(), "time_scale": time_scale,
        "sizes": list(sizes), "web_sizes": list(web_sizes), "workers": list(workers), "window_seconds": window,
        "full_up_to": full_up_to,
        "baselines": {
            "lifecycle": "bare workflows of the same shape (bench/bare.py BareFollowUp: our histories' timers, as many "
                         "do-nothing activities, child starts, signals and Updates) in one bare worker process, on a dev "
                         "server of its own",
            "web": "the bare aggregate: SELECT force_code, count(*) of the open recommendations JOIN inspections GROUP BY force_code",
        },
        "lifecycle": [], "web": [],
    }
    started = time.perf_counter()
    own_cluster = cluster is None
    if own_cluster:
        cluster, reason = await asyncio.to_thread(postgres_or_reason)
        if cluster is None:
            results["skipped"] = reason
            return results
    token = uuid.uuid4().hex[:8]
    try:
        shape: dict = {}
        for k, size in enumerate(sizes):
            windowed = window if (window is not None and k > 0 and size > full_up_to) else None
            for kind, count in [("ours", w) for w in workers] + [("bare", 1)]:
                run_started = time.perf_counter()
                try:
                    figures = await _lifecycle_run(cluster, workdir, size, kind, count, time_scale, shape, token, windowed)
                except Exception as exc:  # noqa: BLE001 - recorded: the other points of the curve still stand
                    if kind == "bare" and "steps" not in shape:
                        figures = {"failed": "no run of ours to take the shape from"}
                    else:
                        figures = {"failed": f"{type(exc).__name__}: {exc}"[:500]}
                figures["wall_seconds"] = round(time.perf_counter() - run_started, 1)
                results["lifecycle"].append({"size": size, "kind": kind, "workers": count, **figures})
                progress(f"lifecycle {kind} x{count} at {size:,}: {figures.get('recommendations_per_second', figures.get('failed'))} "
                         f"recommendations/s ({time.perf_counter() - run_started:.0f} s)")
        for row in results["lifecycle"]:
            bare = next((r for r in results["lifecycle"] if r["kind"] == "bare" and r["size"] == row["size"]), None)
            if row["kind"] == "ours" and bare and "recommendations_per_second" in row and "recommendations_per_second" in bare:
                row["ratio"] = round(row["recommendations_per_second"] / bare["recommendations_per_second"], 3)
        today = datetime.datetime.now(LONDON).date()
        for size in web_sizes:
            page_runs = web.PAGE_RUNS if size >= 10_000 else 20
            run_started = time.perf_counter()
            urls = [("postgresql", await create_database(cluster, f"ncpi_scale_{token}_web_{size}"))]
            if sqlite_web:
                urls.append(("sqlite", f"sqlite+aiosqlite:///{workdir / f'web-{size}.db'}"))
            for database, url in urls:
                web_dir = workdir / f"web-{database}-{size}"
                web_dir.mkdir()
                try:
                    figures = await web._measure_dashboard(url, size, web_dir, today, page_runs)
                except Exception as exc:  # noqa: BLE001
                    figures = {"failed": f"{type(exc).__name__}: {exc}"[:500]}
                keep = ("recommendations", "load_seconds", "dashboard_page", "dashboard_query", "baseline_query", "ratio_p50",
                        "failed")
                results["web"].append({"size": size, "database": database, **{k: v for k, v in figures.items() if k in keep}})
            progress(f"web at {size:,}: {time.perf_counter() - run_started:.0f} s")
    finally:
        if own_cluster:
            await asyncio.to_thread(cluster.stop)
    results["seconds"] = round(time.perf_counter() - started, 1)
    return results


# ---------------------------------------------------------------- the table


def _n(value) -> str:
    return f"{value:,}"


def _life(results: dict, size: int, kind: str, workers: int) -> dict | None:
    return next((r for r in results["lifecycle"] if r["size"] == size and r["kind"] == kind and r["workers"] == workers), None)


def _cell(row: dict | None) -> str:
    if row is None:
        return "-"
    if "failed" in row:
        return f"failed: {row['failed']}"
    rss = row["worker_rss"]
    peak = rss["peak_mib_all_workers"]
    each = " + ".join(f"{p:,.0f}" for p in rss["peak_mib_per_worker"]) if len(rss["peak_mib_per_worker"]) > 1 else ""
    when = f"{row['window_seconds']:g} s window" if "window_seconds" in row else f"{row['seconds']} s"
    return (f"{row['recommendations_per_second']} /s ({when}); peak RSS {peak:,.0f} MiB"
            + (f" ({each})" if each else ""))


def table(results: dict) -> str:
    if "skipped" in results:
        return f"The scaling curve was skipped: {results['skipped']}\n"
    workers = results["workers"]
    head = ["recommendations"] + [f"ours, {w} worker{'s' if w > 1 else ''}" for w in workers] + ["bare, 1 worker"]
    head += [f"speed vs bare, {w} worker{'s' if w > 1 else ''}" for w in workers]
    rows = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for size in results["sizes"]:
        ours = [_life(results, size, "ours", w) for w in workers]
        cells = [_n(size)] + [_cell(r) for r in ours] + [_cell(_life(results, size, "bare", 1))]
        cells += [str(r.get("ratio", "-")) if r else "-" for r in ours]
        rows.append("| " + " | ".join(cells) + " |")
    out = "\n".join(rows) + "\n"
    if results["web"]:
        databases = [d for d in ("postgresql", "sqlite") if any(w["database"] == d for w in results["web"])]
        label = {"postgresql": "PostgreSQL", "sqlite": "SQLite"}
        head = ["recommendations"] + [f"all-forces page, {label[d]} (p50 / p95)" for d in databases]
        head += [f"bare aggregate, {label[d]} (p50 / p95)" for d in databases]
        rows = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
        for size in results["web_sizes"]:
            found = {w["database"]: w for w in results["web"] if w["size"] == size}

            def pp(d: str, key: str) -> str:
                w = found.get(d)
                if w is None:
                    return "-"
                if "failed" in w:
                    return f"failed: {w['failed']}"
                return f"{w[key]['p50_ms']} / {w[key]['p95_ms']} ms"

            rows.append("| " + " | ".join([_n(size)] + [pp(d, "dashboard_page") for d in databases]
                                          + [pp(d, "baseline_query") for d in databases]) + " |")
        out += "\n" + "\n".join(rows) + "\n"
    return out


def summary(results: dict) -> str:
    machine = results["machine"]
    return (f"Measured by `make bench-scale` on {results['date']}: {machine['cpus']} CPUs, Python {machine['python']}, "
            f"time scale {_n(int(results['time_scale']))}, {results.get('seconds', '-')} s in all.\n")


# ---------------------------------------------------------------- the plot

WIDTH, HEIGHT = 960, 330
PANEL_W, PANEL_H = 250, 210
LEFT, TOP = 70, 50
GAP = 320
SERIES_COLOURS = ["#1d70b8", "#4c2c92", "#d4351c", "#00703c", "#f47738"]  # GOV.UK: >= 3:1 on white
DASHES = ["", "6 3", "2 3", "8 3 2 3", "1 2"]


def _ticks(low: float, high: float) -> list[float]:
    """Round ticks from 0 to at least `high`: 1, 2 or 5 times a power of ten apart, four or five of them."""
    high = max(high, low + 1e-9, 1e-9)
    raw = high / 4
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    return [step * k for k in range(0, int(math.ceil(high / step)) + 1)]


def _fmt(v: float) -> str:
    return f"{v:,.0f}" if v >= 10 or v == 0 else f"{v:g}"


def _panel(index: int, title: str, unit: str, sizes: list[int], series: list[tuple[str, list[float | None]]]) -> list[str]:
    """One panel: x the sizes on a log scale (evenly spaced: each ten times or five times the last), y linear."""
    x0, y0 = LEFT + index * GAP, TOP
    values = [v for _, vs in series for v in vs if v is not None]
    ticks = _ticks(0, max(values, default=1))
    top = ticks[-1] or 1
    logs = [math.log10(s) for s in sizes]
    span = (logs[-1] - logs[0]) or 1

    def x(size: int) -> float:
        return x0 + (math.log10(size) - logs[0]) / span * PANEL_W if len(sizes) > 1 else x0 + PANEL_W / 2

    def y(v: float) -> float:
        return y0 + PANEL_H - v / top * PANEL_H

    out = [f'<g class="panel" aria-label="{escape(title)}">',
           f'<text x="{x0 + PANEL_W / 2:.1f}" y="{y0 - 18}" text-anchor="middle" font-weight="bold">{escape(title)}</text>',
           f'<line x1="{x0}" y1="{y0 + PANEL_H}" x2="{x0 + PANEL_W}" y2="{y0 + PANEL_H}" stroke="#505a5f"/>',
           f'<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y0 + PANEL_H}" stroke="#505a5f"/>',
           f'<text x="{x0 - 52}" y="{y0 + PANEL_H / 2:.1f}" text-anchor="middle" '
           f'transform="rotate(-90 {x0 - 52} {y0 + PANEL_H / 2:.1f})">{escape(unit)}</text>',
           f'<text x="{x0 + PANEL_W / 2:.1f}" y="{y0 + PANEL_H + 36}" text-anchor="middle">recommendations (log scale)</text>']
    for t in ticks:
        out.append(f'<line x1="{x0 - 4}" y1="{y(t):.1f}" x2="{x0 + PANEL_W}" y2="{y(t):.1f}" stroke="#e6e6e6"/>')
        out.append(f'<text x="{x0 - 7}" y="{y(t) + 4:.1f}" text-anchor="end">{_fmt(t)}</text>')
    for s in sizes:
        out.append(f'<text x="{x(s):.1f}" y="{y0 + PANEL_H + 18}" text-anchor="middle">{s:,}</text>')
    for k, (name, vs) in enumerate(series):
        colour, dash = SERIES_COLOURS[k % len(SERIES_COLOURS)], DASHES[k % len(DASHES)]
        points = [(x(s), y(v)) for s, v in zip(sizes, vs) if v is not None]
        if len(points) > 1:
            path = " ".join(f"{px:.1f},{py:.1f}" for px, py in points)
            out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"'
                       + (f' stroke-dasharray="{dash}"' if dash else "") + "/>")
        for px, py in points:
            out.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3.5" fill="{colour}"><title>{escape(name)}</title></circle>')
        ly = y0 + 8 + 16 * k
        out.append(f'<line x1="{x0 + 10}" y1="{ly}" x2="{x0 + 30}" y2="{ly}" stroke="{colour}" stroke-width="2"'
                   + (f' stroke-dasharray="{dash}"' if dash else "") + "/>")
        out.append(f'<text x="{x0 + 34}" y="{ly + 4}" font-size="11">{escape(name)}</text>')
    out.append("</g>")
    return out


def _series(results: dict) -> tuple[list, list, list]:
    sizes = results["sizes"]
    configs = [("ours", w) for w in results["workers"]] + [("bare", 1)]

    def value(row, key):
        if row is None or "failed" in row:
            return None
        return row["recommendations_per_second"] if key == "rate" else row["worker_rss"]["peak_mib_all_workers"]

    def name(kind, w):
        return f"{'ours' if kind == 'ours' else 'bare'}, {w} worker{'s' if w > 1 else ''}"

    rate = [(name(k, w), [value(_life(results, s, k, w), "rate") for s in sizes]) for k, w in configs]
    rss = [(name(k, w), [value(_life(results, s, k, w), "rss") for s in sizes]) for k, w in configs]
    web = []
    for database, label in (("postgresql", "PostgreSQL"), ("sqlite", "SQLite")):
        for key, what in (("dashboard_page", "page"), ("baseline_query", "bare aggregate")):
            vs = []
            for s in results["web_sizes"]:
                w = next((w for w in results["web"] if w["size"] == s and w["database"] == database), None)
                vs.append(w[key]["p50_ms"] if w and "failed" not in w else None)
            if any(v is not None for v in vs):
                web.append((f"{what}, {label}", vs))
    return rate, rss, web


def svg(results: dict) -> str:
    """The curve as a hand-written SVG: three panels (throughput, peak worker RSS, the dashboard's p50),
    with a <title> and a <desc> giving the figures in words. Deterministic: the same results, the same bytes."""
    rate, rss, web = _series(results)
    sizes, web_sizes = results["sizes"], results["web_sizes"]

    def words(label: str, unit: str, xs: list[int], series) -> str:
        return f"{label}: " + "; ".join(
            f"{name} " + ", ".join(f"{v:g} {unit} at {s:,}" for s, v in zip(xs, vs) if v is not None) for name, vs in series)

    desc = ". ".join([words("Lifecycle throughput", "recommendations/s", sizes, rate),
                      words("Peak worker RSS", "MiB", sizes, rss),
                      words("All-forces page p50", "ms", web_sizes, web)]) + "."
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" '
             'role="img" aria-labelledby="scale-title scale-desc" font-family="Arial, Helvetica, sans-serif" font-size="12" '
             'fill="#0b0c0c">',
             '<title id="scale-title">How cost grows with the work (make bench-scale)</title>',
             f'<desc id="scale-desc">{escape(desc)}</desc>',
             f'<rect width="{WIDTH}" height="{HEIGHT}" fill="#ffffff"/>']
    parts += _panel(0, "Lifecycle throughput, PostgreSQL", "recommendations/s", sizes, rate)
    parts += _panel(1, "Peak worker RSS (all workers)", "MiB", sizes, rss)
    if web_sizes:
        parts += _panel(2, "All-forces page, p50", "ms", web_sizes, web)
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------- writing


def readme_block(results: dict, svg_path: Path = SVG, readme: Path = README) -> str:
    picture = os.path.relpath(svg_path, readme.parent)
    return f"![How cost grows with the work: throughput, peak worker RSS, dashboard p50]({picture})\n\n{table(results)}\n{summary(results)}"


def embed(readme: Path, block: str) -> bool:
    """Replace what is between the README's bench-scale markers; False if they are not there."""
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        return False
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    readme.write_text(f"{head}{README_START}\n{block}{README_END}{tail}")
    return True


def write(results: dict, json_path: Path, svg_path: Path, readme: Path | None) -> str:
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    svg_path.parent.mkdir(parents=True, exist_ok=True)
    svg_path.write_text(svg(results))
    block = readme_block(results, svg_path, readme or README)
    if readme is not None:
        embed(readme, block)
    return block


def _ints(arg: str) -> tuple[int, ...]:
    return tuple(int(v.replace("_", "")) for v in arg.split(",") if v)


def main(argv: list[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=_ints, default=SIZES)
    parser.add_argument("--web-sizes", type=_ints, default=WEB_SIZES)
    parser.add_argument("--workers", type=_ints, default=WORKERS)
    parser.add_argument("--time-scale", type=float, default=TIME_SCALE)
    parser.add_argument("--no-sqlite-web", action="store_true")
    parser.add_argument("--window", type=float, default=WINDOW,
                        help="seconds of each point above --full-up-to (0: every point to the end)")
    parser.add_argument("--full-up-to", type=int, default=FULL_UP_TO)
    parser.add_argument("--publish", action="store_true",
                        help="write scale.json, the SVG and the README's table even when the sizes are not the defaults")
    args = parser.parse_args(argv)
    default = args.publish or ((args.sizes, args.web_sizes, args.workers, args.time_scale, args.window, args.full_up_to)
                               == (SIZES, WEB_SIZES, WORKERS, TIME_SCALE, WINDOW, FULL_UP_TO))
    with tempfile.TemporaryDirectory(prefix="ncpi-bench-scale-") as tmp:
        results = run_until_signalled(measure(Path(tmp), args.sizes, args.web_sizes, args.workers, args.time_scale,
                                              sqlite_web=not args.no_sqlite_web, window=args.window or None,
                                              full_up_to=args.full_up_to,
                                              progress=lambda line: print(line, file=sys.stderr, flush=True)))
        if results is None:  # SIGTERM or SIGINT: every worker, server and cluster stopped, the folder removed
            print("bench-scale: stopped, cleaned up", file=sys.stderr, flush=True)
            sys.exit(143)
    if default:
        block = write(results, RESULTS, SVG, README)
    else:  # a partial curve never replaces the published one
        block = write(results, HERE / "results" / "scale-custom.json", ROOT / "docs" / "bench-scale-custom.svg", None)
    print(block, flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
    os._exit(0)  # the Temporal SDK can crash the interpreter at exit (sdk-python issue 300)
