"""The raw side of h2_peer.py: an HTTP/2 connection over TLS driven frame by frame, for the
frames the `h2` library refuses to produce (attacks, malformed requests). Frames are
serialized and parsed by `hyperframe`, header blocks encoded and decoded by `hpack` (the
same project's framing and HPACK layers; no HPACK by hand). Also the TLS connect shared with
h2_peer.py and the catalogue of malformed requests.
"""
import select
import socket
import ssl
import time

import hpack
from h2.errors import ErrorCodes
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
FRAME = 16384


def code_name(code):
    try:
        return ErrorCodes(code).name
    except ValueError:
        return hex(code)


def pattern(n):
    """The echo app's body pattern (certgate::demo::echo::pattern)."""
    block = bytes(range(251))
    return (block * (n // 251 + 1))[:n]


CONTEXT = None


def tls_connect(a, session=None):
    """A TLS connection to the target; one SSLContext per run, so that a later connection can
    resume an earlier one's session."""
    global CONTEXT
    if CONTEXT is None:
        if a.ca:
            ctx = ssl.create_default_context(cafile=a.ca)
        else:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if a.cert:
            ctx.load_cert_chain(a.cert, a.key)
        if a.alpn != "none":
            ctx.set_alpn_protocols(a.alpn.split(","))
        CONTEXT = ctx
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if a.rcvbuf:
        # Before connect, so the window the server is offered stays small (no autotuning).
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, a.rcvbuf)
    raw.settimeout(a.timeout)
    raw.connect((a.host, a.port))
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return CONTEXT.wrap_socket(raw, server_hostname=a.sni, session=session)


def elapsed_ms(t0):
    return round((time.monotonic() - t0) * 1000, 3)


# ---- frame by frame ----------------------------------------------------------------------


class Raw:
    """A TLS connection speaking HTTP/2 frame by frame: frames serialized by hyperframe,
    header blocks by hpack; incoming frames parsed and recorded per stream."""

    def __init__(self, a, settings=None, auto_window=True):
        self.a = a
        self.sock = tls_connect(a)
        self.alpn = self.sock.selected_alpn_protocol()
        self.enc = hpack.Encoder()
        self.dec = hpack.Decoder()
        self.dec.max_header_list_size = 1 << 24
        self.auto_window = auto_window
        self.buf = bytearray()
        self.block = None  # (stream id, fragments) of a header block still open
        self.streams = {}
        self.goaway = None
        self.closed = False  # the read side ended (EOF or error)
        self.write_failed = False  # a write failed: the peer is gone, but may have said why
        self.server_settings = {}
        self.frames_in = 0
        self.send_bytes(PREFACE + SettingsFrame(0, settings or {}).serialize())

    def send_bytes(self, data):
        """Sends; False once the peer is gone or (after the timeout) no longer reads. A failed
        write leaves the read side alone: a GOAWAY sent before the close may still be there."""
        if self.closed or self.write_failed:
            return False
        try:
            self.sock.settimeout(self.a.timeout)
            self.sock.sendall(data)
            return True
        except (socket.timeout, TimeoutError):
            return False
        except (OSError, ssl.SSLError):
            self.write_failed = True
            return False

    def gone(self):
        """The server ended the connection: GOAWAY, a close, or a write that failed."""
        return bool(self.goaway) or self.closed or self.write_failed

    def send(self, *frames):
        return self.send_bytes(b"".join(f.serialize() for f in frames))

    def header_frames(self, sid, block, end_stream=True, end_headers=True):
        """HEADERS (+ CONTINUATION) frames carrying an encoded block."""
        chunks = [block[i:i + FRAME] for i in range(0, len(block), FRAME)] or [b""]
        first = HeadersFrame(sid, chunks[0])
        if end_stream:
            first.flags.add("END_STREAM")
        frames = [first] + [ContinuationFrame(sid, c) for c in chunks[1:]]
        if end_headers:
            frames[-1].flags.add("END_HEADERS")
        return frames

    def stream(self, sid):
        return self.streams.setdefault(sid, {"status": None, "headers": [], "body_len": 0,
                                             "ended": False, "reset": None})

    def poll(self, timeout):
        """Reads what arrives within `timeout` seconds, then whatever else is already there
        (up to 4 MiB); False when nothing came."""
        got = 0
        while not self.closed and got < 4 << 20:
            if not self.sock.pending():
                try:
                    ready, _, _ = select.select([self.sock], [], [], timeout if not got else 0)
                except (OSError, ValueError):
                    self.closed = True
                    break
                if not ready:
                    break
            try:
                self.sock.settimeout(max(timeout, 0.05))
                chunk = self.sock.recv(1 << 16)
            except (socket.timeout, TimeoutError, ssl.SSLWantReadError):
                break
            except (OSError, ssl.SSLError):
                chunk = b""
            if not chunk:
                self.closed = True
                break
            got += len(chunk)
            self.buf += chunk
            self.parse()
        return got > 0

    def parse(self):
        while len(self.buf) >= 9:
            frame, length = Frame.parse_frame_header(memoryview(self.buf[:9]))
            if len(self.buf) < 9 + length:
                return
            frame.parse_body(memoryview(self.buf[9:9 + length]))
            del self.buf[:9 + length]
            self.frames_in += 1
            self.on_frame(frame)

    def on_frame(self, f):
        reply = []
        if isinstance(f, SettingsFrame) and "ACK" not in f.flags:
            self.server_settings.update(f.settings)
            reply.append(SettingsFrame(0, flags=["ACK"]))
        elif isinstance(f, PingFrame) and "ACK" not in f.flags:
            reply.append(PingFrame(0, f.opaque_data, flags=["ACK"]))
        elif isinstance(f, (HeadersFrame, ContinuationFrame)):
            if isinstance(f, HeadersFrame):
                self.block = (f.stream_id, [f.data], "END_STREAM" in f.flags)
            elif self.block:
                self.block[1].append(f.data)
            if "END_HEADERS" in f.flags and self.block:
                sid, parts, end = self.block
                self.block = None
                s = self.stream(sid)
                try:
                    headers = self.dec.decode(b"".join(parts), raw=True)
                except hpack.HPACKError as e:
                    s["hpack_error"] = str(e)
                    headers = []
                pairs = [[n.decode("latin-1"), v.decode("latin-1")] for n, v in headers]
                if s["status"] is None:
                    s["headers"] = pairs
                    for n, v in pairs:
                        if n == ":status":
                            s["status"] = int(v)
                else:
                    s["trailers"] = pairs
                s["ended"] = s["ended"] or end
        elif isinstance(f, DataFrame):
            s = self.stream(f.stream_id)
            s["body_len"] += len(f.data)
            if self.a.show_body:
                s["body"] = s.get("body", "") + f.data.decode("latin-1")
            s["ended"] = s["ended"] or "END_STREAM" in f.flags
            n = f.flow_controlled_length
            if self.auto_window and n:
                reply += [WindowUpdateFrame(0, n), WindowUpdateFrame(f.stream_id, n)]
        elif isinstance(f, RstStreamFrame):
            self.stream(f.stream_id)["reset"] = code_name(f.error_code)
        elif isinstance(f, GoAwayFrame):
            self.goaway = {"code": code_name(f.error_code), "last_stream": f.last_stream_id,
                           "debug": f.additional_data.decode("latin-1")}
        if reply:
            self.send(*reply)

    def wait(self, done, seconds):
        """Reads until done() holds, the connection closes, or `seconds` pass."""
        until = time.monotonic() + seconds
        while not done() and not self.closed and time.monotonic() < until:
            self.poll(min(0.2, max(0.0, until - time.monotonic())))
        return done()

    def wait_stream(self, sid, seconds):
        def over():
            s = self.streams.get(sid)
            return bool(s and (s["ended"] or s["reset"])) or self.goaway is not None
        return self.wait(over, seconds)

    def drain(self, seconds):
        """Reads for up to `seconds` until the server says GOAWAY or closes."""
        self.wait(lambda: self.goaway is not None, seconds)
        # A GOAWAY is usually followed by the close; give it a moment.
        self.wait(lambda: False, min(seconds, 0.5)) if self.goaway and not self.closed else None

    def report(self, t0, **more):
        out = {"alpn": self.alpn, "goaway": self.goaway and self.goaway["code"],
               "goaway_last_stream": self.goaway and self.goaway["last_stream"],
               "goaway_debug": self.goaway and self.goaway["debug"],
               "closed": self.closed or self.write_failed, "ms": elapsed_ms(t0)}
        out.update(more)
        return out

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def base_headers(a, method=b"GET", path=None):
    return [(b":method", method), (b":scheme", b"https"),
            (b":path", (path or a.path).encode()), (b":authority", a.authority.encode())]


# ---- malformed requests (RFC 9113 section 8) ---------------------------------------------

SMUGGLE = b"a\r\n\r\nGET /smuggled HTTP/1.1"


def malformed_cases(a):
    """name -> (header list, DATA payload or None). `valid` and `te-trailers` are controls."""
    base = base_headers(a)
    post = base_headers(a, b"POST")

    def without(name):
        return [h for h in base if h[0] != name]

    def extra(*pairs):
        return base + list(pairs)

    return {
        "valid": (base, None),
        "te-trailers": (extra((b"te", b"trailers")), None),
        "uppercase-name": (extra((b"X-Upper", b"1")), None),
        "uppercase-xfcc": (extra((b"X-Forwarded-Client-Cert", b"Hash=forged")), None),
        "cr-in-value": (extra((b"x-v", b"a\rb")), None),
        "lf-in-value": (extra((b"x-v", b"a\nb")), None),
        "nul-in-value": (extra((b"x-v", b"a\x00b")), None),
        "space-in-name": (extra((b"x v", b"1")), None),
        "connection": (extra((b"connection", b"keep-alive")), None),
        "transfer-encoding": (post + [(b"transfer-encoding", b"chunked")], b"5\r\nhello\r\n0\r\n\r\n"),
        "keep-alive": (extra((b"keep-alive", b"timeout=5")), None),
        "upgrade": (extra((b"upgrade", b"websocket")), None),
        "proxy-connection": (extra((b"proxy-connection", b"keep-alive")), None),
        "te-gzip": (extra((b"te", b"gzip")), None),
        "missing-method": (without(b":method"), None),
        "missing-path": (without(b":path"), None),
        "missing-scheme": (without(b":scheme"), None),
        "empty-path": ([(b":path", b"") if h[0] == b":path" else h for h in base], None),
        "duplicate-path": (base + [(b":path", b"/other")], None),
        "pseudo-after-regular": (without(b":authority") + [(b"x-a", b"1"),
                                                           (b":authority", a.authority.encode())], None),
        "unknown-pseudo": (extra((b":foo", b"bar")), None),
        "status-in-request": (extra((b":status", b"200")), None),
        "content-length-more": (post + [(b"content-length", b"10")], b"x" * 20),
        "content-length-less": (post + [(b"content-length", b"20")], b"x" * 10),
        "authority-host-mismatch": (extra((b"host", b"other.example")), None),
        "smuggle-value": (extra((b"x", SMUGGLE)), None),
        "smuggle-path": ([(b":path", b"/ HTTP/1.1\r\nHost: x\r\n\r\nGET /smuggled")
                          if h[0] == b":path" else h for h in base], None),
        "smuggle-method": ([(b":method", b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\nGET")
                            if h[0] == b":method" else h for h in base], None),
    }
