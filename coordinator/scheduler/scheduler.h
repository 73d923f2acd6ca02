// The coordinator's scheduler: continuous batching over N data-parallel-attention workers, with
// paged KV-block accounting and an automatic prefix cache per worker.
//
// Every step the owner calls Schedule(now) to get a StepPlan (one WorkerStepPlan per live worker,
// sent in lockstep), runs it on the workers, and feeds the StepResult to Update(). Requests join
// (Add) and leave (max_tokens, context length, Finish by the owner, Abort, deadline) between
// steps. The policy (docs/architecture.md has the long form):
//
// - Budget, per worker per step: at most max_num_batched_tokens tokens and max_num_seqs running
//   sequences. A worker runs attention for its own sequences, so each worker is a batch of its
//   own; the MoE layers then mix the tokens of all workers.
// - Order: running sequences first, oldest first. A sequence in decode runs 1 token; a sequence
//   still in its prompt runs the next chunk, as large as the worker's budget allows after
//   reserving 1 token for every decode on it (decodes before prefills). Then waiting sequences
//   are admitted in queue order (FCFS; the queue head blocks the rest when it cannot be placed),
//   each with a first chunk from the budget left. A sequence samples only on the step that
//   completes its known tokens (the end of the prompt, or a decode).
// - Blocks: allocated as a sequence grows. When a running sequence needs a block and its worker
//   has none, a prompt chunk shrinks to the blocks left; otherwise the youngest running sequence
//   on that worker that is not yet scheduled this step is preempted (blocks freed, back to the
//   front of the waiting queue, in arrival order among the other preempted ones, with prompt +
//   tokens so far, to be recomputed), possibly itself.
//   Since victims are always younger, the oldest sequence on a worker always progresses: no
//   deadlock. A waiting sequence is admitted only on a worker with blocks for all its known
//   tokens plus a watermark of free blocks left for the running sequences to grow into.
// - Prefix cache: see block_manager.h and prefix_cache.h. At admission a sequence reuses the
//   longest run of cached full blocks of its tokens on its chosen worker (at most
//   (num_tokens - 1) / block_size blocks, so the last token is always computed); blocks are
//   registered as they become full (in Update); freed cached blocks stay evictable.
// - Home worker: among the workers that can take the sequence now (seat, budget, blocks), the one
//   maximising  cached_tokens(w) - cache_affinity_alpha * (used_tokens(w) - min_used_tokens),
//   used_tokens = KV blocks in use * block_size; ties: fewer blocks in use, fewer running, lower
//   rank. With alpha = 1, a worker that caches T prompt tokens wins unless it holds more than T
//   tokens of KV beyond the least loaded worker.
//
// Thread safety: none; one thread (the coordinator's step loop) owns the scheduler. Schedule and
// Update alternate (one step in flight at a time).
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "coordinator/scheduler/block_manager.h"
#include "coordinator/scheduler/sequence.h"
#include "coordinator/scheduler/step_plan.h"

