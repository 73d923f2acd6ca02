// Scheduler: request lifecycle (Add, Abort, Finish, Update), worker membership and stats.
// Schedule lives in schedule_step.cc, CheckInvariants in scheduler_invariants.cc.
#include "coordinator/scheduler/scheduler.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "coordinator/scheduler/prefix_cache.h"

namespace switchyard {

const char* FinishCauseName(FinishCause cause) {
  switch (cause) {
    case FinishCause::kNone:
      return "none";
    case FinishCause::kMaxTokens:
      return "max_tokens";
    case FinishCause::kMaxModelLen:
      return "max_model_len";
    case FinishCause::kStopped:
      return "stopped";
    case FinishCause::kAborted:
      return "aborted";
    case FinishCause::kUnavailable:
      return "unavailable";
    case FinishCause::kDeadline:
      return "deadline";
  }
  return "unknown";
}

absl::StatusOr<std::unique_ptr<Scheduler>> Scheduler::Create(SchedulerOptions options) {
  auto bad = [](absl::string_view name, auto value, absl::string_view expected) {
    return absl::InvalidArgumentError(
        absl::StrCat("SchedulerOptions.", name, " = ", value, ": expected ", expected));
  };
  if (options.block_size < 1) return bad("block_size", options.block_size, ">= 1");
  if (options.max_model_len < 2) return bad("max_model_len", options.max_model_len, ">= 2");
  if (options.max_num_seqs < 1) return bad("max_num_seqs", options.max_num_seqs, ">= 1");
  if (options.max_num_batched_tokens < options.max_num_seqs) {
    return bad("max_num_batched_tokens", options.max_num_batched_tokens,
               absl::StrCat(">= max_num_seqs (", options.max_num_seqs,
                            ") so every running decode fits in a step"));
  }
  if (options.max_waiting < 0) return bad("max_waiting", options.max_waiting, ">= 0");
  if (!(options.cache_affinity_alpha >= 0.0) || !std::isfinite(options.cache_affinity_alpha)) {
    return bad("cache_affinity_alpha", options.cache_affinity_alpha, "a finite value >= 0");
  }
  if (!(options.admission_watermark >= 0.0 && options.admission_watermark < 1.0)) {
    return bad("admission_watermark", options.admission_watermark, "in [0, 1)");
  }
  for (size_t rank = 0; rank < options.worker_num_blocks.size(); ++rank) {
    if (options.worker_num_blocks[rank] < 1 || options.worker_num_blocks[rank] > INT32_MAX) {
      return bad(absl::StrCat("worker_num_blocks[", rank, "]"), options.worker_num_blocks[rank],
                 "in [1, 2^31)");
    }
  }
  auto scheduler = std::unique_ptr<Scheduler>(new Scheduler(options));
  for (size_t rank = 0; rank < options.worker_num_blocks.size(); ++rank) {
    SY_RETURN_IF_ERROR(
        scheduler->AddWorker(static_cast<int32_t>(rank), options.worker_num_blocks[rank]));
  }
  return scheduler;
}

Scheduler::Scheduler(SchedulerOptions options) : options_(std::move(options)) {}

absl::Status Scheduler::AddWorker(int32_t rank, int64_t num_blocks) {
  if (num_blocks < 1 || num_blocks > INT32_MAX) {
    return absl::InvalidArgumentError(
        absl::StrCat("AddWorker(", rank, "): num_blocks ", num_blocks, ", expected [1, 2^31)"));
  }
  if (rank < 0 || rank > static_cast<int32_t>(workers_.size())) {
    return absl::InvalidArgumentError(
        absl::StrCat("AddWorker: rank ", rank, ", expected [0, ", workers_.size(), "]"));
  }
  if (rank == static_cast<int32_t>(workers_.size())) workers_.emplace_back();
  Worker& worker = workers_[rank];
  if (worker.live) return absl::AlreadyExistsError(absl::StrCat("worker ", rank, " is live"));
  worker = Worker{};
  worker.live = true;
  worker.blocks = std::make_unique<BlockManager>(num_blocks);
  worker.watermark_blocks = static_cast<int64_t>(
      std::floor(options_.admission_watermark * static_cast<double>(num_blocks)));
  return absl::OkStatus();
}

absl::Status Scheduler::ValidateRequest(const SchedulerRequest& request) const {
  const int64_t num_prompt = static_cast<int64_t>(request.prompt_token_ids.size());
  const std::string& id = request.request_id;
  if (num_prompt == 0) {
    return absl::InvalidArgumentError(absl::StrCat("request ", id, ": empty prompt"));
  }
  if (request.max_tokens < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("request ", id, ": max_tokens ", request.max_tokens, ", expected >= 0"));
  }
  const int64_t max_len = options_.max_model_len;
  if (num_prompt >= max_len || request.max_tokens > max_len - num_prompt) {
    return absl::InvalidArgumentError(absl::StrCat(
        "request ", id, ": prompt of ", num_prompt, " tokens + max_tokens ", request.max_tokens,
        " exceeds max_model_len ", max_len, " (the prompt must leave room for 1 output token)"));
  }
  int64_t largest_pool = 0;
  for (const Worker& w : workers_) {
    if (w.live) largest_pool = std::max(largest_pool, w.blocks->num_blocks());
  }
  if (largest_pool == 0) {
    return absl::UnavailableError(absl::StrCat("request ", id, ": no live worker"));
  }
  const int64_t max_out = request.max_tokens > 0 ? request.max_tokens : max_len - num_prompt;
  // The last output token is sampled but never run, so it needs no KV slot.
  const int64_t blocks_needed = BlocksFor(num_prompt + max_out - 1);
  if (blocks_needed > largest_pool) {
    return absl::InvalidArgumentError(
        absl::StrCat("request ", id, ": prompt of ", num_prompt, " tokens + max_tokens ", max_out,
                     " needs ", blocks_needed, " KV blocks of ", options_.block_size,
                     " tokens, more than a worker's whole pool (", largest_pool, " blocks)"));
  }
  return absl::OkStatus();
}

