// What the coordinator's scheduler sends to the workers every step, and what comes back.
//
// The control plane sends only what changed (DESIGN.md §3): a WorkerStepPlan names the sequences
// that are new on that worker (with their whole initial block table and sampling parameters), the
// blocks appended to sequences the worker already holds, the tokens to run, and the ids of the
// sequences the worker must forget. A decode step therefore costs O(1) per sequence, whatever its
// context length.
//
// A worker applies a plan in this order:
//   1. drop every sequence in freed_seq_ids (finished, aborted, preempted or requeued);
//   2. create every sequence in new_sequences (block_table is its full table so far);
//   3. for each SequenceWork, append its new blocks to the sequence's table, then run its tokens
//      at positions [start_position, start_position + num_tokens); when `sample` is set, sample
//      the token at position start_position + num_tokens with the sequence's SamplingParams
//      (the sampler's `position` argument).
// Every live worker gets a plan every step, even an empty one: all ranks join every MoE
// all-to-all (lockstep).
//
// The structs are plain data (no gRPC, no protobuf); the control service translates them.
// Flat arrays with offsets (token_ids, block_ids) keep a step free of per-sequence allocations
// when a plan object is reused from step to step.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "worker/sampler.h"

namespace switchyard {

// A sequence the worker has not seen (or must rebuild after a preemption or requeue).
struct NewSequence {
  int64_t seq_id = 0;
  std::string request_id;  // for logs only
  SamplingParams sampling;
  // The sequence's original prompt length: tokens at positions >= num_prompt_tokens are output
  // tokens (for the frequency and presence penalties), even when they are recomputed.
  int64_t num_prompt_tokens = 0;
  // Tokens whose KV is already in the leading cached blocks of block_table (a prefix-cache hit).
  // They are not run; the worker needs them only for its token history (repetition penalty).
  std::vector<int32_t> cached_token_ids;
  // Physical block ids on this worker, cached blocks first, covering at least the tokens of this
  // step's SequenceWork.
  std::vector<int32_t> block_table;
};

// One sequence's work in a step, on its home worker.
struct SequenceWork {
  int64_t seq_id = 0;
  int64_t start_position = 0;  // tokens of the sequence already in the KV cache
  int32_t token_offset = 0;    // its tokens: token_ids[token_offset, token_offset + num_tokens)
  int32_t num_tokens = 0;      // >= 1: a prompt chunk, or the one token sampled last step
  int32_t block_offset = 0;    // blocks to append: block_ids[block_offset, + num_new_blocks)
  int32_t num_new_blocks = 0;
  bool sample = false;  // this step completes the known tokens: sample the next one
};

struct WorkerStepPlan {
  int32_t rank = 0;
  std::vector<int64_t> freed_seq_ids;
  std::vector<NewSequence> new_sequences;
  std::vector<SequenceWork> work;
  std::vector<int32_t> token_ids;
  std::vector<int32_t> block_ids;

  std::span<const int32_t> TokensOf(const SequenceWork& w) const {
    return std::span<const int32_t>(token_ids).subspan(w.token_offset, w.num_tokens);
  }
  std::span<const int32_t> NewBlocksOf(const SequenceWork& w) const {
    return std::span<const int32_t>(block_ids).subspan(w.block_offset, w.num_new_blocks);
  }
  int64_t num_tokens() const { return static_cast<int64_t>(token_ids.size()); }
  bool empty() const { return work.empty() && freed_seq_ids.empty() && new_sequences.empty(); }
  void Clear() {
    freed_seq_ids.clear();
    new_sequences.clear();
    work.clear();
    token_ids.clear();
    block_ids.clear();
  }
};

struct StepPlan {
  int64_t step_id = 0;
  std::vector<WorkerStepPlan> workers;  // one per live worker, in rank order

  int64_t num_tokens() const {
    int64_t total = 0;
    for (const WorkerStepPlan& w : workers) total += w.num_tokens();
    return total;
  }
};

// The token sampled for one sequence (SequenceWork::sample was set).
struct SampledTokenResult {
  int64_t seq_id = 0;
  int32_t token_id = 0;
  float logprob = 0.0f;
};

// The results of one step, from all workers together (order does not matter).
struct StepResult {
  int64_t step_id = 0;
  std::vector<SampledTokenResult> tokens;
};

}  // namespace switchyard
