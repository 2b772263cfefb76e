#!/usr/bin/env bash
# CPU per GiB relayed: certgate's SNI passthrough route (splice) vs HAProxy `mode tcp` with
# splice, and vs a route certgate terminates, side by side in one run.
#
#   loadtest/passthrough.sh            # 5 interleaved runs of 1 GiB per target
#
# Knobs: RUNS (5), SIZE_MIB (1024), PORT_BASE (18480), SKIP_BUILD=1, CERTGATE_BIN.
#
# Set-up (helpers from run.sh): the terminator under test alone on core 0; the backend nginx and
# curl on core 1. The backend serves one file from the page cache, over TLS for the passthrough
# routes (its own certificate is what curl sees) and in plain HTTP for the terminated route.
#   certgate-pt   certgate, [[listener.passthrough]] for "pass.test": ClientHello peeked, then
#                 splice(2) both ways through a 1 MiB pipe
#   haproxy-tcp   HAProxy `mode tcp`, `option splice-request`/`splice-response`,
#                 `tune.pipesize 1048576` (the same pipe size)
#   certgate-term the same certgate listener for "localhost": TLS terminated, HTTP/1.1 relayed
# Each run downloads SIZE_MIB once through each target (the order rotates from run to run) and
# reads the target's CPU time (user + system, whole process tree) from /proc before and after.
# Output: results/<date>-passthrough.md (medians with ranges, ratios) and the raw .jsonl.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export PORT_BASE=${PORT_BASE:-18480}
# shellcheck source=run.sh
source "$HERE/run.sh"
RUNS=${RUNS:-5}
SIZE_MIB=${SIZE_MIB:-1024}
BACKEND_TLS=$((PORT_BASE + 10))
BACKEND_PLAIN=$((PORT_BASE + 11))
CG_PORT=$((PORT_BASE + 12))
HA_PORT=$((PORT_BASE + 13))

backend() {
  local d=$WORK/pt-backend
  mkdir -p "$d/logs" "$d/tmp"
  [[ -f $d/file.bin && $(stat -c %s "$d/file.bin") == $((SIZE_MIB << 20)) ]] ||
    head -c $((SIZE_MIB << 20)) /dev/urandom >"$d/file.bin"
  cat >"$d/nginx.conf" <<EOF
worker_processes 1;
pid $d/nginx.pid;
error_log $d/logs/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $d/tmp;
  sendfile on;
  server {
    listen 127.0.0.1:$BACKEND_TLS ssl;
    ssl_certificate $WORK/certs/server.pem;
    ssl_certificate_key $WORK/certs/server.key;
    location = /file { alias $d/file.bin; }
  }
  server {
    listen 127.0.0.1:$BACKEND_PLAIN;
    location = /file { alias $d/file.bin; }
  }
}
EOF
  # Warm the page cache so no run reads the disk.
  cat "$d/file.bin" >/dev/null
  start pt-backend "$GEN_CPU" nginx -p "$d" -c "$d/nginx.conf" -e "$d/logs/error.log" -g 'daemon off;'
  wait_port "$BACKEND_TLS" pt-backend
}

terminators() {
  local c=$WORK/certs
  cat >"$WORK/pt-certgate.toml" <<EOF
[server]
workers = 1
pin_workers = false
[[listener]]
bind = "127.0.0.1:$CG_PORT"
cert = "$c/server.pem"
key = "$c/server.key"
upstream = "127.0.0.1:$BACKEND_PLAIN"
[[listener.passthrough]]
server_names = ["pass.test"]
upstream = "127.0.0.1:$BACKEND_TLS"
EOF
  start_certgate certgate "$CERTGATE_BIN" "$WORK/pt-certgate.toml"
  wait_port "$CG_PORT" certgate
  cat >"$WORK/pt-haproxy.cfg" <<EOF
global
  nbthread 1
  tune.pipesize 1048576
  log stderr format raw local0 err
defaults
  mode tcp
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option splice-request
  option splice-response
frontend pt
  bind 127.0.0.1:$HA_PORT
  default_backend tls
backend tls
  server app 127.0.0.1:$BACKEND_TLS
EOF
  start haproxy "$TERM_CPU" haproxy -db -f "$WORK/pt-haproxy.cfg"
  wait_port "$HA_PORT" haproxy
}

