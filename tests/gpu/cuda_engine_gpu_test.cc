// The CUDA backend through the Backend seam and the whole model on the GPU against the CPU engine.
//
// Each family's checkpoint is made in bf16, so both engines start from the same weight values;
// the GPU then runs in bf16 with fp32 accumulation, the CPU in fp32. Tolerances: logits within 5e-2
// relative (bf16 activations through every layer), and greedy tokens equal wherever the CPU's top
// two logits are at least kMargin apart (where they are closer, bf16 rounding may legitimately
// swap them). Decoding is teacher-forced with the CPU's tokens so both engines see the same inputs.
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/gpu/gpu_test_util.h"
#include "tools/model_maker.h"
#include "worker/backend/cuda_backend.h"
#include "worker/engine.h"

namespace switchyard {
namespace {

using ::switchyard::testing::RandomNormal;
using ::switchyard::testing::RelError;
using ::switchyard::testing::RoundBf16;

// The toy checkpoints' logits have a standard deviation of about 2 and a median top-two gap of
// about 0.4 (measured on the CPU engine); bf16 moves individual logits by roughly 0.01 to 0.03.
constexpr float kMargin = 0.1f;

TEST(CudaBackendTest, FactoryPicksCudaForCudaAndAuto) {
  SY_SKIP_WITHOUT_GPU();
  for (const char* name : {"cuda", "auto"}) {
    auto backend = MakeBackend(name);
    ASSERT_TRUE(backend.ok()) << backend.status();
    EXPECT_EQ((*backend)->kind(), BackendKind::kCuda) << name;
    EXPECT_EQ((*backend)->activation_dtype(), DType::kBF16);
  }
}

TEST(CudaBackendTest, OpsThroughTheSeamMatchTheCpuBackend) {
  SY_SKIP_WITHOUT_GPU();
  auto gpu_or = MakeCudaBackend();
  ASSERT_TRUE(gpu_or.ok()) << gpu_or.status();
  std::unique_ptr<Backend> gpu = std::move(gpu_or).value(), cpu = MakeCpuBackend();
  const int64_t m = 21, n = 48, k = 64;
  const std::vector<float> x = RoundBf16(RandomNormal(m * k, 1)), w = RoundBf16(RandomNormal(n * k, 2));
  auto upload = [](Backend& b, DType dtype, const std::vector<float>& v, std::vector<int64_t> shape) {
    absl::StatusOr<Tensor> t = b.Empty(dtype, std::move(shape));
    EXPECT_TRUE(t.ok()) << t.status();
    EXPECT_TRUE(b.CopyFromHost(v, *t).ok());
    return *t;
  };
  // bf16 round trip is exact for bf16 values.
  Tensor gx = upload(*gpu, DType::kBF16, x, {m, k}), gw = upload(*gpu, DType::kBF16, w, {n, k});
  std::vector<float> back(x.size());
  ASSERT_TRUE(gpu->CopyToHost(gx, back).ok());
  EXPECT_EQ(back, x);
  // Linear into fp32, then the router on it, against the CPU backend.
  Tensor cx = upload(*cpu, DType::kF32, x, {m, k}), cw = upload(*cpu, DType::kF32, w, {n, k});
  absl::StatusOr<Tensor> gout = gpu->Empty(DType::kF32, {m, n}), cout = cpu->Empty(DType::kF32, {m, n});
  ASSERT_TRUE(gout.ok() && cout.ok());
  ASSERT_TRUE(gpu->Linear(gx, gw, Tensor(), *gout).ok());
  ASSERT_TRUE(cpu->Linear(cx, cw, Tensor(), *cout).ok());
  std::vector<float> got(m * n), ref(m * n);
  ASSERT_TRUE(gpu->CopyToHost(*gout, got).ok());
  ASSERT_TRUE(cpu->CopyToHost(*cout, ref).ok());
  EXPECT_LT(RelError(got, ref), 1e-4);
  const int64_t top_k = 4;
  std::vector<int32_t> gids(m * top_k), cids(m * top_k);
  std::vector<float> gwts(m * top_k), cwts(m * top_k);
  ASSERT_TRUE(gpu->RouterTopK(*gout, top_k, kernels::cpu::RouterKind::kSoftmaxTopK, true, gids, gwts).ok());
  // The CPU router on the GPU's logits: the router itself must agree exactly.
  Tensor glogits = upload(*cpu, DType::kF32, got, {m, n});
  ASSERT_TRUE(cpu->RouterTopK(glogits, top_k, kernels::cpu::RouterKind::kSoftmaxTopK, true, cids, cwts).ok());
  EXPECT_EQ(gids, cids);
  ASSERT_TRUE(gpu->Synchronize().ok());
}

std::filesystem::path MakeBf16Model(const std::string& family) {
  const std::filesystem::path dir =
      std::filesystem::path(::testing::TempDir()) /
      ("cuda_engine_test_" + std::to_string(getpid()) + "_" + family);
  MakeModelOptions options;
  options.family = family;
  options.out_dir = dir;
  options.seed = 5;
  options.dtype = DType::kBF16;
  const absl::Status status = MakeModel(options);
  EXPECT_TRUE(status.ok()) << status;
  return dir;
}

std::unique_ptr<Engine> Load(const std::filesystem::path& dir, std::unique_ptr<Backend> backend) {
  EngineOptions options;
  options.block_size = 16;
  options.num_kv_blocks = 32;
  auto engine = Engine::Load(dir, std::move(backend), options);
  EXPECT_TRUE(engine.ok()) << engine.status();
  return engine.ok() ? std::move(engine).value() : nullptr;
}

// (top-1 id, top1 - top2) of one row of logits.
std::pair<int32_t, float> Top1(std::span<const float> row) {
  const auto best = std::max_element(row.begin(), row.end());
  float second = -INFINITY;
  for (auto it = row.begin(); it != row.end(); ++it) {
    if (it != best) second = std::max(second, *it);
  }
  return {static_cast<int32_t>(best - row.begin()), *best - second};
}

class CudaEngineFamilyTest : public ::testing::TestWithParam<std::string> {};

TEST_P(CudaEngineFamilyTest, GreedyTokensAndLogitsMatchTheCpuEngine) {
  SY_SKIP_WITHOUT_GPU();
  const std::filesystem::path dir = MakeBf16Model(GetParam());
  auto gpu_backend = MakeCudaBackend();
  ASSERT_TRUE(gpu_backend.ok()) << gpu_backend.status();
  std::unique_ptr<Engine> gpu = Load(dir, std::move(gpu_backend).value());
  std::unique_ptr<Engine> cpu = Load(dir, MakeCpuBackend());
  ASSERT_TRUE(gpu != nullptr && cpu != nullptr);
  const int64_t vocab = cpu->config().vocab_size;
  std::mt19937 rng(7);
  // Two sequences in one batch: A prefills 13 tokens then decodes; B prefills 29 (two attention
  // tiles and more) in the first step, then decodes beside A.
  std::vector<std::vector<int32_t>> prompts = {std::vector<int32_t>(13), std::vector<int32_t>(29)};
  for (auto& p : prompts) {
    for (int32_t& t : p) t = std::uniform_int_distribution<int32_t>(0, vocab - 1)(rng);
  }
  const std::vector<std::vector<int32_t>> tables = {{3, 7, 1, 12}, {0, 9, 4, 15, 2}};
  std::vector<int64_t> lengths = {0, 0};
  std::vector<std::vector<int32_t>> inputs = prompts;
  int num_compared = 0, num_steps = 0;
  for (int step = 0; step < 10; ++step) {
    std::vector<BatchEntry> batch;
    for (size_t s = 0; s < 2; ++s) batch.push_back({inputs[s], lengths[s], tables[s], step == 0});
    ForwardOutput gout, cout;
    absl::Status gs = gpu->Forward(batch, &gout), cs = cpu->Forward(batch, &cout);
    ASSERT_TRUE(gs.ok()) << gs;
    ASSERT_TRUE(cs.ok()) << cs;
    ASSERT_EQ(gout.logits.size(), cout.logits.size());
    EXPECT_LT(RelError(gout.logits, cout.logits), 5e-2) << GetParam() << " step " << step;
    for (size_t s = 0; s < 2; ++s) {
      const int64_t last_row = (s + 1 < 2 ? gout.first_row[s + 1] : gout.logits.size() / vocab) - 1;
      const std::span<const float> crow(cout.logits.data() + last_row * vocab, vocab);
      const std::span<const float> grow(gout.logits.data() + last_row * vocab, vocab);
      const auto [cpu_token, margin] = Top1(crow);
      ++num_steps;
      if (margin >= kMargin) {
        ++num_compared;
        EXPECT_EQ(Top1(grow).first, cpu_token) << GetParam() << " step " << step << " seq " << s
                                               << " cpu margin " << margin;
      }
      lengths[s] += static_cast<int64_t>(inputs[s].size());
      inputs[s] = {cpu_token};  // teacher forcing with the CPU's choice
    }
  }
  // The comparison must not pass vacuously.
  EXPECT_GE(num_compared, num_steps / 3) << GetParam() << ": too many near-ties to judge";
}

INSTANTIATE_TEST_SUITE_P(Families, CudaEngineFamilyTest,
                         ::testing::Values("llama", "mixtral", "qwen2_moe", "qwen3_moe", "olmoe",
                                           "llama4_text", "llama4"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace switchyard
