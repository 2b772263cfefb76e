"""gRPC peers for certgate's end-to-end tests, on grpcio (PyPI): a server on plain h2c and a
client that runs each scenario against a target (certgate over TLS, or the server directly).
The service is bytes in, bytes out (generic handlers; no protoc):

    /certgate.test.Probe/Echo     unary: the request back; trailing metadata `seen-xfcc` is
                                  the x-forwarded-client-cert the server saw ("-" if none).
    /certgate.test.Probe/Whoami   unary: JSON {metadata name: [values]} of the request.
    /certgate.test.Probe/Chat     bidi: b"echo:" + each message; the first message is a tag
                                  under which the server records how the stream ended.
    /certgate.test.Probe/Slow     unary: sleeps the request's seconds (ASCII float), records
                                  whether the client went away first.
    /certgate.test.Probe/Fail     unary: request JSON {"code": NAME, "details": TEXT}; fails
                                  with that status and trailing metadata x-why: because.
    /certgate.test.Probe/Report   unary: JSON of what the server saw: calls per method, and
                                  per Chat tag / Slow call {"received", "completed", "cancelled"}.

    grpc_peer.py server
        Listens on 127.0.0.1 (free port, printed as the first stdout line; nothing after it).
    grpc_peer.py client TARGET [--ca CA --cert CERT --key KEY | --plaintext]
            [--name localhost] [--messages N] [--large BYTES] [--scenario NAME ...]
        Runs the scenarios (default all: unary, spoof, bidi, status, deadline, cancel, large)
        and prints one JSON object {scenario: result}; a failed call is reported as
        {"error": code, "details": ...}, never as a traceback.
"""
import argparse
import json
import sys
import threading
import time
import uuid
from concurrent import futures

import grpc

SERVICE = "certgate.test.Probe"
LIMIT = 64 << 20
OPTIONS = [("grpc.max_send_message_length", LIMIT), ("grpc.max_receive_message_length", LIMIT)]


class Seen:
    """What the server observed, returned by Report."""

    def __init__(self):
        self.lock = threading.Lock()
        self.calls = {}
        self.streams = {}

    def count(self, method):
        with self.lock:
            self.calls[method] = self.calls.get(method, 0) + 1

    def track(self, tag, context):
        """Records `tag`'s stream; `completed` is set by the handler, `cancelled` when the
        RPC ended before that (the client cancelled, or its deadline passed)."""
        state = {"received": 0, "completed": False, "cancelled": False}
        with self.lock:
            self.streams[tag] = state

        def ended():
            with self.lock:
                if not state["completed"]:
                    state["cancelled"] = True

        context.add_callback(ended)
        return state


def serve():
    seen = Seen()

    def xfcc(context):
        values = [v for k, v in context.invocation_metadata() if k == "x-forwarded-client-cert"]
        return "|".join(values) if values else "-"

    def echo(request, context):
        seen.count("Echo")
        context.set_trailing_metadata([("seen-xfcc", xfcc(context))])
        return request

    def whoami(request, context):
        seen.count("Whoami")
        md = {}
        for k, v in context.invocation_metadata():
            md.setdefault(k, []).append(v if isinstance(v, str) else v.hex())
        return json.dumps(md).encode()

    def chat(requests, context):
        seen.count("Chat")
        state = None
        for msg in requests:
            if state is None:
                state = seen.track(msg.decode(), context)
            state["received"] += 1
            yield b"echo:" + msg
        # grpc may end a cancelled call's request iterator as if the client had half-closed
        # (its receive finds no message before the cancellation is recorded): only a call
        # still active a moment later completed.
        time.sleep(0.1)
        if state is not None and context.is_active():
            state["completed"] = True

    def slow(request, context):
        seen.count("Slow")
        seconds, _, tag = request.decode().partition(" ")
        state = seen.track(tag or "slow", context)
        until = time.monotonic() + float(seconds)
        while time.monotonic() < until and context.is_active():
            time.sleep(0.01)
        if context.is_active():
            state["completed"] = True
        return b"done"

    def fail(request, context):
        seen.count("Fail")
        want = json.loads(request)
        context.set_trailing_metadata([("x-why", "because")])
        context.abort(getattr(grpc.StatusCode, want["code"]), want["details"])

    def report(request, context):
        with seen.lock:
            return json.dumps({"calls": seen.calls, "streams": seen.streams}).encode()

    unary = grpc.unary_unary_rpc_method_handler
    handlers = {
        "Echo": unary(echo),
        "Whoami": unary(whoami),
        "Chat": grpc.stream_stream_rpc_method_handler(chat),
        "Slow": unary(slow),
        "Fail": unary(fail),
        "Report": unary(report),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=32), options=OPTIONS)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers)])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    server.wait_for_termination()


# ---- client ------------------------------------------------------------------------------


def channel(a):
    options = list(OPTIONS)
    if a.plaintext:
        return grpc.insecure_channel(a.target, options=options)
    read = lambda p: open(p, "rb").read() if p else None  # noqa: E731
    creds = grpc.ssl_channel_credentials(read(a.ca), read(a.key), read(a.cert))
    options.append(("grpc.ssl_target_name_override", a.name))
    return grpc.secure_channel(a.target, creds, options=options)


