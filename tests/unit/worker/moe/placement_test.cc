// Expert placement: contiguous shards with remainders, EPLB-style replicas for skewed loads,
// validation, replica choice, and the text/JSON forms.
#include "worker/moe/placement.h"

#include <algorithm>
#include <numeric>
#include <random>

#include "absl/strings/match.h"
#include "gtest/gtest.h"

namespace switchyard {
namespace {

using Slots = std::vector<std::vector<int32_t>>;

TEST(PlacementTest, ContiguousEvenSplit) {
  const LayerPlacement placement = LayerPlacement::Contiguous(8, 4).value();
  EXPECT_EQ(placement.rank_slots(), (Slots{{0, 1}, {2, 3}, {4, 5}, {6, 7}}));
  EXPECT_EQ(placement.replicas(5)[0], (PhysicalSlot{2, 1}));
  EXPECT_EQ(placement.num_replicas(5), 1);
}

TEST(PlacementTest, ContiguousSpreadsTheRemainderOverTheFirstRanks) {
  EXPECT_EQ(LayerPlacement::Contiguous(10, 4).value().rank_slots(),
            (Slots{{0, 1, 2}, {3, 4, 5}, {6, 7}, {8, 9}}));
  EXPECT_EQ(LayerPlacement::Contiguous(7, 3).value().rank_slots(),
            (Slots{{0, 1, 2}, {3, 4}, {5, 6}}));
  // Fewer experts than ranks: the last ranks hold none.
  EXPECT_EQ(LayerPlacement::Contiguous(2, 3).value().rank_slots(), (Slots{{0}, {1}, {}}));
  EXPECT_EQ(LayerPlacement::Contiguous(5, 1).value().max_local_slots(), 5);
}

TEST(PlacementTest, ValidationErrorsSayWhatIsWrong) {
  auto missing = LayerPlacement::Create(0, 4, Slots{{0, 1}, {3}});
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(missing.status().message(), "expert 2")) << missing.status();

  auto out_of_range = LayerPlacement::Create(0, 4, Slots{{0, 1}, {2, 4, 3}});
  EXPECT_EQ(out_of_range.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(out_of_range.status().message(), "rank 1 slot 1"))
      << out_of_range.status();

  auto twice = LayerPlacement::Create(0, 2, Slots{{0, 1, 0}, {1}});
  EXPECT_EQ(twice.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(twice.status().message(), "twice")) << twice.status();

  EXPECT_FALSE(LayerPlacement::Create(0, 2, Slots{}).ok());
  EXPECT_FALSE(LayerPlacement::Contiguous(0, 2).ok());
  EXPECT_FALSE(LayerPlacement::Contiguous(4, 0).ok());
  EXPECT_FALSE(LayerPlacement::Balanced(4, 2, 1, std::vector<double>{1, 2, 3}).ok());
  EXPECT_FALSE(LayerPlacement::Balanced(4, 2, 1, std::vector<double>{1, -2, 3, 4}).ok());
  // 3 extra slots per rank on 2 ranks would need 6 replicas of 4 experts on 2 ranks: at most 4.
  EXPECT_FALSE(LayerPlacement::Balanced(4, 2, 3, {}).ok());
}

double Imbalance(const std::vector<double>& rank_loads) {
  const double mean =
      std::accumulate(rank_loads.begin(), rank_loads.end(), 0.0) / rank_loads.size();
  return *std::max_element(rank_loads.begin(), rank_loads.end()) / mean;
}

TEST(PlacementTest, ReplicasEvenOutASkewedLoad) {
  // Two hot experts that a contiguous placement puts on the same rank.
  const std::vector<double> loads = {100, 90, 10, 10, 10, 10, 10, 10, 5, 5, 5, 5, 5, 5, 5, 5};
  const LayerPlacement contiguous = LayerPlacement::Contiguous(16, 4).value();
  const LayerPlacement balanced = LayerPlacement::Balanced(16, 4, 1, loads, 2).value();
  EXPECT_EQ(balanced.version(), 2);
  // Independent check of the rank loads: each expert's load split evenly over its replicas.
  std::vector<double> rank_loads(4, 0.0);
  for (int rank = 0; rank < 4; ++rank) {
    ASSERT_EQ(balanced.num_local_slots(rank), 5);
    for (int32_t expert : balanced.rank_slots()[rank]) {
      rank_loads[rank] += loads[expert] / balanced.num_replicas(expert);
    }
  }
  EXPECT_EQ(rank_loads, balanced.RankLoads(loads));
  EXPECT_GT(Imbalance(contiguous.RankLoads(loads)), 2.0);
  EXPECT_LT(Imbalance(rank_loads), 1.15);
  // The four extra replicas go to the hottest experts.
  EXPECT_GE(balanced.num_replicas(0), 2);
  EXPECT_GE(balanced.num_replicas(1), 2);
  for (int32_t expert = 8; expert < 16; ++expert) EXPECT_EQ(balanced.num_replicas(expert), 1);
  // Replicas of one expert sit on different ranks.
  for (int32_t expert = 0; expert < 16; ++expert) {
    std::vector<int32_t> ranks;
    for (const PhysicalSlot& slot : balanced.replicas(expert)) ranks.push_back(slot.rank);
    EXPECT_EQ(std::unique(ranks.begin(), ranks.end()), ranks.end()) << "expert " << expert;
  }
}

// Any feasible (experts, ranks, redundant slots) packs: every slot filled, every expert placed,
// no rank holding an expert twice (Create validates the last two).
TEST(PlacementTest, BalancedAlwaysPacksFeasibleShapes) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<double> load(0.0, 100.0);
  for (int32_t num_experts = 1; num_experts <= 9; ++num_experts) {
    for (int32_t world_size = 1; world_size <= 5; ++world_size) {
      for (int32_t redundant = 0; world_size * redundant <= num_experts * (world_size - 1);
           ++redundant) {
        std::vector<double> loads(num_experts);
        for (double& l : loads) l = load(rng) * load(rng);  // skewed
        auto placement = LayerPlacement::Balanced(num_experts, world_size, redundant, loads);
        ASSERT_TRUE(placement.ok()) << num_experts << " experts, " << world_size << " ranks, "
                                    << redundant << " redundant: " << placement.status();
        int64_t num_slots = 0;
        for (int32_t rank = 0; rank < world_size; ++rank) {
          num_slots += placement->num_local_slots(rank);
          EXPECT_LE(placement->num_local_slots(rank),
                    (num_experts + world_size * redundant + world_size - 1) / world_size);
        }
        EXPECT_EQ(num_slots, num_experts + world_size * redundant);
      }
    }
  }
}

