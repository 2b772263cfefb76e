#!/usr/bin/env bash
# A/B keep-alive load test: two certgate variants measured in turns, several times, in one run.
#
#   loadtest/ab.sh BASE_BIN HEAD_BIN   # two binaries (before/after a change): ka-tls, ka-mtls,
#                                      # ka-tls-64k
#   loadtest/ab.sh --ops BIN           # one binary: ka-mtls plain vs ka-mtls-ops (JSON access
#                                      # log to a file + /metrics scraped every second)
#
# Knobs: RUNS (default 5 runs per variant and scenario), DURATION (10 s per run), SCENARIOS
# (A/B mode; default "ka-tls ka-mtls ka-tls-64k"), LOAD_MAX (1.0) and LOAD_WAIT (120 s): before
# each pair, wait until the 1-minute load average is below LOAD_MAX, at most LOAD_WAIT seconds,
# then measure anyway and say so. BASE_COMMIT / HEAD_COMMIT: labels for the report (what the
# binaries were built from). PORT_BASE (default 18460). NICE (default -10): this script, and so
# certgate, the upstream and the generators it starts, run at that niceness, so that other work
# on a shared machine takes less of their cores; NICE=0 to leave it.
#
# Same set-up as run.sh (whose helpers it sources): the upstream nginx and the load generator
# on core 1, certgate with one worker on core 0, 32 connections, CPU time from procstat.py.
# Both variants run at once on their own ports (the idle one costs nothing); each pair is
# measured back to back, the order alternating from run to run (A B, B A, A B, ...).
# Output: results/<date>-ab-<base>-<head>.md and .jsonl, or results/<date>-ops-<commit>.md and
# .jsonl; raw generator output in work/ab-ab/raw/ or work/ab-ops/raw/.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export PORT_BASE=${PORT_BASE:-18460}
# shellcheck source=run.sh
source "$HERE/run.sh"
RUNS=${RUNS:-5}
LOAD_MAX=${LOAD_MAX:-1.0}
LOAD_WAIT=${LOAD_WAIT:-120}
NICE=${NICE:--10}

usage() { sed -n '2,20p' "$0" >&2; exit 2; }

MODE=ab
if [[ ${1:-} == --ops ]]; then
  MODE=ops; shift
  (($# == 1)) || usage
  BIN_A=$(realpath "$1"); BIN_B=$BIN_A
  VARIANTS=(plain ops)
  SCENARIOS=(ka-mtls)
  LABEL_A=${HEAD_COMMIT:-$(basename "$BIN_A")}; LABEL_B=$LABEL_A
else
  (($# == 2)) || usage
  BIN_A=$(realpath "$1"); BIN_B=$(realpath "$2")
  VARIANTS=(base head)
  read -r -a SCENARIOS <<<"${SCENARIOS:-ka-tls ka-mtls ka-tls-64k}"
  LABEL_A=${BASE_COMMIT:-base}; LABEL_B=${HEAD_COMMIT:-head}
fi
WORK=$HERE/work/ab-$MODE   # replaced by the next run in the same mode
RESULTS_JSONL=$WORK/results.jsonl
for b in "$BIN_A" "$BIN_B"; do [[ -x $b ]] || die "not an executable: $b"; done
A=${VARIANTS[0]}; B=${VARIANTS[1]}
declare -A BIN=([$A]=$BIN_A [$B]=$BIN_B)
PORT[$A]=$((PORT_BASE + 3)); PORT[$B]=$((PORT_BASE + 4))
ADMIN_PORT=$((PORT_BASE + 6))

# wait_load: until the 1-minute load average is below LOAD_MAX (at most LOAD_WAIT seconds).
# Sets LOAD (the figure when measuring starts) and LOAD_WAITED (seconds waited).
wait_load() {
  local i
  for ((i = 0; i <= LOAD_WAIT; i += 2)); do
    LOAD=$(cut -d' ' -f1 /proc/loadavg)
    LOAD_WAITED=$i
    awk -v l="$LOAD" -v m="$LOAD_MAX" 'BEGIN { exit !(l < m) }' && return 0
    ((i < LOAD_WAIT)) && sleep 2
  done
  warn "load average still $LOAD after ${LOAD_WAIT} s; measured anyway"
}

# measure VARIANT SCENARIO RUN: one recorded run.
measure() {
  local v=$1 s=$2 run=$3 c=$WORK/certs
  local BENCH_TAGS="run=$run variant=$v load1=$LOAD load_waited_s=$LOAD_WAITED" RAW_SUFFIX=-$run
  case $s in
    ka-tls) bench "$v" "$s" wrk wrk -t1 -c32 -d"${DURATION}s" --latency "https://127.0.0.1:${PORT[$v]}/" ;;
    ka-tls-64k) bench "$v" "$s" wrk wrk -t1 -c32 -d"${DURATION}s" --latency "https://127.0.0.1:${PORT[$v]}/64k" ;;
    ka-mtls)
      if [[ $v == ops ]]; then
        ops_run ops "$s" "$ADMIN_PORT" oha_run ops "$s" --cert "$c/client.pem" --key "$c/client.key"
      else
        oha_run "$v" "$s" --cert "$c/client.pem" --key "$c/client.key"
      fi ;;
    *) die "unknown scenario $s (ka-tls, ka-mtls, ka-tls-64k)" ;;
  esac
}