namespace switchyard {

struct SchedulerOptions {
  int64_t block_size = 16;                 // tokens per KV block
  std::vector<int64_t> worker_num_blocks;  // KV blocks of each worker's pool, by rank
  int64_t max_model_len = 4096;            // prompt + output tokens
  int64_t max_num_batched_tokens = 2048;   // per worker per step; >= max_num_seqs
  int64_t max_num_seqs = 256;              // running sequences per worker
  int64_t max_waiting = 4096;              // waiting queue bound (Add past it: RESOURCE_EXHAUSTED)
  bool enable_prefix_caching = true;
  double cache_affinity_alpha = 1.0;  // see the home-worker rule above
  // Fraction of a worker's pool admission leaves free for the running sequences to grow into
  // (vLLM's watermark), so new admissions do not immediately cause preemptions.
  double admission_watermark = 0.01;
};

struct WorkerSchedulerStats {
  int32_t rank = 0;
  bool live = false;
  int64_t num_blocks_total = 0;
  int64_t num_blocks_used = 0;       // referenced by a sequence
  int64_t num_blocks_evictable = 0;  // cached, unreferenced
  int64_t num_running = 0;
  double kv_usage = 0.0;  // used / total, 0-1
};

struct SchedulerStats {
  int64_t num_running = 0;
  int64_t num_waiting = 0;
  std::vector<WorkerSchedulerStats> workers;
  double kv_usage = 0.0;                  // over live workers
  int64_t prefix_cache_query_tokens = 0;  // tokens looked up at admissions
  int64_t prefix_cache_hit_tokens = 0;
  int64_t num_preemptions = 0;
  int64_t num_requeued = 0;  // by RemoveWorker
  int64_t num_evictions = 0;
  int64_t num_steps = 0;
  int64_t last_step_num_tokens = 0;
  int64_t last_step_num_prefill_tokens = 0;
  int64_t last_step_num_decode_tokens = 0;
  int64_t total_scheduled_tokens = 0;
  int64_t num_dropped_results = 0;  // tokens for sequences aborted or moved while in flight
};

class Scheduler {
 public:
  // INVALID_ARGUMENT naming the option for a bad SchedulerOptions.
  static absl::StatusOr<std::unique_ptr<Scheduler>> Create(SchedulerOptions options);

  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Queues a request; returns its seq_id (used in plans, results and outputs). Nothing changes on
  // error: RESOURCE_EXHAUSTED when max_waiting requests wait already; INVALID_ARGUMENT for an
  // empty prompt, max_tokens < 0, a request longer than max_model_len or needing more KV blocks
  // than the largest worker pool (the message names the limit); ALREADY_EXISTS for a request id
  // in use; UNAVAILABLE with no live worker.
  absl::StatusOr<int64_t> Add(SchedulerRequest request);

  // Ends a live request at once (its blocks are freed now; its home worker drops it with the next
  // plan). Abort reports it finished with CANCELLED; Finish (the owner saw a stop condition) with
  // OK and FinishCause::kStopped. The event comes out of the next Schedule or Update.
  // NOT_FOUND for an unknown or already finished request id.
  absl::Status Abort(absl::string_view request_id);
  absl::Status Finish(absl::string_view request_id);

  // Plans the next step into `plan` (reused: vectors keep their capacity) and appends events
  // (deadlines, earlier aborts) to `outputs`. FAILED_PRECONDITION while a step is in flight.
  absl::Status Schedule(absl::Time now, StepPlan* plan, std::vector<RequestOutput>* outputs);

  // Applies the in-flight step's results: appends sampled tokens, advances the sequences,
  // registers newly full blocks in the prefix cache, finishes sequences at max_tokens or
  // max_model_len, and appends events to `outputs`. Tokens for sequences aborted or moved since
  // the plan are dropped. Nothing changes on error: FAILED_PRECONDITION with no step in flight,
  // INVALID_ARGUMENT for a wrong step id, a missing or duplicated token.
  absl::Status Update(const StepResult& result, std::vector<RequestOutput>* outputs);

  // Forgets the in-flight step's compute (e.g. a communicator abort): its tokens will be run
  // again. The structural part of the plan (new sequences, blocks, freed ids) stands, so every
  // surviving worker must have applied it.
  void AbortStep();

  // Drops a worker's pool and requeues every sequence it hosted at the front of the waiting
  // queue (prompt + tokens so far, recomputed elsewhere). Waiting requests that no remaining
  // pool could ever hold end with UNAVAILABLE (only with pools of different sizes); with no
  // worker left, everything waits for AddWorker. NOT_FOUND for a rank not live.
  absl::Status RemoveWorker(int32_t rank);
  // Adds a worker (rank == number of ranks so far) or revives a removed one with an empty pool.
  absl::Status AddWorker(int32_t rank, int64_t num_blocks);

  SchedulerStats GetStats() const;
  int64_t num_running() const { return static_cast<int64_t>(running_.size()); }
  int64_t num_waiting() const { return static_cast<int64_t>(waiting_.size()); }
  int64_t num_live_requests() const { return static_cast<int64_t>(seqs_.size()); }
  bool step_in_flight() const { return step_in_flight_; }
  const SchedulerOptions& options() const { return options_; }

