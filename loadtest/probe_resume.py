"""Does a target resume TLS sessions? Prints "reused" or "full".

Two connections in a row; the second offers the session (TLS 1.3 ticket or TLS 1.2 session)
that the first one received. Used to check that each target's resumption on/off setting really
took effect before a scenario that depends on it is measured.

    python3 probe_resume.py PORT [CERT KEY]
"""

import socket
import ssl
import sys


def fetch(ctx, port, session=None):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    t = ctx.wrap_socket(s, server_hostname="localhost", session=session)
    t.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    # Read to EOF: TLS 1.3 tickets arrive after the handshake, before/with the response.
    while True:
        try:
            if not t.recv(65536):
                break
        except (ssl.SSLError, OSError):
            break
    reused, session = t.session_reused, t.session
    t.close()
    return reused, session


def main():
    port = int(sys.argv[1])
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if len(sys.argv) > 3:
        ctx.load_cert_chain(sys.argv[2], sys.argv[3])
    _, session = fetch(ctx, port)
    reused, _ = fetch(ctx, port, session)
    print("reused" if reused else "full")


if __name__ == "__main__":
    main()
