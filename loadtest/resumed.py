"""Handshakes a terminator completed so far, and how many of them resumed a session, read from
the terminator's own counters (never assumed from how the load generator behaves).

    python3 resumed.py KIND SOURCE     -> "RESUMED TOTAL"

bench.py takes a snapshot before and after a run (`--resumed KIND=SOURCE`) and records the
difference. KIND and SOURCE:
  certgate   admin /metrics URL: certgate_handshakes_total, split by its `resumed` label
  nginx-log  a log with one line per new connection: "r" (resumed) or "." (full handshake),
             nginx's $ssl_session_reused (run.sh's nginx_conf writes it, buffered: flush=1s)
  haproxy    the stats socket: `show stat`, the FRONTEND's ssl_sess (new sessions, i.e. full
             handshakes) and ssl_reused_sess (resumed)
  envoy      admin /stats URL: listener.<address>.ssl.handshake and .ssl.session_reused
"""

import re
import socket
import sys
import time
import urllib.request

CERTGATE = re.compile(r"^certgate_handshakes_total\{([^}]*)\} (\S+)$", re.M)
ENVOY = re.compile(r"^listener\.[^:]+\.ssl\.(handshake|session_reused): (\d+)$", re.M)


def _get(url):
    with urllib.request.urlopen(url, timeout=5) as f:
        return f.read().decode()


def certgate(url):
    resumed = total = 0
    for labels, value in CERTGATE.findall(_get(url)):
        total += int(float(value))
        if 'resumed="true"' in labels:
            resumed += int(float(value))
    return resumed, total


def nginx_log(path):
    time.sleep(1.2)  # the log is flushed every second: count what the last run wrote
    resumed = total = 0
    try:
        with open(path) as f:
            for line in f:
                total += 1
                resumed += line.strip() == "r"
    except FileNotFoundError:
        pass
    return resumed, total


def haproxy(sock_path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(sock_path)
    s.sendall(b"show stat\n")
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    s.close()
    lines = data.decode().splitlines()
    cols = lines[0].lstrip("# ").split(",")
    total = resumed = 0
    for line in lines[1:]:
        row = dict(zip(cols, line.split(",")))
        # ssl_sess counts the new sessions (full handshakes), ssl_reused_sess the resumed.
        if row.get("svname") == "FRONTEND" and row.get("ssl_sess"):
            resumed += int(row["ssl_reused_sess"] or 0)
            total += int(row["ssl_sess"]) + int(row["ssl_reused_sess"] or 0)
    return resumed, total


def envoy(url):
    counts = {"handshake": 0, "session_reused": 0}
    for name, value in ENVOY.findall(_get(url)):
        counts[name] += int(value)
    return counts["session_reused"], counts["handshake"]


KINDS = {"certgate": certgate, "nginx-log": nginx_log, "haproxy": haproxy, "envoy": envoy}


def snapshot(spec):
    """spec "KIND=SOURCE" -> (resumed, total) so far."""
    kind, _, source = spec.partition("=")
    return KINDS[kind](source)


if __name__ == "__main__":
    print(*KINDS[sys.argv[1]](sys.argv[2]))
