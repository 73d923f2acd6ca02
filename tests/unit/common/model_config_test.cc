// config.json parsing for every family, from configs shaped like the released checkpoints'.
#include "common/model_config.h"

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "gtest/gtest.h"

namespace switchyard {
namespace {

constexpr char kLlama31_8B[] = R"({
  "architectures": ["LlamaForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
  "bos_token_id": 128000, "eos_token_id": 128001, "hidden_act": "silu", "hidden_size": 4096,
  "initializer_range": 0.02, "intermediate_size": 14336, "max_position_embeddings": 131072,
  "mlp_bias": false, "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 32,
  "num_key_value_heads": 8, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
  "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   "original_max_position_embeddings": 8192, "rope_type": "llama3"},
  "rope_theta": 500000.0, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
  "transformers_version": "4.43.0.dev0", "use_cache": true, "vocab_size": 128256})";

constexpr char kMixtral8x7B[] = R"({
  "architectures": ["MixtralForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 1,
  "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02,
  "intermediate_size": 14336, "max_position_embeddings": 32768, "model_type": "mixtral",
  "num_attention_heads": 32, "num_experts_per_tok": 2, "num_hidden_layers": 32,
  "num_key_value_heads": 8, "num_local_experts": 8, "output_router_logits": false,
  "rms_norm_eps": 1e-05, "rope_theta": 1000000.0, "router_aux_loss_coef": 0.02,
  "sliding_window": null, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
  "transformers_version": "4.36.0.dev0", "use_cache": true, "vocab_size": 32000})";

constexpr char kQwen15MoeA27B[] = R"({
  "architectures": ["Qwen2MoeForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
  "eos_token_id": 151643, "hidden_act": "silu", "hidden_size": 2048, "initializer_range": 0.02,
  "intermediate_size": 5632, "max_position_embeddings": 8192, "max_window_layers": 21,
  "model_type": "qwen2_moe", "num_attention_heads": 16, "num_hidden_layers": 24,
  "num_key_value_heads": 16, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
  "sliding_window": 32768, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
  "transformers_version": "4.39.0.dev0", "use_cache": true, "use_sliding_window": false,
  "vocab_size": 151936, "decoder_sparse_step": 1, "moe_intermediate_size": 1408,
  "shared_expert_intermediate_size": 5632, "num_experts_per_tok": 4, "num_experts": 60,
  "norm_topk_prob": false, "output_router_logits": false, "router_aux_loss_coef": 0.001})";

constexpr char kQwen3_30B_A3B[] = R"({
  "architectures": ["Qwen3MoeForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
  "bos_token_id": 151643, "decoder_sparse_step": 1, "eos_token_id": 151645, "head_dim": 128,
  "hidden_act": "silu", "hidden_size": 2048, "initializer_range": 0.02,
  "intermediate_size": 6144, "max_position_embeddings": 40960, "max_window_layers": 48,
  "mlp_only_layers": [], "model_type": "qwen3_moe", "moe_intermediate_size": 768,
  "norm_topk_prob": true, "num_attention_heads": 32, "num_experts": 128,
  "num_experts_per_tok": 8, "num_hidden_layers": 48, "num_key_value_heads": 4,
  "output_router_logits": false, "rms_norm_eps": 1e-06, "rope_scaling": null,
  "rope_theta": 1000000.0, "router_aux_loss_coef": 0.001, "sliding_window": null,
  "tie_word_embeddings": false, "torch_dtype": "bfloat16", "transformers_version": "4.51.0",
  "use_cache": true, "use_sliding_window": false, "vocab_size": 151936})";

constexpr char kOlmoe1B7B[] = R"({
  "architectures": ["OlmoeForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
  "clip_qkv": null, "eos_token_id": 50279, "hidden_act": "silu", "hidden_size": 2048,
  "initializer_range": 0.02, "intermediate_size": 1024, "max_position_embeddings": 4096,
  "model_type": "olmoe", "norm_topk_prob": false, "num_attention_heads": 16, "num_experts": 64,
  "num_experts_per_tok": 8, "num_hidden_layers": 16, "num_key_value_heads": 16,
  "output_router_logits": false, "pad_token_id": 1, "rms_norm_eps": 1e-05, "rope_scaling": null,
  "rope_theta": 10000.0, "router_aux_loss_coef": 0.01, "tie_word_embeddings": false,
  "torch_dtype": "bfloat16", "transformers_version": "4.43.0.dev0", "use_cache": true,
  "vocab_size": 50304})";

