// CUDA MoE ops against their CPU references: the router (kernels/cpu/router.h; ids must match
// exactly, weights within 1e-6), the expert row map (the stable counting sort of
// worker/moe_block.cc, written out here independently), gather and the fixed-order combine, with
// uneven and empty experts.
#include <algorithm>
#include <numeric>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/router.h"
#include "kernels/cuda/permute.h"
#include "kernels/cuda/router.h"
#include "tests/gpu/gpu_test_util.h"

namespace switchyard::kernels {
namespace {

using ::switchyard::testing::DeviceArray;
using ::switchyard::testing::RandomNormal;
using ::switchyard::testing::RelError;
using ::switchyard::testing::RoundBf16;
using ::switchyard::testing::ToBf16;
using ::switchyard::testing::ToFloat;
using bf16 = __nv_bfloat16;

struct RouterCase {
  int64_t num_tokens, num_experts, k;
  cpu::RouterKind kind;
  bool renormalize;
};

class RouterGpuTest : public ::testing::TestWithParam<RouterCase> {};

TEST_P(RouterGpuTest, MatchesCpuIdsExactlyAndCountsPairs) {
  SY_SKIP_WITHOUT_GPU();
  const RouterCase c = GetParam();
  std::vector<float> logits = RandomNormal(c.num_tokens * c.num_experts, 21, 2.0f);
  // A token whose logits tie everywhere: ties must go to the lower expert id on both sides.
  std::fill_n(logits.begin(), c.num_experts, 0.25f);
  std::vector<int32_t> ref_ids(c.num_tokens * c.k);
  std::vector<float> ref_w(c.num_tokens * c.k);
  cpu::RouterTopK(logits.data(), c.num_tokens, c.num_experts, c.k, c.kind, c.renormalize, ref_ids.data(),
                  ref_w.data());
  DeviceArray<float> dlogits(logits), dw(ref_w.size());
  DeviceArray<int32_t> dids(ref_ids.size()), dcounts(std::vector<int32_t>(c.num_experts, 0));
  dids.Poison();
  dw.Poison();
  ASSERT_EQ(cuda::LaunchRouterTopK(dlogits.get(), c.num_tokens, c.num_experts, c.k, c.kind, c.renormalize,
                                   dids.get(), dw.get(), dcounts.get(), nullptr),
            cudaSuccess);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_EQ(dids.ToHost(), ref_ids);
  const std::vector<float> w = dw.ToHost();
  for (size_t i = 0; i < w.size(); ++i) ASSERT_NEAR(w[i], ref_w[i], 1e-6) << i;
  std::vector<int32_t> ref_counts(c.num_experts, 0);
  for (int32_t e : ref_ids) ++ref_counts[e];
  EXPECT_EQ(dcounts.ToHost(), ref_counts);
}

INSTANTIATE_TEST_SUITE_P(
    Families, RouterGpuTest,
    ::testing::Values(RouterCase{67, 8, 2, cpu::RouterKind::kSoftmaxTopK, false},    // Mixtral-like
                      RouterCase{67, 8, 2, cpu::RouterKind::kSoftmaxTopK, true},
                      RouterCase{33, 128, 8, cpu::RouterKind::kSoftmaxTopK, true},   // Qwen3-MoE
                      RouterCase{33, 256, 8, cpu::RouterKind::kSoftmaxTopK, true},   // DeepSeek size
                      RouterCase{40, 16, 1, cpu::RouterKind::kTopKSigmoid, false},   // Llama 4
                      RouterCase{5, 60, 4, cpu::RouterKind::kSoftmaxTopK, false}));  // Qwen2-MoE

TEST(RouterGpuTest, Bf16LogitsPickTheSameExpertsAsTheirFp32Values) {
  SY_SKIP_WITHOUT_GPU();
  const int64_t tokens = 50, experts = 64, k = 6;
  std::vector<float> logits = RoundBf16(RandomNormal(tokens * experts, 22, 3.0f));
  std::vector<int32_t> ref_ids(tokens * k);
  std::vector<float> ref_w(tokens * k);
  cpu::RouterTopK(logits.data(), tokens, experts, k, cpu::RouterKind::kSoftmaxTopK, true, ref_ids.data(),
                  ref_w.data());
  DeviceArray<bf16> dlogits(ToBf16(logits));
  DeviceArray<int32_t> dids(ref_ids.size());
  DeviceArray<float> dw(ref_w.size());
  ASSERT_EQ(cuda::LaunchRouterTopK(dlogits.get(), tokens, experts, k, cpu::RouterKind::kSoftmaxTopK, true,
                                   dids.get(), dw.get(), nullptr, nullptr),
            cudaSuccess);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_EQ(dids.ToHost(), ref_ids);
  EXPECT_LT(RelError(dw.ToHost(), ref_w), 1e-6);
}

// Ids that leave some experts empty and load others unevenly (and one invalid id).
std::vector<int32_t> SkewedIds(int64_t tokens, int64_t k, int64_t experts, uint32_t seed) {
  std::mt19937 rng(seed);
  std::discrete_distribution<int32_t> pick({50, 0, 3, 0, 0, 20, 1, 0, 9, 0, 0, 0, 0, 0, 0, 5});
  std::vector<int32_t> ids(tokens * k);
  for (int32_t& id : ids) id = std::min<int32_t>(pick(rng), experts - 1);
  return ids;
}

TEST(PermuteGpuTest, RowMapIsTheStableGroupingByExpert) {
  SY_SKIP_WITHOUT_GPU();
  const int64_t tokens = 700, k = 3, experts = 16, pairs = tokens * k;
  std::vector<int32_t> ids = SkewedIds(tokens, k, experts, 23);
  ids[5] = -3;  // invalid: no row, row_of -1
  std::vector<float> weights = RandomNormal(pairs, 24);
  // Reference: counting sort, stable in pair order.
  std::vector<int64_t> offsets(experts + 1, 0);
  for (int32_t e : ids) {
    if (e >= 0) ++offsets[e + 1];
  }
  std::partial_sum(offsets.begin(), offsets.end(), offsets.begin());
  std::vector<int64_t> cursor(offsets.begin(), offsets.end() - 1);
  std::vector<int32_t> src(offsets[experts]), row_of(pairs, -1);
  std::vector<float> row_w(offsets[experts]);
  for (int64_t i = 0; i < pairs; ++i) {
    if (ids[i] < 0) continue;
    const int64_t row = cursor[ids[i]]++;
    src[row] = static_cast<int32_t>(i / k);
    row_w[row] = weights[i];
    row_of[i] = static_cast<int32_t>(row);
  }
  DeviceArray<int32_t> dids(ids), dcounts(experts), dsrc(src.size()), drow_of(pairs);
  DeviceArray<float> dweights(weights), drow_w(row_w.size());
  DeviceArray<int64_t> doffsets(experts + 1);
  dsrc.Poison();
  ASSERT_EQ(cuda::LaunchCountExperts(dids.get(), pairs, experts, dcounts.get(), nullptr), cudaSuccess);
  ASSERT_EQ(cuda::LaunchExpertOffsets(dcounts.get(), experts, doffsets.get(), nullptr), cudaSuccess);
  ASSERT_EQ(cuda::LaunchBuildRowMap(dids.get(), dweights.get(), tokens, k, experts, doffsets.get(), dsrc.get(),
                                    drow_w.get(), drow_of.get(), nullptr),
            cudaSuccess);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_EQ(doffsets.ToHost(), offsets);
  EXPECT_EQ(dsrc.ToHost(), src);
  EXPECT_EQ(drow_of.ToHost(), row_of);
  EXPECT_EQ(drow_w.ToHost(), row_w);
}

template <typename T>
void GatherCombineRoundTrip(int64_t cols) {
  const int64_t tokens = 123, k = 4, pairs = tokens * k;
  std::vector<float> x = RoundBf16(RandomNormal(tokens * cols, 26));
  std::vector<float> weights = RandomNormal(pairs, 27);
  // Rows in a shuffled order, the way the expert grouping permutes them.
  std::vector<int32_t> row_of(pairs);
  std::iota(row_of.begin(), row_of.end(), 0);
  std::shuffle(row_of.begin(), row_of.end(), std::mt19937(28));
  row_of[7] = -1;  // a dropped pair contributes nothing
  std::vector<int32_t> src(pairs, 0);
  std::vector<float> scale(pairs, 0.0f);
  for (int64_t i = 0; i < pairs; ++i) {
    if (row_of[i] < 0) continue;
    src[row_of[i]] = static_cast<int32_t>(i / k);
    scale[row_of[i]] = 0.5f + 0.01f * (i % 7);
  }
  std::vector<float> gathered_ref(pairs * cols), combined_ref(tokens * cols, 0.0f);
  for (int64_t r = 0; r < pairs; ++r) {
    for (int64_t c = 0; c < cols; ++c) gathered_ref[r * cols + c] = x[src[r] * cols + c] * scale[r];
  }
  std::vector<float> gathered_rounded = gathered_ref;
  if constexpr (!std::is_same_v<T, float>) gathered_rounded = RoundBf16(gathered_ref);
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t j = 0; j < k; ++j) {
      const int32_t r = row_of[t * k + j];
      if (r < 0) continue;
      for (int64_t c = 0; c < cols; ++c) {
        combined_ref[t * cols + c] += weights[t * k + j] * gathered_rounded[r * cols + c];
      }
    }
  }
  auto up = [](const std::vector<float>& v) {
    if constexpr (std::is_same_v<T, float>) return v; else return ToBf16(v);
  };
  auto down = [](const std::vector<T>& v) {
    if constexpr (std::is_same_v<T, float>) return v; else return ToFloat(v);
  };
  DeviceArray<T> dx(up(x)), dgathered(pairs * cols), dcombined(tokens * cols);
  DeviceArray<int32_t> dsrc(src), drow_of(row_of);
  DeviceArray<float> dscale(scale), dweights(weights);
  dgathered.Poison();
  dcombined.Poison();
  ASSERT_EQ(cuda::LaunchGatherRows(dx.get(), dsrc.get(), dscale.get(), pairs, cols, dgathered.get(), nullptr),
            cudaSuccess);
  ASSERT_EQ(cuda::LaunchCombineRows(dgathered.get(), drow_of.get(), dweights.get(), tokens, k, cols,
                                    dcombined.get(), nullptr),
            cudaSuccess);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const double tol = std::is_same_v<T, float> ? 1e-6 : 1e-2;
  EXPECT_LT(RelError(down(dgathered.ToHost()), gathered_ref), tol) << "cols " << cols;
  EXPECT_LT(RelError(down(dcombined.ToHost()), combined_ref), tol) << "cols " << cols;
  EXPECT_TRUE(::switchyard::testing::AllFinite(down(dcombined.ToHost())));
}

