"""An HTTP/2 client over TLS for certgate's end-to-end tests: well-formed traffic through the
`h2` library (PyPI), and the frames `h2` refuses to produce (attacks, malformed requests)
serialized by `hyperframe` with header blocks from `hpack` (the same project's framing and
HPACK layers; no HPACK by hand). Each run prints one JSON line saying what happened.

    h2_peer.py SUBCOMMAND --port P [--host 127.0.0.1] [--sni localhost] [--ca CA]
               [--cert CERT --key KEY] [--alpn h2,http/1.1|none] [--timeout S] [options]

Subcommands (each prints {"cmd", "alpn", "ms", "goaway", "closed", ...}):
    get [--path P] [--streams K] [--header N:V ...] [--show-body] [--resume]
        K concurrent streams ("{i}" in the path becomes the stream's index); per stream:
        status, headers, trailers, body_len, sha256 (and body with --show-body), reset code.
        Without h2 from ALPN, one HTTP/1.1 request instead ("http": "1.1"). With --resume,
        the same again on a second connection resuming the first's TLS session.
    post --size N [--no-content-length]   like get, with an N-byte body (the echo pattern).
    latency [--count N] [--seconds S] [--fresh]   sequential GETs, N of them or for S seconds
        (one connection, or one each with --fresh): median_ms, p90_ms, max_ms, errors.
    rapid-reset [--count N] [--seconds S] [--reconnect]   HEADERS + RST_STREAM(CANCEL) loop.
    continuation-flood [--count N] [--seconds S] [--payload B]   HEADERS without END_HEADERS,
        then CONTINUATION frames of B bytes of valid HPACK (B = 0: empty frames).
    hpack-bomb [--refs N] [--value-size V]   one V-byte header into the dynamic table, then N
        one-byte references to it in the same block.
    settings-flood | ping-flood | empty-data-flood [--count N] [--seconds S] [--no-read]
        [--rcvbuf B] (a small receive buffer: a server that stops reading shows within seconds)
    zero-window [--path P] [--hold S]   SETTINGS_INITIAL_WINDOW_SIZE 0, never a WINDOW_UPDATE.
    malformed --case NAME   (--case list prints the names) one request on stream 1, then, if
        the connection survives, a valid GET on stream 3 ("followup_status").
"""
import argparse
import hashlib
import json
import os
import socket
import ssl
import statistics
import sys
import time

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import hpack
from h2.errors import ErrorCodes
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from h2_raw import (  # noqa: E402
    Raw,
    base_headers,
    code_name,
    elapsed_ms,
    malformed_cases,
    pattern,
    tls_connect,
)

# ---- well-formed traffic: the h2 library -------------------------------------------------


def request_headers(a, path, method, extra, length=None):
    h = [(":method", method), (":scheme", "https"), (":path", path), (":authority", a.authority)]
    if length is not None:
        h.append(("content-length", str(length)))
    for item in extra:
        name, value = item.split(":", 1)
        h.append((name.strip(), value.strip()))
    return h


def http11_fallback(a, sock, path, method, body):
    """ALPN chose no h2: one HTTP/1.1 request, to show which protocol the server speaks."""
    head = f"{method} {path} HTTP/1.1\r\nHost: {a.authority}\r\nConnection: close\r\n"
    if body is not None:
        head += f"Content-Length: {len(body)}\r\n"
    sock.sendall(head.encode() + b"\r\n" + (body or b""))
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except (OSError, ssl.SSLError):
            break
        if not chunk:
            break
        data += chunk
    line = data.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split(" ")
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
    return {"http": "1.1", "status_line": line, "status": status, "response_len": len(data)}


