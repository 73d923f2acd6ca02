#include "coordinator/step_executor.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/blocking_counter.h"
#include "absl/synchronization/mutex.h"
#include "common/grpc_status.h"
#include "grpcpp/grpcpp.h"

namespace switchyard {
namespace {

void ToWorkerSampling(const SamplingParams& params, v1::WorkerSampling* out) {
  out->set_temperature(params.temperature);
  out->set_top_p(params.top_p);
  out->set_top_k(params.top_k);
  out->set_min_p(params.min_p);
  out->set_repetition_penalty(params.repetition_penalty);
  out->set_presence_penalty(params.presence_penalty);
  out->set_frequency_penalty(params.frequency_penalty);
  out->set_seed(params.seed);
  out->set_num_logprobs(params.num_logprobs);
}

}  // namespace

void ToStepRequest(int64_t step_id, const WorkerStepPlan& plan, v1::StepRequest* request) {
  request->Clear();
  request->set_step_id(step_id);
  for (int64_t seq_id : plan.freed_seq_ids) request->add_freed_seq_ids(seq_id);
  for (const NewSequence& seq : plan.new_sequences) {
    v1::NewSequence* out = request->add_new_sequences();
    out->set_seq_id(seq.seq_id);
    out->set_request_id(seq.request_id);
    ToWorkerSampling(seq.sampling, out->mutable_sampling());
    out->set_num_prompt_tokens(seq.num_prompt_tokens);
    out->mutable_cached_token_ids()->Add(seq.cached_token_ids.begin(), seq.cached_token_ids.end());
    out->mutable_block_table()->Add(seq.block_table.begin(), seq.block_table.end());
  }
  for (const SequenceWork& work : plan.work) {
    v1::SequenceWork* out = request->add_work();
    out->set_seq_id(work.seq_id);
    out->set_start_position(work.start_position);
    out->set_token_offset(work.token_offset);
    out->set_num_tokens(work.num_tokens);
    out->set_block_offset(work.block_offset);
    out->set_num_new_blocks(work.num_new_blocks);
    out->set_sample(work.sample);
  }
  request->mutable_token_ids()->Add(plan.token_ids.begin(), plan.token_ids.end());
  request->mutable_block_ids()->Add(plan.block_ids.begin(), plan.block_ids.end());
}

void AppendStepResponse(const v1::StepResponse& response, StepOutcome* outcome) {
  for (const v1::SampledToken& token : response.tokens()) {
    outcome->result.tokens.push_back(
        SampledTokenResult{token.seq_id(), token.token_id(), token.logprob()});
    if (token.top_token_ids_size() > 0) {
      auto& top = outcome->top_logprobs[token.seq_id()];
      top.clear();
      const int num = std::min(token.top_token_ids_size(), token.top_logprobs_size());
      for (int i = 0; i < num; ++i) top.emplace_back(token.top_token_ids(i), token.top_logprobs(i));
    }
  }
  outcome->rows_routed.push_back(response.stats().rows_routed());
}

GrpcStepExecutor::GrpcStepExecutor(std::vector<std::shared_ptr<v1::WorkerService::Stub>> stubs,
                                   absl::Duration step_timeout,
                                   std::function<void(absl::StatusCode)> on_rpc_error)
    : stubs_(std::move(stubs)), step_timeout_(step_timeout), on_rpc_error_(std::move(on_rpc_error)) {}

void GrpcStepExecutor::CancelInFlight() {
  absl::MutexLock lock(&cancel_mu_);
  if (in_flight_ == nullptr) return;
  for (grpc::ClientContext& context : *in_flight_) context.TryCancel();
}

absl::Status GrpcStepExecutor::Execute(const StepPlan& plan, StepOutcome* outcome) {
  outcome->Clear();
  outcome->result.step_id = plan.step_id;
  const size_t n = plan.workers.size();
  for (const WorkerStepPlan& worker_plan : plan.workers) {
    if (worker_plan.rank < 0 || static_cast<size_t>(worker_plan.rank) >= stubs_.size()) {
      return absl::InternalError(absl::StrCat("step ", plan.step_id, ": plan for rank ",
                                              worker_plan.rank, ", but only ", stubs_.size(),
                                              " workers are known"));
    }
  }
  requests_.resize(n);
  responses_.resize(n);
  std::vector<grpc::Status> statuses(n);
  std::vector<grpc::ClientContext> contexts(n);  // single-use by gRPC's rules
  absl::BlockingCounter pending(static_cast<int>(n));
  const auto deadline = absl::ToChronoTime(absl::Now() + step_timeout_);
  {
    absl::MutexLock lock(&cancel_mu_);
    in_flight_ = &contexts;
  }
  for (size_t i = 0; i < n; ++i) {
    const WorkerStepPlan& worker_plan = plan.workers[i];
    ToStepRequest(plan.step_id, worker_plan, &requests_[i]);
    responses_[i].Clear();
    contexts[i].set_deadline(deadline);
    stubs_[worker_plan.rank]->async()->ExecuteStep(
        &contexts[i], &requests_[i], &responses_[i], [&statuses, &pending, i](grpc::Status status) {
          statuses[i] = std::move(status);
          pending.DecrementCount();
        });
  }
  pending.Wait();
  {
    absl::MutexLock lock(&cancel_mu_);
    in_flight_ = nullptr;
  }
  std::vector<std::string> errors;
  for (size_t i = 0; i < n; ++i) {
    if (!statuses[i].ok()) {
      const absl::Status failed = FromGrpcStatus(statuses[i]);
      if (on_rpc_error_) on_rpc_error_(failed.code());
      errors.push_back(absl::StrCat("rank ", plan.workers[i].rank, ": ", failed.ToString()));
      continue;
    }
    AppendStepResponse(responses_[i], outcome);
  }
  if (!errors.empty()) {
    return absl::UnavailableError(absl::StrCat("step ", plan.step_id, " failed on ",
                                               errors.size(), " of ", n,
                                               " workers: ", absl::StrJoin(errors, "; ")));
  }
  return absl::OkStatus();
}

}  // namespace switchyard
