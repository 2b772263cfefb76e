"""Memory per idle mTLS connection: open N TLS connections that present a client certificate,
let each serve `--requests` requests (default 1; 0 = handshake only), leave them idle, and
measure how much the terminator's resident memory (sum of VmRSS of its process tree) grew,
divided by N. The requests go one at a time, connection after connection, as a pool of
mostly idle clients sends them: what is measured is what an idle connection keeps.

    python3 idle_conns.py --target nginx --port 18444 --pid 1234 --n 2000 --requests 1 \
        --cert client.pem --key client.key --out work/results.jsonl
"""

import argparse
import json
import resource
import socket
import ssl
import time

import procstat


def connect(ctx, port):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    t = ctx.wrap_socket(s, server_hostname="localhost")  # handshake happens here
    return t


def request(conn, path):
    """One keep-alive GET; reads the response to its end (Content-Length framing)."""
    conn.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            raise OSError("closed before the response head")
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    length = None
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if length is None:
        raise OSError(f"no Content-Length in {head!r}")
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            raise OSError("closed inside the body")
        body += chunk
    return head.split(b" ", 2)[1]


def still_open(conns):
    """Connections the server has not closed: a non-blocking read must find no data and no EOF."""
    n = 0
    for c in conns:
        c.setblocking(False)
        try:
            data = c.recv(1)
            n += 1 if data else 0  # data (unexpected) still means open; b"" means closed
        except (ssl.SSLWantReadError, BlockingIOError):
            n += 1
        except (OSError, ssl.SSLError):
            pass
    return n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", required=True)
    ap.add_argument("--port", required=True, type=int)
    ap.add_argument("--pid", required=True, type=int)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--requests", type=int, default=1)
    ap.add_argument("--path", default="/")
    a = ap.parse_args()

    # Each connection is one descriptor here; raise the soft limit as far as the hard one allows.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the server cert is self-signed; trust is not under test
    ctx.load_cert_chain(a.cert, a.key)

    # Warm up so one-time allocations (first handshake, lazily built tables) are not counted.
    for _ in range(20):
        connect(ctx, a.port).close()
    time.sleep(1)
    before = procstat.rss_kib(a.pid)

    conns, failed = [], 0
    t0 = time.monotonic()
    for _ in range(a.n):
        try:
            conns.append(connect(ctx, a.port))
        except (OSError, ssl.SSLError):
            failed += 1
    opened_s = time.monotonic() - t0
    bad = 0
    for _ in range(a.requests):
        for c in conns:
            try:
                bad += request(c, a.path) != b"200"
            except (OSError, ssl.SSLError):
                bad += 1
    # TLS 1.3: the client's certificate and Finished arrive after the client considers the
    # handshake done; give the server time to process them before measuring.
    time.sleep(2)
    after = procstat.rss_kib(a.pid)
    alive = still_open(conns)
    for c in conns:
        c.close()

    r = {
        "target": a.target,
        "scenario": "idle-mtls" if a.requests else "idle-mtls-handshake-only",
        "requests": a.requests, "failed_requests": bad, "n": a.n, "opened": len(conns),
        "failed": failed, "still_open": alive, "rss_before_kib": before, "rss_after_kib": after,
        "bytes_per_conn": (after - before) * 1024 / len(conns) if conns else None,
        "open_seconds": opened_s,
    }
    with open(a.out, "a") as f:
        f.write(json.dumps(r) + "\n")
    per = r["bytes_per_conn"]
    print(f"  {a.target:9} {r['scenario']} ({a.requests} req/conn, {bad} failed)  "
          f"{len(conns)} open ({failed} failed, {alive} still open)  "
          f"RSS {before} -> {after} KiB  = {per / 1024 if per else 0:.1f} KiB/conn")


if __name__ == "__main__":
    main()
