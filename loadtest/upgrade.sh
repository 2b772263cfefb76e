#!/usr/bin/env bash
# Zero-downtime upgrades under wrk: certgate in front of an nginx upstream, two wrk runs at once
# (keep-alive connections, and a new connection for every request), and three
# `certgate --upgrade` in a row while they run, each changing the worker count. Fails unless
# wrk saw no socket error (connect, read, write, timeout) and no non-2xx response, and every
# old process exited 0.
#
#   loadtest/upgrade.sh                        # builds certgate --release first
#   CERTGATE_BIN=target/release/certgate loadtest/upgrade.sh
#
# Knobs: DURATION (seconds of load, default 20; upgrades at 1/5, 2/5 and 3/5 of it), PORT_BASE
# (default 18540: upstream +0, certgate +1). Needs wrk, nginx and openssl.
set -euo pipefail

cd "$(dirname "$0")/.."
DURATION=${DURATION:-20}
PORT_BASE=${PORT_BASE:-18540}
UPSTREAM=$((PORT_BASE)) PORT=$((PORT_BASE + 1))
if [[ -z "${CERTGATE_BIN:-}" ]]; then
    cargo build --release --no-default-features
    CERTGATE_BIN=target/release/certgate
fi
CERTGATE_BIN=$(realpath "$CERTGATE_BIN")
WORK=$(mktemp -d /tmp/certgate-upgrade.XXXXXX)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    [[ -f $WORK/nginx.pid ]] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
}
trap cleanup EXIT

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
    -keyout "$WORK/server.key" -out "$WORK/server.pem" 2>/dev/null
cat >"$WORK/nginx.conf" <<EOF
pid $WORK/nginx.pid;
error_log $WORK/nginx.err;
worker_processes 1;
events {}
http {
    access_log off;
    client_body_temp_path $WORK; proxy_temp_path $WORK; fastcgi_temp_path $WORK;
    uwsgi_temp_path $WORK; scgi_temp_path $WORK;
    server { listen 127.0.0.1:$UPSTREAM; location / { return 200 "ok"; } }
}
EOF
nginx -p "$WORK" -c "$WORK/nginx.conf"

config() { # workers
    cat <<EOF
[server]
workers = $1
pin_workers = false
control_socket = "control.sock"
[timeouts]
shutdown_grace = "10s"
[[listener]]
name = "up"
bind = "127.0.0.1:$PORT"
cert = "server.pem"
key = "server.key"
upstream = "127.0.0.1:$UPSTREAM"
EOF
}

config 2 >"$WORK/certgate.toml"
"$CERTGATE_BIN" --config "$WORK/certgate.toml" 2>"$WORK/certgate-0.log" &
current=$!
PIDS+=("$current")
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
    sleep 0.1
done

URL="https://127.0.0.1:$PORT/"
wrk -t2 -c32 -d"${DURATION}s" "$URL" >"$WORK/wrk-keepalive.txt" &
KEEPALIVE=$!
wrk -t1 -c8 -d"${DURATION}s" -H "Connection: close" "$URL" >"$WORK/wrk-new.txt" &
NEW=$!

step=$((DURATION / 5))
n=0
for workers in 3 1 2; do
    sleep "$step"
    n=$((n + 1))
    config "$workers" >"$WORK/certgate.toml"
    "$CERTGATE_BIN" --config "$WORK/certgate.toml" --upgrade 2>"$WORK/certgate-$n.log" &
    next=$!
    PIDS+=("$next")
    if wait "$current"; then
        echo "upgrade $n: process $current handed over to $next ($workers worker(s)) and exited 0"
    else
        echo "upgrade $n: process $current exited $? (see $WORK/certgate-$((n - 1)).log)" >&2
        exit 1
    fi
    current=$next
done

wait "$KEEPALIVE" "$NEW"
failed=0
for run in keepalive new; do
    out="$WORK/wrk-$run.txt"
    requests=$(grep -oE '^ +[0-9]+ requests' "$out" | grep -oE '[0-9]+')
    errors=$(grep -E 'Socket errors|Non-2xx' "$out" || true)
    echo "wrk $run: $requests requests; ${errors:-no socket errors, no non-2xx responses}"
    [[ -n $errors ]] && failed=1
done
kill -TERM "$current"
wait "$current" || failed=1
[[ -e $WORK/control.sock ]] && { echo "control socket left behind" >&2; failed=1; }
echo "kernel $(uname -r), $(nproc) CPU(s); logs and wrk output in $WORK"
exit $failed