def h2_requests(a, reqs, sock=None):
    """Runs requests (path, method, extra headers, body or None) concurrently on one
    connection with the h2 library; returns the report."""
    t0 = time.monotonic()
    sock = sock or tls_connect(a)
    out = {"alpn": sock.selected_alpn_protocol(), "goaway": None, "closed": False}
    if out["alpn"] != "h2":
        path, method, _, body = reqs[0]
        out.update(http11_fallback(a, sock, path, method, body))
        out["ms"] = elapsed_ms(t0)
        out["resumed"] = sock.session_reused
        return out
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
    )
    conn.initiate_connection()
    conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 24})
    conn.increment_flow_control_window(1 << 30)
    sock.sendall(conn.data_to_send())
    results = {}
    pending = list(enumerate(reqs))
    sending = {}  # stream id -> remaining body bytes
    got_settings = False
    deadline = t0 + a.timeout

    def open_some():
        limit = conn.remote_settings.max_concurrent_streams
        while pending and conn.open_outbound_streams < limit:
            i, (path, method, extra, body) = pending.pop(0)
            sid = conn.get_next_available_stream_id()
            length = None if body is None or a.no_content_length else len(body)
            conn.send_headers(sid, request_headers(a, path, method, extra, length),
                              end_stream=body is None)
            results[sid] = {"i": i, "path": path, "status": None, "headers": [],
                            "trailers": [], "body_len": 0, "reset": None, "ended": False,
                            "_hash": hashlib.sha256(), "_body": bytearray()}
            if body is not None:
                sending[sid] = memoryview(body)

    def pump_bodies():
        for sid in list(sending):
            rest = sending[sid]
            while rest:
                window = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
                if window <= 0:
                    break
                conn.send_data(sid, bytes(rest[:window]))
                rest = rest[window:]
            sending[sid] = rest
            if not rest:
                conn.end_stream(sid)
                del sending[sid]

    while True:
        if got_settings:
            open_some()
            pump_bodies()
        data = conn.data_to_send()
        if data:
            sock.sendall(data)
        if got_settings and not pending and all(r["ended"] or r["reset"] for r in results.values()):
            break
        if out["goaway"] or time.monotonic() > deadline:
            break
        try:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = sock.recv(1 << 16)
        except (socket.timeout, TimeoutError):
            break
        except (OSError, ssl.SSLError):
            chunk = b""
        if not chunk:
            out["closed"] = True
            break
        for ev in conn.receive_data(chunk):
            if isinstance(ev, h2.events.RemoteSettingsChanged):
                got_settings = True
            elif isinstance(ev, h2.events.ResponseReceived):
                r = results[ev.stream_id]
                r["headers"] = [[n, v] for n, v in ev.headers]
                r["status"] = int(dict(ev.headers)[":status"])
            elif isinstance(ev, h2.events.TrailersReceived):
                results[ev.stream_id]["trailers"] = [[n, v] for n, v in ev.headers]
            elif isinstance(ev, h2.events.DataReceived):
                r = results[ev.stream_id]
                r["body_len"] += len(ev.data)
                r["_hash"].update(ev.data)
                if a.show_body:
                    r["_body"] += ev.data
                conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                results[ev.stream_id]["ended"] = True
            elif isinstance(ev, h2.events.StreamReset):
                if ev.stream_id in results:
                    results[ev.stream_id]["reset"] = code_name(ev.error_code)
                sending.pop(ev.stream_id, None)
            elif isinstance(ev, h2.events.ConnectionTerminated):
                out["goaway"] = code_name(ev.error_code)
                out["goaway_last_stream"] = ev.last_stream_id
    streams = []
    for r in sorted(results.values(), key=lambda r: r["i"]):
        r["sha256"] = r.pop("_hash").hexdigest()
        body = r.pop("_body")
        if a.show_body:
            r["body"] = body.decode("latin-1")
        del r["i"]
        streams.append(r)
    out["streams"] = streams
    out["unsent"] = len(pending)
    out["ms"] = elapsed_ms(t0)
    out["resumed"] = sock.session_reused
    out["_session"] = sock.session
    try:
        conn.close_connection()
        sock.sendall(conn.data_to_send())
        sock.close()
    except (OSError, ssl.SSLError, h2.exceptions.ProtocolError):
        pass
    return out