ab_meta() {
  python3 - "$WORK/meta.json" "$@" <<EOF
import json, sys
json.dump({
$(machine_meta)
  "mode": "$MODE",
  "variants": {"$A": {"label": "$LABEL_A", "bin": "$BIN_A", "sha256": "$(sha256sum "$BIN_A" | cut -c1-16)"},
               "$B": {"label": "$LABEL_B", "bin": "$BIN_B", "sha256": "$(sha256sum "$BIN_B" | cut -c1-16)"}},
  "order": ["$A", "$B"],
  "scenarios": "${SCENARIOS[*]}",
  "runs": $RUNS,
  "duration_s": $DURATION,
  "load_max": $LOAD_MAX,
  "load_wait_s": $LOAD_WAIT,
  "nice": $NICE,
  "versions": {
    "wrk": "$(wrk -v 2>&1 | head -1 | awk '{print $2}')",
    "oha": "$([[ -n $OHA ]] && "$OHA" --version 2>&1 | head -1 || echo missing)",
    "nginx": "$(nginx -v 2>&1 | sed 's/.*: //')",
  },
}, open(sys.argv[1], "w"), indent=1)
EOF
}

ab_main() {
  ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
  if [[ $NICE != 0 ]]; then
    renice -n "$NICE" -p $$ >/dev/null || { echo "(cannot renice to $NICE; running at normal priority)"; NICE=0; }
  fi
  NOFILE=$(ulimit -n)
  rm -rf "$WORK"
  mkdir -p "$WORK/raw" "$WORK/logs" "$RESULTS"
  : >"$WORK/notes.txt"
  STARTED_AT=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  LOADAVG_START=$(cut -d' ' -f1-3 /proc/loadavg)
  for t in upstream "${VARIANTS[@]}"; do
    p=${PORT[$t]:-$UPSTREAM_PORT}
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then die "port $p is already in use (set PORT_BASE)"; fi
  done
  detect_oha
  [[ -n $OHA || ! " ${SCENARIOS[*]} " =~ " ka-mtls " ]] || die "oha is needed for ka-mtls (cargo install oha --version 1.16.0 --locked)"
  make_certs
  start_upstream

  log "starting $A (${BIN[$A]}) and $B (${BIN[$B]}) on core $TERM_CPU"
  for v in "${VARIANTS[@]}"; do
    certgate_conf on "${PORT[$v]}" >"$WORK/$v.toml"
    [[ $v == ops ]] && certgate_ops_conf "$ADMIN_PORT" >>"$WORK/$v.toml"
    start_certgate "$v" "${BIN[$v]}" "$WORK/$v.toml"
  done
  for v in "${VARIANTS[@]}"; do wait_port "${PORT[$v]}" "$v"; verify "$v" on; done
  # Warm-up, not recorded: upstream connections opened, caches and allocator settled.
  for v in "${VARIANTS[@]}"; do
    taskset -c "$GEN_CPU" wrk -t1 -c32 -d2s "https://127.0.0.1:${PORT[$v]}/" >/dev/null
  done

  local run s first second
  for ((run = 1; run <= RUNS; run++)); do
    for s in "${SCENARIOS[@]}"; do
      if ((run % 2)); then first=$A second=$B; else first=$B second=$A; fi
      wait_load
      log "run $run/$RUNS, $s: $first then $second (load average $LOAD, waited ${LOAD_WAITED} s)"
      measure "$first" "$s" "$run"
      measure "$second" "$s" "$run"
    done
  done
  for v in "${VARIANTS[@]}"; do stop "$v"; done

  ab_meta
  log "writing report"
  python3 "$HERE/ab_report.py" --work "$WORK" --results "$RESULTS"
}

ab_main
