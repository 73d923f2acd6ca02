#!/usr/bin/env bash
# The quick-start demo: a small Mixture-of-Experts checkpoint (random weights, real Hugging Face
# format) served by a local cluster: switchyard-coordinator and two switchyard-worker processes
# splitting the experts, on 127.0.0.1. Streams a generation with the `switchyard` client, shows
# the cluster status and the /metrics addresses, then stops everything it started.
#
#   scripts/demo.sh [BUILD_DIR]        (make demo)
#   SWITCHYARD_DEMO_KEEP=1 scripts/demo.sh   keep the cluster up until Ctrl-C
set -euo pipefail
build_dir=${1:-build}
bin="$build_dir/bin"
model_dir="$build_dir/demo-model"
log_dir="$build_dir/demo-logs"
num_workers=2
health_timeout_s=${SWITCHYARD_DEMO_TIMEOUT_S:-180}

for tool in switchyard-make-model switchyard-coordinator switchyard-worker switchyard; do
  if [[ ! -x "$bin/$tool" ]]; then
    echo "demo: $bin/$tool is missing; build first (make build)" >&2
    exit 1
  fi
done
mkdir -p "$log_dir"
rm -f "$log_dir"/*.ports

pids=()
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  for pid in "${pids[@]}"; do
    # Each server runs in its own process group (setsid): stop the group, then make sure.
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    for _ in $(seq 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL -- "-$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

show_logs() {
  for f in "$log_dir"/*.log; do
    echo "---- $f (last 30 lines)" >&2
    tail -n 30 "$f" >&2 || true
  done
}

port_free() {
  /usr/bin/python3 - "$1" <<'EOF'
import socket, sys
s = socket.socket()
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
EOF
}

# port_of FILE KEY: a bound port from a --port_file JSON ({"grpc": 50051, ...} or "host:port").
port_of() {
  /usr/bin/python3 - "$1" "$2" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
v = d.get(sys.argv[2], d.get(sys.argv[2] + "_port"))
if isinstance(v, str):
    v = v.rsplit(":", 1)[-1]
print(int(v))
EOF
}

# wait_for_file FILE PID WHAT: until the file exists, the process died, or the timeout.
wait_for_file() {
  local deadline=$((SECONDS + health_timeout_s))
  until [[ -s "$1" ]]; do
    if ! kill -0 "$2" 2>/dev/null; then
      echo "demo: $3 exited before listening" >&2; show_logs; exit 1
    fi
    if ((SECONDS > deadline)); then
      echo "demo: $3 did not write $1 within ${health_timeout_s}s" >&2; show_logs; exit 1
    fi
    sleep 0.2
  done
}

if [[ ! -f "$model_dir/config.json" ]]; then
  echo "== making a small qwen3_moe checkpoint in $model_dir"
  "$bin/switchyard-make-model" --family qwen3_moe --out "$model_dir" --seed 7
fi

# The coordinator takes the default ports when they are free, so a plain `switchyard status`
# reaches it; otherwise the kernel picks.
grpc_port=50051 control_port=50052 http_port=8000
for p in grpc_port control_port http_port; do
  port_free "${!p}" || printf -v "$p" 0
done

echo "== starting switchyard-coordinator (expects $num_workers workers); logs in $log_dir"
setsid "$bin/switchyard-coordinator" --model "$model_dir" --num_workers "$num_workers" \
  --grpc_port "$grpc_port" --control_port "$control_port" --http_port "$http_port" \
  --port_file "$log_dir/coordinator.ports" >"$log_dir/coordinator.log" 2>&1 &
pids+=($!)
wait_for_file "$log_dir/coordinator.ports" "${pids[0]}" "switchyard-coordinator"
grpc_port=$(port_of "$log_dir/coordinator.ports" grpc)
control_port=$(port_of "$log_dir/coordinator.ports" control)
http_port=$(port_of "$log_dir/coordinator.ports" http)

worker_http=()
for ((i = 0; i < num_workers; i++)); do
  echo "== starting switchyard-worker $i"
  setsid "$bin/switchyard-worker" --model "$model_dir" \
    --coordinator_address "127.0.0.1:$control_port" --advertise_host 127.0.0.1 \
    --control_port 0 --http_port 0 --backend cpu \
    --port_file "$log_dir/worker$i.ports" >"$log_dir/worker$i.log" 2>&1 &
  pids+=($!)
done
for ((i = 0; i < num_workers; i++)); do
  wait_for_file "$log_dir/worker$i.ports" "${pids[$((i + 1))]}" "switchyard-worker $i"
  worker_http+=("$(port_of "$log_dir/worker$i.ports" http)")
done

echo "== waiting for the cluster to load (GET /health on 127.0.0.1:$http_port)"
deadline=$((SECONDS + health_timeout_s))
until /usr/bin/python3 -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=2)" \
  "http://127.0.0.1:$http_port/health" 2>/dev/null; do
  for pid in "${pids[@]}"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "demo: a server process ($pid) exited while loading" >&2; show_logs; exit 1
    fi
  done
  if ((SECONDS > deadline)); then
    echo "demo: the cluster was not ready within ${health_timeout_s}s" >&2; show_logs; exit 1
  fi
  sleep 0.5
done

address="127.0.0.1:$grpc_port"
echo
echo "== switchyard generate --address $address (streamed as it arrives)"
echo "   (random weights: the text is gibberish, but every token went through experts on both workers)"
echo
"$bin/switchyard" generate --address "$address" \
  --prompt "Switchyard routes every token to its experts." --max_tokens 48 --temperature 0.8 --seed 1
echo
echo "== switchyard status --address $address"
"$bin/switchyard" status --address "$address"
echo
echo "== metrics"
echo "   coordinator  http://127.0.0.1:$http_port/metrics"
for ((i = 0; i < num_workers; i++)); do
  echo "   worker $i     http://127.0.0.1:${worker_http[$i]}/metrics"
done
echo "   try: $bin/switchyard bench --address $address --num_requests 32 --concurrency 8 --input_len 32 --output_len 16"
if [[ -n "${SWITCHYARD_DEMO_KEEP:-}" ]]; then
  echo "== the cluster stays up; Ctrl-C stops it"
  wait "${pids[0]}"
fi
echo "== stopping the cluster"
