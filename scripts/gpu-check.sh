#!/usr/bin/env bash
# GPU check: the CUDA tests and the MoE layer benchmarks, run on a GPU machine from a build made on
# a machine without one.
#
# Two steps:
#   1. Here (the build machine, no GPU needed):
#        scripts/gpu-check.sh bundle
#      builds build-cuda (configured with -DSWITCHYARD_WITH_CUDA=ON) and packs into
#      build-cuda/gpu-bundle/bundle.tar.xz (about 7 MB) the gpu test binaries, moe-layer-bench,
#      moe_layer_torch.py and every shared library they need that a bare CUDA machine lacks
#      (abseil, OpenBLAS, PCRE2, utf8proc, gfortran, ...; found with ldd). libc, libstdc++, the
#      CUDA driver, cudart and cuBLAS are not copied: the GPU machine has its own (cuBLAS alone is
#      far over the 64 MiB the tool carries). Uncompressed the bundle is ~48 MB, mostly OpenBLAS.
#   2. On the GPU machine, through the device tool (one call; about 5 minutes on an H100):
#        run(command="bash scripts/gpu-check.sh run", carry=["build-cuda/gpu-bundle"],
#            timeout_s=600)
#      runs the gpu tests (kernels_cuda_test, grouped_linear_gpu_test, cuda_engine_test,
#      cuda_ep_gpu_test, nccl_communicator_test), moe-layer-bench, bench/gpu/moe_layer_torch.py and,
#      last, kernels_cuda_test under compute-sanitizer memcheck, writing all output under $OUT (or
#      ./gpu-check-out): env.txt (nvidia-smi, library paths,
#      ldd), tests.log, moe_layer_bench.log, moe_layer.csv, engine_bench.log (bench-engine on
#      the demo model and the default shape), moe_layer_torch.log, moe_layer_torch.csv,
#      summary.txt -- eight files, the tool's limit.
#      `run --quick` cuts the benchmark repetitions (for a rerun when time is short).
#
# Every step has its own timeout within one budget (GPU_CHECK_BUDGET_S, default 540 s, inside the
# tool's 600 s per call), and summary.txt is rewritten after each step: a hung kernel costs its
# step, not the whole lease, and a run cut short still returns what it measured.
set -uo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
build_dir=${BUILD_DIR:-$repo/build-cuda}
carried=$build_dir/gpu-bundle              # what the device tool carries: bundle.tar.xz
staging=$build_dir/gpu-bundle-staging     # the unpacked bundle, on the build machine
bundle=${GPU_BUNDLE_DIR:-/tmp/sy-gpu-bundle}  # where it is unpacked on the GPU machine
gpu_tests=(kernels_cuda_test grouped_linear_gpu_test cuda_engine_test cuda_ep_gpu_test
           nccl_communicator_test)
binaries=("${gpu_tests[@]/#/tests/}" bin/moe-layer-bench bin/bench-engine)

# Libraries the GPU machine provides itself (or must: the driver).
system_lib_pattern='^(linux-vdso|ld-linux|libc\.so|libm\.so|libdl\.so|librt\.so|libpthread\.so|libstdc\+\+\.so|libgcc_s\.so|libcuda\.so|libcudart\.so|libcublas\.so|libcublasLt\.so|libnccl\.so)'

