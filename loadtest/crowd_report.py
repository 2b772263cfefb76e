"""Turn crowd.sh's runs (work/crowd/results.jsonl + meta.json + notes.txt) into
results/<date>-<HHMM>-crowd-<commit>.md, and a .jsonl beside it: every measured line, then one
{"kind": "summary"} line per figure (median, range, per-run ratios).

    python3 crowd_report.py --work loadtest/work/crowd --results loadtest/results

Every figure is the median over the runs with its range (lowest–highest run); the ratio is
certgate ÷ nginx within each run (both measured in the same run), its median and range; the
issue's goal stands beside it.
"""

import argparse
import datetime
import json
import os
import statistics

TARGETS = ("certgate", "nginx")
IDLE_STATES = [
    ("idle-mtls", "after one request each (headline)", 0.5),
    ("idle-mtls-mixed", "after 100 requests of mixed sizes each (1 KiB–1 MiB bodies)", 0.5),
    ("idle-mtls-handshake-only", "after the handshake only, no request", None),
]


def med_range(vals, digits=1, unit=""):
    vals = [v for v in vals if v is not None]
    if not vals:
        return "–"
    m, lo, hi = statistics.median(vals), min(vals), max(vals)
    if len(vals) == 1:
        return f"{m:,.{digits}f}{unit}"
    return f"{m:,.{digits}f}{unit} ({lo:,.{digits}f}–{hi:,.{digits}f})"


def goal_cell(ratios, goal):
    if goal is None:
        return "–"
    if not ratios:
        return f"≤ {goal:.2f}×"
    met = statistics.median(ratios) <= goal
    return f"≤ {goal:.2f}× ({'met' if met else 'not met'})"


class Figures:
    """Rows of one scenario, by run and target; figure(get) gives both targets' values per run."""

    def __init__(self, rows):
        self.by_run = {}
        for r in rows:
            self.by_run.setdefault(str(r.get("run", "")), {})[r["target"]] = r
        self.summary = []

    def values(self, get, target):
        out = []
        for runs in self.by_run.values():
            if target in runs:
                try:
                    out.append(get(runs[target]))
                except (KeyError, TypeError):
                    pass
        return [v for v in out if v is not None]

    def ratios(self, get):
        out = []
        for runs in self.by_run.values():
            try:
                a, b = get(runs["certgate"]), get(runs["nginx"])
            except (KeyError, TypeError):
                continue
            if a is not None and b:
                out.append(a / b)
        return out

    def row(self, label, get, digits=1, goal=None, ratio=True, key=None):
        vals = {t: self.values(get, t) for t in TARGETS}
        rs = self.ratios(get) if ratio else []
        self.summary.append({"kind": "summary", "figure": key or label,
                             **{t: vals[t] for t in TARGETS}, "ratios": rs, "goal": goal})
        return (f"| {label} | " + " | ".join(med_range(vals[t], digits) for t in TARGETS)
                + f" | {'**' + med_range(rs, 2, '×') + '**' if rs else '–'} | "
                + goal_cell(rs, goal) + " |")


def table_head():
    return ["| figure | certgate | nginx | certgate ÷ nginx (per run) | goal |",
            "|---|---:|---:|---:|---|"]


