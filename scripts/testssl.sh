#!/usr/bin/env bash
# TLS scan of a locally running certgate with testssl.sh.
#
# Builds certgate (release), makes a throwaway CA and an ECDSA P-256 server certificate for
# localhost / 127.0.0.1, starts a tiny upstream (python3 -m http.server) and certgate with
# client_certificate_mode = "accept", runs testssl against it, prints a summary, and exits 1
# if any finding is MEDIUM, HIGH or CRITICAL (2 on a setup failure).
#
# Environment:
#   CERTGATE_BIN      use this binary instead of building (skips `cargo build --release`)
#   TESTSSL_TIMEOUT   seconds before the scan is killed (default 900)
#   KEEP_TMP=1        keep the temp dir (certificates, config, logs, JSON)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TESTSSL_TIMEOUT="${TESTSSL_TIMEOUT:-900}"
SCRIPT=testssl
# shellcheck source=scripts/common.sh
source "$ROOT/scripts/common.sh"


# --- tools -------------------------------------------------------------------------------------
if ! command -v testssl >/dev/null 2>&1; then
    echo "testssl.sh: installing testssl.sh (Debian package)"
    SUDO=""
    [[ "$(id -u)" == 0 ]] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq testssl.sh >/dev/null
fi
command -v testssl >/dev/null || die "testssl not found after install"
command -v openssl >/dev/null || die "openssl is required"
command -v python3 >/dev/null || die "python3 is required"

# --- certgate ----------------------------------------------------------------------------------
if [[ -n "${CERTGATE_BIN:-}" ]]; then
    BIN="$CERTGATE_BIN"
else
    (cd "$ROOT" && cargo build --release --bin certgate)
    BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/certgate"
fi
[[ -x "$BIN" ]] || die "no certgate binary at $BIN"

# --- certificates: CA + ECDSA P-256 leaf for localhost / 127.0.0.1 ------------------------------
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -sha256 -days 730 \
    -subj "/CN=certgate testssl CA" -keyout "$TMP/ca.key" -out "$TMP/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -sha256 \
    -subj "/CN=localhost" -keyout "$TMP/server.key" -out "$TMP/server.csr" 2>/dev/null
cat >"$TMP/server.ext" <<EXT
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
EXT
openssl x509 -req -in "$TMP/server.csr" -CA "$TMP/ca.pem" -CAkey "$TMP/ca.key" \
    -CAcreateserial -sha256 -days 365 -extfile "$TMP/server.ext" -out "$TMP/server.pem" 2>/dev/null

UP_PORT="$(free_port)"
TLS_PORT="$(free_port)"


# --- upstream + certgate -----------------------------------------------------------------------
mkdir -p "$TMP/www"
echo "hello from upstream" >"$TMP/www/index.html"
# The upstream sends the response headers a real app behind certgate would (testssl's HSTS and
# security_headers checks look at the app's headers, which certgate forwards unchanged).
cat >"$TMP/upstream.py" <<'PY'
import functools, http.server, sys

class Handler(http.server.SimpleHTTPRequestHandler):
    def end_headers(self):
        self.send_header("Strict-Transport-Security", "max-age=31536000")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Content-Security-Policy", "default-src 'none'")
        self.send_header("Referrer-Policy", "no-referrer")
        super().end_headers()

handler = functools.partial(Handler, directory=sys.argv[2])
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), handler).serve_forever()
PY
python3 "$TMP/upstream.py" "$UP_PORT" "$TMP/www" >"$TMP/upstream.log" 2>&1 &
PIDS+=("$!")
wait_port "$UP_PORT" 10 || die "upstream did not start (see $TMP/upstream.log)"

cat >"$TMP/certgate.toml" <<TOML
[server]
workers = 1
pin_workers = false

[timeouts]
shutdown_grace = "0s"

[[listener]]
name = "testssl"
bind = "127.0.0.1:$TLS_PORT"
cert = "server.pem"
key = "server.key"
client_certificate_mode = "accept"
upstream = "127.0.0.1:$UP_PORT"
TOML
"$BIN" --config "$TMP/certgate.toml" >"$TMP/certgate.log" 2>&1 &
PIDS+=("$!")
if ! wait_port "$TLS_PORT" 20; then
    cat "$TMP/certgate.log" >&2
    die "certgate did not start"
