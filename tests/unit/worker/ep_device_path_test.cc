// The device paths of expert parallelism, run without a GPU: a backend whose memory the data plane
// must treat as device memory (DeviceLikeBackend) over
//  - a host communicator: every exchange must be staged through host buffers (CUDA over Gloo);
//  - a device communicator: the row exchanges must get backend memory directly, the counts host
//    memory (CUDA over NCCL).
// MemoryCheckingCommunicator fails any exchange handed memory of the wrong side, so a pass proves
// the path; the results must equal the host path's (the dispatcher alone, with the toy experts and
// every option) and the single-process engine's (every rank running the model).
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/match.h"
#include "gtest/gtest.h"
#include "tests/unit/worker/comm/comm_test_util.h"
#include "tests/unit/worker/device_like_backend.h"
#include "tests/unit/worker/ep_engine_test_util.h"
#include "tests/unit/worker/moe/moe_test_util.h"
#include "worker/ep_moe_executor.h"

namespace switchyard {
namespace {

using testing::DeviceLikeBackend;
using testing::MemoryCheckingCommunicator;

CommunicatorOptions FastOptions() { return testing::TimeoutOptions(absl::Seconds(5)); }

std::string SpaceName(MemorySpace space) {
  return space == MemorySpace::kDevice ? "device_comm" : "host_comm";
}

// One dispatch/combine of `moe_case` with the rows in a DeviceLikeBackend: x copied in, out copied
// back, compared with the direct reference.
absl::Status RunDeviceLikeDispatch(Communicator& loopback, const LayerPlacement& placement,
                                   const testing::MoeCase& moe_case, MemorySpace space) {
  DeviceLikeBackend backend;
  MemoryCheckingCommunicator comm(&loopback, &backend, space);
  const int rank = comm.rank();
  const testing::RankInputs in = testing::MakeInputs(moe_case, rank);
  absl::StatusOr<Tensor> x = backend.Empty(DType::kF32, {in.num_tokens, moe_case.hidden});
  absl::StatusOr<Tensor> out = backend.Empty(DType::kF32, {in.num_tokens, moe_case.hidden});
  if (!x.ok()) return x.status();
  if (!out.ok()) return out.status();
  if (absl::Status s = backend.CopyFromHost(in.x, *x); !s.ok()) return s;
  DispatchOptions options;
  options.scale_input_by_weight = moe_case.scale_input_by_weight;
  options.sum_per_rank = moe_case.sum_per_rank;
  MoeDispatcher dispatcher(&comm, &backend, options);
  int num_calls = 0;
  absl::Status status =
      dispatcher.Run(placement, *x, in.ids, in.weights, moe_case.k,
                     testing::ToyExperts(placement, rank, &num_calls), *out, nullptr);
  if (!status.ok()) return status;
  if (num_calls != 1) return absl::InternalError("expert fn not called exactly once");
  // Staged: the rows crossed to the host; direct on a device communicator: the backend was
  // synchronized before each row exchange.
  if (comm.world_size() > 1 && space == MemorySpace::kHost && backend.num_bytes_to_host() == 0) {
    return absl::InternalError("host communicator, but nothing was staged through the host");
  }
  if (space == MemorySpace::kDevice && backend.num_synchronizes() < 2) {
    return absl::InternalError("device communicator, but the backend was not synchronized");
  }
  std::vector<float> host_out(in.num_tokens * moe_case.hidden);
  if (absl::Status s = backend.CopyToHost(*out, host_out); !s.ok()) return s;
  return testing::CompareOutputs(testing::ReferenceOutput(moe_case, in), host_out, rank);
}

class DeviceDispatchTest
    : public ::testing::TestWithParam<std::tuple<MemorySpace, int, bool, bool>> {};

TEST_P(DeviceDispatchTest, EqualsTheReferenceWithRowsInBackendMemory) {
  const auto& [space, world_size, scale_input, sum_per_rank] = GetParam();
  testing::MoeCase moe_case;
  moe_case.world_size = world_size;
  moe_case.num_experts = 8;
  moe_case.hidden = 5;  // 20-byte rows: the 12-byte entries need padding to whole rows
  moe_case.k = 3;
  moe_case.tokens_per_rank = {11, 0, 7, 4};
  moe_case.tokens_per_rank.resize(world_size);
  moe_case.scale_input_by_weight = scale_input;
  moe_case.sum_per_rank = sum_per_rank;
  const LayerPlacement placement =
      LayerPlacement::Balanced(8, world_size, 1, {9, 1, 1, 5, 1, 1, 1, 3}).value();
  const auto statuses =
      testing::RunLoopbackRanks(world_size, FastOptions(), [&](Communicator& comm) {
        return RunDeviceLikeDispatch(comm, placement, moe_case, space);
      });
  for (const auto& status : statuses) EXPECT_TRUE(status.ok()) << status;
}

INSTANTIATE_TEST_SUITE_P(
    Paths, DeviceDispatchTest,
    ::testing::Combine(::testing::Values(MemorySpace::kHost, MemorySpace::kDevice),
                       ::testing::Values(2, 3), ::testing::Bool(), ::testing::Bool()),
    [](const auto& info) {
      return SpaceName(std::get<0>(info.param)) + "_" + std::to_string(std::get<1>(info.param)) +
             "ranks" + (std::get<2>(info.param) ? "_scaled" : "") +
             (std::get<3>(info.param) ? "_sum_per_rank" : "");
    });

class DeviceEngineTest
    : public ::testing::TestWithParam<std::tuple<std::string, int, MemorySpace>> {};

// Every rank runs the whole engine on a DeviceLikeBackend with its expert shard.
TEST_P(DeviceEngineTest, MatchesTheSingleProcessEngine) {
  const auto& [family, world_size, space] = GetParam();
  const std::filesystem::path dir = testing::MakeEpTestModel(family);
  auto reference = testing::LoadEpTestEngine(dir);
  ASSERT_TRUE(reference.ok()) << reference.status();
  const ModelConfig config = (*reference)->config();
  const std::vector<testing::SeqPlan> plan = testing::MakePlan(world_size, config.vocab_size);
  auto expected = testing::RunPlanSingleProcess(**reference, plan);
  ASSERT_TRUE(expected.ok()) << expected.status();
  auto placements = ContiguousPlacements(config, world_size);
  ASSERT_TRUE(placements.ok()) << placements.status();

  const auto statuses = testing::RunLoopbackRanks(
      world_size, FastOptions(), [&](Communicator& loopback) -> absl::Status {
        const int rank = loopback.rank();
        auto owned = std::make_unique<DeviceLikeBackend>();
        DeviceLikeBackend* backend = owned.get();
        auto engine = testing::LoadEpTestEngine(
            dir, ShardLoadPredicate(config, *placements, rank), std::move(owned));
        if (!engine.ok()) return engine.status();
        MemoryCheckingCommunicator comm(&loopback, backend, space);
        auto executor = InstallExpertParallel(**engine, comm, *placements);
        if (!executor.ok()) return executor.status();
        testing::SeqLogits logits(plan.size());
        absl::Status status = testing::RunPlanOnRank(**engine, plan, rank, &logits);
        // The executor refers to comm: drop it before comm goes out of scope.
        (*engine)->SetMoeExecutor(nullptr);
        if (!status.ok()) return status;
        if (comm.num_all_to_all() == 0) return absl::InternalError("no exchange ran");
        return testing::CompareRankLogits(plan, rank, *expected, logits);
      });
  for (int rank = 0; rank < world_size; ++rank) {
    EXPECT_TRUE(statuses[rank].ok()) << "rank " << rank << ": " << statuses[rank];
  }
}

INSTANTIATE_TEST_SUITE_P(
    FamiliesAndPaths, DeviceEngineTest,
    ::testing::Combine(::testing::Values("qwen3_moe", "llama4", "mixtral"), ::testing::Values(2, 3),
                       ::testing::Values(MemorySpace::kHost, MemorySpace::kDevice)),
    [](const auto& info) {
      return std::get<0>(info.param) + "_" + std::to_string(std::get<1>(info.param)) + "ranks_" +
             SpaceName(std::get<2>(info.param));
    });

// A host backend cannot feed a device communicator: refused when the executor is built.
TEST(DevicePathSetupTest, HostBackendWithDeviceCommunicatorIsRefused) {
  const std::filesystem::path dir = testing::MakeEpTestModel("qwen3_moe");
  const auto statuses = testing::RunLoopbackRanks(1, FastOptions(), [&](Communicator& loopback) {
    auto engine = testing::LoadEpTestEngine(dir);
    if (!engine.ok()) return engine.status();
    DeviceLikeBackend unrelated;
    MemoryCheckingCommunicator comm(&loopback, &unrelated, MemorySpace::kDevice);
    auto placements = ContiguousPlacements((*engine)->config(), 1);
    if (!placements.ok()) return placements.status();
    return InstallExpertParallel(**engine, comm, *placements).status();
  });
  EXPECT_EQ(statuses[0].code(), absl::StatusCode::kFailedPrecondition) << statuses[0];
  EXPECT_TRUE(absl::StrContains(statuses[0].message(), "host memory")) << statuses[0];
}

}  // namespace
}  // namespace switchyard