def cmd_get(a, method="GET", body=None):
    """The requests on one connection; with --resume, again on a second connection that
    resumes the first one's TLS session ({"first", "second"})."""
    reqs = [(a.path.replace("{i}", str(i)), method, a.header, body) for i in range(a.streams)]
    first = h2_requests(a, reqs)
    session = first.pop("_session", None)
    if not a.resume:
        return first
    second = h2_requests(a, reqs, tls_connect(a, session=session))
    second.pop("_session", None)
    return {"first": first, "second": second}


def cmd_post(a):
    return cmd_get(a, "POST", pattern(a.size))


def cmd_latency(a):
    """Sequential GETs until --count are done or --seconds have passed; the spread of their
    times (a stall of the server shows in max_ms, a slowdown in the median)."""
    samples, errors = [], 0
    count = a.count or 200
    sock = None if a.fresh else tls_connect(a)
    conn = None
    start = time.monotonic()
    while len(samples) + errors < count and time.monotonic() - start < a.seconds:
        t0 = time.monotonic()
        try:
            if a.fresh:
                r = h2_requests(a, [(a.path, "GET", a.header, None)])
                r.pop("_session", None)
                ok = r.get("streams") and r["streams"][0]["status"] == 200
            else:
                conn, ok = latency_one(a, sock, conn)
        except Exception:  # noqa: BLE001 - a failed request is a data point, not a crash
            ok = False
        if ok:
            samples.append((time.monotonic() - t0) * 1000)
        else:
            errors += 1
    samples.sort()
    out = {"count": len(samples) + errors, "errors": errors}
    if samples:
        out.update(median_ms=round(statistics.median(samples), 3),
                   p90_ms=round(samples[int(len(samples) * 0.9) - 1 if len(samples) > 1 else 0], 3),
                   max_ms=round(samples[-1], 3), min_ms=round(samples[0], 3))
    return out


def latency_one(a, sock, conn):
    """One GET on a kept connection (made on first use); returns (conn, ok)."""
    if conn is None:
        conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        conn.initiate_connection()
        sock.sendall(conn.data_to_send())
    sid = conn.get_next_available_stream_id()
    conn.send_headers(sid, request_headers(a, a.path, "GET", a.header), end_stream=True)
    sock.sendall(conn.data_to_send())
    status = None
    sock.settimeout(a.timeout)
    while True:
        chunk = sock.recv(1 << 16)
        if not chunk:
            raise ConnectionError("closed")
        for ev in conn.receive_data(chunk):
            if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == sid:
                status = int(dict(ev.headers)[":status"])
            elif isinstance(ev, h2.events.DataReceived):
                conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, (h2.events.StreamEnded, h2.events.StreamReset)) \
                    and ev.stream_id == sid:
                data = conn.data_to_send()
                if data:
                    sock.sendall(data)
                return conn, status == 200 and isinstance(ev, h2.events.StreamEnded)
        data = conn.data_to_send()
        if data:
            sock.sendall(data)


# ---- raw frames: what h2 will not send ---------------------------------------------------


def over(a, t0, n):
    return n >= (a.count or 100000) or time.monotonic() - t0 > a.seconds


def cmd_rapid_reset(a):
    """Streams opened and cancelled at once, 50 per write; with --reconnect a closed
    connection is replaced until --count or --seconds run out."""
    t0 = time.monotonic()
    conns, first, total, responses = 1, None, 0, 0
    raw = Raw(a)
    sid, on_conn = 1, 0
    while not over(a, t0, total):
        frames = []
        for _ in range(50):
            block = raw.enc.encode(base_headers(a))
            frames += raw.header_frames(sid, block) + [RstStreamFrame(sid, ErrorCodes.CANCEL)]
            sid += 2
        if raw.send(*frames):
            total += 50
            on_conn += 50
        raw.poll(0)
        if raw.gone():
            raw.drain(1.0)
            responses += sum(1 for s in raw.streams.values() if s["status"])
            if first is None:
                first = raw.report(t0, streams=on_conn)
            if not a.reconnect:
                break
            raw.close()
            raw, sid, on_conn, conns = Raw(a), 1, 0, conns + 1
    last = None
    if not raw.gone():
        raw.drain(0.5)
        responses += sum(1 for s in raw.streams.values() if s["status"])
        last = raw.report(t0)
    raw.close()
    ended = first or last
    return {"streams": total, "connections": conns, "responses": responses,
            "first_goaway": first and first["goaway"],
            "first_goaway_last_stream": first and first["goaway_last_stream"],
            "first_closed_after": first and first["streams"],
            "goaway": ended["goaway"], "closed": bool(first), "ms": elapsed_ms(t0)}


