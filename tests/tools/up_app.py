"""An upstream app for certgate's upstream-TLS and PROXY-out tests: TLS (optionally requiring a
client certificate), an optional PROXY header first, then HTTP/1.1 or a line echo.

    up_app.py [--proxy] [--tls CERT KEY] [--client-ca CA] [--http]

Listens on 127.0.0.1 (free port, printed as the first stdout line). For each connection it
prints one JSON line on stdout: the PROXY header it parsed (pp_peer.py's parser, independent
of certgate's encoder), whether TLS was resumed, and the client certificate's CN. With
`--http` it answers HTTP/1.1 requests with keep-alive:
  GET /bytes/N   -> N bytes of a repeating pattern
  POST /sha256   -> the SHA-256 (hex) and length of the request body
  GET /close     -> a JSON description, then the connection is closed
  anything else  -> a JSON description of the connection and of this request
Without `--http` it echoes lines ("echo:<line>") like pp_peer.py.
"""
import argparse
import hashlib
import itertools
import json
import os
import socket
import ssl
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pp_peer import parse_header  # noqa: E402

CONN_IDS = itertools.count(1)


def read_head(f):
    lines = []
    while True:
        line = f.readline(65536)
        if not line:
            return None
        if line in (b"\r\n", b"\n"):
            return lines
        lines.append(line.decode("latin-1").rstrip("\r\n"))


def serve_http(f, conn, info):
    requests = 0
    while True:
        head = read_head(f)
        if head is None:
            return
        requests += 1
        method, target, _ = head[0].split(" ", 2)
        headers = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            headers.setdefault(name.strip().lower(), []).append(value.strip())
        body = b""
        if "content-length" in headers:
            body = f.read(int(headers["content-length"][0]))
        close = target == "/close"
        if target.startswith("/bytes/"):
            n = int(target[len("/bytes/"):])
            pattern = b"0123456789abcdef"
            payload = (pattern * (n // len(pattern) + 1))[:n]
        elif target == "/sha256":
            payload = json.dumps({"sha256": hashlib.sha256(body).hexdigest(), "len": len(body)}).encode()
        else:
            payload = json.dumps(dict(info, request=requests, method=method, target=target,
                                      headers=headers)).encode()
        out = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n" % len(payload)
        out += b"Connection: close\r\n\r\n" if close else b"\r\n"
        conn.sendall(out + payload)
        if close:
            return


def serve_lines(f, conn):
    while True:
        line = f.readline(65536)
        if not line:
            conn.sendall(b"bye\n")
            return
        conn.sendall(b"echo:" + line)


def handle(raw, args, ctx):
    info = {"conn": next(CONN_IDS)}
    try:
        if args.proxy:
            header, rest = parse_header(raw)
            assert not rest, "bytes after the PROXY header were read by the parser"
            info["proxy"] = header
        conn = raw
        if ctx is not None:
            conn = ctx.wrap_socket(raw, server_side=True)
            info["resumed"] = conn.session_reused
            cert = conn.getpeercert()
            if cert:
                subject = dict(x[0] for x in cert["subject"])
                info["client_cn"] = subject.get("commonName")
    except Exception as e:  # reported, not raised: the test reads stdout
        info["error"] = str(e)
        print(json.dumps(info), flush=True)
        raw.close()
        return
    print(json.dumps(info), flush=True)
    with conn:
        f = conn.makefile("rb")
        try:
            if args.http:
                serve_http(f, conn, info)
            else:
                serve_lines(f, conn)
        except (OSError, ValueError):
            pass


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--proxy", action="store_true")
    p.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"))
    p.add_argument("--client-ca")
    p.add_argument("--http", action="store_true")
    args = p.parse_args()
    ctx = None
    if args.tls:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(*args.tls)
        if args.client_ca:
            ctx.load_verify_locations(args.client_ca)
            ctx.verify_mode = ssl.CERT_REQUIRED
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    print(srv.getsockname()[1], flush=True)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=handle, args=(conn, args, ctx), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
