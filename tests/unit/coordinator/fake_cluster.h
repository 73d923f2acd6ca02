// Test double for the workers the scheduler drives: each FakeWorker applies its WorkerStepPlan
// the way a real worker must (freed ids, new sequences, appended blocks, tokens at positions) to
// a fake KV cache that stores, at each slot, the token written there and a state that depends on
// every token before it (read back through the block table, like attention), and "samples" a
// token from the last state. So a wrong block
// table, a wrong position or a prefix-cache hit on a block with other tokens changes the tokens,
// and the tests compare them with ReferenceTokens, computed from the true token sequence alone.
#pragma once

#include <cstdint>
#include <map>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "coordinator/scheduler/scheduler.h"
#include "coordinator/scheduler/step_plan.h"

namespace switchyard::testing {

inline constexpr int32_t kFakeVocab = 1000;

// The fake model: the next token after `context`.
// Like a real KV entry, the fake state at a position depends on every token up to it: an FNV-1a
// chain. A block reused after a different prefix therefore holds the wrong states.
inline constexpr uint64_t kFakeStateSeed = 1469598103934665603ull;
inline uint64_t FakeState(uint64_t previous_state, int32_t token) {
  return (previous_state ^ static_cast<uint64_t>(static_cast<uint32_t>(token))) * 1099511628211ull;
}
inline int32_t FakeTokenFromState(uint64_t state) {
  return static_cast<int32_t>(state % kFakeVocab);
}

inline int32_t FakeNextToken(std::span<const int32_t> context) {
  uint64_t state = kFakeStateSeed;
  for (int32_t t : context) state = FakeState(state, t);
  return FakeTokenFromState(state);
}

// The tokens a request must produce: the independent expectation.
inline std::vector<int32_t> ReferenceTokens(std::vector<int32_t> prompt, int64_t num_tokens) {
  std::vector<int32_t> out;
  for (int64_t i = 0; i < num_tokens; ++i) {
    out.push_back(FakeNextToken(prompt));
    prompt.push_back(out.back());
  }
  return out;
}

class FakeWorker {
 public:
  FakeWorker(int64_t num_blocks, int64_t block_size)
      : block_size_(block_size), kv_(num_blocks * block_size, -1), state_(kv_.size(), 0) {}

  absl::Status Apply(const WorkerStepPlan& plan, StepResult* result) {
    for (int64_t seq_id : plan.freed_seq_ids) {
      if (seqs_.erase(seq_id) == 0) return Error(plan, "freed unknown sequence ", seq_id);
    }
    for (const NewSequence& ns : plan.new_sequences) {
      if (seqs_.count(ns.seq_id) != 0) return Error(plan, "new sequence already held ", ns.seq_id);
      Seq& seq = seqs_[ns.seq_id];
      seq.table = ns.block_table;
      for (size_t pos = 0; pos < ns.cached_token_ids.size(); ++pos) {
        if (Slot(seq, pos) < 0 || kv_[Slot(seq, pos)] != ns.cached_token_ids[pos]) {
          return Error(plan, "cached block content differs at position ", pos);
        }
      }
      seq.length = static_cast<int64_t>(ns.cached_token_ids.size());
    }
    for (const SequenceWork& work : plan.work) {
      auto it = seqs_.find(work.seq_id);
      if (it == seqs_.end()) return Error(plan, "work for unknown sequence ", work.seq_id);
      Seq& seq = it->second;
      // After Scheduler::AbortStep the same positions are run again (a rewind).
      if (work.start_position != seq.length &&
          !(allow_rewind_ && work.start_position < seq.length)) {
        return Error(plan, "start_position ", work.start_position, " for sequence ", work.seq_id,
                     ", worker holds ", seq.length, " tokens");
      }
      seq.length = work.start_position;
      for (int32_t block : plan.NewBlocksOf(work)) seq.table.push_back(block);
      for (int32_t token : plan.TokensOf(work)) {
        const int64_t slot = Slot(seq, seq.length);
        if (slot < 0) return Error(plan, "block table too short for sequence ", work.seq_id);
        // Attention reads the earlier positions through the block table, as the real one does.
        const uint64_t previous =
            seq.length == 0 ? kFakeStateSeed : state_[Slot(seq, seq.length - 1)];
        kv_[slot] = token;
        state_[slot] = FakeState(previous, token);
        ++seq.length;
      }
      ++num_token_rows_;
      if (!work.sample) continue;
      const uint64_t last = state_[Slot(seq, seq.length - 1)];
      result->tokens.push_back({work.seq_id, FakeTokenFromState(last), -0.5f});
    }
    return absl::OkStatus();
  }

  void set_allow_rewind(bool allow) { allow_rewind_ = allow; }
  int64_t num_sequences() const { return static_cast<int64_t>(seqs_.size()); }
  int64_t num_token_rows() const { return num_token_rows_; }

 private:
  struct Seq {
    std::vector<int32_t> table;
    int64_t length = 0;
  };
  int64_t Slot(const Seq& seq, int64_t pos) const {
    const size_t block_idx = static_cast<size_t>(pos / block_size_);
    if (block_idx >= seq.table.size()) return -1;
    return seq.table[block_idx] * block_size_ + pos % block_size_;
  }
  template <typename... Args>
  absl::Status Error(const WorkerStepPlan& plan, const Args&... args) {
    return absl::InternalError(absl::StrCat("fake worker ", plan.rank, ": ", args...));
  }

  int64_t block_size_;
  std::vector<int32_t> kv_;      // token id written at each slot
  std::vector<uint64_t> state_;  // the prefix-dependent "KV" at each slot
  std::map<int64_t, Seq> seqs_;
  int64_t num_token_rows_ = 0;
  bool allow_rewind_ = false;
};

// All workers of a scheduler, stepped together.
class FakeCluster {
 public:
  explicit FakeCluster(const SchedulerOptions& options) {
    for (int64_t num_blocks : options.worker_num_blocks) {
      workers_.emplace_back(num_blocks, options.block_size);
    }
  }

  // One Schedule + Apply on every worker + Update. `plan` and `outputs` receive what happened.
  absl::Status Step(Scheduler& scheduler, absl::Time now, StepPlan* plan,
                    std::vector<RequestOutput>* outputs) {
    if (absl::Status s = scheduler.Schedule(now, plan, outputs); !s.ok()) return s;
    StepResult result;
    result.step_id = plan->step_id;
    for (const WorkerStepPlan& wp : plan->workers) {
      if (absl::Status s = workers_.at(wp.rank).Apply(wp, &result); !s.ok()) return s;
    }
    return scheduler.Update(result, outputs);
  }

  FakeWorker& worker(int32_t rank) { return workers_.at(rank); }
  // A replacement worker starts empty.
  void ResetWorker(int32_t rank, int64_t num_blocks, int64_t block_size) {
    workers_.at(rank) = FakeWorker(num_blocks, block_size);
  }

 private:
  std::vector<FakeWorker> workers_;
};

}  // namespace switchyard::testing
