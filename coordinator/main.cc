// switchyard-coordinator: parses the flags (env SWITCHYARD_<FLAG> too) and runs the Coordinator
// until SIGTERM or SIGINT, then drains and exits 0.
#include <csignal>
#include <cstdlib>

#include "absl/flags/flag.h"
#include "absl/flags/usage.h"
#include "common/flags.h"
#include "common/logging.h"
#include "coordinator/cluster_service.h"
#include "coordinator/coordinator.h"

ABSL_FLAG(std::string, model, "", "checkpoint directory (reads config.json and tokenizer.json)");
ABSL_FLAG(std::string, served_model_name, "", "model name in the API and metrics "
          "(default: the checkpoint directory's name)");
ABSL_FLAG(int32_t, num_workers, 1, "workers to wait for: the expert-parallel world size");
ABSL_FLAG(std::string, log_level, "info", "trace, debug, info, warn, error, off");
ABSL_FLAG(std::string, host, "0.0.0.0", "bind address of every port");
ABSL_FLAG(int32_t, grpc_port, 50051, "client API port (0: pick a free one)");
ABSL_FLAG(int32_t, control_port, 50052, "control port for the workers (0: pick a free one)");
ABSL_FLAG(int32_t, http_port, 8000, "/metrics and /health port (0: pick a free one)");
ABSL_FLAG(std::string, port_file, "", "write the bound ports as JSON to this file");
ABSL_FLAG(int64_t, max_queued_requests, 4096, "waiting requests before RESOURCE_EXHAUSTED");
ABSL_FLAG(int64_t, max_num_seqs, 256, "running sequences per worker");
ABSL_FLAG(int64_t, max_num_batched_tokens, 2048, "tokens per worker per step");
ABSL_FLAG(int64_t, max_model_len, 0, "context length (0: the model's max_position_embeddings)");
ABSL_FLAG(int32_t, block_size, 16, "tokens per KV block");
ABSL_FLAG(int32_t, redundant_experts, 0, "extra expert slots per rank (balanced placement)");
ABSL_FLAG(double, drain_timeout_s, 30, "on SIGTERM, seconds to let live requests finish");
ABSL_FLAG(double, heartbeat_timeout_s, 10, "a worker silent this long is declared lost");
ABSL_FLAG(double, step_timeout_s, 120, "a step that takes longer fails");
ABSL_FLAG(double, load_timeout_s, 1800, "workers must load within this many seconds");
ABSL_FLAG(double, comm_timeout_s, 60, "any one data-plane collective fails after this many seconds");
ABSL_FLAG(int64_t, kv_cache_mb, 0,
          "KV-cache budget per worker in MiB, sent in Load; a worker's own --kv_cache_mb wins "
          "(0: each worker's own value or its default)");
ABSL_FLAG(std::string, data_plane, "auto",
          "expert-parallel transport: gloo (TCP), nccl (GPUs), or auto (nccl when every worker "
          "runs on cuda)");

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "switchyard-coordinator --model CHECKPOINT_DIR [--num_workers N] [flags]\n"
      "Serves the client API and drives the workers; every flag also reads SWITCHYARD_<FLAG>.");
  switchyard::ParseFlagsWithEnv(argc, argv);
  switchyard::InitLogging("coordinator");
  if (absl::Status s = switchyard::SetLogLevel(absl::GetFlag(FLAGS_log_level)); !s.ok()) {
    SY_LOG_ERROR("--log_level: {}", s.ToString());
    return 2;
  }
  switchyard::CoordinatorOptions options;
  options.model_dir = absl::GetFlag(FLAGS_model);
  if (options.model_dir.empty()) {
    SY_LOG_ERROR("--model (SWITCHYARD_MODEL) is required: the checkpoint directory");
    return 2;
  }
  options.served_model_name = absl::GetFlag(FLAGS_served_model_name);
  options.num_workers = absl::GetFlag(FLAGS_num_workers);
  options.host = absl::GetFlag(FLAGS_host);
  options.grpc_port = absl::GetFlag(FLAGS_grpc_port);
  options.control_port = absl::GetFlag(FLAGS_control_port);
  options.http_port = absl::GetFlag(FLAGS_http_port);
  options.port_file = absl::GetFlag(FLAGS_port_file);
  options.max_queued_requests = absl::GetFlag(FLAGS_max_queued_requests);
  options.max_num_seqs = absl::GetFlag(FLAGS_max_num_seqs);
  options.max_num_batched_tokens = absl::GetFlag(FLAGS_max_num_batched_tokens);
  options.max_model_len = absl::GetFlag(FLAGS_max_model_len);
  options.block_size = absl::GetFlag(FLAGS_block_size);
  options.redundant_experts = absl::GetFlag(FLAGS_redundant_experts);
  options.drain_timeout = absl::Seconds(absl::GetFlag(FLAGS_drain_timeout_s));
  options.heartbeat_timeout = absl::Seconds(absl::GetFlag(FLAGS_heartbeat_timeout_s));
  options.step_timeout = absl::Seconds(absl::GetFlag(FLAGS_step_timeout_s));
  options.load_timeout = absl::Seconds(absl::GetFlag(FLAGS_load_timeout_s));
  options.data_plane = absl::GetFlag(FLAGS_data_plane);
  const double comm_timeout_s = absl::GetFlag(FLAGS_comm_timeout_s);
  if (!(comm_timeout_s > 0 && comm_timeout_s <= 3600)) {
    SY_LOG_ERROR("--comm_timeout_s: expected (0, 3600], found {}", comm_timeout_s);
    return 2;
  }
  options.comm_timeout_ms = static_cast<uint32_t>(comm_timeout_s * 1000);
  const int64_t kv_cache_mb = absl::GetFlag(FLAGS_kv_cache_mb);
  if (kv_cache_mb < 0) {
    SY_LOG_ERROR("--kv_cache_mb: expected >= 0, found {}", kv_cache_mb);
    return 2;
  }
  options.kv_cache_bytes = static_cast<uint64_t>(kv_cache_mb) << 20;
  if (auto plane = switchyard::ResolveDataPlane(options.data_plane, {}); !plane.ok()) {
    SY_LOG_ERROR("--data_plane: {}", plane.status().ToString());
    return 2;
  }
  if (options.num_workers < 1) {
    SY_LOG_ERROR("--num_workers = {}: expected at least 1", options.num_workers);
    return 2;
  }

  // Block the signals in every thread (the servers' threads inherit the mask); sigwait below.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  absl::StatusOr<std::unique_ptr<switchyard::Coordinator>> coordinator =
      switchyard::Coordinator::Start(options);
  if (!coordinator.ok()) {
    SY_LOG_ERROR("cannot start: {}", coordinator.status().ToString());
    return 1;
  }
  int signal_number = 0;
  sigwait(&signals, &signal_number);
  SY_LOG_INFO("signal {}: shutting down", signal_number);
  (*coordinator)->Drain();
  SY_LOG_INFO("stopped");
  return 0;
}