fi

# --- scan --------------------------------------------------------------------------------------
# The JSON is written unfiltered (no --severity) so the summary can show protocols, suites,
# renegotiation and compression (INFO/OK entries); the MEDIUM+ gate is applied below.
JSON="$TMP/testssl.json"
VERSION="$(testssl --version 2>/dev/null | sed 's/\x1b\[[0-9;]*m//g' | grep -m1 -oE 'testssl +[0-9][^ ]*' || true)"
echo "testssl.sh: ${VERSION:-testssl} against https://127.0.0.1:$TLS_PORT"
set +e
timeout --kill-after=30 "$TESTSSL_TIMEOUT" testssl --quiet --color 0 --warnings batch \
    --nodns none --connect-timeout 10 --openssl-timeout 10 --add-ca "$TMP/ca.pem" \
    --jsonfile "$JSON" "https://127.0.0.1:$TLS_PORT" >"$TMP/testssl.txt" 2>&1
RC=$?
set -e
if [[ $RC == 124 || $RC == 137 ]]; then
    tail -20 "$TMP/testssl.txt" >&2
    die "testssl timed out after ${TESTSSL_TIMEOUT}s"
fi
[[ -s "$JSON" ]] || { tail -40 "$TMP/testssl.txt" >&2; die "testssl wrote no JSON (rc $RC)"; }
kill -0 "${PIDS[1]}" 2>/dev/null || { cat "$TMP/certgate.log" >&2; die "certgate died during the scan"; }

python3 - "$JSON" <<'PY'
import collections, json, sys

with open(sys.argv[1]) as f:
    data = json.load(f)
findings = data if isinstance(data, list) else data.get("scanResult", data)
by_id = {}
for item in findings:
    by_id.setdefault(item.get("id", ""), item)

def show(label, ids):
    for i in ids:
        if i in by_id:
            print(f"  {label or i:<28} {by_id[i].get('finding', '')}  [{by_id[i].get('severity', '')}]")

print("== protocols")
show(None, ["SSLv2", "SSLv3", "TLS1", "TLS1_1", "TLS1_2", "TLS1_3", "ALPN", "ALPN_HTTP2", "NPN"])
print("== cipher suites (server order)")
show(None, ["cipher_order", "protocol_negotiated", "cipher_negotiated"])
for i in by_id:
    if i.startswith("cipherorder_") or i.startswith("cipher_order_TLS"):
        show(None, [i])
suites = [by_id[i].get("finding", "").split() for i in by_id if i.startswith("cipher_x")]
for s in suites:  # "x1302 TLS_AES_256_GCM_SHA384 ECDH 253 AESGCM 256 <RFC name>"
    print(f"  {s[-1]:<50} kx {s[2]} {s[3]}")
show(None, ["PFS_ciphers", "PFS_ECDHE_curves", "FS_ECDHE_curves", "PFS_sig_algs"])
print("== renegotiation")
show(None, ["secure_renego", "secure_client_renego"])
print("== compression")
show(None, ["CRIME_TLS", "BREACH"])
print("== other")
show(None, ["session_ticket", "HSTS", "cert_chain_of_trust", "cert_trust", "overall_grade"])

sev = collections.Counter(item.get("severity", "?") for item in findings)
print("== findings by severity: " + ", ".join(f"{k}={sev[k]}" for k in
      ["CRITICAL", "HIGH", "MEDIUM", "LOW", "WARN", "INFO", "OK"] if sev[k]))
# Properties of the throwaway test certificate (made by this script), not of certgate: a real
# deployment's certificate carries its CA's CRL/OCSP URIs.
SETUP_ONLY = {"cert_revocation"}
bad = [i for i in findings if i.get("severity") in ("MEDIUM", "HIGH", "CRITICAL")]
for i in [i for i in bad if i.get("id") in SETUP_ONLY]:
    print(f"  ignored (test certificate): {i.get('severity')}: {i.get('id')}: {i.get('finding')}")
bad = [i for i in bad if i.get("id") not in SETUP_ONLY]
if bad:
    print("== FAIL: MEDIUM or worse:")
    for i in bad:
        print(f"  {i.get('severity')}: {i.get('id')}: {i.get('finding')}")
    sys.exit(1)
print("== OK: no MEDIUM, HIGH or CRITICAL findings")
PY
