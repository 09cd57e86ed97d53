"""`make bench`: every benchmark in one invocation, written to bench/results/latest.json and a
markdown table (bench/results/latest.md) for the README. Figures are measured, never asserted."""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _n(value: float) -> str:
    return f"{value:,}"


def _pct(p: dict) -> str:
    return f"{p['p50_ms']} / {p['p95_ms']} / {p['p99_ms']} ms"


def table(results: dict) -> str:
    """The README's table. "Speed" is the baseline's time over ours (or our rate over the baseline's):
    1 is as fast as the baseline, 0.5 twice as slow."""
    rows = ["| benchmark | ours | baseline (same run, same server) | speed vs baseline |", "| --- | --- | --- | --- |"]
    life = results.get("lifecycle")
    if life:
        bare = life["baseline_bare"]
        for name, figures in life["ours"].items():
            label = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}[name]
            if "skipped" in figures:
                rows.append(f"| lifecycle throughput, {label} | skipped: {figures['skipped']} | - | - |")
                continue
            same = (life.get("baseline_same_work") or {}).get(name) or {}
            baseline = (f"bare workflows of the same shape, no I/O: {bare['recommendations_per_second']} recommendations/s "
                        f"({bare['seconds']} s)")
            ratio = str(figures["ratio"])
            if "recommendations_per_second" in same and "ratio_same_work" in figures:
                baseline += (f"; the same work (its rows by plain SQL on {label}, its emails leased, sent, marked sent): "
                             f"{same['recommendations_per_second']} recommendations/s ({same['seconds']} s)")
                ratio = f"{figures['ratio']} (no I/O) / {figures['ratio_same_work']} (same work)"
            rows.append(
                f"| lifecycle throughput, {label}: {life['recommendations']} recommendations, publication to the end of the "
                f"re-opening window (time scale {_n(int(life['time_scale']))}) | {figures['recommendations_per_second']} "
                f"recommendations/s ({figures['seconds']} s) | {baseline} | {ratio} |")
    p = results.get("publication")
    if p:
        # Figures measured before publish_many (no "concurrency") were one file, one start, after the other.
        bound = f"{p['concurrency']} at a time" if "concurrency" in p else "one after the other"
        how = (f"`publish_many` as `ncpi publish A B ...` ({bound}, one engine, one client)" if "concurrency" in p
               else "one `ncpi publish` after the other")
        rows.append(f"| publication: {p['reports']} reports x 10 recommendations, {how}, files to every workflow started | "
                    f"{p['seconds']} s ({p['per_recommendation_ms']} ms per recommendation) | "
                    f"as many bare workflow starts (one per report and per recommendation) from one client, "
                    f"{bound}: {p['baseline_bare_starts_seconds']} s | {p['ratio']} |")
    u = results.get("update_latency")
    if u:
        base, same = u["baseline_bare_update"], u.get("baseline_same_work_update")
        for name in ("submit_evidence", "record_decision"):
            ours = u[name]
            baseline = f"bare Update on a bare workflow, no I/O: {_pct(base)}"
            ratio = f"{round(base['p50_ms'] / ours['p50_ms'], 3)} (p50)"
            if same:
                baseline += f"; the same work (one local activity writing a decision's rows in one transaction): {_pct(same)}"
                ratio = (f"{round(base['p50_ms'] / ours['p50_ms'], 3)} (p50, no I/O) / "
                         f"{round(same['p50_ms'] / ours['p50_ms'], 3)} (p50, same work), "
                         f"{round(same['p99_ms'] / ours['p99_ms'], 3)} (p99, same work)")
            rows.append(f"| Update `{name}` with {_n(u['open_recommendation_workflows'])} open recommendation workflows "
                        f"(p50 / p95 / p99 of {ours['samples']}) | {_pct(ours)} | {baseline} | {ratio} |")
    m = results.get("memory")
    if m:
        base = m.get("baseline_bare_rss_mib_per_1000_open_workflows")
        shipped = (f", {m['workflow_sandbox']} sandbox, cache of {_n(m['max_cached_workflows'])}" if "workflow_sandbox" in m else "")
        rows.append(f"| worker RSS per 1,000 open recommendation workflows ({_n(m['open_recommendation_workflows'])} open{shipped}) | "
                    f"{m['rss_mib_per_1000_open_recommendation_workflows']} MiB | bare workflows: {base} MiB per 1,000 | "
                    f"{round(base / m['rss_mib_per_1000_open_recommendation_workflows'], 3) if base else '-'} |")
    rows.extend(memory_rows(results.get("memory_parts") or {}))
    for name, figures in (results.get("listing") or {}).items():
        label = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}.get(name, name)
        if "skipped" in figures:
            rows.append(f"| listing, {label} | skipped: {figures['skipped']} | - | - |")
            continue
        rows.append(f"| listing, {label}: the status query over {_n(figures['recommendations'])} recommendations "
                    f"(before this change: {_n(figures['status_query_before_ms'])} ms) | {_n(figures['status_query_ms'])} ms | "
                    f"bare `SELECT id` of every row: {_n(figures['baseline_ms'])} ms | {round(1 / figures['ratio'], 3)} |")
        rows.append(f"| listing, {label}: `ncpi status --json` end to end, {_n(figures['recommendations'])} recommendations | "
                    f"{_n(figures['cli_status_json_ms'])} ms | `ncpi --help` (start-up alone): {_n(figures['cli_startup_ms'])} ms | "
                    f"{round(figures['cli_startup_ms'] / figures['cli_status_json_ms'], 3)} |")
        if "streamed_json_ms" in figures:
            rows.append(f"| listing, {label}: `ncpi status --json` streamed (`stream_status_json`), {_n(figures['recommendations'])} "
                        f"recommendations | {_n(figures['streamed_json_ms'])} ms, peak {figures['streamed_json_peak_mib']} MiB | "
                        f"the same columns by bare SQL, all rows at once, the same JSON encoder: {_n(figures['baseline_json_ms'])} ms, "
                        f"peak {figures['baseline_json_peak_mib']} MiB | {figures['json_ratio']} |")
            rows.append(f"| listing, {label}: `ncpi status` default text (summary and page 1 of 50 rows), "
                        f"{_n(figures['recommendations'])} recommendations | {_n(figures['default_text_ms'])} ms | "
                        f"the same summary query and the page's rows by bare SQL: {_n(figures['baseline_text_ms'])} ms | "
                        f"{figures['text_ratio']} |")
    email = results.get("email") or {}
    if "smtp_send" in email:
        e = email["smtp_send"]
        rows.append(f"| email: {_n(e['messages'])} messages over one reused SMTP connection | {e['reused_connection_per_second']} msg/s | "
                    f"one connection per message: {e['one_connection_per_message_per_second']} msg/s | {e['ratio']} |")
    if "delivery_path" in email:
        d = email["delivery_path"]
        what = ("rendered when recorded; lease, send, mark sent" if d.get("rendered_at_record")
                else "outbox row, templates, send, mark sent")
        rows.append(f"| email: the whole delivery activity ({what}), {_n(d['notifications'])} "
                    f"notifications | {d['per_second']} msg/s | `Mailer.send` alone: {email['smtp_send']['reused_connection_per_second']} msg/s | "
                    f"{d['ratio']} |")
    if "delivery_path_slow_smtp" in email and "smtp_send_slow" in email:
        d, e = email["delivery_path_slow_smtp"], email["smtp_send_slow"]
        ms = round(e["server_seconds_per_message"] * 1000)
        rows.append(f"| email, a relay taking {ms} ms per message: `Mailer.send` alone, {_n(e['messages'])} messages | "
                    f"{e['reused_connection_per_second']} msg/s | the relay's own ceiling: {e['ceiling_per_second']} msg/s | "
                    f"{round(e['reused_connection_per_second'] / e['ceiling_per_second'], 2)} |")
        rows.append(f"| email, a relay taking {ms} ms per message: the delivery activity (rendered when recorded), "
                    f"{_n(d['notifications'])} notifications | {d['per_second']} msg/s | `Mailer.send` alone to the same relay: "
                    f"{e['reused_connection_per_second']} msg/s | {d['ratio']} |")
    rows.extend(web_rows(results.get("web") or {}))
    return "\n".join(rows) + "\n"