TEST(PermuteGpuTest, GatherAndCombineMatchCpuFp32) {
  SY_SKIP_WITHOUT_GPU();
  GatherCombineRoundTrip<float>(96);
}

TEST(PermuteGpuTest, GatherAndCombineMatchCpuBf16VectorAndScalarPaths) {
  SY_SKIP_WITHOUT_GPU();
  GatherCombineRoundTrip<bf16>(256);  // 16-byte vectors
  GatherCombineRoundTrip<bf16>(100);  // cols % 8 != 0: scalar path
}

TEST(PermuteGpuTest, EmptyBatchIsANoOp) {
  SY_SKIP_WITHOUT_GPU();
  DeviceArray<int32_t> counts(8);
  EXPECT_EQ(cuda::LaunchCountExperts(nullptr, 0, 8, counts.get(), nullptr), cudaSuccess);
  EXPECT_EQ(counts.ToHost(), std::vector<int32_t>(8, 0));
  EXPECT_EQ(cuda::LaunchBuildRowMap(nullptr, nullptr, 0, 2, 8, nullptr, nullptr, nullptr, nullptr, nullptr),
            cudaSuccess);
  EXPECT_EQ(cuda::LaunchCombineRows(static_cast<const bf16*>(nullptr), nullptr, nullptr, 0, 2, 64, nullptr,
                                    nullptr),
            cudaSuccess);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
}

}  // namespace
}  // namespace switchyard::kernels