absl::StatusOr<int64_t> Scheduler::Add(SchedulerRequest request) {
  if (static_cast<int64_t>(waiting_.size()) >= options_.max_waiting) {
    return absl::ResourceExhaustedError(absl::StrCat("request ", request.request_id,
                                                     ": waiting queue is full (max_waiting ",
                                                     options_.max_waiting, ")"));
  }
  SY_RETURN_IF_ERROR(ValidateRequest(request));
  if (id_to_seq_.contains(request.request_id)) {
    return absl::AlreadyExistsError(
        absl::StrCat("request id ", request.request_id, " is already in use"));
  }
  auto seq = std::make_unique<Sequence>();
  seq->seq_id = next_seq_id_++;
  seq->request_id = std::move(request.request_id);
  seq->arrival_idx = next_arrival_idx_++;
  seq->sampling = request.sampling;
  seq->deadline = request.deadline;
  seq->num_prompt_tokens = static_cast<int64_t>(request.prompt_token_ids.size());
  seq->max_output_tokens =
      request.max_tokens > 0 ? request.max_tokens : options_.max_model_len - seq->num_prompt_tokens;
  seq->token_ids = std::move(request.prompt_token_ids);
  seq->token_ids.reserve(seq->num_prompt_tokens + seq->max_output_tokens);
  seq->block_table.reserve(BlocksFor(seq->num_prompt_tokens + seq->max_output_tokens));
  seq->block_hashes.reserve(seq->token_ids.capacity() / options_.block_size);
  seq->usage.num_prompt_tokens = seq->num_prompt_tokens;
  const int64_t seq_id = seq->seq_id;
  id_to_seq_.emplace(seq->request_id, seq_id);
  if (seq->deadline != absl::InfiniteFuture()) deadlines_.emplace(seq->deadline, seq_id);
  waiting_.push_back(seq.get());
  seqs_.emplace(seq_id, std::move(seq));
  return seq_id;
}