# fetch TARGET: one download through TARGET; prints bytes and the target's CPU ticks used.
fetch() {
  local target=$1 url pid before after bytes
  case $target in
    certgate-pt) url=(--resolve "pass.test:$CG_PORT:127.0.0.1" "https://pass.test:$CG_PORT/file"); pid=${PID[certgate]} ;;
    certgate-term) url=("https://localhost:$CG_PORT/file"); pid=${PID[certgate]} ;;
    haproxy-tcp) url=("https://localhost:$HA_PORT/file"); pid=${PID[haproxy]} ;;
  esac
  before=$(python3 "$HERE/procstat.py" cpu "$pid")
  bytes=$(taskset -c "$GEN_CPU" curl -sS --http1.1 -k -o /dev/null -w '%{size_download}' "${url[@]}")
  after=$(python3 "$HERE/procstat.py" cpu "$pid")
  [[ $bytes == $((SIZE_MIB << 20)) ]] || die "$target: downloaded $bytes bytes, expected $((SIZE_MIB << 20))"
  echo "$bytes $((after - before))"
}

main_passthrough() {
  mkdir -p "$WORK/logs" "$RESULTS"
  [[ ${SKIP_BUILD:-0} == 1 ]] || build
  [[ -d $WORK/certs ]] || make_certs
  backend
  terminators
  local out=$RESULTS/$(date +%Y-%m-%d-%H%M)-passthrough
  : >"$out.jsonl"
  local targets=(certgate-pt haproxy-tcp certgate-term) run i t res
  for run in $(seq "$RUNS"); do
    for i in 0 1 2; do
      t=${targets[$(((i + run) % 3))]}
      res=$(fetch "$t")
      echo "run $run $t: bytes ticks = $res"
      printf '{"run": %d, "target": "%s", "bytes": %s, "ticks": %s, "clk_tck": %s}\n' \
        "$run" "$t" ${res% *} ${res#* } "$(getconf CLK_TCK)" >>"$out.jsonl"
    done
  done
  python3 - "$out.jsonl" "$RUNS" "$SIZE_MIB" >"$out.md" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
runs, size = sys.argv[2], sys.argv[3]
def ms_per_gib(r):
    return r["ticks"] * 1000 / r["clk_tck"] / (r["bytes"] / 2**30)
by = {}
for r in rows:
    by.setdefault(r["target"], []).append(ms_per_gib(r))
def fmt(v):
    return f"{statistics.median(v):.0f} ({min(v):.0f}–{max(v):.0f})"
print(f"# Passthrough: CPU per GiB relayed ({runs} interleaved runs of {size} MiB, median (range))\n")
print("| target | CPU ms per GiB (user + system) |")
print("|---|---:|")
for t in ("certgate-pt", "haproxy-tcp", "certgate-term"):
    print(f"| {t} | {fmt(by[t])} |")
pt = by["certgate-pt"]
def ratio(a, b):
    per = sorted(x / y for x, y in zip(a, b) if y)
    return f"{statistics.median(per):.2f} ({per[0]:.2f}–{per[-1]:.2f})" if per else "n/a"
print()
print(f"- certgate passthrough / HAProxy mode tcp (per run): {ratio(pt, by['haproxy-tcp'])} (goal ≤ 1.0)")
print(f"- certgate passthrough / certgate terminated (per run): {ratio(pt, by['certgate-term'])}")
PY
  cat "$out.md"
  echo "written: $out.md"
}

main_passthrough "$@"
