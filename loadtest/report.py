"""Turn work/results.jsonl + work/meta.json into results/latest.md, results/latest.svg and a
dated copy results/<date>-<HHMM>-<commit>.md (and .svg, and .jsonl: every result line, so the
report can be computed again).

    python3 report.py --work loadtest/work --results loadtest/results
    python3 report.py --work loadtest/work --results loadtest/results --only replicas

run.sh measures every scenario RUNS times, each target once per run. For each scenario and
target the report gives the median CPU per request (per GiB for bulk) with its range over the
runs; certgate's ratio to a peer is the median of the per-run ratios (certgate's figure of run r
over the peer's of run r), with their range, so a slow drift of the machine cancels within a
run. Where issue 12 sets a goal, the ratio is shown beside it. The resumed share of every
target is shown beside each handshake figure (read from the target's own counters).

`--only replicas` (run.sh with ONLY=replicas) writes only the two-replica section, to
results/<date>-<HHMM>-replicas-<commit>.md (and .jsonl), and leaves latest.* alone.
"""

import argparse
import html
import json
import math
import os
import shutil
import statistics

TARGETS = ["certgate", "nginx", "haproxy", "envoy"]
PLAIN = "nginx-plain"
PEERS = ["nginx", "haproxy", "envoy"]
COLORS = {"certgate": "#d9480f", "nginx": "#2b8a3e", "haproxy": "#1864ab", "envoy": "#7048e8",
          PLAIN: "#adb5bd", "certgate-ops": "#f08c00"}
# (scenario, description, unit). Bulk figures are CPU ms per GiB relayed, the rest µs/request.
SCENARIOS = [
    ("ka-tls", "keep-alive TLS, no client cert, 2-byte response (wrk -c32)", "µs/req"),
    ("ka-mtls", "keep-alive mTLS, certificate header upstream, 2-byte response (oha -c32 --cert)",
     "µs/req"),
    ("ka-mtls-64k", "ka-mtls with 64 KiB chunked responses (/c/65536)", "µs/req"),
    ("ka-mtls-upload", "ka-mtls with 64 KiB uploads (POST /u; the upstream reads them whole)",
     "µs/req"),
    ("ka-mtls-ops", "certgate only: ka-mtls with the JSON access log (to a file) and /metrics "
                    "scraped every second (a second certgate process, certgate-ops)", "µs/req"),
    ("new-resume", "new connection per request, resumed session, client cert (oha -c32)",
     "µs/req"),
    ("new-full", "new connection per request, full handshake, no client cert (oha -c32)",
     "µs/req"),
    ("new-full-mtls", "new connection per request, full handshake, client cert (oha -c32)",
     "µs/req"),
    ("bulk-down", "128 MiB downloads, several over one keep-alive mTLS connection (curl)",
     "ms/GiB"),
    ("bulk-up", "128 MiB uploads, several over one keep-alive mTLS connection (curl)", "ms/GiB"),
]
KA = {"ka-tls", "ka-mtls", "ka-mtls-64k", "ka-mtls-upload"}
# Issue 12's goals: certgate ÷ REFERENCE ≤ LIMIT ("best" = the lowest of nginx, HAProxy, Envoy
# in the same run).
GOALS = {
    "ka-tls": (PLAIN, 0.9, "goal 2: keep-alive TLS ≤ 0.9× nginx as a plain-HTTP proxy"),
    "ka-mtls": (PLAIN, 1.0, "goal 2: keep-alive mTLS + header ≤ 1.0× nginx plain HTTP"),
    "bulk-down": ("best", 0.8, "goal 3: CPU per GiB ≤ 0.8× the best peer"),
    "bulk-up": ("best", 0.8, "goal 3: CPU per GiB ≤ 0.8× the best peer"),
    "new-resume": ("nginx", 0.3, "first round: resumed handshakes ≤ 0.3× nginx"),
    "new-full": ("nginx", 0.45, "first round: full handshakes ≤ 0.45× nginx"),
    "new-full-mtls": ("nginx", 0.35, "first round: full mTLS handshakes ≤ 0.35× nginx"),
}
IDLE_GOAL = 0.5     # goal 1: idle connection after a request, certgate ÷ nginx
RESUMED_MIN = 0.9   # below this share of resumed handshakes, new-resume is not what it says


