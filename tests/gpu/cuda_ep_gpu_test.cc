// The worker's GPU paths beyond single ops: sampling on the device through Backend::SampleTokens
// against the host Sampler, and expert parallelism with CUDA backends (rows in bf16 device memory,
// exchanges staged through the host over a host communicator) against the single-process CUDA
// engine. Ranks are threads sharing the one GPU, each with its own backend and stream.
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/gpu/gpu_test_util.h"
#include "tests/unit/worker/comm/comm_test_util.h"
#include "tests/unit/worker/ep_engine_test_util.h"
#include "worker/backend/cuda_backend.h"
#include "worker/ep_moe_executor.h"
#include "worker/sampler.h"

namespace switchyard {
namespace {

TEST(CudaSampleTokensTest, PicksTheHostSamplersTokens) {
  SY_SKIP_WITHOUT_GPU();
  auto backend = MakeCudaBackend();
  ASSERT_TRUE(backend.ok()) << backend.status();
  const int64_t num_rows = 24, vocab = 1000;
  const std::vector<float> host_logits = testing::RandomNormal(num_rows * vocab, 5, 3.0f);
  absl::StatusOr<Tensor> logits = (*backend)->Empty(DType::kF32, {num_rows, vocab});
  ASSERT_TRUE(logits.ok()) << logits.status();
  ASSERT_TRUE((*backend)->CopyFromHost(host_logits, *logits).ok());
  // Every other row, with the filters in turn; the first rows greedy.
  std::vector<int64_t> rows;
  std::vector<DeviceSamplingRow> params;
  for (int64_t r = 1; r < num_rows; r += 2) {
    DeviceSamplingRow p;
    p.temperature = r < 5 ? 0.0f : 0.5f + 0.1f * static_cast<float>(r % 7);
    p.top_k = r % 3 == 0 ? 20 : 0;
    p.top_p = r % 4 == 1 ? 0.8f : 1.0f;
    p.min_p = r % 5 == 2 ? 0.05f : 0.0f;
    p.seed = 1000 + r;
    p.position = 17 + r;
    rows.push_back(r);
    params.push_back(p);
  }
  std::vector<int32_t> got(rows.size());
  ASSERT_TRUE((*backend)->SampleTokens(*logits, rows, params, got).ok());
  Sampler sampler(vocab);
  for (size_t i = 0; i < rows.size(); ++i) {
    std::vector<float> row(host_logits.begin() + rows[i] * vocab,
                           host_logits.begin() + (rows[i] + 1) * vocab);
    SamplingParams p;
    p.temperature = params[i].temperature;
    p.top_k = params[i].top_k;
    p.top_p = params[i].top_p;
    p.min_p = params[i].min_p;
    p.seed = params[i].seed;
    const int32_t want = sampler.Sample(row, p, TokenCounts(), params[i].position).token_id;
    EXPECT_EQ(got[i], want) << "row " << rows[i];
  }
  // All greedy takes the argmax kernel.
  for (DeviceSamplingRow& p : params) p.temperature = 0.0f;
  ASSERT_TRUE((*backend)->SampleTokens(*logits, rows, params, got).ok());
  for (size_t i = 0; i < rows.size(); ++i) {
    const float* row = host_logits.data() + rows[i] * vocab;
    EXPECT_EQ(got[i], std::max_element(row, row + vocab) - row) << "row " << rows[i];
  }
}

TEST(CudaApplyPenaltiesTest, EqualsTheCpuBackendBitForBit) {
  SY_SKIP_WITHOUT_GPU();
  auto gpu = MakeCudaBackend();
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  std::unique_ptr<Backend> cpu = MakeCpuBackend();
  const int64_t num_rows = 5, vocab = 700;
  const std::vector<float> host = testing::RandomNormal(num_rows * vocab, 9, 2.0f);
  std::vector<PenaltyRow> rows;
  std::vector<PenaltyToken> tokens;
  for (int64_t r : {0, 2, 3}) {  // rows 1 and 4 untouched
    PenaltyRow& row = rows.emplace_back();
    row.row = r;
    row.repetition = r == 3 ? 1.0f : 1.3f;
    row.frequency = 0.25f * static_cast<float>(r);
    row.presence = r == 2 ? -0.75f : 0.5f;
    row.first_token = static_cast<int32_t>(tokens.size());
    for (int32_t i = 0; i < 300; ++i) {  // distinct ids, some prompt-only, one out of range
      const int32_t id = i == 299 ? static_cast<int32_t>(vocab) + 1 : (i * 7 + 3 * r) % vocab;
      tokens.push_back(PenaltyToken{id, i % 3 == 0 ? 0 : i % 5 + 1});
    }
    row.num_tokens = static_cast<int32_t>(tokens.size()) - row.first_token;
  }
  std::vector<std::vector<float>> results;
  for (Backend* backend : {gpu->get(), cpu.get()}) {
    absl::StatusOr<Tensor> logits = backend->Empty(DType::kF32, {num_rows, vocab});
    ASSERT_TRUE(logits.ok()) << logits.status();
    ASSERT_TRUE(backend->CopyFromHost(host, *logits).ok());
    ASSERT_TRUE(backend->ApplyPenalties(*logits, rows, tokens).ok()) << backend->name();
    std::vector<float>& out = results.emplace_back(num_rows * vocab);
    ASSERT_TRUE(backend->CopyToHost(*logits, out).ok());
  }
  EXPECT_EQ(results[0], results[1]);
  EXPECT_NE(results[1], host);
}

TEST(CudaLogprobsTest, MatchesTheCpuBackend) {
  SY_SKIP_WITHOUT_GPU();
  auto gpu = MakeCudaBackend();
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  std::unique_ptr<Backend> cpu = MakeCpuBackend();
  const int64_t num_rows = 6, vocab = 5000;
  std::vector<float> host = testing::RandomNormal(num_rows * vocab, 13, 3.0f);
  for (int64_t v = 0; v < 40; ++v) host[2 * vocab + v] = 4.25f;  // ties: lower ids first
  host[4 * vocab + 17] = -INFINITY;                              // masked tokens are fine
  const std::vector<int64_t> rows = {2, 0, 4, 5};
  const std::vector<int32_t> chosen = {39, 4999, 0, 1234};
  const int32_t num_top = 20;
  std::vector<float> lp[2], top_lp[2];
  std::vector<int32_t> top_ids[2];
  int which = 0;
  for (Backend* backend : {gpu->get(), cpu.get()}) {
    absl::StatusOr<Tensor> logits = backend->Empty(DType::kF32, {num_rows, vocab});
    ASSERT_TRUE(logits.ok()) << logits.status();
    ASSERT_TRUE(backend->CopyFromHost(host, *logits).ok());
    lp[which].resize(rows.size());
    top_ids[which].resize(rows.size() * num_top);
    top_lp[which].resize(rows.size() * num_top);
    ASSERT_TRUE(backend->Logprobs(*logits, rows, chosen, num_top, lp[which], top_ids[which],
                                  top_lp[which])
                    .ok())
        << backend->name();
    ++which;
  }
  EXPECT_EQ(top_ids[0], top_ids[1]);  // the same tokens in the same order, ties included
  for (size_t i = 0; i < lp[0].size(); ++i) EXPECT_NEAR(lp[0][i], lp[1][i], 1e-5) << i;
  for (size_t i = 0; i < top_lp[0].size(); ++i) {
    EXPECT_NEAR(top_lp[0][i], top_lp[1][i], 1e-5) << i;
  }
}

class CudaExpertParallelTest
    : public ::testing::TestWithParam<std::tuple<std::string, int>> {};

// bf16 on both sides; the expert GEMMs run on other row counts (and cuBLAS may pick other
// algorithms), so logits agree to bf16 rounding carried through the layers, not bit for bit.
TEST_P(CudaExpertParallelTest, StagedRanksMatchTheSingleProcessCudaEngine) {
  SY_SKIP_WITHOUT_GPU();
  const auto& [family, world_size] = GetParam();
  const std::filesystem::path dir = testing::MakeEpTestModel(family);
  auto cuda = MakeCudaBackend();
  ASSERT_TRUE(cuda.ok()) << cuda.status();
  auto reference = testing::LoadEpTestEngine(dir, {}, std::move(cuda).value());
  ASSERT_TRUE(reference.ok()) << reference.status();
  const ModelConfig config = (*reference)->config();
  const std::vector<testing::SeqPlan> plan = testing::MakePlan(world_size, config.vocab_size);
  auto expected = testing::RunPlanSingleProcess(**reference, plan);
  ASSERT_TRUE(expected.ok()) << expected.status();
  auto placements = ContiguousPlacements(config, world_size);
  ASSERT_TRUE(placements.ok()) << placements.status();
  CommunicatorOptions options;
  options.timeout = absl::Seconds(60);
  std::vector<testing::SeqLogits> logits(world_size, testing::SeqLogits(plan.size()));
  const auto statuses = testing::RunLoopbackRanks(
      world_size, options, [&](Communicator& comm) -> absl::Status {
        const int rank = comm.rank();
        auto backend = MakeCudaBackend();
        if (!backend.ok()) return backend.status();
        auto engine = testing::LoadEpTestEngine(
            dir, ShardLoadPredicate(config, *placements, rank), std::move(backend).value());
        if (!engine.ok()) return engine.status();
        auto executor = InstallExpertParallel(**engine, comm, *placements);
        if (!executor.ok()) return executor.status();
        return testing::RunPlanOnRank(**engine, plan, rank, &logits[rank]);
      });
  for (int rank = 0; rank < world_size; ++rank) {
    ASSERT_TRUE(statuses[rank].ok()) << "rank " << rank << ": " << statuses[rank];
  }
  for (size_t s = 0; s < plan.size(); ++s) {
    const std::vector<float>& got = logits[plan[s].rank][s];
    ASSERT_EQ(got.size(), (*expected)[s].size()) << "sequence " << s;
    EXPECT_TRUE(testing::AllFinite(got)) << "sequence " << s;
    EXPECT_LT(testing::RelError(got, (*expected)[s]), 3e-2) << "sequence " << s;
  }
}

INSTANTIATE_TEST_SUITE_P(FamiliesAndRanks, CudaExpertParallelTest,
                         ::testing::Combine(::testing::Values("qwen3_moe", "llama4", "mixtral"),
                                            ::testing::Values(2, 3)),
                         [](const auto& info) {
                           return std::get<0>(info.param) + "_" +
                                  std::to_string(std::get<1>(info.param)) + "ranks";
                         });

}  // namespace
}  // namespace switchyard
