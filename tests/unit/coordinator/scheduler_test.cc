#include "coordinator/scheduler/scheduler.h"

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/unit/coordinator/scheduler_harness.h"

namespace switchyard {
namespace {

using ::switchyard::testing::Harness;
using ::switchyard::testing::MakePrompt;
using ::switchyard::testing::ReferenceTokens;
using ::switchyard::testing::SmallOptions;

std::vector<int32_t> Concat(std::vector<int32_t> a, const std::vector<int32_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

TEST(SchedulerTest, GeneratesReferenceTokensAndFinishesAtMaxTokens) {
  Harness h(SmallOptions(1, 64, 4));
  const int64_t a = h.Add("a", MakePrompt(10, 1), 5);
  ASSERT_TRUE(h.RunToCompletion());
  const auto& rec = h.records[a];
  EXPECT_EQ(rec.tokens, ReferenceTokens(rec.prompt, 5));
  EXPECT_EQ(rec.num_finished, 1);
  EXPECT_EQ(rec.final_output.cause, FinishCause::kMaxTokens);
  EXPECT_TRUE(rec.final_output.status.ok());
  EXPECT_EQ(rec.final_output.usage.num_prompt_tokens, 10);
  EXPECT_EQ(rec.final_output.usage.num_output_tokens, 5);
  EXPECT_EQ(h.scheduler->worker_blocks(0)->num_in_use(), 0);
}

TEST(SchedulerTest, FinishesAtMaxModelLen) {
  auto options = SmallOptions(1, 64, 4);
  options.max_model_len = 16;
  Harness h(options);
  const int64_t a = h.Add("a", MakePrompt(10, 1), 0);  // 0: up to the context
  ASSERT_TRUE(h.RunToCompletion());
  EXPECT_EQ(h.records[a].tokens.size(), 6u);
  EXPECT_EQ(h.records[a].final_output.cause, FinishCause::kMaxModelLen);
}

TEST(SchedulerTest, ChunkedPrefillWithinBudget) {
  auto options = SmallOptions(1, 64, 16);
  options.max_num_batched_tokens = 64;
  Harness h(options);
  const int64_t a = h.Add("a", MakePrompt(150, 1), 3);
  const int64_t expected_start[] = {0, 64, 128, 150};
  const int32_t expected_len[] = {64, 64, 22, 1};
  for (int step = 0; step < 4; ++step) {
    ASSERT_TRUE(h.Step().ok());
    const SequenceWork* w = h.WorkOf(a);
    ASSERT_NE(w, nullptr) << "step " << step;
    EXPECT_EQ(w->start_position, expected_start[step]);
    EXPECT_EQ(w->num_tokens, expected_len[step]);
    EXPECT_EQ(w->sample, step >= 2) << "samples only when the prompt is complete";
    EXPECT_LE(h.plan.num_tokens(), 64);
  }
  EXPECT_EQ(h.records[a].tokens.size(), 2u);
  ASSERT_TRUE(h.RunToCompletion());
  EXPECT_EQ(h.records[a].tokens, ReferenceTokens(h.records[a].prompt, 3));
}

TEST(SchedulerTest, DecodesBeforePrefillsAndShareTheStep) {
  auto options = SmallOptions(1, 128, 4);
  options.max_num_batched_tokens = 16;
  Harness h(options);
  const int64_t a = h.Add("a", MakePrompt(5, 1), 20);
  const int64_t b = h.Add("b", MakePrompt(5, 2), 20);
  ASSERT_TRUE(h.Step().ok());  // both prompts: 10 tokens
  ASSERT_TRUE(h.Step().ok());  // both decode
  const int64_t c = h.Add("c", MakePrompt(100, 3), 4);
  ASSERT_TRUE(h.Step().ok());
  ASSERT_NE(h.WorkOf(a), nullptr);
  ASSERT_NE(h.WorkOf(b), nullptr);
  ASSERT_NE(h.WorkOf(c), nullptr);
  EXPECT_EQ(h.WorkOf(a)->num_tokens, 1);
  EXPECT_EQ(h.WorkOf(b)->num_tokens, 1);
  EXPECT_EQ(h.WorkOf(c)->num_tokens, 14) << "the chunk gets what the decodes leave";
  EXPECT_FALSE(h.WorkOf(c)->sample);
  const SchedulerStats stats = h.scheduler->GetStats();
  EXPECT_EQ(stats.last_step_num_decode_tokens, 2);
  EXPECT_EQ(stats.last_step_num_prefill_tokens, 14);
  EXPECT_EQ(stats.last_step_num_tokens, 16);
  EXPECT_EQ(stats.total_scheduled_tokens, 10 + 2 + 16);
  // Next step c is a running prefill; the decodes still get their token first.
  ASSERT_TRUE(h.Step().ok());
  EXPECT_EQ(h.WorkOf(a)->num_tokens, 1);
  EXPECT_EQ(h.WorkOf(c)->start_position, 14);
  EXPECT_EQ(h.WorkOf(c)->num_tokens, 14);
  ASSERT_TRUE(h.RunToCompletion());
  for (int64_t id : {a, b, c}) {
    EXPECT_EQ(h.records[id].tokens,
              ReferenceTokens(h.records[id].prompt, h.records[id].tokens.size()));
  }
}

TEST(SchedulerTest, MaxNumSeqsRespected) {
  auto options = SmallOptions(1, 128, 4);
  options.max_num_seqs = 2;
  Harness h(options);
  for (int i = 0; i < 5; ++i) h.Add(absl::StrCat("r", i), MakePrompt(4, i), 3);
  ASSERT_TRUE(h.Step().ok());
  EXPECT_EQ(h.plan.workers[0].work.size(), 2u);
  EXPECT_EQ(h.scheduler->num_running(), 2);
  EXPECT_EQ(h.scheduler->num_waiting(), 3);
  for (int i = 0; i < 100 && h.scheduler->num_live_requests() > 0; ++i) {
    ASSERT_TRUE(h.Step().ok());
    EXPECT_LE(h.plan.workers[0].work.size(), 2u);
  }
  EXPECT_EQ(h.scheduler->num_live_requests(), 0);
}

TEST(SchedulerTest, StepPlanSendsOnlyWhatChanged) {
  Harness h(SmallOptions(1, 64, 4));
  const int64_t a = h.Add("a", MakePrompt(6, 1), 8);
  ASSERT_TRUE(h.Step().ok());
  const WorkerStepPlan& wp = h.plan.workers[0];
  ASSERT_EQ(wp.new_sequences.size(), 1u);
  EXPECT_EQ(wp.new_sequences[0].seq_id, a);
  EXPECT_EQ(wp.new_sequences[0].block_table.size(), 2u);
  EXPECT_EQ(wp.new_sequences[0].num_prompt_tokens, 6);
  EXPECT_EQ(wp.work[0].num_new_blocks, 0) << "a new sequence's blocks are in its table";
  // Decode of token 6 (position 6) fits in block 1: nothing new.
  ASSERT_TRUE(h.Step().ok());
  EXPECT_TRUE(h.plan.workers[0].new_sequences.empty());
  EXPECT_EQ(h.WorkOf(a)->num_new_blocks, 0);
  EXPECT_EQ(h.WorkOf(a)->start_position, 6);
  ASSERT_EQ(h.WorkOf(a)->num_tokens, 1);
  EXPECT_EQ(h.plan.workers[0].TokensOf(*h.WorkOf(a))[0], h.records[a].tokens[0]);
  ASSERT_TRUE(h.Step().ok());  // position 7
  EXPECT_EQ(h.WorkOf(a)->num_new_blocks, 0);
  ASSERT_TRUE(h.Step().ok());  // position 8: a third block
  EXPECT_EQ(h.WorkOf(a)->num_new_blocks, 1);
  ASSERT_TRUE(h.RunToCompletion());
  ASSERT_TRUE(h.Step().ok());
  EXPECT_EQ(h.plan.workers[0].freed_seq_ids, std::vector<int64_t>{a});
  ASSERT_TRUE(h.Step().ok());
  EXPECT_TRUE(h.plan.workers[0].empty()) << "an idle worker still gets an (empty) plan";
}

TEST(SchedulerTest, PrefixCacheReusesFirstTurnInSecondTurn) {
  Harness h(SmallOptions(1, 64, 16));
  const std::vector<int32_t> prompt_a = MakePrompt(30, 1);
  const int64_t a = h.Add("turn1", prompt_a, 10);
  ASSERT_TRUE(h.Step().ok());
  const std::vector<int32_t> blocks_a = h.plan.workers[0].new_sequences.at(0).block_table;
  ASSERT_TRUE(h.RunToCompletion());
  ASSERT_EQ(h.records[a].tokens.size(), 10u);
  // Turn 1 computed 30 + 9 tokens (its last token is never run): 2 full blocks are cached.
  const std::vector<int32_t> prompt_b =
      Concat(Concat(prompt_a, h.records[a].tokens), MakePrompt(12, 2));
  ASSERT_EQ(prompt_b.size(), 52u);
  const int64_t b = h.Add("turn2", prompt_b, 4);
  ASSERT_TRUE(h.Step().ok());
  const NewSequence& ns = h.plan.workers[0].new_sequences.at(0);
  ASSERT_GE(ns.block_table.size(), 2u);
  EXPECT_EQ(ns.block_table[0], blocks_a[0]);
  EXPECT_EQ(ns.block_table[1], blocks_a[1]);
  EXPECT_EQ(ns.cached_token_ids.size(), 32u);
  EXPECT_EQ(h.WorkOf(b)->start_position, 32);
  EXPECT_EQ(h.WorkOf(b)->num_tokens, 20);
  ASSERT_TRUE(h.RunToCompletion());
  EXPECT_EQ(h.records[b].final_output.usage.cached_prompt_tokens, 32);
  EXPECT_EQ(h.records[a].final_output.usage.cached_prompt_tokens, 0);
  EXPECT_EQ(h.records[b].tokens, ReferenceTokens(prompt_b, 4));
  const SchedulerStats stats = h.scheduler->GetStats();
  EXPECT_EQ(stats.prefix_cache_query_tokens, 30 + 52);
  EXPECT_EQ(stats.prefix_cache_hit_tokens, 32);
}

TEST(SchedulerTest, PrefixCacheAlwaysComputesTheLastPromptToken) {
  Harness h(SmallOptions(1, 64, 4));
  const std::vector<int32_t> prompt = MakePrompt(8, 1);  // exactly 2 blocks
  h.Add("a", prompt, 1);
  ASSERT_TRUE(h.RunToCompletion());
  const int64_t b = h.Add("b", prompt, 2);
  ASSERT_TRUE(h.Step().ok());
  EXPECT_EQ(h.WorkOf(b)->start_position, 4) << "only 1 of 2 cached blocks is reusable";
  EXPECT_EQ(h.WorkOf(b)->num_tokens, 4);
  EXPECT_TRUE(h.WorkOf(b)->sample);
  ASSERT_TRUE(h.RunToCompletion());
  EXPECT_EQ(h.records[b].final_output.usage.cached_prompt_tokens, 4);
  EXPECT_EQ(h.records[b].tokens, ReferenceTokens(prompt, 2));
}

TEST(SchedulerTest, SameTokensAfterDifferentPrefixDoNotHit) {
  // The cache holds [X Y] and [Z W]; a prompt [X W ...] may reuse X only: W's KV was computed
  // after Z. (Each of X, Y, Z, W is one block.)
  Harness h(SmallOptions(1, 64, 4));
  const std::vector<int32_t> x = MakePrompt(4, 1), y = MakePrompt(4, 2), z = MakePrompt(4, 3),
                             w = MakePrompt(4, 4);
  h.Add("xy", Concat(Concat(x, y), MakePrompt(1, 9)), 1);
  h.Add("zw", Concat(Concat(z, w), MakePrompt(1, 9)), 1);
  ASSERT_TRUE(h.RunToCompletion());
  const std::vector<int32_t> prompt = Concat(Concat(x, w), MakePrompt(3, 5));
  const int64_t c = h.Add("xw", prompt, 3);
  ASSERT_TRUE(h.RunToCompletion());
  EXPECT_EQ(h.records[c].final_output.usage.cached_prompt_tokens, 4);
  EXPECT_EQ(h.records[c].tokens, ReferenceTokens(prompt, 3));
}

}  // namespace
}  // namespace switchyard
