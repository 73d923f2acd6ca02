#include "coordinator/cluster_service.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/blocking_counter.h"
#include "absl/strings/str_join.h"
#include "common/grpc_status.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "grpcpp/grpcpp.h"
#include "worker/moe/placement.h"

namespace switchyard {

const char* WorkerStateName(WorkerState state) {
  switch (state) {
    case WorkerState::kRegistered: return "registered";
    case WorkerState::kLoading: return "loading";
    case WorkerState::kReady: return "ready";
    case WorkerState::kFailed: return "failed";
    case WorkerState::kLost: return "lost";
  }
  return "unknown";
}

const char* ClusterStateName(ClusterState state) {
  switch (state) {
    case ClusterState::kStarting: return "starting";
    case ClusterState::kLoading: return "loading";
    case ClusterState::kServing: return "serving";
    case ClusterState::kFailed: return "failed";
  }
  return "unknown";
}

absl::Status ComputePlacements(const ModelConfig& config, int32_t num_workers,
                               int32_t redundant_experts, std::vector<std::string>* layer_texts,
                               PlacementSummary* summary) {
  layer_texts->clear();
  *summary = PlacementSummary{};
  summary->num_ranks = num_workers;
  if (config.num_experts == 0) return absl::OkStatus();  // dense: nothing to place
  const int32_t num_experts = static_cast<int32_t>(config.num_experts);
  absl::StatusOr<LayerPlacement> placement =
      redundant_experts > 0
          ? LayerPlacement::Balanced(num_experts, num_workers, redundant_experts, {})
          : LayerPlacement::Contiguous(num_experts, num_workers);
  if (!placement.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "placement of ", num_experts, " experts over ", num_workers, " workers with ",
        redundant_experts, " redundant slots per rank: ", placement.status().message()));
  }
  const std::string text = placement->ToString();
  layer_texts->assign(static_cast<size_t>(config.num_moe_layers()), text);
  summary->version = placement->version();
  summary->encoded = text;
  for (const std::vector<int32_t>& slots : placement->rank_slots()) {
    summary->experts_per_rank.push_back(absl::StrJoin(slots, ","));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> ResolveDataPlane(std::string_view requested,
                                             const std::vector<std::string>& worker_backends) {
  if (requested != "auto" && requested != "gloo" && requested != "nccl") {
    return absl::InvalidArgumentError(absl::StrCat(
        "data plane: expected auto, gloo or nccl, found '", std::string(requested), "'"));
  }
  if (worker_backends.size() == 1) return std::string("none");  // nothing to exchange
  if (requested == "gloo") return std::string("gloo");
  for (size_t rank = 0; rank < worker_backends.size(); ++rank) {
    if (worker_backends[rank] == "cuda") continue;
    if (requested == "auto") return std::string("gloo");
    return absl::FailedPreconditionError(
        absl::StrCat("data plane nccl: worker ", rank, " registered with the '",
                     worker_backends[rank], "' backend, nccl needs cuda on every worker"));
  }
  // No workers known yet (a flag check): auto cannot decide, so it stays auto.
  if (worker_backends.empty()) return std::string(requested);
  return std::string("nccl");
}

ClusterService::ClusterService(ClusterOptions options, ReadyCallback on_ready,
                               LostCallback on_lost)
    : options_(std::move(options)), on_ready_(std::move(on_ready)), on_lost_(std::move(on_lost)) {}

ClusterService::~ClusterService() { Stop(); }

void ClusterService::Start() {
  thread_ = std::thread([this] { MembershipLoop(); });
}

void ClusterService::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
    if (load_contexts_ != nullptr) {
      for (grpc::ClientContext& context : *load_contexts_) context.TryCancel();
    }
  }
  if (thread_.joinable()) thread_.join();
}

grpc::Status ClusterService::Register(grpc::ServerContext*, const v1::RegisterRequest* request,
                                      v1::RegisterResponse* response) {
  if (request->worker_address().empty()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        "Register: worker_address is empty, expected host:port");
  }
  absl::MutexLock lock(&mu_);
  if (static_cast<int32_t>(workers_.size()) >= options_.num_workers) {
    return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                        absl::StrCat("Register from ", request->worker_address(), ": all ",
                                     options_.num_workers, " expected workers have registered"));
  }
  if (options_.data_plane == "nccl" && request->backend() != "cuda") {
    return grpc::Status(
        grpc::StatusCode::FAILED_PRECONDITION,
        absl::StrCat("Register from ", request->worker_address(), ": the coordinator runs ",
                     "--data_plane=nccl, which needs the cuda backend; this worker runs '",
                     request->backend(), "'"));
  }
  WorkerRecord record;
  record.worker_id = absl::StrCat("w", next_worker_idx_++);
  record.address = request->worker_address();
  record.hostname = request->hostname();
  record.backend = request->backend();
  record.metrics_address = request->metrics_address();
  record.last_heartbeat = absl::Now();
  record.stub = v1::WorkerService::NewStub(
      grpc::CreateChannel(record.address, grpc::InsecureChannelCredentials()));
  SY_LOG_INFO("worker {} registered: {} ({}), {}/{}", record.worker_id, record.address,
              record.backend, workers_.size() + 1, options_.num_workers);
  response->set_worker_id(record.worker_id);
  response->set_expected_workers(static_cast<uint32_t>(options_.num_workers));
  workers_.push_back(std::move(record));
  return grpc::Status::OK;
}