absl::Status Scheduler::Abort(absl::string_view request_id) {
  auto it = id_to_seq_.find(request_id);
  if (it == id_to_seq_.end()) {
    return absl::NotFoundError(
        absl::StrCat("Abort: no live request ", request_id, " (unknown or finished)"));
  }
  Sequence& seq = *seqs_.at(it->second);
  FinishSequence(seq, FinishCause::kAborted,
                 absl::CancelledError(absl::StrCat("request ", request_id, " aborted")));
  return absl::OkStatus();
}

absl::Status Scheduler::Finish(absl::string_view request_id) {
  auto it = id_to_seq_.find(request_id);
  if (it == id_to_seq_.end()) {
    return absl::NotFoundError(
        absl::StrCat("Finish: no live request ", request_id, " (unknown or finished)"));
  }
  FinishSequence(*seqs_.at(it->second), FinishCause::kStopped, absl::OkStatus());
  return absl::OkStatus();
}

void Scheduler::ReleaseBlocks(Sequence& seq) {
  Worker& worker = workers_[seq.home_rank];
  // Last block first: the prefix ends up nearest the LRU tail and is evicted last.
  for (auto it = seq.block_table.rbegin(); it != seq.block_table.rend(); ++it) {
    worker.blocks->Release(*it);
  }
  seq.block_table.clear();
  --worker.num_running;
  if (seq.sent_to_worker) worker.pending_freed.push_back(seq.seq_id);
}

void Scheduler::ResetPlacement(Sequence& seq) {
  seq.state = SequenceState::kWaiting;
  seq.home_rank = -1;
  seq.block_table.clear();
  seq.num_computed_tokens = 0;
  seq.num_registered_blocks = 0;
  seq.num_blocks_sent = 0;
  seq.sent_to_worker = false;
  seq.inflight_num_tokens = 0;
  seq.inflight_sample = false;
  seq.last_scheduled_step = -1;
}

void Scheduler::RegisterFullBlocks(Sequence& seq) {
  if (!options_.enable_prefix_caching) return;
  const int64_t num_full = seq.num_computed_tokens / options_.block_size;
  if (num_full <= seq.num_registered_blocks) return;
  ExtendBlockHashes(seq.token_ids, options_.block_size, num_full, &seq.block_hashes);
  BlockManager& blocks = *workers_[seq.home_rank].blocks;
  for (int64_t i = seq.num_registered_blocks; i < num_full; ++i) {
    // False when another sequence computed the same block first: this copy stays uncached.
    blocks.Register(seq.block_table[i], seq.block_hashes[i]);
  }
  seq.num_registered_blocks = num_full;
}

void Scheduler::EraseFromQueues(Sequence& seq) {
  if (seq.state == SequenceState::kRunning) {
    ReleaseBlocks(seq);
    running_.erase(std::find(running_.begin(), running_.end(), &seq));
  } else {
    waiting_.erase(std::find(waiting_.begin(), waiting_.end(), &seq));
  }
  if (seq.deadline != absl::InfiniteFuture()) deadlines_.erase({seq.deadline, seq.seq_id});
  id_to_seq_.erase(seq.request_id);
}

void Scheduler::FinishSequence(Sequence& seq, FinishCause cause, absl::Status status) {
  EraseFromQueues(seq);
  RequestOutput& out = pending_outputs_.emplace_back();
  out.seq_id = seq.seq_id;
  out.finished = true;
  out.cause = cause;
  out.status = std::move(status);
  out.usage = seq.usage;
  out.usage.num_output_tokens = seq.num_output_tokens();
  seqs_.erase(seq.seq_id);  // destroys seq
}

