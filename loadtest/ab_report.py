"""Turn ab.sh's work/ab/results.jsonl + meta.json into a dated report in results/.

    python3 ab_report.py --work loadtest/work/ab --results loadtest/results

Per scenario and variant: the median CPU µs per request over the runs, with the range (lowest
to highest) beside it; the ratio of the medians (second variant ÷ first); and the ratio within
each pair (the two variants measured back to back in the same run), its median and range.
Writes results/<date>-<HHMM>-ab-<A>-<B>.md (or <date>-<HHMM>-ops-<label>.md in --ops mode) and a .jsonl copy
of every figure next to it.
"""

import argparse
import json
import os
import shutil
import statistics


def fmt(v, digits=1):
    if v is None:
        return "–"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.{digits}f}"


def fmt_int(v):
    return "–" if v is None else f"{v:,}"


def med_range(vals, digits=1, unit=""):
    vals = [v for v in vals if v is not None]
    if not vals:
        return "–"
    return (f"{fmt(statistics.median(vals), digits)}{unit} "
            f"({fmt(min(vals), digits)}–{fmt(max(vals), digits)})")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--results", required=True)
    a = ap.parse_args()
    meta = json.load(open(os.path.join(a.work, "meta.json")))
    rows, checks = [], []
    for line in open(os.path.join(a.work, "results.jsonl")):
        if line.strip():
            r = json.loads(line)
            (checks if r.get("kind") == "ops_check" else rows).append(r)
    notes_path = os.path.join(a.work, "notes.txt")
    notes = [l.strip() for l in open(notes_path) if l.strip()] if os.path.exists(notes_path) else []

    A, B = meta["order"]
    la, lb = meta["variants"][A]["label"], meta["variants"][B]["label"]
    ops = meta["mode"] == "ops"
    scenarios = []
    for r in rows:
        if r["scenario"] not in scenarios:
            scenarios.append(r["scenario"])
    by = {}
    for r in rows:
        by.setdefault((r["scenario"], r["target"]), {})[r["run"]] = r

    def name(v, s):
        return f"{s}-ops" if ops and v == "ops" else (s if ops else v)

    if ops:
        title = f"certgate operations overhead: ka-mtls-ops ÷ ka-mtls (binary `{la}`)"
    else:
        title = f"certgate A/B keep-alive: `{la}` ({A}) vs `{lb}` ({B})"
    out = [
        f"# {title}", "",
        f"- date: {meta['date']} (started {meta['started']}); mode `{meta['mode']}`",
        f"- {A}: `{meta['variants'][A]['bin']}` (label `{la}`, sha256 {meta['variants'][A]['sha256']}…)",
        f"- {B}: `{meta['variants'][B]['bin']}` (label `{lb}`, sha256 {meta['variants'][B]['sha256']}…)",
        f"- machine: {meta['nproc']} CPUs, {meta['cpu']}, kernel {meta['kernel']}; load average "
        f"{meta['loadavg_start']} at start, {meta['loadavg_end']} at end",
        f"- versions: wrk {meta['versions']['wrk']}, oha {meta['versions']['oha']}, "
        f"upstream nginx {meta['versions']['nginx']}",
        f"- {meta['runs']} runs × {meta['duration_s']} s per variant and scenario, interleaved: "
        f"each run measures both variants back to back (order {A}, {B} in odd runs, {B}, {A} "
        f"in even runs), after waiting for a 1-minute load average below {meta['load_max']} "
        f"(at most {meta['load_wait_s']} s). certgate with one worker alone on core 0; the "
        "upstream (nginx) and the load generator (32 connections) on core 1"
        + (f"; all of them at niceness {meta['nice']}." if meta.get("nice") else "."),
    ]
    if ops:
        out.append("- `ops`: the same binary and config plus `[log] access = \"json\"` (stdout "
                   "to a file) and `[admin] bind`, with `/metrics` fetched by curl every "
                   "second during the run; `plain`: neither.")
    out += [
        "",
        "CPU µs/req = certgate's utime+stime (procstat.py) ÷ requests completed with a 2xx "
        "status. Figures are *median (lowest–highest)* over the runs. *Pair ratio*: "
        f"{B} ÷ {A} within each run.",
        "",
        "## CPU per request",
        "",
        f"| scenario | {name(A, 'ka-mtls') if ops else A} µs/req | "
        f"{name(B, 'ka-mtls') if ops else B} µs/req | ratio of medians | pair ratio median (range) "
        f"| req/s {A} | req/s {B} | core % {A} | core % {B} |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    summary = []
    for s in scenarios:
        ra, rb = by.get((s, A), {}), by.get((s, B), {})
        ca = [r["cpu_us_per_req"] for r in ra.values()]
        cb = [r["cpu_us_per_req"] for r in rb.values()]
        pairs = [rb[k]["cpu_us_per_req"] / ra[k]["cpu_us_per_req"] for k in sorted(ra)
                 if k in rb and ra[k]["cpu_us_per_req"] and rb[k]["cpu_us_per_req"]]
        ma = statistics.median([c for c in ca if c]) if any(ca) else None
        mb = statistics.median([c for c in cb if c]) if any(cb) else None
        rom = mb / ma if ma and mb else None
        out.append(
            f"| {s} | {med_range(ca)} | {med_range(cb)} | **{fmt(rom, 3)}×** | "
            f"{med_range(pairs, 3, '×')} | {med_range([r['rps'] for r in ra.values()], 0)} | "
            f"{med_range([r['rps'] for r in rb.values()], 0)} | "
            f"{med_range([r['cpu_pct'] for r in ra.values()], 0)} | "
            f"{med_range([r['cpu_pct'] for r in rb.values()], 0)} |")
        summary.append({"kind": "summary", "scenario": s, "a": A, "b": B,
                        "a_median_us": ma, "b_median_us": mb, "ratio_of_medians": rom,
                        "pair_ratios": pairs,
                        "pair_ratio_median": statistics.median(pairs) if pairs else None})

    out += ["", "## Every run", "",
            "| run | scenario | variant | load avg (waited s) | req/s | p50 ms | p99 ms | "
            "CPU µs/req | core % | errors | upstream conns opened |",
            "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        err = r["errors"]
        if r.get("error_kinds"):
            err = f"{err} ({'; '.join(f'{k}: {n}' for k, n in r['error_kinds'].items())})"
        out.append(
            f"| {r['run']} | {r['scenario']} | {r['target']} | {r['load1']} ({r['load_waited_s']}) | "
            f"{fmt(r['rps'], 0)} | {fmt(r['p50_ms'], 2)} | {fmt(r['p99_ms'], 2)} | "
            f"{fmt(r['cpu_us_per_req'])} | {fmt(r['cpu_pct'], 0)} | {err} | "
            f"{'–' if r.get('upstream_conns') is None else r['upstream_conns']} |")

    if checks:
        out += ["", "## Did the operations features work? (each `ops` run)", "",
                "Access-log lines written during the run vs requests oha completed (oha's "
                "requests aborted at the deadline may also have been logged); statuses in "
                "those lines; successful `/metrics` scrapes; `certgate_requests_total` vs all "
                "lines in the access log since start.", "",
                "| run | requests (2xx) | access lines | aborted by oha | line statuses | "
                "scrapes ok / failed | certgate_requests_total | access lines in all |",
                "|---:|---:|---:|---:|---|---:|---:|---:|"]
        for c in checks:
            out.append(
                f"| {c.get('run', '–')} | {c['requests_2xx']:,} | {c['access_lines']:,} | "
                f"{c['aborted_at_deadline']} | {c['access_status']} | {c['scrapes_ok']} / "
                f"{c['scrapes_failed']} | {fmt_int(c['metrics_requests_total'])} | "
                f"{c['access_lines_total']:,} |")
    if notes:
        out += ["", "## Notes from this run", ""] + [f"- {n}" for n in notes]
    out.append("")

    stamp = meta["date"][:10] + "-" + meta["date"][11:16].replace(":", "")  # 2026-11-28-1805
    stem = f"{stamp}-ops-{la}" if ops else f"{stamp}-ab-{la}-{lb}"
    os.makedirs(a.results, exist_ok=True)
    md = os.path.join(a.results, stem + ".md")
    with open(md, "w") as f:
        f.write("\n".join(out))
    with open(os.path.join(a.results, stem + ".jsonl"), "w") as f:
        f.write(json.dumps({"kind": "meta", **meta}) + "\n")
        for r in rows + checks + summary:
            f.write(json.dumps(r) + "\n")
    shutil.copy(md, os.path.join(a.work, "report.md"))
    print("\n".join(out))
    print(f"written: {md}")


if __name__ == "__main__":
    main()
