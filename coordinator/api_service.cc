#include "coordinator/api_service.h"

#include <chrono>
#include <deque>
#include <memory>
#include <optional>
#include <random>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/grpc_status.h"
#include "common/logging.h"

namespace switchyard {
namespace {

uint64_t RandomSeed() {
  thread_local std::mt19937_64 engine(std::random_device{}());
  return engine();
}

absl::Time CallDeadline(const grpc::CallbackServerContext& context) {
  const auto deadline = context.deadline();
  // gRPC reports "no deadline" as a far-future time point.
  if (deadline > std::chrono::system_clock::now() + std::chrono::hours(24 * 365)) {
    return absl::InfiniteFuture();
  }
  return absl::FromChrono(deadline);
}

class GenerateReactor;

// The ResponseSink of one Generate call. Decides under its mutex what to write next and calls
// the reactor outside it (a reaction may run inline).
class GenerateStream final : public ResponseSink {
 public:
  explicit GenerateStream(GenerateReactor* reactor) : reactor_(reactor) {}

  void SendDelta(v1::Delta delta) override;
  void Finish(v1::Finished finished) override;
  void Fail(absl::Status status) override;

  // From the reactor.
  void OnWriteDone(bool ok);

 private:
  struct Action {
    const v1::GenerateResponse* write = nullptr;
    std::optional<grpc::Status> finish;
  };
  Action NextLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Run(const Action& action);

  GenerateReactor* const reactor_;
  absl::Mutex mu_;
  std::deque<v1::GenerateResponse> queue_ ABSL_GUARDED_BY(mu_);
  v1::GenerateResponse in_flight_ ABSL_GUARDED_BY(mu_);
  bool write_in_flight_ ABSL_GUARDED_BY(mu_) = false;
  bool broken_ ABSL_GUARDED_BY(mu_) = false;  // a write failed: the client is gone
  std::optional<absl::Status> final_ ABSL_GUARDED_BY(mu_);
  bool finish_called_ ABSL_GUARDED_BY(mu_) = false;
};

class GenerateReactor final : public grpc::ServerWriteReactor<v1::GenerateResponse> {
 public:
  GenerateReactor(grpc::CallbackServerContext* context, RequestManager* manager,
                  ServingObserver* observer)
      : context_(context), manager_(manager), observer_(observer),
        stream_(std::make_shared<GenerateStream>(this)) {}

  std::shared_ptr<GenerateStream> stream() { return stream_; }
  void set_request_id(std::string id) { request_id_ = std::move(id); }
  // Ends the call at once (a rejection before the request reached the loop).
  void Reject(const absl::Status& status) {
    if (observer_ != nullptr) observer_->OnRejected(status.code());
    rejected_ = true;
    Finish(ToGrpcStatus(status));
  }

  void OnWriteDone(bool ok) override { stream_->OnWriteDone(ok); }
  void OnCancel() override { CancelRequest(); }
  void OnDone() override { delete this; }

  void CancelRequest() {
    if (rejected_ || request_id_.empty()) return;
    const bool expired = absl::Now() >= CallDeadline(*context_);
    manager_->Cancel(request_id_,
                     expired ? absl::DeadlineExceededError("the call's deadline passed")
                             : absl::CancelledError("the client cancelled the call"));
  }

