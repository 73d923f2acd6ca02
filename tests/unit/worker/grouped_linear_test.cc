// GroupedLinear / GroupedMatMul on the CPU backend: each group's rows against one Linear (MatMul)
// call on that group alone (bit-exact, the contract the MoE block relies on for unchanged logits),
// against a hand loop on integer-valued data (exact in fp32), and the argument errors.
#include <array>
#include <cstdint>
#include <memory>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "worker/backend/backend.h"

namespace switchyard {
namespace {

class GroupedLinearTest : public ::testing::Test {
 protected:
  Tensor Make(std::vector<int64_t> shape, const std::vector<float>& values) {
    absl::StatusOr<Tensor> t = backend_->Empty(DType::kF32, std::move(shape));
    EXPECT_TRUE(t.ok()) << t.status();
    EXPECT_TRUE(backend_->CopyFromHost(values, *t).ok());
    return *t;
  }
  std::vector<float> Host(const Tensor& t) {
    std::vector<float> v(t.num_elements());
    EXPECT_TRUE(backend_->CopyToHost(t, v).ok());
    return v;
  }
  std::vector<float> Random(int64_t n, bool integers) {
    std::vector<float> v(n);
    for (float& x : v) {
      x = integers ? static_cast<float>(static_cast<int>(rng_() % 7) - 3)
                   : std::uniform_real_distribution<float>(-1.0f, 1.0f)(rng_);
    }
    return v;
  }

  std::unique_ptr<Backend> backend_ = MakeCpuBackend();
  std::mt19937 rng_{1234};
};

// Uneven groups, empty ones at the start, middle and end (one with a null weight).
constexpr int64_t kK = 24, kN = 10;
constexpr std::array<int64_t, 7> kOffsets = {0, 0, 5, 6, 6, 13, 13};

TEST_F(GroupedLinearTest, EqualsOneLinearPerGroupExactly) {
  const int64_t num_rows = kOffsets.back();
  const Tensor x = Make({num_rows, kK}, Random(num_rows * kK, false));
  std::vector<Tensor> w;
  std::vector<const Tensor*> weights;
  for (size_t g = 0; g + 1 < kOffsets.size(); ++g) {
    w.push_back(Make({kN, kK}, Random(kN * kK, false)));
  }
  for (const Tensor& t : w) weights.push_back(&t);
  weights[3] = nullptr;  // group 3 has no rows
  const Tensor out = Make({num_rows, kN}, std::vector<float>(num_rows * kN, 0.0f));
  ASSERT_TRUE(backend_->GroupedLinear(x, weights, kOffsets, out).ok());
  const std::vector<float> got = Host(out);
  for (size_t g = 0; g + 1 < kOffsets.size(); ++g) {
    const int64_t begin = kOffsets[g], end = kOffsets[g + 1];
    if (begin == end) continue;
    const Tensor want = Make({end - begin, kN}, std::vector<float>((end - begin) * kN, 0.0f));
    ASSERT_TRUE(backend_->Linear(x.Rows(begin, end), w[g], Tensor(), want).ok());
    const std::vector<float> want_host = Host(want);
    for (int64_t i = 0; i < (end - begin) * kN; ++i) {
      EXPECT_EQ(got[begin * kN + i], want_host[i]) << "group " << g << " element " << i;
    }
  }
}

TEST_F(GroupedLinearTest, MatchesHandLoopBothLayouts) {
  const int64_t num_rows = kOffsets.back();
  const std::vector<float> x_host = Random(num_rows * kK, true);
  const Tensor x = Make({num_rows, kK}, x_host);
  std::vector<std::vector<float>> w_host;
  std::vector<Tensor> w_nk, w_kn;
  for (size_t g = 0; g + 1 < kOffsets.size(); ++g) {
    w_host.push_back(Random(kN * kK, true));  // [N, K]
    std::vector<float> transposed(kK * kN);
    for (int64_t n = 0; n < kN; ++n) {
      for (int64_t k = 0; k < kK; ++k) transposed[k * kN + n] = w_host[g][n * kK + k];
    }
    w_nk.push_back(Make({kN, kK}, w_host[g]));
    w_kn.push_back(Make({kK, kN}, transposed));
  }
  std::vector<const Tensor*> nk, kn;
  for (size_t g = 0; g < w_nk.size(); ++g) {
    nk.push_back(&w_nk[g]);
    kn.push_back(&w_kn[g]);
  }
  const Tensor out_nk = Make({num_rows, kN}, std::vector<float>(num_rows * kN, 0.0f));
  const Tensor out_kn = Make({num_rows, kN}, std::vector<float>(num_rows * kN, 0.0f));
  ASSERT_TRUE(backend_->GroupedLinear(x, nk, kOffsets, out_nk).ok());
  ASSERT_TRUE(backend_->GroupedMatMul(x, kn, kOffsets, out_kn).ok());
  const std::vector<float> got_nk = Host(out_nk), got_kn = Host(out_kn);
  for (size_t g = 0; g + 1 < kOffsets.size(); ++g) {
    for (int64_t r = kOffsets[g]; r < kOffsets[g + 1]; ++r) {
      for (int64_t n = 0; n < kN; ++n) {
        float want = 0.0f;  // small integers: exact in any order
        for (int64_t k = 0; k < kK; ++k) want += x_host[r * kK + k] * w_host[g][n * kK + k];
        EXPECT_EQ(got_nk[r * kN + n], want) << "row " << r << " col " << n;
        EXPECT_EQ(got_kn[r * kN + n], want) << "row " << r << " col " << n;
      }
    }
  }
}

TEST_F(GroupedLinearTest, RejectsBadArguments) {
  const Tensor x = Make({4, kK}, Random(4 * kK, false));
  const Tensor w = Make({kN, kK}, Random(kN * kK, false));
  const Tensor out = Make({4, kN}, std::vector<float>(4 * kN, 0.0f));
  const Tensor empty;
  const std::vector<const Tensor*> two = {&w, &empty};
  // Rows but no weight.
  std::vector<int64_t> offsets = {0, 2, 4};
  EXPECT_EQ(backend_->GroupedLinear(x, two, offsets, out).code(),
            absl::StatusCode::kFailedPrecondition);
  const std::vector<const Tensor*> with_null = {&w, nullptr};
  EXPECT_EQ(backend_->GroupedMatMul(x, with_null, offsets, out).code(),
            absl::StatusCode::kFailedPrecondition);
  // Wrong count, decreasing, past the end.
  offsets = {0, 4};
  EXPECT_EQ(backend_->GroupedLinear(x, two, offsets, out).code(),
            absl::StatusCode::kInvalidArgument);
  offsets = {0, 3, 2};
  EXPECT_EQ(backend_->GroupedLinear(x, two, offsets, out).code(),
            absl::StatusCode::kInvalidArgument);
  offsets = {0, 4, 5};
  EXPECT_EQ(backend_->GroupedLinear(x, two, offsets, out).code(),
            absl::StatusCode::kInvalidArgument);
  // The empty weight is fine when its group has no rows.
  offsets = {0, 4, 4};
  EXPECT_TRUE(backend_->GroupedLinear(x, two, offsets, out).ok());
}

}  // namespace
}  // namespace switchyard
