// The model description the engine runs from: one struct for every supported family, parsed from a
// Hugging Face config.json. Family differences are expressed as data (router scoring, QK-norm kind,
// which layers are MoE, which use RoPE, ...) so the engine has one code path with variants.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace switchyard {

// Hugging Face model_type values we accept. kLlama4 covers both "llama4" (the text model inside
// Llama4ForConditionalGeneration: config in "text_config", tensors under "language_model.") and
// "llama4_text" (Llama4ForCausalLM).
enum class ModelFamily { kLlama, kMixtral, kQwen2Moe, kQwen3Moe, kOlmoe, kLlama4 };

std::string_view ModelFamilyName(ModelFamily family);  // "llama", "mixtral", ..., "llama4"

enum class RouterScoring {
  kSoftmax,      // softmax over all experts, then top-k (Mixtral, Qwen, OLMoE)
  kSigmoidTopK,  // top-k on the logits, then sigmoid of the chosen logits (Llama 4)
};

enum class QkNorm {
  kNone,
  kPerHeadRms,  // RMSNorm over head_dim with a [head_dim] weight, before RoPE (Qwen3-MoE)
  kFlatRms,     // RMSNorm over the whole q (k) projection output, before reshape (OLMoE)
  kL2,          // weightless RMS norm per head (x * rsqrt(mean(x^2) + eps)) after RoPE, on RoPE
                // layers only (Llama 4 calls it L2Norm)
};

enum class RopeStyle {
  kHalf,        // rotate_half: pairs (i, i + head_dim/2) (Llama, Mixtral, Qwen, OLMoE)
  kInterleaved, // complex pairs (2i, 2i+1) (Llama 4)
};

// Llama 3 style frequency scaling ("rope_type": "llama3"); "linear" and "default" also accepted.
struct RopeScaling {
  std::string type = "default";  // "default", "linear", "llama3"
  double factor = 1.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 8192;
};

// Which Hugging Face tensor layout the experts use.
enum class ExpertLayout {
  kNone,            // dense model
  kMixtralW123,     // block_sparse_moe.experts.{e}.w1/w2/w3.weight, router block_sparse_moe.gate
  kPerExpertMlp,    // mlp.experts.{e}.{gate,up,down}_proj.weight, router mlp.gate (Qwen, OLMoE)
  kLlama4Fused,     // feed_forward.experts.gate_up_proj [E,H,2I] and down_proj [E,I,H]
};

struct ModelConfig {
  std::string model_type;  // as written in config.json ("llama4" even when text_config is used)
  ModelFamily family = ModelFamily::kLlama;

  // Prefix of every decoder tensor: "model." or, for llama4, "language_model.model.".
  std::string tensor_prefix = "model.";
  // Name of the LM head tensor; empty when tie_word_embeddings (the embedding is reused).
  std::string lm_head_name = "lm_head.weight";

  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;
  int64_t head_dim = 0;
  int64_t max_position_embeddings = 0;
  double rms_norm_eps = 1e-5;
  bool tie_word_embeddings = false;
  bool attention_bias = false;  // q/k/v biases (Qwen2-MoE qkv_bias; attention_bias elsewhere)
  // o_proj bias: Llama, Qwen3-MoE, OLMoE and Llama 4 put a bias on o_proj too when
  // attention_bias is set (Qwen2-MoE never does). False in every released checkpoint.
  bool o_proj_bias = false;

  // Attention variants.
  double rope_theta = 10000.0;
  RopeStyle rope_style = RopeStyle::kHalf;
  RopeScaling rope_scaling;
  QkNorm qk_norm = QkNorm::kNone;
  double clip_qkv = 0.0;  // OLMoE: clamp q/k/v to [-clip, clip] when > 0
  // Per layer: whether RoPE is applied (Llama 4 NoPE layers have false).
  std::vector<bool> layer_uses_rope;
  // Llama 4: RoPE layers attend only within chunks of this many positions (0 = unlimited); NoPE
  // layers always attend to the whole causal prefix.
  int64_t attention_chunk_size = 0;
  // Llama 4: NoPE layers scale q by log(floor((pos + 1) / floor_scale) + 1) * attn_scale + 1.
  bool attn_temperature_tuning = false;
  double floor_scale = 8192.0;
  double attn_scale = 0.1;

  // Dense FFN (dense layers, Llama; Llama 4 "intermediate_size_mlp").
  int64_t intermediate_size = 0;

  // MoE.
  ExpertLayout expert_layout = ExpertLayout::kNone;
  int64_t num_experts = 0;  // routed experts; 0 for a dense model
  int64_t num_experts_per_tok = 0;
  int64_t moe_intermediate_size = 0;
  RouterScoring router_scoring = RouterScoring::kSoftmax;
  bool norm_topk_prob = false;        // renormalise the chosen top-k weights to sum to 1
  bool router_scales_input = false;   // Llama 4: expert input is x * score, output not weighted
  int64_t shared_expert_intermediate_size = 0;  // 0 = no shared expert
  bool shared_expert_gate = false;    // Qwen2-MoE: shared output * sigmoid(gate(x))
  // Per layer: whether the FFN is an MoE block (else a dense SwiGLU of intermediate_size).
  std::vector<bool> layer_is_moe;

  int64_t bos_token_id = -1;          // -1 when config.json has none (Qwen, OLMoE)
  std::vector<int64_t> eos_token_ids;  // config.json's eos_token_id, int or list

  // Checkpoint tensors whose names start with one of these are not part of the text model and are
  // neither loaded nor reported as extra (Llama 4's "vision_model." and "multi_modal_projector.").
  std::vector<std::string> ignored_tensor_prefixes;

  int64_t num_moe_layers() const;
};

// The family of a Hugging Face model_type ("llama4_text" and "llama4" both give kLlama4).
// UNIMPLEMENTED naming the model_type for anything else.
absl::StatusOr<ModelFamily> ModelFamilyFromType(std::string_view model_type);

// Parses config.json text. Returns INVALID_ARGUMENT naming the field for a missing or bad value,
// UNIMPLEMENTED for an unsupported model_type or feature (naming it).
absl::StatusOr<ModelConfig> ParseModelConfig(std::string_view config_json);

// Reads <dir>/config.json and parses it. NOT_FOUND if the file is missing.
absl::StatusOr<ModelConfig> LoadModelConfig(const std::filesystem::path& dir);

}  // namespace switchyard