def idle_section(rows, meta, summary):
    out = ["", "## 1. Memory per idle mTLS connection (goal 1)", "",
           f"Growth of the terminator's summed VmRSS (all its processes) ÷ idle connections, "
           f"each figure in a freshly started terminator, resumption on, keep-alive timeouts "
           f"900 s. {meta['idle_conns']} connections after one request (`GET /`, the upstream "
           f"answers `ok`) or after the handshake only; {meta['idle_conns_mixed']} after 100 "
           f"requests of mixed sizes (downloads via `/d/`, uploads via `/u`), where the growth "
           f"from the first quarter of the connections to all of them is divided by the other "
           f"three quarters (what the last 1 MiB bodies left in the allocator cancels out). "
           f"KiB per connection.", ""] + table_head()
    any_rows = False
    for state, what, goal in IDLE_STATES:
        sr = [r for r in rows if r["scenario"] == state]
        if not sr:
            continue
        any_rows = True
        f = Figures(sr)
        out.append(f.row(f"KiB per connection {what}",
                         lambda r: r["bytes_per_conn"] / 1024, 1, goal, key=state))
        if any(r.get("shmem_bytes_per_conn") for r in sr):
            out.append(f.row("… of which shared memory (RssShmem)",
                             lambda r: r["shmem_bytes_per_conn"] / 1024, 1, ratio=False,
                             key=state + "-shmem"))
        summary += f.summary
    if not any_rows:
        return []
    out += ["", "Every run:", "",
            "| run | state | target | opened | still open | failed requests | "
            "RSS before → after KiB | KiB/conn | open s |",
            "|---:|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if not r["scenario"].startswith("idle-"):
            continue
        b = r["bytes_per_conn"]
        mid = f" → {r['rss_mid_kib']:,} ({r['mid_conns']})" if "rss_mid_kib" in r else ""
        out.append(f"| {r.get('run', '')} | {r['scenario']} | {r['target']} | {r['opened']} | "
                   f"{r['still_open']} | {r['failed_requests']} | "
                   f"{r['rss_before_kib']:,}{mid} → {r['rss_after_kib']:,} | "
                   f"{b / 1024 if b is not None else float('nan'):.1f} | {r['open_seconds']} |")
    return out


def flood_section(rows, meta, summary):
    fr = [r for r in rows if r["scenario"] == "flood"]
    if not fr:
        return []
    q = meta["steady_qps"]
    rate = f"{q} requests/s in all (oha -q, --latency-correction)" if q else "as fast as they go"
    f = Figures(fr)
    out = ["", "## 2. Keep-alive latency under a handshake flood (goal 4)", "",
           f"One terminator (one worker, core 0, resumption off). 8 steady keep-alive mTLS "
           f"clients (`oha -c 8`, {rate}) for {meta['flood_duration_s']} s alone, then again "
           f"for {meta['flood_duration_s']} s while 64 other clients open a new connection, "
           f"with a full mTLS handshake, per request (`oha -c 64 --disable-keepalive`). "
           f"Clients and upstream on core 1, the steady clients 5 nice levels above the rest "
           f"and the flood 5 below, so that the flood's own CPU delays them as little as "
           f"possible. Handshakes/s: "
           f"what the terminator completed in the flood window, counted by itself.", ""]
    out += table_head()
    out += [
        f.row("steady p99 under the flood, ms", lambda r: r["flood"]["p99_ms"], 2, 0.5,
              key="flood_p99_ms"),
        f.row("steady p50 under the flood, ms", lambda r: r["flood"]["p50_ms"], 2,
              key="flood_p50_ms"),
        f.row("steady p99.9 under the flood, ms", lambda r: r["flood"]["p999_ms"], 2,
              key="flood_p999_ms"),
        f.row("steady max under the flood, ms", lambda r: r["flood"]["max_ms"], 1,
              key="flood_max_ms"),
        f.row("steady p99 without the flood (baseline), ms", lambda r: r["baseline"]["p99_ms"],
              2, key="baseline_p99_ms"),
        f.row("steady req/s under the flood", lambda r: r["flood"]["rps"], 0, key="flood_rps"),
        f.row("handshakes/s the terminator served in the flood",
              lambda r: r["flood"]["handshakes_per_s"], 0, key="handshakes_per_s"),
        f.row("resumed share of those handshakes (must be 0)",
              lambda r: r["flood"]["resumed_share"], 3, ratio=False, key="resumed_share"),
        f.row("terminator CPU in the flood, % of a core", lambda r: r["flood"]["term_core_pct"],
              0, key="term_core_pct"),
        f.row("core 1 (clients + upstream) busy in the flood, %",
              lambda r: r["flood"]["cpu1"], 0, ratio=False, key="cpu1_busy_pct"),
        f.row("steady requests failed under the flood", lambda r: r["flood"]["errors"], 0,
              ratio=False, key="flood_steady_errors"),
        f.row("flood requests failed", lambda r: r["flood_clients"]["errors"], 0, ratio=False,
              key="flood_errors"),
    ]
    summary += f.summary
    out.append("")
    for t in TARGETS:
        term = f.values(lambda r: r["flood"]["term_core_pct"], t)
        cpu1 = f.values(lambda r: r["flood"]["cpu1"], t)
        if not term or not cpu1:
            continue
        tm, c1 = statistics.median(term), statistics.median(cpu1)
        if tm >= 90:
            why = ("saturated: the flood ran as fast as it served handshakes, and its "
                   "handshakes/s is its own capacity")
        elif c1 >= 95:
            why = ("NOT saturated while core 1 was: the clients and the upstream set the "
                   "flood's rate, not the terminator; its p99 was measured under a lighter "
                   "flood than it could take")
        else:
            why = "not saturated, and core 1 had room (the flood is lighter than it could take)"
        out.append(f"- {t}: its core {tm:.0f} % busy with it, core 1 {c1:.0f} % (median) — "
                   f"{why}.")
    out += ["", "Every run:", "",
            "| run | target | p50 / p99 / max ms alone | p50 / p99 / p99.9 / max ms flooded | "
            "req/s | handshakes/s (resumed) | flood clients' req/s | terminator % | core 0 / 1 % |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in fr:
        b, fl, fc = r["baseline"], r["flood"], r.get("flood_clients", {})
        out.append(f"| {r.get('run', '')} | {r['target']} | {b.get('p50_ms')} / {b.get('p99_ms')}"
                   f" / {b.get('max_ms')} | {fl.get('p50_ms')} / {fl.get('p99_ms')} / "
                   f"{fl.get('p999_ms')} / {fl.get('max_ms')} | {fl.get('rps')} | "
                   f"{fl.get('handshakes_per_s')} ({fl.get('resumed_share')}) | {fc.get('rps')} | "
                   f"{fl.get('term_core_pct')} | {fl.get('cpu0')} / {fl.get('cpu1')} |")
    return out


def many_section(rows, meta, summary):
    mr = [r for r in rows if r["scenario"] == "many"]
    if not mr:
        return []
    f = Figures(mr)
    q = meta["steady_qps"]
    out = ["", "## 3. Many idle connections on one worker (goal 5)", "",
           f"**N = {meta['many_n']:,}** idle mTLS connections ({meta['many_why']}), each after "
           f"one request (`GET /`), opened by {meta['many_procs']} client processes "
           f"(Python ssl, each from its own source address 127.0.0.2, …) and held open, in a "
           f"freshly started terminator (one worker, core 0, resumption on); then 8 busy "
           f"keep-alive clients (`oha -c 8`, "
           f"{f'{q} requests/s in all' if q else 'as fast as they go'}, "
           f"{meta['many_duration_s']} s) among them. The same 8 clients ran once before the "
           f"idle connections were opened (baseline). {meta['many_runs']} runs.", ""]
    out += table_head()
    out += [
        f.row("KiB per idle connection", lambda r: r["bytes_per_conn"] / 1024, 1,
              key="many_kib_per_conn"),
        f.row("… of which shared memory (RssShmem)",
              lambda r: r["shmem_bytes_per_conn"] / 1024, 1, ratio=False,
              key="many_shmem_kib_per_conn"),
        f.row("busy p99 among the idle ones, ms", lambda r: r["busy"]["p99_ms"], 2,
              key="many_busy_p99_ms"),
        f.row("busy p50 among the idle ones, ms", lambda r: r["busy"]["p50_ms"], 2,
              key="many_busy_p50_ms"),
        f.row("busy max among the idle ones, ms", lambda r: r["busy"]["max_ms"], 1,
              key="many_busy_max_ms"),
        f.row("busy p99 before the idle ones were opened, ms",
              lambda r: r["busy_baseline"]["p99_ms"], 2, key="many_baseline_p99_ms"),
        f.row("terminator CPU while busy, % of a core", lambda r: r["busy"]["term_core_pct"],
              1, key="many_busy_core_pct"),
        f.row("seconds to open and handshake the N (client side)",
              lambda r: r["open_seconds"], 1, ratio=False, key="many_open_s"),
        f.row("connections failed to open", lambda r: r["failed"], 0, ratio=False,
              key="many_failed"),
        f.row("still open after the busy clients", lambda r: r["still_open_after_busy"], 0,
              ratio=False, key="many_still_open"),
    ]
    summary += f.summary
    out += ["", "Every run:", "",
            "| run | target | opened (failed) | still open | RSS before → after KiB | KiB/conn | "
            "open s | busy p99 ms (baseline) | busy req/s | busy errors |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in mr:
        b, bb = r.get("busy", {}), r.get("busy_baseline", {})
        out.append(f"| {r.get('run', '')} | {r['target']} | {r['opened']:,} ({r['failed']}) | "
                   f"{r['still_open']:,} | {r['rss_before_kib']:,} → {r['rss_after_kib']:,} | "
                   f"{r['bytes_per_conn'] / 1024:.1f} | {r['open_seconds']} | {b.get('p99_ms')} "
                   f"({bb.get('p99_ms')}) | {b.get('rps')} | {b.get('errors')} |")
    errs = sorted({r["first_error"] for r in mr if r.get("first_error")})
    if errs:
        out += ["", "First client errors: " + "; ".join(errs)]
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--results", required=True)
    a = ap.parse_args()
    meta = json.load(open(os.path.join(a.work, "meta.json")))
    path = os.path.join(a.work, "results.jsonl")
    rows = [json.loads(line) for line in open(path) if line.strip()] if os.path.exists(path) else []
    notes_path = os.path.join(a.work, "notes.txt")
    notes = [n.strip() for n in open(notes_path)] if os.path.exists(notes_path) else []

    v = meta["versions"]
    out = [f"# Crowds: certgate vs nginx, idle memory, handshake flood, many connections",
           "",
           f"{meta['date']} (started {meta['started']}), certgate {meta['commit']} "
           f"({v['certgate']}, {meta.get('certgate_bin')}, sha256 {meta.get('certgate_sha256')}…), nginx {v['nginx']}, {v['oha']}, Python {v['python']}; "
           f"{meta['nproc']} cores ({meta['cpu']}), kernel {meta['kernel']}, load average "
           f"{meta['loadavg_start']} → {meta['loadavg_end']}, open-file limit {meta['nofile']}.",
           "",
           f"Scenarios: {meta['scenarios']}. Runs: {meta['runs']} (idle, flood), "
           f"{meta['many_runs']} (many), targets in alternating order (certgate nginx, nginx "
           f"certgate, …). Each figure: median over the runs (lowest–highest); ratio: certgate "
           f"÷ nginx within each run, median (range). Below 1: certgate uses less."]
    summary = []
    out += idle_section(rows, meta, summary)
    out += flood_section(rows, meta, summary)
    out += many_section(rows, meta, summary)
    for r in rows:
        if "still_open" in r and r["still_open"] < r["opened"]:
            notes.append(f"{r['scenario']} run {r.get('run')}: {r['target']} closed "
                         f"{r['opened'] - r['still_open']} of {r['opened']} idle connections "
                         f"before the measurement; that figure is not comparable.")
        if r.get("failed"):
            notes.append(f"{r['scenario']} run {r.get('run')}: {r['failed']} of {r['target']}'s "
                         f"connections failed to open ({r.get('first_error') or 'no error kept'})")
    notes = [n for n in notes if n]
    if notes:
        out += ["", "## Notes", ""] + [f"- {n}" for n in notes]

    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d-%H%M")
    base = os.path.join(a.results, f"{stamp}-crowd-{meta['commit']}")
    with open(base + ".md", "w") as f:
        f.write("\n".join(out) + "\n")
    with open(base + ".jsonl", "w") as f:
        f.write(json.dumps({"kind": "meta", **meta}) + "\n")
        for r in rows + summary:
            f.write(json.dumps(r) + "\n")
    print("\n".join(out))
    print(f"\nwrote {base}.md and .jsonl")


if __name__ == "__main__":
    main()