absl::Status Scheduler::ValidateResult(const StepResult& result) {
  if (!step_in_flight_) {
    return absl::FailedPreconditionError(
        absl::StrCat("Update: no step in flight (result for step ", result.step_id, ")"));
  }
  if (result.step_id != step_id_) {
    return absl::InvalidArgumentError(
        absl::StrCat("Update: result for step ", result.step_id, ", step in flight is ", step_id_));
  }
  // Marks are per validation call, so a failed Update leaves nothing behind.
  const uint64_t mark = ++result_mark_;
  int64_t num_matched = 0;
  for (const SampledTokenResult& token : result.tokens) {
    Sequence* seq = FindInflightSampler(token.seq_id);
    if (seq == nullptr) continue;  // aborted or moved since the plan: dropped in Update
    if (seq->result_mark == mark) {
      return absl::InvalidArgumentError(
          absl::StrCat("Update: step ", step_id_, " has two tokens for sequence ", token.seq_id));
    }
    seq->result_mark = mark;
    ++num_matched;
  }
  int64_t num_expected = 0;
  for (int64_t seq_id : inflight_) num_expected += FindInflightSampler(seq_id) != nullptr ? 1 : 0;
  if (num_matched != num_expected) {
    for (int64_t seq_id : inflight_) {
      const Sequence* seq = FindInflightSampler(seq_id);
      if (seq != nullptr && seq->result_mark != mark) {
        return absl::InvalidArgumentError(absl::StrCat("Update: step ", step_id_,
                                                       " has no token for sequence ", seq_id,
                                                       " (request ", seq->request_id, ")"));
      }
    }
  }
  return absl::OkStatus();
}

Sequence* Scheduler::FindInflightSampler(int64_t seq_id) {
  auto it = seqs_.find(seq_id);
  if (it == seqs_.end()) return nullptr;
  Sequence* seq = it->second.get();
  return seq->last_scheduled_step == step_id_ && seq->inflight_sample ? seq : nullptr;
}

absl::Status Scheduler::Update(const StepResult& result, std::vector<RequestOutput>* outputs) {
  SY_RETURN_IF_ERROR(ValidateResult(result));
  for (int64_t seq_id : inflight_) {
    auto it = seqs_.find(seq_id);
    if (it == seqs_.end() || it->second->last_scheduled_step != step_id_) continue;
    Sequence& seq = *it->second;
    seq.num_computed_tokens += seq.inflight_num_tokens;
    seq.inflight_num_tokens = 0;
    RegisterFullBlocks(seq);
  }
  for (const SampledTokenResult& token : result.tokens) {
    Sequence* seq = FindInflightSampler(token.seq_id);
    if (seq == nullptr) {
      ++stats_.num_dropped_results;
      continue;
    }
    seq->inflight_sample = false;
    AppendToken(*seq, token);
  }
  inflight_.clear();
  step_in_flight_ = false;
  outputs->insert(outputs->end(), pending_outputs_.begin(), pending_outputs_.end());
  pending_outputs_.clear();
  return absl::OkStatus();
}

void Scheduler::AppendToken(Sequence& seq, const SampledTokenResult& token) {
  seq.token_ids.push_back(token.token_id);
  RequestOutput& out = pending_outputs_.emplace_back();
  out.seq_id = seq.seq_id;
  out.has_token = true;
  out.token_id = token.token_id;
  out.logprob = token.logprob;
  FinishCause cause = FinishCause::kNone;
  // Both are "length" to a client; the context limit is named when both hold.
  if (seq.num_tokens() >= options_.max_model_len) {
    cause = FinishCause::kMaxModelLen;
  } else if (seq.num_output_tokens() >= seq.max_output_tokens) {
    cause = FinishCause::kMaxTokens;
  }
  if (cause == FinishCause::kNone) return;
  out.finished = true;
  out.cause = cause;
  out.usage = seq.usage;
  out.usage.num_output_tokens = seq.num_output_tokens();
  EraseFromQueues(seq);
  seqs_.erase(seq.seq_id);  // destroys seq
}

