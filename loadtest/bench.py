"""Run one load-generator command against one terminator and record one result line.

    python3 bench.py --target certgate --scenario ka-tls --pid 1234 --tool wrk \
        --duration 10 --out work/results.jsonl -- taskset -c 1 wrk ...

The terminator's CPU time (utime+stime of its whole process tree) is read just before and just
after the command; divided by the requests the load generator completed, that gives the
terminator's CPU microseconds per request, which stays meaningful when the load generator (not
the terminator) is the bottleneck. The command's raw output is kept next to the results.
"""

import argparse
import json
import re
import subprocess
import sys
import time
import urllib.request

import procstat


def parse_wrk(text):
    """wrk --latency output: completed requests, req/s, p50/p99 in ms, error count."""
    def dur_ms(s):
        m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", s)
        v, unit = float(m.group(1)), m.group(2)
        return v * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]

    out = {"requests": 0, "rps": 0.0, "p50_ms": None, "p99_ms": None, "errors": 0}
    m = re.search(r"(\d+) requests in", text)
    if m:
        out["requests"] = int(m.group(1))
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if m:
        out["rps"] = float(m.group(1))
    for pct, key in (("50", "p50_ms"), ("99", "p99_ms")):
        m = re.search(rf"^\s+{pct}%\s+(\S+)", text, re.M)
        if m:
            out[key] = dur_ms(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        out["errors"] += sum(int(g) for g in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if m:
        out["errors"] += int(m.group(1))
        out["requests"] -= int(m.group(1))  # count only successful requests
    return out


def parse_oha(text):
    """oha --output-format json: successful requests, req/s, p50/p99 in ms, error count."""
    d = json.loads(text[text.index("{"):])
    codes = d.get("statusCodeDistribution") or {}
    ok = sum(n for code, n in codes.items() if str(code).startswith("2"))
    bad = sum(n for code, n in codes.items() if not str(code).startswith("2"))
    kinds = dict(d.get("errorDistribution") or {})
    # With -z, requests still in flight at the deadline are aborted; not a terminator error.
    aborted = kinds.pop("aborted due to deadline", 0)
    errs = sum(kinds.values())
    pct = d.get("latencyPercentiles") or {}
    ms = lambda v: None if v is None else v * 1000.0  # oha reports seconds
    summary = d.get("summary") or {}
    return {
        "requests": ok,
        "rps": ok / summary["total"] if summary.get("total") else summary.get("requestsPerSec", 0.0),
        "p50_ms": ms(pct.get("p50")),
        "p99_ms": ms(pct.get("p99")),
        "errors": bad + errs,
        "error_kinds": kinds,
        "aborted_at_deadline": aborted,
    }


def parse_stime(text):
    """openssl s_time: one connection (and one HTTP/1.0 request) at a time. Its own timings are
    whole seconds or client CPU time, so bench() derives req/s and the mean latency (shown as
    p50; no p99) from the measured wall time. Each resumed connection prints an 'r'."""
    m = re.search(r"(\d+) connections in \d+ real seconds", text)
    if not m:
        return {"requests": 0, "rps": 0.0, "p50_ms": None, "p99_ms": None, "errors": 1}
    n = int(m.group(1))
    marks = re.search(r"^starting\n([^\n]*)", text, re.M)
    reused = marks.group(1).count("r") if marks else 0
    return {"requests": n, "rps": None, "p50_ms": None, "p99_ms": None, "errors": 0,
            "note": f"s_time: sequential; {reused} of {n} connections resumed; mean latency as p50"}


def parse_h2load(text):
    """h2load output (timing-based with -D): 2xx responses, req/s, mean latency in ms (h2load
    prints no percentiles; the mean goes in mean_ms), failed requests."""
    def dur_ms(s):
        m = re.fullmatch(r"([\d.]+)(us|ms|s)", s)
        return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]

    m = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
    ok = int(m.group(1)) if m else 0
    bad = sum(int(g) for g in m.groups()[1:]) if m else 0
    m = re.search(r"requests: \d+ total, \d+ started, \d+ done, \d+ succeeded, (\d+) failed", text)
    failed = int(m.group(1)) if m else 1
    m = re.search(r"finished in ([\d.]+)s, ([\d.]+) req/s", text)
    rps = ok / float(m.group(1)) if m and float(m.group(1)) else 0.0
    m = re.search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)", text)
    return {"requests": ok, "rps": rps, "p50_ms": None, "p99_ms": None,
            "mean_ms": dur_ms(m.group(3)) if m else None, "errors": max(failed, bad)}