make_bundle() {
  set -e
  if [[ ! -f $build_dir/CMakeCache.txt ]]; then
    cmake -S "$repo" -B "$build_dir" -G Ninja -DSWITCHYARD_WITH_CUDA=ON
  fi
  cmake --build "$build_dir" --target "${gpu_tests[@]}" moe-layer-bench bench-engine -j"${JOBS:-2}"
  local bundle=$staging
  rm -rf "$bundle" "$carried"
  mkdir -p "$bundle/bin" "$bundle/lib" "$carried"
  for b in "${binaries[@]}"; do
    cp "$build_dir/$b" "$bundle/bin/"
    strip --strip-debug "$bundle/bin/$(basename "$b")" || true
  done
  cp "$repo/bench/gpu/moe_layer_torch.py" "$bundle/bin/"
  # Every non-system library the binaries resolve to, and theirs (ldd lists the closure).
  for b in "$bundle"/bin/*; do
    [[ -x $b && $b != *.py ]] || continue
    ldd "$b" | awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}'
  done | sort -u | while read -r name path; do
    if [[ ! $name =~ $system_lib_pattern ]]; then
      cp -L "$path" "$bundle/lib/$name"
    fi
  done
  strip --strip-unneeded "$bundle"/lib/*.so* 2>/dev/null || true
  ls -l "$bundle/bin" "$bundle/lib"
  XZ_OPT=-T0 tar -C "$bundle" -cJf "$carried/bundle.tar.xz" bin lib
  echo "bundle: $carried/bundle.tar.xz ($(du -sh "$carried/bundle.tar.xz" | cut -f1); unpacked $(du -sh "$bundle" | cut -f1))"
  echo "next: run(command=\"bash scripts/gpu-check.sh run\", carry=[\"build-cuda/gpu-bundle\"], timeout_s=600)"
}

# Directories holding the CUDA runtime and cuBLAS on the GPU machine (toolkit or pip wheels).
cuda_lib_dirs() {
  local roots=(/usr/local/cuda/lib64 /usr/local/cuda/lib /usr/local/cuda/targets/x86_64-linux/lib)
  local site
  site=$(python3 -c 'import nvidia, os; print(os.path.dirname(list(nvidia.__path__)[0]))' 2>/dev/null || true)
  [[ -n $site ]] && roots+=("$site/nvidia")
  # NCCL (218 MB here, over the carry limit) comes from the machine too: its toolkit or torch's
  # nvidia-nccl wheel; the ABI of NCCL 2.x is stable.
  for lib in libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libnccl.so.2; do
    find "${roots[@]}" -maxdepth 4 -name "$lib*" 2>/dev/null | head -1 | xargs -r dirname
  done | sort -u | paste -sd: -
}

run_checks() {
  local quick=${1:-}
  local out=${OUT:-$repo/gpu-check-out}
  mkdir -p "$out"
  if [[ ! -f $carried/bundle.tar.xz ]]; then
    echo "no $carried/bundle.tar.xz: run 'scripts/gpu-check.sh bundle' on the build machine and carry build-cuda/gpu-bundle" | tee "$out/summary.txt"
    return 1
  fi
  rm -rf "$bundle" && mkdir -p "$bundle" && tar -C "$bundle" -xJf "$carried/bundle.tar.xz" || return 1
  export LD_LIBRARY_PATH="$bundle/lib:$(cuda_lib_dirs)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  {
    date -u
    nvidia-smi || echo "nvidia-smi failed"
    echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
    for b in "$bundle"/bin/*; do
      [[ $b == *.py ]] && continue
      echo "== ldd $(basename "$b")"
      ldd "$b"
    done
  } > "$out/env.txt" 2>&1
  local missing
  missing=$(grep -c "=> not found" "$out/env.txt" || true)
  local status=0 summary=()
  # One budget for the whole run, inside the device tool's 600 s per call: each step gets at most
  # its own cap and what is left, and the summary is rewritten after every step, so a run cut short
  # still returns what it measured.
  local deadline=$((SECONDS + ${GPU_CHECK_BUDGET_S:-540}))
  cap() {
    local left=$((deadline - SECONDS))
    ((left < 1)) && left=1
    echo $((left < $1 ? left : $1))
  }
  write_summary() {
    {
      printf '%s\n' "${summary[@]}"
      echo
      grep -E "^\[  (PASSED|FAILED|SKIPPED) " "$out/tests.log" 2>/dev/null || true
      for log in moe_layer_bench.log engine_bench.log moe_layer_torch.log; do
        [[ -f $out/$log ]] && { echo; cat "$out/$log"; }
      done
    } > "$out/summary.txt"
  }
  if (( missing > 0 )); then
    summary+=("ldd: $missing libraries not found (see env.txt)")
    status=1
  fi
  : > "$out/tests.log"
  for t in "${gpu_tests[@]}"; do
    echo "== $t" >> "$out/tests.log"
    timeout "$(cap 100)" "$bundle/bin/$t" --gtest_color=no >> "$out/tests.log" 2>&1
    local rc=$?
    summary+=("$t: $( ((rc == 0)) && echo PASSED || echo "FAILED (exit $rc)")")
    ((rc == 0)) || status=1
    write_summary
  done
  if grep -q "no usable CUDA device" "$out/tests.log"; then
    summary+=("WARNING: gpu tests SKIPPED: no usable CUDA device (see env.txt)")
    status=1
  fi
  local bench_args=(--out "$out/moe_layer.csv")
  [[ $quick == --quick ]] && bench_args+=(--quick)
  timeout "$(cap 150)" "$bundle/bin/moe-layer-bench" "${bench_args[@]}" \
    > "$out/moe_layer_bench.log" 2>&1
  local rc=$?
  summary+=("moe-layer-bench: exit $rc")
  ((rc == 0)) || status=1
  write_summary
  # The whole engine on the GPU: the demo model (launch-bound) and the bench's default shape;
  # decode includes greedy sampling on the device.
  : > "$out/engine_bench.log"
  for shape in "--demo 1" ""; do
    echo "== bench-engine --backend cuda $shape" >> "$out/engine_bench.log"
    # shellcheck disable=SC2086
    timeout "$(cap 60)" "$bundle/bin/bench-engine" --backend cuda $shape \
      >> "$out/engine_bench.log" 2>&1
    rc=$?
    summary+=("bench-engine ${shape:-default shape}: exit $rc")
    ((rc == 0)) || status=1
    write_summary
  done
  local torch_args=(--ours "$out/moe_layer.csv" --out "$out/moe_layer_torch.csv")
  [[ $quick == --quick ]] && torch_args+=(--quick)
  PYTHONUNBUFFERED=1 timeout "$(cap 130)" python3 "$bundle/bin/moe_layer_torch.py" \
    "${torch_args[@]}" > "$out/moe_layer_torch.log" 2>&1
  rc=$?
  summary+=("moe_layer_torch.py: exit $rc")
  ((rc == 0)) || status=1
  write_summary
  # Last, as time allows: the kernel tests under compute-sanitizer (out-of-bounds and misaligned
  # accesses, uninitialised device memory reads are not checked by memcheck).
  local sanitizer
  sanitizer=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
  if [[ -x $sanitizer ]]; then
    echo "== compute-sanitizer --tool memcheck kernels_cuda_test" >> "$out/tests.log"
    timeout "$(cap 90)" "$sanitizer" --tool memcheck --error-exitcode 3 \
      "$bundle/bin/kernels_cuda_test" --gtest_color=no --gtest_brief=1 >> "$out/tests.log" 2>&1
    rc=$?
    summary+=("memcheck kernels_cuda_test: $( ((rc == 0)) && echo clean || echo "exit $rc (3: errors found, 124: timed out)")")
    ((rc == 0)) || status=1
  else
    summary+=("memcheck: compute-sanitizer not found")
  fi
  write_summary
  cat "$out/summary.txt"
  return $status
}

case ${1:-} in
  bundle) make_bundle ;;
  run) run_checks "${2:-}" ;;
  *)
    echo "usage: $0 bundle | run [--quick]   (see the header of this script)" >&2
    exit 2
    ;;
esac