TEST(PlacementTest, BalancedWithUniformLoadHoldsEveryExpert) {
  const LayerPlacement placement = LayerPlacement::Balanced(6, 4, 1, {}).value();
  int64_t num_slots = 0;
  for (int rank = 0; rank < 4; ++rank) num_slots += placement.num_local_slots(rank);
  EXPECT_EQ(num_slots, 10);
  for (int32_t expert = 0; expert < 6; ++expert) EXPECT_GE(placement.num_replicas(expert), 1);
}

TEST(PlacementTest, ReplicaChooserIsDeterministicAndBalanced) {
  const LayerPlacement placement = LayerPlacement::Create(0, 2, Slots{{0, 1}, {0}, {0, 1}}).value();
  ASSERT_EQ(placement.num_replicas(0), 3);
  for (int source_rank = 0; source_rank < 3; ++source_rank) {
    ReplicaChooser chooser;
    chooser.Reset(placement, source_rank);
    std::vector<int> hits(3, 0);
    for (int i = 0; i < 9; ++i) {
      const PhysicalSlot slot = chooser.Choose(placement, 0);
      ++hits[slot.rank];
      if (i == 0) {
        EXPECT_EQ(slot.rank, source_rank);  // the rotation starts at the source rank
      }
    }
    EXPECT_EQ(hits, (std::vector<int>{3, 3, 3}));
  }
}

TEST(PlacementTest, TextAndJsonRoundTrip) {
  const LayerPlacement placement =
      LayerPlacement::Create(3, 4, Slots{{0, 1, 2}, {3, 0}, {}}).value();
  EXPECT_EQ(placement.ToString(), "v3 e4 w3 | 0,1,2 | 3,0 | ");
  const LayerPlacement from_text = LayerPlacement::FromString(placement.ToString()).value();
  EXPECT_EQ(from_text.rank_slots(), placement.rank_slots());
  EXPECT_EQ(from_text.version(), 3);
  EXPECT_EQ(placement.ToJson(),
            R"({"num_experts":4,"ranks":[[0,1,2],[3,0],[]],"version":3,"world_size":3})");
  const LayerPlacement from_json = LayerPlacement::FromJson(placement.ToJson()).value();
  EXPECT_EQ(from_json.rank_slots(), placement.rank_slots());
  EXPECT_EQ(from_json.num_experts(), 4);
}

TEST(PlacementTest, ParseErrors) {
  EXPECT_FALSE(LayerPlacement::FromString("").ok());
  EXPECT_FALSE(LayerPlacement::FromString("v1 e2 | 0,1").ok());
  EXPECT_FALSE(LayerPlacement::FromString("v1 e2 w2 | 0,1").ok());
  EXPECT_FALSE(LayerPlacement::FromString("v1 e2 w1 | 0,x").ok());
  EXPECT_FALSE(LayerPlacement::FromString("v1 e3 w1 | 0,1").ok());  // expert 2 unplaced
  EXPECT_FALSE(LayerPlacement::FromJson("{").ok());
  EXPECT_FALSE(LayerPlacement::FromJson(R"({"version":1})").ok());
  EXPECT_FALSE(
      LayerPlacement::FromJson(R"({"version":1,"num_experts":1,"world_size":2,"ranks":[[0]]})")
          .ok());
}

}  // namespace
}  // namespace switchyard
