"""Memory per idle mTLS connection: open N TLS connections that present a client certificate,
let each serve `--requests` requests (default 1; 0 = handshake only), leave them idle, and
measure how much the terminator's resident memory (sum of VmRSS of its process tree) grew,
divided by N. All connections are opened first, then each sends its requests, one at a time,
connection after connection, as a pool of mostly idle clients sends them: what is measured is
what an idle connection keeps.

`--mixed` sends 100 requests of mixed sizes on each connection instead: downloads
(`GET /d/<bytes>`, static files of the upstream) and uploads (`POST /u` with a body of that
size) in turn, bodies from 1 KiB to 256 KiB, small ones most often, then a 1 MiB download and a
1 MiB upload last (see `mixed_requests`; 2.7 MiB each way per connection; certgate's unit test
`idle_memory_tests` sends the same mix). Each connection runs its requests as soon as it is
open, and the figure is the growth from the first quarter of the connections to all of them,
divided by the other three quarters: the allocator keeps what the last large bodies freed,
and that would otherwise be charged to the connections. One warm-up connection runs the same
requests first, so first-use allocations (buffers grown for a large body, upstream
connections) are not counted either.

Many connections (crowd.sh's `many`): `--procs P` splits the N connections over P client
processes (each holds its share as descriptors, so each share stays under the open-file
limit), process i connecting from source address `--src-base` + i (127.0.0.2, 127.0.0.3, ...:
each address has its own ports, so no share runs out of them, and 127.0.0.1's ports stay for
the terminator's upstream connections). `--during CMD` runs CMD (a shell command: the busy
keep-alive clients) while the connections are idle and open, and records its oha JSON figures
and the terminator's CPU; `--during-baseline` runs it once before, without the idle ones.

    python3 idle_conns.py --target nginx --port 18444 --pid 1234 --n 2000 --requests 1 \
        --cert client.pem --key client.key --out work/results.jsonl
"""

import argparse
import ipaddress
import json
import multiprocessing
import resource
import socket
import ssl
import subprocess
import time

import procstat
from flood import oha_figures

IP_BIND_ADDRESS_NO_PORT = 24  # Linux: choose the source port at connect(), per 4-tuple


def make_ctx(cert, key):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the server cert is self-signed; trust is not under test
    ctx.load_cert_chain(cert, key)
    return ctx


def connect(ctx, port, src=None):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(30)
    # As curl and browsers do: a request head and its body written one after the other must not
    # wait for the server's delayed ACK (Nagle), which costs 40 ms per small upload.
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        if src:
            s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            s.bind((src, 0))
        s.connect(("127.0.0.1", port))
        return ctx.wrap_socket(s, server_hostname="localhost")  # handshake happens here
    except BaseException:
        s.close()
        raise


KIB = 1024
# Body sizes in KiB, small ones most often; requests 2k and 2k + 1 take SIZES[3k % 10].
SIZES = [1, 1, 1, 1, 2, 4, 8, 16, 64, 256]
UPLOAD_BLOCK = b"x" * (64 * KIB)


