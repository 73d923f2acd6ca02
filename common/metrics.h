// Prometheus metrics of the coordinator and the workers, and the HTTP server that exposes them.
//
// docs/metrics.md (machine-readable: deploy/metrics.txt) is the contract: every family named
// there is registered here, with its type, labels and bucket set, and nowhere else. Servers hold a
// CoordinatorMetrics or WorkerMetrics whose members are the child series with model_name (and
// ep_rank) bound, so the per-token path only touches prebuilt references.
//
//   auto registry = std::make_shared<prometheus::Registry>();
//   metrics::CoordinatorMetrics m(*registry, "demo", /*num_workers=*/2);
//   m.num_requests_running.Set(3);
//   m.RequestErrors(absl::StatusCode::kResourceExhausted).Increment();
//   SY_ASSIGN_OR_RETURN(auto http, metrics::MetricsHttpServer::Start(
//       {.host = "0.0.0.0", .port = 8000}, registry, [&] { return ReadyStatus(); }));
//   SY_LOG_INFO("http={}", http->bound_port());
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "common/http_server.h"
#include "prometheus/collectable.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"


namespace switchyard::metrics {

// Bucket sets of the contract (upper bounds; +Inf is implied).
const prometheus::Histogram::BucketBoundaries& TtftBuckets();
const prometheus::Histogram::BucketBoundaries& ItlBuckets();
const prometheus::Histogram::BucketBoundaries& RequestBuckets();
const prometheus::Histogram::BucketBoundaries& IterationBuckets();
const prometheus::Histogram::BucketBoundaries& StepBuckets();
const prometheus::Histogram::BucketBoundaries& AllToAllBuckets();
const prometheus::Histogram::BucketBoundaries& RatioBuckets();

// The gRPC status name of a code ("RESOURCE_EXHAUSTED"), the `code` label's values. gRPC and absl
// share the numbering, so a grpc::StatusCode casts to int works too.
std::string StatusCodeName(absl::StatusCode code);
std::string StatusCodeName(int grpc_code);

// The coordinator's series (docs/metrics.md: requests, expert parallelism, cluster health).
// Construction registers every coordinator family in `registry` (which must outlive this) and
// creates the series that always exist: finished_reason stop/length/abort, worker_up for ranks
// 0..num_workers-1 (at 0), request_errors for the codes the API returns (at 0), and
// control_rpc_errors for each WorkerService method with UNAVAILABLE (at 0), so a fresh
// coordinator already exports every family. Thread-safe: the members are prometheus series (atomic
// updates); the accessors that create series on first use take a mutex, so keep their result when
// you can. A second instance on the same registry shares the first one's series (the registry
// merges families of the same name).
class CoordinatorMetrics {
 public:
  CoordinatorMetrics(prometheus::Registry& registry, const std::string& model_name,
                     int num_workers);
  CoordinatorMetrics(const CoordinatorMetrics&) = delete;
  CoordinatorMetrics& operator=(const CoordinatorMetrics&) = delete;

  // Requests.
  prometheus::Gauge& num_requests_running;
  prometheus::Gauge& num_requests_waiting;
  prometheus::Gauge& request_queue_capacity;
  prometheus::Gauge& kv_cache_usage_perc;
  prometheus::Counter& prompt_tokens;         // switchyard_prompt_tokens_total
  prometheus::Counter& generation_tokens;     // switchyard_generation_tokens_total
  prometheus::Counter& request_success_stop;  // switchyard_request_success_total{stop}
  prometheus::Counter& request_success_length;
  prometheus::Counter& request_success_abort;
  prometheus::Histogram& time_to_first_token_seconds;
  prometheus::Histogram& inter_token_latency_seconds;
  prometheus::Histogram& e2e_request_latency_seconds;
  prometheus::Histogram& request_queue_time_seconds;
  prometheus::Histogram& request_prefill_time_seconds;
  prometheus::Histogram& request_decode_time_seconds;
  prometheus::Counter& prefix_cache_queries;  // switchyard_prefix_cache_queries_total
  prometheus::Counter& prefix_cache_hits;     // switchyard_prefix_cache_hits_total
  prometheus::Counter& num_preemptions;       // switchyard_num_preemptions_total
  prometheus::Histogram& iteration_tokens;

  // Expert parallelism.
  prometheus::Histogram& moe_balancedness;
  prometheus::Gauge& moe_placement_version;
  prometheus::Counter& moe_rebalances;  // switchyard_moe_rebalances_total

  // Cluster health.
  prometheus::Gauge& cluster_workers_expected;
  prometheus::Gauge& cluster_workers_ready;