 private:
  grpc::CallbackServerContext* const context_;
  RequestManager* const manager_;
  ServingObserver* const observer_;
  std::shared_ptr<GenerateStream> stream_;
  std::string request_id_;
  bool rejected_ = false;
};

void GenerateStream::SendDelta(v1::Delta delta) {
  Action action;
  {
    absl::MutexLock lock(&mu_);
    if (final_.has_value() || broken_) return;
    // Merge into a delta still waiting behind the in-flight write.
    if (!queue_.empty() && queue_.back().has_delta()) {
      v1::Delta* pending = queue_.back().mutable_delta();
      pending->mutable_token_ids()->MergeFrom(delta.token_ids());
      pending->mutable_text()->append(delta.text());
      pending->mutable_logprobs()->MergeFrom(delta.logprobs());
    } else {
      *queue_.emplace_back().mutable_delta() = std::move(delta);
    }
    action = NextLocked();
  }
  Run(action);
}

void GenerateStream::Finish(v1::Finished finished) {
  Action action;
  {
    absl::MutexLock lock(&mu_);
    if (final_.has_value()) return;
    *queue_.emplace_back().mutable_finished() = std::move(finished);
    final_ = absl::OkStatus();
    action = NextLocked();
  }
  Run(action);
}

void GenerateStream::Fail(absl::Status status) {
  Action action;
  {
    absl::MutexLock lock(&mu_);
    if (final_.has_value()) return;
    final_ = std::move(status);
    queue_.clear();  // an error status ends the stream; pending text is moot
    action = NextLocked();
  }
  Run(action);
}

void GenerateStream::OnWriteDone(bool ok) {
  Action action;
  bool cancel = false;
  {
    absl::MutexLock lock(&mu_);
    write_in_flight_ = false;
    if (!ok) {
      broken_ = true;
      queue_.clear();
      cancel = !final_.has_value();
    }
    action = NextLocked();
  }
  // The loop still holds the request: have it freed (it then calls Fail, which finishes).
  if (cancel) reactor_->CancelRequest();
  Run(action);
}

GenerateStream::Action GenerateStream::NextLocked() {
  Action action;
  if (write_in_flight_ || finish_called_) return action;
  if (!queue_.empty()) {
    in_flight_ = std::move(queue_.front());
    queue_.pop_front();
    write_in_flight_ = true;
    action.write = &in_flight_;
  } else if (final_.has_value()) {
    finish_called_ = true;
    action.finish = ToGrpcStatus(*final_);
  }
  return action;
}

void GenerateStream::Run(const Action& action) {
  if (action.write != nullptr) reactor_->StartWrite(action.write);
  if (action.finish.has_value()) reactor_->Finish(*action.finish);
}

}  // namespace

InferenceApi::InferenceApi(ApiOptions options, RequestManager* manager,
                           const ClusterService* cluster, ServingObserver* observer)
    : options_(std::move(options)), manager_(manager), cluster_(cluster), observer_(observer) {}

grpc::ServerWriteReactor<v1::GenerateResponse>* InferenceApi::Generate(
    grpc::CallbackServerContext* context, const v1::GenerateRequest* request) {
  auto* reactor = new GenerateReactor(context, manager_, observer_);
  if (state() != v1::SERVING_STATE_SERVING) {
    reactor->Reject(NotServingStatus());
    return reactor;
  }
  absl::StatusOr<PreparedRequest> prepared = PrepareRequest(*request, options_.model, RandomSeed());
  if (!prepared.ok()) {
    reactor->Reject(prepared.status());
    return reactor;
  }
  absl::StatusOr<std::string> id =
      manager_->Submit(*std::move(prepared), CallDeadline(*context), reactor->stream());
  if (!id.ok()) {
    reactor->Reject(id.status());
    return reactor;
  }
  reactor->set_request_id(*std::move(id));
  return reactor;
}

grpc::ServerUnaryReactor* InferenceApi::Abort(grpc::CallbackServerContext* context,
                                              const v1::AbortRequest* request,
                                              v1::AbortResponse*) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  if (request->request_id().empty()) {
    reactor->Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                 "request_id: empty; expected the id of a running request"));
    return reactor;
  }
  reactor->Finish(ToGrpcStatus(manager_->Abort(request->request_id())));
  return reactor;
}

