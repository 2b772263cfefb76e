#!/usr/bin/env bash
# `systemd-analyze verify` of dist/systemd/*: any line it prints is a finding (it exits 0 on an
# unknown key or a bad value, so its output is what counts). The one line allowed is systemd
# older than 253 not knowing Type=notify-reload (certgate.service says what to use there).
# certgate's path in the units is pointed at an executable that exists here. A unit with a
# deliberate typo must be reported, or the check is not checking. Prints SKIPPED without
# systemd-analyze.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SCRIPT=systemd-verify
# shellcheck source=scripts/common.sh
source "$ROOT/scripts/common.sh"

if ! command -v systemd-analyze >/dev/null 2>&1; then
    echo "systemd-verify SKIPPED: systemd-analyze not found"
    exit 0
fi
version=$(systemd-analyze --version | awk 'NR == 1 { print $2 }')
stand_in=$(command -v true)

units=()
for unit in "$ROOT"/dist/systemd/*; do
    name=$(basename "$unit")
    sed "s#/usr/local/bin/certgate#$stand_in#g" "$unit" >"$TMP/$name"
    units+=("$name")
done

# verify DIR: what systemd-analyze says about the units in DIR, less the allowed line.
verify() {
    (cd "$1" && systemd-analyze verify "${units[@]}" 2>&1) |
        { if ((version < 253)); then grep -v 'Failed to parse service type, ignoring: notify-reload'; else cat; fi } || true
}

findings=$(verify "$TMP")
if [[ -n "$findings" ]]; then
    echo "$findings" >&2
    die "systemd $version reports the lines above"
fi
echo "systemd-verify: ${units[*]}: OK (systemd $version)"

mkdir "$TMP/broken"
cp "$TMP"/*.* "$TMP/broken/"
sed -i 's/^NoDelay=/NoDelai=/' "$TMP/broken/certgate.socket"
grep -q '^NoDelai=' "$TMP/broken/certgate.socket" || die "found no NoDelay= to break"
[[ -n "$(verify "$TMP/broken")" ]] || die "systemd-analyze said nothing of an unknown key"
echo "systemd-verify: an unknown key is reported"
