"""`make bench`: every benchmark in one invocation, written to bench/results/latest.json and a
markdown table (bench/results/latest.md) for the README. Figures are measured, never asserted."""

from __future__ import annotations

import asyncio
import json
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def table(results: dict) -> str:
    rows = ["| benchmark | ours | baseline | ratio |", "| --- | --- | --- | --- |"]
    p = results.get("publication")
    if p:
        rows.append(f"| publication: {p['reports']} reports x 10 recommendations, files to every workflow started | "
                    f"{p['seconds']} s ({p['per_recommendation_ms']} ms per recommendation) | "
                    f"bare starts of as many workflows: {p['baseline_bare_starts_seconds']} s | {p['ratio_bare_to_ours']} |")
    u = results.get("update_latency")
    if u:
        base = u["baseline_bare_update"]
        for name in ("submit_evidence", "record_decision"):
            ours = u[name]
            rows.append(f"| Update `{name}`, {u['open_workflows']} open workflows (p50 / p95 / p99) | "
                        f"{ours['p50_ms']} / {ours['p95_ms']} / {ours['p99_ms']} ms | bare Update: "
                        f"{base['p50_ms']} / {base['p95_ms']} / {base['p99_ms']} ms | {round(base['p50_ms'] / ours['p50_ms'], 3)} (p50) |")
    m = results.get("memory")
    if m:
        rows.append(f"| worker RSS per 1,000 open workflows | {m['rss_mib_per_1000_open_workflows']} MiB | - | - |")
    for key in ("listing", "email"):
        for name, figures in (results.get(key) or {}).items():
            if isinstance(figures, dict):
                rows.append(f"| {key}: {name} | {json.dumps({k: v for k, v in figures.items() if k not in ('baseline', 'ratio')})} | "
                            f"{figures.get('baseline', '-')} | {figures.get('ratio', '-')} |")
    return "\n".join(rows) + "\n"


async def main(quick: bool) -> dict:
    from bench import temporal_bench

    results: dict = {"machine": {"python": platform.python_version(), "cpus": __import__("os").cpu_count()}, "quick": quick}
    started = time.perf_counter()
    results.update(await temporal_bench.bench(quick))
    for module_name, key in (("bench.listing", "listing"), ("bench.email", "email")):
        try:
            module = __import__(module_name, fromlist=["run"])
        except ImportError:
            continue
        section: dict = {}
        await module.run(section, quick)
        results[key] = section
    results["seconds"] = round(time.perf_counter() - started, 1)
    return results


if __name__ == "__main__":
    quick = "--quick" in sys.argv
    results = asyncio.run(main(quick))
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    (HERE / "results" / "latest.md").write_text(table(results))
    print(table(results))
