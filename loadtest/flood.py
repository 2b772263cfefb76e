"""Handshake flood (issue 12, goal 4): do full mTLS handshakes of other clients stall the
keep-alive requests of established ones? One result line per call, for one terminator:

1. baseline: `--steady` keep-alive mTLS clients (oha -c 8, `--qps` requests per second in all,
   with --latency-correction, so a stalled request also delays the ones scheduled behind it)
   for `--duration` seconds, nothing else;
2. flood: `--flood` other clients (oha -c 64 --disable-keepalive: a new connection and a full
   handshake per request, the terminator has resumption off) start first; once they run, the
   same steady clients run again for `--duration` seconds; then the flood stops.

For each phase: the steady clients' p50, p99, p99.9 and max latency, their req/s and errors, the
terminator's CPU (its whole process tree) as a share of one core, and the busy share of every
core from /proc/stat. For the flood window also the handshakes the terminator completed per
second, counted by itself (certgate: certgate_handshakes_total from `--metrics`; nginx: lines of
its per-connection log `--nginx-log`, "." full and "r" resumed), so a flood that the generator
core could not drive hard enough shows as a lower rate, and the share that resumed (must be 0).
The steady clients run at `--steady-nice` and the flood at `--flood-nice` (both on the generator
core), so the flood's own CPU delays the steady clients as little as possible.

    python3 flood.py --target certgate --pid 1234 --port 18483 --oha oha --cert c.pem \\
        --key c.key --metrics http://127.0.0.1:18486/metrics --out work/results.jsonl

Also a module: `oha_figures(text)` (idle_conns.py uses it for its busy clients).
"""

import argparse
import json
import os
import re
import subprocess
import time

import procstat
import resumed



def oha_figures(text):
    """oha --output-format json: latency figures in ms, req/s, successful requests, errors."""
    d = json.loads(text[text.index("{"):])
    codes = d.get("statusCodeDistribution") or {}
    ok = sum(n for code, n in codes.items() if str(code).startswith("2"))
    kinds = dict(d.get("errorDistribution") or {})
    # With -z, requests in flight at the deadline are aborted; not the terminator's fault.
    kinds.pop("aborted due to deadline", None)
    pct = d.get("latencyPercentiles") or {}
    s = d.get("summary") or {}
    ms = lambda v: None if v is None else round(v * 1000.0, 3)  # oha reports seconds
    return {
        "requests": ok,
        "rps": round(ok / s["total"], 1) if s.get("total") else None,
        "p50_ms": ms(pct.get("p50")), "p99_ms": ms(pct.get("p99")),
        "p999_ms": ms(pct.get("p99.9")), "max_ms": ms(s.get("slowest")),
        "errors": sum(n for code, n in codes.items() if not str(code).startswith("2"))
        + sum(kinds.values()),
        "error_kinds": kinds,
    }


