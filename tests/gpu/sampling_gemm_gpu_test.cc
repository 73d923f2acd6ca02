// CUDA sampling against the CPU Sampler (worker/sampler.h): the same Philox uniform bit for bit,
// and the same token for the same logits and parameters. cuBLAS GEMMs (dense and grouped by
// expert, both grouped methods, uneven and empty groups) against kernels/cpu/gemm.h on bf16-rounded
// inputs: fp32 outputs within 1e-4 relative, bf16 outputs within 1e-2.
#include <cublas_v2.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/sampling.h"
#include "tests/gpu/gpu_test_util.h"
#include "worker/sampler.h"

namespace switchyard::kernels {
namespace {

using ::switchyard::testing::DeviceArray;
using ::switchyard::testing::RandomNormal;
using ::switchyard::testing::RelError;
using ::switchyard::testing::RoundBf16;
using ::switchyard::testing::ToBf16;
using ::switchyard::testing::ToFloat;
using bf16 = __nv_bfloat16;

TEST(SamplingGpuTest, UniformMatchesCpuBitForBit) {
  SY_SKIP_WITHOUT_GPU();
  std::vector<uint64_t> seeds, positions;
  std::mt19937_64 rng(31);
  for (int i = 0; i < 1000; ++i) {
    seeds.push_back(i < 3 ? i : rng());
    positions.push_back(i < 500 ? i : rng());
  }
  DeviceArray<uint64_t> dseeds(seeds), dpos(positions);
  DeviceArray<double> dout(seeds.size());
  ASSERT_EQ(cuda::LaunchSamplingUniform(dseeds.get(), dpos.get(), seeds.size(), dout.get(), nullptr), cudaSuccess);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const std::vector<double> got = dout.ToHost();
  for (size_t i = 0; i < seeds.size(); ++i) ASSERT_EQ(got[i], SamplingUniform(seeds[i], positions[i])) << i;
}

TEST(SamplingGpuTest, SampledTokensMatchCpuSampler) {
  SY_SKIP_WITHOUT_GPU();
  const int64_t vocab = 3000;
  std::vector<SamplingParams> variants(8);
  variants[0].temperature = 0.0f;                                  // greedy
  variants[1].temperature = 1.0f;                                  // plain
  variants[2].temperature = 0.7f, variants[2].top_k = 50;
  variants[3].temperature = 1.3f, variants[3].top_p = 0.9f;
  variants[4].temperature = 0.8f, variants[4].min_p = 0.05f;
  variants[5].temperature = 0.9f, variants[5].top_k = 200, variants[5].top_p = 0.5f, variants[5].min_p = 0.01f;
  variants[6].temperature = 1.0f, variants[6].top_k = 1;
  variants[7].temperature = 2.0f, variants[7].top_p = 0.999f;
  const int64_t rows = 96;
  std::vector<float> logits = RandomNormal(rows * vocab, 32, 3.0f);
  for (int64_t r = 48; r < 72; ++r) {  // tie-heavy rows: logits on a coarse grid
    for (int64_t i = 0; i < vocab; ++i) logits[r * vocab + i] = std::round(logits[r * vocab + i] * 2) / 2;
  }
  for (int64_t i = 0; i < vocab; i += 3) logits[90 * vocab + i] = -std::numeric_limits<float>::infinity();
  std::vector<cuda::SamplingRowParams> gpu_params(rows);
  std::vector<int32_t> expected(rows);
  Sampler sampler(vocab);
  TokenCounts counts;
  for (int64_t r = 0; r < rows; ++r) {
    SamplingParams p = variants[r % variants.size()];
    p.seed = 1000 + r * 7919;
    const uint64_t position = 17 + r;
    std::vector<float> row(logits.begin() + r * vocab, logits.begin() + (r + 1) * vocab);
    expected[r] = sampler.Sample(row, p, counts, position).token_id;
    gpu_params[r] = {p.temperature, p.top_k, p.top_p, p.min_p, p.seed, position};
  }
  size_t ws_bytes = 0;
  ASSERT_EQ(cuda::SamplingWorkspaceBytes(rows, vocab, &ws_bytes), cudaSuccess);
  DeviceArray<uint8_t> ws(ws_bytes);
  DeviceArray<float> dlogits(logits);
  DeviceArray<cuda::SamplingRowParams> dparams(gpu_params);
  DeviceArray<int32_t> dtokens(rows);
  dtokens.Poison();
  ASSERT_EQ(cuda::LaunchSampleTokens(dlogits.get(), rows, vocab, dparams.get(), ws.get(), ws_bytes,
                                     dtokens.get(), nullptr),
            cudaSuccess);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const std::vector<int32_t> got = dtokens.ToHost();
  for (int64_t r = 0; r < rows; ++r) EXPECT_EQ(got[r], expected[r]) << "row " << r << " variant " << r % 8;
}

TEST(SamplingGpuTest, ArgmaxTakesTheLowestIdAmongTies) {
  SY_SKIP_WITHOUT_GPU();
  const int64_t rows = 3, vocab = 5000;
  std::vector<float> logits = RandomNormal(rows * vocab, 33);
  logits[0 * vocab + 4000] = 50.0f;
  logits[1 * vocab + 17] = 50.0f, logits[1 * vocab + 4999] = 50.0f, logits[1 * vocab + 300] = 50.0f;
  logits[2 * vocab + 0] = 50.0f;
  DeviceArray<float> dlogits(logits);
  DeviceArray<int32_t> dtokens(rows);
  ASSERT_EQ(cuda::LaunchArgmax(dlogits.get(), rows, vocab, dtokens.get(), nullptr), cudaSuccess);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_EQ(dtokens.ToHost(), (std::vector<int32_t>{4000, 17, 0}));
}

class GemmGpuTest : public ::testing::Test {
 protected:
  void SetUp() override {
    SY_SKIP_WITHOUT_GPU();
    ASSERT_EQ(cublasCreate(&handle_), CUBLAS_STATUS_SUCCESS);
  }
  void TearDown() override {
    if (handle_ != nullptr) cublasDestroy(handle_);
  }
  cublasHandle_t handle_ = nullptr;
};

TEST_F(GemmGpuTest, LinearAndMatMulMatchCpu) {
  for (auto [m, n, k] : {std::tuple<int64_t, int64_t, int64_t>{37, 96, 64}, {1, 4096, 512}, {300, 260, 136}}) {
    std::vector<float> x = RoundBf16(RandomNormal(m * k, 41)), w = RoundBf16(RandomNormal(n * k, 42));
    std::vector<float> c0 = RoundBf16(RandomNormal(m * n, 43));
    std::vector<float> ref_nt = c0, ref_nn(m * n);
    cpu::GemmNT(x.data(), w.data(), ref_nt.data(), m, n, k, 1.0f, 1.0f);  // accumulate
    cpu::GemmNN(x.data(), w.data(), ref_nn.data(), m, n, k);              // w read as [k, n]
    DeviceArray<bf16> dx(ToBf16(x)), dw(ToBf16(w)), dout_bf16(ToBf16(c0));
    DeviceArray<float> dout_f32(m * n);
    dout_f32.Poison();
    cuda::GemmStatus s = cuda::Gemm(handle_, dx.get(), dw.get(), cuda::GemmType::kBF16, dout_bf16.get(),
                                    cuda::GemmType::kBF16, m, n, k, true, 1.0f);
    ASSERT_TRUE(s.ok()) << s.call;
    s = cuda::Gemm(handle_, dx.get(), dw.get(), cuda::GemmType::kBF16, dout_f32.get(), cuda::GemmType::kF32,
                   m, n, k, false, 0.0f);
    ASSERT_TRUE(s.ok()) << s.call;
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    EXPECT_LT(RelError(ToFloat(dout_bf16.ToHost()), ref_nt), 1e-2) << m << "x" << n << "x" << k;
    EXPECT_LT(RelError(dout_f32.ToHost(), ref_nn), 1e-4) << m << "x" << n << "x" << k;
  }
}

TEST_F(GemmGpuTest, GroupedByExpertMatchesCpuWithUnevenAndEmptyGroups) {
  const int64_t n = 192, k = 128;
  const std::vector<int64_t> rows_per_expert = {5, 0, 1, 37, 0, 0, 64, 2};
  std::vector<int64_t> offsets = {0};
  for (int64_t r : rows_per_expert) offsets.push_back(offsets.back() + r);
  const int64_t total_rows = offsets.back();
  std::vector<float> x = RoundBf16(RandomNormal(total_rows * k, 44));
  std::vector<std::vector<float>> w;
  std::vector<std::unique_ptr<DeviceArray<bf16>>> dw;
  std::vector<float> ref(total_rows * n, 0.0f);
  for (size_t e = 0; e < rows_per_expert.size(); ++e) {
    w.push_back(RoundBf16(RandomNormal(n * k, 50 + e)));
    dw.push_back(std::make_unique<DeviceArray<bf16>>(ToBf16(w.back())));
    if (rows_per_expert[e] > 0) {
      cpu::GemmNT(x.data() + offsets[e] * k, w.back().data(), ref.data() + offsets[e] * n, rows_per_expert[e],
                  n, k);
    }
  }
  for (auto method : {cuda::GroupedGemmMethod::kLoop, cuda::GroupedGemmMethod::kCublasGrouped}) {
    std::vector<cuda::GemmGroup> groups;
    for (size_t e = 0; e < rows_per_expert.size(); ++e) {
      groups.push_back({dw[e]->get(), offsets[e], rows_per_expert[e]});
    }
    DeviceArray<bf16> dx(ToBf16(x)), dout(total_rows * n);
    dout.Poison();
    cuda::GroupedGemm grouped;
    const cuda::GemmStatus s = grouped.Run(handle_, method, groups, dx.get(), dout.get(), n, k, true);
    ASSERT_TRUE(s.ok()) << s.call << " cuda " << s.cuda << " cublas " << s.cublas;
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    EXPECT_LT(RelError(ToFloat(dout.ToHost()), ref), 1e-2) << "method " << static_cast<int>(method);
    // Nothing routed at all: a no-op that leaves the output as it was.
    const std::vector<bf16> before = dout.ToHost();
    for (cuda::GemmGroup& g : groups) g.num_rows = 0;
    EXPECT_TRUE(grouped.Run(handle_, method, groups, dx.get(), dout.get(), n, k, true).ok());
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    const std::vector<bf16> after = dout.ToHost();
    EXPECT_EQ(std::memcmp(before.data(), after.data(), before.size() * sizeof(bf16)), 0);
  }
}

}  // namespace
}  // namespace switchyard::kernels