// Llama-4-Scout-17B-16E: the multimodal wrapper with the text model in text_config.
std::string Llama4ScoutConfig() {
  std::vector<int> no_rope;
  for (int i = 0; i < 48; ++i) no_rope.push_back((i + 1) % 4 == 0 ? 0 : 1);
  return absl::StrCat(R"({
  "architectures": ["Llama4ForConditionalGeneration"], "boi_token_index": 200080,
  "eoi_token_index": 200081, "image_token_index": 200092, "model_type": "llama4",
  "text_config": {
    "attention_bias": false, "attention_chunk_size": 8192, "attention_dropout": 0.0,
    "attn_scale": 0.1, "attn_temperature_tuning": 4, "bos_token_id": 200000,
    "eos_token_id": [200001, 200007, 200008], "floor_scale": 8192, "for_llm_compressor": false,
    "head_dim": 128, "hidden_act": "silu", "hidden_size": 5120, "initializer_range": 0.02,
    "interleave_moe_layer_step": 1, "intermediate_size": 8192, "intermediate_size_mlp": 16384,
    "max_position_embeddings": 10485760, "model_type": "llama4_text", "no_rope_layers": [)",
                      absl::StrJoin(no_rope, ","), R"(],
    "num_attention_heads": 40, "num_experts_per_tok": 1, "num_hidden_layers": 48,
    "num_key_value_heads": 8, "num_local_experts": 16, "output_router_logits": false,
    "pad_token_id": 200018, "rms_norm_eps": 1e-05,
    "rope_scaling": {"factor": 16.0, "high_freq_factor": 1.0, "low_freq_factor": 1.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0, "router_aux_loss_coef": 0.001, "router_jitter_noise": 0.0,
    "torch_dtype": "bfloat16", "use_cache": true, "use_qk_norm": true, "vocab_size": 202048},
  "tie_word_embeddings": false, "torch_dtype": "bfloat16", "transformers_version": "4.51.0.dev0",
  "vision_config": {"hidden_size": 1408, "model_type": "llama4_vision_model",
                    "num_hidden_layers": 34, "vision_output_dim": 4096}})");
}

ModelConfig ParseOk(std::string_view text) {
  absl::StatusOr<ModelConfig> config = ParseModelConfig(text);
  EXPECT_TRUE(config.ok()) << config.status();
  return config.ok() ? *config : ModelConfig();
}

TEST(ModelConfigTest, Llama31) {
  ModelConfig c = ParseOk(kLlama31_8B);
  EXPECT_EQ(c.family, ModelFamily::kLlama);
  EXPECT_EQ(c.model_type, "llama");
  EXPECT_EQ(c.vocab_size, 128256);
  EXPECT_EQ(c.hidden_size, 4096);
  EXPECT_EQ(c.num_hidden_layers, 32);
  EXPECT_EQ(c.num_attention_heads, 32);
  EXPECT_EQ(c.num_key_value_heads, 8);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.intermediate_size, 14336);
  EXPECT_EQ(c.max_position_embeddings, 131072);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-5);
  EXPECT_DOUBLE_EQ(c.rope_theta, 500000.0);
  EXPECT_EQ(c.rope_scaling.type, "llama3");
  EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 8.0);
  EXPECT_DOUBLE_EQ(c.rope_scaling.low_freq_factor, 1.0);
  EXPECT_DOUBLE_EQ(c.rope_scaling.high_freq_factor, 4.0);
  EXPECT_EQ(c.rope_scaling.original_max_position_embeddings, 8192);
  EXPECT_EQ(c.rope_style, RopeStyle::kHalf);
  EXPECT_EQ(c.qk_norm, QkNorm::kNone);
  EXPECT_FALSE(c.attention_bias);
  EXPECT_EQ(c.expert_layout, ExpertLayout::kNone);
  EXPECT_EQ(c.num_experts, 0);
  EXPECT_EQ(c.bos_token_id, 128000);
  EXPECT_EQ(c.eos_token_ids, std::vector<int64_t>({128001}));
  EXPECT_EQ(c.tensor_prefix, "model.");
  EXPECT_EQ(c.lm_head_name, "lm_head.weight");
  EXPECT_EQ(c.layer_is_moe, std::vector<bool>(32, false));
  EXPECT_EQ(c.layer_uses_rope, std::vector<bool>(32, true));
  EXPECT_EQ(c.num_moe_layers(), 0);
  EXPECT_TRUE(c.ignored_tensor_prefixes.empty());
}

