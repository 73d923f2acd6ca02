// The engine's own consistency: the same sequence gives the same logits however it is split into
// forward calls (one prefill, chunked prefill, token-by-token decode) and whatever else shares the
// batch; bad batches are rejected before any state changes; a worker can load a subset of experts.
// (Agreement with an independent reference of each family is tests/golden.)
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tools/model_maker.h"
#include "worker/engine.h"

namespace switchyard {
namespace {

std::filesystem::path MakeTestModel(const std::string& family, uint64_t seed = 3) {
  // Per process: ctest runs the cases of one binary as concurrent processes.
  std::filesystem::path dir = std::filesystem::path(::testing::TempDir()) /
                              ("engine_test_" + std::to_string(getpid()) + "_" + family);
  MakeModelOptions options;
  options.family = family;
  options.out_dir = dir;
  options.seed = seed;
  absl::Status status = MakeModel(options);
  EXPECT_TRUE(status.ok()) << status;
  return dir;
}

std::unique_ptr<Engine> LoadEngine(const std::filesystem::path& dir, EngineOptions options = {}) {
  options.num_kv_blocks = 64;
  options.block_size = 4;
  auto engine = Engine::Load(dir, MakeCpuBackend(), options);
  EXPECT_TRUE(engine.ok()) << engine.status();
  return engine.ok() ? std::move(engine).value() : nullptr;
}

std::vector<int32_t> Tokens(int64_t n, int64_t vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> dist(0, vocab - 1);
  std::vector<int32_t> ids(n);
  for (int32_t& id : ids) id = dist(rng);
  return ids;
}

std::vector<int32_t> Blocks(int32_t first, int32_t count) {
  std::vector<int32_t> blocks(count);
  // Descending, so a sequence's blocks are not in physical order.
  for (int32_t i = 0; i < count; ++i) blocks[i] = first + count - 1 - i;
  return blocks;
}

void ExpectNear(std::span<const float> a, std::span<const float> b, const std::string& what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  double max_abs = 0;
  for (float x : b) max_abs = std::max(max_abs, double(std::abs(x)));
  for (size_t i = 0; i < a.size(); ++i) {
    ASSERT_NEAR(a[i], b[i], 1e-4 * std::max(1.0, max_abs)) << what << " at " << i;
  }
}

// Logits of every position of `tokens`, run as one prefill.
std::vector<float> FullPrefill(Engine& engine, const std::vector<int32_t>& tokens,
                               const std::vector<int32_t>& blocks) {
  BatchEntry entry{tokens, 0, blocks, true};
  ForwardOutput out;
  absl::Status status = engine.Forward({&entry, 1}, &out);
  EXPECT_TRUE(status.ok()) << status;
  return out.logits;
}

class EngineFamilyTest : public ::testing::TestWithParam<std::string> {};

TEST_P(EngineFamilyTest, ChunkedPrefillAndDecodeMatchOnePrefill) {
  auto engine = LoadEngine(MakeTestModel(GetParam()));
  ASSERT_NE(engine, nullptr);
  const int64_t vocab = engine->config().vocab_size, len = 21;
  std::vector<int32_t> tokens = Tokens(len, vocab, 11);
  std::vector<int32_t> blocks = Blocks(0, 6);
  std::vector<float> ref = FullPrefill(*engine, tokens, blocks);

  // Chunks of 5, 5, 3, then one token at a time, into other blocks.
  std::vector<int32_t> other = Blocks(10, 6);
  std::vector<float> got;
  int64_t pos = 0;
  for (int64_t chunk : {5, 5, 3, 1, 1, 1, 1, 1, 1, 1, 1}) {
    BatchEntry entry{std::span<const int32_t>(tokens).subspan(pos, chunk), pos, other, true};
    ForwardOutput out;
    ASSERT_TRUE(engine->Forward({&entry, 1}, &out).ok());
    got.insert(got.end(), out.logits.begin(), out.logits.end());
    pos += chunk;
  }
  ASSERT_EQ(pos, len);
  ExpectNear(got, ref, GetParam() + " chunked");
}

TEST_P(EngineFamilyTest, BatchedEqualsAlone) {
  auto engine = LoadEngine(MakeTestModel(GetParam()));
  ASSERT_NE(engine, nullptr);
  const int64_t vocab = engine->config().vocab_size;
  std::vector<int32_t> a = Tokens(13, vocab, 1), b = Tokens(3, vocab, 2), c = Tokens(9, vocab, 3);
  std::vector<int32_t> ba = Blocks(0, 4), bb = Blocks(4, 1), bc = Blocks(5, 3);
  std::vector<float> ra = FullPrefill(*engine, a, ba), rb = FullPrefill(*engine, b, bb);
  // c: prefill 8 tokens alone, then its 9th token as a decode step inside a batch with a and b.
  std::vector<float> rc = FullPrefill(*engine, c, bc);
  BatchEntry c_prefix{std::span<const int32_t>(c).first(8), 0, bc, false};
  ForwardOutput out;
  ASSERT_TRUE(engine->Forward({&c_prefix, 1}, &out).ok());

  std::vector<int32_t> blocks_a2 = Blocks(20, 4), blocks_b2 = Blocks(24, 1);
  std::vector<BatchEntry> batch = {{a, 0, blocks_a2, true},
                                   {std::span<const int32_t>(c).subspan(8, 1), 8, bc, false},
                                   {b, 0, blocks_b2, true}};
  ASSERT_TRUE(engine->Forward(batch, &out).ok());
  ASSERT_EQ(out.first_row, (std::vector<int64_t>{0, 13, 14}));
  std::span<const float> logits(out.logits);
  ExpectNear(logits.subspan(0, 13 * vocab), ra, GetParam() + " seq a");
  ExpectNear(logits.subspan(13 * vocab, vocab), std::span<const float>(rc).subspan(8 * vocab, vocab),
             GetParam() + " seq c decode");
  ExpectNear(logits.subspan(14 * vocab, 3 * vocab), rb, GetParam() + " seq b");
}

INSTANTIATE_TEST_SUITE_P(Families, EngineFamilyTest,
                         ::testing::Values("llama", "mixtral", "qwen2_moe", "qwen3_moe", "olmoe",
                                           "llama4", "llama4_text"));

TEST(EngineTest, RejectsBadBatchesWithClearErrors) {
  auto engine = LoadEngine(MakeTestModel("mixtral"));
  ASSERT_NE(engine, nullptr);
  std::vector<int32_t> blocks = Blocks(0, 2);
  std::vector<int32_t> bad_id = {1, 2, static_cast<int32_t>(engine->config().vocab_size)};
  ForwardOutput out;
  BatchEntry entry{bad_id, 0, blocks, false};
  absl::Status status = engine->Forward({&entry, 1}, &out);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("outside the vocabulary"), std::string::npos) << status;

