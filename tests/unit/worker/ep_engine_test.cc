// The engine run expert-parallel over the loopback data plane (ranks as threads) equals the
// single-process engine: every family, 1 to 4 ranks, each rank loading only its expert shard and
// running its own sequences (different lengths, prefill chunks then decodes, ranks idle in some
// steps), with contiguous and with balanced placements that replicate experts. Logits agree within
// 1e-4 relative (the combine sums in the same j order, so they agree to rounding of the expert
// GEMMs on different row counts). Also: weight bytes per rank follow the shard, and a failing rank
// makes every other rank's step fail (no hang).
#include <atomic>
#include <string>
#include <tuple>
#include <vector>

#include "gtest/gtest.h"
#include "tests/unit/worker/comm/comm_test_util.h"
#include "tests/unit/worker/ep_engine_test_util.h"
#include "worker/comm/faulty_communicator.h"
#include "worker/ep_moe_executor.h"

namespace switchyard {
namespace {

using testing::LoadEpTestEngine;
using testing::MakeEpTestModel;
using testing::SeqLogits;
using testing::SeqPlan;

CommunicatorOptions FastOptions() { return testing::TimeoutOptions(absl::Seconds(2)); }

struct RankOutcome {
  uint64_t bytes_loaded = 0;
  ExpertParallelTotals totals;
  std::vector<std::vector<int64_t>> slot_rows;
};

// Runs `plan` on world_size loopback ranks, each loading the shard of `placements`, checks every
// rank's logits against `expected`; fills per-rank outcomes.
void RunExpertParallel(const std::filesystem::path& dir, const std::vector<SeqPlan>& plan,
                       const SeqLogits& expected, const std::vector<LayerPlacement>& placements,
                       int world_size, std::vector<RankOutcome>* outcomes) {
  outcomes->assign(world_size, RankOutcome{});
  const std::vector<absl::Status> statuses =
      testing::RunLoopbackRanks(world_size, FastOptions(), [&](Communicator& comm) -> absl::Status {
        const int rank = comm.rank();
        auto config_engine = LoadEpTestEngine(dir, [](int64_t, int64_t) { return false; });
        if (!config_engine.ok()) return config_engine.status();
        auto engine =
            LoadEpTestEngine(dir, ShardLoadPredicate((*config_engine)->config(), placements, rank));
        if (!engine.ok()) return engine.status();
        auto executor = InstallExpertParallel(**engine, comm, placements);
        if (!executor.ok()) return executor.status();
        SeqLogits logits(plan.size());
        absl::Status status = testing::RunPlanOnRank(**engine, plan, rank, &logits);
        if (!status.ok()) return status;
        (*outcomes)[rank] = {(*engine)->weight_bytes_loaded(), (*executor)->totals(),
                             (*executor)->slot_rows()};
        return testing::CompareRankLogits(plan, rank, expected, logits);
      });
  for (int rank = 0; rank < world_size; ++rank) {
    EXPECT_TRUE(statuses[rank].ok()) << "rank " << rank << ": " << statuses[rank];
  }
}

// Weight bytes of the engine loading `load_expert` (empty: all).
uint64_t BytesLoaded(const std::filesystem::path& dir,
                     std::function<bool(int64_t, int64_t)> load_expert) {
  auto engine = LoadEpTestEngine(dir, std::move(load_expert));
  EXPECT_TRUE(engine.ok()) << engine.status();
  return engine.ok() ? (*engine)->weight_bytes_loaded() : 0;
}

class EpEngineTest : public ::testing::TestWithParam<std::tuple<std::string, int>> {};

TEST_P(EpEngineTest, ContiguousShardsMatchTheSingleProcessEngine) {
  const auto& [family, world_size] = GetParam();
  const std::filesystem::path dir = MakeEpTestModel(family);
  auto reference = LoadEpTestEngine(dir);
  ASSERT_TRUE(reference.ok()) << reference.status();
  const ModelConfig config = (*reference)->config();
  const std::vector<SeqPlan> plan = testing::MakePlan(world_size, config.vocab_size);
  if (world_size > 1) {
    ASSERT_TRUE(testing::PlanHasIdleRankStep(plan, world_size));
  }
  auto expected = testing::RunPlanSingleProcess(**reference, plan);
  ASSERT_TRUE(expected.ok()) << expected.status();
  auto placements = ContiguousPlacements(config, world_size);
  ASSERT_TRUE(placements.ok()) << placements.status();

  std::vector<RankOutcome> outcomes;
  RunExpertParallel(dir, plan, *expected, *placements, world_size, &outcomes);

  // Bytes: the dense part on every rank, the routed experts split exactly by the shard.
  const uint64_t all_bytes = (*reference)->weight_bytes_loaded();
  const uint64_t dense_bytes = BytesLoaded(dir, [](int64_t, int64_t) { return false; });
  const int64_t num_moe_layers = config.num_moe_layers();
  EXPECT_EQ(all_bytes - dense_bytes, static_cast<uint64_t>(num_moe_layers * config.num_experts *
                                                           testing::ExpertBytes(config)));
  uint64_t routed_sum = 0;
  for (int rank = 0; rank < world_size; ++rank) {
    const uint64_t routed = outcomes[rank].bytes_loaded - dense_bytes;
    const int64_t num_slots = num_moe_layers == 0 ? 0 : (*placements)[0].num_local_slots(rank);
    EXPECT_EQ(routed,
              static_cast<uint64_t>(num_moe_layers * num_slots * testing::ExpertBytes(config)))
        << "rank " << rank;
    routed_sum += routed;
    // Lockstep: every rank ran every MoE layer of every step, idle steps included.
    EXPECT_EQ(outcomes[rank].totals.num_runs, testing::NumSteps(plan) * num_moe_layers)
        << "rank " << rank;
  }
  EXPECT_EQ(routed_sum, all_bytes - dense_bytes);
  if (num_moe_layers > 0 && world_size > 1) {
    int64_t bytes_crossing = 0;
    for (const RankOutcome& outcome : outcomes) bytes_crossing += outcome.totals.bytes_sent;
    EXPECT_GT(bytes_crossing, 0) << "no row left its rank";
  }
}

INSTANTIATE_TEST_SUITE_P(FamiliesAndRanks, EpEngineTest,
                         ::testing::Combine(::testing::Values("llama", "mixtral", "qwen2_moe",
                                                              "qwen3_moe", "olmoe", "llama4",
                                                              "llama4_text"),
                                            ::testing::Values(1, 2, 3, 4)),
                         [](const auto& info) {
                           return std::get<0>(info.param) + "_" +
                                  std::to_string(std::get<1>(info.param)) + "ranks";
                         });

// Skewed predicted loads, different per layer, so the hot experts get replicas.
std::vector<LayerPlacement> BalancedPlacements(const ModelConfig& config, int world_size) {
  std::vector<LayerPlacement> placements;
  for (int64_t i = 0; i < config.num_moe_layers(); ++i) {
    std::vector<double> loads(config.num_experts);
    for (int64_t e = 0; e < config.num_experts; ++e) loads[e] = 1 + (e * 7 + i * 3) % 11;
    auto placement = LayerPlacement::Balanced(static_cast<int32_t>(config.num_experts), world_size,
                                              /*num_redundant_slots_per_rank=*/1, loads);
    EXPECT_TRUE(placement.ok()) << placement.status();
    placements.push_back(*placement);
  }
  return placements;
}

class EpEngineBalancedTest : public ::testing::TestWithParam<std::tuple<std::string, int>> {};

TEST_P(EpEngineBalancedTest, ReplicatedExpertsMatchTheSingleProcessEngine) {
  const auto& [family, world_size] = GetParam();
  const std::filesystem::path dir = MakeEpTestModel(family);
  auto reference = LoadEpTestEngine(dir);
  ASSERT_TRUE(reference.ok()) << reference.status();
  const ModelConfig config = (*reference)->config();
  const std::vector<SeqPlan> plan = testing::MakePlan(world_size, config.vocab_size);
  auto expected = testing::RunPlanSingleProcess(**reference, plan);
  ASSERT_TRUE(expected.ok()) << expected.status();
  const std::vector<LayerPlacement> placements = BalancedPlacements(config, world_size);

  std::vector<RankOutcome> outcomes;
  RunExpertParallel(dir, plan, *expected, placements, world_size, &outcomes);
  ASSERT_EQ(outcomes.size(), static_cast<size_t>(world_size));

  const uint64_t dense_bytes = BytesLoaded(dir, [](int64_t, int64_t) { return false; });
  bool some_replicas_both_used = false;
  for (size_t m = 0; m < placements.size(); ++m) {
    const LayerPlacement& p = placements[m];
    for (int32_t e = 0; e < p.num_experts(); ++e) {
      if (p.num_replicas(e) < 2) continue;
      int num_used = 0;
      for (const PhysicalSlot& slot : p.replicas(e)) {
        num_used += outcomes[slot.rank].slot_rows[m][slot.local_slot] > 0 ? 1 : 0;
      }
      some_replicas_both_used |= num_used >= 2;
    }
  }
  EXPECT_TRUE(some_replicas_both_used) << "no replicated expert ran on two ranks";
  for (int rank = 0; rank < world_size; ++rank) {
    int64_t num_slots = 0;
    for (const LayerPlacement& p : placements) num_slots += p.num_local_slots(rank);
    const uint64_t routed = outcomes[rank].bytes_loaded - dense_bytes;
    const uint64_t shard = num_slots * testing::ExpertBytes(config);
    if (config.expert_layout == ExpertLayout::kLlama4Fused) {
      // The fused tensors are read as one row range covering the rank's experts.
      EXPECT_GE(routed, shard) << "rank " << rank;
    } else {
      EXPECT_EQ(routed, shard) << "rank " << rank << " (replicas included)";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(FamiliesAndRanks, EpEngineBalancedTest,
                         ::testing::Combine(::testing::Values("mixtral", "qwen2_moe", "qwen3_moe",
                                                              "olmoe", "llama4", "llama4_text"),
                                            ::testing::Values(2, 3, 4)),
                         [](const auto& info) {
                           return std::get<0>(info.param) + "_" +
                                  std::to_string(std::get<1>(info.param)) + "ranks";
                         });

TEST(EpEngineSetupTest, RefusesUnloadedExpertsAndMismatchedPlacements) {
  const std::filesystem::path dir = MakeEpTestModel("mixtral");
  auto engine = LoadEpTestEngine(dir, [](int64_t, int64_t expert) { return expert < 4; });
  ASSERT_TRUE(engine.ok()) << engine.status();
  const ModelConfig& config = (*engine)->config();
  const std::vector<absl::Status> statuses =
      testing::RunLoopbackRanks(2, FastOptions(), [&](Communicator& comm) -> absl::Status {
        if (comm.rank() != 1) return absl::OkStatus();
        // Rank 1 of a 2-rank contiguous placement holds experts 4..7, which were not loaded.
        auto placements = ContiguousPlacements(config, 2);
        if (!placements.ok()) return placements.status();
        auto made = MakeExpertParallelMoeExecutor(config, (*engine)->weights(),
                                                  (*engine)->backend(), comm, *placements);
        EXPECT_EQ(made.status().code(), absl::StatusCode::kFailedPrecondition) << made.status();
        placements->pop_back();
        made = MakeExpertParallelMoeExecutor(config, (*engine)->weights(), (*engine)->backend(),
                                             comm, *placements);
        EXPECT_EQ(made.status().code(), absl::StatusCode::kInvalidArgument) << made.status();
        auto three = ContiguousPlacements(config, 3);
        made = MakeExpertParallelMoeExecutor(config, (*engine)->weights(), (*engine)->backend(),
                                             comm, *three);
        EXPECT_EQ(made.status().code(), absl::StatusCode::kInvalidArgument) << made.status();
        return absl::OkStatus();
      });
  for (const absl::Status& status : statuses) EXPECT_TRUE(status.ok()) << status;
}

TEST(EpEngineSetupTest, ShardPredicateLoadsExactlyTheSlotsOfTheRank) {
  ModelConfig config;
  config.num_hidden_layers = 3;
  config.num_experts = 4;
  config.layer_is_moe = {true, false, true};
  auto a = LayerPlacement::Create(0, 4, {{0, 1, 3}, {2, 3}});
  auto b = LayerPlacement::Create(0, 4, {{2}, {0, 1, 3}});
  ASSERT_TRUE(a.ok() && b.ok());
  const std::vector<LayerPlacement> placements = {*a, *b};
  ASSERT_TRUE(ValidatePlacements(config, placements, 2).ok());
  auto rank1 = ShardLoadPredicate(config, placements, 1);
  std::vector<std::pair<int64_t, int64_t>> loaded;
  for (int64_t layer = 0; layer < 3; ++layer) {
    for (int64_t e = 0; e < 4; ++e) {
      if (rank1(layer, e)) loaded.emplace_back(layer, e);
    }
  }
  EXPECT_EQ(loaded,
            (std::vector<std::pair<int64_t, int64_t>>{{0, 2}, {0, 3}, {2, 0}, {2, 1}, {2, 3}}));
}

TEST(EpEngineSetupTest, EmptyBatchOnTheLocalEngineIsANoOp) {
  auto engine = LoadEpTestEngine(MakeEpTestModel("qwen2_moe"));
  ASSERT_TRUE(engine.ok()) << engine.status();
  ForwardOutput out;
  out.logits.assign(3, 1.0f);
  absl::Status status = (*engine)->Forward({}, &out);
  EXPECT_TRUE(status.ok()) << status;
  EXPECT_TRUE(out.logits.empty());
  EXPECT_TRUE(out.first_row.empty());
}

// Faults: one rank's step fails (injected error, death, or a stall); every rank's step ends with
// an error, the others' with a peer-failure code, within the communicator deadline (the test
// would hang otherwise).
struct FaultCase {
  const char* name;
  int faulty_rank;
  std::function<void(FaultyCommunicator&)> inject;
};

class EpEngineFaultTest : public ::testing::TestWithParam<int> {};

TEST_P(EpEngineFaultTest, OneRankFailingFailsEveryRankNoHang) {
  const std::vector<FaultCase> cases = {
      // Call 4 is the second collective of the second MoE layer of step 0 (rank 1 is busy).
      {"fail", 1, [](FaultyCommunicator& c) { c.InjectAt(4, Fault{}); }},
      // Rank 2 joins at step 2: it dies during an idle step.
      {"kill_idle", 2, [](FaultyCommunicator& c) { c.KillAfter(5); }},
      {"drop", 0, [](FaultyCommunicator& c) { c.InjectAt(7, Fault{.kind = Fault::Kind::kDrop}); }},
  };
  const FaultCase& fault = cases[GetParam()];
  const int world_size = 3;
  const std::filesystem::path dir = MakeEpTestModel("mixtral");
  auto config_engine = LoadEpTestEngine(dir);
  ASSERT_TRUE(config_engine.ok());
  const ModelConfig config = (*config_engine)->config();
  const std::vector<SeqPlan> plan = testing::MakePlan(world_size, config.vocab_size);
  auto placements = ContiguousPlacements(config, world_size);
  ASSERT_TRUE(placements.ok());
  const std::vector<absl::Status> statuses = testing::RunLoopbackRanks(
      world_size, FastOptions(),
      [&](Communicator& comm) -> absl::Status {
        auto engine = LoadEpTestEngine(dir, ShardLoadPredicate(config, *placements, comm.rank()));
        if (!engine.ok()) return engine.status();
        auto executor = InstallExpertParallel(**engine, comm, *placements);
        if (!executor.ok()) return executor.status();
        SeqLogits logits(plan.size());
        return testing::RunPlanOnRank(**engine, plan, comm.rank(), &logits);
      },
      [&](std::unique_ptr<Communicator> inner) -> std::unique_ptr<Communicator> {
        const int rank = inner->rank();
        auto faulty = std::make_unique<FaultyCommunicator>(std::move(inner), FastOptions());
        if (rank == fault.faulty_rank) fault.inject(*faulty);
        return faulty;
      });
  for (int rank = 0; rank < world_size; ++rank) {
    EXPECT_FALSE(statuses[rank].ok()) << fault.name << " rank " << rank;
    if (rank == fault.faulty_rank) continue;
    EXPECT_TRUE(IsPeerFailure(statuses[rank]))
        << fault.name << " rank " << rank << ": " << statuses[rank];
  }
}

INSTANTIATE_TEST_SUITE_P(Faults, EpEngineFaultTest, ::testing::Values(0, 1, 2),
                         [](const auto& info) {
                           return std::string(info.param == 0   ? "InjectedError"
                                              : info.param == 1 ? "IdleRankDies"
                                                                : "DroppedCall");
                         });

}  // namespace
}  // namespace switchyard