def mixed_requests():
    """100 (method, path, body bytes): downloads and uploads in turn, ending with a 1 MiB
    download and a 1 MiB upload, so what a large body leaves behind is there when the
    connection idles."""
    out = []
    for i in range(98):
        size = SIZES[(i // 2 * 3) % len(SIZES)] * KIB
        out.append(("GET", f"/d/{size}", 0) if i % 2 == 0 else ("POST", "/u", size))
    return out + [("GET", f"/d/{1024 * KIB}", 0), ("POST", "/u", 1024 * KIB)]


def request(conn, path, method="GET", body=0):
    """One keep-alive request (with `body` bytes of body); reads the response to its end
    (Content-Length framing)."""
    head = f"{method} {path} HTTP/1.1\r\nHost: localhost\r\n"
    if method != "GET":
        head += f"Content-Length: {body}\r\n"
    first = min(body, len(UPLOAD_BLOCK))
    conn.sendall((head + "\r\n").encode() + UPLOAD_BLOCK[:first])  # one TLS record if small
    left = body - first
    while left > 0:
        n = min(left, len(UPLOAD_BLOCK))
        conn.sendall(UPLOAD_BLOCK[:n])
        left -= n
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
    have = len(body)
    while have < length:
        chunk = conn.recv(262144)
        if not chunk:
            raise OSError("closed inside the body")
        have += len(chunk)
    return head.split(b" ", 2)[1]


def shmem_kib(root):
    """Sum of RssShmem of the tree, KiB: the part of VmRSS in shared memory (nginx's SSL session
    cache is a shared zone, filled as connections handshake), shown beside the total."""
    total = 0
    for pid in procstat.tree(root):
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("RssShmem:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            continue
    return total


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


def run_script(conns, script):
    """Request round after round over all connections; the number that failed."""
    bad = 0
    for method, path, body in script:
        for c in conns:
            try:
                bad += request(c, path, method, body) != b"200"
            except (OSError, ssl.SSLError):
                bad += 1
    return bad


def share(pipe, a, n, src, script):
    """One client process: open `n` connections from `src`, run the script on each, report,
    then hold them until the parent says "close" (answering "check" with how many are open)."""
    ctx = make_ctx(a.cert, a.key)
    conns, failed, err = [], 0, ""
    t0 = time.monotonic()
    for _ in range(n):
        try:
            conns.append(connect(ctx, a.port, src))
        except (OSError, ssl.SSLError) as e:
            failed += 1
            err = err or repr(e)
    opened_s = time.monotonic() - t0
    bad = run_script(conns, script)
    pipe.send({"opened": len(conns), "failed": failed, "bad": bad, "error": err,
               "open_seconds": opened_s, "request_seconds": time.monotonic() - t0 - opened_s})
    while pipe.recv() == "check":
        pipe.send(still_open(conns))
    for c in conns:
        c.close()


def during(cmd, pid, raw):
    """Run the busy clients' command (oha, JSON output) and the terminator's CPU meanwhile."""
    c0, t0 = procstat.cpu_ticks(pid), time.monotonic()
    p = subprocess.run(cmd, shell=True, capture_output=True, text=True)
    wall, ticks = time.monotonic() - t0, procstat.cpu_ticks(pid) - c0
    if raw:
        with open(raw, "w") as f:
            f.write(p.stdout + p.stderr)
    try:
        fig = oha_figures(p.stdout)
    except (ValueError, KeyError) as e:
        fig = {"error": f"busy clients' output unreadable ({e}); exit {p.returncode}"}
    fig["term_core_pct"] = 100.0 * ticks / procstat.CLK_TCK / wall
    return fig


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", required=True)
    ap.add_argument("--port", required=True, type=int)
    ap.add_argument("--pid", required=True, type=int)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--scenario", help="name in the result (default from the requests)")
    ap.add_argument("--tags", nargs="*", default=[], help="key=value pairs added to the result")
    ap.add_argument("--requests", type=int, default=1)
    ap.add_argument("--path", default="/")
    ap.add_argument("--mixed", action="store_true",
                    help="100 requests of mixed sizes per connection instead of --requests")
    ap.add_argument("--procs", type=int, default=1, help="client processes sharing the N")
    ap.add_argument("--src-base", default="127.0.0.2",
                    help="process i connects from this address + i ('' = let the kernel pick)")
    ap.add_argument("--during", help="shell command run while the connections idle (oha JSON)")
    ap.add_argument("--during-baseline", action="store_true",
                    help="run --during once before opening the idle connections, too")
    ap.add_argument("--during-raw", help="file for the command's output (.base appended for "
                                         "the baseline)")
    a = ap.parse_args()
    if a.mixed:
        script = mixed_requests()
        if a.procs != 1:
            ap.error("--mixed reads RSS between connections: one process only")
    else:
        script = [("GET", a.path, 0)] * a.requests

    # Each connection is one descriptor here; raise the soft limit as far as the hard one allows.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if -(-a.n // a.procs) > hard - 50:
        ap.error(f"{a.n} connections over {a.procs} processes: more than the open-file limit "
                 f"{hard} in one of them")
    ctx = make_ctx(a.cert, a.key)
    r = {"target": a.target}

    if a.during and a.during_baseline:
        r["busy_baseline"] = during(a.during, a.pid, a.during_raw and a.during_raw + ".base")
    # Warm up so one-time allocations (first handshake, lazily built tables, buffers grown for a
    # large body) are not counted.
    for i in range(20):
        c = connect(ctx, a.port)
        if i == 0:
            for method, path, body in script:
                if request(c, path, method, body) != b"200":
                    raise SystemExit(f"{a.target}: warm-up {method} {path} failed")
        c.close()
    time.sleep(1)
    before, shm_before = procstat.rss_kib(a.pid), shmem_kib(a.pid)

    mid, mid_n, pipes, kids = None, a.n // 4, [], []
    t0 = time.monotonic()
    if a.mixed:
        conns, failed, bad, err = [], 0, 0, ""
        src = a.src_base or None
        for i in range(a.n):
            if i == mid_n:
                time.sleep(2)
                mid, mid_n, shm_mid = procstat.rss_kib(a.pid), len(conns), shmem_kib(a.pid)
            try:
                c = connect(ctx, a.port, src)
            except (OSError, ssl.SSLError) as e:
                failed += 1
                err = err or repr(e)
                continue
            conns.append(c)
            # Each connection runs its script as soon as it is open: a server may close a
            # connection that waits long for its first request (nginx: client_header_timeout).
            for method, path, body in script:
                try:
                    bad += request(c, path, method, body) != b"200"
                except (OSError, ssl.SSLError):
                    bad += 1
                    break
        opened, opened_s, request_s = len(conns), time.monotonic() - t0, 0.0
    else:
        conns = []
        mp = multiprocessing.get_context("fork")
        for i in range(a.procs):
            n = a.n // a.procs + (i < a.n % a.procs)
            src = str(ipaddress.ip_address(a.src_base) + i) if a.src_base else None
            ours, theirs = mp.Pipe()
            k = mp.Process(target=share, args=(theirs, a, n, src, script), daemon=True)
            k.start()
            pipes.append(ours)
            kids.append(k)
        reports = []
        for p in pipes:
            try:
                reports.append(p.recv())
            except EOFError:
                reports.append({"opened": 0, "failed": 0, "bad": 0, "error": "client died",
                                "open_seconds": 0, "request_seconds": 0})
        opened = sum(x["opened"] for x in reports)
        failed = a.n - opened  # a client process that died counts all of its share
        bad = sum(x["bad"] for x in reports)
        err = next((x["error"] for x in reports if x["error"]), "")
        opened_s = max(x["open_seconds"] for x in reports)
        request_s = max(x["request_seconds"] for x in reports)
    # TLS 1.3: the client's certificate and Finished arrive after the client considers the
    # handshake done; give the server time to process them before measuring.
    time.sleep(2)
    after, shm_after = procstat.rss_kib(a.pid), shmem_kib(a.pid)

    def check():
        if a.mixed:
            return still_open(conns)
        n = 0
        for p in pipes:
            try:
                p.send("check")
                n += p.recv()
            except (EOFError, OSError):
                pass
        return n

    alive = check()
    if a.during:
        r["busy"] = during(a.during, a.pid, a.during_raw)
        r["still_open_after_busy"] = check()
    if a.mixed:
        for c in conns:
            c.close()
    for p in pipes:
        try:
            p.send("close")
        except OSError:
            pass
    for k in kids:
        k.join(30)

    scenario = a.scenario or ("idle-mtls-mixed" if a.mixed else
                              "idle-mtls" if a.requests else "idle-mtls-handshake-only")
    r.update({
        "scenario": scenario,
        "requests": len(script), "failed_requests": bad, "n": a.n, "opened": opened,
        "failed": failed, "first_error": err, "still_open": alive, "rss_before_kib": before,
        "rss_after_kib": after, "shmem_before_kib": shm_before, "shmem_after_kib": shm_after,
        "shmem_bytes_per_conn": (shm_after - shm_before) * 1024 / opened if opened else None,
        "bytes_per_conn": (after - before) * 1024 / opened if opened else None,
        "open_seconds": round(opened_s, 2), "request_seconds": round(request_s, 2),
        "procs": a.procs, "src_base": a.src_base,
    })
    if mid is not None and opened > mid_n:
        # The mixed case: what each connection after the first quarter added. What the last
        # connection's large bodies left in the allocator (freed, still resident) is in both
        # readings and cancels out; from `before`, it would be charged to the connections.
        r.update(bytes_per_conn_from_start=r["bytes_per_conn"], rss_mid_kib=mid,
                 mid_conns=mid_n, bytes_per_conn=(after - mid) * 1024 / (opened - mid_n),
                 shmem_mid_kib=shm_mid,
                 shmem_bytes_per_conn=(shm_after - shm_mid) * 1024 / (opened - mid_n))
    r.update(t.split("=", 1) for t in a.tags)
    with open(a.out, "a") as f:
        f.write(json.dumps(r) + "\n")
    per = r["bytes_per_conn"]
    via = f" -> {mid} ({mid_n} conns)" if mid is not None else ""
    print(f"  {a.target:9} {r['scenario']} ({len(script)} req/conn, {bad} failed)  "
          f"{opened} open in {opened_s:.1f} s ({failed} failed{': ' + err if err else ''}, "
          f"{alive} still open)  RSS {before}{via} -> {after} KiB  = "
          f"{per / 1024 if per else 0:.1f} KiB/conn (shared memory "
          f"{(r['shmem_bytes_per_conn'] or 0) / 1024:.1f})")
    for k in ("busy_baseline", "busy"):
        b = r.get(k)
        if b:
            print(f"  {'':9} {k}: p50 {b.get('p50_ms')} ms, p99 {b.get('p99_ms')} ms, "
                  f"{b.get('rps')} req/s, terminator core {b['term_core_pct']:.0f} %"
                  f"{', ' + b['error'] if 'error' in b else ''}")


if __name__ == "__main__":
    main()
