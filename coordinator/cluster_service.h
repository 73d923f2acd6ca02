// Cluster membership on the coordinator: the ClusterService that workers call (registration,
// heartbeats, the rendezvous key-value store) and the loader that turns a complete set of
// registered workers into a loaded cluster.
//
// Lifecycle (control.proto): workers Register; when --num_workers have registered, ranks are
// assigned in registration order, the expert placement is computed (contiguous shards, or
// LayerPlacement::Balanced with redundant slots and uniform loads), and Load is called on every
// worker at once. When every Load answered, the cluster is SERVING and the on_ready callback gets
// the workers (rank order) with their KV block counts. A worker silent for longer than the
// heartbeat timeout is marked lost and on_lost is called once (full recovery is a later issue).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/model_config.h"
#include "switchyard/v1/control.grpc.pb.h"

namespace switchyard {

// The default bound on any one data-plane collective, in milliseconds (LoadRequest.comm_timeout_ms).
inline constexpr uint32_t kDefaultCommTimeoutMs = 60000;

struct ClusterOptions {
  int32_t num_workers = 1;
  std::string model_dir;  // sent to the workers in LoadRequest.model_dir
  ModelConfig model_config;
  int32_t redundant_experts = 0;  // extra expert slots per rank (0: contiguous shards)
  int32_t block_size = 16;
  uint64_t kv_cache_bytes = 0;  // 0: each worker uses its own --kv_cache_mb
  // "gloo", "nccl", or "auto": nccl when every worker registered with the cuda backend, gloo
  // otherwise (ResolveDataPlane).
  std::string data_plane = "auto";
  uint32_t comm_timeout_ms = kDefaultCommTimeoutMs;
  absl::Duration load_timeout = absl::Minutes(10);
  absl::Duration heartbeat_timeout = absl::Seconds(10);
};

// Where a worker is in its life: registered -> loading -> ready, or failed (its Load failed), or
// lost (silent past the heartbeat timeout once ready).
enum class WorkerState { kRegistered, kLoading, kReady, kFailed, kLost };
// "registered", "loading", "ready", "failed", "lost" (GetServerInfo, logs).
const char* WorkerStateName(WorkerState state);

// One worker as the coordinator knows it.
struct WorkerRecord {
  std::string worker_id;
  int32_t rank = -1;  // assigned at the expected count, registration order
  std::string address;
  std::string hostname;
  std::string backend;
  std::string metrics_address;
  WorkerState state = WorkerState::kRegistered;
  uint64_t num_kv_blocks = 0;
  uint64_t weight_bytes_loaded = 0;
  absl::Time last_heartbeat;
  std::shared_ptr<v1::WorkerService::Stub> stub;
};

enum class ClusterState { kStarting, kLoading, kServing, kFailed };

// The placement the cluster was loaded with, for GetServerInfo and metrics.
struct PlacementSummary {
  int64_t version = 0;
  int32_t num_ranks = 0;
  std::vector<std::string> experts_per_rank;  // first MoE layer, per rank: "0,1,2,3"
  std::string encoded;                        // text form of the first MoE layer's placement
};

// Computes one placement text per MoE layer (empty for a dense model) and the summary.
// INVALID_ARGUMENT when the experts cannot be split over `num_workers`.
absl::Status ComputePlacements(const ModelConfig& config, int32_t num_workers,
                               int32_t redundant_experts, std::vector<std::string>* layer_texts,
                               PlacementSummary* summary);

// The data plane the workers join: `requested` ("auto", "gloo" or "nccl") against the backends the
// workers registered with; "none" for a single worker (it exchanges nothing). INVALID_ARGUMENT for
// an unknown name; FAILED_PRECONDITION for nccl with a worker that is not on cuda (which Register
// refuses already).
absl::StatusOr<std::string> ResolveDataPlane(std::string_view requested,
                                             const std::vector<std::string>& worker_backends);

// Thread-safe. The service methods run on the control server's sync thread pool; StoreGet blocks
// there by design (it waits for keys). Start() runs one named thread ("membership") that loads the
// cluster and watches heartbeats; Stop() joins it.
class ClusterService final : public v1::ClusterService::Service {
 public:
  using ReadyCallback = std::function<void(const std::vector<WorkerRecord>& workers)>;
  using LostCallback = std::function<void(const WorkerRecord& worker, absl::Status why)>;

  ClusterService(ClusterOptions options, ReadyCallback on_ready, LostCallback on_lost);
  ~ClusterService() override;

  // Optional, before Start: called once per failed Load call (method name, code).
  void set_rpc_error_callback(std::function<void(const char*, absl::StatusCode)> callback) {
    on_rpc_error_ = std::move(callback);
  }

  void Start();
  void Stop();

  grpc::Status Register(grpc::ServerContext* context, const v1::RegisterRequest* request,
                        v1::RegisterResponse* response) override;
  grpc::Status Heartbeat(grpc::ServerContext* context, const v1::HeartbeatRequest* request,
                         v1::HeartbeatResponse* response) override;
  grpc::Status StoreSet(grpc::ServerContext* context, const v1::StoreSetRequest* request,
                        v1::StoreSetResponse* response) override;
  grpc::Status StoreGet(grpc::ServerContext* context, const v1::StoreGetRequest* request,
                        v1::StoreGetResponse* response) override;

  // Store access for tests and for the coordinator itself. Get waits up to `timeout`;
  // DEADLINE_EXCEEDED naming the missing keys.
  void Set(const std::string& key, std::string value);
  absl::Status Get(const std::vector<std::string>& keys, absl::Duration timeout,
                   std::vector<std::string>* values);

  ClusterState state() const;
  std::vector<WorkerRecord> workers() const;  // rank order once assigned, else registration order
  PlacementSummary placement() const;
  // The data plane the workers were loaded with ("gloo", "nccl" or "none"; empty before Load).
  std::string data_plane() const;
  int32_t num_ready() const;

 private:
  void MembershipLoop();
  absl::Status LoadAll();
  void CheckHeartbeats();

  const ClusterOptions options_;
  ReadyCallback on_ready_;
  LostCallback on_lost_;
  std::function<void(const char*, absl::StatusCode)> on_rpc_error_;

  mutable absl::Mutex mu_;
  std::vector<WorkerRecord> workers_ ABSL_GUARDED_BY(mu_);
  ClusterState state_ ABSL_GUARDED_BY(mu_) = ClusterState::kStarting;
  PlacementSummary placement_ ABSL_GUARDED_BY(mu_);
  std::string data_plane_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, std::string> store_ ABSL_GUARDED_BY(mu_);
  int64_t next_worker_idx_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t generation_ ABSL_GUARDED_BY(mu_) = 0;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  // The Load calls in flight, so that Stop does not wait for the load timeout.
  std::vector<grpc::ClientContext>* load_contexts_ ABSL_GUARDED_BY(mu_) = nullptr;
  std::thread thread_;
};

const char* ClusterStateName(ClusterState state);

}  // namespace switchyard
