// The model maker writes, for every family, a checkpoint that parses, validates and loads, with the
// features each family's defaults are meant to exercise.
#include "tools/model_maker.h"

#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include "common/model_config.h"
#include "common/safetensors.h"
#include "common/tensor_names.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace switchyard {
namespace {

namespace fs = std::filesystem;

fs::path TempDir(const std::string& name) {
  fs::path dir = fs::temp_directory_path() /
                 ("sy_model_maker_test_" + std::to_string(::getpid()) + "_" + name);
  fs::remove_all(dir);
  return dir;
}

nlohmann::json ReadJson(const fs::path& path) {
  std::ifstream in(path);
  return nlohmann::json::parse(in);
}

std::string ReadAll(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

struct Made {
  ModelConfig config;
  std::unique_ptr<Checkpoint> checkpoint;
};

Made MakeAndOpen(const MakeModelOptions& options) {
  Made made;
  absl::Status s = MakeModel(options);
  EXPECT_TRUE(s.ok()) << s;
  absl::StatusOr<ModelConfig> config = LoadModelConfig(options.out_dir);
  EXPECT_TRUE(config.ok()) << config.status();
  if (config.ok()) made.config = *config;
  absl::StatusOr<std::unique_ptr<Checkpoint>> ckpt = Checkpoint::Open(options.out_dir);
  EXPECT_TRUE(ckpt.ok()) << ckpt.status();
  if (ckpt.ok()) {
    made.checkpoint = std::move(*ckpt);
    absl::Status valid = ValidateCheckpoint(made.config, *made.checkpoint);
    EXPECT_TRUE(valid.ok()) << valid;
  }
  return made;
}

class EveryFamilyTest : public ::testing::TestWithParam<std::string> {};

TEST_P(EveryFamilyTest, ParsesValidatesAndLoads) {
  MakeModelOptions options;
  options.family = GetParam();
  options.out_dir = TempDir(GetParam());
  Made made = MakeAndOpen(options);
  ASSERT_NE(made.checkpoint, nullptr);
  EXPECT_EQ(made.config.model_type, GetParam());
  EXPECT_EQ(made.config.num_hidden_layers, 4);
  EXPECT_EQ(made.config.hidden_size, 64);
  EXPECT_EQ(made.config.vocab_size, 512);
  for (const char* file : {"config.json", "generation_config.json", "tokenizer.json",
                           "tokenizer_config.json", "model.safetensors"}) {
    EXPECT_TRUE(fs::exists(options.out_dir / file)) << file;
  }
  nlohmann::json config = ReadJson(options.out_dir / "config.json");
  EXPECT_EQ(config["torch_dtype"], "float32");
  EXPECT_TRUE(config["architectures"].is_array());
  nlohmann::json tokenizer = ReadJson(options.out_dir / "tokenizer.json");
  EXPECT_TRUE(tokenizer.contains("model"));
  EXPECT_FALSE(made.config.eos_token_ids.empty());
  nlohmann::json generation = ReadJson(options.out_dir / "generation_config.json");
  EXPECT_TRUE(generation.contains("eos_token_id"));
  // Every expected tensor loads.
  std::vector<float> values;
  for (const TensorSpec& spec : ExpectedTensors(made.config)) {
    absl::Status s = made.checkpoint->LoadFloat32(spec.name, spec.shape, &values);
    EXPECT_TRUE(s.ok()) << s;
  }
  fs::remove_all(options.out_dir);
}

INSTANTIATE_TEST_SUITE_P(Families, EveryFamilyTest,
                         ::testing::Values("llama", "mixtral", "qwen2_moe", "qwen3_moe", "olmoe",
                                           "llama4", "llama4_text"));

TEST(ModelMakerTest, FamilyFeatures) {
  MakeModelOptions o;
  o.out_dir = TempDir("features");

  o.family = "llama";
  Made llama = MakeAndOpen(o);
  EXPECT_EQ(llama.config.rope_scaling.type, "llama3");
  EXPECT_EQ(llama.config.rope_scaling.original_max_position_embeddings, 32);
  EXPECT_EQ(llama.config.num_experts, 0);
  EXPECT_EQ(llama.config.head_dim, 16);
  EXPECT_EQ(llama.config.num_key_value_heads, 2);

  o.family = "mixtral";
  Made mixtral = MakeAndOpen(o);
  EXPECT_EQ(mixtral.config.num_experts, 8);
  EXPECT_EQ(mixtral.config.num_experts_per_tok, 2);
  EXPECT_EQ(mixtral.config.moe_intermediate_size, 32);
  nlohmann::json mixtral_json = ReadJson(o.out_dir / "config.json");
  EXPECT_EQ(mixtral_json["num_local_experts"], 8);
  EXPECT_EQ(mixtral_json["architectures"][0], "MixtralForCausalLM");

  o.family = "qwen2_moe";
  Made qwen2 = MakeAndOpen(o);
  EXPECT_EQ(qwen2.config.layer_is_moe, std::vector<bool>({true, false, true, true}));
  EXPECT_EQ(qwen2.config.shared_expert_intermediate_size, 64);
  EXPECT_TRUE(qwen2.config.attention_bias);

  o.family = "qwen3_moe";
  Made qwen3 = MakeAndOpen(o);
  EXPECT_EQ(qwen3.config.head_dim, 32);  // heads * head_dim (128) != hidden (64)
  EXPECT_EQ(qwen3.config.qk_norm, QkNorm::kPerHeadRms);

  o.family = "olmoe";
  Made olmoe = MakeAndOpen(o);
  EXPECT_DOUBLE_EQ(olmoe.config.clip_qkv, 2.0);
  EXPECT_EQ(olmoe.config.qk_norm, QkNorm::kFlatRms);

  o.family = "llama4";
  Made llama4 = MakeAndOpen(o);
  EXPECT_EQ(llama4.config.tensor_prefix, "language_model.model.");
  EXPECT_EQ(llama4.config.layer_is_moe, std::vector<bool>({false, true, false, true}));
  EXPECT_EQ(llama4.config.layer_uses_rope, std::vector<bool>({true, true, true, false}));
  EXPECT_EQ(llama4.config.attention_chunk_size, 8);
  EXPECT_TRUE(llama4.config.attn_temperature_tuning);
  EXPECT_DOUBLE_EQ(llama4.config.floor_scale, 4.0);
  EXPECT_EQ(llama4.config.num_experts_per_tok, 1);
  EXPECT_EQ(llama4.config.qk_norm, QkNorm::kL2);
  EXPECT_NE(llama4.checkpoint->Find("multi_modal_projector.linear_1.weight"), nullptr);
  EXPECT_NE(llama4.checkpoint->Find("vision_model.class_embedding"), nullptr);
  fs::remove_all(o.out_dir);
}

TEST(ModelMakerTest, ShardsDtypeAndTiedEmbeddings) {
  MakeModelOptions o;
  o.family = "qwen3_moe";
  o.out_dir = TempDir("shards");
  o.dtype = DType::kBF16;
  o.num_shards = 3;
  o.tie_embeddings = true;
  Made made = MakeAndOpen(o);
  ASSERT_NE(made.checkpoint, nullptr);
  EXPECT_FALSE(fs::exists(o.out_dir / "model.safetensors"));
  nlohmann::json index = ReadJson(o.out_dir / "model.safetensors.index.json");
  std::set<std::string> shards;
  for (auto& [name, file] : index["weight_map"].items()) shards.insert(file.get<std::string>());
  EXPECT_EQ(shards, std::set<std::string>({"model-00001-of-00003.safetensors",
                                           "model-00002-of-00003.safetensors",
                                           "model-00003-of-00003.safetensors"}));
  int64_t total_bytes = 0;
  for (const std::string& name : made.checkpoint->TensorNames()) {
    const TensorInfo* info = made.checkpoint->Find(name);
    EXPECT_EQ(info->dtype, DType::kBF16) << name;
    total_bytes += info->num_bytes();
  }
  EXPECT_EQ(index["metadata"]["total_size"], total_bytes);
  EXPECT_TRUE(made.config.tie_word_embeddings);
  EXPECT_EQ(made.checkpoint->Find("lm_head.weight"), nullptr);
  EXPECT_EQ(ReadJson(o.out_dir / "config.json")["torch_dtype"], "bfloat16");

  // Re-making with one shard replaces the shards and the index.
  o.num_shards = 1;
  o.tie_embeddings = false;
  MakeAndOpen(o);
  EXPECT_FALSE(fs::exists(o.out_dir / "model.safetensors.index.json"));
  EXPECT_FALSE(fs::exists(o.out_dir / "model-00001-of-00003.safetensors"));
  fs::remove_all(o.out_dir);
}

TEST(ModelMakerTest, DeterministicInSeedAndScaledForPeakedLogits) {
  MakeModelOptions o;
  o.family = "mixtral";
  o.out_dir = TempDir("seed_a");
  ASSERT_TRUE(MakeModel(o).ok());
  MakeModelOptions same = o;
  same.out_dir = TempDir("seed_b");
  ASSERT_TRUE(MakeModel(same).ok());
  MakeModelOptions other = o;
  other.out_dir = TempDir("seed_c");
  other.seed = 7;
  ASSERT_TRUE(MakeModel(other).ok());
  const std::string a = ReadAll(o.out_dir / "model.safetensors");
  EXPECT_EQ(a, ReadAll(same.out_dir / "model.safetensors"));
  EXPECT_NE(a, ReadAll(other.out_dir / "model.safetensors"));

  auto ckpt = Checkpoint::Open(o.out_dir);
  ASSERT_TRUE(ckpt.ok());
  auto stddev = [&](const std::string& name, std::vector<int64_t> shape, double* mean) {
    std::vector<float> v;
    EXPECT_TRUE((*ckpt)->LoadFloat32(name, shape, &v).ok()) << name;
    double sum = 0, sum_sq = 0;
    for (float x : v) sum += x;
    *mean = sum / v.size();
    for (float x : v) sum_sq += (x - *mean) * (x - *mean);
    return std::sqrt(sum_sq / v.size());
  };
  double mean = 0;
  EXPECT_NEAR(stddev("model.embed_tokens.weight", {512, 64}, &mean), 1.0, 0.05);
  EXPECT_NEAR(mean, 0.0, 0.05);
  EXPECT_NEAR(stddev("model.layers.0.self_attn.q_proj.weight", {64, 64}, &mean), 1.0 / 8, 0.01);
  EXPECT_NEAR(stddev("model.layers.0.block_sparse_moe.experts.0.w2.weight", {64, 32}, &mean),
              1.0 / std::sqrt(32.0), 0.02);
  stddev("model.norm.weight", {64}, &mean);
  EXPECT_NEAR(mean, 1.0, 0.05);
  for (auto* opt : {&o, &same, &other}) fs::remove_all(opt->out_dir);
}

TEST(ModelMakerTest, RejectsBadOptions) {
  MakeModelOptions o;
  o.out_dir = TempDir("bad");
  o.family = "gpt2";
  EXPECT_EQ(MakeModel(o).code(), absl::StatusCode::kUnimplemented);
  o.family = "mixtral";
  o.top_k = 9;
  EXPECT_EQ(MakeModel(o).code(), absl::StatusCode::kInvalidArgument);
  o.top_k = 0;
  o.family = "olmoe";
  o.head_dim = 32;  // olmoe derives head_dim from hidden / heads
  EXPECT_EQ(MakeModel(o).code(), absl::StatusCode::kInvalidArgument);
  o.head_dim = 0;
  o.out_dir.clear();
  EXPECT_EQ(MakeModel(o).code(), absl::StatusCode::kInvalidArgument);
  fs::remove_all(TempDir("bad"));
}

TEST(ModelMakerTest, ParsesCommandLine) {
  absl::StatusOr<MakeModelOptions> o =
      ParseMakeModelArgs({"--family", "llama4", "--out=/tmp/x", "--layers", "6", "--hidden-size",
                          "32", "--kv_heads", "1", "--dtype", "bf16", "--shards", "2", "--seed",
                          "9", "--tie-embeddings", "--moe-intermediate-size=48", "--top-k", "1"});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->family, "llama4");
  EXPECT_EQ(o->out_dir, "/tmp/x");
  EXPECT_EQ(o->num_layers, 6);
  EXPECT_EQ(o->hidden_size, 32);
  EXPECT_EQ(o->num_kv_heads, 1);
  EXPECT_EQ(o->dtype, DType::kBF16);
  EXPECT_EQ(o->num_shards, 2);
  EXPECT_EQ(o->seed, 9u);
  EXPECT_TRUE(o->tie_embeddings);
  EXPECT_EQ(o->moe_intermediate_size, 48);
  EXPECT_EQ(o->top_k, 1);
  EXPECT_FALSE(ParseMakeModelArgs({"--layers", "x"}).ok());
  EXPECT_FALSE(ParseMakeModelArgs({"--bogus", "1"}).ok());
  EXPECT_FALSE(ParseMakeModelArgs({"--dtype", "f8"}).ok());
  EXPECT_FALSE(ParseMakeModelArgs({"--out"}).ok());
}

// The command-line tool, as scripts use it.
TEST(ModelMakerTest, Binary) {
  const char* bin_dir = std::getenv("SWITCHYARD_BIN_DIR");
  if (bin_dir == nullptr) GTEST_SKIP() << "SWITCHYARD_BIN_DIR not set";
  const fs::path bin = fs::path(bin_dir) / "switchyard-make-model";
  if (!fs::exists(bin)) GTEST_SKIP() << bin << " not built";
  const fs::path out = TempDir("binary");
  const std::string cmd =
      bin.string() + " --family olmoe --layers 2 --out " + out.string() + " > /dev/null";
  ASSERT_EQ(std::system(cmd.c_str()), 0);
  absl::StatusOr<ModelConfig> config = LoadModelConfig(out);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->num_hidden_layers, 2);
  EXPECT_NE(std::system((bin.string() + " --family nope --out /tmp/x 2> /dev/null").c_str()), 0);
  fs::remove_all(out);
}

}  // namespace
}  // namespace switchyard