grpc::Status ClusterService::Heartbeat(grpc::ServerContext*, const v1::HeartbeatRequest* request,
                                       v1::HeartbeatResponse*) {
  absl::MutexLock lock(&mu_);
  for (WorkerRecord& worker : workers_) {
    if (worker.worker_id != request->worker_id()) continue;
    if (worker.state == WorkerState::kLost) {
      return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                          absl::StrCat("worker ", worker.worker_id, " was declared lost"));
    }
    worker.last_heartbeat = absl::Now();
    return grpc::Status::OK;
  }
  return grpc::Status(grpc::StatusCode::NOT_FOUND,
                      absl::StrCat("Heartbeat: unknown worker_id '", request->worker_id(), "'"));
}

grpc::Status ClusterService::StoreSet(grpc::ServerContext*, const v1::StoreSetRequest* request,
                                      v1::StoreSetResponse*) {
  if (request->key().empty()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "StoreSet: empty key");
  }
  Set(request->key(), request->value());
  return grpc::Status::OK;
}

grpc::Status ClusterService::StoreGet(grpc::ServerContext* context,
                                      const v1::StoreGetRequest* request,
                                      v1::StoreGetResponse* response) {
  std::vector<std::string> keys(request->keys().begin(), request->keys().end());
  absl::Duration timeout = absl::Milliseconds(request->timeout_ms());
  // Never outlive the caller's own deadline.
  const absl::Duration call_left =
      absl::FromChrono(context->deadline()) - absl::Now();
  if (call_left < timeout) timeout = std::max(call_left, absl::ZeroDuration());
  std::vector<std::string> values;
  absl::Status status = Get(keys, timeout, &values);
  if (!status.ok()) return ToGrpcStatus(status);
  for (std::string& value : values) response->add_values(std::move(value));
  return grpc::Status::OK;
}

void ClusterService::Set(const std::string& key, std::string value) {
  absl::MutexLock lock(&mu_);
  store_[key] = std::move(value);
}

absl::Status ClusterService::Get(const std::vector<std::string>& keys, absl::Duration timeout,
                                 std::vector<std::string>* values) {
  auto all_present = [this, &keys]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    for (const std::string& key : keys) {
      if (!store_.contains(key)) return false;
    }
    return true;
  };
  absl::MutexLock lock(&mu_);
  mu_.AwaitWithTimeout(absl::Condition(&all_present), timeout);
  std::vector<std::string> missing;
  for (const std::string& key : keys) {
    if (!store_.contains(key)) missing.push_back(key);
  }
  if (!missing.empty()) {
    return absl::DeadlineExceededError(
        absl::StrCat("StoreGet: after ", absl::FormatDuration(timeout), ", ", missing.size(),
                     " key(s) still missing: ", absl::StrJoin(missing, ", ")));
  }
  values->clear();
  for (const std::string& key : keys) values->push_back(store_.at(key));
  return absl::OkStatus();
}

ClusterState ClusterService::state() const {
  absl::MutexLock lock(&mu_);
  return state_;
}

std::vector<WorkerRecord> ClusterService::workers() const {
  absl::MutexLock lock(&mu_);
  return workers_;
}

PlacementSummary ClusterService::placement() const {
  absl::MutexLock lock(&mu_);
  return placement_;
}

std::string ClusterService::data_plane() const {
  absl::MutexLock lock(&mu_);
  return data_plane_;
}

int32_t ClusterService::num_ready() const {
  absl::MutexLock lock(&mu_);
  int32_t num = 0;
  for (const WorkerRecord& worker : workers_) num += worker.state == WorkerState::kReady ? 1 : 0;
  return num;
}

void ClusterService::MembershipLoop() {
  {
    absl::MutexLock lock(&mu_);
    auto complete_or_stop = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return stop_ || static_cast<int32_t>(workers_.size()) >= options_.num_workers;
    };
    mu_.Await(absl::Condition(&complete_or_stop));
    if (stop_) return;
    state_ = ClusterState::kLoading;
  }
  absl::Status status = LoadAll();
  std::vector<WorkerRecord> ready;
  {
    absl::MutexLock lock(&mu_);
    state_ = status.ok() ? ClusterState::kServing : ClusterState::kFailed;
    ready = workers_;
  }
  if (!status.ok()) {
    SY_LOG_ERROR("cluster load failed: {}", status.ToString());
    return;
  }
  on_ready_(ready);
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      auto stopped = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop_; };
      if (mu_.AwaitWithTimeout(absl::Condition(&stopped), absl::Milliseconds(200))) return;
    }
    CheckHeartbeats();
  }
}

