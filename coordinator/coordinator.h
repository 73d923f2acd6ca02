// The switchyard-coordinator process, wired together: the client gRPC server (InferenceService,
// grpc.health.v1, reflection), the control gRPC server (ClusterService), the HTTP server
// (/metrics, /health), the step loop, and the draining shutdown. main.cc parses the flags into
// CoordinatorOptions and calls Start, WaitForSignal and Drain.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "coordinator/cluster_service.h"

namespace switchyard {

struct CoordinatorOptions {
  std::string model_dir;          // reads config.json and tokenizer.json only
  std::string served_model_name;  // default: the checkpoint directory's name
  int32_t num_workers = 1;
  std::string host = "0.0.0.0";  // bind address of every port
  int32_t grpc_port = 50051;     // 0: pick a free port
  int32_t control_port = 50052;
  int32_t http_port = 8000;
  std::string port_file;  // when set, the bound ports are written there as JSON
  int64_t max_queued_requests = 4096;
  int64_t max_num_seqs = 256;
  int64_t max_num_batched_tokens = 2048;
  int64_t max_model_len = 0;  // 0: the model's max_position_embeddings
  int32_t block_size = 16;
  int32_t redundant_experts = 0;
  absl::Duration drain_timeout = absl::Seconds(30);
  absl::Duration heartbeat_timeout = absl::Seconds(10);
  absl::Duration step_timeout = absl::Seconds(120);
  absl::Duration load_timeout = absl::Minutes(30);
  uint32_t comm_timeout_ms = kDefaultCommTimeoutMs;  // any one data-plane collective
  uint64_t kv_cache_bytes = 0;  // per worker; 0: each worker's own --kv_cache_mb or default
  std::string data_plane = "auto";  // auto, gloo or nccl (ClusterOptions::data_plane)
};

class Coordinator {
 public:
  virtual ~Coordinator() = default;
  // Loads the model description, starts every server and the membership thread.
  static absl::StatusOr<std::unique_ptr<Coordinator>> Start(const CoordinatorOptions& options);
  // SIGTERM: health NOT_SERVING, new requests UNAVAILABLE, live requests finish up to the drain
  // timeout (then UNAVAILABLE); stops every server. Blocks.
  virtual void Drain() = 0;
  virtual int grpc_port() const = 0;
  virtual int control_port() const = 0;
  virtual int http_port() const = 0;
};

}  // namespace switchyard
