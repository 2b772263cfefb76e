"""Resumed-handshake share per certgate replica, from each process's own /metrics.

    python3 replica_share.py save BEFORE.json ADMIN_URL...
    python3 replica_share.py diff BEFORE.json ADMIN_URL... --scenario S --out RESULTS.jsonl

`save` records every replica's certgate_handshakes_total (summed over listeners and the
client_cert label, split by `resumed`); `diff` scrapes again and appends one line
{"kind": "replica_share", "scenario": S, "replicas": [...], "resumed_share": ...} with, per
replica, the handshakes completed in between and the share of them that resumed a session.
The two replicas share one port (SO_REUSEPORT), so which one a connection reaches is the
kernel's choice; these counters are the only place that says what each of them did.
"""

import argparse
import json
import sys

import resumed


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("action", choices=["save", "diff"])
    ap.add_argument("before")
    ap.add_argument("urls", nargs="+")
    ap.add_argument("--scenario")
    ap.add_argument("--out")
    a = ap.parse_args()
    now = {u: resumed.certgate(u) for u in a.urls}  # (resumed, total)
    if a.action == "save":
        with open(a.before, "w") as f:
            json.dump(now, f)
        return
    before = json.load(open(a.before))
    replicas = []
    for i, u in enumerate(a.urls):
        r = now[u][0] - before[u][0]
        n = now[u][1] - before[u][1]
        replicas.append({"replica": chr(ord("A") + i), "admin": u, "handshakes": int(n),
                         "resumed": int(r), "share": r / n if n else None})
    total = sum(x["handshakes"] for x in replicas)
    resumed_total = sum(x["resumed"] for x in replicas)
    line = {"kind": "replica_share", "scenario": a.scenario, "replicas": replicas,
            "handshakes": total, "resumed_share": resumed_total / total if total else None}
    with open(a.out, "a") as f:
        f.write(json.dumps(line) + "\n")
    shares = "  ".join(
        f"{x['replica']}: {x['resumed']}/{x['handshakes']} "
        f"({100 * x['share']:.0f} %)" if x["share"] is not None else f"{x['replica']}: no handshakes"
        for x in replicas)
    print(f"  resumed handshakes per replica  {shares}")
    if any(x["handshakes"] == 0 for x in replicas):
        print("  !! a replica completed no handshake: the port is not shared", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
