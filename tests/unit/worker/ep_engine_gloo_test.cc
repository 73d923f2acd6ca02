// The expert-parallel engine with ranks as forked processes over Gloo on 127.0.0.1 (FileStore in a
// temporary directory): each process loads its expert shard, runs its own sequences and checks its
// logits against the single-process engine, computed by the parent before forking. And a rank
// process that dies mid-step makes every other rank's step fail promptly.
#include <unistd.h>

#include <cstdlib>
#include <iostream>
#include <string>
#include <tuple>

#include "gloo/rendezvous/file_store.h"
#include "gtest/gtest.h"
#include "tests/unit/worker/comm/comm_test_util.h"
#include "tests/unit/worker/ep_engine_test_util.h"
#include "worker/comm/faulty_communicator.h"
#include "worker/comm/gloo_communicator.h"
#include "worker/ep_moe_executor.h"

namespace switchyard {
namespace {

using testing::ChildResult;
using testing::LoadEpTestEngine;
using testing::SeqLogits;
using testing::SeqPlan;

GlooCommunicatorOptions FastOptions() {
  GlooCommunicatorOptions options;
  options.comm.timeout = absl::Seconds(5);
  options.comm.connect_timeout = absl::Seconds(20);
  return options;
}

// One rank process: connect, load the shard, run the plan (through `wrap` when given).
absl::Status RunRankProcess(int rank, int world_size, const std::string& store_dir,
                            const std::filesystem::path& model_dir,
                            const std::vector<SeqPlan>& plan,
                            const std::vector<LayerPlacement>& placements, SeqLogits* logits,
                            const std::function<void(FaultyCommunicator&)>& inject = nullptr) {
  auto gloo = CreateGlooCommunicator(std::make_shared<gloo::rendezvous::FileStore>(store_dir), rank,
                                     world_size, FastOptions());
  if (!gloo.ok()) return gloo.status();
  FaultyCommunicator comm(std::move(gloo).value(), FastOptions().comm);
  if (inject) inject(comm);
  auto config_engine = LoadEpTestEngine(model_dir, [](int64_t, int64_t) { return false; });
  if (!config_engine.ok()) return config_engine.status();
  auto engine =
      LoadEpTestEngine(model_dir, ShardLoadPredicate((*config_engine)->config(), placements, rank));
  if (!engine.ok()) return engine.status();
  auto executor = InstallExpertParallel(**engine, comm, placements);
  if (!executor.ok()) return executor.status();
  logits->assign(plan.size(), {});
  return testing::RunPlanOnRank(**engine, plan, rank, logits);
}

class EpEngineGlooTest : public ::testing::TestWithParam<std::tuple<std::string, int>> {};

TEST_P(EpEngineGlooTest, ProcessesMatchTheSingleProcessEngine) {
  const auto& [family, world_size] = GetParam();
  const std::filesystem::path dir = testing::MakeEpTestModel(family);
  auto reference = LoadEpTestEngine(dir);
  ASSERT_TRUE(reference.ok()) << reference.status();
  const ModelConfig config = (*reference)->config();
  const std::vector<SeqPlan> plan = testing::MakePlan(world_size, config.vocab_size);
  ASSERT_TRUE(testing::PlanHasIdleRankStep(plan, world_size));
  auto expected = testing::RunPlanSingleProcess(**reference, plan);
  ASSERT_TRUE(expected.ok()) << expected.status();
  auto placements = ContiguousPlacements(config, world_size);
  ASSERT_TRUE(placements.ok());

  const std::vector<ChildResult> results = testing::RunForkedRanks(
      world_size,
      [&](int rank, const std::string& store_dir) -> absl::Status {
        SeqLogits logits;
        absl::Status status =
            RunRankProcess(rank, world_size, store_dir, dir, plan, *placements, &logits);
        if (!status.ok()) return status;
        return testing::CompareRankLogits(plan, rank, *expected, logits);
      },
      /*wait_limit_seconds=*/60);
  for (int rank = 0; rank < world_size; ++rank) {
    EXPECT_FALSE(results[rank].hung) << "rank " << rank << " hung";
    EXPECT_EQ(results[rank].exit_code, 0) << "rank " << rank << ": " << results[rank].report;
  }
}

INSTANTIATE_TEST_SUITE_P(FamiliesAndRanks, EpEngineGlooTest,
                         ::testing::Combine(::testing::Values("llama", "mixtral", "qwen2_moe", "qwen3_moe",
                                                              "olmoe", "llama4", "llama4_text"),
                                            ::testing::Values(2, 3, 4)),
                         [](const auto& info) {
                           return std::get<0>(info.param) + "_" +
                                  std::to_string(std::get<1>(info.param)) + "ranks";
                         });

TEST(EpEngineGlooFaultTest, RankProcessDyingMidStepFailsEveryOtherRank) {
  const int world_size = 3;
  const std::filesystem::path dir = testing::MakeEpTestModel("mixtral");
  auto reference = LoadEpTestEngine(dir);
  ASSERT_TRUE(reference.ok()) << reference.status();
  const std::vector<SeqPlan> plan =
      testing::MakePlan(world_size, (*reference)->config().vocab_size);
  auto placements = ContiguousPlacements((*reference)->config(), world_size);
  ASSERT_TRUE(placements.ok());
  constexpr int kDyingRank = 1;
  const std::vector<ChildResult> results = testing::RunForkedRanks(
      world_size,
      [&](int rank, const std::string& store_dir) -> absl::Status {
        SeqLogits logits;
        // Dies (closing its sockets, as a crash does) in the middle of step 1.
        auto inject = [rank](FaultyCommunicator& comm) {
          if (rank == kDyingRank) comm.KillAfter(17, [] { std::_Exit(3); });
        };
        return RunRankProcess(rank, world_size, store_dir, dir, plan, *placements, &logits, inject);
      },
      /*wait_limit_seconds=*/60);
  EXPECT_EQ(results[kDyingRank].exit_code, 3) << results[kDyingRank].report;
  for (int rank = 0; rank < world_size; ++rank) {
    if (rank == kDyingRank) continue;
    std::cerr << "rank " << rank << " reported: " << results[rank].report << "\n";
    EXPECT_FALSE(results[rank].hung) << "rank " << rank << " hung";
    EXPECT_EQ(results[rank].exit_code, 1) << "rank " << rank << ": " << results[rank].report;
    const absl::StatusCode code = testing::ReportedCode(results[rank]);
    EXPECT_TRUE(code == absl::StatusCode::kDeadlineExceeded ||
                code == absl::StatusCode::kUnavailable || code == absl::StatusCode::kAborted)
        << "rank " << rank << ": " << results[rank].report;
  }
}

}  // namespace
}  // namespace switchyard
