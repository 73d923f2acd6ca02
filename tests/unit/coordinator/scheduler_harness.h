// A Scheduler plus a FakeCluster, stepped together, collecting every request's events and
// checking the scheduler's invariants after every step.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "coordinator/scheduler/scheduler.h"
#include "gtest/gtest.h"
#include "tests/unit/coordinator/fake_cluster.h"

namespace switchyard::testing {

// A prompt of `n` tokens, different for each `seed`.
inline std::vector<int32_t> MakePrompt(int64_t n, int64_t seed) {
  std::vector<int32_t> out;
  for (int64_t i = 0; i < n; ++i) {
    out.push_back(static_cast<int32_t>((seed * 7919 + i * 31 + 1) % kFakeVocab));
  }
  return out;
}

inline SchedulerOptions SmallOptions(int num_workers, int64_t num_blocks, int64_t block_size) {
  SchedulerOptions options;
  options.block_size = block_size;
  options.worker_num_blocks.assign(num_workers, num_blocks);
  options.max_model_len = 1024;
  options.max_num_batched_tokens = 64;
  options.max_num_seqs = 8;
  options.max_waiting = 64;
  options.admission_watermark = 0.0;
  return options;
}

struct RequestRecord {
  std::string request_id;
  std::vector<int32_t> prompt;
  std::vector<int32_t> tokens;
  int num_finished = 0;
  RequestOutput final_output;
};

class Harness {
 public:
  explicit Harness(const SchedulerOptions& options) : cluster(options) {
    auto created = Scheduler::Create(options);
    EXPECT_TRUE(created.ok()) << created.status();
    scheduler = std::move(created).value();
  }

  absl::StatusOr<int64_t> TryAdd(const std::string& id, std::vector<int32_t> prompt,
                                 int64_t max_tokens, absl::Time deadline = absl::InfiniteFuture()) {
    SchedulerRequest request;
    request.request_id = id;
    request.prompt_token_ids = prompt;
    request.max_tokens = max_tokens;
    request.deadline = deadline;
    absl::StatusOr<int64_t> seq_id = scheduler->Add(std::move(request));
    if (seq_id.ok()) records[*seq_id] = RequestRecord{id, std::move(prompt), {}, 0, {}};
    return seq_id;
  }

  int64_t Add(const std::string& id, std::vector<int32_t> prompt, int64_t max_tokens,
              absl::Time deadline = absl::InfiniteFuture()) {
    absl::StatusOr<int64_t> seq_id = TryAdd(id, std::move(prompt), max_tokens, deadline);
    EXPECT_TRUE(seq_id.ok()) << seq_id.status();
    return seq_id.ok() ? *seq_id : -1;
  }

  // One step at `now` (default: the step count in seconds after the epoch).
  absl::Status Step(absl::Time now) {
    outputs.clear();
    absl::Status s = cluster.Step(*scheduler, now, &plan, &outputs);
    if (!s.ok()) return s;
    Record(outputs);
    return scheduler->CheckInvariants();
  }
  absl::Status Step() { return Step(absl::UnixEpoch()); }

  void Record(const std::vector<RequestOutput>& events) {
    for (const RequestOutput& out : events) {
      RequestRecord& rec = records[out.seq_id];
      EXPECT_EQ(rec.num_finished, 0) << "event after the end for " << rec.request_id;
      if (out.has_token) rec.tokens.push_back(out.token_id);
      if (out.finished) {
        ++rec.num_finished;
        rec.final_output = out;
      }
    }
  }

  // Steps until nothing is live; false if that takes more than max_steps.
  bool RunToCompletion(int max_steps = 10000) {
    for (int i = 0; i < max_steps && scheduler->num_live_requests() > 0; ++i) {
      absl::Status s = Step();
      EXPECT_TRUE(s.ok()) << s;
      if (!s.ok()) return false;
    }
    return scheduler->num_live_requests() == 0;
  }

  const WorkerStepPlan& WorkerPlan(int32_t rank) const {
    for (const WorkerStepPlan& wp : plan.workers) {
      if (wp.rank == rank) return wp;
    }
    ADD_FAILURE() << "no plan for rank " << rank;
    return plan.workers.front();
  }

  const SequenceWork* WorkOf(int64_t seq_id) const {
    for (const WorkerStepPlan& wp : plan.workers) {
      for (const SequenceWork& w : wp.work) {
        if (w.seq_id == seq_id) return &w;
      }
    }
    return nullptr;
  }

  std::unique_ptr<Scheduler> scheduler;
  FakeCluster cluster;
  StepPlan plan;
  std::vector<RequestOutput> outputs;
  std::map<int64_t, RequestRecord> records;
};

}  // namespace switchyard::testing
