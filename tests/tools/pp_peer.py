"""A line-echo TCP app behind a PROXY-protocol sender, for certgate's `tcp` listener tests.

    pp_peer.py

Listens on 127.0.0.1 (free port, printed as the first stdout line). Each connection must start
with a PROXY header (v1 or v2); this script parses it itself, independently of certgate's
encoder, and prints what it found as one JSON line on stdout. Then it answers every line with
"echo:<line>", and when the client has finished sending (EOF) it writes "bye\\n" and closes:
so a test sees that half-close reached the app and that the app could still answer.
"""
import json
import socket
import struct
import sys
import threading

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def read_exact(conn, n, buf):
    # Never more than asked: what follows the header may be a TLS handshake (up_app.py).
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            raise EOFError("closed inside the PROXY header")
        buf += chunk
    return buf


def parse_tlvs(data):
    out = []
    while data:
        kind, length = data[0], struct.unpack("!H", data[1:3])[0]
        out.append((kind, data[3 : 3 + length]))
        data = data[3 + length :]
    return out


def parse_header(conn):
    buf = read_exact(conn, 16, b"")
    if buf.startswith(b"PROXY "):
        while b"\r\n" not in buf:
            buf += conn.recv(1)
        line, rest = buf.split(b"\r\n", 1)
        parts = line.decode().split(" ")
        info = {"version": 1, "proto": parts[1]}
        if parts[1] in ("TCP4", "TCP6"):
            info.update(src=parts[2], dst=parts[3], sport=int(parts[4]), dport=int(parts[5]))
        return info, rest
    if not buf.startswith(V2_SIGNATURE[:12]):
        raise ValueError(f"no PROXY header: {buf!r}")
    ver_cmd, fam, length = buf[12], buf[13], struct.unpack("!H", buf[14:16])[0]
    buf = read_exact(conn, 16 + length, buf)
    body, rest = buf[16 : 16 + length], buf[16 + length :]
    info = {"version": ver_cmd >> 4, "command": ver_cmd & 0xF, "family": fam >> 4}
    if fam >> 4 == 1:  # AF_INET
        src, dst, sport, dport = struct.unpack("!4s4sHH", body[:12])
        info.update(src=socket.inet_ntop(socket.AF_INET, src), dst=socket.inet_ntop(socket.AF_INET, dst), sport=sport, dport=dport)
        tlvs = body[12:]
    elif fam >> 4 == 2:  # AF_INET6
        src, dst, sport, dport = struct.unpack("!16s16sHH", body[:36])
        info.update(src=socket.inet_ntop(socket.AF_INET6, src), dst=socket.inet_ntop(socket.AF_INET6, dst), sport=sport, dport=dport)
        tlvs = body[36:]
    else:
        tlvs = body
    for kind, value in parse_tlvs(tlvs):
        if kind == 0x01:
            info["alpn"] = value.decode()
        elif kind == 0x02:
            info["authority"] = value.decode()
        elif kind == 0x20:
            info["ssl_client"] = value[0]
            info["ssl_verify"] = struct.unpack("!I", value[1:5])[0]
            for sub, sv in parse_tlvs(value[5:]):
                name = {0x21: "ssl_version", 0x22: "ssl_cn", 0x23: "ssl_cipher"}.get(sub, f"ssl_0x{sub:02x}")
                info[name] = sv.decode()
        elif kind == 0xE0:
            info["cert_der_hex"] = value.hex()
        else:
            info[f"tlv_0x{kind:02x}"] = value.hex()
    return info, rest


def handle(conn):
    with conn:
        try:
            info, rest = parse_header(conn)
        except Exception as e:  # reported, not raised: the test reads stdout
            info, rest = {"error": str(e)}, b""
        print(json.dumps(info), flush=True)
        if "error" in info:
            return
        buf = rest
        while True:
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                conn.sendall(b"echo:" + line + b"\n")
            chunk = conn.recv(65536)
            if not chunk:
                conn.sendall(b"bye\n")
                return
            buf += chunk


def main():
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    print(srv.getsockname()[1], flush=True)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