def method(ch, name, kind="unary_unary"):
    return getattr(ch, kind)(f"/{SERVICE}/{name}")


def failed(e):
    return {"error": e.code().name, "details": e.details(),
            "trailers": [[k, v] for k, v in (e.trailing_metadata() or [])]}


def report(ch):
    return json.loads(method(ch, "Report")(b"", timeout=10))


def wait_stream(ch, tag, seconds=5):
    """The server's record of `tag`, once it has ended (or after `seconds`)."""
    until = time.monotonic() + seconds
    while True:
        state = report(ch)["streams"].get(tag)
        if (state and (state["completed"] or state["cancelled"])) or time.monotonic() > until:
            return state
        time.sleep(0.05)


def unary(ch, a):
    payload = b"hello over h2"
    resp, call = method(ch, "Echo").with_call(payload, timeout=10)
    trailers = dict(call.trailing_metadata())
    return {"ok": resp == payload, "code": call.code().name, "xfcc": trailers.get("seen-xfcc")}


def spoof(ch, a):
    md = [("x-forwarded-client-cert", "Hash=forged"), ("x_forwarded_client_cert", "forged"),
          ("x-other", "kept")]
    seen = json.loads(method(ch, "Whoami")(b"", metadata=md, timeout=10))
    return {"metadata": seen}


def bidi(ch, a):
    tag = f"bidi-{uuid.uuid4()}"
    msgs = [tag.encode()] + [f"m{i}".encode() * (i % 7 + 1) for i in range(a.messages - 1)]
    replies = list(method(ch, "Chat", "stream_stream")(iter(msgs), timeout=30))
    state = wait_stream(ch, tag)
    return {"sent": len(msgs), "received": len(replies),
            "in_order": replies == [b"echo:" + m for m in msgs], "server": state}


def status(ch, a):
    details = "no such widget: 42 (ünïcode, %, 100%)"
    try:
        method(ch, "Fail")(json.dumps({"code": "NOT_FOUND", "details": details}).encode(),
                           timeout=10)
        return {"error": None}
    except grpc.RpcError as e:
        out = failed(e)
        out["details_intact"] = e.details() == details
        return out


def deadline(ch, a):
    tag = f"slow-{uuid.uuid4()}"
    t0 = time.monotonic()
    try:
        method(ch, "Slow")(f"3 {tag}".encode(), timeout=0.5)
        out = {"error": None}
    except grpc.RpcError as e:
        out = failed(e)
    out["ms"] = round((time.monotonic() - t0) * 1000)
    out["server"] = wait_stream(ch, tag)
    return out


def cancel(ch, a):
    tag = f"cancel-{uuid.uuid4()}"
    outbox = [tag.encode(), b"one", b"two"]
    gate = threading.Event()

    def requests():
        yield from outbox
        gate.wait(30)  # holds the stream open until the client cancels

    call = method(ch, "Chat", "stream_stream")(requests(), timeout=30)
    got = [next(call) for _ in outbox]
    call.cancel()
    try:
        next(call)
        after = "message"
    except grpc.RpcError as e:
        after = e.code().name
    except StopIteration:
        after = "end"
    finally:
        # Only now may the request stream end: released before the client saw the call end,
        # grpc could half-close the stream ahead of its RST_STREAM, and a handler that sees
        # its input end completes: a cancel after a half-close, not the mid-stream one meant.
        gate.set()
    return {"received_before": len(got), "after_cancel": after, "server": wait_stream(ch, tag)}


def large(ch, a):
    payload = bytes(range(256)) * (a.large // 256)
    t0 = time.monotonic()
    try:
        resp = method(ch, "Echo")(payload, timeout=60)
    except grpc.RpcError as e:
        return failed(e)
    return {"size": len(payload), "ok": resp == payload, "ms": round((time.monotonic() - t0) * 1000)}


SCENARIOS = {"unary": unary, "spoof": spoof, "bidi": bidi, "status": status,
             "deadline": deadline, "cancel": cancel, "large": large}


def client(a):
    out = {}
    with channel(a) as ch:
        for name in a.scenario or list(SCENARIOS):
            try:
                out[name] = SCENARIOS[name](ch, a)
            except grpc.RpcError as e:
                out[name] = failed(e)
        if a.report:
            out["report"] = report(ch)
    print(json.dumps(out), flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["server", "client"])
    p.add_argument("target", nargs="?")
    p.add_argument("--plaintext", action="store_true")
    p.add_argument("--ca")
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--name", default="localhost")
    p.add_argument("--messages", type=int, default=100)
    p.add_argument("--large", type=int, default=6 << 20)
    p.add_argument("--scenario", action="append", choices=sorted(SCENARIOS))
    p.add_argument("--report", action="store_true", help="also print the server's Report")
    a = p.parse_args()
    if a.mode == "server":
        serve()
    else:
        client(a)


if __name__ == "__main__":
    sys.exit(main())
