#!/usr/bin/env bash
# Renders dist/kubernetes with `kubectl kustomize` and validates every object offline against
# the Kubernetes OpenAPI schemas (kubernetes-validate from PyPI, --strict: an unknown field is
# an error), for the oldest Kubernetes the manifests support and the newest the validator ships.
#
#   base            dist/kubernetes: every object must pass (no unknown kind or apiVersion)
#   secrets         dist/kubernetes/secrets, with placeholder files for its inputs
#   cert-manager    the base with the optional component; only its Certificate (a CRD the
#                   validator has no schema for) may go unchecked
# Then it checks that the paths in certgate.toml are where deployment.yaml mounts them, and
# that the validator still fails on a broken object (a check that cannot fail checks nothing).
#
# Needs kubectl (prints SKIPPED and exits 0 without it) and python3; installs
# kubernetes-validate into target/k8s-validate-venv. Exit status 1 on any finding.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SCRIPT=k8s-validate
# shellcheck source=scripts/common.sh
source "$ROOT/scripts/common.sh"

VALIDATOR_VERSION=1.37.0
# lifecycle.preStop.sleep and sidecar init containers (restartPolicy: Always): 1.30 and later.
K8S_VERSIONS=(1.30.0 1.37.0)

if ! command -v kubectl >/dev/null 2>&1; then
    echo "k8s-validate SKIPPED: kubectl not found (it renders the kustomizations)"
    exit 0
fi
command -v python3 >/dev/null || die "python3 is required"

VENV="$ROOT/target/k8s-validate-venv"
if ! "$VENV/bin/kubernetes-validate" --version 2>/dev/null | grep -qF "$VALIDATOR_VERSION"; then
    echo "k8s-validate: installing kubernetes-validate $VALIDATOR_VERSION into $VENV"
    rm -rf "$VENV"
    if ! python3 -m venv "$VENV" 2>/dev/null; then
        # Debian's python3 keeps venv (ensurepip) in a package of its own.
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
        python3 -m venv "$VENV"
    fi
    "$VENV/bin/pip" install -q "kubernetes-validate==$VALIDATOR_VERSION"
fi
VALIDATE="$VENV/bin/kubernetes-validate"

# validate FILE ALLOWED_UNCHECKED_KINDS: every object passes for every version, except objects
# of the listed kinds, for which the validator may only say it has no schema.
validate() {
    local file=$1 unchecked=$2 version out objects passed
    objects=$(grep -c '^kind: ' "$file")
    for version in "${K8S_VERSIONS[@]}"; do
        out=$("$VALIDATE" --strict -k "$version" "$file" 2>&1) || {
            grep -v ' passed for resource ' <<<"$out" >&2 || true
            echo "k8s-validate: $file does not validate against Kubernetes $version" >&2
            return 1
        }
        passed=$(grep -c ' passed for resource ' <<<"$out" || true)
        if grep -v ' passed for resource ' <<<"$out" |
            grep -vE "Couldn't find schema for kind ($unchecked) with" | grep -q .; then
            grep -v ' passed for resource ' <<<"$out" >&2 || true
            echo "k8s-validate: $file: objects the validator did not check (Kubernetes $version)" >&2
            return 1
        fi
        echo "  Kubernetes $version: $passed of $objects objects valid${unchecked:+ ($unchecked: no schema, a CRD)}"
    done
}

echo "k8s-validate: dist/kubernetes (base)"
kubectl kustomize "$ROOT/dist/kubernetes" >"$TMP/base.yaml"
validate "$TMP/base.yaml" ""

echo "k8s-validate: dist/kubernetes/secrets (placeholder inputs)"
cp -r "$ROOT/dist/kubernetes/secrets" "$TMP/secrets"
for f in tls.crt tls.key client-ca.pem tickets.key; do
    echo "placeholder" >"$TMP/secrets/$f"
