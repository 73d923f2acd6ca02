// Expected tensor names and shapes per family, written out by hand from the Hugging Face modules.
#include "common/tensor_names.h"

#include <map>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace switchyard {
namespace {

using Shape = std::vector<int64_t>;

ModelConfig Parse(std::string_view text) {
  absl::StatusOr<ModelConfig> config = ParseModelConfig(text);
  EXPECT_TRUE(config.ok()) << config.status();
  return config.ok() ? *config : ModelConfig();
}

std::map<std::string, Shape> ByName(const std::vector<TensorSpec>& specs) {
  std::map<std::string, Shape> out;
  for (const TensorSpec& s : specs) EXPECT_TRUE(out.emplace(s.name, s.shape).second) << s.name;
  return out;
}

// hidden 8, 2 heads of 4, 1 kv head, vocab 10.
constexpr char kCommon[] = R"("vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 2,
    "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 4, )";

TEST(TensorNamesTest, LlamaDenseAndTied) {
  ModelConfig c = Parse(std::string("{") + kCommon + R"("model_type": "llama",
      "intermediate_size": 6})");
  std::vector<TensorSpec> specs = ExpectedTensors(c);
  // embed + 2 * (2 norms + 4 attention + 3 mlp) + norm + lm_head
  ASSERT_EQ(specs.size(), 1u + 2 * 9 + 2);
  EXPECT_EQ(specs.front().name, "model.embed_tokens.weight");
  EXPECT_EQ(specs.back().name, "lm_head.weight");
  auto m = ByName(specs);
  EXPECT_EQ(m["model.embed_tokens.weight"], Shape({10, 8}));
  EXPECT_EQ(m["model.layers.0.input_layernorm.weight"], Shape({8}));
  EXPECT_EQ(m["model.layers.0.self_attn.q_proj.weight"], Shape({8, 8}));
  EXPECT_EQ(m["model.layers.0.self_attn.k_proj.weight"], Shape({4, 8}));
  EXPECT_EQ(m["model.layers.1.self_attn.v_proj.weight"], Shape({4, 8}));
  EXPECT_EQ(m["model.layers.1.self_attn.o_proj.weight"], Shape({8, 8}));
  EXPECT_EQ(m["model.layers.1.post_attention_layernorm.weight"], Shape({8}));
  EXPECT_EQ(m["model.layers.1.mlp.gate_proj.weight"], Shape({6, 8}));
  EXPECT_EQ(m["model.layers.1.mlp.up_proj.weight"], Shape({6, 8}));
  EXPECT_EQ(m["model.layers.1.mlp.down_proj.weight"], Shape({8, 6}));
  EXPECT_EQ(m["model.norm.weight"], Shape({8}));
  EXPECT_EQ(m["lm_head.weight"], Shape({10, 8}));
  EXPECT_EQ(specs[1].layer_idx, 0);
  EXPECT_EQ(specs.front().layer_idx, -1);

  ModelConfig tied = Parse(std::string("{") + kCommon + R"("model_type": "llama",
      "intermediate_size": 6, "tie_word_embeddings": true, "attention_bias": true})");
  auto t = ByName(ExpectedTensors(tied));
  EXPECT_EQ(t.count("lm_head.weight"), 0u);
  EXPECT_EQ(t["model.layers.0.self_attn.q_proj.bias"], Shape({8}));
  EXPECT_EQ(t["model.layers.0.self_attn.k_proj.bias"], Shape({4}));
  EXPECT_EQ(t["model.layers.0.self_attn.o_proj.bias"], Shape({8}));
}

