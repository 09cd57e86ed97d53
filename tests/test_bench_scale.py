"""The scaling curve's logic (bench/scale.py, `make bench-scale`) at a tiny size: one lifecycle size of
20 recommendations (ours with one worker, the bare baseline), the dashboard over 200 recommendations on
PostgreSQL and SQLite; the JSON, the SVG and the README block produced and well formed. No timing is
asserted: the figures are measured, never judged here."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

from bench import lifecycle, scale

SVG_NS = "{http://www.w3.org/2000/svg}"
README_TEXT = "# Title\n\nBefore.\n\n<!-- bench-scale:start -->\nold table\n<!-- bench-scale:end -->\n\nAfter.\n"


def _svg_shape(text: str) -> ET.Element:
    root = ET.fromstring(text)  # well formed, or this raises
    assert root.tag == f"{SVG_NS}svg" and root.get("role") == "img"
    assert root.find(f"{SVG_NS}title").text and root.find(f"{SVG_NS}desc").text
    return root


async def test_the_curve_at_a_tiny_size(tmp_path, postgres_cluster):
    lines: list[str] = []
    (tmp_path / "work").mkdir()
    results = await scale.measure(tmp_path / "work", sizes=(20,), web_sizes=(200,), workers=(1,), time_scale=10_000_000.0,
                                  progress=lines.append, cluster=postgres_cluster)
    assert "skipped" not in results
    rows = {(r["kind"], r["workers"]): r for r in results["lifecycle"]}
    assert set(rows) == {("ours", 1), ("bare", 1)}
    for row in rows.values():
        assert "failed" not in row, row
        assert row["recommendations"] == 20 and row["size"] == 20
        assert row["recommendations_per_second"] > 0 and row["seconds"] > 0
        rss = row["worker_rss"]
        assert len(rss["peak_mib_per_worker"]) == 1 and rss["peak_mib_all_workers"] >= rss["start_mib_per_worker"][0] > 0
        assert rss["cpu_seconds_per_worker"][0] > 0
    assert rows[("ours", 1)]["emails_received"] > 0  # the whole lifecycle ran: reminders, escalations, decisions
    assert rows[("ours", 1)]["ratio"] == round(rows[("ours", 1)]["recommendations_per_second"]
                                               / rows[("bare", 1)]["recommendations_per_second"], 3)
    web = {r["database"]: r for r in results["web"]}
    assert set(web) == {"postgresql", "sqlite"}
    for row in web.values():
        assert "failed" not in row, row
        assert row["recommendations"] == 200 and row["dashboard_page"]["samples"] == 20
        assert row["baseline_query"]["p50_ms"] > 0
    assert len(lines) == 3  # two lifecycle runs and one web size reported as they end

    readme = tmp_path / "README.md"
    readme.write_text(README_TEXT)
    json_path, svg_path = tmp_path / "results" / "scale.json", tmp_path / "docs" / "bench-scale.svg"
    block = scale.write(results, json_path, svg_path, readme)
    assert json.loads(json_path.read_text()) == json.loads(json.dumps(results))
    root = _svg_shape(svg_path.read_text())
    # one size: a point per series. Rate and RSS: ours x1 and bare; the page: ours and the bare aggregate, two databases
    assert len(root.findall(f".//{SVG_NS}circle")) == 2 + 2 + 4
    text = readme.read_text()
    assert text.startswith("# Title\n\nBefore.\n\n<!-- bench-scale:start -->\n") and text.endswith("<!-- bench-scale:end -->\n\nAfter.\n")
    assert "old table" not in text and block in text and "(docs/bench-scale.svg)" in text
    assert "| 20 | " in text and "| 200 | " in text
    scale.write(results, json_path, svg_path, readme)  # a second run replaces the block, not adds one
    assert readme.read_text() == text


def _row(size: int, kind: str, workers: int, rate: float, rss: float) -> dict:
    return {"size": size, "kind": kind, "workers": workers, "recommendations": size, "seconds": size / rate,
            "recommendations_per_second": rate, "worker_rss": {"peak_mib_per_worker": [rss / workers] * workers,
                                                               "peak_mib_all_workers": rss, "start_mib_per_worker": [100.0] * workers}}


def test_table_and_plot_of_a_whole_curve_with_a_failed_point():
    sizes = [100, 1000, 5000]
    lifecycle = []
    for size, rate in zip(sizes, (4.0, 9.0, 11.0)):
        lifecycle += [_row(size, "ours", 1, rate, 150 + size / 10), _row(size, "bare", 1, rate * 1.5, 80 + size / 50)]
        if size != 5000:
            lifecycle.append(_row(size, "ours", 2, rate * 1.2, 300 + size / 10))
    lifecycle.append({"size": 5000, "kind": "ours", "workers": 2, "failed": "RuntimeError: it broke"})
    web = [{"size": n, "database": "postgresql", "recommendations": n, "dashboard_page": {"p50_ms": 5 + n / 2000, "p95_ms": 9.0},
            "baseline_query": {"p50_ms": 1 + n / 3000, "p95_ms": 2.0}} for n in (1000, 10000, 100000)]
    results = {"machine": {"python": "3.11", "cpus": 2}, "date": "2026-12-02", "time_scale": 4e6, "sizes": sizes,
               "web_sizes": [1000, 10000, 100000], "workers": [1, 2], "lifecycle": lifecycle, "web": web, "seconds": 900.0}
    md = scale.table(results)
    lines = md.splitlines()
    lifecycle_rows = [line for line in lines if line.startswith("| 100 |") or line.startswith("| 1,000 |")
                      or line.startswith("| 5,000 |")]
    assert len(lifecycle_rows) == 4  # three sizes, and the web table's 1,000
    assert all(line.count("|") == lines[0].count("|") for line in lines[:5])
    assert "failed: RuntimeError: it broke" in md and "100,000" in md
    root = _svg_shape(scale.svg(results))
    lines_drawn = root.findall(f".//{SVG_NS}polyline")
    # ours x1, ours x2 (two points: still a line), bare: in two panels; page and bare aggregate on PostgreSQL
    assert len(lines_drawn) == 3 + 3 + 2
    assert all(len(p.get("points").split()) in (2, 3) for p in lines_drawn)
    assert "at 5,000" in root.find(f"{SVG_NS}desc").text
    assert scale.svg(results) == scale.svg(results)  # deterministic


def test_5000_recommendations_are_500_reports_each_its_own_force_and_monday():
    pairs = lifecycle.report_dates(500, scale.PUBLISHED)
    assert len(pairs) == 500 and len(set(pairs)) == 500  # inspection IDs are force-date: all distinct
    assert {day.weekday() for _, day in pairs} == {0}
    assert len({day for _, day in pairs}) == 12  # 43 forces a week, the last week short
    assert len({code for code, _ in pairs}) == 43
    assert lifecycle.report_dates(10, scale.PUBLISHED) == [(code, scale.PUBLISHED) for code, _ in pairs[:10]]


async def test_a_point_in_a_time_window_counts_its_work_against_a_whole_lifecycle(tmp_path, postgres_cluster):
    """The first size runs to the end (its histories give one whole lifecycle's work); the next for a
    window of seconds, its work counted from a sample of its histories (up to the window's end only)."""
    lines: list[str] = []
    (tmp_path / "work").mkdir()
    results = await scale.measure(tmp_path / "work", sizes=(10, 30), web_sizes=(), workers=(1,), time_scale=10_000_000.0,
                                  progress=lines.append, cluster=postgres_cluster, window=5.0, full_up_to=10)
    rows = {(r["size"], r["kind"]): r for r in results["lifecycle"]}
    assert set(rows) == {(10, "ours"), (10, "bare"), (30, "ours"), (30, "bare")}
    for size, kind in rows:
        row = rows[(size, kind)]
        assert "failed" not in row, row
        assert row["measured"] == ("to the end" if size == 10 else "window")
    for kind in ("ours", "bare"):
        full, windowed = rows[(10, kind)], rows[(30, kind)]
        assert full["work_per_recommendation"] > 1  # activities and local activities of one lifecycle, with its inspection's share
        assert windowed["window_seconds"] == 5.0 and windowed["work_per_recommendation"] == full["work_per_recommendation"]
        assert windowed["recommendations_per_second"] > 0 and windowed["sampled_workflows"] > 0
        assert windowed["recommendations_worth_of_work"] <= 30
        assert windowed["worker_rss"]["peak_mib_all_workers"] > 0
    assert "5 s window" in scale.table(results)
    assert results["window_seconds"] == 5.0 and len(lines) == 4
