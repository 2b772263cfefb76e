"""Turn work/results.jsonl + work/meta.json into results/latest.md, results/latest.svg and a
dated copy results/<date>-<commit>.md (and .svg).

    python3 report.py --work loadtest/work --results loadtest/results
    python3 report.py --work loadtest/work --results loadtest/results --only replicas

`--only replicas` (run.sh with ONLY=replicas) writes only the two-replica section, to
results/<date>-<HHMM>-replicas-<commit>.md (and .jsonl), and leaves latest.* alone.
"""

import argparse
import html
import math
import json
import os
import shutil

TARGETS = ["certgate", "nginx", "haproxy"]
COLORS = {"certgate": "#d9480f", "nginx": "#2b8a3e", "haproxy": "#1864ab"}
SCENARIOS = [
    ("ka-tls", "keep-alive TLS, no client cert (wrk -c32)"),
    ("ka-mtls", "keep-alive mTLS (oha -c32 --cert)"),
    ("ka-mtls-ops", "certgate only: ka-mtls with the JSON access log (to a file) and /metrics "
                    "scraped every second"),
    ("new-resume", "new connection per request, resumed session, client cert"),
    ("new-full", "new connection per request, full handshake, no client cert (oha -c32)"),
    ("new-full-mtls", "new connection per request, full handshake, client cert (oha -c32)"),
]


def fmt(v, digits=1):
    if v is None:
        return "–"
    if isinstance(v, float) and v >= 1000:
        return f"{v:,.0f}"
    return f"{v:.{digits}f}"


def fmt_int(v):
    return "–" if v is None else f"{v:,}"


def ratio(a, b):
    return f"{a / b:.2f}×" if a and b else "–"


def load(work):
    rows = []
    with open(os.path.join(work, "results.jsonl")) as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
    meta = json.load(open(os.path.join(work, "meta.json")))
    notes_path = os.path.join(work, "notes.txt")
    notes = [l.strip() for l in open(notes_path)] if os.path.exists(notes_path) else []
    checks = [r for r in rows if r.get("kind") == "ops_check"]
    shares = [r for r in rows if r.get("kind") == "replica_share"]
    rows = [r for r in rows if r.get("kind") not in ("ops_check", "replica_share")]
    notes += [f"ka-mtls-ops: {c['access_lines']} access-log lines for {c['requests_2xx']} "
              f"completed requests ({c['aborted_at_deadline']} aborted by oha at the deadline), "
              f"statuses {c['access_status']}; /metrics scraped {c['scrapes_ok']} times "
              f"({c['scrapes_failed']} failed)" for c in checks]
    # The resumed shares go with their scenario's bench line.
    for sh in shares:
        for r in rows:
            if r["scenario"] == sh["scenario"]:
                r["replicas"] = sh["replicas"]
                r["resumed_share"] = sh["resumed_share"]
    return rows, meta, [n for n in notes if n]


REPLICA_SCENARIOS = [
    ("replicas-shared", "one ticket_keys file shared by both replicas"),
    ("replicas-separate", "a ticket_keys file each (a ticket resumes only where it was issued)"),
    ("replicas-haproxy", "replicas-shared behind HAProxy (mode tcp, send-proxy-v2, on core 1); "
                         "listeners with proxy_protocol = \"v2\""),
]


