"""Trivial HTTP/1.1 upstream for scripts/tlsfuzzer.sh: answers every request with one short
response, written with a single send.

tlsfuzzer's scripts send `GET / HTTP/1.0` and expect exactly one ApplicationData record back
before the close_notify. certgate relays what the app writes as it arrives, so an app that
writes its head and body separately (python3 -m http.server does) can produce two records,
which those scripts report as "Unexpected message from peer: ApplicationData". One write per
response keeps the run about TLS, not about the app's write pattern.

Usage: upstream.py PORT
"""
import http.server
import sys

BODY = b"hello from upstream\n"


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, Content-Length framed

    def log_message(self, fmt, *args):
        pass  # thousands of requests; keep the log small

    def _answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        body = b"" if self.command == "HEAD" else BODY
        head = (
            "HTTP/1.1 200 OK\r\n"
            "Content-Type: text/plain\r\n"
            f"Content-Length: {len(BODY)}\r\n"
            "\r\n"
        ).encode()
        self.wfile.write(head + body)
        self.wfile.flush()

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_OPTIONS = do_PATCH = _answer


http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
