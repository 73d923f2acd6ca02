// CUDA elementwise, RoPE and embedding ops against their CPU reference ops, in fp32 (tolerance
// 1e-5 relative: same formula, different summation order) and bf16 (inputs rounded to bf16 before
// the CPU reference; tolerance one bf16 rounding of the output, 2^-8 relative, plus slack).
#include <cmath>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/rope.h"
#include "kernels/cuda/elementwise.h"
#include "kernels/cuda/embedding.h"
#include "kernels/cuda/rope.h"
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

constexpr double kBf16Tol = 1e-2;

TEST(ElementwiseGpuTest, RmsNormMatchesCpu) {
  SY_SKIP_WITHOUT_GPU();
  for (int64_t dim : {1, 64, 1000, 4096}) {
    const int64_t rows = 37;
    std::vector<float> x = RandomNormal(rows * dim, 1), w = RandomNormal(dim, 2), ref(rows * dim);
    cpu::RmsNorm(x.data(), w.data(), ref.data(), rows, dim, 1e-6f);
    DeviceArray<float> dx(x), dw(w), dout(rows * dim);
    dout.Poison();
    ASSERT_EQ(cuda::LaunchRmsNorm(dx.get(), dw.get(), dout.get(), rows, dim, 1e-6f, nullptr), cudaSuccess);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    std::vector<float> got = dout.ToHost();
    for (size_t i = 0; i < got.size(); ++i) {
      ASSERT_NEAR(got[i], ref[i], 1e-4 * (1 + std::abs(ref[i]))) << "dim " << dim << " i " << i;
    }
  }
}

TEST(ElementwiseGpuTest, RmsNormBf16InPlaceWithAndWithoutWeight) {
  SY_SKIP_WITHOUT_GPU();
  const int64_t rows = 29, dim = 2048;
  std::vector<float> x = RoundBf16(RandomNormal(rows * dim, 3)), w = RoundBf16(RandomNormal(dim, 4));
  for (bool weighted : {true, false}) {
    std::vector<float> ref(rows * dim);
    cpu::RmsNorm(x.data(), weighted ? w.data() : nullptr, ref.data(), rows, dim, 1e-5f);
    DeviceArray<bf16> dx(ToBf16(x)), dw(ToBf16(w));
    ASSERT_EQ(cuda::LaunchRmsNorm(dx.get(), weighted ? dw.get() : nullptr, dx.get(), rows, dim, 1e-5f,
                                  nullptr),
              cudaSuccess);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    EXPECT_LT(RelError(ToFloat(dx.ToHost()), ref), kBf16Tol) << "weighted " << weighted;
  }
}

TEST(ElementwiseGpuTest, SiluMulFusedRowsMatchCpu) {
  SY_SKIP_WITHOUT_GPU();
  const int64_t rows = 19, inter = 300;
  std::vector<float> gate_up = RandomNormal(rows * 2 * inter, 3), ref(rows * inter);
  cpu::SiluMul(gate_up.data(), 2 * inter, gate_up.data() + inter, 2 * inter, ref.data(), rows, inter);
  DeviceArray<float> d_in(gate_up), d_out(rows * inter);
  d_out.Poison();
  ASSERT_EQ(cuda::LaunchSiluMul(d_in.get(), 2 * inter, d_in.get() + inter, 2 * inter, d_out.get(), rows,
                                inter, nullptr),
            cudaSuccess);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  std::vector<float> got = d_out.ToHost();
  for (size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], ref[i], 1e-5 * (1 + std::abs(ref[i])));
  // bf16, fused layout.
  std::vector<float> rounded = RoundBf16(gate_up);
  cpu::SiluMul(rounded.data(), 2 * inter, rounded.data() + inter, 2 * inter, ref.data(), rows, inter);
  DeviceArray<bf16> b_in(ToBf16(rounded)), b_out(rows * inter);
  b_out.Poison();
  ASSERT_EQ(cuda::LaunchSiluMul(b_in.get(), 2 * inter, b_in.get() + inter, 2 * inter, b_out.get(), rows,
                                inter, nullptr),
            cudaSuccess);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_LT(RelError(ToFloat(b_out.ToHost()), ref), kBf16Tol);
}