def fmt(v, digits=1):
    if v is None:
        return "–"
    if isinstance(v, float) and v >= 1000:
        return f"{v:,.0f}"
    return f"{v:.{digits}f}"


def fmt_int(v):
    return "–" if v is None else f"{v:,}"


def pct(v):
    return "–" if v is None else f"{100 * v:.0f} %"


def ratio(a, b):
    return f"{a / b:.2f}×" if a and b else "–"


def value(r):
    """The figure a row stands for: CPU ms per GiB (bulk) or CPU µs per request."""
    return r.get("cpu_ms_per_gib") if r["scenario"].startswith("bulk-") else r.get("cpu_us_per_req")


class Stat:
    """Median and range of a list of numbers (None when empty)."""

    def __init__(self, values):
        self.values = [v for v in values if v is not None]
        self.n = len(self.values)
        self.median = statistics.median(self.values) if self.values else None
        self.lo = min(self.values) if self.values else None
        self.hi = max(self.values) if self.values else None

    def text(self, digits=1, suffix=""):
        if self.median is None:
            return "–"
        if self.n == 1:
            return f"{fmt(self.median, digits)}{suffix}"
        return (f"{fmt(self.median, digits)}{suffix} "
                f"({fmt(self.lo, digits)}–{fmt(self.hi, digits)})")


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
    notes += [f"ka-mtls-ops run {c.get('run', '?')}: {c['access_lines']} access-log lines for "
              f"{c['requests_2xx']} completed requests ({c['aborted_at_deadline']} aborted by oha "
              f"at the deadline), statuses {c['access_status']}; /metrics scraped "
              f"{c['scrapes_ok']} times ({c['scrapes_failed']} failed)" for c in checks]
    # The resumed shares go with their scenario's bench line.
    for sh in shares:
        for r in rows:
            if r["scenario"] == sh["scenario"]:
                r["replicas"] = sh["replicas"]
                r["resumed_share"] = sh["resumed_share"]
    return rows, meta, [n for n in notes if n]


class Runs:
    """The measured rows of the interleaved scenarios, by scenario, target and run."""

    def __init__(self, rows):
        self.by = {}
        for r in rows:
            if r["scenario"].startswith(("idle", "replicas-")) or "cpu_us_total" not in r:
                continue
            self.by.setdefault(r["scenario"], {}).setdefault(r["target"], {})[r.get("run", 1)] = r

    def scenarios(self):
        return [s for s, _, _ in SCENARIOS if s in self.by]

    def targets(self, s):
        order = TARGETS + [PLAIN, "certgate-ops"]
        return [t for t in order if t in self.by.get(s, {})]

    def rows(self, s, t):
        return self.by.get(s, {}).get(t, {})

    def stat(self, s, t, key=None):
        rows = self.rows(s, t).values()
        return Stat([value(r) if key is None else r.get(key) for r in rows])

    def ratios(self, s, ref, num=("certgate", None)):
        """Per-run ratios NUM ÷ REF. num = (target, scenario or None for s); ref a target,
        "best" (the lowest peer of that run) or ("certgate", "ka-mtls") style pairs."""
        nt, ns = num
        mine = self.rows(ns or s, nt)
        out = []
        for run, r in sorted(mine.items()):
            a = value(r)
            if ref == "best":
                peers = [value(self.rows(s, p)[run]) for p in PEERS if run in self.rows(s, p)]
                peers = [v for v in peers if v]
                b = min(peers) if peers else None
            elif isinstance(ref, tuple):
                other = self.rows(ref[1], ref[0]).get(run)
                b = value(other) if other else None
            else:
                other = self.rows(s, ref).get(run)
                b = value(other) if other else None
            if a and b:
                out.append(a / b)
        return Stat(out)

    def best_peer(self, s):
        meds = [(self.stat(s, p).median, p) for p in PEERS if self.rows(s, p)]
        meds = [m for m in meds if m[0]]
        return min(meds)[1] if meds else None