void Scheduler::AbortStep() {
  for (int64_t seq_id : inflight_) {
    auto it = seqs_.find(seq_id);
    if (it == seqs_.end()) continue;
    Sequence& seq = *it->second;
    if (seq.last_scheduled_step != step_id_) continue;
    seq.inflight_num_tokens = 0;
    seq.inflight_sample = false;
    seq.last_scheduled_step = -1;
  }
  inflight_.clear();
  step_in_flight_ = false;
}

absl::Status Scheduler::RemoveWorker(int32_t rank) {
  if (rank < 0 || rank >= static_cast<int32_t>(workers_.size()) || !workers_[rank].live) {
    return absl::NotFoundError(absl::StrCat("RemoveWorker: rank ", rank, " is not live"));
  }
  std::vector<Sequence*> moved;
  for (Sequence* seq : running_) {
    if (seq->home_rank == rank) moved.push_back(seq);
  }
  std::erase_if(running_, [rank](const Sequence* s) { return s->home_rank == rank; });
  for (Sequence* seq : moved) {
    ResetPlacement(*seq);  // its blocks go with the pool
    ++seq->usage.num_preemptions;
    Requeue(seq);
  }
  stats_.num_requeued += static_cast<int64_t>(moved.size());
  workers_[rank] = Worker{};
  FailWhatNoWorkerCanHold();
  return absl::OkStatus();
}

void Scheduler::FailWhatNoWorkerCanHold() {
  int64_t largest_pool = 0;
  for (const Worker& w : workers_) {
    if (w.live) largest_pool = std::max(largest_pool, w.blocks->num_blocks());
  }
  // With no worker at all, everything waits for a replacement instead.
  if (largest_pool == 0) return;
  std::vector<Sequence*> doomed;
  for (Sequence* seq : waiting_) {
    if (BlocksFor(seq->num_prompt_tokens + seq->max_output_tokens - 1) > largest_pool) {
      doomed.push_back(seq);
    }
  }
  for (Sequence* seq : doomed) {
    FinishSequence(*seq, FinishCause::kUnavailable,
                   absl::UnavailableError(absl::StrCat(
                       "request ", seq->request_id, ": no live worker's pool can hold it (largest ",
                       largest_pool, " blocks)")));
  }
}

const Sequence* Scheduler::FindSequence(int64_t seq_id) const {
  auto it = seqs_.find(seq_id);
  return it == seqs_.end() ? nullptr : it->second.get();
}

const BlockManager* Scheduler::worker_blocks(int32_t rank) const {
  if (rank < 0 || rank >= static_cast<int32_t>(workers_.size()) || !workers_[rank].live) {
    return nullptr;
  }
  return workers_[rank].blocks.get();
}

SchedulerStats Scheduler::GetStats() const {
  SchedulerStats stats = stats_;
  stats.num_running = num_running();
  stats.num_waiting = num_waiting();
  int64_t total = 0, used = 0;
  for (size_t rank = 0; rank < workers_.size(); ++rank) {
    const Worker& worker = workers_[rank];
    WorkerSchedulerStats& ws = stats.workers.emplace_back();
    ws.rank = static_cast<int32_t>(rank);
    ws.live = worker.live;
    if (!worker.live) continue;
    ws.num_blocks_total = worker.blocks->num_blocks();
    ws.num_blocks_used = worker.blocks->num_in_use();
    ws.num_blocks_evictable = worker.blocks->num_evictable();
    ws.num_running = worker.num_running;
    ws.kv_usage =
        static_cast<double>(ws.num_blocks_used) / static_cast<double>(ws.num_blocks_total);
    total += ws.num_blocks_total;
    used += ws.num_blocks_used;
    stats.num_evictions += worker.blocks->num_evictions();
  }
  stats.kv_usage = total > 0 ? static_cast<double>(used) / static_cast<double>(total) : 0.0;
  return stats;
}

}  // namespace switchyard
