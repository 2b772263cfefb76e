"""WebSocket peers for certgate's end-to-end tests, on the `websockets` library (PyPI).

    ws_peer.py server
        An echo server on 127.0.0.1 (free port, printed as the first stdout line). It answers
        "whoami" with the X-Forwarded-Client-Cert header of its upgrade request ("-" if none;
        all copies joined by "|" if several),
        "close-me" by closing with code 4001, and echoes everything else (text or binary).

    ws_peer.py client URL CA [CERT KEY]
        Runs the scenario below against URL (wss://) and prints one JSON object with what it
        saw; a failed step is reported in the JSON, never as a traceback.

    ws_peer.py idle URL CA SECONDS
        Connects, stays silent for SECONDS (no pings), then reports whether the connection
        was closed meanwhile.
"""
import asyncio
import json
import os
import ssl
import sys

import websockets


async def serve():
    async def handler(ws):
        names = ("X-Forwarded-Client-Cert", "X_Forwarded_Client_Cert")
        copies = [v for n in names for v in ws.request.headers.get_all(n)]
        xfcc = "|".join(copies) if copies else "-"
        async for message in ws:
            if message == "whoami":
                await ws.send(xfcc)
            elif message == "close-me":
                await ws.close(code=4001, reason="asked to")
                return
            else:
                await ws.send(message)

    def refuse_some(connection, request):
        # An ordinary HTTP answer to an upgrade request: the connection must stay HTTP.
        if request.path == "/forbidden":
            return connection.respond(403, "no websocket here\n")
        return None

    async with websockets.serve(
        handler, "127.0.0.1", 0, max_size=None, process_request=refuse_some
    ) as server:
        port = server.sockets[0].getsockname()[1]
        print(port, flush=True)
        await asyncio.Future()


def tls_context(ca, cert=None, key=None):
    ctx = ssl.create_default_context(cafile=ca)
    if cert:
        ctx.load_cert_chain(cert, key)
    return ctx


async def client(url, ca, cert=None, key=None):
    out = {}
    ctx = tls_context(ca, cert, key)
    # WS_SPOOF=1: the upgrade request carries forged identity headers, which must not arrive.
    spoof = {}
    if os.environ.get("WS_SPOOF") == "1":
        spoof = {"X-Forwarded-Client-Cert": "Hash=forged", "X_Forwarded_Client_Cert": "forged"}
    async with websockets.connect(
        url, ssl=ctx, max_size=None, ping_interval=None, additional_headers=spoof
    ) as ws:
        await ws.send("hello")
        out["echo_text"] = await ws.recv()
        big = os.urandom(3 * 1024 * 1024 + 17)
        await ws.send(big)
        out["echo_big_ok"] = (await ws.recv()) == big
        # A fragmented message: three frames, one message.
        await ws.send(["frag-", "mented-", "message"])
        out["echo_fragmented"] = await ws.recv()
        pong = await ws.ping(b"p1")
        await asyncio.wait_for(pong, 5)
        out["pong"] = True
        await ws.send("whoami")
        out["xfcc"] = await ws.recv()
        await ws.close(code=1000, reason="client done")
        out["client_close_code"] = ws.close_code
    # A second connection: the app closes first.
    async with websockets.connect(url, ssl=ctx, ping_interval=None) as ws:
        await ws.send("close-me")
        try:
            await asyncio.wait_for(ws.recv(), 5)
            out["server_close_code"] = None
        except websockets.ConnectionClosed as e:
            out["server_close_code"] = e.rcvd.code if e.rcvd else None
    print(json.dumps(out), flush=True)


async def idle(url, ca, seconds):
    ctx = tls_context(ca)
    async with websockets.connect(url, ssl=ctx, ping_interval=None, close_timeout=1) as ws:
        await ws.send("hello")
        await ws.recv()
        await asyncio.sleep(float(seconds))
        try:
            await asyncio.wait_for(ws.recv(), 5)
            closed = False
        except websockets.ConnectionClosed:
            closed = True
        except asyncio.TimeoutError:
            closed = False
    print(json.dumps({"closed": closed}), flush=True)


def main():
    mode = sys.argv[1]
    if mode == "server":
        asyncio.run(serve())
    elif mode == "client":
        asyncio.run(client(*sys.argv[2:]))
    elif mode == "idle":
        asyncio.run(idle(*sys.argv[2:]))
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
