// A request as the scheduler sees it, the events it reports back, and its per-sequence state.
//
// SchedulerRequest and RequestOutput are the scheduler's inputs and outputs (plain data). Sequence
// is the scheduler's own bookkeeping for one request: everything a recompute needs (prompt and
// tokens so far, sampling parameters including the seed) and where it lives (home worker, block
// table), so that a preempted sequence or one whose worker died can be rebuilt from scratch.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "worker/sampler.h"

namespace switchyard {

struct SchedulerRequest {
  std::string request_id;                 // unique among live requests
  std::vector<int32_t> prompt_token_ids;  // >= 1 token
  // Output tokens to generate at most; 0: up to the model's context (max_model_len - prompt).
  int64_t max_tokens = 0;
  SamplingParams sampling;  // opaque to the scheduler; sent to the home worker
  absl::Time deadline = absl::InfiniteFuture();
};

enum class FinishCause {
  kNone,
  kMaxTokens,    // reached max_tokens ("length")
  kMaxModelLen,  // reached the model's context length ("length")
  kStopped,      // the owner called Finish (stop string, EOS, ...)
  kAborted,      // Abort (status CANCELLED)
  kDeadline,     // the deadline passed (status DEADLINE_EXCEEDED)
  kUnavailable,  // after a worker removal no live worker can hold it (status UNAVAILABLE)
};

const char* FinishCauseName(FinishCause cause);

struct RequestUsage {
  int64_t num_prompt_tokens = 0;
  int64_t num_output_tokens = 0;
  // Prompt tokens served from the prefix cache at the request's first admission.
  int64_t cached_prompt_tokens = 0;
  int64_t num_preemptions = 0;  // times it was preempted or requeued (recomputed)
};

// One event for one request: a new token, its end, or both. Every accepted request gets exactly
// one event with finished == true.
struct RequestOutput {
  int64_t seq_id = 0;
  bool has_token = false;
  int32_t token_id = 0;
  float logprob = 0.0f;
  bool finished = false;
  FinishCause cause = FinishCause::kNone;
  absl::Status status;  // OK, or CANCELLED / DEADLINE_EXCEEDED
  RequestUsage usage;   // valid when finished
};

enum class SequenceState { kWaiting, kRunning };

// Scheduler-internal state of one live request. Owned by the Scheduler.
struct Sequence {
  int64_t seq_id = 0;
  std::string request_id;
  uint64_t arrival_idx = 0;  // priority: lower is older
  SamplingParams sampling;
  absl::Time deadline = absl::InfiniteFuture();
  int64_t num_prompt_tokens = 0;
  int64_t max_output_tokens = 0;  // effective max_tokens
  // Prompt followed by every output token so far (capacity reserved by Add: appending a token
  // never allocates).
  std::vector<int32_t> token_ids;
  // Hash of each full block of token_ids, chained (prefix_cache.h); extended lazily.
  std::vector<uint64_t> block_hashes;

  SequenceState state = SequenceState::kWaiting;
  int32_t home_rank = -1;
  std::vector<int32_t> block_table;   // physical blocks on home_rank
  int64_t num_computed_tokens = 0;    // tokens whose KV is in the cache on home_rank
  int64_t num_registered_blocks = 0;  // leading blocks of block_table already in the prefix cache
  int64_t num_blocks_sent = 0;        // leading blocks of block_table the worker already knows
  bool sent_to_worker = false;        // the worker has this sequence's NewSequence
  int64_t last_scheduled_step = -1;
  // The in-flight step's work (valid while last_scheduled_step is that step).
  int64_t inflight_num_tokens = 0;
  bool inflight_sample = false;
  uint64_t result_mark = 0;  // Update's validation scratch
  int64_t preempted_at_step = -1;
  bool first_admission_done = false;
  RequestUsage usage;

  int64_t num_tokens() const { return static_cast<int64_t>(token_ids.size()); }
  int64_t num_output_tokens() const { return num_tokens() - num_prompt_tokens; }
};

}  // namespace switchyard
