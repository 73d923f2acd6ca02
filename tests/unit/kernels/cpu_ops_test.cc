// The CPU reference ops against naive double-precision computations and hand-worked values.
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/rope.h"
#include "kernels/cpu/router.h"

namespace switchyard::kernels::cpu {
namespace {

std::vector<float> Random(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

TEST(GemmTest, NTAndNNMatchNaive) {
  const int64_t m = 7, n = 5, k = 13;
  std::vector<float> a = Random(m * k, 1), b_nt = Random(n * k, 2), b_nn(k * n);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < k; ++j) b_nn[j * n + i] = b_nt[i * k + j];
  std::vector<float> c_nt(m * n, 1.0f), c_nn(m * n);
  GemmNT(a.data(), b_nt.data(), c_nt.data(), m, n, k, 1.0f, 1.0f);  // accumulate onto ones
  GemmNN(a.data(), b_nn.data(), c_nn.data(), m, n, k);
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double ref = 0;
      for (int64_t p = 0; p < k; ++p) ref += double(a[i * k + p]) * b_nt[j * k + p];
      EXPECT_NEAR(c_nt[i * n + j], ref + 1.0, 1e-4);
      EXPECT_NEAR(c_nn[i * n + j], ref, 1e-4);
    }
  }
}

TEST(ElementwiseTest, RmsNormMatchesFormula) {
  std::vector<float> x = {1, 2, 3, 4, -1, -1, -1, -1}, w = {1, 0.5, 2, 1}, out(8);
  RmsNorm(x.data(), w.data(), out.data(), 2, 4, 0.0f);
  const double inv = 1.0 / std::sqrt((1 + 4 + 9 + 16) / 4.0);
  EXPECT_NEAR(out[0], 1 * inv * 1, 1e-6);
  EXPECT_NEAR(out[1], 2 * inv * 0.5, 1e-6);
  EXPECT_NEAR(out[2], 3 * inv * 2, 1e-6);
  EXPECT_NEAR(out[4], -1, 1e-6);
  RmsNorm(x.data(), nullptr, out.data(), 2, 4, 0.0f);
  EXPECT_NEAR(out[2], 3 * inv, 1e-6);
}

TEST(ElementwiseTest, SiluMulWithStrides) {
  // One fused row [gate | up] = [0, 1, 2 | 3, 4, 5].
  std::vector<float> gate_up = {0, 1, 2, 3, 4, 5}, out(3);
  SiluMul(gate_up.data(), 6, gate_up.data() + 3, 6, out.data(), 1, 3);
  auto silu = [](double g) { return g / (1 + std::exp(-g)); };
  EXPECT_NEAR(out[0], 0.0, 1e-7);
  EXPECT_NEAR(out[1], silu(1) * 4, 1e-6);
  EXPECT_NEAR(out[2], silu(2) * 5, 1e-6);
}

TEST(RopeTest, PositionZeroIsIdentityAndPairsRotate) {
  const int64_t hd = 4;
  std::vector<float> inv_freq = {1.0f, 0.5f};
  std::vector<float> x = {1, 2, 3, 4};
  std::vector<int32_t> pos0 = {0};
  std::vector<float> y = x;
  ApplyRope(y.data(), pos0.data(), inv_freq.data(), 1, 1, hd, false);
  EXPECT_EQ(y, x);
  // Half layout, position 1: pair (0, 2) rotates by 1 rad, pair (1, 3) by 0.5 rad.
  std::vector<int32_t> pos1 = {1};
  y = x;
  ApplyRope(y.data(), pos1.data(), inv_freq.data(), 1, 1, hd, false);
  EXPECT_NEAR(y[0], 1 * std::cos(1.0) - 3 * std::sin(1.0), 1e-6);
  EXPECT_NEAR(y[2], 3 * std::cos(1.0) + 1 * std::sin(1.0), 1e-6);
  EXPECT_NEAR(y[1], 2 * std::cos(0.5) - 4 * std::sin(0.5), 1e-6);
  // Interleaved layout: pair (0, 1) by 1 rad, pair (2, 3) by 0.5 rad.
  y = x;
  ApplyRope(y.data(), pos1.data(), inv_freq.data(), 1, 1, hd, true);
  EXPECT_NEAR(y[0], 1 * std::cos(1.0) - 2 * std::sin(1.0), 1e-6);
  EXPECT_NEAR(y[1], 2 * std::cos(1.0) + 1 * std::sin(1.0), 1e-6);
  EXPECT_NEAR(y[3], 4 * std::cos(0.5) + 3 * std::sin(0.5), 1e-6);
}

