#!/usr/bin/env bash
# Crowds, side by side, certgate vs nginx (issue 12, goals 1, 4 and 5): memory per idle mTLS
# connection, keep-alive latency under a handshake flood, and many idle connections on one
# worker. See loadtest/README.md ("Crowds") for what each scenario does and how it is computed.
#
#   sudo loadtest/crowd.sh                                 # all three, RUNS=5 (many: 3)
#   sudo CROWD_SCENARIOS=flood RUNS=1 loadtest/crowd.sh    # one scenario, one run
#
# Knobs: CROWD_SCENARIOS (default "idle flood many"), RUNS (default 5: interleaved runs of idle
# and flood), MANY_RUNS (default 3), IDLE_CONNS (2000), IDLE_CONNS_MIXED (200), IDLE_STATES
# (default "one mixed handshake"), FLOOD_DURATION (10 s per phase), STEADY_QPS (800: the 8
# steady/busy clients' rate in all; 0 = as fast as they go), MANY_CONNS (50000; capped by the
# open-file limit, see many_n), MANY_DURATION (10 s), SKIP_INSTALL=1, SKIP_BUILD=1,
# CERTGATE_BIN, CERTGATE_COMMIT (the commit to name in the report), CROWD_PORT_BASE (default
# 18480: upstream +0, certgate +3, nginx +4, certgate's admin +6), NICE (default -10, as ab.sh).
#
# Set-up as run.sh (whose helpers it sources): the terminator with one worker alone on core 0,
# the upstream nginx and every client on core 1. Order of the targets alternates from run to
# run (certgate nginx, nginx certgate, ...). Output: results/<date>-<HHMM>-crowd-<commit>.md
# and .jsonl (crowd_report.py); raw oha output and logs in work/crowd/.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# Its own ports (run.sh may still hold its own when it calls this script), whatever PORT_BASE
# the caller exported.
export PORT_BASE=${CROWD_PORT_BASE:-18480}
# shellcheck source=run.sh
source "$HERE/run.sh"
WORK=$HERE/work/crowd
RESULTS_JSONL=$WORK/results.jsonl
ADMIN_PORT=$((PORT_BASE + 6))
read -r -a SCENARIOS <<<"${CROWD_SCENARIOS:-idle flood many}"
read -r -a IDLE_STATES <<<"${IDLE_STATES:-one mixed handshake}"
RUNS=${RUNS:-5}
MANY_RUNS=${MANY_RUNS:-3}
IDLE_CONNS_MIXED=${IDLE_CONNS_MIXED:-200}   # each moves 2.7 MiB each way: fewer connections
FLOOD_DURATION=${FLOOD_DURATION:-10}
STEADY_QPS=${STEADY_QPS:-800}
MANY_CONNS=${MANY_CONNS:-50000}
MANY_DURATION=${MANY_DURATION:-10}
NICE=${NICE:--10}
CROWD=(certgate nginx)
# Keep-alive (and first-request) timeout of both terminators: the first connections of a case
# wait idle while the others are opened, up to a few minutes with many connections.
IDLE_TIMEOUT=900

# run.sh's log, with the time of day: a full run takes an hour or more.
log() { printf '\n== %s %s\n' "$(date +%H:%M:%S)" "$*"; }

# order RUN: the targets in the order of that run (certgate nginx, nginx certgate, ...).
order() { if (($1 % 2)); then echo "${CROWD[*]}"; else printf '%s\n' "${CROWD[@]}" | tac | xargs; fi; }

# ---------------------------------------------------------------------------------------------
# Configurations: run.sh's, with timeouts long enough that nothing idle is closed while it is
# measured: certgate's is run.sh's certgate_conf with [timeouts], [limits] and [admin] after it
# (a table run.sh's gains too is a duplicate-key error at startup, never silently lost); nginx's
# is run.sh's nginx_conf, edited.
crowd_certgate_conf() {  # MODE(on|off) ADMIN(0|1)
  certgate_conf "$1"
  cat <<EOF

[timeouts]
keep_alive = "${IDLE_TIMEOUT}s"
request_header = "${IDLE_TIMEOUT}s"

[limits]
max_connections_per_worker = 1000000   # the many scenario: the open-file limit decides
EOF
  (($2)) && printf '\n[admin]\nbind = "127.0.0.1:%s"\n' "$ADMIN_PORT"
  return 0
}