def memory_rows(parts: dict) -> list[str]:
    """bench/memory.py's rows: worker RSS part by part, and the sandbox's cost per workflow instance."""
    if not parts:
        return []
    b, inst = parts["breakdown"], parts["sandbox_per_instance"]
    ratio = lambda base, ours: round(base / ours, 3) if ours else "-"  # noqa: E731
    rows = []
    for label, key, part in (("isolated sandbox (workflows/ imported for every run, as before)", "ours_isolated", "isolated"),
                             ("shared sandbox (as shipped)", "ours_shared", "shared"),
                             (f"shared sandbox, NCPI_MAX_CACHED_WORKFLOWS={b['small_cache']}", "ours_shared_small_cache",
                              "small_cache")):
        opened = parts["parts"].get(part, parts["parts"]["shared"])["open_workflows"]
        rows.append(f"| worker RSS, part by part ({_n(opened)} open workflows, the second half's growth), ours with the {label} | "
                    f"{b[key]} MiB per 1,000 | bare workflows: {b['baseline_bare']} MiB per 1,000 | {ratio(b['baseline_bare'], b[key])} |")
    bare = inst["bare_sdk_default_sandbox"]
    for name in ("recommendation_isolated", "recommendation_shared", "inspection_isolated", "inspection_shared"):
        ours = inst[name]
        rows.append(f"| sandbox: creating one {name.replace('_', ' workflow instance, ', 1)} sandbox | "
                    f"{ours['cpu_ms_per_instance']} ms CPU, {ours['kib_per_instance']} KiB | bare workflow, the SDK's default sandbox: "
                    f"{bare['cpu_ms_per_instance']} ms CPU, {bare['kib_per_instance']} KiB | "
                    f"{ratio(bare['cpu_ms_per_instance'], ours['cpu_ms_per_instance'])} (CPU) |")
    s = parts["state"]
    rows.append(f"| state carried by a recommendation workflow: its Query `state` serialised (and its start input) | "
                f"{_n(s['state_query_bytes'])} bytes (+{s['bytes_per_progress_report']} per event; input {_n(s['start_input_bytes'])}) | - | - |")
    return rows