def cmd_continuation_flood(a):
    t0 = time.monotonic()
    raw = Raw(a)
    raw.wait(lambda: bool(raw.server_settings), 2)
    first = raw.header_frames(1, raw.enc.encode(base_headers(a)), end_stream=True,
                              end_headers=False)
    raw.send(*first)
    n, sent = 0, 0
    while not over(a, t0, n) and not raw.gone():
        frames = []
        for _ in range(20):
            if a.payload:
                value = b"v" * max(1, a.payload - 12)
                # Never-indexed literals: every frame carries new bytes, none enter the table.
                data = raw.enc.encode([(b"x-c%d" % (n % 1000), value, True)])
            else:
                data = b""
            frames.append(ContinuationFrame(1, data))
            sent += len(data)
            n += 1
        if not raw.send(*frames):
            break
        raw.poll(0)
    raw.drain(3)
    s = raw.streams.get(1, {})
    out = raw.report(t0, frames=n, header_bytes=sent, status=s.get("status"),
                     reset=s.get("reset"))
    raw.close()
    return out


def cmd_hpack_bomb(a):
    t0 = time.monotonic()
    raw = Raw(a)
    raw.wait(lambda: bool(raw.server_settings), 2)
    big = (b"x-bomb", b"b" * a.value_size)
    block = raw.enc.encode(base_headers(a) + [big] * (a.refs + 1))
    raw.send(*raw.header_frames(1, block))
    raw.wait_stream(1, a.timeout)
    raw.drain(0.5) if raw.goaway else None
    s = raw.streams.get(1, {})
    out = raw.report(t0, block_bytes=len(block), decoded_bytes=(a.refs + 1) * (len(big[0]) + len(big[1])),
                     status=s.get("status"), reset=s.get("reset"))
    raw.close()
    return out


def flood(a, unit, start=()):
    """`start` frames, then the frame `unit` again and again, 1000 per write; reading what
    the server sends between writes unless --no-read. `send_blocked`: a write stalled for
    --timeout seconds (the server stopped reading)."""
    t0 = time.monotonic()
    raw = Raw(a)
    raw.wait(lambda: bool(raw.server_settings), 2)
    if start:
        raw.send(*start)
    batch = unit.serialize() * 1000
    n, blocked = 0, False
    while not over(a, t0, n) and not raw.gone():
        if not raw.send_bytes(batch):
            blocked = not raw.gone()
            break
        n += 1000
        if not a.no_read:
            raw.poll(0)
    raw.drain(3)
    out = raw.report(t0, frames=n, send_blocked=blocked, frames_in=raw.frames_in)
    raw.close()
    return out


def cmd_settings_flood(a):
    return flood(a, SettingsFrame(0, {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 65535}))


def cmd_ping_flood(a):
    return flood(a, PingFrame(0, b"flooding"))


def cmd_empty_data_flood(a):
    enc = hpack.Encoder()
    headers = HeadersFrame(1, enc.encode(base_headers(a, b"POST")), flags=["END_HEADERS"])
    # The stream's header block is encoded by a fresh encoder: the connection's own has not
    # been used yet, so both start from the same empty table.
    return flood(a, DataFrame(1, b""), [headers])