TEST(TensorNamesTest, Mixtral) {
  ModelConfig c = Parse(std::string("{") + kCommon + R"("model_type": "mixtral",
      "intermediate_size": 6, "num_local_experts": 2, "num_experts_per_tok": 1})");
  std::vector<TensorSpec> specs = ExpectedTensors(c);
  ASSERT_EQ(specs.size(), 1u + 2 * (2 + 4 + 1 + 2 * 3) + 2);
  auto m = ByName(specs);
  EXPECT_EQ(m["model.layers.0.block_sparse_moe.gate.weight"], Shape({2, 8}));
  EXPECT_EQ(m["model.layers.0.block_sparse_moe.experts.0.w1.weight"], Shape({6, 8}));
  EXPECT_EQ(m["model.layers.0.block_sparse_moe.experts.1.w2.weight"], Shape({8, 6}));
  EXPECT_EQ(m["model.layers.1.block_sparse_moe.experts.1.w3.weight"], Shape({6, 8}));
  EXPECT_EQ(m.count("model.layers.0.mlp.gate_proj.weight"), 0u);
  for (const TensorSpec& s : specs) {
    if (s.name == "model.layers.1.block_sparse_moe.experts.1.w2.weight") {
      EXPECT_EQ(s.layer_idx, 1);
      EXPECT_EQ(s.expert_idx, 1);
      EXPECT_FALSE(s.fused_experts);
    }
    if (s.name == "model.layers.1.block_sparse_moe.gate.weight") EXPECT_EQ(s.expert_idx, -1);
  }
}

TEST(TensorNamesTest, Qwen2MoeSharedExpertBiasesAndDenseLayer) {
  ModelConfig c = Parse(std::string("{") + kCommon + R"("model_type": "qwen2_moe",
      "intermediate_size": 12, "moe_intermediate_size": 6, "shared_expert_intermediate_size": 10,
      "num_experts": 3, "num_experts_per_tok": 2, "mlp_only_layers": [0]})");
  auto m = ByName(ExpectedTensors(c));
  EXPECT_EQ(m["model.layers.0.self_attn.q_proj.bias"], Shape({8}));
  EXPECT_EQ(m["model.layers.0.self_attn.v_proj.bias"], Shape({4}));
  EXPECT_EQ(m.count("model.layers.0.self_attn.o_proj.bias"), 0u);
  EXPECT_EQ(m["model.layers.0.mlp.gate_proj.weight"], Shape({12, 8}));  // dense layer
  EXPECT_EQ(m["model.layers.0.mlp.down_proj.weight"], Shape({8, 12}));
  EXPECT_EQ(m.count("model.layers.0.mlp.gate.weight"), 0u);
  EXPECT_EQ(m["model.layers.1.mlp.gate.weight"], Shape({3, 8}));
  EXPECT_EQ(m["model.layers.1.mlp.experts.2.gate_proj.weight"], Shape({6, 8}));
  EXPECT_EQ(m["model.layers.1.mlp.experts.2.down_proj.weight"], Shape({8, 6}));
  EXPECT_EQ(m["model.layers.1.mlp.shared_expert.up_proj.weight"], Shape({10, 8}));
  EXPECT_EQ(m["model.layers.1.mlp.shared_expert.down_proj.weight"], Shape({8, 10}));
  EXPECT_EQ(m["model.layers.1.mlp.shared_expert_gate.weight"], Shape({1, 8}));
  EXPECT_EQ(m.count("model.layers.1.mlp.gate_proj.weight"), 0u);
  // embed, norm, lm_head; layer 0: 2 + 7 + 3; layer 1: 2 + 7 + 1 + 9 + 3 + 1.
  EXPECT_EQ(m.size(), 3u + 12 + 23);
}

TEST(TensorNamesTest, Qwen3MoePerHeadNorms) {
  ModelConfig c = Parse(std::string("{") + kCommon + R"("model_type": "qwen3_moe",
      "intermediate_size": 12, "moe_intermediate_size": 6, "num_experts": 2,
      "num_experts_per_tok": 1})");
  auto m = ByName(ExpectedTensors(c));
  EXPECT_EQ(m["model.layers.0.self_attn.q_norm.weight"], Shape({4}));
  EXPECT_EQ(m["model.layers.0.self_attn.k_norm.weight"], Shape({4}));
  EXPECT_EQ(m.count("model.layers.0.self_attn.q_proj.bias"), 0u);
  EXPECT_EQ(m.count("model.layers.0.mlp.shared_expert_gate.weight"), 0u);
  EXPECT_EQ(m["model.layers.1.mlp.experts.1.up_proj.weight"], Shape({6, 8}));
}