absl::Status ClusterService::LoadAll() {
  std::vector<std::string> layer_texts;
  PlacementSummary summary;
  SY_RETURN_IF_ERROR(ComputePlacements(options_.model_config, options_.num_workers,
                                       options_.redundant_experts, &layer_texts, &summary));
  std::vector<WorkerRecord> workers;
  std::string prefix, data_plane;
  {
    absl::MutexLock lock(&mu_);
    // Before any state changes: Register refused the workers nccl cannot take, so this fails only
    // on a bad option, and then no worker is left "loading".
    std::vector<std::string> backends;
    for (const WorkerRecord& worker : workers_) backends.push_back(worker.backend);
    SY_ASSIGN_OR_RETURN(data_plane, ResolveDataPlane(options_.data_plane, backends));
    data_plane_ = data_plane;
    for (size_t i = 0; i < workers_.size(); ++i) {
      workers_[i].rank = static_cast<int32_t>(i);
      workers_[i].state = WorkerState::kLoading;
    }
    placement_ = summary;
    prefix = absl::StrCat("gen", generation_++, "/");
    workers = workers_;
  }
  SY_LOG_INFO("loading {} workers over {}, placement {}", workers.size(), data_plane,
              summary.encoded.empty() ? "(dense)" : summary.encoded);
  const size_t n = workers.size();
  std::vector<grpc::ClientContext> contexts(n);
  std::vector<v1::LoadRequest> requests(n);
  std::vector<v1::LoadResponse> responses(n);
  std::vector<grpc::Status> statuses(n);
  absl::BlockingCounter pending(static_cast<int>(n));
  {
    absl::MutexLock lock(&mu_);
    if (stop_) return absl::CancelledError("stopped before loading");
    load_contexts_ = &contexts;
  }
  for (size_t i = 0; i < n; ++i) {
    v1::LoadRequest& request = requests[i];
    request.set_rank(static_cast<uint32_t>(i));
    request.set_world_size(static_cast<uint32_t>(n));
    request.set_model_dir(options_.model_dir);
    for (const std::string& text : layer_texts) request.add_layer_placements(text);
    request.set_rendezvous_prefix(prefix);
    request.set_block_size(static_cast<uint32_t>(options_.block_size));
    request.set_kv_cache_bytes(options_.kv_cache_bytes);
    request.set_data_plane(data_plane);
    request.set_comm_timeout_ms(options_.comm_timeout_ms);
    contexts[i].set_deadline(absl::ToChronoTime(absl::Now() + options_.load_timeout));
    workers[i].stub->async()->Load(&contexts[i], &request, &responses[i],
                                   [&statuses, &pending, i](grpc::Status s) {
                                     statuses[i] = std::move(s);
                                     pending.DecrementCount();
                                   });
  }
  pending.Wait();
  std::vector<std::string> errors;
  absl::MutexLock lock(&mu_);
  load_contexts_ = nullptr;
  for (size_t i = 0; i < n; ++i) {
    WorkerRecord& worker = workers_[i];
    if (!statuses[i].ok()) {
      if (on_rpc_error_) {
        on_rpc_error_("Load", static_cast<absl::StatusCode>(statuses[i].error_code()));
      }
      worker.state = WorkerState::kFailed;
      errors.push_back(absl::StrCat("rank ", i, " (", worker.address,
                                    "): ", FromGrpcStatus(statuses[i]).ToString()));
      continue;
    }
    worker.state = WorkerState::kReady;
    worker.num_kv_blocks = responses[i].num_kv_blocks();
    worker.weight_bytes_loaded = responses[i].weight_bytes_loaded();

    worker.last_heartbeat = absl::Now();
    SY_LOG_INFO("rank {} ({}) loaded: {} KV blocks, {} weight bytes, device {}", i,
                worker.address, worker.num_kv_blocks, worker.weight_bytes_loaded,
                responses[i].device());
  }
  if (!errors.empty()) {
    return absl::UnavailableError(absl::StrCat("Load failed on ", errors.size(), " of ", n,
                                               " workers: ", absl::StrJoin(errors, "; ")));
  }
  return absl::OkStatus();
}

void ClusterService::CheckHeartbeats() {
  std::vector<WorkerRecord> lost;
  {
    absl::MutexLock lock(&mu_);
    const absl::Time now = absl::Now();
    for (WorkerRecord& worker : workers_) {
      if (worker.state != WorkerState::kReady) continue;
      if (now - worker.last_heartbeat <= options_.heartbeat_timeout) continue;
      worker.state = WorkerState::kLost;
      lost.push_back(worker);
    }
  }
  for (const WorkerRecord& worker : lost) {
    absl::Status why = absl::UnavailableError(
        absl::StrCat("worker rank ", worker.rank, " (", worker.address, ") sent no heartbeat for ",
                     absl::FormatDuration(options_.heartbeat_timeout)));
    SY_LOG_ERROR("{}", why.ToString());
    on_lost_(worker, why);
  }
}

}  // namespace switchyard