TEST(ModelConfigTest, LlamaMinimalTakesClassDefaultsAndEosList) {
  ModelConfig c = ParseOk(R"({"model_type": "llama", "vocab_size": 100, "hidden_size": 64,
      "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128,
      "eos_token_id": [7, 8, 9], "rope_scaling": {"type": "linear", "factor": 2.0},
      "tie_word_embeddings": true, "attention_bias": true})");
  EXPECT_EQ(c.num_key_value_heads, 4);  // defaults to num_attention_heads
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-6);
  EXPECT_DOUBLE_EQ(c.rope_theta, 10000.0);
  EXPECT_EQ(c.max_position_embeddings, 2048);
  EXPECT_EQ(c.bos_token_id, 1);
  EXPECT_EQ(c.eos_token_ids, std::vector<int64_t>({7, 8, 9}));
  EXPECT_EQ(c.rope_scaling.type, "linear");
  EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 2.0);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_TRUE(c.lm_head_name.empty());
  EXPECT_TRUE(c.attention_bias);
  EXPECT_TRUE(c.o_proj_bias);  // LlamaAttention puts attention_bias on o_proj too
}

TEST(ModelConfigTest, TransformersFiveRopeParametersAndNulls) {
  ModelConfig c = ParseOk(R"({"model_type": "llama", "vocab_size": 100, "hidden_size": 64,
      "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": null,
      "intermediate_size": 128, "bos_token_id": null, "eos_token_id": null, "head_dim": null,
      "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
                          "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                          "original_max_position_embeddings": 8192}})");
  EXPECT_DOUBLE_EQ(c.rope_theta, 500000.0);
  EXPECT_EQ(c.rope_scaling.type, "llama3");
  EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 32.0);
  EXPECT_EQ(c.num_key_value_heads, 4);
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_EQ(c.bos_token_id, -1);  // explicit null: none, not the class default
  EXPECT_TRUE(c.eos_token_ids.empty());
}

TEST(ModelConfigTest, Mixtral) {
  ModelConfig c = ParseOk(kMixtral8x7B);
  EXPECT_EQ(c.family, ModelFamily::kMixtral);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.num_experts, 8);
  EXPECT_EQ(c.num_experts_per_tok, 2);
  EXPECT_EQ(c.moe_intermediate_size, 14336);
  EXPECT_EQ(c.expert_layout, ExpertLayout::kMixtralW123);
  EXPECT_EQ(c.router_scoring, RouterScoring::kSoftmax);
  EXPECT_TRUE(c.norm_topk_prob);
  EXPECT_FALSE(c.router_scales_input);
  EXPECT_EQ(c.shared_expert_intermediate_size, 0);
  EXPECT_DOUBLE_EQ(c.rope_theta, 1e6);
  EXPECT_EQ(c.layer_is_moe, std::vector<bool>(32, true));
  EXPECT_EQ(c.bos_token_id, 1);
  EXPECT_EQ(c.eos_token_ids, std::vector<int64_t>({2}));
  EXPECT_FALSE(c.attention_bias);
}

TEST(ModelConfigTest, Qwen15Moe) {
  ModelConfig c = ParseOk(kQwen15MoeA27B);
  EXPECT_EQ(c.family, ModelFamily::kQwen2Moe);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.num_key_value_heads, 16);
  EXPECT_TRUE(c.attention_bias);  // Qwen2-MoE always has q/k/v biases
  EXPECT_FALSE(c.o_proj_bias);
  EXPECT_EQ(c.intermediate_size, 5632);
  EXPECT_EQ(c.moe_intermediate_size, 1408);
  EXPECT_EQ(c.shared_expert_intermediate_size, 5632);
  EXPECT_TRUE(c.shared_expert_gate);
  EXPECT_EQ(c.num_experts, 60);
  EXPECT_EQ(c.num_experts_per_tok, 4);
  EXPECT_FALSE(c.norm_topk_prob);
  EXPECT_EQ(c.expert_layout, ExpertLayout::kPerExpertMlp);
  EXPECT_EQ(c.layer_is_moe, std::vector<bool>(24, true));
  EXPECT_EQ(c.bos_token_id, 151643);
  EXPECT_EQ(c.qk_norm, QkNorm::kNone);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-6);
}