def _pp(p: dict) -> str:
    return f"{p['p50_ms']} / {p['p95_ms']} ms"


def web_rows(web: dict) -> list[str]:
    """The web benchmark's rows (bench/web.py): the all-forces page per database, a recommendation page."""
    rows = []
    for name in ("sqlite", "postgresql"):
        figures = web.get(name)
        if not figures:
            continue
        label = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}[name]
        if "skipped" in figures:
            rows.append(f"| web: the all-forces page, {label} | skipped: {figures['skipped']} | - | - |")
            continue
        page, query, before, bare = (figures["dashboard_page"], figures["dashboard_query"], figures["dashboard_query_before"],
                                     figures["baseline_query"])
        rows.append(
            f"| web: the all-forces page, {label}, {_n(figures['recommendations'])} recommendations, server time "
            f"(p50 / p95 of {page['samples']}; its aggregate alone {_pp(query)}, before the projected columns "
            f"{_pp(before)}) | {_pp(page)} | the bare aggregate (open recommendations counted per force): {_pp(bare)} | "
            f"{round(bare['p50_ms'] / page['p50_ms'], 3) if page['p50_ms'] else '-'} (p50) |")
    rec = web.get("recommendation")
    if rec:
        page, show, startup = rec["recommendation_page"], rec["cli_show_json"], rec["cli_startup"]
        rows.append(
            f"| web: a recommendation page (its records, the live Query, the template), SQLite, server time "
            f"(p50 / p95 of {page['samples']}) | {_pp(page)} | `ncpi show ID --json` end to end: {_pp(show)} "
            f"(`ncpi --help`, start-up alone: {_pp(startup)}) | {round(show['p50_ms'] / page['p50_ms'], 3) if page['p50_ms'] else '-'} (p50) |")
    return rows


README = HERE.parent / "README.md"
README_START, README_END = "<!-- bench:start -->", "<!-- bench:end -->"


SECTION_LABELS = {"setup": "PostgreSQL and the dev server", "temporal": "lifecycle, publication, Updates, memory",
                  "listing": "listing", "email": "email", "web": "web", "memory_parts": "memory part by part"}


