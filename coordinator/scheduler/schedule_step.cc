// Scheduler::Schedule: deadlines, the running pass (decodes and prompt chunks, preemption), the
// admission pass (home choice, prefix-cache hits) and the plan it emits. See scheduler.h.
#include <algorithm>
#include <span>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "coordinator/scheduler/prefix_cache.h"
#include "coordinator/scheduler/scheduler.h"

namespace switchyard {

absl::Status Scheduler::Schedule(absl::Time now, StepPlan* plan,
                                 std::vector<RequestOutput>* outputs) {
  if (step_in_flight_) {
    return absl::FailedPreconditionError(
        absl::StrCat("Schedule: step ", step_id_, " is still in flight; call Update or AbortStep"));
  }
  ExpireDeadlines(now);
  BeginStep(plan);
  ScheduleRunning(plan);
  ScheduleWaiting(plan);
  for (Worker& worker : workers_) {
    if (!worker.live) continue;
    // Swap keeps both vectors' capacity: no allocation once warm.
    plan->workers[worker.plan_idx].freed_seq_ids.swap(worker.pending_freed);
    worker.pending_freed.clear();
  }
  outputs->insert(outputs->end(), pending_outputs_.begin(), pending_outputs_.end());
  pending_outputs_.clear();
  const int64_t num_tokens = plan->num_tokens();
  stats_.last_step_num_tokens = num_tokens;
  stats_.total_scheduled_tokens += num_tokens;
  ++stats_.num_steps;
  step_in_flight_ = true;
  return absl::OkStatus();
}

void Scheduler::ExpireDeadlines(absl::Time now) {
  while (!deadlines_.empty() && deadlines_.begin()->first <= now) {
    Sequence& seq = *seqs_.at(deadlines_.begin()->second);
    FinishSequence(seq, FinishCause::kDeadline,
                   absl::DeadlineExceededError(
                       absl::StrCat("request ", seq.request_id, ": deadline passed after ",
                                    seq.num_output_tokens(), " output tokens")));
  }
}

void Scheduler::BeginStep(StepPlan* plan) {
  plan->step_id = ++step_id_;
  int32_t num_live = 0;
  for (Worker& worker : workers_) {
    if (!worker.live) continue;
    worker.plan_idx = num_live++;
    worker.budget_left = options_.max_num_batched_tokens;
    worker.decodes_left = 0;
  }
  plan->workers.resize(num_live);
  for (size_t rank = 0; rank < workers_.size(); ++rank) {
    if (!workers_[rank].live) continue;
    WorkerStepPlan& wp = plan->workers[workers_[rank].plan_idx];
    wp.Clear();
    wp.rank = static_cast<int32_t>(rank);
  }
  for (const Sequence* seq : running_) {
    if (seq->num_tokens() - seq->num_computed_tokens == 1) ++workers_[seq->home_rank].decodes_left;
  }
  stats_.last_step_num_prefill_tokens = 0;
  stats_.last_step_num_decode_tokens = 0;
}

void Scheduler::ScheduleRunning(StepPlan* plan) {
  // Indexing (not iterators): Preempt only flags victims; running_ is compacted afterwards.
  for (size_t i = 0; i < running_.size(); ++i) {
    Sequence& seq = *running_[i];
    if (seq.state != SequenceState::kRunning) continue;  // preempted earlier in this pass
    Worker& worker = workers_[seq.home_rank];
    const int64_t num_remaining = seq.num_tokens() - seq.num_computed_tokens;
    const bool is_decode = num_remaining == 1;
    int64_t num_tokens;
    if (is_decode) {
      num_tokens = 1;
    } else {
      num_tokens = std::min(num_remaining, worker.budget_left - worker.decodes_left);
      if (num_tokens <= 0) continue;
    }
    bool preempted_self = false;
    while (TokensThatFit(seq) < num_tokens) {
      const int64_t fit = TokensThatFit(seq);
      if (!is_decode && fit >= 1) {  // a shorter chunk beats preempting someone
        num_tokens = fit;
        break;
      }
      Sequence* victim = FindVictim(seq.home_rank);
      SY_CHECK(victim != nullptr);  // seq itself is unscheduled and running
      Preempt(*victim);
      if (victim == &seq) {
        preempted_self = true;
        break;
      }
    }
    if (preempted_self) continue;  // Preempt released its decode reservation
    if (is_decode) --worker.decodes_left;
    GrowTable(seq, seq.num_computed_tokens + num_tokens);
    worker.budget_left -= num_tokens;
    EmitWork(plan, seq, num_tokens);
  }
  std::erase_if(running_, [](const Sequence* s) { return s->state != SequenceState::kRunning; });
}

int64_t Scheduler::TokensThatFit(const Sequence& seq) const {
  const BlockManager& blocks = *workers_[seq.home_rank].blocks;
  const int64_t num_blocks =
      static_cast<int64_t>(seq.block_table.size()) + blocks.num_allocatable();
  return num_blocks * options_.block_size - seq.num_computed_tokens;
}

Sequence* Scheduler::FindVictim(int32_t rank) {
  for (auto it = running_.rbegin(); it != running_.rend(); ++it) {
    Sequence* seq = *it;
    if (seq->home_rank == rank && seq->state == SequenceState::kRunning &&
        seq->last_scheduled_step != step_id_) {
      return seq;
    }
  }
  return nullptr;
}

void Scheduler::Preempt(Sequence& seq) {
  Worker& worker = workers_[seq.home_rank];
  if (seq.num_tokens() - seq.num_computed_tokens == 1) --worker.decodes_left;
  ReleaseBlocks(seq);
  ResetPlacement(seq);
  seq.preempted_at_step = step_id_;
  ++seq.usage.num_preemptions;
  ++stats_.num_preemptions;
  Requeue(&seq);
}

void Scheduler::Requeue(Sequence* seq) {
  // Admission is FCFS, so a placed sequence is older than every sequence never admitted: its
  // place by age is in front of them, among the other requeued ones.
  auto pos = std::upper_bound(waiting_.begin(), waiting_.end(), seq, ByArrival);
  waiting_.insert(pos, seq);
}

void Scheduler::GrowTable(Sequence& seq, int64_t num_tokens_total) {
  const int64_t num_new =
      BlocksFor(num_tokens_total) - static_cast<int64_t>(seq.block_table.size());
  if (num_new <= 0) return;
  const bool ok = workers_[seq.home_rank].blocks->AllocateMany(num_new, &seq.block_table);
  SY_CHECK(ok);  // callers checked TokensThatFit
}

void Scheduler::EmitWork(StepPlan* plan, Sequence& seq, int64_t num_tokens) {
  WorkerStepPlan& wp = plan->workers[workers_[seq.home_rank].plan_idx];
  const int64_t num_table = static_cast<int64_t>(seq.block_table.size());
  SequenceWork work;
  work.seq_id = seq.seq_id;
  work.start_position = seq.num_computed_tokens;
  if (!seq.sent_to_worker) {
    NewSequence& ns = wp.new_sequences.emplace_back();
    ns.seq_id = seq.seq_id;
    ns.request_id = seq.request_id;
    ns.sampling = seq.sampling;
    ns.num_prompt_tokens = seq.num_prompt_tokens;
    ns.cached_token_ids.assign(seq.token_ids.begin(),
                               seq.token_ids.begin() + seq.num_computed_tokens);
    ns.block_table = seq.block_table;
    seq.sent_to_worker = true;
    seq.num_blocks_sent = num_table;
  }
  work.block_offset = static_cast<int32_t>(wp.block_ids.size());
  work.num_new_blocks = static_cast<int32_t>(num_table - seq.num_blocks_sent);
  wp.block_ids.insert(wp.block_ids.end(), seq.block_table.begin() + seq.num_blocks_sent,
                      seq.block_table.end());
  seq.num_blocks_sent = num_table;
  work.token_offset = static_cast<int32_t>(wp.token_ids.size());
  work.num_tokens = static_cast<int32_t>(num_tokens);
  const auto first = seq.token_ids.begin() + seq.num_computed_tokens;
  wp.token_ids.insert(wp.token_ids.end(), first, first + num_tokens);
  work.sample = seq.num_computed_tokens + num_tokens == seq.num_tokens();
  wp.work.push_back(work);

  seq.last_scheduled_step = step_id_;
  seq.inflight_num_tokens = num_tokens;
  seq.inflight_sample = work.sample;
  inflight_.push_back(seq.seq_id);
  const bool is_decode =
      seq.num_tokens() - seq.num_computed_tokens == 1 && seq.num_output_tokens() > 0;
  (is_decode ? stats_.last_step_num_decode_tokens : stats_.last_step_num_prefill_tokens) +=
      num_tokens;
}

void Scheduler::ScheduleWaiting(StepPlan* plan) {
  admitted_.clear();
  while (!waiting_.empty()) {
    Sequence& seq = *waiting_.front();
    // Re-admitting a sequence preempted in this very step would only thrash.
    if (seq.preempted_at_step == step_id_) break;
    const Placement placement = ChooseHome(seq);
    if (placement.rank < 0) break;  // FCFS: the head waits, and so does everyone behind it
    waiting_.pop_front();
    Admit(seq, placement);
    admitted_.push_back(&seq);
    EmitWork(plan, seq, placement.num_tokens);
  }
  for (Sequence* seq : admitted_) {
    running_.insert(std::upper_bound(running_.begin(), running_.end(), seq, ByArrival), seq);
  }
}

Scheduler::Placement Scheduler::ChooseHome(Sequence& seq) {
  const int64_t bs = options_.block_size;
  const int64_t max_cacheable = (seq.num_tokens() - 1) / bs;
  const int64_t blocks_for_life = BlocksFor(seq.num_prompt_tokens + seq.max_output_tokens - 1);
  if (options_.enable_prefix_caching) {
    ExtendBlockHashes(seq.token_ids, bs, max_cacheable, &seq.block_hashes);
  }
  const std::span<const uint64_t> hashes =
      std::span<const uint64_t>(seq.block_hashes)
          .first(options_.enable_prefix_caching ? max_cacheable : 0);
  candidates_.clear();
  for (size_t rank = 0; rank < workers_.size(); ++rank) {
    const Worker& worker = workers_[rank];
    if (!worker.live || worker.num_running >= options_.max_num_seqs) continue;
    const int64_t budget = worker.budget_left - worker.decodes_left;
    if (budget < 1 || blocks_for_life > worker.blocks->num_blocks()) continue;
    const BlockManager& blocks = *worker.blocks;
    Placement p;
    p.rank = static_cast<int32_t>(rank);
    p.num_cached_blocks = CountCachedPrefixBlocks(blocks, hashes);
    int64_t num_evictable_hits = 0;
    for (int64_t i = 0; i < p.num_cached_blocks; ++i) {
      num_evictable_hits += blocks.ref_count(blocks.Lookup(hashes[i])) == 0 ? 1 : 0;
    }
    // Room for every known token (not just the first chunk): admitting a prompt that cannot
    // finish its prefill would only get it preempted again.
    // No watermark on an idle worker: a sequence as large as the whole pool must still fit.
    const int64_t watermark = worker.num_running > 0 ? worker.watermark_blocks : 0;
    const int64_t allocatable = blocks.num_allocatable() - num_evictable_hits - watermark;
    if (allocatable < BlocksFor(seq.num_tokens()) - p.num_cached_blocks) continue;
    p.num_tokens = std::min(seq.num_tokens() - p.num_cached_blocks * bs, budget);
    SY_DCHECK(p.num_tokens >= 1);  // max_cacheable leaves the last token to compute
    p.used_tokens = blocks.num_in_use() * bs;
    p.num_running = worker.num_running;
    candidates_.push_back(p);
  }
  if (candidates_.empty()) return Placement{};
  int64_t min_used = candidates_[0].used_tokens;
  for (const Placement& p : candidates_) min_used = std::min(min_used, p.used_tokens);
  const double alpha = options_.cache_affinity_alpha;
  auto score = [&](const Placement& p) {
    return static_cast<double>(p.num_cached_blocks * bs) -
           alpha * static_cast<double>(p.used_tokens - min_used);
  };
  const Placement* best = &candidates_[0];
  for (const Placement& p : candidates_) {
    const double s = score(p), b = score(*best);
    if (s > b || (s == b && std::tie(p.used_tokens, p.num_running, p.rank) <
                                std::tie(best->used_tokens, best->num_running, best->rank))) {
      best = &p;
    }
  }
  return *best;
}

void Scheduler::Admit(Sequence& seq, const Placement& placement) {
  Worker& worker = workers_[placement.rank];
  BlockManager& blocks = *worker.blocks;
  seq.state = SequenceState::kRunning;
  seq.home_rank = placement.rank;
  ++worker.num_running;
  for (int64_t i = 0; i < placement.num_cached_blocks; ++i) {
    const int32_t block = blocks.Lookup(seq.block_hashes[i]);
    blocks.Acquire(block);
    seq.block_table.push_back(block);
  }
  const int64_t num_cached_tokens = placement.num_cached_blocks * options_.block_size;
  seq.num_computed_tokens = num_cached_tokens;
  seq.num_registered_blocks = placement.num_cached_blocks;
  if (options_.enable_prefix_caching) {
    stats_.prefix_cache_query_tokens += seq.num_tokens();
    stats_.prefix_cache_hit_tokens += num_cached_tokens;
  }
  if (!seq.first_admission_done) {
    seq.first_admission_done = true;
    seq.usage.cached_prompt_tokens = std::min(num_cached_tokens, seq.num_prompt_tokens);
  }
  GrowTable(seq, num_cached_tokens + placement.num_tokens);
  worker.budget_left -= placement.num_tokens;
}

}  // namespace switchyard