def replicas_section(rows, meta):
    """Two certgate processes sharing one port: throughput, CPU and resumed shares."""
    by = {r["scenario"]: r for r in rows if r["target"] == "certgate"}
    if not any(s in by for s, _ in REPLICA_SCENARIOS):
        return []
    out = ["", "## Two replicas behind one port", "",
           "Two certgate processes, `workers = 1` each, replica A pinned to core 0 and B to core "
           "1 (`taskset`), both bound to one port (SO_REUSEPORT: the kernel spreads the "
           "connections), each with its own admin port. oha opens a new connection per request "
           "(`--disable-keepalive -c 32`, client certificate) and resumes sessions; the resumed "
           "share is read from each replica's own `certgate_handshakes_total{resumed}` before "
           "and after. CPU µs/req is both replicas' CPU time over the requests. On this 2-core "
           "machine B shares core 1 with oha and the upstream, so req/s is bounded by that core; "
           "compare the resumed shares and CPU per request.", "",
           "| variant | req/s | p50 ms | CPU µs/req (A+B) | handshakes A / B | "
           "resumed A | resumed B | resumed overall | errors |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    pct = lambda v: "–" if v is None else f"{100 * v:.0f} %"
    for s, _ in REPLICA_SCENARIOS:
        r = by.get(s)
        if not r:
            continue
        reps = r.get("replicas") or []
        hs = " / ".join(fmt_int(x["handshakes"]) for x in reps) or "–"
        shares = [pct(x["share"]) for x in reps] + ["–", "–"]
        out.append(f"| `{s}` | {fmt(r['rps'], 0)} | {fmt(r['p50_ms'], 2)} | "
                   f"{fmt(r['cpu_us_per_req'])} | {hs} | {shares[0]} | {shares[1]} | "
                   f"**{pct(r.get('resumed_share'))}** | {r['errors']} |")
    out += ["", "Variants:", ""] + [f"- `{s}`: {d}" for s, d in REPLICA_SCENARIOS]
    return out


def markdown(rows, meta, notes):
    by = {(r["target"], r["scenario"]): r for r in rows}
    v = meta["versions"]
    out = [
        "# certgate vs nginx vs HAProxy — side-by-side load test",
        "",
        f"- date: {meta['date']}, certgate commit `{meta['commit']}` ({v['certgate']})",
        f"- machine: {meta['nproc']} CPUs, {meta['cpu']}, kernel {meta['kernel']}; "
        f"load average {meta['loadavg_start']} at start, {meta['loadavg_end']} at end",
        f"- versions: nginx {v['nginx']}, HAProxy {v['haproxy']}, wrk {v['wrk']}, "
        f"oha {v['oha']}, {v['openssl']}",
        f"- {meta['duration_s']} s per scenario and target; each terminator alone on core 0 "
        "with one worker; load generator and upstream (nginx `return 200`) on core 1",
        "",
        "**Compare ratios, not absolute numbers**: the machine is shared and has 2 cores. "
        "*CPU µs/req* is the terminator's own CPU time (utime+stime of all its processes) "
        "divided by completed requests; it stays fair when the load generator, not the "
        "terminator, is the bottleneck (see *core %*: 100 % means the terminator saturated "
        "its core). Ratios > 1 mean certgate spends more CPU per request than the peer. "
        "*errors* leaves out the requests oha aborts because they are in flight when the "
        "duration ends; *upstream conns opened* counts the connections the upstream accepted "
        "during the scenario (stub_status).",
        "",
        "## CPU per request",
        "",
        "| scenario | certgate µs/req | nginx µs/req | haproxy µs/req | certgate ÷ nginx | "
        "certgate ÷ haproxy |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for s, _ in SCENARIOS:
        c = [by.get((t, s), {}).get("cpu_us_per_req") for t in TARGETS]
        if not any(c):
            continue
        out.append(f"| {s} | {fmt(c[0])} | {fmt(c[1])} | {fmt(c[2])} | "
                   f"**{ratio(c[0], c[1])}** | **{ratio(c[0], c[2])}** |")
    cg, ops = (by.get(("certgate", s), {}).get("cpu_us_per_req") for s in ("ka-mtls", "ka-mtls-ops"))
    if cg and ops:
        out += ["", f"Operations overhead, certgate ka-mtls-ops ÷ ka-mtls: **{ops / cg:.2f}×** "
                "(one run each; `loadtest/ab.sh --ops` interleaves several, quote that)."]
    out += ["", "## All figures", "",
            "| scenario | target | req/s | p50 ms | p99 ms | CPU µs/req | core % | errors | "
            "upstream conns opened |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for s, desc in SCENARIOS:
        for t in TARGETS:
            r = by.get((t, s))
            if not r:
                continue
            err = r["errors"]
            if r.get("error_kinds"):
                err = f"{err} ({'; '.join(f'{k}: {n}' for k, n in r['error_kinds'].items())})"
            out.append(f"| {s} | {t} | {fmt(r['rps'], 0)} | {fmt(r['p50_ms'], 2)} | "
                       f"{fmt(r['p99_ms'], 2)} | {fmt(r['cpu_us_per_req'])} | "
                       f"{fmt(r['cpu_pct'], 0)} | {err} | {fmt_int(r.get('upstream_conns'))} |")
    out += ["", "Scenarios:", ""] + [f"- `{s}`: {d}" for s, d in SCENARIOS]

    for scenario, what in (
        ("idle-mtls", "after one request each (the state a client's pooled connection is in)"),
        ("idle-mtls-handshake-only", "handshake done, no request"),
    ):
        idle = {r["target"]: r for r in rows if r["scenario"] == scenario}
        if not idle:
            continue
        out += ["", f"## Memory per idle mTLS connection: {what}", "",
                f"{meta['idle_conns']} TLS connections presenting a client certificate, {what}; "
                "growth of the terminator's summed VmRSS ÷ connections, each target measured "
                "in a freshly started process.", "",
                "| target | opened | still open at measurement | RSS before → after (KiB) | "
                "KiB/conn | certgate ÷ target |",
                "|---|---:|---:|---:|---:|---:|"]
        cg = (idle.get("certgate") or {}).get("bytes_per_conn")
        for t in TARGETS:
            r = idle.get(t)
            if not r:
                continue
            b = r["bytes_per_conn"]
            out.append(f"| {t} | {r['opened']} (failed {r['failed']}) | {r['still_open']} | "
                       f"{r['rss_before_kib']:,} → {r['rss_after_kib']:,} | "
                       f"{fmt(b / 1024 if b is not None else None)} | "
                       f"{ratio(cg, b) if t != 'certgate' else ''} |")
    out += replicas_section(rows, meta)
    notes = notes + [f"{r['target']} {r['scenario']}: {r['note']}" for r in rows if r.get("note")]
    if notes:
        out += ["", "## Notes from this run", ""] + [f"- {n}" for n in notes]
    out += ["", "![CPU µs per request](latest.svg)", ""]
    return "\n".join(out)


def svg(rows):
    """Grouped bars: CPU µs/request per scenario, one bar per target. Written by hand."""
    by = {(r["target"], r["scenario"]): r.get("cpu_us_per_req") for r in rows}
    groups = [s for s, _ in SCENARIOS if any(by.get((t, s)) for t in TARGETS)]
    W, H, left, right, top, bottom = 820, 450, 70, 20, 50, 100
    pw, ph = W - left - right, H - top - bottom
    vmax = max([v for v in by.values() if v] or [1])
    # A "nice" grid step (1, 2, 2.5 or 5 times a power of ten) giving at most ~5 lines.
    raw = vmax / 5
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    ymax = step * (int(vmax / step) + 1)
    y = lambda v: top + ph - v / ymax * ph
    e = []
    e.append(f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
             f'viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">')
    e.append(f'<rect width="{W}" height="{H}" fill="white"/>')
    e.append(f'<text x="{W / 2}" y="22" text-anchor="middle" font-size="15" font-weight="bold">'
             'Terminator CPU time per request (µs, lower is better)</text>')
    v = 0.0
    while v <= ymax + 1e-9:
        e.append(f'<line x1="{left}" x2="{W - right}" y1="{y(v):.1f}" y2="{y(v):.1f}" '
                 'stroke="#ddd"/>')
        e.append(f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v:g}</text>')
        v += step
    e.append(f'<line x1="{left}" x2="{left}" y1="{top}" y2="{top + ph}" stroke="#333"/>')
    e.append(f'<line x1="{left}" x2="{W - right}" y1="{top + ph}" y2="{top + ph}" stroke="#333"/>')
    gw = pw / max(len(groups), 1)
    bw = gw * 0.75 / len(TARGETS)
    for gi, s in enumerate(groups):
        gx = left + gi * gw + gw * 0.125
        for ti, t in enumerate(TARGETS):
            val = by.get((t, s))
            if not val:
                continue
            x = gx + ti * bw
            e.append(f'<rect x="{x:.1f}" y="{y(val):.1f}" width="{bw - 2:.1f}" '
                     f'height="{top + ph - y(val):.1f}" fill="{COLORS[t]}">'
                     f'<title>{t} {s}: {val:.1f} µs</title></rect>')
            e.append(f'<text x="{x + bw / 2 - 1:.1f}" y="{y(val) - 4:.1f}" text-anchor="middle" '
                     f'font-size="10">{val:.0f}</text>')
        e.append(f'<text x="{left + gi * gw + gw / 2:.1f}" y="{top + ph + 18}" '
                 f'text-anchor="middle">{html.escape(s)}</text>')
        # certgate's ratio to each peer, so the small keep-alive bars stay readable.
        cg = by.get(("certgate", s))
        for li, t in enumerate(TARGETS[1:]):
            if cg and by.get((t, s)):
                e.append(f'<text x="{left + gi * gw + gw / 2:.1f}" y="{top + ph + 33 + li * 13}" '
                         f'text-anchor="middle" font-size="10" fill="#555">'
                         f'certgate÷{t} {cg / by[(t, s)]:.2f}</text>')
    lx = left + 10
    for t in TARGETS:
        e.append(f'<rect x="{lx}" y="{H - 28}" width="12" height="12" fill="{COLORS[t]}"/>')
        e.append(f'<text x="{lx + 17}" y="{H - 18}">{t}</text>')
        lx += 110
    e.append("</svg>")
    return "\n".join(e) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--results", required=True)
    ap.add_argument("--only", choices=["replicas"])
    a = ap.parse_args()
    rows, meta, notes = load(a.work)
    os.makedirs(a.results, exist_ok=True)
    if a.only == "replicas":
        v = meta["versions"]
        md = "\n".join([
            "# certgate: two replicas behind one port",
            "",
            f"- date: {meta['date']}, certgate commit `{meta['commit']}` ({v['certgate']})",
            f"- machine: {meta['nproc']} CPUs, {meta['cpu']}, kernel {meta['kernel']}; "
            f"load average {meta['loadavg_start']} at start, {meta['loadavg_end']} at end",
            f"- {v['oha']}, HAProxy {v['haproxy']}; {meta['duration_s']} s per variant",
        ] + replicas_section(rows, meta)
            + (["", "## Notes from this run", ""] + [f"- {n}" for n in notes] if notes else [])
            + [""])
        stamp = f"{meta['date'][:10]}-{meta['date'][11:13]}{meta['date'][14:16]}-replicas-{meta['commit']}"
        with open(os.path.join(a.results, f"{stamp}.md"), "w") as f:
            f.write(md)
        shutil.copy(os.path.join(a.work, "results.jsonl"),
                    os.path.join(a.results, f"{stamp}.jsonl"))
        print(md)
        return
    md = os.path.join(a.results, "latest.md")
    sv = os.path.join(a.results, "latest.svg")
    with open(md, "w") as f:
        f.write(markdown(rows, meta, notes))
    with open(sv, "w") as f:
        f.write(svg(rows))
    shutil.copy(os.path.join(a.work, "results.jsonl"), os.path.join(a.results, "latest.jsonl"))
    stamp = f"{meta['date'][:10]}-{meta['commit']}"
    # The dated copy points at its own chart, so it still renders after the next run.
    with open(os.path.join(a.results, f"{stamp}.md"), "w") as f:
        f.write(markdown(rows, meta, notes).replace("(latest.svg)", f"({stamp}.svg)"))
    shutil.copy(sv, os.path.join(a.results, f"{stamp}.svg"))
    print(open(md).read())


if __name__ == "__main__":
    main()
