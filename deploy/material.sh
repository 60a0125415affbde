#!/bin/sh
# Makes a deployment's secret material with `firetower certs`, plus what the config files
# cannot hold literally (docs/deployment.md, "Certificates and keys"):
#
#   OUT/tls/ca.crt, OUT/tls/<role>-<id>.crt/.key   the CA and one certificate per node id
#   OUT/auth/jwt-hs256.key                         the edges' client-token secret
#   OUT/auth/api.key                               backends and the CLI (publish + admin)
#   OUT/auth/member.key                            every node presents it (member)
#   OUT/auth/api-keys.toml                         the SHA-256 entries of those two keys, as
#                                                  one TOML value: what the metastores and
#                                                  distributors take as
#                                                  FIRETOWER_<ROLE>__API__KEYS
#   OUT/k8s-secrets.yaml (with --k8s NAMESPACE)    the Kubernetes Secrets deploy/k8s mounts
#
# Usage: material.sh [--k8s NAMESPACE] [--chown UID:GID] OUT METASTORES DISTRIBUTORS EDGES
#
# Certificates name their node id and `firetower certs` keeps no CA key, so make them for
# as many distributors and edges as the deployment may ever scale to; more later means a
# new set and three rolling restarts (docs/security.md). An OUT that already holds a CA is
# left as it is (the compose file runs this at every `up`).
#
# Needs: the firetower binary (FIRETOWER, default `firetower` on PATH), sh, sha256sum,
# base64, tr, cut. Nothing here reaches the network.
set -eu

FIRETOWER=${FIRETOWER:-firetower}
namespace=""
owner=""
while [ $# -gt 0 ]; do
    case "$1" in
        --k8s) namespace=$2; shift 2 ;;
        --chown) owner=$2; shift 2 ;;
        --) shift; break ;;
        -*) echo "material.sh: unknown option $1" >&2; exit 64 ;;
        *) break ;;
    esac
done
if [ $# -ne 4 ]; then
    echo "usage: material.sh [--k8s NAMESPACE] [--chown UID:GID] OUT METASTORES DISTRIBUTORS EDGES" >&2
    exit 64
fi
out=$1 metastores=$2 distributors=$3 edges=$4

if [ -f "$out/tls/ca.crt" ]; then
    echo "material.sh: $out already holds a CA; keeping it"
else
    "$FIRETOWER" certs --out "$out" --metastores "$metastores" \
        --distributors "$distributors" --edges "$edges"
fi

# The key files hold the key alone (no newline), so the digest of the file is the digest
# the nodes compare with (net/src/api_auth.rs hashes the trimmed key).
digest() { sha256sum "$1" | cut -c1-64; }
backend=$(digest "$out/auth/api.key")
member=$(digest "$out/auth/member.key")
# No trailing newline: the value goes into an environment variable as it is.
printf '[{ name = "backend", scopes = ["publish", "admin"], sha256 = "%s" }, { name = "cluster", scopes = ["member"], sha256 = "%s" }]' \
    "$backend" "$member" >"$out/auth/api-keys.toml"

if [ -n "$namespace" ]; then
    yaml=$out/k8s-secrets.yaml
    b64() { base64 <"$1" | tr -d '\n'; }
    # secret NAME FILE... : one Secret whose keys are the files' base names.
    secret() {
        name=$1
        shift
        echo '---'
        printf 'apiVersion: v1\nkind: Secret\nmetadata:\n  name: %s\n  namespace: %s\n  labels:\n    app.kubernetes.io/name: firetower\ntype: Opaque\ndata:\n' \
            "$name" "$namespace"
        for file in "$@"; do
            printf '  %s: %s\n' "$(basename "$file")" "$(b64 "$file")"
        done
    }
    # node_files ROLE COUNT: the CA and that role's certificates and keys.
    node_files() {
        files="$out/tls/ca.crt"
        i=1
        while [ "$i" -le "$2" ]; do
            files="$files $out/tls/$1-$i.crt $out/tls/$1-$i.key"
            i=$((i + 1))
        done
        echo "$files"
    }
    {
        echo "# Made by deploy/material.sh: private keys. Apply it, never commit it."
        # shellcheck disable=SC2046 # the file names have no spaces
        secret firetower-tls-metastore $(node_files metastore "$metastores")
        # shellcheck disable=SC2046
        secret firetower-tls-distributor $(node_files distributor "$distributors")
        # shellcheck disable=SC2046
        secret firetower-tls-edge $(node_files edge "$edges")
        secret firetower-auth "$out/auth/member.key" "$out/auth/api.key" \
            "$out/auth/jwt-hs256.key" "$out/auth/api-keys.toml"
    } >"$yaml"
    chmod 600 "$yaml"
    echo "kubernetes secrets: $yaml (kubectl apply -f $yaml)"
fi

if [ -n "$owner" ]; then
    chown -R "$owner" "$out"
fi
echo "api keys value (FIRETOWER_METASTORE__API__KEYS, FIRETOWER_DISTRIBUTOR__API__KEYS): $out/auth/api-keys.toml"