done
kubectl kustomize "$TMP/secrets" >"$TMP/secrets.yaml"
validate "$TMP/secrets.yaml" ""

echo "k8s-validate: dist/kubernetes with the cert-manager component"
mkdir -p "$TMP/overlay"
# kustomize takes bases and components by relative path only.
rel=$(python3 -c 'import os, sys; print(os.path.relpath(sys.argv[1], sys.argv[2]))' \
    "$ROOT/dist/kubernetes" "$TMP/overlay")
cat >"$TMP/overlay/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources: [$rel]
components: [$rel/cert-manager]
EOF
kubectl kustomize "$TMP/overlay" >"$TMP/overlay.yaml"
grep -q '^kind: Certificate$' "$TMP/overlay.yaml" || die "the component added no Certificate"
validate "$TMP/overlay.yaml" "Certificate"

echo "k8s-validate: certgate.toml's files are where the pod mounts them"
"$VENV/bin/python" - "$TMP/base.yaml" "$TMP/secrets.yaml" <<'EOF'
import re
import sys

import yaml

base = list(yaml.safe_load_all(open(sys.argv[1])))
inputs = {(o["kind"], o["metadata"]["name"]): o for o in yaml.safe_load_all(open(sys.argv[2]))}
config = next(o for o in base if o["kind"] == "ConfigMap"
              and o["metadata"]["name"].startswith("certgate-config"))
toml = config["data"]["certgate.toml"]
pod = next(o for o in base if o["kind"] == "Deployment")["spec"]["template"]["spec"]
volumes = {v["name"]: v for v in pod["volumes"]}
main = next(c for c in pod["containers"] if c["name"] == "certgate")
sidecar = next(c for c in pod["initContainers"] if c["name"] == "ticket-keys")


def files_of(volume):
    """The file names a volume holds, or None where a container writes them (emptyDir)."""
    if "configMap" in volume:
        name = volume["configMap"]["name"]
        cm = next((o for o in base if o["kind"] == "ConfigMap" and o["metadata"]["name"] == name),
                  inputs.get(("ConfigMap", name)))
        return set(cm["data"]) if cm else set()
    if "secret" in volume:
        s = volume["secret"]
        if "items" in s:
            return {i["path"] for i in s["items"]}
        return set(inputs[("Secret", s["secretName"])]["data"])
    return None


def where(path):
    for m in main["volumeMounts"]:
        if path.startswith(m["mountPath"].rstrip("/") + "/"):
            return m, path[len(m["mountPath"].rstrip("/")) + 1:]
    sys.exit(f"k8s-validate: {path} (certgate.toml) is under no volumeMount of the certgate container")


paths = re.findall(r'^\s*(?:cert|key|client_ca|ticket_keys)\s*=\s*"([^"]+)"', toml, re.M)
args = main["args"]
paths.append(args[args.index("--config") + 1])
for path in paths:
    mount, rel = where(path)
    files = files_of(volumes[mount["name"]])
    if files is None:
        # The tickets emptyDir: the sidecar must write this very file.
        if path not in " ".join(sidecar["command"]):
            sys.exit(f"k8s-validate: nothing writes {path} into volume {mount['name']}")
    elif rel not in files:
        sys.exit(f"k8s-validate: {path}: volume {mount['name']} holds {sorted(files)}, not {rel}")
    print(f"  {path}: volume {mount['name']}")
EOF

echo "k8s-validate: a broken object fails"
sed 's/^  replicas: 2$/  replicas: "two"/' "$TMP/base.yaml" >"$TMP/broken.yaml"
cmp -s "$TMP/base.yaml" "$TMP/broken.yaml" && die "found no 'replicas: 2' to break"
if "$VALIDATE" --strict --quiet -k "${K8S_VERSIONS[0]}" "$TMP/broken.yaml" >/dev/null 2>&1; then
    die "kubernetes-validate accepted replicas: \"two\""
fi
echo "  replicas: \"two\" is refused"
echo "k8s-validate: OK"
