"""After a run with the operations features on (ka-mtls-ops), check that they really worked.

    python3 ops_check.py --results work/results.jsonl --access work/logs/certgate.access \
        --from-line N --scrapes work/logs/scrapes-certgate.txt \
        --metrics http://127.0.0.1:18446/metrics [--tags run=3]

Reads the run's result (the last line of --results, written by bench.py), the access-log lines
written since line N, the scrape log of scrape_loop and one more scrape of /metrics, appends
one line {"kind": "ops_check", ...} to --results, prints a summary, and exits 1 when:
- the run's access-log lines are not one per completed request (oha's requests aborted at the
  deadline may or may not have reached certgate, so up to that many extra lines are fine),
- a line is not JSON or not status 200,
- no scrape succeeded, or one failed,
- certgate_requests_total differs from the number of lines in the whole access log (both count
  every request since certgate started, the checks before the run included).
"""

import argparse
import json
import sys
import urllib.request


def requests_total(url):
    with urllib.request.urlopen(url, timeout=2) as f:
        text = f.read().decode()
    total = 0
    for line in text.splitlines():
        if line.startswith("certgate_requests_total{") or line.startswith("certgate_requests_total "):
            total += int(float(line.rsplit(None, 1)[1]))
    return total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", required=True)
    ap.add_argument("--access", required=True)
    ap.add_argument("--from-line", required=True, type=int)
    ap.add_argument("--scrapes", required=True)
    ap.add_argument("--metrics", required=True)
    ap.add_argument("--tags", nargs="*", default=[])
    a = ap.parse_args()

    with open(a.results) as f:
        run = json.loads(f.read().splitlines()[-1])
    status, unparsable, total, mine = {}, 0, 0, 0
    with open(a.access, errors="replace") as f:  # hundreds of MB after a few runs: stream it
        for total, line in enumerate(f, 1):
            if total <= a.from_line:
                continue
            mine += 1
            try:
                st = str(json.loads(line)["status"])
            except (ValueError, KeyError, TypeError):
                unparsable += 1
                continue
            status[st] = status.get(st, 0) + 1
    with open(a.scrapes) as f:
        scrapes = [l.strip() for l in f if l.strip()]
    try:
        mreq = requests_total(a.metrics)
    except OSError as e:
        mreq = None
        print(f"  !! /metrics: {e}", file=sys.stderr)

    c = {
        "kind": "ops_check", "target": run["target"], "scenario": run["scenario"],
        "requests_2xx": run["requests"], "aborted_at_deadline": run.get("aborted_at_deadline", 0),
        "access_lines": mine, "access_status": status, "access_unparsable": unparsable,
        "scrapes_ok": scrapes.count("200"), "scrapes_failed": len(scrapes) - scrapes.count("200"),
        "access_lines_total": total, "metrics_requests_total": mreq,
    }
    for kv in a.tags:
        k, _, v = kv.partition("=")
        c[k] = int(v) if v.isdigit() else v
    with open(a.results, "a") as f:
        f.write(json.dumps(c) + "\n")

    extra = c["access_lines"] - c["requests_2xx"]
    print(f"  access log: {c['access_lines']} lines for {c['requests_2xx']} completed requests "
          f"({extra:+d}; {c['aborted_at_deadline']} aborted by oha at the deadline), "
          f"status {status}, {unparsable} not JSON; /metrics scraped {c['scrapes_ok']} times "
          f"({c['scrapes_failed']} failed); certgate_requests_total {mreq} vs "
          f"{total} access lines in all")
    ok = (0 <= extra <= c["aborted_at_deadline"] and unparsable == 0
          and set(status) <= {"200"} and c["scrapes_ok"] > 0 and c["scrapes_failed"] == 0
          and mreq == total)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