  // For tests and debugging: the state of a live sequence (nullptr if none) and of a pool.
  const Sequence* FindSequence(int64_t seq_id) const;
  const BlockManager* worker_blocks(int32_t rank) const;
  // Checks every cross-structure invariant (reference counts equal the block tables, no
  // uncached block in two tables, queues consistent, caps respected). O(state).
  absl::Status CheckInvariants() const;

 private:
  struct Worker {
    bool live = false;
    std::unique_ptr<BlockManager> blocks;
    int64_t num_running = 0;
    int64_t watermark_blocks = 0;
    std::vector<int64_t> pending_freed;  // seq ids to send in the next plan
    // Per step.
    int32_t plan_idx = -1;
    int64_t budget_left = 0;
    int64_t decodes_left = 0;  // decodes not yet scheduled (their budget is reserved)
  };
  struct Placement {
    int32_t rank = -1;
    int64_t num_cached_blocks = 0;
    int64_t num_tokens = 0;  // first chunk
    int64_t used_tokens = 0;
    int64_t num_running = 0;
  };

  explicit Scheduler(SchedulerOptions options);

  // schedule_step.cc
  void ExpireDeadlines(absl::Time now);
  void BeginStep(StepPlan* plan);
  void ScheduleRunning(StepPlan* plan);
  void ScheduleWaiting(StepPlan* plan);
  Placement ChooseHome(Sequence& seq);
  void Admit(Sequence& seq, const Placement& placement);
  // Tokens of `seq` that fit in its table plus every allocatable block of its worker.
  int64_t TokensThatFit(const Sequence& seq) const;
  Sequence* FindVictim(int32_t rank);
  void Preempt(Sequence& seq);
  // Puts a sequence that lost its placement back in the waiting queue, in arrival order.
  void Requeue(Sequence* seq);
  static bool ByArrival(const Sequence* a, const Sequence* b) {
    return a->arrival_idx < b->arrival_idx;
  }
  void GrowTable(Sequence& seq, int64_t num_tokens_total);
  void EmitWork(StepPlan* plan, Sequence& seq, int64_t num_tokens);

  // scheduler.cc
  absl::Status ValidateRequest(const SchedulerRequest& request) const;
  void ReleaseBlocks(Sequence& seq);
  void RegisterFullBlocks(Sequence& seq);
  void FinishSequence(Sequence& seq, FinishCause cause, absl::Status status);
  void EraseFromQueues(Sequence& seq);
  void FailWhatNoWorkerCanHold();
  void ResetPlacement(Sequence& seq);
  absl::Status ValidateResult(const StepResult& result);
  // The live sequence `seq_id` if it awaits a sampled token from the in-flight step.
  Sequence* FindInflightSampler(int64_t seq_id);
  void AppendToken(Sequence& seq, const SampledTokenResult& token);
  int64_t BlocksFor(int64_t num_tokens) const {
    return (num_tokens + options_.block_size - 1) / options_.block_size;
  }
  absl::Status CheckWorkerInvariants(int32_t rank) const;

  SchedulerOptions options_;
  std::vector<Worker> workers_;
  absl::flat_hash_map<int64_t, std::unique_ptr<Sequence>> seqs_;
  absl::flat_hash_map<std::string, int64_t> id_to_seq_;
  std::deque<Sequence*> waiting_;   // sorted by arrival_idx (FCFS)
  std::vector<Sequence*> running_;  // sorted by arrival_idx
  std::set<std::pair<absl::Time, int64_t>> deadlines_;
  std::vector<RequestOutput> pending_outputs_;
  int64_t next_seq_id_ = 1;
  uint64_t next_arrival_idx_ = 0;
  int64_t step_id_ = 0;
  bool step_in_flight_ = false;
  uint64_t result_mark_ = 0;
  std::vector<int64_t> inflight_;      // seq ids scheduled in the in-flight step
  std::vector<Sequence*> admitted_;    // scratch: admitted this step
  std::vector<Placement> candidates_;  // scratch for ChooseHome
  SchedulerStats stats_;
};

}  // namespace switchyard
