#include "common/metrics.h"

#include "common/status_macros.h"


#include <algorithm>
#include <array>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "prometheus/text_serializer.h"

namespace switchyard::metrics {
namespace {

using prometheus::Counter;
using prometheus::Family;
using prometheus::Gauge;
using prometheus::Histogram;
using prometheus::Labels;
using prometheus::Registry;

// The registry merges a second registration of the same name, type and help into the first, so
// these helpers may be called once per series.
Family<Counter>& CounterFamily(Registry& registry, const std::string& name,
                               const std::string& help) {
  return prometheus::BuildCounter().Name(name).Help(help).Register(registry);
}
Family<Gauge>& GaugeFamily(Registry& registry, const std::string& name, const std::string& help) {
  return prometheus::BuildGauge().Name(name).Help(help).Register(registry);
}
Family<Histogram>& HistogramFamily(Registry& registry, const std::string& name,
                                   const std::string& help) {
  return prometheus::BuildHistogram().Name(name).Help(help).Register(registry);
}

Counter& NewCounter(Registry& registry, const std::string& name, const std::string& help,
                    const Labels& labels) {
  return CounterFamily(registry, name, help).Add(labels);
}
Gauge& NewGauge(Registry& registry, const std::string& name, const std::string& help,
                const Labels& labels) {
  return GaugeFamily(registry, name, help).Add(labels);
}
Histogram& NewHistogram(Registry& registry, const std::string& name, const std::string& help,
                        const Labels& labels, const Histogram::BucketBoundaries& buckets) {
  return HistogramFamily(registry, name, help).Add(labels, buckets);
}

constexpr char kRequestSuccessHelp[] =
    "Requests whose stream ended with a Finished message; finished_reason is stop, length or "
    "abort (Abort RPC).";
constexpr char kRequestErrorsHelp[] =
    "Generate calls that ended with a non-OK gRPC status; code is the status name.";
constexpr char kWorkerUpHelp[] =
    "1 while the worker holding this rank answers the coordinator, 0 once it is lost.";
constexpr char kControlRpcErrorsHelp[] =
    "Coordinator-to-worker control calls that failed, by method and gRPC status name.";
constexpr char kAllToAllSecondsHelp[] =
    "Duration of one all-to-all call; phase is dispatch or combine.";
constexpr char kAllToAllBytesHelp[] =
    "Bytes this rank sent in all-to-all calls; phase is dispatch or combine.";
constexpr char kDeviceUsedHelp[] =
    "Device memory in use by this worker (weights, KV cache, buffers); device is cuda:N or cpu.";

// Codes a Generate call can end with, created at 0 so a fresh coordinator exports the family.
constexpr std::array<absl::StatusCode, 6> kPrecreatedErrorCodes = {
    absl::StatusCode::kInvalidArgument,  absl::StatusCode::kResourceExhausted,
    absl::StatusCode::kUnavailable,      absl::StatusCode::kCancelled,
    absl::StatusCode::kDeadlineExceeded, absl::StatusCode::kInternal};
constexpr std::array<const char*, 3> kWorkerServiceMethods = {"Load", "ExecuteStep", "Shutdown"};

}  // namespace

const Histogram::BucketBoundaries& TtftBuckets() {
  static const auto* b = new Histogram::BucketBoundaries{
      0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75,
      1,     2.5,   5,    7.5,  10,   20,   40,   80,  160,  640, 2560};
  return *b;
}
const Histogram::BucketBoundaries& ItlBuckets() {
  static const auto* b =
      new Histogram::BucketBoundaries{0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5,
                                      0.75, 1,     2.5,  5,     7.5, 10,   20,  40,  80};
  return *b;
}
const Histogram::BucketBoundaries& RequestBuckets() {
  static const auto* b = new Histogram::BucketBoundaries{
      0.3, 0.5, 0.8, 1, 1.5, 2, 2.5, 5, 10, 15, 20, 30, 40, 50, 60, 120, 240, 480, 960, 1920, 7680};
  return *b;
}
const Histogram::BucketBoundaries& IterationBuckets() {
  static const auto* b = new Histogram::BucketBoundaries{1,   8,    16,   32,   64,   128,  256,
                                                         512, 1024, 2048, 4096, 8192, 16384};
  return *b;
}
const Histogram::BucketBoundaries& StepBuckets() {
  static const auto* b = new Histogram::BucketBoundaries{
      0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
  return *b;
}
const Histogram::BucketBoundaries& AllToAllBuckets() {
  static const auto* b = new Histogram::BucketBoundaries{
      0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025,
      0.005,   0.01,     0.025,   0.05,   0.1,     0.25,   1};
  return *b;
}
const Histogram::BucketBoundaries& RatioBuckets() {
  static const auto* b =
      new Histogram::BucketBoundaries{0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1};
  return *b;
}

std::string StatusCodeName(absl::StatusCode code) {
  // absl's names are gRPC's (both number the codes alike); out-of-range values are UNKNOWN.
  std::string name = absl::StatusCodeToString(code);
  return name.empty() ? "UNKNOWN" : name;
}

std::string StatusCodeName(int grpc_code) {
  return StatusCodeName(static_cast<absl::StatusCode>(grpc_code));
}

CoordinatorMetrics::CoordinatorMetrics(Registry& r, const std::string& model_name, int num_workers)
    : num_requests_running(NewGauge(r, "switchyard_num_requests_running",
                                    "Requests in the running batch (scheduled on a worker).",
                                    {{"model_name", model_name}})),
      num_requests_waiting(NewGauge(r, "switchyard_num_requests_waiting",
                                    "Requests accepted and waiting to be scheduled.",
                                    {{"model_name", model_name}})),
      request_queue_capacity(NewGauge(r, "switchyard_request_queue_capacity",
                                      "Waiting requests allowed before new ones get "
                                      "RESOURCE_EXHAUSTED (--max_queued_requests).",
                                      {{"model_name", model_name}})),
      kv_cache_usage_perc(NewGauge(r, "switchyard_kv_cache_usage_perc",
                                   "Fraction of KV-cache blocks in use over all workers, 0 to 1.",
                                   {{"model_name", model_name}})),
      prompt_tokens(NewCounter(r, "switchyard_prompt_tokens_total",
                               "Prompt tokens of admitted requests (prefix-cache hits included).",
                               {{"model_name", model_name}})),
      generation_tokens(NewCounter(r, "switchyard_generation_tokens_total",
                                   "Tokens generated (streamed to clients).",
                                   {{"model_name", model_name}})),
      request_success_stop(NewCounter(r, "switchyard_request_success_total", kRequestSuccessHelp,
                                      {{"model_name", model_name}, {"finished_reason", "stop"}})),
      request_success_length(
          NewCounter(r, "switchyard_request_success_total", kRequestSuccessHelp,
                     {{"model_name", model_name}, {"finished_reason", "length"}})),
      request_success_abort(NewCounter(r, "switchyard_request_success_total", kRequestSuccessHelp,
                                       {{"model_name", model_name}, {"finished_reason", "abort"}})),
      time_to_first_token_seconds(NewHistogram(r, "switchyard_time_to_first_token_seconds",
                                               "Arrival at the API to the first token streamed.",
                                               {{"model_name", model_name}}, TtftBuckets())),
      inter_token_latency_seconds(
          NewHistogram(r, "switchyard_inter_token_latency_seconds",
                       "Time between successive token batches streamed to one request.",
                       {{"model_name", model_name}}, ItlBuckets())),
      e2e_request_latency_seconds(
          NewHistogram(r, "switchyard_e2e_request_latency_seconds",
                       "Arrival at the API to the last token (successful requests).",
                       {{"model_name", model_name}}, RequestBuckets())),
      request_queue_time_seconds(NewHistogram(r, "switchyard_request_queue_time_seconds",
                                              "Arrival to first scheduled (QUEUED to RUNNING).",
                                              {{"model_name", model_name}}, RequestBuckets())),
      request_prefill_time_seconds(NewHistogram(r, "switchyard_request_prefill_time_seconds",
                                                "First scheduled to first token.",
                                                {{"model_name", model_name}}, RequestBuckets())),
      request_decode_time_seconds(NewHistogram(r, "switchyard_request_decode_time_seconds",
                                               "First token to last token.",
                                               {{"model_name", model_name}}, RequestBuckets())),
      prefix_cache_queries(NewCounter(r, "switchyard_prefix_cache_queries_total",
                                      "Prompt tokens looked up in the prefix cache.",
                                      {{"model_name", model_name}})),
      prefix_cache_hits(NewCounter(r, "switchyard_prefix_cache_hits_total",
                                   "Prompt tokens found in the prefix cache (not recomputed).",
                                   {{"model_name", model_name}})),
      num_preemptions(NewCounter(r, "switchyard_num_preemptions_total",
                                 "Sequences preempted (KV blocks freed, recomputed later).",
                                 {{"model_name", model_name}})),
      iteration_tokens(NewHistogram(r, "switchyard_iteration_tokens",
                                    "Tokens (prefill plus decode) in one engine step.",
                                    {{"model_name", model_name}}, IterationBuckets())),
      moe_balancedness(NewHistogram(r, "switchyard_moe_balancedness",
                                    "Per engine step with routed tokens: mean over ranks / max "
                                    "over ranks of tokens routed to each rank (1 = balanced).",
                                    {{"model_name", model_name}}, RatioBuckets())),
      moe_placement_version(
          NewGauge(r, "switchyard_moe_placement_version",
                   "Version of the expert placement in use (increments on every change).",
                   {{"model_name", model_name}})),
      moe_rebalances(NewCounter(r, "switchyard_moe_rebalances_total",
                                "Expert placements applied after the initial one.",
                                {{"model_name", model_name}})),
      cluster_workers_expected(NewGauge(r, "switchyard_cluster_workers_expected",
                                        "Workers the deployment expects (--num_workers).",
                                        {{"model_name", model_name}})),
      cluster_workers_ready(NewGauge(r, "switchyard_cluster_workers_ready",
                                     "Workers registered, loaded and taking part in steps.",
                                     {{"model_name", model_name}})),
      model_name_(model_name),
      request_errors_family_(
          CounterFamily(r, "switchyard_request_errors_total", kRequestErrorsHelp)),
      worker_up_family_(GaugeFamily(r, "switchyard_worker_up", kWorkerUpHelp)),
      control_rpc_errors_family_(
          CounterFamily(r, "switchyard_control_rpc_errors_total", kControlRpcErrorsHelp)) {
  cluster_workers_expected.Set(num_workers);
  for (int rank = 0; rank < num_workers; ++rank) WorkerUp(rank);
  for (absl::StatusCode code : kPrecreatedErrorCodes) RequestErrors(code);
  for (const char* method : kWorkerServiceMethods) {
    ControlRpcErrors(method, absl::StatusCode::kUnavailable);
  }
}

Counter& CoordinatorMetrics::RequestSuccess(absl::string_view finished_reason) {
  if (finished_reason == "stop") return request_success_stop;
  if (finished_reason == "length") return request_success_length;
  return request_success_abort;
}

Counter& CoordinatorMetrics::RequestErrors(absl::StatusCode code) {
  absl::MutexLock lock(&mu_);
  Counter*& counter = request_errors_[static_cast<int>(code)];
  if (counter == nullptr) {
    counter =
        &request_errors_family_.Add({{"model_name", model_name_}, {"code", StatusCodeName(code)}});
  }
  return *counter;
}

Counter& CoordinatorMetrics::RequestErrors(int grpc_code) {
  return RequestErrors(static_cast<absl::StatusCode>(grpc_code));
}

Gauge& CoordinatorMetrics::WorkerUp(int ep_rank) {
  absl::MutexLock lock(&mu_);
  Gauge*& gauge = worker_up_[ep_rank];
  if (gauge == nullptr) {
    gauge =
        &worker_up_family_.Add({{"model_name", model_name_}, {"ep_rank", absl::StrCat(ep_rank)}});
  }
  return *gauge;
}

Counter& CoordinatorMetrics::ControlRpcErrors(absl::string_view method, absl::StatusCode code) {
  absl::MutexLock lock(&mu_);
  Counter*& counter = control_rpc_errors_[{std::string(method), static_cast<int>(code)}];
  if (counter == nullptr) {
    counter = &control_rpc_errors_family_.Add({{"model_name", model_name_},
                                               {"method", std::string(method)},
                                               {"code", StatusCodeName(code)}});
  }
  return *counter;
}

WorkerMetrics::WorkerMetrics(Registry& r, const std::string& model_name, int ep_rank,
                             const std::string& device, bool per_expert_metrics)
    : moe_rank_tokens(NewCounter(
          r, "switchyard_moe_rank_tokens_total",
          "Token rows routed to this rank's experts (after dispatch), summed over MoE layers.",
          {{"model_name", model_name}, {"ep_rank", absl::StrCat(ep_rank)}})),
      all_to_all_dispatch_seconds(NewHistogram(
          r, "switchyard_moe_all_to_all_seconds", kAllToAllSecondsHelp,
          {{"model_name", model_name}, {"ep_rank", absl::StrCat(ep_rank)}, {"phase", "dispatch"}},
          AllToAllBuckets())),
      all_to_all_combine_seconds(NewHistogram(
          r, "switchyard_moe_all_to_all_seconds", kAllToAllSecondsHelp,
          {{"model_name", model_name}, {"ep_rank", absl::StrCat(ep_rank)}, {"phase", "combine"}},
          AllToAllBuckets())),
      all_to_all_dispatch_bytes(NewCounter(
          r, "switchyard_moe_all_to_all_bytes_total", kAllToAllBytesHelp,
          {{"model_name", model_name}, {"ep_rank", absl::StrCat(ep_rank)}, {"phase", "dispatch"}})),
      all_to_all_combine_bytes(NewCounter(
          r, "switchyard_moe_all_to_all_bytes_total", kAllToAllBytesHelp,
          {{"model_name", model_name}, {"ep_rank", absl::StrCat(ep_rank)}, {"phase", "combine"}})),
      step_seconds(NewHistogram(
          r, "switchyard_worker_step_seconds",
          "Duration of one engine step on this worker (step plan received to result sent).",
          {{"model_name", model_name}, {"ep_rank", absl::StrCat(ep_rank)}}, StepBuckets())),
      device_memory_used_bytes(NewGauge(
          r, "switchyard_worker_device_memory_used_bytes", kDeviceUsedHelp,
          {{"model_name", model_name}, {"ep_rank", absl::StrCat(ep_rank)}, {"device", device}})),
      device_memory_total_bytes(NewGauge(
          r, "switchyard_worker_device_memory_total_bytes",
          "Device memory available to this worker.",
          {{"model_name", model_name}, {"ep_rank", absl::StrCat(ep_rank)}, {"device", device}})),
      model_name_(model_name),
      ep_rank_(absl::StrCat(ep_rank)) {
  if (per_expert_metrics) {
    expert_tokens_family_ = &CounterFamily(
        r, "switchyard_moe_expert_tokens_total",
        "[opt-in: --metrics_per_expert] Token rows routed to one logical expert of one MoE layer "
        "held by this rank.");
  }
}

Counter* WorkerMetrics::ExpertTokens(int layer_idx, int expert_idx) {
  if (expert_tokens_family_ == nullptr) return nullptr;
  absl::MutexLock lock(&mu_);
  Counter*& counter = expert_tokens_[{layer_idx, expert_idx}];
  if (counter == nullptr) {
    counter = &expert_tokens_family_->Add({{"model_name", model_name_},
                                           {"ep_rank", ep_rank_},
                                           {"layer", absl::StrCat(layer_idx)},
                                           {"expert", absl::StrCat(expert_idx)}});
  }
  return counter;
}

// ------------------------------------------------------------------------------- HTTP server

MetricsHttpServer::MetricsHttpServer(std::shared_ptr<prometheus::Collectable> collectable,
                                     ReadyCallback ready)
    : collectable_(std::move(collectable)), ready_(std::move(ready)) {}

absl::StatusOr<std::unique_ptr<MetricsHttpServer>> MetricsHttpServer::Start(
    const HttpServerOptions& options, std::shared_ptr<prometheus::Collectable> collectable,
    ReadyCallback ready) {
  if (options.port < 0 || options.port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("HTTP port must be 0..65535 (0 = any free port), got ", options.port));
  }
  std::unique_ptr<MetricsHttpServer> server(
      new MetricsHttpServer(std::move(collectable), std::move(ready)));
  MetricsHttpServer* self = server.get();
  SY_ASSIGN_OR_RETURN(server->http_,
                      HttpServer::Start(options.host, options.port,
                                        [self](const std::string& path) { return self->Handle(path); }));
  server->bound_port_ = server->http_->bound_port();
  return server;
}

MetricsHttpServer::~MetricsHttpServer() {
  if (http_ != nullptr) http_->Stop();
}

HttpResponse MetricsHttpServer::Handle(const std::string& path) const {
  if (path == "/metrics") {
    return {200, "text/plain; version=0.0.4; charset=utf-8", RenderMetrics()};
  }
  if (path == "/health") {
    absl::Status ready = Ready();
    if (ready.ok()) return {200, "text/plain", "ok\n"};
    std::string reason(ready.message());
    for (char& c : reason) {
      if (c == '\n' || c == '\r') c = ' ';
    }
    return {503, "text/plain", reason + "\n"};
  }
  return {404, "text/plain", "not found: /metrics and /health are served here\n"};
}

std::string MetricsHttpServer::RenderMetrics() const {
  return prometheus::TextSerializer().Serialize(collectable_->Collect());
}

absl::Status MetricsHttpServer::Ready() const {
  if (!ready_) return absl::OkStatus();
  return ready_();
}

}  // namespace switchyard::metrics
