// CUDA paged attention against kernels/cpu/attention.h: a batch mixing prefill chunks (with and
// without earlier context) and decode rows, blocks scattered in the cache, GQA, chunked windows,
// several head sizes. fp32 kernels within 1e-4 relative of the CPU; bf16 within 1e-2 (inputs
// rounded to bf16 first, so only the output rounding and fp32 reassociation differ).
#include <algorithm>
#include <numeric>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/attention.h"
#include "kernels/cuda/attention.h"
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

struct Case {
  int64_t num_heads, num_kv_heads, head_dim, block_size, chunk_size;
};

// (num_q, start_pos) per sequence: prefill from 0, prefill chunk after context, decode rows
// (short and long contexts), a prefill of one tile plus one row.
const std::vector<std::pair<int64_t, int64_t>> kSeqShapes = {
    {37, 0}, {20, 45}, {1, 0}, {1, 130}, {9, 3}, {1, 64}};

struct Batch {
  std::vector<cpu::AttentionSeq> cpu_seqs;
  std::vector<std::vector<int32_t>> tables;
  std::vector<cuda::PagedAttentionSeq> gpu_seqs;
  std::vector<int32_t> flat_tables;
  int64_t num_rows = 0, num_slots = 0;
};

Batch MakeBatch(int64_t block_size, uint32_t seed) {
  Batch b;
  int64_t total_blocks = 0;
  for (auto [num_q, start] : kSeqShapes) total_blocks += (start + num_q + block_size - 1) / block_size;
  std::vector<int32_t> physical(total_blocks + 5);  // spare blocks that no one uses
  std::iota(physical.begin(), physical.end(), 0);
  std::shuffle(physical.begin(), physical.end(), std::mt19937(seed));
  b.num_slots = static_cast<int64_t>(physical.size()) * block_size;
  size_t next = 0;
  b.tables.reserve(kSeqShapes.size());
  for (auto [num_q, start] : kSeqShapes) {
    const int64_t num_blocks = (start + num_q + block_size - 1) / block_size;
    b.tables.emplace_back(physical.begin() + next, physical.begin() + next + num_blocks);
    next += num_blocks;
    cpu::AttentionSeq s;
    s.q_row_begin = b.num_rows;
    s.num_q = num_q;
    s.start_pos = start;
    s.block_table = b.tables.back().data();
    b.cpu_seqs.push_back(s);
    cuda::PagedAttentionSeq g;
    g.q_row_begin = b.num_rows;
    g.num_q = num_q;
    g.start_pos = start;
    g.block_table_begin = static_cast<int64_t>(b.flat_tables.size());
    b.gpu_seqs.push_back(g);
    b.flat_tables.insert(b.flat_tables.end(), b.tables.back().begin(), b.tables.back().end());
    b.num_rows += num_q;
  }
  return b;
}

template <typename T>
std::vector<float> RunGpu(const Batch& b, const Case& c, const std::vector<float>& q,
                          const std::vector<float>& k_cache, const std::vector<float>& v_cache) {
  auto to_t = [](const std::vector<float>& v) {
    if constexpr (std::is_same_v<T, float>) {
      return v;
    } else {
      return ToBf16(v);
    }
  };
  std::vector<cuda::AttentionWorkItem> prefill, decode;
  cuda::PlanPagedAttention(b.gpu_seqs.data(), b.gpu_seqs.size(), &prefill, &decode);
  DeviceArray<T> dq(to_t(q)), dk(to_t(k_cache)), dv(to_t(v_cache)), dout(q.size());
  DeviceArray<cuda::PagedAttentionSeq> dseqs(b.gpu_seqs);
  DeviceArray<int32_t> dtables(b.flat_tables);
  DeviceArray<cuda::AttentionWorkItem> dprefill(prefill), ddecode(decode);
  dout.Poison();
  cuda::PagedAttentionParams p{c.num_heads, c.num_kv_heads, c.head_dim, c.block_size, c.chunk_size,
                               static_cast<float>(1.0 / std::sqrt(double(c.head_dim)))};
  EXPECT_EQ(cuda::LaunchPagedAttention(dq.get(), dk.get(), dv.get(), dseqs.get(), dtables.get(),
                                       dprefill.get(), prefill.size(), ddecode.get(), decode.size(), p,
                                       dout.get(), nullptr),
            cudaSuccess);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  if constexpr (std::is_same_v<T, float>) {
    return dout.ToHost();
  } else {
    return ToFloat(dout.ToHost());
  }
}

class AttentionGpuTest : public ::testing::TestWithParam<Case> {};