TEST(ModelConfigTest, QwenDenseLayersFromMlpOnlyLayersAndSparseStep) {
  ModelConfig c = ParseOk(R"({"model_type": "qwen2_moe", "vocab_size": 100, "hidden_size": 64,
      "num_hidden_layers": 6, "num_attention_heads": 32, "intermediate_size": 128,
      "moe_intermediate_size": 32, "shared_expert_intermediate_size": 64, "num_experts": 4,
      "num_experts_per_tok": 2, "decoder_sparse_step": 2, "mlp_only_layers": [3],
      "qkv_bias": false, "norm_topk_prob": true})");
  // MoE iff not listed and (i + 1) % 2 == 0: layers 1 and 5 (3 is listed).
  EXPECT_EQ(c.layer_is_moe, std::vector<bool>({false, true, false, false, false, true}));
  EXPECT_EQ(c.num_moe_layers(), 2);
  EXPECT_FALSE(c.attention_bias);
  EXPECT_TRUE(c.norm_topk_prob);
  EXPECT_EQ(c.num_key_value_heads, 16);  // Qwen2MoeConfig's default
  EXPECT_EQ(c.head_dim, 2);
}

TEST(ModelConfigTest, Qwen3Moe) {
  ModelConfig c = ParseOk(kQwen3_30B_A3B);
  EXPECT_EQ(c.family, ModelFamily::kQwen3Moe);
  EXPECT_EQ(c.head_dim, 128);  // not hidden / heads (64)
  EXPECT_EQ(c.num_key_value_heads, 4);
  EXPECT_EQ(c.qk_norm, QkNorm::kPerHeadRms);
  EXPECT_FALSE(c.attention_bias);
  EXPECT_FALSE(c.o_proj_bias);
  EXPECT_EQ(c.num_experts, 128);
  EXPECT_EQ(c.num_experts_per_tok, 8);
  EXPECT_EQ(c.moe_intermediate_size, 768);
  EXPECT_TRUE(c.norm_topk_prob);
  EXPECT_EQ(c.shared_expert_intermediate_size, 0);
  EXPECT_FALSE(c.shared_expert_gate);
  EXPECT_EQ(c.layer_is_moe, std::vector<bool>(48, true));
  EXPECT_EQ(c.eos_token_ids, std::vector<int64_t>({151645}));
  EXPECT_EQ(c.max_position_embeddings, 40960);
}

TEST(ModelConfigTest, Olmoe) {
  ModelConfig c = ParseOk(kOlmoe1B7B);
  EXPECT_EQ(c.family, ModelFamily::kOlmoe);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.qk_norm, QkNorm::kFlatRms);
  EXPECT_DOUBLE_EQ(c.clip_qkv, 0.0);
  EXPECT_EQ(c.num_experts, 64);
  EXPECT_EQ(c.num_experts_per_tok, 8);
  EXPECT_EQ(c.moe_intermediate_size, 1024);
  EXPECT_FALSE(c.norm_topk_prob);
  EXPECT_EQ(c.bos_token_id, -1);
  EXPECT_EQ(c.eos_token_ids, std::vector<int64_t>({50279}));
  EXPECT_EQ(c.layer_is_moe, std::vector<bool>(16, true));
  ModelConfig clipped = ParseOk(R"({"model_type": "olmoe", "vocab_size": 100, "hidden_size": 64,
      "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
      "intermediate_size": 32, "num_experts": 4, "num_experts_per_tok": 2, "clip_qkv": 8.0})");
  EXPECT_DOUBLE_EQ(clipped.clip_qkv, 8.0);
  EXPECT_EQ(clipped.num_key_value_heads, 2);
}