def header(meta, title):
    v = meta["versions"]
    out = [
        f"# {title}",
        "",
        f"- date: {meta['date']}, certgate commit `{meta['commit']}` ({v['certgate']})",
        f"- machine: {meta['nproc']} CPUs, {meta['cpu']}, kernel {meta['kernel']}; "
        f"load average {meta['loadavg_start']} at start, {meta['loadavg_end']} at end",
        f"- versions: nginx {v['nginx']}, HAProxy {v['haproxy']}, Envoy {v.get('envoy', '–')}, "
        f"wrk {v['wrk']}, oha {v['oha']} (pinned: {meta.get('oha_pinned', '–')}), "
        f"curl {v.get('curl', '–')}, {v['openssl']}",
    ]
    if meta.get("oha_pinned") and v["oha"] != meta["oha_pinned"]:
        out += ["", f"> **WARNING: oha {v['oha']} is installed, but the figures are pinned to "
                f"oha {meta['oha_pinned']}.** The load generator shapes the terminators' CPU per "
                "request (batching, session resumption): these figures do not compare with "
                f"earlier ones. `cargo install oha --version {meta['oha_pinned']} --locked "
                "--force`."]
    return out


def markdown(rows, meta, notes):
    runs = Runs(rows)
    head = header(meta, "certgate vs nginx, HAProxy and Envoy — side-by-side load test")
    out = [
        f"- {meta.get('runs', 1)} runs × {meta['duration_s']} s per scenario and target "
        f"(bulk: {meta.get('bulk_n', '–')} transfers of "
        f"{int(meta.get('bulk_bytes', 0)) >> 20} MiB per run); in each run the targets of a "
        "scenario are measured back to back, their order rotating from run to run; each "
        "terminator alone on core 0 with one worker; load generator and upstream (nginx) on "
        "core 1",
        "",
        "**Compare ratios, not absolute numbers**: the machine is shared and has 2 cores. "
        "*CPU* is the terminator's own CPU time (utime+stime of all its processes, from /proc) "
        "divided by the requests completed with a 2xx (µs/req), or by the GiB relayed (bulk, "
        "ms/GiB). Each cell is the **median of the runs (lowest–highest)**; each ratio is the "
        "**median of the per-run ratios (lowest–highest)**, certgate's figure of a run over the "
        "peer's of the same run. Above 1 means certgate spends more.",
    ]
    warnings = []
    # Goals.
    goal_rows = []
    for s in runs.scenarios():
        if s not in GOALS:
            continue
        ref, limit, what = GOALS[s]
        st = runs.ratios(s, ref)
        if st.median is None:
            continue
        name = "the best peer" if ref == "best" else ref
        if ref == "best":
            bp = runs.best_peer(s)
            name = f"the best peer of each run (by median: {bp})"
        met = "**met**" if st.median <= limit else "not met"
        goal_rows.append(f"| {s} | {what} | certgate ÷ {name} | {st.text(2, '×')} | ≤ {limit} | "
                         f"{met} | {st.n} |")
    # Goal 1: an idle connection that has served a request, ≤ 0.5× nginx (one run).
    idle = {r["target"]: r.get("bytes_per_conn") for r in rows if r["scenario"] == "idle-mtls"}
    if idle.get("certgate") and idle.get("nginx"):
        q = idle["certgate"] / idle["nginx"]
        goal_rows.insert(0, f"| idle (after 1 request) | goal 1: idle mTLS connection after a "
                         f"request ≤ 0.5× nginx | certgate ÷ nginx, KiB per connection | "
                         f"{q:.2f}× | ≤ {IDLE_GOAL} | {'**met**' if q <= IDLE_GOAL else 'not met'} "
                         "| 1 |")
    if goal_rows:
        out += ["", "## Goals (issue 12)", "",
                "| scenario | goal | ratio | median (range) | limit | | runs |",
                "|---|---|---|---:|---:|---|---:|"] + goal_rows

    # Figures.
    cols = TARGETS + [PLAIN]
    out += ["", "## CPU per request (per GiB for bulk): median (lowest–highest)", "",
            "| scenario | unit | " + " | ".join(cols) + " |",
            "|---|---|" + "---:|" * len(cols)]
    for s, _, unit in SCENARIOS:
        if s not in runs.by:
            continue
        cells = []
        for t in cols:
            tt = "certgate-ops" if (s == "ka-mtls-ops" and t == "certgate") else t
            st = runs.stat(s, tt)
            cell = st.text()
            sh = runs.stat(s, tt, "resumed_share")
            if s.startswith("new-") and sh.median is not None:
                cell += f" · resumed {pct(sh.median)}"
                if s == "new-resume" and sh.lo is not None and sh.lo < RESUMED_MIN:
                    cell += " ⚠"
                    warnings.append(f"{s}: {tt} resumed only {pct(sh.lo)} of its handshakes in "
                                    f"its lowest run (median {pct(sh.median)}; below "
                                    f"{pct(RESUMED_MIN)} the figure mixes in full handshakes)")
                if s != "new-resume" and sh.hi:
                    cell += " ⚠"
                    warnings.append(f"{s}: {tt} resumed {pct(sh.hi)} of its handshakes in a run "
                                    "with resumption off")
            cells.append(cell)
        out.append(f"| {s} | {unit} | " + " | ".join(cells) + " |")

    # Ratios.
    out += ["", "## certgate ÷ each peer: median of per-run ratios (lowest–highest)", "",
            "| scenario | ÷ nginx | ÷ HAProxy | ÷ Envoy | ÷ best peer | ÷ nginx-plain |",
            "|---|---:|---:|---:|---:|---:|"]
    for s in runs.scenarios():
        if s == "ka-mtls-ops":
            continue
        cells = [runs.ratios(s, p).text(2, "×") for p in PEERS]
        cells.append(runs.ratios(s, "best").text(2, "×"))
        cells.append(runs.ratios(s, PLAIN).text(2, "×") if s in KA else "")
        out.append(f"| {s} | " + " | ".join(cells) + " |")
    ka = [s for s in runs.scenarios() if s in KA and runs.rows(s, PLAIN)]
    if ka:
        out += ["", "## Each TLS target ÷ nginx as a plain-HTTP proxy (the floor): median of "
                "per-run ratios", "",
                "| scenario | certgate | nginx | HAProxy | Envoy |", "|---|---:|---:|---:|---:|"]
        for s in ka:
            cells = [runs.ratios(s, PLAIN, (t, None)).text(2, "×") for t in TARGETS]
            out.append(f"| {s} | " + " | ".join(cells) + " |")
    split = [s for s in ka if runs.stat(s, "certgate", "sys_us_per_req").n]
    if split:
        # What the floor is made of: most of a keep-alive request is the kernel's loopback TCP
        # work, which a terminator can batch but not avoid.
        out += ["", "## User space and kernel, µs per request: median (lowest–highest)", "",
                "utime and stime of each terminator's processes (from /proc, 10 ms ticks): the "
                "kernel's share is system calls and the loopback TCP work that runs inside them "
                "(the sender's softirq delivers each segment to the receiver).", "",
                "| scenario | " + " | ".join(f"{t} user / kernel" for t in TARGETS + [PLAIN])
                + " |", "|---|" + "---:|" * (len(TARGETS) + 1)]
        for s in split:
            cells = []
            for t in TARGETS + [PLAIN]:
                u = runs.stat(s, t, "user_us_per_req")
                k = runs.stat(s, t, "sys_us_per_req")
                cells.append("–" if u.median is None or k.median is None
                             else f"{u.text()} / {k.text()}")
            out.append(f"| {s} | " + " | ".join(cells) + " |")
    if runs.rows("ka-mtls-ops", "certgate-ops"):
        st = runs.ratios("ka-mtls-ops", ("certgate", "ka-mtls"), ("certgate-ops", None))
        out += ["", f"Operations overhead, certgate ka-mtls-ops ÷ ka-mtls of the same run: "
                f"**{st.text(2, '×')}** over {st.n} runs."]

    # Resumed shares.
    res = [(s, t) for s in runs.scenarios() for t in runs.targets(s)
           if s.startswith("new-") and runs.stat(s, t, "resumed_share").n]
    if res:
        out += ["", "## Resumed handshakes, from each target's own counters", "",
                "certgate: `certgate_handshakes_total{resumed}` on its admin listener; nginx: "
                "`$ssl_session_reused` logged on each connection's first request; HAProxy: the "
                "stats socket's `ssl_sess` (new) and `ssl_reused_sess`; Envoy: admin `/stats`, "
                "`listener.*.ssl.handshake` and `ssl.session_reused`. Read before and after each "
                "run, outside the measured window.", "",
                "| scenario | target | resumed share, median (range) | handshakes per run "
                "(median) |", "|---|---|---:|---:|"]
        for s, t in res:
            sh = runs.stat(s, t, "resumed_share")
            hs = runs.stat(s, t, "handshakes")
            txt = (f"{pct(sh.median)} ({pct(sh.lo)}–{pct(sh.hi)})" if sh.n > 1
                   else pct(sh.median))
            out.append(f"| {s} | {t} | {txt} | {fmt_int(int(hs.median)) if hs.median is not None else '–'} |")

    # Idle memory.
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
                "in a freshly started process (one run).", "",
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

    # Every run.
    out += ["", "## Every run", "",
            "| scenario | run | target | req/s | p50 ms | p99 ms | CPU | core % | errors | "
            "upstream conns opened | resumed |",
            "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in runs.scenarios():
        for t in runs.targets(s):
            for run, r in sorted(runs.rows(s, t).items()):
                err = r["errors"]
                if err:
                    warnings.append(f"{s} run {run}: {t} had {err} errors")
                if r.get("error_kinds"):
                    err = f"{err} ({'; '.join(f'{k}: {n}' for k, n in r['error_kinds'].items())})"
                rate = (f"{fmt(r.get('mib_per_s'), 0)} MiB/s" if s.startswith("bulk-")
                        else fmt(r["rps"], 0))
                out.append(f"| {s} | {run} | {t} | {rate} | {fmt(r['p50_ms'], 2)} | "
                           f"{fmt(r['p99_ms'], 2)} | {fmt(value(r))} | {fmt(r['cpu_pct'], 0)} | "
                           f"{err} | {fmt_int(r.get('upstream_conns'))} | "
                           f"{pct(r.get('resumed_share')) if 'resumed_share' in r else ''} |")
    out += ["", "Scenarios:", ""] + [f"- `{s}` ({u}): {d}" for s, d, u in SCENARIOS
                                     if s in runs.by]
    if meta.get("tls"):
        notes = notes + ["negotiated with an OpenSSL client (`openssl s_client`, as curl and wrk "
                         "offer): " + "; ".join(f"{t} {v}" for t, v in meta["tls"].items())]
    if "xfcc_certgate_equals_envoy" in meta:
        notes = notes + [f"certgate's X-Forwarded-Client-Cert is byte for byte Envoy's: "
                         f"{'yes' if meta['xfcc_certgate_equals_envoy'] else 'NO'}"]
    notes = notes + [f"{r['target']} {r['scenario']} run {r.get('run', '-')}: {r['note']}"
                     for r in rows if r.get("note")]
    if warnings:
        out += ["", "## Warnings", ""] + [f"- ⚠ {w}" for w in warnings]
    if notes:
        out += ["", "## Notes from this run", ""] + [f"- {n}" for n in notes]
    out += ["", "![CPU per request and per GiB, every scenario](latest.svg)", ""]
    if warnings:  # said at the top, where it is read
        head += ["", f"> **{len(warnings)} warning(s)**: see [Warnings](#warnings) below.", ""]
    return "\n".join(head + out)


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
           "compare the resumed shares and CPU per request. One run each.", "",
           "| variant | req/s | p50 ms | CPU µs/req (A+B) | handshakes A / B | "
           "resumed A | resumed B | resumed overall | errors |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
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


def svg(rows):
    """Small multiples, written by hand: one panel per scenario with its own scale, a bar per
    target at its median with the range as a whisker, and certgate's ratio to each peer (and
    the goal, where there is one) under the panel."""
    runs = Runs(rows)
    panels = [_scenario_panel(runs, s) for s in runs.scenarios()]
    panels += [p for p in (_idle_panel(rows, s) for s, _ in IDLE) if p]
    ncol = 4
    nrow = max(1, math.ceil(len(panels) / ncol))
    PW, PH = 250, 250   # one panel
    top, left = 60, 10
    W, H = left * 2 + ncol * PW, top + nrow * PH + 40
    e = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
         f'viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="11">',
         f'<rect width="{W}" height="{H}" fill="white"/>',
         f'<text x="{W / 2}" y="22" text-anchor="middle" font-size="15" font-weight="bold">'
         'Terminator CPU per request (µs) or GiB (ms), idle memory (KiB): medians, '
         'whisker = range</text>']
    lx = left + 10
    for t in TARGETS + [PLAIN, "certgate-ops"]:
        e.append(f'<rect x="{lx}" y="34" width="11" height="11" fill="{COLORS[t]}"/>')
        e.append(f'<text x="{lx + 15}" y="44">{t}</text>')
        lx += 115
    for i, p in enumerate(panels):
        ox, oy = left + (i % ncol) * PW, top + (i // ncol) * PH
        e += _panel(*p, ox, oy, PW, PH)
    e.append("</svg>")
    return "\n".join(e) + "\n"


IDLE = [("idle-mtls", "idle after 1 request"), ("idle-mtls-handshake-only", "idle, handshake only")]


def _scenario_panel(runs, s):
    """(title, unit, targets, stats, shares, lines) of one scenario's panel."""
    unit = dict((n, u) for n, _, u in SCENARIOS)[s]
    targets = runs.targets(s)
    stats = {t: runs.stat(s, t) for t in targets}
    shares = {t: runs.stat(s, t, "resumed_share") for t in targets} if s.startswith("new-") else {}
    if s == "ka-mtls-ops":  # beside certgate's plain ka-mtls of the same runs
        targets = ["certgate"] + targets
        stats["certgate"] = runs.stat("ka-mtls", "certgate")
    # Ratios and goal under the plot.
    lines = []
    if s == "ka-mtls-ops":
        st = runs.ratios(s, ("certgate", "ka-mtls"), ("certgate-ops", None))
        lines.append(f"÷ certgate ka-mtls {st.text(2, '×')}")
    else:
        for p in PEERS + ([PLAIN] if s in KA else []):
            st = runs.ratios(s, p)
            if st.median is not None:
                lines.append(f"certgate÷{p} {st.text(2, '×')}")
        if s in GOALS:
            ref, limit, _ = GOALS[s]
            st = runs.ratios(s, ref)
            if st.median is not None:
                ok = "met" if st.median <= limit else "NOT met"
                lines.append(f"goal ≤ {limit}× {'best peer' if ref == 'best' else ref}: {ok}")
    low = {t for t, sh in shares.items()
           if s == "new-resume" and sh.lo is not None and sh.lo < RESUMED_MIN}
    return s, unit, targets, stats, shares, low, lines


def _idle_panel(rows, scenario):
    """The idle-memory figures (one run) as a panel, or None."""
    idle = {r["target"]: r for r in rows if r["scenario"] == scenario}
    targets = [t for t in TARGETS if idle.get(t, {}).get("bytes_per_conn") is not None]
    if not targets:
        return None
    stats = {t: Stat([idle[t]["bytes_per_conn"] / 1024]) for t in targets}
    cg = stats.get("certgate")
    lines = [f"certgate÷{t} {cg.median / stats[t].median:.2f}×" for t in targets
             if cg and t != "certgate" and stats[t].median]
    if scenario == "idle-mtls" and cg and "nginx" in stats:
        ok = "met" if cg.median / stats["nginx"].median <= IDLE_GOAL else "NOT met"
        lines.append(f"goal ≤ {IDLE_GOAL}× nginx: {ok}")
    return dict(IDLE)[scenario], "KiB/conn", targets, stats, {}, set(), lines


def _panel(s, unit, targets, stats, shares, low, lines, ox, oy, pw, ph):
    vmax = max([st.hi for st in stats.values() if st.hi] or [1])
    raw = vmax / 4
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    ymax = step * (int(vmax / step) + 1)
    if ymax - vmax < 0.1 * ymax:  # room for the value above the highest whisker
        ymax += step
    x0, y0, w, h = ox + 42, oy + 22, pw - 52, ph - 110   # plot area
    y = lambda v: y0 + h - v / ymax * h
    e = [f'<text x="{ox + pw / 2}" y="{oy + 12}" text-anchor="middle" font-weight="bold">'
         f'{html.escape(s)} ({unit})</text>']
    v = 0.0
    while v <= ymax + 1e-9:
        e.append(f'<line x1="{x0}" x2="{x0 + w}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#eee"/>')
        e.append(f'<text x="{x0 - 4}" y="{y(v) + 4:.1f}" text-anchor="end" font-size="9">'
                 f'{v:g}</text>')
        v += step
    e.append(f'<line x1="{x0}" x2="{x0 + w}" y1="{y0 + h}" y2="{y0 + h}" stroke="#333"/>')
    bw = w / max(len(targets), 1)
    for j, t in enumerate(targets):
        st = stats[t]
        if st.median is None:
            continue
        x = x0 + j * bw + bw * 0.15
        e.append(f'<rect x="{x:.1f}" y="{y(st.median):.1f}" width="{bw * 0.7:.1f}" '
                 f'height="{y0 + h - y(st.median):.1f}" fill="{COLORS.get(t, "#999")}">'
                 f'<title>{t} {s}: median {st.median:.1f} {unit}, range {st.lo:.1f}–{st.hi:.1f}'
                 f'</title></rect>')
        cx = x + bw * 0.35
        if st.n > 1:
            e.append(f'<line x1="{cx:.1f}" x2="{cx:.1f}" y1="{y(st.lo):.1f}" y2="{y(st.hi):.1f}" '
                     'stroke="#222"/>')
        e.append(f'<text x="{cx:.1f}" y="{y(st.hi) - 3:.1f}" text-anchor="middle" '
                 f'font-size="9">{st.median:.0f}</text>')
        sh = shares.get(t)
        if sh and sh.median is not None:  # the resumed share under its bar
            e.append(f'<text x="{cx:.1f}" y="{y0 + h + 10}" text-anchor="middle" font-size="8" '
                     f'fill="{"#c92a2a" if t in low else "#666"}">r {100 * sh.median:.0f}%</text>')
    for k, line in enumerate(lines):
        e.append(f'<text x="{ox + 12}" y="{y0 + h + 22 + k * 13}" font-size="10" '
                 f'fill="#444">{html.escape(line)}</text>')
    return e


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
            f"- oha {v['oha']}, HAProxy {v['haproxy']}; {meta['duration_s']} s per variant",
        ] + replicas_section(rows, meta)
            + (["", "## Notes from this run", ""] + [f"- {n}" for n in notes] if notes else [])
            + [""])
        stamp = dated(meta, "replicas")
        with open(os.path.join(a.results, f"{stamp}.md"), "w") as f:
            f.write(md)
        keep_raw(a, stamp)
        print(md)
        return
    md = os.path.join(a.results, "latest.md")
    sv = os.path.join(a.results, "latest.svg")
    text = markdown(rows, meta, notes)
    with open(md, "w") as f:
        f.write(text)
    with open(sv, "w") as f:
        f.write(svg(rows))
    shutil.copy(os.path.join(a.work, "results.jsonl"), os.path.join(a.results, "latest.jsonl"))
    stamp = dated(meta)
    # The dated copy points at its own chart, so it still renders after the next run.
    with open(os.path.join(a.results, f"{stamp}.md"), "w") as f:
        f.write(text.replace("(latest.svg)", f"({stamp}.svg)"))
    shutil.copy(sv, os.path.join(a.results, f"{stamp}.svg"))
    keep_raw(a, stamp)
    print(text)


def dated(meta, kind=None):
    """The dated reports' name: day, hour and minute, and the commit, so that two runs of one
    build on one day (a subset, then a rerun) do not overwrite each other."""
    d = meta["date"]
    return "-".join([d[:10], d[11:13] + d[14:16]] + ([kind] if kind else []) + [meta["commit"]])


def keep_raw(a, stamp):
    """Every result line beside the dated report, so that it can be computed again."""
    shutil.copy(os.path.join(a.work, "results.jsonl"), os.path.join(a.results, f"{stamp}.jsonl"))


if __name__ == "__main__":
    main()
