#!/usr/bin/env bash
# Prints the path of a promtool binary, fetching one into the project-local tool cache if needed.
#
# promtool lives in Debian's `prometheus` package. Installing that package would also enable and
# start the Prometheus server (its postinst runs invoke-rc.d / systemctl start) and pull ~96 MB of
# dependencies, so instead we `apt-get download` the .deb and take only /usr/bin/promtool out of it
# (a static Go binary). A system /usr/bin/promtool, where present, is used as is.
# Idempotent and fast when present; concurrent callers serialise on a lock; fails loudly.
#
# Usage: scripts/install-promtool.sh        -> prints /abs/path/to/promtool
# Env:   SWITCHYARD_TOOLS_DIR  cache folder (default <repo>/.cache/tools)
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tools_dir=${SWITCHYARD_TOOLS_DIR:-$repo_root/.cache/tools}
dest_dir="$tools_dir/promtool"
promtool_bin="$dest_dir/promtool"

fail() { echo "install-promtool: $*" >&2; exit 1; }
works() { [[ -x "$1" ]] && "$1" --version >/dev/null 2>&1; }

if works /usr/bin/promtool; then echo /usr/bin/promtool; exit 0; fi
if works "$promtool_bin"; then echo "$promtool_bin"; exit 0; fi

mkdir -p "$tools_dir"
exec 9>"$tools_dir/.promtool.lock"
flock 9
if works "$promtool_bin"; then echo "$promtool_bin"; exit 0; fi

command -v apt-get >/dev/null || fail "apt-get not found; promtool comes from Debian's 'prometheus' package"
work=$(mktemp -d "$tools_dir/.promtool-download.XXXXXX")
chmod 0755 "$work"   # apt's _apt sandbox user must be able to write here
trap 'rm -rf "$work"' EXIT

download() { (cd "$work" && apt-get download -q prometheus >/dev/null 2>"$work/apt.err"); }
echo "install-promtool: downloading Debian's prometheus .deb (~19 MB) to extract promtool" >&2
if ! download; then
  # A fresh machine may have no package lists yet; refresh them once when we are allowed to.
  if [[ $(id -u) -eq 0 ]]; then
    apt-get update -qq >/dev/null 2>&1 || true
    download || fail "apt-get download prometheus failed: $(cat "$work/apt.err")"
  else
    fail "apt-get download prometheus failed (run 'apt-get update' as root?): $(cat "$work/apt.err")"
  fi
fi
deb=$(ls "$work"/prometheus_*.deb 2>/dev/null | head -n 1)
[[ -n "$deb" ]] || fail "apt-get download produced no prometheus_*.deb"
dpkg-deb -x "$deb" "$work/x" || fail "dpkg-deb could not unpack $deb"
works "$work/x/usr/bin/promtool" || fail "$deb holds no working usr/bin/promtool"

rm -rf "$dest_dir"
mkdir -p "$dest_dir"
mv "$work/x/usr/bin/promtool" "$promtool_bin"
echo "install-promtool: installed $("$promtool_bin" --version 2>&1 | head -n 1) at $promtool_bin" >&2
echo "$promtool_bin"