TEST(ElementwiseGpuTest, AddScaleClampBiasConvertBf16MatchCpu) {
  SY_SKIP_WITHOUT_GPU();
  const int64_t rows = 13, cols = 777, n = rows * cols;
  std::vector<float> y = RoundBf16(RandomNormal(n, 5)), x = RoundBf16(RandomNormal(n, 6));
  std::vector<float> scale = RandomNormal(rows, 7), bias = RoundBf16(RandomNormal(cols, 8));
  std::vector<float> gate = RoundBf16(RandomNormal(rows, 9));
  std::vector<float> ref = y;
  cpu::AddInPlace(ref.data(), x.data(), n);
  cpu::ScaleRows(ref.data(), scale.data(), rows, cols);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) ref[r * cols + c] += bias[c];
  }
  for (int64_t r = 0; r < rows; ++r) {
    const float s = 1.0f / (1.0f + std::exp(-gate[r]));
    for (int64_t c = 0; c < cols; ++c) ref[r * cols + c] *= s;
  }
  cpu::Clamp(ref.data(), n, 0.5f);
  DeviceArray<bf16> dy(ToBf16(y)), dx(ToBf16(x)), dbias(ToBf16(bias)), dgate(ToBf16(gate));
  DeviceArray<float> dscale(scale), dfloat(n);
  ASSERT_EQ(cuda::LaunchAdd(dy.get(), dx.get(), n, nullptr), cudaSuccess);
  ASSERT_EQ(cuda::LaunchScaleRows(dy.get(), dscale.get(), rows, cols, nullptr), cudaSuccess);
  ASSERT_EQ(cuda::LaunchAddBias(dy.get(), dbias.get(), rows, cols, nullptr), cudaSuccess);
  ASSERT_EQ(cuda::LaunchScaleRowsBySigmoid(dy.get(), dgate.get(), rows, cols, nullptr), cudaSuccess);
  ASSERT_EQ(cuda::LaunchClamp(dy.get(), n, 0.5f, nullptr), cudaSuccess);
  ASSERT_EQ(cuda::LaunchConvert(dy.get(), dfloat.get(), n, nullptr), cudaSuccess);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  // Five bf16 roundings in sequence.
  EXPECT_LT(RelError(dfloat.ToHost(), ref), 2 * kBf16Tol);
  for (float v : dfloat.ToHost()) ASSERT_LE(std::abs(v), 0.5f);
}

TEST(ElementwiseGpuTest, RopeBothLayoutsMatchCpu) {
  SY_SKIP_WITHOUT_GPU();
  const int64_t tokens = 11, heads = 3, head_dim = 64;
  std::vector<int32_t> positions = {0, 1, 2, 7, 100, 4095, 5, 6, 131071, 9, 10};
  std::vector<float> inv_freq(head_dim / 2);
  for (int64_t i = 0; i < head_dim / 2; ++i) inv_freq[i] = std::pow(10000.0f, -2.0f * i / head_dim);
  for (bool interleaved : {false, true}) {
    std::vector<float> x = RandomNormal(tokens * heads * head_dim, 10), ref = x;
    cpu::ApplyRope(ref.data(), positions.data(), inv_freq.data(), tokens, heads, head_dim, interleaved);
    DeviceArray<float> dx(x), dfreq(inv_freq);
    DeviceArray<int32_t> dpos(positions);
    ASSERT_EQ(cuda::LaunchRope(dx.get(), dpos.get(), dfreq.get(), tokens, heads, head_dim, interleaved,
                               nullptr),
              cudaSuccess);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    std::vector<float> got = dx.ToHost();
    for (size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], ref[i], 1e-5) << interleaved << " " << i;
  }
}

TEST(ElementwiseGpuTest, EmbeddingMatchesCpuAndZeroesBadIds) {
  SY_SKIP_WITHOUT_GPU();
  const int64_t vocab = 50, dim = 24;
  std::vector<float> table = RoundBf16(RandomNormal(vocab * dim, 11));
  std::vector<int32_t> ids = {3, 49, 0, 3, 17};
  std::vector<float> ref(ids.size() * dim);
  cpu::EmbeddingLookup(table.data(), ids.data(), ids.size(), dim, ref.data());
  ids.push_back(vocab);  // out of range: a zero row
  DeviceArray<bf16> dtable(ToBf16(table)), dout(ids.size() * dim);
  DeviceArray<int32_t> dids(ids);
  dout.Poison();
  ASSERT_EQ(cuda::LaunchEmbedding(dtable.get(), dids.get(), ids.size(), vocab, dim, dout.get(), nullptr),
            cudaSuccess);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  std::vector<float> got = ToFloat(dout.ToHost());
  for (size_t i = 0; i < ref.size(); ++i) ASSERT_EQ(got[i], ref[i]) << i;  // a copy: exact
  for (size_t i = ref.size(); i < got.size(); ++i) ASSERT_EQ(got[i], 0.0f);
}

TEST(ElementwiseGpuTest, EmptyInputsAreNoOps) {
  SY_SKIP_WITHOUT_GPU();
  EXPECT_EQ(cuda::LaunchRmsNorm(static_cast<const float*>(nullptr), nullptr, nullptr, 0, 64, 1e-6f, nullptr),
            cudaSuccess);
  EXPECT_EQ(cuda::LaunchAdd(static_cast<bf16*>(nullptr), nullptr, 0, nullptr), cudaSuccess);
  EXPECT_EQ(cuda::LaunchRope(static_cast<bf16*>(nullptr), nullptr, nullptr, 0, 4, 64, false, nullptr),
            cudaSuccess);
  EXPECT_EQ(cuda::LaunchEmbedding(static_cast<const bf16*>(nullptr), nullptr, 0, 10, 8, nullptr, nullptr),
            cudaSuccess);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
}

}  // namespace
}  // namespace switchyard::kernels