def parse_grpc(text):
    """grpc_load.py client: one JSON object; a call is a request."""
    d = json.loads(text[text.index("{"):])
    return {"requests": d["ok"], "rps": d["rps"], "p50_ms": d["p50_ms"], "p99_ms": d["p99_ms"],
            "mean_ms": d["mean_ms"], "errors": sum(d["errors"].values()),
            "error_kinds": d["errors"]}


def upstream_accepts(url):
    """Connections the upstream nginx has accepted so far (stub_status), or None."""
    if not url:
        return None
    try:
        with urllib.request.urlopen(url, timeout=2) as f:
            lines = f.read().decode().splitlines()
        return int(lines[2].split()[0])  # "server accepts handled requests" / "N N N"
    except (OSError, ValueError, IndexError):
        return None


PARSERS = {"wrk": parse_wrk, "oha": parse_oha, "stime": parse_stime, "h2load": parse_h2load,
           "grpc": parse_grpc}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", required=True)
    ap.add_argument("--scenario", required=True)
    ap.add_argument("--pid", required=True, type=int, action="append",
                    help="root pid of the terminator (repeat for replicas: their CPU is summed)")
    ap.add_argument("--tool", required=True, choices=PARSERS)
    ap.add_argument("--duration", required=True, type=float)
    ap.add_argument("--out", required=True, help="JSON-lines file to append to")
    ap.add_argument("--raw", required=True, help="where to keep the tool's raw output")
    ap.add_argument("--upstream-status", help="stub_status URL of the upstream nginx")
    ap.add_argument("--tags", nargs="*", default=[], metavar="KEY=VALUE",
                    help="extra fields for the result line (ab.sh: run number, load average)")
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    cmd = a.cmd[1:] if a.cmd and a.cmd[0] == "--" else a.cmd

    u0 = upstream_accepts(a.upstream_status)
    cpu = lambda: sum(procstat.cpu_ticks(p) for p in a.pid)
    t0, c0 = time.monotonic(), cpu()
    try:
        # Generous bound: a hung load generator must not hang the whole run.
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=a.duration * 3 + 30)
        text, rc = p.stdout + p.stderr, p.returncode
    except subprocess.TimeoutExpired as e:
        text, rc = f"TIMEOUT after {e.timeout}s\n{e.stdout or ''}", 124
    c1, t1 = cpu(), time.monotonic()
    u1 = upstream_accepts(a.upstream_status)
    with open(a.raw, "w") as f:
        f.write(" ".join(cmd) + "\n\n" + text)

    try:
        r = PARSERS[a.tool](text)
    except Exception as e:  # a crash of the generator or the terminator: record, don't stop
        r = {"requests": 0, "rps": 0.0, "p50_ms": None, "p99_ms": None, "errors": 1,
             "note": f"unparsable output ({e.__class__.__name__}), see {a.raw}"}
    cpu_us = (c1 - c0) * 1e6 / procstat.CLK_TCK
    wall = t1 - t0
    if r["rps"] is None:  # s_time: only the count is usable
        r["rps"] = r["requests"] / wall if wall else 0.0
        r["p50_ms"] = wall * 1000.0 / r["requests"] if r["requests"] else None
    r.update({
        "target": a.target, "scenario": a.scenario, "tool": a.tool, "rc": rc,
        "cpu_us_total": cpu_us,
        "cpu_us_per_req": cpu_us / r["requests"] if r["requests"] else None,
        # Share of one core the terminator used while the command ran (100 = saturated).
        "cpu_pct": 100.0 * cpu_us / 1e6 / wall if wall else None,
        "wall_s": wall,
        # New upstream connections the terminator opened (less the one status request).
        "upstream_conns": u1 - u0 - 1 if u0 is not None and u1 is not None else None,
        "terminator_alive": all(procstat.tree(p) != [] and _alive(p) for p in a.pid),
    })
    for kv in a.tags:
        k, _, v = kv.partition("=")
        r[k] = _number(v)
    with open(a.out, "a") as f:
        f.write(json.dumps(r) + "\n")
    p50 = f"{r['p50_ms']:.2f}" if r["p50_ms"] is not None else "-"
    per = f"{r['cpu_us_per_req']:.1f}" if r["cpu_us_per_req"] else "-"
    print(f"  {a.target:9} {a.scenario:14} {r['rps']:9.0f} req/s  p50 {p50} ms  "
          f"cpu {per} us/req ({r['cpu_pct']:.0f}% core)  errors {r['errors']}  "
          f"upstream conns {r['upstream_conns']}  rc {rc}")
    if not r["terminator_alive"]:
        print(f"  !! {a.target} (pid {a.pid}) is no longer running", file=sys.stderr)


def _number(v):
    for kind in (int, float):
        try:
            return kind(v)
        except ValueError:
            pass
    return v


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


if __name__ == "__main__":
    main()
