#!/usr/bin/env bash
# Copies the Grafana dashboard and the Prometheus alerts into the Helm chart, which can only read
# files inside its own folder. deploy/ holds the originals; edit those, then run this script.
# The chart tests (ctest -L deploy) fail while the copies differ.
set -euo pipefail
repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
files_dir="$repo_root/helm/switchyard/files"
mkdir -p "$files_dir"
cp "$repo_root/deploy/grafana/switchyard.json" "$files_dir/switchyard.json"
cp "$repo_root/deploy/prometheus/alerts.yaml" "$files_dir/alerts.yaml"
echo "sync-chart-assets: copied the dashboard and alerts into $files_dir"