def cmd_zero_window(a):
    t0 = time.monotonic()
    raw = Raw(a, settings={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0}, auto_window=False)
    raw.send(*raw.header_frames(1, raw.enc.encode(base_headers(a))))
    closed_at = None
    until = time.monotonic() + a.hold
    while time.monotonic() < until and not raw.closed:
        raw.poll(0.2)
    if raw.closed:
        closed_at = elapsed_ms(t0)
    s = raw.streams.get(1, {})
    out = raw.report(t0, status=s.get("status"), body_len=s.get("body_len", 0),
                     reset=s.get("reset"), closed_after_ms=closed_at)
    raw.close()
    return out


# ---- malformed requests (RFC 9113 section 8) ---------------------------------------------

def cmd_malformed(a):
    cases = malformed_cases(a)
    if a.case == "list":
        return {"cases": sorted(cases)}
    headers, data = cases[a.case]
    t0 = time.monotonic()
    raw = Raw(a)
    raw.wait(lambda: bool(raw.server_settings), 2)
    # never-indexed: a bad field must not enter the server's table and taint the follow-up.
    block = raw.enc.encode([(n, v, True) for n, v in headers])
    frames = raw.header_frames(1, block, end_stream=data is None)
    if data is not None:
        frames.append(DataFrame(1, data, flags=["END_STREAM"]))
    raw.send(*frames)
    raw.wait_stream(1, a.timeout)
    s = raw.streams.get(1, {})
    out = {"case": a.case, "status": s.get("status"), "reset": s.get("reset"),
           "response_headers": s.get("headers"), "body_len": s.get("body_len"),
           "body": s.get("body")}
    follow = None
    if not raw.gone():
        block = raw.enc.encode(base_headers(a, path=a.followup_path))
        raw.send(*raw.header_frames(3, block))
        raw.wait_stream(3, a.timeout)
        follow = raw.streams.get(3, {})
    if raw.goaway and not raw.closed:
        raw.drain(1)
    out["followup_status"] = follow and follow.get("status")
    out["followup_reset"] = follow and follow.get("reset")
    res = raw.report(t0, **out)
    raw.close()
    return res


COMMANDS = {
    "get": cmd_get, "post": cmd_post, "latency": cmd_latency, "rapid-reset": cmd_rapid_reset,
    "continuation-flood": cmd_continuation_flood, "hpack-bomb": cmd_hpack_bomb,
    "settings-flood": cmd_settings_flood, "ping-flood": cmd_ping_flood,
    "empty-data-flood": cmd_empty_data_flood, "zero-window": cmd_zero_window,
    "malformed": cmd_malformed,
}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("cmd", choices=sorted(COMMANDS))
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--sni", default="localhost")
    p.add_argument("--authority", default=None, help="default: SNI:port")
    p.add_argument("--ca")
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--alpn", default="h2")
    p.add_argument("--timeout", type=float, default=10)
    p.add_argument("--path", default="/")
    p.add_argument("--followup-path", default="/followup")
    p.add_argument("--streams", type=int, default=1)
    p.add_argument("--header", action="append", default=[], metavar="NAME:VALUE")
    p.add_argument("--show-body", action="store_true")
    p.add_argument("--size", type=int, default=0)
    p.add_argument("--no-content-length", action="store_true")
    p.add_argument("--count", type=int, default=None,
                   help="frames/streams for floods (default 100000), requests for latency (200)")
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--fresh", action="store_true")
    p.add_argument("--reconnect", action="store_true")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--no-read", action="store_true")
    p.add_argument("--rcvbuf", type=int, default=0, help="SO_RCVBUF for the client socket")
    p.add_argument("--payload", type=int, default=64)
    p.add_argument("--refs", type=int, default=16000)
    p.add_argument("--value-size", type=int, default=4000)
    p.add_argument("--hold", type=float, default=5)
    p.add_argument("--case", default="list")
    a = p.parse_args()
    a.authority = a.authority or f"{a.sni}:{a.port}"
    try:
        out = COMMANDS[a.cmd](a)
    except (OSError, ssl.SSLError) as e:
        out = {"error": f"{type(e).__name__}: {e}"}
    out = {"cmd": a.cmd, **out}
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    sys.exit(main())