TEST(ModelConfigTest, Llama4Scout) {
  ModelConfig c = ParseOk(Llama4ScoutConfig());
  EXPECT_EQ(c.family, ModelFamily::kLlama4);
  EXPECT_EQ(c.model_type, "llama4");
  EXPECT_EQ(c.tensor_prefix, "language_model.model.");
  EXPECT_EQ(c.lm_head_name, "language_model.lm_head.weight");
  EXPECT_EQ(c.hidden_size, 5120);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.num_attention_heads, 40);
  EXPECT_EQ(c.num_key_value_heads, 8);
  EXPECT_EQ(c.intermediate_size, 16384);
  EXPECT_EQ(c.moe_intermediate_size, 8192);
  EXPECT_EQ(c.shared_expert_intermediate_size, 8192);
  EXPECT_FALSE(c.shared_expert_gate);
  EXPECT_EQ(c.num_experts, 16);
  EXPECT_EQ(c.num_experts_per_tok, 1);
  EXPECT_EQ(c.expert_layout, ExpertLayout::kLlama4Fused);
  EXPECT_EQ(c.router_scoring, RouterScoring::kSigmoidTopK);
  EXPECT_TRUE(c.router_scales_input);
  EXPECT_EQ(c.qk_norm, QkNorm::kL2);
  EXPECT_EQ(c.rope_style, RopeStyle::kInterleaved);
  EXPECT_EQ(c.rope_scaling.type, "llama3");
  EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 16.0);
  EXPECT_DOUBLE_EQ(c.rope_scaling.high_freq_factor, 1.0);
  EXPECT_EQ(c.attention_chunk_size, 8192);
  EXPECT_TRUE(c.attn_temperature_tuning);  // written as 4 in the released config
  EXPECT_DOUBLE_EQ(c.floor_scale, 8192.0);
  EXPECT_DOUBLE_EQ(c.attn_scale, 0.1);
  EXPECT_EQ(c.bos_token_id, 200000);
  EXPECT_EQ(c.eos_token_ids, std::vector<int64_t>({200001, 200007, 200008}));
  ASSERT_EQ(c.layer_uses_rope.size(), 48u);
  for (int i = 0; i < 48; ++i) EXPECT_EQ(c.layer_uses_rope[i], i % 4 != 3) << i;
  EXPECT_EQ(c.layer_is_moe, std::vector<bool>(48, true));
  EXPECT_EQ(c.ignored_tensor_prefixes,
            std::vector<std::string>({"vision_model.", "multi_modal_projector."}));
}

TEST(ModelConfigTest, Llama4TextInterleavedWithDefaults) {
  ModelConfig c = ParseOk(R"({"model_type": "llama4_text", "vocab_size": 100, "hidden_size": 64,
      "num_hidden_layers": 8, "num_attention_heads": 4, "num_key_value_heads": 2,
      "intermediate_size": 32, "intermediate_size_mlp": 96, "num_local_experts": 4,
      "num_experts_per_tok": 1, "interleave_moe_layer_step": 2, "use_qk_norm": false,
      "attention_chunk_size": null})");
  EXPECT_EQ(c.tensor_prefix, "model.");
  EXPECT_EQ(c.lm_head_name, "lm_head.weight");
  EXPECT_EQ(c.head_dim, 128);  // Llama4TextConfig's default when the field is absent
  EXPECT_EQ(c.layer_is_moe,
            std::vector<bool>({false, true, false, true, false, true, false, true}));
  EXPECT_EQ(c.layer_uses_rope,
            std::vector<bool>({true, true, true, false, true, true, true, false}));
  EXPECT_EQ(c.qk_norm, QkNorm::kNone);
  EXPECT_EQ(c.attention_chunk_size, 0);
  EXPECT_EQ(c.intermediate_size, 96);
  EXPECT_TRUE(c.attn_temperature_tuning);
  EXPECT_DOUBLE_EQ(c.rope_theta, 500000.0);
  EXPECT_TRUE(c.ignored_tensor_prefixes.empty());

  ModelConfig listed = ParseOk(R"({"model_type": "llama4_text", "vocab_size": 100,
      "hidden_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4, "head_dim": 16,
      "num_key_value_heads": 4,
      "intermediate_size": 32, "intermediate_size_mlp": 96, "num_local_experts": 4,
      "num_experts_per_tok": 1, "interleave_moe_layer_step": 2, "moe_layers": [0, 2]})");
  EXPECT_EQ(listed.layer_is_moe, std::vector<bool>({true, false, true}));  // moe_layers wins
  EXPECT_EQ(listed.head_dim, 16);
}

absl::Status ParseError(std::string_view text) { return ParseModelConfig(text).status(); }