def summary(results: dict) -> str:
    machine = results["machine"]
    line = (f"Measured by `make bench`{' --quick' if results['quick'] else ''} on {results['date']}: "
            f"{machine['cpus']} CPUs, Python {machine['python']}, {results['seconds']} s in all")
    sections = results.get("section_seconds") or {}
    timed = [f"{SECTION_LABELS.get(k, k)} {v} s" for k, v in sections.items() if isinstance(v, (int, float))]
    load = (f" Load average {results['load_average_start']} at the start, {results['load_average_end']} at the end."
            if "load_average_start" in results and "load_average_end" in results else "")
    return line + (f" ({', '.join(timed)})" if timed else "") + "." + load + "\n"


def embed_in_readme(markdown: str) -> None:
    """Replace the table between the README's bench markers, so the README shows the latest run."""
    text = README.read_text()
    if README_START not in text or README_END not in text:
        return
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    README.write_text(f"{head}{README_START}\n{markdown}{README_END}{tail}")


async def main(quick: bool) -> dict:
    """Every section, one after the other, on one Temporal dev server (each section's workflows on task
    queues, IDs or namespaces of their own) and one PostgreSQL cluster (a database each); each
    section's wall time in `section_seconds`."""
    from bench import email, listing, memory, temporal_bench, web
    from bench.common import dev_server, maybe_postgres

    results: dict = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count()}, "quick": quick,
                     "date": datetime.date.today().isoformat(),
                     "load_average_start": " ".join(Path("/proc/loadavg").read_text().split()[:3])}
    timings: dict = {}
    cpu: dict = {}
    results["section_seconds"] = timings
    # CPU seconds of this process and of its ended child processes (workers, CLI runs; the shared dev
    # server only at the end): on a loaded machine, what a quiet one would need at least.
    results["section_cpu_seconds"] = cpu
    started = time.perf_counter()
    # Without PostgreSQL (cluster None) each section tries its own and records why it could not.
    async with maybe_postgres() as (cluster, _), dev_server() as env:
        timings["setup"] = round(time.perf_counter() - started, 1)
        mark, cpu_mark = time.perf_counter(), cpu_seconds_so_far()
        parts: dict = {}
        results.update(await temporal_bench.bench(quick, env=env, cluster=cluster, timings=parts))
        timings["temporal"] = round(time.perf_counter() - mark, 1)
        cpu["temporal"] = round(cpu_seconds_so_far() - cpu_mark, 1)
        timings["temporal_parts"] = parts
        for module, key, kwargs in ((listing, "listing", {"cluster": cluster}), (email, "email", {"cluster": cluster}),
                                    (web, "web", {"cluster": cluster, "env": env}),
                                    (memory, "memory_parts", {"env": env, "timings": {}})):
            mark, cpu_mark = time.perf_counter(), cpu_seconds_so_far()
            section: dict = {}
            await module.run(section, quick, **kwargs)
            results[key] = section
            timings[key] = round(time.perf_counter() - mark, 1)
            cpu[key] = round(cpu_seconds_so_far() - cpu_mark, 1)
            if "timings" in kwargs:
                timings[f"{key}_parts"] = kwargs["timings"]
            print(f"bench: {key} took {timings[key]} s", file=sys.stderr, flush=True)
    results["seconds"] = round(time.perf_counter() - started, 1)
    cpu["all"] = round(cpu_seconds_so_far(), 1)
    results["load_average_end"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return results


def cpu_seconds_so_far() -> float:
    """User + system CPU seconds of this process and of every child process it has waited for."""
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


if __name__ == "__main__":
    from bench.common import run_until_signalled

    quick = "--quick" in sys.argv
    results = run_until_signalled(main(quick))
    if results is None:  # SIGTERM or SIGINT: every worker, server and cluster stopped
        print("bench: stopped, cleaned up", file=sys.stderr, flush=True)
        os._exit(143)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    markdown = table(results) + "\n" + summary(results)
    (HERE / "results" / "latest.md").write_text(markdown)
    if not quick:
        embed_in_readme(markdown)
    print(markdown, flush=True)
    # The Temporal SDK can crash the interpreter at exit (sdk-python issue 300): the results are written.
    os._exit(0)