grpc::ServerUnaryReactor* InferenceApi::GetModelInfo(grpc::CallbackServerContext* context,
                                                     const v1::GetModelInfoRequest*,
                                                     v1::ModelInfo* info) {
  const ModelConfig& config = options_.model_config;
  info->set_model_name(options_.model_name);
  info->set_model_type(config.model_type);
  info->set_vocab_size(static_cast<uint32_t>(options_.model.vocab_size));
  info->set_max_context_length(static_cast<uint32_t>(options_.model.max_model_len));
  info->set_num_layers(static_cast<uint32_t>(config.num_hidden_layers));
  info->set_hidden_size(static_cast<uint32_t>(config.hidden_size));
  info->set_num_experts(static_cast<uint32_t>(config.num_experts));
  info->set_num_experts_per_tok(static_cast<uint32_t>(config.num_experts_per_tok));
  for (int32_t id : options_.model.eos_token_ids) info->add_eos_token_ids(id);
  info->set_bos_token_id(static_cast<int32_t>(config.bos_token_id));
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* InferenceApi::GetServerInfo(grpc::CallbackServerContext* context,
                                                      const v1::GetServerInfoRequest*,
                                                      v1::ServerInfo* info) {
  FillServerInfo(info);
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

absl::Status InferenceApi::NotServingStatus() const {
  if (state() == v1::SERVING_STATE_DRAINING) {
    return absl::UnavailableError("the server is draining (shutting down); retry elsewhere");
  }
  for (const WorkerRecord& worker : cluster_->workers()) {
    if (worker.state == WorkerState::kLost || worker.state == WorkerState::kFailed) {
      return absl::UnavailableError(absl::StrCat("worker rank ", worker.rank, " (",
                                                 worker.address, ") is ", WorkerStateName(worker.state),
                                                 "; the cluster is not serving"));
    }
  }
  return absl::UnavailableError(
      "the server is starting: waiting for the workers to register and load");
}

void InferenceApi::FillServerInfo(v1::ServerInfo* info) const {
  const ManagerSnapshot snapshot = manager_->Snapshot();
  const SchedulerStats& stats = snapshot.scheduler;
  info->set_version(options_.version);
  info->set_state(state());
  info->set_model_name(options_.model_name);
  info->set_num_workers_expected(static_cast<uint32_t>(options_.num_workers));
  const absl::Time now = absl::Now();
  for (const WorkerRecord& worker : cluster_->workers()) {
    v1::WorkerInfo* out = info->add_workers();
    out->set_rank(static_cast<uint32_t>(std::max(worker.rank, 0)));
    out->set_address(worker.address);
    out->set_state(WorkerStateName(worker.state));
    out->set_weight_bytes_loaded(worker.weight_bytes_loaded);
    out->set_last_heartbeat_age_seconds(absl::ToDoubleSeconds(now - worker.last_heartbeat));
    out->set_kv_blocks_total(worker.num_kv_blocks);
    out->set_device(worker.backend);
    for (const WorkerSchedulerStats& w : stats.workers) {
      if (w.rank != worker.rank) continue;
      out->set_kv_blocks_used(static_cast<uint64_t>(w.num_blocks_used));
      out->set_num_running(static_cast<uint32_t>(w.num_running));
    }
    if (worker.rank >= 0 && static_cast<size_t>(worker.rank) < snapshot.rows_routed.size()) {
      out->set_tokens_routed(snapshot.rows_routed[worker.rank]);
    }
  }
  const PlacementSummary placement = cluster_->placement();
  v1::PlacementInfo* p = info->mutable_placement();
  p->set_version(static_cast<uint64_t>(placement.version));
  p->set_num_ranks(static_cast<uint32_t>(placement.num_ranks));
  for (const std::string& experts : placement.experts_per_rank) p->add_experts_per_rank(experts);
  p->set_encoded(placement.encoded);
  info->set_data_plane(cluster_->data_plane());
  info->set_num_running(static_cast<uint32_t>(stats.num_running));
  info->set_num_waiting(static_cast<uint32_t>(stats.num_waiting));
  info->set_kv_cache_usage(stats.kv_usage);
  info->set_prefix_cache_queries(static_cast<uint64_t>(stats.prefix_cache_query_tokens));
  info->set_prefix_cache_hits(static_cast<uint64_t>(stats.prefix_cache_hit_tokens));
  info->set_num_preemptions(static_cast<uint64_t>(stats.num_preemptions));
  info->set_steps(static_cast<uint64_t>(stats.num_steps));
}

}  // namespace switchyard