  std::vector<int32_t> tokens(9, 1);
  entry = BatchEntry{tokens, 0, blocks, false};  // 9 tokens need 3 blocks of 4
  status = engine->Forward({&entry, 1}, &out);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("need 3 KV blocks"), std::string::npos) << status;

  std::vector<int32_t> out_of_range = {0, 1000};
  entry = BatchEntry{std::span<const int32_t>(tokens).first(5), 0, out_of_range, false};
  EXPECT_EQ(engine->Forward({&entry, 1}, &out).code(), absl::StatusCode::kInvalidArgument);

  entry = BatchEntry{{}, 0, blocks, false};
  EXPECT_EQ(engine->Forward({&entry, 1}, &out).code(), absl::StatusCode::kInvalidArgument);
}

TEST(EngineTest, LoadsOnlyChosenExpertsAndRefusesOthers) {
  for (const std::string family : {"qwen3_moe", "llama4_text"}) {
    std::filesystem::path dir = MakeTestModel(family);
    auto all = LoadEngine(dir);
    EngineOptions options;
    options.weights.load_expert = [](int64_t, int64_t expert) { return expert < 4; };
    auto half = LoadEngine(dir, options);
    ASSERT_NE(all, nullptr);
    ASSERT_NE(half, nullptr);
    const ModelConfig& c = all->config();
    const uint64_t expert_bytes = 3ull * c.hidden_size * c.moe_intermediate_size * sizeof(float);
    EXPECT_EQ(all->weight_bytes_loaded() - half->weight_bytes_loaded(),
              c.num_moe_layers() * 4 * expert_bytes) << family;
    // Some token routes to an expert >= 4 in a long enough random prompt.
    std::vector<int32_t> tokens = Tokens(40, c.vocab_size, 5);
    std::vector<int32_t> blocks = Blocks(0, 10);
    BatchEntry entry{tokens, 0, blocks, false};
    ForwardOutput out;
    absl::Status status = half->Forward({&entry, 1}, &out);
    EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << family << ": " << status;
    EXPECT_NE(status.message().find("not loaded"), std::string_view::npos) << status;
    EXPECT_EQ(status.message().rfind("layer ", 0), 0u) << status;  // names the layer first
  }
}

TEST(RopeInvFreqTest, Llama3ScalingKeepsHighAndDividesLowFrequencies) {
  ModelConfig c;
  c.head_dim = 64;
  c.rope_theta = 500000.0;
  std::vector<float> plain = ComputeRopeInvFreq(c);
  c.rope_scaling.type = "llama3";
  c.rope_scaling.factor = 8.0;
  c.rope_scaling.low_freq_factor = 1.0;
  c.rope_scaling.high_freq_factor = 4.0;
  c.rope_scaling.original_max_position_embeddings = 8192;
  std::vector<float> scaled = ComputeRopeInvFreq(c);
  EXPECT_FLOAT_EQ(scaled[0], plain[0]);  // wavelength 2*pi: high frequency, untouched
  EXPECT_FLOAT_EQ(scaled.back(), plain.back() / 8.0f);  // longest wavelength: divided
  for (size_t i = 0; i < plain.size(); ++i) {
    EXPECT_LE(scaled[i], plain[i] * 1.000001f);
    EXPECT_GE(scaled[i], plain[i] / 8.0f * 0.999999f);
  }
}

}  // namespace
}  // namespace switchyard