TEST_P(AttentionGpuTest, MatchesCpuInFp32AndBf16) {
  SY_SKIP_WITHOUT_GPU();
  const Case c = GetParam();
  const Batch b = MakeBatch(c.block_size, 17);
  const int64_t q_dim = c.num_heads * c.head_dim, kv_dim = c.num_kv_heads * c.head_dim;
  std::vector<float> q = RoundBf16(RandomNormal(b.num_rows * q_dim, 1));
  std::vector<float> k_cache = RoundBf16(RandomNormal(b.num_slots * kv_dim, 2));
  std::vector<float> v_cache = RoundBf16(RandomNormal(b.num_slots * kv_dim, 3));
  std::vector<float> ref(q.size());
  const float scale = static_cast<float>(1.0 / std::sqrt(double(c.head_dim)));
  cpu::PagedAttention(q.data(), k_cache.data(), v_cache.data(), b.cpu_seqs.data(), b.cpu_seqs.size(),
                      c.num_heads, c.num_kv_heads, c.head_dim, c.block_size, scale, c.chunk_size,
                      ref.data());
  const std::vector<float> got32 = RunGpu<float>(b, c, q, k_cache, v_cache);
  EXPECT_LT(RelError(got32, ref), 1e-4);
  for (size_t i = 0; i < ref.size(); ++i) {
    ASSERT_NEAR(got32[i], ref[i], 1e-3 * (1 + std::abs(ref[i]))) << "row " << i / q_dim;
  }
  EXPECT_LT(RelError(RunGpu<bf16>(b, c, q, k_cache, v_cache), ref), 1e-2);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, AttentionGpuTest,
    ::testing::Values(Case{4, 2, 16, 4, 0},     // toy model sizes (GQA 2)
                      Case{8, 1, 64, 16, 0},    // MQA
                      Case{8, 8, 128, 16, 0},   // MHA, common head size
                      Case{4, 2, 128, 16, 8},   // chunked (Llama 4) inside and across chunks
                      Case{2, 2, 256, 8, 0},    // the largest head size (shared memory opt-in)
                      Case{6, 2, 40, 5, 32}));  // odd sizes: head_dim not a multiple of 32

TEST(AttentionGpuTest, WriteKvCacheScattersRowsAndSkipsNegativeSlots) {
  SY_SKIP_WITHOUT_GPU();
  const int64_t tokens = 5, kv_dim = 48, num_slots = 16;
  std::vector<float> k = RandomNormal(tokens * kv_dim, 4), v = RandomNormal(tokens * kv_dim, 5);
  std::vector<int64_t> slots = {7, 0, -1, 15, 3};
  std::vector<float> k_ref(num_slots * kv_dim, 9.0f), v_ref = k_ref;
  for (int64_t t = 0; t < tokens; ++t) {
    if (slots[t] < 0) continue;
    std::copy_n(k.begin() + t * kv_dim, kv_dim, k_ref.begin() + slots[t] * kv_dim);
    std::copy_n(v.begin() + t * kv_dim, kv_dim, v_ref.begin() + slots[t] * kv_dim);
  }
  DeviceArray<float> dk(k), dv(v), dkc(std::vector<float>(num_slots * kv_dim, 9.0f)),
      dvc(std::vector<float>(num_slots * kv_dim, 9.0f));
  DeviceArray<int64_t> dslots(slots);
  ASSERT_EQ(cuda::LaunchWriteKvCache(dk.get(), dv.get(), dslots.get(), tokens, kv_dim, dkc.get(), dvc.get(),
                                     nullptr),
            cudaSuccess);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_EQ(dkc.ToHost(), k_ref);
  EXPECT_EQ(dvc.ToHost(), v_ref);
}

TEST(AttentionGpuTest, RejectsUnsupportedShapes) {
  SY_SKIP_WITHOUT_GPU();
  cuda::AttentionWorkItem item{0, 0, 1, 0};
  cuda::PagedAttentionParams p{4, 3, 64, 16, 0, 1.0f};  // 4 heads over 3 kv heads
  EXPECT_EQ(cuda::LaunchPagedAttention(static_cast<const float*>(nullptr), nullptr, nullptr, nullptr,
                                       nullptr, nullptr, 0, &item, 1, p, nullptr, nullptr),
            cudaErrorInvalidValue);
  p = {4, 4, 512, 16, 0, 1.0f};  // head_dim above the limit
  EXPECT_EQ(cuda::LaunchPagedAttention(static_cast<const float*>(nullptr), nullptr, nullptr, nullptr,
                                       nullptr, nullptr, 0, &item, 1, p, nullptr, nullptr),
            cudaErrorInvalidValue);
}

}  // namespace
}  // namespace switchyard::kernels