TEST(TensorNamesTest, OlmoeFlatNorms) {
  ModelConfig c = Parse(R"({"model_type": "olmoe", "vocab_size": 10, "hidden_size": 8,
      "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
      "intermediate_size": 6, "num_experts": 2, "num_experts_per_tok": 2})");
  auto m = ByName(ExpectedTensors(c));
  EXPECT_EQ(m["model.layers.0.self_attn.q_norm.weight"], Shape({8}));
  EXPECT_EQ(m["model.layers.0.self_attn.k_norm.weight"], Shape({4}));
  EXPECT_EQ(m["model.layers.0.mlp.gate.weight"], Shape({2, 8}));
  EXPECT_EQ(m["model.layers.0.mlp.experts.1.gate_proj.weight"], Shape({6, 8}));
}

TEST(TensorNamesTest, Llama4FusedExpertsUnderLanguageModel) {
  ModelConfig c = Parse(std::string(R"({"model_type": "llama4", "text_config": {)") + kCommon +
                        R"("model_type": "llama4_text", "intermediate_size": 6,
      "intermediate_size_mlp": 12, "num_local_experts": 3, "num_experts_per_tok": 1,
      "interleave_moe_layer_step": 2}})");
  std::vector<TensorSpec> specs = ExpectedTensors(c);
  auto m = ByName(specs);
  EXPECT_EQ(m["language_model.model.embed_tokens.weight"], Shape({10, 8}));
  // Layer 0 is dense (intermediate_size_mlp), layer 1 MoE.
  EXPECT_EQ(m["language_model.model.layers.0.feed_forward.gate_proj.weight"], Shape({12, 8}));
  EXPECT_EQ(m["language_model.model.layers.0.feed_forward.down_proj.weight"], Shape({8, 12}));
  EXPECT_EQ(m["language_model.model.layers.1.feed_forward.router.weight"], Shape({3, 8}));
  EXPECT_EQ(m["language_model.model.layers.1.feed_forward.experts.gate_up_proj"],
            Shape({3, 8, 12}));
  EXPECT_EQ(m["language_model.model.layers.1.feed_forward.experts.down_proj"], Shape({3, 6, 8}));
  EXPECT_EQ(m["language_model.model.layers.1.feed_forward.shared_expert.gate_proj.weight"],
            Shape({6, 8}));
  EXPECT_EQ(m["language_model.model.layers.1.feed_forward.shared_expert.down_proj.weight"],
            Shape({8, 6}));
  EXPECT_EQ(m.count("language_model.model.layers.1.self_attn.q_norm.weight"), 0u);  // weightless
  EXPECT_EQ(m["language_model.model.norm.weight"], Shape({8}));
  EXPECT_EQ(m["language_model.lm_head.weight"], Shape({10, 8}));
  // embed, norm, lm_head; dense layer 2 + 4 + 3; MoE layer 2 + 4 + 3 + 3.
  EXPECT_EQ(specs.size(), 3u + 9 + 12);
  for (const TensorSpec& s : specs) {
    const bool fused = s.name.find("feed_forward.experts.") != std::string::npos;
    EXPECT_EQ(s.fused_experts, fused) << s.name;
    EXPECT_EQ(s.expert_idx, -1) << s.name;
  }
}

TEST(TensorNamesTest, LayerTensorName) {
  ModelConfig c;
  c.tensor_prefix = "language_model.model.";
  EXPECT_EQ(LayerTensorName(c, 7, "self_attn.q_proj.weight"),
            "language_model.model.layers.7.self_attn.q_proj.weight");
}

}  // namespace
}  // namespace switchyard
