// The CUDA backend's GroupedLinear / GroupedMatMul (bf16, both GroupedGemm methods) against the CPU
// backend's fp32 ones on the same bf16-rounded inputs, with uneven and empty groups. Skips without
// a usable device.
#include <cuda_bf16.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <memory>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "tests/gpu/gpu_test_util.h"
#include "worker/backend/backend.h"
#include "worker/backend/cuda_backend.h"

namespace switchyard {
namespace {

constexpr int64_t kK = 96, kN = 80;
// Empty groups first, in the middle (one with a null weight) and last; one group of a single row.
constexpr std::array<int64_t, 8> kOffsets = {0, 0, 37, 38, 38, 101, 130, 130};
constexpr size_t kNumGroups = kOffsets.size() - 1;

std::vector<float> RandomBf16Values(int64_t n, std::mt19937& rng) {
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = __bfloat162float(__float2bfloat16(dist(rng)));
  return v;
}

struct Operands {
  std::vector<Tensor> weights;
  std::vector<const Tensor*> ptrs;
  Tensor x, out;
};

Operands Upload(Backend& backend, DType dtype, const std::vector<float>& x,
                const std::vector<std::vector<float>>& weights, bool w_layout_nk) {
  Operands ops;
  const int64_t num_rows = kOffsets.back();
  ops.x = *backend.Empty(dtype, {num_rows, kK});
  EXPECT_TRUE(backend.CopyFromHost(x, ops.x).ok());
  ops.out = *backend.Empty(dtype, {num_rows, kN});
  for (const std::vector<float>& w : weights) {
    ops.weights.push_back(*backend.Empty(dtype, w_layout_nk ? std::vector<int64_t>{kN, kK}
                                                            : std::vector<int64_t>{kK, kN}));
    EXPECT_TRUE(backend.CopyFromHost(w, ops.weights.back()).ok());
  }
  for (const Tensor& t : ops.weights) ops.ptrs.push_back(&t);
  ops.ptrs[3] = nullptr;  // group 3 has no rows
  return ops;
}

void CompareOnce(CudaGroupedGemm method, bool w_layout_nk) {
  CudaBackendOptions options;
  options.grouped_gemm = method;
  absl::StatusOr<std::unique_ptr<Backend>> cuda = MakeCudaBackend(options);
  ASSERT_TRUE(cuda.ok()) << cuda.status();
  std::unique_ptr<Backend> cpu = MakeCpuBackend();
  std::mt19937 rng(42);
  const int64_t num_rows = kOffsets.back();
  const std::vector<float> x = RandomBf16Values(num_rows * kK, rng);
  std::vector<std::vector<float>> weights;
  for (size_t g = 0; g < kNumGroups; ++g) weights.push_back(RandomBf16Values(kN * kK, rng));
  Operands on_cpu = Upload(*cpu, DType::kF32, x, weights, w_layout_nk);
  Operands on_gpu = Upload(**cuda, DType::kBF16, x, weights, w_layout_nk);
  const auto run = [&](Backend& b, Operands& ops) {
    return w_layout_nk ? b.GroupedLinear(ops.x, ops.ptrs, kOffsets, ops.out)
                       : b.GroupedMatMul(ops.x, ops.ptrs, kOffsets, ops.out);
  };
  ASSERT_TRUE(run(*cpu, on_cpu).ok());
  const absl::Status gpu_status = run(**cuda, on_gpu);
  ASSERT_TRUE(gpu_status.ok()) << gpu_status;
  std::vector<float> want(num_rows * kN), got(num_rows * kN);
  ASSERT_TRUE(cpu->CopyToHost(on_cpu.out, want).ok());
  ASSERT_TRUE((*cuda)->CopyToHost(on_gpu.out, got).ok());
  for (int64_t i = 0; i < num_rows * kN; ++i) {
    // fp32 accumulation on both sides; the GPU rounds its output to bf16 (8 mantissa bits).
    ASSERT_NEAR(got[i], want[i], 1e-2f + 8e-3f * std::fabs(want[i]))
        << "row " << i / kN << " col " << i % kN;
  }
}

class GroupedLinearGpuTest : public ::testing::TestWithParam<CudaGroupedGemm> {
 protected:
  void SetUp() override {
    SY_SKIP_WITHOUT_GPU();
  }
};

TEST_P(GroupedLinearGpuTest, LinearLayoutMatchesCpu) { CompareOnce(GetParam(), true); }
TEST_P(GroupedLinearGpuTest, MatMulLayoutMatchesCpu) { CompareOnce(GetParam(), false); }

INSTANTIATE_TEST_SUITE_P(Methods, GroupedLinearGpuTest,
                         ::testing::Values(CudaGroupedGemm::kPerGroupLoop,
                                           CudaGroupedGemm::kCublasGroupedBatched),
                         [](const ::testing::TestParamInfo<CudaGroupedGemm>& info) {
                           return info.param == CudaGroupedGemm::kPerGroupLoop ? "PerGroupLoop"
                                                                               : "GroupedBatched";
                         });

}  // namespace
}  // namespace switchyard
