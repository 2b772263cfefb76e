"""gRPC unary load for h2.sh: an upstream server on plain h2c and a load client over TLS.

Bytes in, bytes out (generic handlers, no protoc), on grpcio (PyPI):

    /loadtest.Echo/Echo   unary: the request back.
    /loadtest.Echo/Xfcc   unary: the x-forwarded-client-cert the server received ("" if none),
                          so h2.sh can check each terminator forwards the certificate.

    grpc_load.py server --port PORT
        Listens on 127.0.0.1:PORT (grpc.aio, one event loop: the cheapest grpcio server).
    grpc_load.py xfcc --port PORT --ca CA [--cert CERT --key KEY]
        One Xfcc call over TLS (server name localhost); prints the header the server saw.
    grpc_load.py client --port PORT --ca CA --cert CERT --key KEY
            [--channels 8] [--inflight 8] [--duration 10] [--size 16]
        Each channel is its own TLS connection (a local subchannel pool, so grpcio does not
        share one connection between channels) with `inflight` calls outstanding at all
        times: a finished call starts the next from its callback, until the duration is over.
        Prints one JSON object: ok, errors (by status code), calls/s, mean and p50/p99 latency.
"""
import argparse
import asyncio
import json
import threading
import time

import grpc

SERVICE = "loadtest.Echo"


def serve(port):
    async def echo(request, context):
        return request

    async def xfcc(request, context):
        seen = [v for k, v in context.invocation_metadata() if k == "x-forwarded-client-cert"]
        return ",".join(seen).encode()

    async def main():
        server = grpc.aio.server()
        handlers = {
            "Echo": grpc.unary_unary_rpc_method_handler(echo),
            "Xfcc": grpc.unary_unary_rpc_method_handler(xfcc),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    asyncio.run(main())


def channel(port, ca, cert, key):
    creds = grpc.ssl_channel_credentials(
        root_certificates=open(ca, "rb").read(),
        private_key=open(key, "rb").read() if key else None,
        certificate_chain=open(cert, "rb").read() if cert else None,
    )
    options = [
        ("grpc.ssl_target_name_override", "localhost"),
        # Without it, channels with the same target and options share one connection.
        ("grpc.use_local_subchannel_pool", 1),
    ]
    return grpc.secure_channel(f"127.0.0.1:{port}", creds, options)


def xfcc(a):
    with channel(a.port, a.ca, a.cert, a.key) as ch:
        call = ch.unary_unary(f"/{SERVICE}/Xfcc")
        print(call(b"", timeout=5).decode())


def load(a):
    payload = b"x" * a.size
    deadline = [0.0]
    lock = threading.Lock()
    done = threading.Event()
    state = {"ok": 0, "errors": {}, "latencies": [], "running": 0}

    def start(stub):
        t0 = time.monotonic()
        fut = stub.future(payload, timeout=10)
        fut.add_done_callback(lambda f: finished(stub, f, t0))

    def finished(stub, f, t0):
        now = time.monotonic()
        code = f.code()
        with lock:
            if code == grpc.StatusCode.OK:
                state["ok"] += 1
                state["latencies"].append(now - t0)
            else:
                state["errors"][code.name] = state["errors"].get(code.name, 0) + 1
            again = now < deadline[0]
            if not again:
                state["running"] -= 1
                if state["running"] == 0:
                    done.set()
        if again:
            start(stub)

    channels = [channel(a.port, a.ca, a.cert, a.key) for _ in range(a.channels)]
    stubs = [ch.unary_unary(f"/{SERVICE}/Echo") for ch in channels]
    for stub in stubs:  # connect (handshake) before the clock starts
        stub(payload, timeout=10)
    t_start = time.monotonic()
    deadline[0] = t_start + a.duration
    state["running"] = a.channels * a.inflight
    for stub in stubs:
        for _ in range(a.inflight):
            start(stub)
    done.wait(a.duration + 30)
    wall = time.monotonic() - t_start
    for ch in channels:
        ch.close()
    lat = sorted(state["latencies"])
    pick = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000 if lat else None
    print(json.dumps({
        "ok": state["ok"],
        "errors": state["errors"],
        "wall_s": wall,
        "rps": state["ok"] / wall if wall else 0.0,
        "mean_ms": sum(lat) * 1000 / len(lat) if lat else None,
        "p50_ms": pick(0.50),
        "p99_ms": pick(0.99),
        "channels": a.channels,
        "inflight": a.inflight,
    }))


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("server")
    s.add_argument("--port", type=int, required=True)
    for name in ("xfcc", "client"):
        c = sub.add_parser(name)
        c.add_argument("--port", type=int, required=True)
        c.add_argument("--ca", required=True)
        c.add_argument("--cert")
        c.add_argument("--key")
        if name == "client":
            c.add_argument("--channels", type=int, default=8)
            c.add_argument("--inflight", type=int, default=8)
            c.add_argument("--duration", type=float, default=10)
            c.add_argument("--size", type=int, default=16)
    a = ap.parse_args()
    if a.cmd == "server":
        serve(a.port)
    elif a.cmd == "xfcc":
        xfcc(a)
    else:
        load(a)


if __name__ == "__main__":
    main()