# nginx closes idle keep-alive connections ("worker_connections are not enough, reusing
# connections") as soon as fewer than 1/16 of its worker_connections are free: for MANY_N
# connections it needs 16/15 of that, beyond the open-file limit (nginx warns that
# worker_connections exceed it; the descriptors it really opens stay under it).
crowd_nginx_conf() {  # MODE(on|off) [CONNECTIONS]
  local conf extra="" wc=$(( ${2:-0} * 16 / 15 + 300 ))
  ((wc > NOFILE - 100)) || wc=$((NOFILE - 100))   # run.sh's, when that is more
  conf=$(nginx_conf "$1" | sed -E "s/^(\s*)keepalive_timeout [^;]*;/\1keepalive_timeout ${IDLE_TIMEOUT}s;/")
  if ((${2:-0})); then
    conf=$(sed -E "s/worker_connections ([0-9]+);/worker_connections $wc;/" <<<"$conf")
  fi
  grep -q "keepalive_timeout ${IDLE_TIMEOUT}s;" <<<"$conf" || extra+="  keepalive_timeout ${IDLE_TIMEOUT}s;\n"
  grep -q client_header_timeout <<<"$conf" || extra+="  client_header_timeout ${IDLE_TIMEOUT}s;\n"
  # The mixed case uploads 1 MiB bodies (nginx's default limit is 1m).
  grep -q client_max_body_size <<<"$conf" || extra+="  client_max_body_size 2m;\n"
  sed "0,/^http {/s//http {\n$extra/" <<<"$conf"
}

# crowd_start TARGET MODE [ADMIN] [CONNECTIONS]: a freshly started terminator, checked end to
# end; CONNECTIONS: how many idle ones it must keep (nginx).
crowd_start() {
  local t=$1 mode=$2
  case $t in
    certgate)
      crowd_certgate_conf "$mode" "${3:-0}" >"$WORK/certgate-$mode.toml"
      start_certgate certgate "$CERTGATE_BIN" "$WORK/certgate-$mode.toml" ;;
    nginx)
      mkdir -p "$WORK/nginx/logs" "$WORK/nginx/tmp"
      crowd_nginx_conf "$mode" "${4:-0}" >"$WORK/nginx-$mode.conf"
      start nginx "$TERM_CPU" nginx -p "$WORK/nginx" -c "$WORK/nginx-$mode.conf" \
        -e "$WORK/nginx/logs/error.log" -g 'daemon off;' ;;
  esac
  wait_port "${PORT[$t]}" "$t"
  verify "$t" "$mode" >/dev/null
}

# ---------------------------------------------------------------------------------------------
# 1. Memory per idle mTLS connection (goal 1): every figure in a freshly started terminator.
idle_measure() {  # TARGET STATE RUN
  local t=$1 state=$2 n=$IDLE_CONNS args=(--requests 1)
  case $state in
    one) ;;
    mixed) n=$IDLE_CONNS_MIXED; args=(--mixed) ;;
    handshake) args=(--requests 0) ;;
    *) die "unknown IDLE_STATES entry '$state' (one, mixed, handshake)" ;;
  esac
  crowd_start "$t" on
  taskset -c "$GEN_CPU" python3 "$HERE/idle_conns.py" --target "$t" --port "${PORT[$t]}" \
    --pid "${PID[$t]}" --n "$n" "${args[@]}" --cert "$WORK/certs/client.pem" \
    --key "$WORK/certs/client.key" --out "$RESULTS_JSONL" --tags "run=$3"
  kill -0 "${PID[$t]}" 2>/dev/null || die "$t died holding idle connections"
  stop "$t"
}

scenario_idle() {
  local run state t
  for ((run = 1; run <= RUNS; run++)); do
    for state in "${IDLE_STATES[@]}"; do
      log "idle $run/$RUNS, $state: $(order "$run")"
      for t in $(order "$run"); do idle_measure "$t" "$state" "$run"; done
    done
  done
}

# ---------------------------------------------------------------------------------------------
# 2. Handshake flood (goal 4): both terminators with resumption off, started once (the one not
# measured idles on the same core).
scenario_flood() {
  local run t c=$WORK/certs args
  [[ -n $OHA ]] || { warn "oha missing: flood skipped"; return 0; }
  log "flood: starting certgate (with its admin listener, for the handshake counters) and nginx, resumption off"
  for t in "${CROWD[@]}"; do crowd_start "$t" off 1; done
  for ((run = 1; run <= RUNS; run++)); do
    log "flood $run/$RUNS: $(order "$run") (8 steady clients at $STEADY_QPS req/s, alone then beside 64 flooding ones, ${FLOOD_DURATION} s each)"
    for t in $(order "$run"); do
      args=(--metrics "http://127.0.0.1:$ADMIN_PORT/metrics")
      [[ $t == nginx ]] && args=(--nginx-log "$WORK/nginx/logs/handshakes.log")
      python3 "$HERE/flood.py" --target "$t" --pid "${PID[$t]}" --port "${PORT[$t]}" \
        --oha "$OHA" --cert "$c/client.pem" --key "$c/client.key" --out "$RESULTS_JSONL" \
        --raw "$WORK/raw/flood-$t-$run" --duration "$FLOOD_DURATION" --qps "$STEADY_QPS" \
        --gen-cpu "$GEN_CPU" "${args[@]}" --tags "run=$run"
      kill -0 "${PID[$t]}" 2>/dev/null || die "$t died during the flood"
      sleep 2  # TIME_WAIT and teardown of the flood's connections
    done
  done
  for t in "${CROWD[@]}"; do stop "$t"; done
}

