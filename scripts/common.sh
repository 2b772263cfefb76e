# Shared by the scripts that start certgate and a tool against it (testssl.sh, tlsfuzzer.sh):
# a scratch folder removed on exit (KEEP_TMP=1 keeps it), background processes stopped on exit,
# and the port helpers. Source it after setting SCRIPT (the name used in messages).

TMP="$(mktemp -d -t "certgate-$SCRIPT.XXXXXX")"
PIDS=()

cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [[ "${KEEP_TMP:-0}" == 1 ]]; then
        echo "$SCRIPT.sh: kept $TMP"
    else
        rm -rf "$TMP"
    fi
}
trap cleanup EXIT
trap 'exit 2' INT TERM

die() {
    echo "$SCRIPT.sh: $*" >&2
    exit 2
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

wait_port() { # port seconds
    local i
    for ((i = 0; i < $2 * 10; i++)); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    return 1
}