TEST(ModelConfigTest, ParseErrorsNameTheField) {
  absl::Status s = ParseError("{not json");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  s = ParseError("[1, 2]");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  s = ParseError(R"({"vocab_size": 10})");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("model_type"), std::string::npos) << s;

  std::string bad_type = kMixtral8x7B;
  bad_type.replace(bad_type.find("\"hidden_size\": 4096"), 19, "\"hidden_size\": \"4096\"");
  s = ParseError(bad_type);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("hidden_size"), std::string::npos) << s;
  EXPECT_NE(s.message().find("integer"), std::string::npos) << s;
  EXPECT_NE(s.message().find("string"), std::string::npos) << s;

  std::string bad_eos = kMixtral8x7B;
  bad_eos.replace(bad_eos.find("\"eos_token_id\": 2"), 17, "\"eos_token_id\": [2, \"x\"]");
  s = ParseError(bad_eos);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("eos_token_id"), std::string::npos) << s;

  std::string missing = kMixtral8x7B;
  missing.replace(missing.find("\"num_local_experts\": 8,"), 23, "");
  s = ParseError(missing);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("num_local_experts"), std::string::npos) << s;

  std::string too_many = kMixtral8x7B;
  too_many.replace(too_many.find("\"num_experts_per_tok\": 2"), 24, "\"num_experts_per_tok\": 9");
  s = ParseError(too_many);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;

  std::string nested = Llama4ScoutConfig();
  nested.replace(nested.find("\"use_qk_norm\": true"), 19, "\"use_qk_norm\": \"yes\"");
  s = ParseError(nested);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("text_config.use_qk_norm"), std::string::npos) << s;

  s = ParseError(R"({"model_type": "llama4", "vocab_size": 10})");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("text_config"), std::string::npos) << s;
}

TEST(ModelConfigTest, UnsupportedThingsAreUnimplemented) {
  absl::Status s = ParseError(R"({"model_type": "deepseek_v3", "vocab_size": 10})");
  EXPECT_EQ(s.code(), absl::StatusCode::kUnimplemented) << s;
  EXPECT_NE(s.message().find("deepseek_v3"), std::string::npos) << s;
  s = ParseError(R"({"model_type": "gpt2"})");
  EXPECT_EQ(s.code(), absl::StatusCode::kUnimplemented) << s;

  std::string yarn = kLlama31_8B;
  yarn.replace(yarn.find("\"llama3\""), 8, "\"yarn\"");
  s = ParseError(yarn);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnimplemented) << s;
  EXPECT_NE(s.message().find("rope_scaling.rope_type"), std::string::npos) << s;
  EXPECT_NE(s.message().find("yarn"), std::string::npos) << s;

  std::string window = kQwen15MoeA27B;
  window.replace(window.find("\"use_sliding_window\": false"), 27, "\"use_sliding_window\": true");
  s = ParseError(window);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnimplemented) << s;
  EXPECT_NE(s.message().find("use_sliding_window"), std::string::npos) << s;

  std::string mixtral_window = kMixtral8x7B;
  mixtral_window.replace(mixtral_window.find("\"sliding_window\": null"), 22,
                         "\"sliding_window\": 4096");
  s = ParseError(mixtral_window);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnimplemented) << s;
  EXPECT_NE(s.message().find("sliding_window"), std::string::npos) << s;
  mixtral_window.replace(mixtral_window.find("\"sliding_window\": 4096"), 22,
                         "\"sliding_window\": 32768");  // = max_position_embeddings: no effect
  EXPECT_TRUE(ParseModelConfig(mixtral_window).ok());

  std::string gelu = kOlmoe1B7B;
  gelu.replace(gelu.find("\"silu\""), 6, "\"gelu\"");
  s = ParseError(gelu);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnimplemented) << s;
  EXPECT_NE(s.message().find("hidden_act"), std::string::npos) << s;

  std::string mlp_bias = kLlama31_8B;
  mlp_bias.replace(mlp_bias.find("\"mlp_bias\": false"), 17, "\"mlp_bias\": true");
  s = ParseError(mlp_bias);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnimplemented) << s;
  EXPECT_NE(s.message().find("mlp_bias"), std::string::npos) << s;
}

TEST(ModelConfigTest, FamilyNames) {
  EXPECT_EQ(ModelFamilyName(ModelFamily::kQwen3Moe), "qwen3_moe");
  EXPECT_EQ(*ModelFamilyFromType("llama4_text"), ModelFamily::kLlama4);
  EXPECT_EQ(*ModelFamilyFromType("olmoe"), ModelFamily::kOlmoe);
  EXPECT_EQ(ModelFamilyFromType("bert").status().code(), absl::StatusCode::kUnimplemented);
}

TEST(ModelConfigTest, LoadMissingDirectoryIsNotFound) {
  absl::StatusOr<ModelConfig> c = LoadModelConfig("/nonexistent/switchyard/model");
  EXPECT_EQ(c.status().code(), absl::StatusCode::kNotFound) << c.status();
}

}  // namespace
}  // namespace switchyard
