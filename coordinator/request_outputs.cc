// The step loop's output side: scheduler events -> detokenized, stop-checked client messages.
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "coordinator/request_manager.h"
#include "coordinator/request_manager_internal.h"

namespace switchyard {
namespace {

const char* ReasonName(v1::FinishReason reason) {
  switch (reason) {
    case v1::FINISH_REASON_STOP: return "stop";
    case v1::FINISH_REASON_LENGTH: return "length";
    default: return "abort";
  }
}

}  // namespace

void RequestManager::HandleOutputs() {
  for (const RequestOutput& output : outputs_) {
    auto it = active_.find(output.seq_id);
    if (it == active_.end()) continue;  // already ended (stop, abort, cancel) by us
    Active& active = *it->second;
    if (output.has_token) HandleToken(active, output);
    // HandleToken may have ended the request.
    if (output.finished && active_.contains(output.seq_id)) HandleFinish(active, output);
  }
  outputs_.clear();
}

void RequestManager::HandleToken(Active& active, const RequestOutput& output) {
  std::string text;
  if (active.decoder.has_value()) {
    absl::StatusOr<std::string> piece = active.decoder->Push(output.token_id);
    if (!piece.ok()) {
      (void)scheduler_->Abort(active.request_id);
      EndFailed(active, absl::InternalError(absl::StrCat("detokenizing token ", output.token_id,
                                                         ": ", piece.status().message())));
      return;
    }
    text = *std::move(piece);
  }
  StopResult stop = active.checker.Append(output.token_id, text);
  v1::Delta delta;
  delta.add_token_ids(output.token_id);
  delta.set_text(std::move(stop.text));
  if (active.num_logprobs > 0) {
    v1::TokenLogprob* logprob = delta.add_logprobs();
    logprob->set_token_id(output.token_id);
    logprob->set_logprob(output.logprob);
    auto top = outcome_.top_logprobs.find(output.seq_id);
    if (top != outcome_.top_logprobs.end()) {
      for (const auto& [id, lp] : top->second) {
        v1::TopLogprob* entry = logprob->add_top();
        entry->set_token_id(id);
        entry->set_logprob(lp);
      }
    }
  }
  const absl::Time now = absl::Now();
  std::optional<absl::Duration> itl;
  if (active.first_token == absl::InfinitePast()) {
    active.first_token = now;
    const absl::Time scheduled =
        active.scheduled == absl::InfinitePast() ? active.arrival : active.scheduled;
    observer_->OnFirstToken(now - active.arrival, now - scheduled);
  } else {
    itl = now - active.last_token;
  }
  active.last_token = now;
  observer_->OnTokens(1, itl);
  active.sink->SendDelta(std::move(delta));
  if (!stop.finished()) return;
  // The scheduler may already have ended it on this token (max_tokens): its usage is in output.
  int64_t cached = output.finished ? output.usage.cached_prompt_tokens : 0;
  if (!output.finished) {
    if (const Sequence* seq = scheduler_->FindSequence(active.seq_id)) {
      cached = seq->usage.cached_prompt_tokens;
    }
    (void)scheduler_->Finish(active.request_id);
  }
  const v1::FinishReason reason = stop.finish_reason == FinishReason::kStop
                                      ? v1::FINISH_REASON_STOP
                                      : v1::FINISH_REASON_LENGTH;
  SendFinished(active, reason, &stop, output.token_id, cached);
}

void RequestManager::HandleFinish(Active& active, const RequestOutput& output) {
  switch (output.cause) {
    case FinishCause::kMaxTokens:
    case FinishCause::kMaxModelLen:
    case FinishCause::kStopped: {
      StopResult stop = active.checker.finished() ? StopResult{} : active.checker.FinishByLength();
      if (!stop.text.empty()) {
        v1::Delta delta;
        delta.set_text(std::move(stop.text));
        active.sink->SendDelta(std::move(delta));
      }
      SendFinished(active, v1::FINISH_REASON_LENGTH, nullptr, 0,
                   output.usage.cached_prompt_tokens);
      return;
    }
    case FinishCause::kAborted:
      SendFinished(active, v1::FINISH_REASON_ABORT, nullptr, 0, output.usage.cached_prompt_tokens);
      return;
    default:
      EndFailed(active, output.status.ok() ? absl::InternalError(absl::StrCat(
                                                 "request ended: ", FinishCauseName(output.cause)))
                                           : output.status);
      return;
  }
}

void RequestManager::SendFinished(Active& active, v1::FinishReason reason, const StopResult* stop,
                                  int32_t token_id, int64_t cached_prompt_tokens) {
  v1::Finished finished;
  finished.set_reason(reason);
  finished.set_request_id(active.request_id);
  if (stop != nullptr && stop->finish_reason == FinishReason::kStop) {
    if (stop->stop_string.has_value()) {
      finished.set_stop_string(*stop->stop_string);
    } else {
      finished.set_stop_token_id(stop->stop_token_id.value_or(token_id));
    }
  }
  v1::Usage* usage = finished.mutable_usage();
  usage->set_prompt_tokens(static_cast<uint32_t>(active.num_prompt_tokens));
  usage->set_completion_tokens(static_cast<uint32_t>(active.checker.num_output_tokens()));
  usage->set_cached_prompt_tokens(static_cast<uint32_t>(cached_prompt_tokens));
  const absl::Time now = absl::Now();
  const absl::Time first = active.first_token == absl::InfinitePast() ? now : active.first_token;
  observer_->OnFinished(ReasonName(reason), now - active.arrival, now - first);
  // Forget the id first: a client that sees Finished may reuse it at once.
  std::shared_ptr<ResponseSink> sink = active.sink;
  Erase(active);
  sink->Finish(std::move(finished));
}

void RequestManager::EndFailed(Active& active, absl::Status status) {
  observer_->OnFailed(status.code());
  std::shared_ptr<ResponseSink> sink = active.sink;
  Erase(active);
  sink->Fail(std::move(status));
}

void RequestManager::AbortActive(Active& active, const absl::Status& cancelled) {
  int64_t cached = 0;
  if (const Sequence* seq = scheduler_->FindSequence(active.seq_id)) {
    cached = seq->usage.cached_prompt_tokens;
  }
  (void)scheduler_->Abort(active.request_id);
  if (!cancelled.ok()) {
    EndFailed(active, cancelled);
    return;
  }
  SendFinished(active, v1::FINISH_REASON_ABORT, nullptr, 0, cached);
}

void RequestManager::FailAllActive(const absl::Status& status) {
  std::vector<int64_t> seq_ids;
  for (const auto& [seq_id, active] : active_) seq_ids.push_back(seq_id);
  for (int64_t seq_id : seq_ids) {
    Active& active = *active_.at(seq_id);
    if (scheduler_ != nullptr && !scheduler_->step_in_flight()) {
      (void)scheduler_->Abort(active.request_id);
    }
    EndFailed(active, status);
  }
}

void RequestManager::Erase(Active& active) {
  {
    absl::MutexLock lock(&mu_);
    live_ids_.erase(active.request_id);
  }
  seq_by_id_.erase(active.request_id);
  const int64_t seq_id = active.seq_id;
  active_.erase(seq_id);  // destroys `active`
}

}  // namespace switchyard