# ---------------------------------------------------------------------------------------------
# 3. Many idle connections on one worker (goal 5).
# many_n: the connections this machine allows. Each terminator holds one descriptor per client
# connection in one process, plus its upstream connections (up to 64 pooled by nginx, a few by
# certgate) and a few files; nginx's worker_connections (NOFILE - 100, run.sh) counts the
# upstream ones too. Without CAP_SYS_RESOURCE neither can go past the hard limit.
MANY_MARGIN=300
many_n() {
  local hard; hard=$(ulimit -Hn)
  if [[ $hard == unlimited ]] || ((MANY_CONNS <= NOFILE - MANY_MARGIN)); then
    MANY_N=$MANY_CONNS; MANY_WHY="as asked"
  else
    MANY_N=$((NOFILE - MANY_MARGIN))
    MANY_WHY="MANY_CONNS=$MANY_CONNS asked, but the open-file limit is $NOFILE per process (hard limit $hard; raising it needs CAP_SYS_RESOURCE) and each terminator holds its connections in one process: $NOFILE - $MANY_MARGIN (upstream connections, files)"
  fi
  # Client processes: each holds its share as descriptors (under the limit, with room for its
  # own files), and at least two, so one handshakes while the other waits for the terminator.
  MANY_PROCS=$(((MANY_N + NOFILE - 201) / (NOFILE - 200)))
  ((MANY_PROCS >= 2)) || MANY_PROCS=2
}

scenario_many() {
  local run t c=$WORK/certs busy
  [[ -n $OHA ]] || { warn "oha missing: many skipped"; return 0; }
  log "many: $MANY_N idle connections ($MANY_WHY), $MANY_PROCS client processes from 127.0.0.2 up"
  echo "many: N = $MANY_N ($MANY_WHY)" >>"$WORK/notes.txt"
  for ((run = 1; run <= MANY_RUNS; run++)); do
    log "many $run/$MANY_RUNS: $(order "$run")"
    for t in $(order "$run"); do
      crowd_start "$t" on 0 "$MANY_N"
      busy="nice -n -5 taskset -c $GEN_CPU $OHA -c 8 -z ${MANY_DURATION}s --output-format json ${OHA_TLS[*]} --cert $c/client.pem --key $c/client.key"
      ((STEADY_QPS)) && busy+=" -q $STEADY_QPS --latency-correction"
      busy+=" https://127.0.0.1:${PORT[$t]}/"
      taskset -c "$GEN_CPU" python3 "$HERE/idle_conns.py" --target "$t" --port "${PORT[$t]}" \
        --pid "${PID[$t]}" --n "$MANY_N" --procs "$MANY_PROCS" --requests 1 --scenario many \
        --cert "$c/client.pem" --key "$c/client.key" --out "$RESULTS_JSONL" \
        --during "$busy" --during-baseline --during-raw "$WORK/raw/many-$t-$run.json" \
        --tags "run=$run" "many_asked=$MANY_CONNS"
      kill -0 "${PID[$t]}" 2>/dev/null || die "$t died holding $MANY_N connections"
      stop "$t"
      sleep 2
    done
  done
}

