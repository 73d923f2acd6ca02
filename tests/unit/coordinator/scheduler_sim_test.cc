// Randomized simulation: hundreds of requests with random arrivals, lengths, shared prefixes,
// aborts, owner finishes, deadlines and a worker removal, run against fake workers that check
// every plan against their own KV contents. Invariants are checked after every step.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "coordinator/scheduler/scheduler.h"
#include "gtest/gtest.h"
#include "tests/unit/coordinator/scheduler_harness.h"

namespace switchyard {
namespace {

using ::switchyard::testing::Harness;
using ::switchyard::testing::kFakeVocab;
using ::switchyard::testing::ReferenceTokens;

struct SimConfig {
  uint32_t seed = 1;
  int num_requests = 300;
  bool prefix_caching = true;
  bool remove_worker = true;
};

struct Expectation {
  int64_t max_tokens = 0;
  int64_t added_at_step = 0;
  int64_t first_token_step = -1;
};

void RunSimulation(const SimConfig& config) {
  SCOPED_TRACE(absl::StrCat("seed ", config.seed, " caching ", config.prefix_caching));
  std::mt19937 rng(config.seed);
  auto uniform = [&](int64_t lo, int64_t hi) {
    return std::uniform_int_distribution<int64_t>(lo, hi)(rng);
  };
  SchedulerOptions options;
  options.block_size = 4;
  options.worker_num_blocks = {48, 48, 32};
  options.max_model_len = 160;
  options.max_num_batched_tokens = 32;
  options.max_num_seqs = 6;
  options.max_waiting = 40;
  options.enable_prefix_caching = config.prefix_caching;
  options.admission_watermark = 0.05;
  Harness h(options);

  // A few shared "system prompts" so the prefix cache has something to find.
  std::vector<std::vector<int32_t>> prefixes;
  for (int i = 0; i < 4; ++i) {
    std::vector<int32_t> p;
    for (int64_t n = uniform(4, 40); n > 0; --n)
      p.push_back(static_cast<int32_t>(uniform(0, kFakeVocab - 1)));
    prefixes.push_back(p);
  }
  std::map<int64_t, Expectation> expect;
  int num_submitted = 0, num_rejected = 0;
  bool removed = false;
  const absl::Time t0 = absl::FromUnixSeconds(1);
  int64_t step = 0;
  for (; step < 20000; ++step) {
    const absl::Time now = t0 + absl::Milliseconds(10 * step);
    // About 0.6 arrivals per step, in bursts: enough to keep the queue busy, with a few
    // rejections when a burst meets a full queue.
    const int64_t num_arrivals = uniform(0, 9) < 2 ? uniform(1, 3) : 0;
    for (int64_t k = num_arrivals; k > 0 && num_submitted < config.num_requests; --k) {
      std::vector<int32_t> prompt;
      if (uniform(0, 2) > 0) prompt = prefixes[uniform(0, 3)];
      for (int64_t n = uniform(1, 50); n > 0; --n)
        prompt.push_back(static_cast<int32_t>(uniform(0, kFakeVocab - 1)));
      const int64_t max_tokens = uniform(1, 40);
      const absl::Time deadline = uniform(0, 19) == 0 ? now + absl::Milliseconds(uniform(10, 2000))
                                                      : absl::InfiniteFuture();
      auto seq_id = h.TryAdd(absl::StrCat("req", num_submitted), prompt, max_tokens, deadline);
      ++num_submitted;
      if (!seq_id.ok()) {
        ASSERT_EQ(seq_id.status().code(), absl::StatusCode::kResourceExhausted) << seq_id.status();
        ++num_rejected;
        continue;
      }
      expect[*seq_id] = Expectation{max_tokens, step, -1};
    }
    // Random aborts and owner finishes of live requests.
    if (uniform(0, 29) == 0 && h.scheduler->num_live_requests() > 0) {
      std::vector<const testing::RequestRecord*> live;
      for (const auto& [seq_id, rec] : h.records) {
        if (h.scheduler->FindSequence(seq_id) != nullptr) live.push_back(&rec);
      }
      const std::string& id = live[uniform(0, static_cast<int64_t>(live.size()) - 1)]->request_id;
      ASSERT_TRUE((uniform(0, 1) ? h.scheduler->Abort(id) : h.scheduler->Finish(id)).ok());
    }
    if (config.remove_worker && !removed && step == 100) {
      ASSERT_TRUE(h.scheduler->RemoveWorker(1).ok());
      h.cluster.ResetWorker(1, 48, options.block_size);  // its state died with it
      removed = true;
    }
    if (config.remove_worker && step == 200) {
      ASSERT_TRUE(h.scheduler->AddWorker(1, 48).ok());
      h.cluster.ResetWorker(1, 48, options.block_size);
    }
    absl::Status s = h.Step(now);
    ASSERT_TRUE(s.ok()) << "step " << step << ": " << s;
    for (const RequestOutput& out : h.outputs) {
      if (out.has_token && expect[out.seq_id].first_token_step < 0) {
        expect[out.seq_id].first_token_step = step;
      }
    }
    if (num_submitted == config.num_requests && h.scheduler->num_live_requests() == 0) break;
  }
  ASSERT_EQ(h.scheduler->num_live_requests(), 0) << "requests left after " << step << " steps";
  ASSERT_GT(step, 200) << "the simulation should outlive the worker removal and return";
  EXPECT_LT(num_rejected, num_submitted);

  int num_completed = 0;
  int64_t max_wait_steps = 0;
  for (const auto& [seq_id, e] : expect) {
    if (e.first_token_step >= 0) {
      max_wait_steps = std::max(max_wait_steps, e.first_token_step - e.added_at_step);
    }
    const auto& rec = h.records[seq_id];
    ASSERT_EQ(rec.num_finished, 1) << rec.request_id << " must end exactly once";
    const std::vector<int32_t> reference = ReferenceTokens(rec.prompt, e.max_tokens);
    ASSERT_LE(rec.tokens.size(), reference.size());
    EXPECT_TRUE(std::equal(rec.tokens.begin(), rec.tokens.end(), reference.begin()))
        << rec.request_id << ": tokens differ from the reference";
    const FinishCause cause = rec.final_output.cause;
    if (cause == FinishCause::kMaxTokens) {
      ++num_completed;
      EXPECT_EQ(rec.tokens.size(), reference.size());
    } else {
      EXPECT_TRUE(cause == FinishCause::kAborted || cause == FinishCause::kStopped ||
                  cause == FinishCause::kDeadline)
          << FinishCauseName(cause);
    }
    EXPECT_EQ(rec.final_output.usage.num_output_tokens, static_cast<int64_t>(rec.tokens.size()));
  }
  EXPECT_GT(num_completed, static_cast<int>(expect.size()) / 2);
  // No starvation: FCFS admission bounds every wait by the work queued ahead of it
  // (max_waiting requests of at most 90 tokens, over the pools of 2-3 workers).
  EXPECT_LT(max_wait_steps, 400);
  const SchedulerStats stats = h.scheduler->GetStats();
  for (const WorkerSchedulerStats& w : stats.workers) {
    EXPECT_EQ(w.num_blocks_used, 0) << "worker " << w.rank << " holds blocks at the end";
    EXPECT_EQ(w.num_running, 0);
  }
  // Freed ids travel with the next plan: one more (empty) step delivers the last ones.
  ASSERT_TRUE(h.Step(t0 + absl::Milliseconds(10 * (step + 1))).ok());
  for (int32_t rank = 0; rank < 3; ++rank) {
    EXPECT_EQ(h.cluster.worker(rank).num_sequences(), 0) << "worker " << rank << " kept state";
  }
  if (config.prefix_caching) {
    EXPECT_GT(stats.prefix_cache_hit_tokens, 0);
  }
  std::map<FinishCause, int> causes;
  for (const auto& [seq_id, e] : expect) ++causes[h.records[seq_id].final_output.cause];
  std::printf(
      "seed %u: %lld steps, %d accepted, %d rejected, %d completed, %d aborted, %d stopped, "
      "%d deadline, %lld preemptions, %lld requeued, %lld/%lld cached tokens, "
      "%lld evictions, max wait %lld steps\n",
      config.seed, static_cast<long long>(step), static_cast<int>(expect.size()), num_rejected,
      causes[FinishCause::kMaxTokens], causes[FinishCause::kAborted], causes[FinishCause::kStopped],
      causes[FinishCause::kDeadline], static_cast<long long>(stats.num_preemptions),
      static_cast<long long>(stats.num_requeued),
      static_cast<long long>(stats.prefix_cache_hit_tokens),
      static_cast<long long>(stats.prefix_cache_query_tokens),
      static_cast<long long>(stats.num_evictions), static_cast<long long>(max_wait_steps));
}

TEST(SchedulerSimulationTest, RandomWorkloadsKeepEveryInvariant) {
  for (uint32_t seed = 1; seed <= 4; ++seed) {
    RunSimulation(SimConfig{seed, 300, true, true});
    if (HasFatalFailure()) return;
  }
}

TEST(SchedulerSimulationTest, WithoutPrefixCaching) {
  RunSimulation(SimConfig{7, 300, false, true});
}

TEST(SchedulerSimulationTest, UnderHeavyBlockPressurePreemptsAndStillFinishes) {
  // Tiny pools force preemptions; every request must still end, with the right tokens.
  SchedulerOptions options;
  options.block_size = 2;
  options.worker_num_blocks = {24, 24};
  options.max_model_len = 48;
  options.max_num_batched_tokens = 8;
  options.max_num_seqs = 6;
  options.max_waiting = 100;
  options.admission_watermark = 0.0;
  Harness h(options);
  std::mt19937 rng(11);
  std::vector<int64_t> ids;
  for (int i = 0; i < 60; ++i) {
    const int64_t prompt_len = 1 + rng() % 20, max_tokens = 1 + rng() % 24;
    std::vector<int32_t> prompt;
    for (int64_t n = 0; n < prompt_len; ++n) prompt.push_back(static_cast<int32_t>(rng() % 50));
    ids.push_back(h.Add(absl::StrCat("p", i), prompt, max_tokens));
  }
  ASSERT_TRUE(h.RunToCompletion(5000));
  EXPECT_GT(h.scheduler->GetStats().num_preemptions, 0);
  for (int64_t id : ids) {
    const auto& rec = h.records[id];
    EXPECT_EQ(rec.final_output.cause, FinishCause::kMaxTokens);
    EXPECT_EQ(rec.tokens, ReferenceTokens(rec.prompt, rec.tokens.size()));
  }
}

}  // namespace
}  // namespace switchyard
