"""Run one load-generator command against one terminator and record one result line.

    python3 bench.py --target certgate --scenario ka-tls --pid 1234 --tool wrk \
        --duration 10 --out work/results.jsonl -- taskset -c 1 wrk ...

The terminator's CPU time (utime+stime of its whole process tree) is read just before and just
after the command; divided by the requests the load generator completed, that gives the
terminator's CPU microseconds per request, which stays meaningful when the load generator (not
the terminator) is the bottleneck. The command's raw output is kept next to the results.

Bulk transfers (`--tool curl`): curl moves several large bodies over one keep-alive connection
and prints one `-w` line per transfer; every transfer must have status 200 and exactly
`--expect-bytes` bytes in its direction, and curl must have opened one connection in all. The
figure is then the terminator's CPU milliseconds per GiB relayed (cpu_ms_per_gib).

`--resumed KIND=SOURCE` (see resumed.py) reads the terminator's own handshake counters before
and after the run, and records how many handshakes it completed and how many resumed.
"""

import argparse
import json
import re
import subprocess
import sys
import time
import urllib.request

import procstat
import resumed


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


def parse_curl(text):
    """curl -w 'bulk %{http_code} %{size_download} %{size_upload} %{num_connects}\n', one line
    per transfer. main() checks each transfer's size against --expect-bytes."""
    transfers = []
    for m in re.finditer(r"^bulk (\d+) (\d+) (\d+) (\d+)$", text, re.M):
        code, down, up, connects = (int(g) for g in m.groups())
        transfers.append({"code": code, "down": down, "up": up, "connects": connects})
    return {"requests": len(transfers), "rps": None, "p50_ms": None, "p99_ms": None,
            "errors": 0, "transfers": transfers}


