#!/usr/bin/env bash
# Installs the Debian packages Switchyard builds and tests with, and only those that are missing.
# Idempotent: when everything is present it finishes in well under a second and touches nothing.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler libabsl-dev
  prometheus-cpp-dev libgloo-dev libopenblas-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  nlohmann-json3-dev libpcre2-dev libutf8proc-dev libxxhash-dev libspdlog-dev
  python3-numpy
  # Deployment tests (tests/helm): YAML in Python, and unzip for scripts/install-helm.sh.
  # helm, promtool and the Kubernetes schemas go to .cache/tools (scripts/install-*.sh).
  python3-yaml unzip
)

missing=()
for pkg in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
  [[ "$status" == "install ok installed" ]] || missing+=("$pkg")
done

if ((${#missing[@]} == 0)); then
  exit 0
fi

echo "setup-deps: installing ${missing[*]}"
sudo=""
if [[ $(id -u) -ne 0 ]]; then sudo="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