// Dense causal attention in double, for one sequence laid out contiguously.
std::vector<double> NaiveAttention(const std::vector<float>& q, const std::vector<float>& k,
                                   const std::vector<float>& v, int64_t len, int64_t nh,
                                   int64_t nkv, int64_t hd, int64_t chunk) {
  std::vector<double> out(len * nh * hd, 0.0);
  const double scale = 1.0 / std::sqrt(double(hd));
  for (int64_t i = 0; i < len; ++i) {
    for (int64_t h = 0; h < nh; ++h) {
      const int64_t kvh = h / (nh / nkv);
      const int64_t begin = chunk > 0 ? i - i % chunk : 0;
      std::vector<double> s;
      double mx = -1e300;
      for (int64_t j = begin; j <= i; ++j) {
        double dot = 0;
        for (int64_t d = 0; d < hd; ++d) dot += double(q[(i * nh + h) * hd + d]) * k[(j * nkv + kvh) * hd + d];
        s.push_back(dot * scale);
        mx = std::max(mx, s.back());
      }
      double z = 0;
      for (double& e : s) z += (e = std::exp(e - mx));
      for (int64_t j = begin; j <= i; ++j)
        for (int64_t d = 0; d < hd; ++d)
          out[(i * nh + h) * hd + d] += s[j - begin] / z * v[(j * nkv + kvh) * hd + d];
    }
  }
  return out;
}

class PagedAttentionTest : public ::testing::TestWithParam<int64_t> {};

TEST_P(PagedAttentionTest, MatchesDenseAttentionWithScatteredBlocks) {
  const int64_t chunk = GetParam();
  const int64_t len = 21, nh = 4, nkv = 2, hd = 8, bs = 4, kv_dim = nkv * hd;
  const int64_t num_blocks = 16;
  std::vector<float> q = Random(len * nh * hd, 3), k = Random(len * kv_dim, 4), v = Random(len * kv_dim, 5);
  // Blocks deliberately out of order.
  std::vector<int32_t> table = {9, 2, 14, 0, 7, 11};
  std::vector<int64_t> slots(len);
  for (int64_t p = 0; p < len; ++p) slots[p] = int64_t(table[p / bs]) * bs + p % bs;
  std::vector<float> k_cache(num_blocks * bs * kv_dim, NAN), v_cache(num_blocks * bs * kv_dim, NAN);
  WriteKvCache(k.data(), v.data(), slots.data(), len, kv_dim, k_cache.data(), v_cache.data());
  // Query rows: a prefill chunk of positions 0..15 and then the last 5 positions as a second call.
  std::vector<float> out(len * nh * hd);
  AttentionSeq first{0, 16, 0, table.data()};
  PagedAttention(q.data(), k_cache.data(), v_cache.data(), &first, 1, nh, nkv, hd, bs,
                 1.0f / std::sqrt(float(hd)), chunk, out.data());
  AttentionSeq second{16, 5, 16, table.data()};
  PagedAttention(q.data(), k_cache.data(), v_cache.data(), &second, 1, nh, nkv, hd, bs,
                 1.0f / std::sqrt(float(hd)), chunk, out.data());
  std::vector<double> ref = NaiveAttention(q, k, v, len, nh, nkv, hd, chunk);
  for (size_t i = 0; i < ref.size(); ++i) ASSERT_NEAR(out[i], ref[i], 1e-5) << "index " << i;
}

INSTANTIATE_TEST_SUITE_P(FullAndChunked, PagedAttentionTest, ::testing::Values(0, 8));

TEST(RouterTest, SoftmaxTopKRenormalised) {
  std::vector<float> logits = {1.0f, 3.0f, 2.0f, 3.0f};  // a tie between experts 1 and 3
  std::vector<int32_t> ids(2);
  std::vector<float> w(2);
  RouterTopK(logits.data(), 1, 4, 2, RouterKind::kSoftmaxTopK, false, ids.data(), w.data());
  const double z = std::exp(1.0) + 2 * std::exp(3.0) + std::exp(2.0);
  EXPECT_EQ(ids[0], 1);  // ties: lower id first
  EXPECT_EQ(ids[1], 3);
  EXPECT_NEAR(w[0], std::exp(3.0) / z, 1e-6);
  RouterTopK(logits.data(), 1, 4, 2, RouterKind::kSoftmaxTopK, true, ids.data(), w.data());
  EXPECT_NEAR(w[0], 0.5, 1e-6);
  EXPECT_NEAR(w[1], 0.5, 1e-6);
}

TEST(RouterTest, TopKThenSigmoid) {
  std::vector<float> logits = {-1.0f, 0.5f, 2.0f};
  std::vector<int32_t> ids(1);
  std::vector<float> w(1);
  RouterTopK(logits.data(), 1, 3, 1, RouterKind::kTopKSigmoid, false, ids.data(), w.data());
  EXPECT_EQ(ids[0], 2);
  EXPECT_NEAR(w[0], 1.0 / (1.0 + std::exp(-2.0)), 1e-6);
}

}  // namespace
}  // namespace switchyard::kernels::cpu