def cores():
    """(busy, total) jiffies per core from /proc/stat."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            m = re.match(r"cpu(\d+) (.*)", line)
            if m:
                v = [int(x) for x in m.group(2).split()]
                total = sum(v[:8])  # user nice system idle iowait irq softirq steal
                out[int(m.group(1))] = (total - v[3] - v[4], total)
    return out


def busy_pct(c0, c1):
    return {f"cpu{k}": round(100.0 * (c1[k][0] - c0[k][0]) / max(1, c1[k][1] - c0[k][1]), 1)
            for k in c1}


def handshakes(a):
    """(resumed, total) handshakes the terminator completed so far, or None if it cannot say."""
    if a.metrics:
        return resumed.certgate(a.metrics)
    if a.nginx_log:
        # Read as it stands: the log lags by up to its one-second flush at both ends of the
        # window, which cancels out (resumed.nginx_log waits for a flush first, which would
        # stretch the window past the steady clients' measurement).
        res = total = 0
        with open(a.nginx_log) as f:
            for line in f:
                total += 1
                res += line.strip() == "r"
        return res, total
    return None


def oha(a, conns, duration, extra):
    return [a.oha, "-c", str(conns), "-z", f"{duration}s", "--output-format", "json",
            "--insecure", "--no-tui", "--cert", a.cert, "--key", a.key, *extra,
            f"https://127.0.0.1:{a.port}/"]


def on_gen(a, nice, cmd):
    return ["nice", "-n", str(nice), "taskset", "-c", str(a.gen_cpu), *cmd]


def steady(a, raw):
    """One run of the steady clients; their figures and the terminator's CPU meanwhile."""
    q = ["-q", str(a.qps), "--latency-correction"] if a.qps else []
    c0, k0, t0 = procstat.cpu_ticks(a.pid), cores(), time.monotonic()
    p = subprocess.run(on_gen(a, a.steady_nice, oha(a, a.steady, a.duration, q)),
                       capture_output=True, text=True)
    wall = time.monotonic() - t0
    out = {"term_core_pct": round(100.0 * (procstat.cpu_ticks(a.pid) - c0)
                                  / procstat.CLK_TCK / wall, 1), **busy_pct(k0, cores())}
    with open(raw, "w") as f:
        f.write(p.stdout + p.stderr)
    try:
        out.update(oha_figures(p.stdout))
    except (ValueError, KeyError) as e:
        out["error"] = f"steady clients' output unreadable ({e}); exit {p.returncode}"
    return out, wall


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", required=True)
    ap.add_argument("--pid", required=True, type=int)
    ap.add_argument("--port", required=True, type=int)
    ap.add_argument("--oha", required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--raw", required=True, help="prefix of the files for oha's raw output")
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--qps", type=int, default=800, help="steady clients' rate in all; 0 = "
                                                          "as fast as they can")
    ap.add_argument("--steady", type=int, default=8)
    ap.add_argument("--flood", type=int, default=64)
    ap.add_argument("--ramp", type=float, default=2.0, help="seconds of flood before measuring")
    ap.add_argument("--gen-cpu", type=int, default=1)
    ap.add_argument("--steady-nice", type=int, default=-5)
    ap.add_argument("--flood-nice", type=int, default=5)
    ap.add_argument("--metrics", help="certgate's /metrics URL (handshake counters)")
    ap.add_argument("--nginx-log", help="nginx's per-connection log ('.' full, 'r' resumed)")
    ap.add_argument("--tags", nargs="*", default=[], help="key=value pairs added to the result")
    a = ap.parse_args()

    r = {"target": a.target, "scenario": "flood", "qps": a.qps, "steady_conns": a.steady,
         "flood_conns": a.flood, "duration_s": a.duration}
    r["baseline"], _ = steady(a, f"{a.raw}-baseline.json")

    fl_raw = f"{a.raw}-flood.json"
    flood_cmd = on_gen(a, a.flood_nice, oha(a, a.flood, a.duration + a.ramp + 3,
                                            ["--disable-keepalive"]))
    with open(fl_raw, "w") as fl_out:
        fp = subprocess.Popen(flood_cmd, stdout=fl_out, stderr=subprocess.STDOUT)
        time.sleep(a.ramp)
        h0 = handshakes(a)
        r["flood"], wall = steady(a, f"{a.raw}-steady.json")
        h1 = handshakes(a)
        fp.wait()
    if h0 is not None and h1 is not None:
        res, total = h1[0] - h0[0], h1[1] - h0[1]
        r["flood"]["handshakes_per_s"] = round(total / wall, 1)
        r["flood"]["resumed_share"] = round(res / total, 4) if total else None
    try:
        with open(fl_raw) as f:
            fig = oha_figures(f.read())
        # The flood clients' own view (whole run, ramp included): connections per second.
        r["flood_clients"] = {"requests": fig["requests"], "rps": fig["rps"],
                              "errors": fig["errors"], "error_kinds": fig["error_kinds"],
                              "p50_ms": fig["p50_ms"], "p99_ms": fig["p99_ms"]}
    except (ValueError, KeyError, OSError) as e:
        r["flood_clients"] = {"error": f"flood output unreadable ({e})"}
    r.update(t.split("=", 1) for t in a.tags)
    with open(a.out, "a") as f:
        f.write(json.dumps(r) + "\n")
    b, fl = r["baseline"], r["flood"]
    print(f"  {a.target:9} steady p99 {b.get('p99_ms')} ms alone, {fl.get('p99_ms')} ms under "
          f"the flood (max {fl.get('max_ms')} ms, {fl.get('rps')} req/s, {fl.get('errors')} "
          f"errors); flood {fl.get('handshakes_per_s')} handshakes/s served (resumed share "
          f"{fl.get('resumed_share')}); terminator core {fl['term_core_pct']} %, "
          + ", ".join(f"{k} {v} %" for k, v in fl.items() if re.fullmatch(r"cpu\d+", k)))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    main()