  // switchyard_request_success_total for "stop", "length" or "abort"; anything else is a bug and
  // counts as "abort".
  prometheus::Counter& RequestSuccess(absl::string_view finished_reason);
  // switchyard_request_errors_total{code}; created at 0 on first use.
  prometheus::Counter& RequestErrors(absl::StatusCode code);
  prometheus::Counter& RequestErrors(int grpc_code);
  // switchyard_worker_up{ep_rank}.
  prometheus::Gauge& WorkerUp(int ep_rank);
  // switchyard_control_rpc_errors_total{method, code}; method is the WorkerService RPC name.
  prometheus::Counter& ControlRpcErrors(absl::string_view method, absl::StatusCode code);

 private:
  const std::string model_name_;
  prometheus::Family<prometheus::Counter>& request_errors_family_;
  prometheus::Family<prometheus::Gauge>& worker_up_family_;
  prometheus::Family<prometheus::Counter>& control_rpc_errors_family_;
  absl::Mutex mu_;
  std::map<int, prometheus::Counter*> request_errors_ ABSL_GUARDED_BY(mu_);
  std::map<int, prometheus::Gauge*> worker_up_ ABSL_GUARDED_BY(mu_);
  std::map<std::pair<std::string, int>, prometheus::Counter*> control_rpc_errors_
      ABSL_GUARDED_BY(mu_);
};

// One worker's series, with model_name and ep_rank bound. Create it once the coordinator has
// assigned the rank (worker series appear from then on). `device` is "cpu" or "cuda:N".
// per_expert_metrics (--metrics_per_expert) registers switchyard_moe_expert_tokens_total.
// Thread-safety as CoordinatorMetrics.
class WorkerMetrics {
 public:
  WorkerMetrics(prometheus::Registry& registry, const std::string& model_name, int ep_rank,
                const std::string& device, bool per_expert_metrics);
  WorkerMetrics(const WorkerMetrics&) = delete;
  WorkerMetrics& operator=(const WorkerMetrics&) = delete;

  prometheus::Counter& moe_rank_tokens;  // switchyard_moe_rank_tokens_total
  prometheus::Histogram& all_to_all_dispatch_seconds;
  prometheus::Histogram& all_to_all_combine_seconds;
  prometheus::Counter& all_to_all_dispatch_bytes;  // switchyard_moe_all_to_all_bytes_total
  prometheus::Counter& all_to_all_combine_bytes;
  prometheus::Histogram& step_seconds;  // switchyard_worker_step_seconds
  prometheus::Gauge& device_memory_used_bytes;
  prometheus::Gauge& device_memory_total_bytes;

  bool per_expert_metrics() const { return expert_tokens_family_ != nullptr; }
  // switchyard_moe_expert_tokens_total{layer, expert}; nullptr unless per_expert_metrics.
  prometheus::Counter* ExpertTokens(int layer_idx, int expert_idx);

 private:
  const std::string model_name_;
  const std::string ep_rank_;
  prometheus::Family<prometheus::Counter>* expert_tokens_family_ = nullptr;
  absl::Mutex mu_;
  std::map<std::pair<int, int>, prometheus::Counter*> expert_tokens_ ABSL_GUARDED_BY(mu_);
};

// GET /health: OK -> 200 "ok"; otherwise 503 with the status message as the one-line reason.
using ReadyCallback = std::function<absl::Status()>;

struct HttpServerOptions {
  std::string host = "0.0.0.0";
  int port = 0;  // 0: the kernel picks a free port; see bound_port().
};

// An HTTP server (common/http_server.h) with GET /metrics (Prometheus text of `collectable`,
// usually the registry) and GET /health (the ready callback) on one port; anything else is 404.
// The callback runs on the server's thread: it must be thread-safe and must not block. Stops in the
// destructor. prometheus-cpp's Exposer is not used: it cannot answer /health with a 503, and its
// civetweb threads have stacks too small for the thread-local storage of cuBLAS. Thread-safe.
class MetricsHttpServer {
 public:
  static absl::StatusOr<std::unique_ptr<MetricsHttpServer>> Start(
      const HttpServerOptions& options, std::shared_ptr<prometheus::Collectable> collectable,
      ReadyCallback ready);
  ~MetricsHttpServer();
  MetricsHttpServer(const MetricsHttpServer&) = delete;
  MetricsHttpServer& operator=(const MetricsHttpServer&) = delete;

  int bound_port() const { return bound_port_; }

  std::string RenderMetrics() const;
  absl::Status Ready() const;

 private:
  MetricsHttpServer(std::shared_ptr<prometheus::Collectable> collectable, ReadyCallback ready);
  HttpResponse Handle(const std::string& path) const;

  std::shared_ptr<prometheus::Collectable> collectable_;
  ReadyCallback ready_;
  std::unique_ptr<HttpServer> http_;
  int bound_port_ = 0;
};

}  // namespace switchyard::metrics