# ---------------------------------------------------------------------------------------------
# How long it will take, from what one measurement took on a 2-core VM (rough; the mixed case
# and the many connections' handshakes dominate).
estimate() {
  local s total=0 what=""
  for s in "${SCENARIOS[@]}"; do
    local sec=0 st
    case $s in
      idle)
        for st in "${IDLE_STATES[@]}"; do
          case $st in
            # mixed: ~0.15 s per connection through certgate, ~0.5 s through nginx (whose
            # 16-64 KiB uploads wait for delayed ACKs on the way to the upstream)
            mixed) sec=$((sec + 10 + IDLE_CONNS_MIXED * 350 / 1000)) ;;
            *) sec=$((sec + 9 + IDLE_CONNS * 4 / 1000)) ;;                # ~4 ms per connection
          esac
        done
        sec=$((sec * 2 * RUNS)) ;;
      flood) sec=$(((2 * FLOOD_DURATION + 10) * 2 * RUNS + 5)) ;;
      # ~2.5 ms per connection: Python's ssl (OpenSSL 3) spends ~2.2 ms of CPU per handshake
      many) sec=$(((2 * MANY_DURATION + 15 + MANY_N * 25 / 10000) * 2 * MANY_RUNS)) ;;
    esac
    what+=" $s ~$((sec / 60 + 1)) min;"
    total=$((total + sec))
  done
  log "estimated time: ~$((total / 60 + 1)) min ($what )"
}

crowd_meta() {
  python3 - "$WORK/meta.json" <<EOF
import json, sys
json.dump({
$(machine_meta)
  "commit": "$(commit_label)",
  "certgate_bin": "$CERTGATE_BIN",
  "certgate_sha256": "$(sha256sum "$CERTGATE_BIN" | cut -c1-16)",
  "scenarios": "${SCENARIOS[*]}",
  "runs": $RUNS, "many_runs": $MANY_RUNS,
  "idle_conns": $IDLE_CONNS, "idle_conns_mixed": $IDLE_CONNS_MIXED,
  "idle_states": "${IDLE_STATES[*]}",
  "flood_duration_s": $FLOOD_DURATION, "steady_qps": $STEADY_QPS,
  "many_asked": $MANY_CONNS, "many_n": ${MANY_N:-0}, "many_why": """${MANY_WHY:-}""",
  "many_procs": ${MANY_PROCS:-0}, "many_duration_s": $MANY_DURATION,
  "nofile": $NOFILE, "nice": $NICE,
  "versions": {
    "certgate": "$("$CERTGATE_BIN" --version 2>&1 | head -1)",
    "nginx": "$(nginx -v 2>&1 | sed 's/.*: //')",
    "oha": "$([[ -n $OHA ]] && "$OHA" --version 2>&1 | head -1 || echo missing)",
    "python": "$(python3 -c 'import platform, ssl; print(platform.python_version(), ssl.OPENSSL_VERSION)')",
  },
}, open(sys.argv[1], "w"), indent=1)
EOF
}

crowd_main() {
  [[ $(id -u) == 0 ]] || echo "(not root: package installation, renice and ulimit raise may fail)"
  ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
  NOFILE=$(ulimit -n)
  [[ $NOFILE == unlimited ]] && NOFILE=1048576
  if [[ $NICE != 0 ]]; then
    renice -n "$NICE" -p $$ >/dev/null || { echo "(cannot renice to $NICE; running at normal priority)"; NICE=0; }
  fi
  local s
  for s in "${SCENARIOS[@]}"; do
    [[ $s =~ ^(idle|flood|many)$ ]] || die "unknown CROWD_SCENARIOS entry '$s' (idle, flood, many)"
  done
  ((NOFILE > IDLE_CONNS + 200)) || die "open-file limit $NOFILE too low for IDLE_CONNS=$IDLE_CONNS"
  many_n
  rm -rf "$WORK/raw" "$WORK/logs" "$RESULTS_JSONL" "$WORK/notes.txt" "$WORK/nginx"
  mkdir -p "$WORK/raw" "$WORK/logs" "$RESULTS"
  : >"$WORK/notes.txt"
  STARTED_AT=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  LOADAVG_START=$(cut -d' ' -f1-3 /proc/loadavg)
  [[ " ${SCENARIOS[*]} " == *" many "* ]] && echo "  many: N = $MANY_N ($MANY_WHY)"
  estimate

  [[ ${SKIP_INSTALL:-0} == 1 ]] || install_tools
  [[ ${SKIP_BUILD:-0} == 1 ]] || build
  [[ -x $CERTGATE_BIN ]] || die "no certgate binary at $CERTGATE_BIN"
  for p in "$UPSTREAM_PORT" "${PORT[certgate]}" "${PORT[nginx]}" "$ADMIN_PORT"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then die "port $p is already in use (set CROWD_PORT_BASE)"; fi
  done
  detect_oha
  make_certs >/dev/null
  start_upstream

  for s in "${SCENARIOS[@]}"; do "scenario_$s"; done

  crowd_meta
  log "writing report"
  python3 "$HERE/crowd_report.py" --work "$WORK" --results "$RESULTS"
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then crowd_main "$@"; fi
