"""Markdown report of an h2.sh run (stdout), from its result lines and work/h2/meta.json.

    python3 h2_report.py --work work/h2 --jsonl results/<date>-h2.jsonl > results/<date>-h2.md

Per scenario and target: the median CPU µs per request (user + system of the terminator's
process tree, read from /proc) with its range over the runs, the median req/s and core share,
errors; then certgate's ratio to the best peer: the ratio of the medians, and the per-run
ratio (certgate's run ÷ that run's figure of the same peer) with its median and range.
"""
import argparse
import json
import os
import statistics

ORDER = ["certgate", "nginx", "haproxy", "envoy"]
SCENARIOS = {
    "h2-mtls": "keep-alive mTLS over HTTP/2, 3-byte body (oha --http2 --cert --key)",
    "h2-mtls-64k": "keep-alive mTLS over HTTP/2, 64 KiB body (oha --http2 --cert --key)",
    "h2-tls": "keep-alive TLS over HTTP/2, no client certificate, 3-byte body (h2load)",
    "h2-tls-64k": "keep-alive TLS over HTTP/2, no client certificate, 64 KiB body (h2load)",
    "grpc": "gRPC unary over TLS with a client certificate, 16-byte messages (grpcio client)",
    "grpc-h2load": "gRPC unary over TLS, no client certificate, 16-byte messages (h2load)",
}
GOAL = 0.7


def med_range(v, fmt="{:.1f}"):
    if not v:
        return "-"
    return f"{fmt.format(statistics.median(v))} ({fmt.format(min(v))}–{fmt.format(max(v))})"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--jsonl", required=True)
    a = ap.parse_args()
    rows = [json.loads(line) for line in open(a.jsonl) if line.strip()]
    meta = json.load(open(os.path.join(a.work, "meta.json")))
    notes_path = os.path.join(a.work, "notes.txt")
    notes = open(notes_path).read().strip() if os.path.exists(notes_path) else ""

    v = meta["versions"]
    print(f"# HTTP/2 load test ({meta['date']}, certgate {meta['commit']})\n")
    print(f"{meta['runs']} interleaved runs of {meta['duration_s']} s per scenario and target "
          f"(the order rotating from run to run); HTTP/2 scenarios: {meta['h2_conns']} "
          f"connections × {meta['h2_streams']} streams; gRPC: {meta['grpc_channels']} channels "
          f"× {meta['grpc_inflight']} calls in flight. Terminators alone on core 0, upstreams "
          f"and load generators on core 1 (of {meta['nproc']}: {meta['cpu']}). Load average "
          f"{meta['loadavg_start']} at the start, {meta['loadavg_end']} at the end; niceness "
          f"{meta['nice']}.\n")
    print("Versions: " + "; ".join(f"{k}: {val}" for k, val in v.items()) + ".\n")
    print("CPU µs/req: user + system time of the terminator's processes and threads over the "
          "run, divided by the 2xx responses (gRPC: calls with status OK); median (lowest–"
          "highest) over the runs. *core %*: that CPU time over wall time (100 = core 0 "
          "saturated). Ratios are certgate ÷ peer: below 1 means certgate spends less.\n")

    by = {}
    for r in rows:
        by.setdefault(r["scenario"], {}).setdefault(r["target"], []).append(r)
    summary = []
    for s, title in SCENARIOS.items():
        if s not in by:
            continue
        targets = [t for t in ORDER if t in by[s]]
        print(f"## `{s}`: {title}\n")
        print("| target | CPU µs/req | req/s | core % | latency ms (p50, or mean) | errors | upstream conns opened (most in a run) | runs |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        cpu = {}
        for t in targets:
            rs = by[s][t]
            cpu[t] = {r["run"]: r["cpu_us_per_req"] for r in rs if r.get("cpu_us_per_req")}
            lat = [r["p50_ms"] if r.get("p50_ms") is not None else r.get("mean_ms") for r in rs]
            lat = [x for x in lat if x is not None]
            conns = [r["upstream_conns"] for r in rs if r.get("upstream_conns") is not None]
            latency = f"{statistics.median(lat):.2f}" if lat else "-"
            opened = "–" if s.startswith("grpc") or not conns else max(conns)
            print(f"| {t} | {med_range(list(cpu[t].values()))} "
                  f"| {statistics.median(r['rps'] for r in rs):,.0f} "
                  f"| {statistics.median(r['cpu_pct'] for r in rs):.0f} | {latency} "
                  f"| {sum(r['errors'] for r in rs)} | {opened} | {len(rs)} |")
        peers = [t for t in targets if t != "certgate" and cpu.get(t)]
        if "certgate" in cpu and cpu["certgate"] and peers:
            med = {t: statistics.median(cpu[t].values()) for t in targets if cpu[t]}
            best = min(peers, key=lambda t: med[t])
            ratio = med["certgate"] / med[best]
            per = sorted(cpu["certgate"][n] / cpu[best][n]
                         for n in cpu["certgate"] if n in cpu[best] and cpu[best][n])
            print()
            for t in peers:
                pr = sorted(cpu["certgate"][n] / cpu[t][n]
                            for n in cpu["certgate"] if n in cpu[t] and cpu[t][n])
                mark = " (best peer)" if t == best else ""
                print(f"- certgate ÷ {t}{mark}: {med['certgate'] / med[t]:.2f}× of the medians; "
                      f"per run {statistics.median(pr):.2f}× ({pr[0]:.2f}–{pr[-1]:.2f})")
            summary.append((s, med["certgate"], best, med[best], ratio,
                            f"{statistics.median(per):.2f} ({per[0]:.2f}–{per[-1]:.2f})"))
        print()

    if summary:
        print("## Summary: certgate ÷ best peer (CPU µs per request)\n")
        print("| scenario | certgate | best peer | peer | ratio of medians | per-run ratio median (range) |")
        print("|---|---:|---|---:|---:|---:|")
        for s, cg, best, bm, ratio, per in summary:
            print(f"| `{s}` | {cg:.1f} | {best} | {bm:.1f} | **{ratio:.2f}×** | {per} |")
        print(f"\nGoal for the HTTP/2 scenarios: ≤ {GOAL}× the best peer.\n")
    print("The certificate header certgate forwarded over HTTP/2 is "
          + ("byte for byte the one Envoy forwarded." if meta.get("xfcc_certgate_equals_envoy")
             else "not byte for byte Envoy's (see work/h2/xfcc-*.txt)."))
    if notes:
        print("\nNotes:\n")
        for line in notes.splitlines():
            print(f"- {line}")


if __name__ == "__main__":
    main()