def check_transfers(r, expect, direction):
    """Count as requests only the transfers with status 200 and the expected size; the rest
    are errors. Adds bytes (relayed in the measured direction) and connections (opened)."""
    ok = [t for t in r["transfers"] if t["code"] == 200 and t[direction] == expect]
    r["errors"] += len(r["transfers"]) - len(ok)
    r["requests"] = len(ok)
    r["bytes"] = sum(t[direction] for t in ok)
    r["connections"] = sum(t["connects"] for t in r["transfers"])
    if r["transfers"] and r["connections"] != 1:
        r["note"] = (f"{r['connections']} connections for {len(r['transfers'])} transfers "
                     "(one keep-alive connection expected)")
    del r["transfers"]


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
           "grpc": parse_grpc, "curl": parse_curl}


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
    ap.add_argument("--expect-bytes", type=int,
                    help="curl: the size every transfer must have in --direction")
    ap.add_argument("--direction", choices=["down", "up"], default="down")
    ap.add_argument("--resumed", metavar="KIND=SOURCE",
                    help="count the terminator's full and resumed handshakes (resumed.py)")
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    cmd = a.cmd[1:] if a.cmd and a.cmd[0] == "--" else a.cmd

    # The counters are read outside the CPU window: a scrape costs the terminator CPU too.
    h0 = _snapshot(a.resumed)
    u0 = upstream_accepts(a.upstream_status)
    def cpu():  # (user, system) ticks of every process tree measured
        split = [procstat.cpu_split(p) for p in a.pid]
        return sum(u for u, _ in split), sum(s for _, s in split)
    t0, (u0_ticks, s0_ticks) = time.monotonic(), cpu()
    try:
        # Generous bound: a hung load generator must not hang the whole run.
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=a.duration * 3 + 30)
        text, rc = p.stdout + p.stderr, p.returncode
    except subprocess.TimeoutExpired as e:
        text, rc = f"TIMEOUT after {e.timeout}s\n{e.stdout or ''}", 124
    (u1_ticks, s1_ticks), t1 = cpu(), time.monotonic()
    u1 = upstream_accepts(a.upstream_status)
    h1 = _snapshot(a.resumed)
    with open(a.raw, "w") as f:
        f.write(" ".join(cmd) + "\n\n" + text)

    try:
        r = PARSERS[a.tool](text)
    except Exception as e:  # a crash of the generator or the terminator: record, don't stop
        r = {"requests": 0, "rps": 0.0, "p50_ms": None, "p99_ms": None, "errors": 1,
             "note": f"unparsable output ({e.__class__.__name__}), see {a.raw}"}
    if a.tool == "curl":
        check_transfers(r, a.expect_bytes, a.direction)
    user_us = (u1_ticks - u0_ticks) * 1e6 / procstat.CLK_TCK
    sys_us = (s1_ticks - s0_ticks) * 1e6 / procstat.CLK_TCK
    cpu_us = user_us + sys_us
    wall = t1 - t0
    if a.tool == "curl":
        r["rps"] = r["requests"] / wall if wall else 0.0
        r["cpu_ms_per_gib"] = cpu_us / 1000 / (r["bytes"] / 2**30) if r["bytes"] else None
        r["mib_per_s"] = r["bytes"] / 2**20 / wall if wall else None
    elif r["rps"] is None:  # s_time: only the count is usable
        r["rps"] = r["requests"] / wall if wall else 0.0
        r["p50_ms"] = wall * 1000.0 / r["requests"] if r["requests"] else None
    r.update({
        "target": a.target, "scenario": a.scenario, "tool": a.tool, "rc": rc,
        "cpu_us_total": cpu_us,
        "cpu_us_per_req": cpu_us / r["requests"] if r["requests"] else None,
        # The same, split: user space, and the kernel on the terminator's behalf.
        "user_us_per_req": user_us / r["requests"] if r["requests"] else None,
        "sys_us_per_req": sys_us / r["requests"] if r["requests"] else None,
        # Share of one core the terminator used while the command ran (100 = saturated).
        "cpu_pct": 100.0 * cpu_us / 1e6 / wall if wall else None,
        "wall_s": wall,
        # New upstream connections the terminator opened (less the one status request).
        "upstream_conns": u1 - u0 - 1 if u0 is not None and u1 is not None else None,
        "terminator_alive": all(procstat.tree(p) != [] and _alive(p) for p in a.pid),
    })
    if h0 is not None and h1 is not None:
        r["handshakes"] = h1[1] - h0[1]
        r["resumed"] = h1[0] - h0[0]
        r["resumed_share"] = r["resumed"] / r["handshakes"] if r["handshakes"] else None
    elif a.resumed:
        r["note"] = f"handshake counters unreadable ({a.resumed})"
    for kv in a.tags:
        k, _, v = kv.partition("=")
        r[k] = _number(v)
    with open(a.out, "a") as f:
        f.write(json.dumps(r) + "\n")
    p50 = f"{r['p50_ms']:.2f}" if r["p50_ms"] is not None else "-"
    per = f"{r['cpu_us_per_req']:.1f}" if r["cpu_us_per_req"] else "-"
    extra = ""
    if "resumed_share" in r:
        share = "-" if r["resumed_share"] is None else f"{100 * r['resumed_share']:.0f}%"
        extra = f"  resumed {r['resumed']}/{r['handshakes']} ({share})"
    if a.tool == "curl":
        gib = f"{r['cpu_ms_per_gib']:.0f}" if r["cpu_ms_per_gib"] else "-"
        print(f"  {a.target:11} {a.scenario:15} {r['requests']} x {a.expect_bytes >> 20} MiB "
              f"{a.direction}  {r['mib_per_s'] or 0:6.0f} MiB/s  cpu {gib} ms/GiB "
              f"({r['cpu_pct']:.0f}% core)  errors {r['errors']}  connections "
              f"{r['connections']}  rc {rc}")
    else:
        print(f"  {a.target:11} {a.scenario:15} {r['rps']:9.0f} req/s  p50 {p50} ms  "
              f"cpu {per} us/req ({r['cpu_pct']:.0f}% core)  errors {r['errors']}  "
              f"upstream conns {r['upstream_conns']}  rc {rc}{extra}")
    if not r["terminator_alive"]:
        print(f"  !! {a.target} (pid {a.pid}) is no longer running", file=sys.stderr)


def _snapshot(spec):
    if not spec:
        return None
    try:
        return resumed.snapshot(spec)
    except (OSError, ValueError, IndexError, KeyError):
        return None


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
