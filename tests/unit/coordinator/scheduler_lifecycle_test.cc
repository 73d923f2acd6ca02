// Scheduler: preemption, admission errors, abort, finish, deadlines, home choice, worker removal,
// and result validation.
#include <algorithm>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "coordinator/scheduler/scheduler.h"
#include "gtest/gtest.h"
#include "tests/unit/coordinator/scheduler_harness.h"

namespace switchyard {
namespace {

using ::switchyard::testing::Harness;
using ::switchyard::testing::MakePrompt;
using ::switchyard::testing::ReferenceTokens;
using ::switchyard::testing::SmallOptions;

bool Contains(const std::vector<int64_t>& v, int64_t x) {
  return std::find(v.begin(), v.end(), x) != v.end();
}

TEST(SchedulerPreemptionTest, YoungestPreemptedThenRecomputedWithItsTokens) {
  // 8 blocks of 4 tokens; each request needs 6 blocks over its life: they cannot both finish
  // side by side.
  auto options = SmallOptions(1, 8, 4);
  options.enable_prefix_caching = false;
  Harness h(options);
  const int64_t a = h.Add("a", MakePrompt(8, 1), 16);
  const int64_t b = h.Add("b", MakePrompt(8, 2), 16);
  int64_t num_b_tokens_at_preemption = -1;
  for (int step = 0; step < 200 && h.scheduler->num_live_requests() > 0; ++step) {
    ASSERT_TRUE(h.Step().ok());
    if (num_b_tokens_at_preemption < 0 && Contains(h.plan.workers[0].freed_seq_ids, b)) {
      ASSERT_NE(h.scheduler->FindSequence(a), nullptr) << "b freed while a still runs";
      EXPECT_EQ(h.WorkOf(b), nullptr);
      ASSERT_NE(h.WorkOf(a), nullptr) << "the older sequence keeps running";
      num_b_tokens_at_preemption = static_cast<int64_t>(h.records[b].tokens.size());
      EXPECT_EQ(h.scheduler->GetStats().num_preemptions, 1);
    }
    const SequenceWork* wb = h.WorkOf(b);
    if (num_b_tokens_at_preemption > 0 && wb != nullptr && wb->start_position == 0) {
      // The recompute: prompt + every token generated so far, sampling the next one.
      const std::vector<int32_t> expected_tokens = [&] {
        std::vector<int32_t> t = h.records[b].prompt;
        const auto ref = ReferenceTokens(t, num_b_tokens_at_preemption);
        t.insert(t.end(), ref.begin(), ref.end());
        return t;
      }();
      const auto tokens = h.plan.workers[0].TokensOf(*wb);
      EXPECT_EQ(std::vector<int32_t>(tokens.begin(), tokens.end()), expected_tokens);
      EXPECT_TRUE(wb->sample);
      EXPECT_EQ(h.plan.workers[0].new_sequences.at(0).num_prompt_tokens, 8);
    }
  }
  ASSERT_GT(num_b_tokens_at_preemption, 0) << "b was never preempted";
  EXPECT_EQ(h.scheduler->num_live_requests(), 0);
  for (int64_t id : {a, b}) {
    EXPECT_EQ(h.records[id].tokens, ReferenceTokens(h.records[id].prompt, 16)) << id;
    EXPECT_EQ(h.records[id].num_finished, 1);
  }
  EXPECT_EQ(h.records[a].final_output.usage.num_preemptions, 0);
  EXPECT_GE(h.records[b].final_output.usage.num_preemptions, 1);
}

TEST(SchedulerPreemptionTest, RecomputeHitsItsOwnCachedBlocks) {
  auto options = SmallOptions(1, 8, 4);
  Harness h(options);
  const int64_t a = h.Add("a", MakePrompt(8, 1), 16);
  const int64_t b = h.Add("b", MakePrompt(8, 2), 16);
  ASSERT_TRUE(h.RunToCompletion());
  EXPECT_GE(h.scheduler->GetStats().num_preemptions, 1);
  for (int64_t id : {a, b}) {
    EXPECT_EQ(h.records[id].tokens, ReferenceTokens(h.records[id].prompt, 16)) << id;
  }
  EXPECT_EQ(h.scheduler->worker_blocks(0)->num_in_use(), 0);
}

TEST(SchedulerAdmissionTest, QueueFullIsResourceExhaustedAndChangesNothing) {
  auto options = SmallOptions(1, 64, 4);
  options.max_waiting = 2;
  Harness h(options);
  h.Add("a", MakePrompt(4, 1), 2);
  h.Add("b", MakePrompt(4, 2), 2);
  auto c = h.TryAdd("c", MakePrompt(4, 3), 2);
  EXPECT_EQ(c.status().code(), absl::StatusCode::kResourceExhausted) << c.status();
  EXPECT_EQ(h.scheduler->num_waiting(), 2);
  EXPECT_EQ(h.scheduler->num_live_requests(), 2);
  ASSERT_TRUE(h.Step().ok());  // the queue drains into the batch: room again
  EXPECT_TRUE(h.TryAdd("c", MakePrompt(4, 3), 2).ok());
}

TEST(SchedulerAdmissionTest, NeverFitsIsInvalidArgumentNamingTheLimit) {
  auto options = SmallOptions(1, 8, 4);  // 32 tokens of KV
  options.max_model_len = 64;
  Harness h(options);
  auto pool = h.TryAdd("pool", MakePrompt(20, 1), 20);  // 39 tokens need 10 blocks
  EXPECT_EQ(pool.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(pool.status().message().find("10 KV blocks"), std::string::npos) << pool.status();
  EXPECT_NE(pool.status().message().find("(8 blocks)"), std::string::npos) << pool.status();
  auto len = h.TryAdd("len", MakePrompt(50, 1), 20);
  EXPECT_EQ(len.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(len.status().message().find("max_model_len 64"), std::string::npos) << len.status();
  auto full = h.TryAdd("full", MakePrompt(64, 1), 0);
  EXPECT_EQ(full.status().code(), absl::StatusCode::kInvalidArgument) << "no room for 1 token";
  EXPECT_EQ(h.TryAdd("empty", {}, 1).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(h.TryAdd("neg", MakePrompt(2, 1), -1).status().code(),
            absl::StatusCode::kInvalidArgument);
  // Exactly the pool: 17 + 16 - 1 = 32 tokens = 8 blocks.
  EXPECT_TRUE(h.TryAdd("fits", MakePrompt(17, 1), 16).ok());
  EXPECT_EQ(h.TryAdd("fits", MakePrompt(3, 1), 1).status().code(),
            absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(h.scheduler->num_live_requests(), 1);
  ASSERT_TRUE(h.RunToCompletion());
}

TEST(SchedulerAdmissionTest, WholePoolRequestIsAdmittedDespiteTheWatermark) {
  auto options = SmallOptions(1, 8, 4);
  options.admission_watermark = 0.3;  // 2 blocks kept free while others run
  Harness h(options);
  const int64_t a = h.Add("a", MakePrompt(17, 1), 16);  // needs all 8 blocks
  const int64_t b = h.Add("b", MakePrompt(4, 2), 2);
  ASSERT_TRUE(h.RunToCompletion(500));
  EXPECT_EQ(h.records[a].tokens, ReferenceTokens(h.records[a].prompt, 16));
  EXPECT_EQ(h.records[b].tokens, ReferenceTokens(h.records[b].prompt, 2));
}

TEST(SchedulerAdmissionTest, BadOptionsAreRejected) {
  auto options = SmallOptions(1, 8, 4);
  options.max_num_batched_tokens = 4;
  options.max_num_seqs = 8;
  EXPECT_EQ(Scheduler::Create(options).status().code(), absl::StatusCode::kInvalidArgument);
  options = SmallOptions(1, 8, 0);
  EXPECT_EQ(Scheduler::Create(options).status().code(), absl::StatusCode::kInvalidArgument);
  options = SmallOptions(1, 0, 4);
  EXPECT_EQ(Scheduler::Create(options).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(SchedulerAbortTest, AbortFreesBlocksAtOnceAndWorkerDropsIt) {
  auto options = SmallOptions(1, 64, 4);
  options.enable_prefix_caching = false;
  Harness h(options);
  const int64_t a = h.Add("a", MakePrompt(10, 1), 50);
  const int64_t b = h.Add("b", MakePrompt(10, 2), 50);
  ASSERT_TRUE(h.Step().ok());
  ASSERT_TRUE(h.Step().ok());
  const int64_t used_before = h.scheduler->worker_blocks(0)->num_in_use();
  const int64_t a_blocks = static_cast<int64_t>(h.scheduler->FindSequence(a)->block_table.size());
  ASSERT_TRUE(h.scheduler->Abort("a").ok());
  EXPECT_EQ(h.scheduler->worker_blocks(0)->num_in_use(), used_before - a_blocks);
  EXPECT_EQ(h.scheduler->Abort("a").code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(h.scheduler->Abort("nope").code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(h.Step().ok());
  EXPECT_EQ(h.plan.workers[0].freed_seq_ids, std::vector<int64_t>{a});
  EXPECT_EQ(h.WorkOf(a), nullptr);
  EXPECT_EQ(h.cluster.worker(0).num_sequences(), 1);
  EXPECT_EQ(h.records[a].num_finished, 1);
  EXPECT_EQ(h.records[a].final_output.cause, FinishCause::kAborted);
  EXPECT_EQ(h.records[a].final_output.status.code(), absl::StatusCode::kCancelled);
  ASSERT_TRUE(h.RunToCompletion());
  EXPECT_EQ(h.records[b].tokens, ReferenceTokens(h.records[b].prompt, 50));
}

TEST(SchedulerAbortTest, AbortWhileStepInFlightDropsItsToken) {
  Harness h(SmallOptions(1, 64, 4));
  const int64_t a = h.Add("a", MakePrompt(10, 1), 5);
  StepPlan plan;
  std::vector<RequestOutput> outputs;
  ASSERT_TRUE(h.scheduler->Schedule(absl::UnixEpoch(), &plan, &outputs).ok());
  StepResult result;
  result.step_id = plan.step_id;
  ASSERT_TRUE(h.cluster.worker(0).Apply(plan.workers[0], &result).ok());
  ASSERT_TRUE(h.scheduler->Abort("a").ok());
  ASSERT_TRUE(h.scheduler->Update(result, &outputs).ok());
  ASSERT_EQ(outputs.size(), 1u);
  EXPECT_EQ(outputs[0].seq_id, a);
  EXPECT_FALSE(outputs[0].has_token);
  EXPECT_EQ(outputs[0].cause, FinishCause::kAborted);
  EXPECT_EQ(h.scheduler->GetStats().num_dropped_results, 1);
  EXPECT_TRUE(h.scheduler->CheckInvariants().ok());
}

TEST(SchedulerAbortTest, OwnerFinishEndsTheRequest) {
  Harness h(SmallOptions(1, 64, 4));
  const int64_t a = h.Add("a", MakePrompt(10, 1), 50);
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(h.Step().ok());
  ASSERT_TRUE(h.scheduler->Finish("a").ok());
  EXPECT_EQ(h.scheduler->Finish("a").code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(h.Step().ok());
  EXPECT_EQ(h.records[a].num_finished, 1);
  EXPECT_EQ(h.records[a].final_output.cause, FinishCause::kStopped);
  EXPECT_TRUE(h.records[a].final_output.status.ok());
  EXPECT_EQ(h.records[a].final_output.usage.num_output_tokens, 3);
}

TEST(SchedulerDeadlineTest, ExpiredRequestsEndWithDeadlineExceeded) {
  auto options = SmallOptions(1, 64, 4);
  options.max_num_seqs = 1;
  Harness h(options);
  const absl::Time t0 = absl::FromUnixSeconds(1000);
  const int64_t a = h.Add("a", MakePrompt(10, 1), 50, t0 + absl::Seconds(1));
  const int64_t b = h.Add("b", MakePrompt(10, 2), 50, t0 + absl::Seconds(1));  // waits
  const int64_t c = h.Add("c", MakePrompt(10, 3), 3);
  ASSERT_TRUE(h.Step(t0).ok());
  ASSERT_TRUE(h.Step(t0 + absl::Milliseconds(500)).ok());
  EXPECT_EQ(h.records[a].num_finished, 0);
  ASSERT_TRUE(h.Step(t0 + absl::Seconds(2)).ok());
  for (int64_t id : {a, b}) {
    EXPECT_EQ(h.records[id].num_finished, 1);
    EXPECT_EQ(h.records[id].final_output.cause, FinishCause::kDeadline);
    EXPECT_EQ(h.records[id].final_output.status.code(), absl::StatusCode::kDeadlineExceeded);
  }
  EXPECT_EQ(h.records[a].tokens.size(), 2u);
  EXPECT_NE(h.WorkOf(c), nullptr) << "the freed seat goes to c in the same step";
  ASSERT_TRUE(h.RunToCompletion());
  EXPECT_EQ(h.records[c].final_output.cause, FinishCause::kMaxTokens);
}

TEST(SchedulerHomeTest, LeastLoadedWorker) {
  Harness h(SmallOptions(2, 64, 4));
  const int64_t a = h.Add("a", MakePrompt(16, 1), 30);
  ASSERT_TRUE(h.Step().ok());
  EXPECT_EQ(h.scheduler->FindSequence(a)->home_rank, 0) << "tie: lower rank";
  const int64_t b = h.Add("b", MakePrompt(8, 2), 30);
  ASSERT_TRUE(h.Step().ok());
  EXPECT_EQ(h.scheduler->FindSequence(b)->home_rank, 1);
  const int64_t c = h.Add("c", MakePrompt(4, 3), 30);  // w0: 5 blocks, w1: 3
  ASSERT_TRUE(h.Step().ok());
  EXPECT_EQ(h.scheduler->FindSequence(c)->home_rank, 1);
  const SchedulerStats stats = h.scheduler->GetStats();
  ASSERT_EQ(stats.workers.size(), 2u);
  EXPECT_EQ(stats.workers[0].num_running, 1);
  EXPECT_EQ(stats.workers[1].num_running, 2);
  EXPECT_EQ(stats.workers[0].num_blocks_used, 5);  // a: 16 + 2 tokens computed or scheduled
  EXPECT_DOUBLE_EQ(stats.workers[0].kv_usage, 5.0 / 64.0);
}

// Worker 0 caches 32 tokens of Q's prompt and holds 28 tokens of KV for L; worker 1 is empty.
// Score(w0) = 32 - alpha * 28, score(w1) = 0.
int32_t HomeOfPrefixedRequest(double alpha) {
  auto options = SmallOptions(2, 64, 4);
  options.cache_affinity_alpha = alpha;
  Harness h(options);
  const std::vector<int32_t> x = MakePrompt(32, 1);
  h.Add("x", x, 1);
  EXPECT_TRUE(h.RunToCompletion());
  EXPECT_EQ(h.scheduler->worker_blocks(0)->num_evictable(), 8);
  const int64_t l = h.Add("l", MakePrompt(24, 2), 100);
  EXPECT_TRUE(h.Step().ok());
  EXPECT_EQ(h.scheduler->FindSequence(l)->home_rank, 0);
  std::vector<int32_t> q = x;
  for (int32_t t : MakePrompt(8, 3)) q.push_back(t);
  const int64_t qid = h.Add("q", q, 2);
  EXPECT_TRUE(h.Step().ok());
  const int32_t home = h.scheduler->FindSequence(qid)->home_rank;
  EXPECT_EQ(h.scheduler->worker_blocks(0)->num_in_use(), home == 0 ? 7 + 10 : 7);
  EXPECT_TRUE(h.RunToCompletion(300));
  EXPECT_EQ(h.records[qid].final_output.usage.cached_prompt_tokens, home == 0 ? 32 : 0);
  EXPECT_EQ(h.records[qid].tokens, ReferenceTokens(q, 2));
  return home;
}

TEST(SchedulerHomeTest, PrefixAwareWhenSavingOutweighsLoad) {
  EXPECT_EQ(HomeOfPrefixedRequest(1.0), 0) << "32 cached tokens beat 28 tokens of extra load";
  EXPECT_EQ(HomeOfPrefixedRequest(2.0), 1) << "but not 56";
}

TEST(SchedulerWorkerTest, RemoveWorkerRequeuesItsSequences) {
  Harness h(SmallOptions(2, 64, 4));
  std::vector<int64_t> ids;
  for (int i = 0; i < 4; ++i) ids.push_back(h.Add(absl::StrCat("r", i), MakePrompt(10, i), 20));
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(h.Step().ok());
  std::vector<int64_t> on_one;
  for (int64_t id : ids) {
    if (h.scheduler->FindSequence(id)->home_rank == 1) on_one.push_back(id);
  }
  ASSERT_EQ(on_one.size(), 2u);
  ASSERT_TRUE(h.scheduler->RemoveWorker(1).ok());
  EXPECT_EQ(h.scheduler->RemoveWorker(1).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(h.scheduler->num_waiting(), 2);
  EXPECT_EQ(h.scheduler->GetStats().num_requeued, 2);
  EXPECT_TRUE(h.scheduler->CheckInvariants().ok()) << h.scheduler->CheckInvariants();
  ASSERT_TRUE(h.Step().ok());
  ASSERT_EQ(h.plan.workers.size(), 1u) << "only live workers get plans";
  for (int64_t id : on_one) {
    ASSERT_NE(h.WorkOf(id), nullptr);
    EXPECT_EQ(h.WorkOf(id)->start_position, 0);
    EXPECT_EQ(h.WorkOf(id)->num_tokens, 10 + 3) << "prompt + the 3 tokens generated so far";
    EXPECT_EQ(h.scheduler->FindSequence(id)->home_rank, 0);
  }
  ASSERT_TRUE(h.RunToCompletion());
  for (int64_t id : ids) {
    EXPECT_EQ(h.records[id].tokens, ReferenceTokens(h.records[id].prompt, 20)) << id;
    EXPECT_EQ(h.records[id].num_finished, 1);
  }
  // A replacement rank 1 joins with an empty pool and takes new work.
  ASSERT_TRUE(h.scheduler->AddWorker(1, 64).ok());
  h.cluster.ResetWorker(1, 64, 4);
  h.Add("after", MakePrompt(5, 9), 2);
  ASSERT_TRUE(h.Step().ok());
  EXPECT_EQ(h.plan.workers.size(), 2u);
  ASSERT_TRUE(h.RunToCompletion());
}

TEST(SchedulerWorkerTest, RemovingTheOnlyLargePoolFailsWhatNoLongerFits) {
  auto options = SmallOptions(2, 64, 4);
  options.worker_num_blocks = {64, 8};
  Harness h(options);
  const int64_t big = h.Add("big", MakePrompt(40, 1), 10);  // 13 blocks: only rank 0
  const int64_t small = h.Add("small", MakePrompt(4, 2), 10);
  ASSERT_TRUE(h.Step().ok());
  ASSERT_EQ(h.scheduler->FindSequence(big)->home_rank, 0);
  ASSERT_TRUE(h.scheduler->RemoveWorker(0).ok());
  h.cluster.ResetWorker(0, 64, 4);
  ASSERT_TRUE(h.Step().ok());
  EXPECT_EQ(h.records[big].final_output.cause, FinishCause::kUnavailable);
  EXPECT_EQ(h.records[big].final_output.status.code(), absl::StatusCode::kUnavailable);
  ASSERT_TRUE(h.RunToCompletion());
  EXPECT_EQ(h.records[small].tokens, ReferenceTokens(h.records[small].prompt, 10));
  // With no worker left, new requests are refused and nothing is lost.
  ASSERT_TRUE(h.scheduler->RemoveWorker(1).ok());
  EXPECT_EQ(h.TryAdd("none", MakePrompt(4, 3), 1).status().code(), absl::StatusCode::kUnavailable);
}

TEST(SchedulerWorkerTest, RemoveWorkerWhileStepInFlight) {
  Harness h(SmallOptions(2, 64, 4));
  const int64_t a = h.Add("a", MakePrompt(10, 1), 8);
  const int64_t b = h.Add("b", MakePrompt(10, 2), 8);
  ASSERT_TRUE(h.Step().ok());
  StepPlan plan;
  std::vector<RequestOutput> outputs;
  ASSERT_TRUE(h.scheduler->Schedule(absl::UnixEpoch(), &plan, &outputs).ok());
  StepResult result;
  result.step_id = plan.step_id;
  for (const WorkerStepPlan& wp : plan.workers) {
    ASSERT_TRUE(h.cluster.worker(wp.rank).Apply(wp, &result).ok());
  }
  ASSERT_TRUE(h.scheduler->RemoveWorker(1).ok());  // b's token from rank 1 must be dropped
  ASSERT_TRUE(h.scheduler->Update(result, &outputs).ok());
  h.Record(outputs);
  EXPECT_EQ(h.scheduler->GetStats().num_dropped_results, 1);
  ASSERT_TRUE(h.RunToCompletion());
  for (int64_t id : {a, b}) {
    EXPECT_EQ(h.records[id].tokens, ReferenceTokens(h.records[id].prompt, 8)) << id;
  }
}

TEST(SchedulerResultTest, BadResultsChangeNothing) {
  Harness h(SmallOptions(1, 64, 4));
  const int64_t a = h.Add("a", MakePrompt(10, 1), 3);
  const int64_t b = h.Add("b", MakePrompt(10, 2), 3);
  StepPlan plan;
  std::vector<RequestOutput> outputs;
  StepResult empty;
  EXPECT_EQ(h.scheduler->Update(empty, &outputs).code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(h.scheduler->Schedule(absl::UnixEpoch(), &plan, &outputs).ok());
  EXPECT_EQ(h.scheduler->Schedule(absl::UnixEpoch(), &plan, &outputs).code(),
            absl::StatusCode::kFailedPrecondition);
  StepResult result;
  result.step_id = plan.step_id;
  ASSERT_TRUE(h.cluster.worker(0).Apply(plan.workers[0], &result).ok());
  ASSERT_EQ(result.tokens.size(), 2u);
  StepResult wrong_step = result;
  wrong_step.step_id += 1;
  EXPECT_EQ(h.scheduler->Update(wrong_step, &outputs).code(), absl::StatusCode::kInvalidArgument);
  StepResult missing = result;
  missing.tokens.pop_back();
  EXPECT_EQ(h.scheduler->Update(missing, &outputs).code(), absl::StatusCode::kInvalidArgument);
  StepResult duplicated = result;
  duplicated.tokens.back() = duplicated.tokens.front();
  EXPECT_EQ(h.scheduler->Update(duplicated, &outputs).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(outputs.empty());
  EXPECT_EQ(h.scheduler->FindSequence(a)->num_computed_tokens, 0);
  ASSERT_TRUE(h.scheduler->Update(result, &outputs).ok());
  h.Record(outputs);
  EXPECT_EQ(h.scheduler->FindSequence(b)->num_computed_tokens, 10);
  ASSERT_TRUE(h.RunToCompletion());
  EXPECT_EQ(h.records[a].tokens, ReferenceTokens(h.records[a].prompt, 3));
}

TEST(SchedulerResultTest, AbortStepRunsTheSameWorkAgain) {
  Harness h(SmallOptions(1, 64, 4));
  const int64_t a = h.Add("a", MakePrompt(10, 1), 4);
  ASSERT_TRUE(h.Step().ok());
  StepPlan plan;
  std::vector<RequestOutput> outputs;
  ASSERT_TRUE(h.scheduler->Schedule(absl::UnixEpoch(), &plan, &outputs).ok());
  StepResult lost;
  ASSERT_TRUE(h.cluster.worker(0).Apply(plan.workers[0], &lost).ok());
  const int64_t start = plan.workers[0].work.at(0).start_position;
  h.scheduler->AbortStep();
  h.cluster.worker(0).set_allow_rewind(true);
  ASSERT_TRUE(h.Step().ok());
  EXPECT_EQ(h.WorkOf(a)->start_position, start);
  ASSERT_TRUE(h.RunToCompletion());
  EXPECT_EQ(h.records[a].tokens, ReferenceTokens(h.records[a].prompt, 4));
}

}  // namespace
}  // namespace switchyard
