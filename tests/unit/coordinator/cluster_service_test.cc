// ClusterService's rendezvous store and the placement it computes for Load.
#include "coordinator/cluster_service.h"

#include <thread>

#include "absl/strings/match.h"
#include "gtest/gtest.h"

namespace switchyard {
namespace {

ClusterOptions Options() {
  ClusterOptions options;
  options.num_workers = 2;
  return options;
}

TEST(ClusterServiceTest, StoreGetTimesOutNamingTheMissingKeys) {
  ClusterService service(Options(), [](const auto&) {}, [](const auto&, absl::Status) {});
  service.Set("gen0/rank0", "a");
  std::vector<std::string> values;
  absl::Status status =
      service.Get({"gen0/rank0", "gen0/rank1"}, absl::Milliseconds(20), &values);
  EXPECT_EQ(status.code(), absl::StatusCode::kDeadlineExceeded) << status;
  EXPECT_NE(status.message().find("gen0/rank1"), absl::string_view::npos) << status;
  EXPECT_EQ(status.message().find("gen0/rank0,"), absl::string_view::npos) << status;
}

TEST(ClusterServiceTest, StoreGetWaitsForALaterSet) {
  ClusterService service(Options(), [](const auto&) {}, [](const auto&, absl::Status) {});
  std::thread setter([&service] {
    absl::SleepFor(absl::Milliseconds(20));
    service.Set("k2", "two");
  });
  service.Set("k1", "one");
  std::vector<std::string> values;
  absl::Status status = service.Get({"k1", "k2"}, absl::Seconds(30), &values);
  setter.join();
  ASSERT_TRUE(status.ok()) << status;
  EXPECT_EQ(values, (std::vector<std::string>{"one", "two"}));
}

TEST(ClusterServiceTest, RegisterRefusesWorkersBeyondTheExpectedCount) {
  ClusterService service(Options(), [](const auto&) {}, [](const auto&, absl::Status) {});
  v1::RegisterRequest request;
  v1::RegisterResponse response;
  grpc::ServerContext context;
  request.set_worker_address("127.0.0.1:1");
  ASSERT_TRUE(service.Register(&context, &request, &response).ok());
  EXPECT_EQ(response.worker_id(), "w0");
  EXPECT_EQ(response.expected_workers(), 2u);
  request.set_worker_address("127.0.0.1:2");
  ASSERT_TRUE(service.Register(&context, &request, &response).ok());
  EXPECT_EQ(response.worker_id(), "w1");
  request.set_worker_address("127.0.0.1:3");
  EXPECT_EQ(service.Register(&context, &request, &response).error_code(),
            grpc::StatusCode::RESOURCE_EXHAUSTED);
}

ModelConfig MoeConfig(int64_t num_experts, int64_t num_layers) {
  ModelConfig config;
  config.num_experts = num_experts;
  config.num_hidden_layers = num_layers;
  config.layer_is_moe.assign(num_layers, true);
  return config;
}

TEST(ResolveDataPlaneTest, AutoPicksNcclOnlyWhenEveryWorkerIsOnCuda) {
  EXPECT_EQ(ResolveDataPlane("auto", {"cuda", "cuda"}).value(), "nccl");
  EXPECT_EQ(ResolveDataPlane("auto", {"cuda", "cpu"}).value(), "gloo");
  EXPECT_EQ(ResolveDataPlane("auto", {"cpu", "cpu"}).value(), "gloo");
  EXPECT_EQ(ResolveDataPlane("nccl", {"cpu"}).value(), "none");  // one worker exchanges nothing
  EXPECT_EQ(ResolveDataPlane("gloo", {"cuda", "cuda"}).value(), "gloo");
  EXPECT_EQ(ResolveDataPlane("nccl", {"cuda", "cuda"}).value(), "nccl");
  EXPECT_EQ(ResolveDataPlane("auto", {}).value(), "auto");  // nothing to decide on yet
}

TEST(ResolveDataPlaneTest, NcclWithACpuWorkerAndUnknownNamesAreRefused) {
  const absl::StatusOr<std::string> mixed = ResolveDataPlane("nccl", {"cuda", "cpu"});
  EXPECT_EQ(mixed.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(mixed.status().message(), "worker 1")) << mixed.status();
  const absl::StatusOr<std::string> unknown = ResolveDataPlane("mpi", {"cuda"});
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(unknown.status().message(), "'mpi'")) << unknown.status();
}

TEST(ComputePlacementsTest, ContiguousShards) {
  std::vector<std::string> texts;
  PlacementSummary summary;
  ASSERT_TRUE(ComputePlacements(MoeConfig(8, 3), 2, 0, &texts, &summary).ok());
  EXPECT_EQ(texts.size(), 3u);
  EXPECT_EQ(summary.experts_per_rank, (std::vector<std::string>{"0,1,2,3", "4,5,6,7"}));
  EXPECT_EQ(summary.num_ranks, 2);
  EXPECT_EQ(texts[0], summary.encoded);
}

TEST(ComputePlacementsTest, RedundantSlotsHoldEveryExpertOnceMore) {
  std::vector<std::string> texts;
  PlacementSummary summary;
  ASSERT_TRUE(ComputePlacements(MoeConfig(8, 1), 2, 1, &texts, &summary).ok());
  ASSERT_EQ(summary.experts_per_rank.size(), 2u);
  for (const std::string& slots : summary.experts_per_rank) {
    EXPECT_EQ(std::count(slots.begin(), slots.end(), ',') + 1, 5) << slots;  // 4 + 1 redundant
  }
}

TEST(ComputePlacementsTest, DenseModelHasNoPlacement) {
  std::vector<std::string> texts;
  PlacementSummary summary;
  ASSERT_TRUE(ComputePlacements(MoeConfig(0, 2), 2, 0, &texts, &summary).ok());
  EXPECT_TRUE(texts.empty());
}

}  // namespace
}  // namespace switchyard
