#!/usr/bin/env bash
# Runs the benchmarks under bench/ and prints their figures (see docs/benchmarks.md).
set -euo pipefail
build_dir=${1:-build}
# OpenBLAS picks a slow generic kernel on some virtual CPUs; SkylakeX is right for AVX-512 machines.
if grep -q avx512f /proc/cpuinfo && [[ -z "${OPENBLAS_CORETYPE:-}" ]]; then
  export OPENBLAS_CORETYPE=SkylakeX
fi
echo "== bench-engine: single-process CPU engine"
"$build_dir/bin/bench-engine"
if [[ -x "$build_dir/bin/bench-dispatch" ]]; then
  echo "== bench-dispatch: MoE dispatch + combine over Gloo (2 and 4 processes on 127.0.0.1)"
  "$build_dir/bin/bench-dispatch"
fi
echo "== bench-scheduler: the coordinator's scheduler cost per step (no model compute)"
"$build_dir/bin/bench-scheduler"
echo "== bench-coordinator: the step loop's own cost per step (4 fake workers, 256 requests)"
"$build_dir/bin/bench-coordinator"
