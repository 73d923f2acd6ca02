#include "common/tensor_names.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace switchyard {
namespace {

// Appends tensors of one decoder layer; `layer` is the "…layers.{i}." prefix.
class LayerWriter {
 public:
  LayerWriter(std::vector<TensorSpec>* out, std::string layer, int64_t layer_idx)
      : out_(out), layer_(std::move(layer)), layer_idx_(layer_idx) {}

  void Add(std::string_view suffix, std::vector<int64_t> shape, int64_t expert_idx = -1,
           bool fused = false) {
    out_->push_back(
        TensorSpec{absl::StrCat(layer_, absl::string_view(suffix.data(), suffix.size())),
                   std::move(shape), layer_idx_, expert_idx, fused});
  }
  // A SwiGLU MLP: gate/up [inter, hidden], down [hidden, inter].
  void AddMlp(std::string_view prefix, int64_t hidden, int64_t inter, int64_t expert_idx = -1) {
    std::string p(prefix);
    Add(p + "gate_proj.weight", {inter, hidden}, expert_idx);
    Add(p + "up_proj.weight", {inter, hidden}, expert_idx);
    Add(p + "down_proj.weight", {hidden, inter}, expert_idx);
  }

 private:
  std::vector<TensorSpec>* out_;
  std::string layer_;
  int64_t layer_idx_;
};

void AddAttention(const ModelConfig& c, LayerWriter& w) {
  const int64_t h = c.hidden_size;
  const int64_t q_dim = c.num_attention_heads * c.head_dim;
  const int64_t kv_dim = c.num_key_value_heads * c.head_dim;
  w.Add("self_attn.q_proj.weight", {q_dim, h});
  if (c.attention_bias) w.Add("self_attn.q_proj.bias", {q_dim});
  w.Add("self_attn.k_proj.weight", {kv_dim, h});
  if (c.attention_bias) w.Add("self_attn.k_proj.bias", {kv_dim});
  w.Add("self_attn.v_proj.weight", {kv_dim, h});
  if (c.attention_bias) w.Add("self_attn.v_proj.bias", {kv_dim});
  w.Add("self_attn.o_proj.weight", {h, q_dim});
  if (c.o_proj_bias) w.Add("self_attn.o_proj.bias", {h});
  if (c.qk_norm == QkNorm::kPerHeadRms) {
    w.Add("self_attn.q_norm.weight", {c.head_dim});
    w.Add("self_attn.k_norm.weight", {c.head_dim});
  } else if (c.qk_norm == QkNorm::kFlatRms) {
    w.Add("self_attn.q_norm.weight", {q_dim});
    w.Add("self_attn.k_norm.weight", {kv_dim});
  }
}

void AddMoe(const ModelConfig& c, LayerWriter& w) {
  const int64_t h = c.hidden_size;
  const int64_t e = c.num_experts;
  const int64_t inter = c.moe_intermediate_size;
  switch (c.expert_layout) {
    case ExpertLayout::kNone:
      break;
    case ExpertLayout::kMixtralW123:
      w.Add("block_sparse_moe.gate.weight", {e, h});
      for (int64_t x = 0; x < e; ++x) {
        std::string p = absl::StrCat("block_sparse_moe.experts.", x, ".");
        w.Add(p + "w1.weight", {inter, h}, x);
        w.Add(p + "w2.weight", {h, inter}, x);
        w.Add(p + "w3.weight", {inter, h}, x);
      }
      break;
    case ExpertLayout::kPerExpertMlp:
      w.Add("mlp.gate.weight", {e, h});
      for (int64_t x = 0; x < e; ++x) w.AddMlp(absl::StrCat("mlp.experts.", x, "."), h, inter, x);
      break;
    case ExpertLayout::kLlama4Fused:
      w.Add("feed_forward.router.weight", {e, h});
      // Stored as x @ W (not Linear's W x): gate_up [E, hidden, 2*inter], gate first then up.
      w.Add("feed_forward.experts.gate_up_proj", {e, h, 2 * inter}, -1, /*fused=*/true);
      w.Add("feed_forward.experts.down_proj", {e, inter, h}, -1, /*fused=*/true);
      break;
  }
  if (c.shared_expert_intermediate_size > 0) {
    const bool llama4 = c.expert_layout == ExpertLayout::kLlama4Fused;
    w.AddMlp(llama4 ? "feed_forward.shared_expert." : "mlp.shared_expert.", h,
             c.shared_expert_intermediate_size);
    if (c.shared_expert_gate) w.Add("mlp.shared_expert_gate.weight", {1, h});
  }
}

}  // namespace

std::string LayerTensorName(const ModelConfig& config, int64_t layer_idx, std::string_view suffix) {
  return absl::StrCat(config.tensor_prefix, "layers.", layer_idx, ".",
                      absl::string_view(suffix.data(), suffix.size()));
}

std::vector<TensorSpec> ExpectedTensors(const ModelConfig& config) {
  const int64_t h = config.hidden_size;
  std::vector<TensorSpec> out;
  out.push_back({config.tensor_prefix + "embed_tokens.weight", {config.vocab_size, h}});
  for (int64_t i = 0; i < config.num_hidden_layers; ++i) {
    LayerWriter w(&out, LayerTensorName(config, i, ""), i);
    w.Add("input_layernorm.weight", {h});
    AddAttention(config, w);
    w.Add("post_attention_layernorm.weight", {h});
    const bool moe = i < static_cast<int64_t>(config.layer_is_moe.size()) && config.layer_is_moe[i];
    if (moe) {
      AddMoe(config, w);
    } else {
      const bool llama4 = config.family == ModelFamily::kLlama4;
      w.AddMlp(llama4 ? "feed_forward." : "mlp.", h, config.intermediate_size);
    }
  }
  out.push_back({config.tensor_prefix + "norm.weight", {h}});
  if (!config.lm_head_name.empty() && !config.tie_word_embeddings) {
    out.push_back({config.lm_head_name, {config.vocab_size, h}});
  }
  return out;
}

}  // namespace switchyard
