#include "worker/model_weights.h"

#include <algorithm>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "common/tensor_names.h"

namespace switchyard {
namespace {

class Loader {
 public:
  Loader(const Checkpoint& checkpoint, Backend& backend) : checkpoint_(checkpoint), backend_(backend) {}

  absl::StatusOr<Tensor> Load(const std::string& name, std::vector<int64_t> shape) {
    SY_RETURN_IF_ERROR(checkpoint_.LoadFloat32(name, shape, &host_));
    return Upload(std::move(shape));
  }

  // Rows [begin, end) of the outermost dimension of a tensor whose full shape is `shape`.
  absl::StatusOr<Tensor> LoadRows(const std::string& name, std::vector<int64_t> shape,
                                  int64_t begin, int64_t end) {
    SY_RETURN_IF_ERROR(checkpoint_.LoadFloat32Rows(name, shape, begin, end, &host_));
    shape[0] = end - begin;
    return Upload(std::move(shape));
  }

 private:
  absl::StatusOr<Tensor> Upload(std::vector<int64_t> shape) {
    SY_ASSIGN_OR_RETURN(Tensor t, backend_.Empty(backend_.activation_dtype(), std::move(shape)));
    SY_RETURN_IF_ERROR(backend_.CopyFromHost(host_, t));
    resident_bytes_ += static_cast<uint64_t>(t.num_bytes());
    return t;
  }

 public:
  uint64_t resident_bytes() const { return resident_bytes_; }

 private:
  uint64_t resident_bytes_ = 0;

  const Checkpoint& checkpoint_;
  Backend& backend_;
  std::vector<float> host_;  // reused staging buffer
};

absl::Status LoadAttention(const ModelConfig& c, int64_t i, Loader& l, LayerWeights& w) {
  const int64_t h = c.hidden_size, q_dim = c.num_attention_heads * c.head_dim,
                kv_dim = c.num_key_value_heads * c.head_dim;
  auto name = [&](std::string_view suffix) { return LayerTensorName(c, i, suffix); };
  SY_ASSIGN_OR_RETURN(w.input_norm, l.Load(name("input_layernorm.weight"), {h}));
  SY_ASSIGN_OR_RETURN(w.post_attention_norm, l.Load(name("post_attention_layernorm.weight"), {h}));
  SY_ASSIGN_OR_RETURN(w.q_proj, l.Load(name("self_attn.q_proj.weight"), {q_dim, h}));
  SY_ASSIGN_OR_RETURN(w.k_proj, l.Load(name("self_attn.k_proj.weight"), {kv_dim, h}));
  SY_ASSIGN_OR_RETURN(w.v_proj, l.Load(name("self_attn.v_proj.weight"), {kv_dim, h}));
  SY_ASSIGN_OR_RETURN(w.o_proj, l.Load(name("self_attn.o_proj.weight"), {h, q_dim}));
  if (c.attention_bias) {
    SY_ASSIGN_OR_RETURN(w.q_bias, l.Load(name("self_attn.q_proj.bias"), {q_dim}));
    SY_ASSIGN_OR_RETURN(w.k_bias, l.Load(name("self_attn.k_proj.bias"), {kv_dim}));
    SY_ASSIGN_OR_RETURN(w.v_bias, l.Load(name("self_attn.v_proj.bias"), {kv_dim}));
  }
  if (c.o_proj_bias) {
    SY_ASSIGN_OR_RETURN(w.o_bias, l.Load(name("self_attn.o_proj.bias"), {h}));
  }
  if (c.qk_norm == QkNorm::kPerHeadRms) {
    SY_ASSIGN_OR_RETURN(w.q_norm, l.Load(name("self_attn.q_norm.weight"), {c.head_dim}));
    SY_ASSIGN_OR_RETURN(w.k_norm, l.Load(name("self_attn.k_norm.weight"), {c.head_dim}));
  } else if (c.qk_norm == QkNorm::kFlatRms) {
    SY_ASSIGN_OR_RETURN(w.q_norm, l.Load(name("self_attn.q_norm.weight"), {q_dim}));
    SY_ASSIGN_OR_RETURN(w.k_norm, l.Load(name("self_attn.k_norm.weight"), {kv_dim}));
  }
  return absl::OkStatus();
}

absl::StatusOr<DenseFfnWeights> LoadSwiGlu(const ModelConfig& c, int64_t i, Loader& l,
                                          const std::string& prefix, int64_t inter) {
  const int64_t h = c.hidden_size;
  DenseFfnWeights w;
  SY_ASSIGN_OR_RETURN(w.gate, l.Load(LayerTensorName(c, i, prefix + "gate_proj.weight"), {inter, h}));
  SY_ASSIGN_OR_RETURN(w.up, l.Load(LayerTensorName(c, i, prefix + "up_proj.weight"), {inter, h}));
  SY_ASSIGN_OR_RETURN(w.down, l.Load(LayerTensorName(c, i, prefix + "down_proj.weight"), {h, inter}));
  return w;
}

// The family's name of the MoE block inside a layer.
std::string MoePrefix(const ModelConfig& c) {
  switch (c.expert_layout) {
    case ExpertLayout::kMixtralW123: return "block_sparse_moe.";
    case ExpertLayout::kLlama4Fused: return "feed_forward.";
    default: return "mlp.";
  }
}

absl::Status LoadExperts(const ModelConfig& c, int64_t i, Loader& l,
                         const WeightLoadOptions& options, LayerWeights& w) {
  const int64_t h = c.hidden_size, inter = c.moe_intermediate_size, num_experts = c.num_experts;
  const std::string p = MoePrefix(c);
  auto wanted = [&](int64_t e) { return !options.load_expert || options.load_expert(i, e); };
  w.experts.assign(num_experts, ExpertWeights{});
  if (c.expert_layout == ExpertLayout::kLlama4Fused) {
    // Each wanted expert's rows of the fused [E, ...] tensors, and nothing else: a balanced
    // placement scatters a rank's experts, so a contiguous range could read most of the layer.
    const std::string gate_up_name = LayerTensorName(c, i, p + "experts.gate_up_proj");
    const std::string down_name = LayerTensorName(c, i, p + "experts.down_proj");
    for (int64_t e = 0; e < num_experts; ++e) {
      if (!wanted(e)) continue;
      ExpertWeights& x = w.experts[e];
      x.fused = true;
      SY_ASSIGN_OR_RETURN(Tensor gate_up, l.LoadRows(gate_up_name, {num_experts, h, 2 * inter}, e, e + 1));
      SY_ASSIGN_OR_RETURN(Tensor down, l.LoadRows(down_name, {num_experts, inter, h}, e, e + 1));
      x.gate_up = gate_up.Reshape({h, 2 * inter});
      x.down = down.Reshape({inter, h});
    }
    return absl::OkStatus();
  }
  const bool mixtral = c.expert_layout == ExpertLayout::kMixtralW123;
  for (int64_t e = 0; e < num_experts; ++e) {
    if (!wanted(e)) continue;
    const std::string ep = absl::StrCat(p, "experts.", e, ".");
    ExpertWeights& x = w.experts[e];
    SY_ASSIGN_OR_RETURN(x.gate, l.Load(LayerTensorName(c, i, ep + (mixtral ? "w1.weight" : "gate_proj.weight")), {inter, h}));
    SY_ASSIGN_OR_RETURN(x.up, l.Load(LayerTensorName(c, i, ep + (mixtral ? "w3.weight" : "up_proj.weight")), {inter, h}));
    SY_ASSIGN_OR_RETURN(x.down, l.Load(LayerTensorName(c, i, ep + (mixtral ? "w2.weight" : "down_proj.weight")), {h, inter}));
  }
  return absl::OkStatus();
}

absl::Status LoadFfn(const ModelConfig& c, int64_t i, Loader& l, const WeightLoadOptions& options,
                     LayerWeights& w) {
  const bool llama4 = c.expert_layout == ExpertLayout::kLlama4Fused;
  if (!c.layer_is_moe[i]) {
    SY_ASSIGN_OR_RETURN(w.dense, LoadSwiGlu(c, i, l, llama4 ? "feed_forward." : "mlp.",
                                            c.intermediate_size));
    return absl::OkStatus();
  }
  const std::string p = MoePrefix(c);
  const std::string router = llama4 ? "router.weight" : "gate.weight";
  SY_ASSIGN_OR_RETURN(w.router, l.Load(LayerTensorName(c, i, p + router), {c.num_experts, c.hidden_size}));
  SY_RETURN_IF_ERROR(LoadExperts(c, i, l, options, w));
  if (c.shared_expert_intermediate_size > 0) {
    SY_ASSIGN_OR_RETURN(w.shared_expert, LoadSwiGlu(c, i, l, p + "shared_expert.",
                                                    c.shared_expert_intermediate_size));
  }
  if (c.shared_expert_gate) {
    SY_ASSIGN_OR_RETURN(w.shared_expert_gate,
                        l.Load(LayerTensorName(c, i, p + "shared_expert_gate.weight"), {1, c.hidden_size}));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ModelWeights> LoadModelWeights(const ModelConfig& config,
                                              const Checkpoint& checkpoint, Backend& backend,
                                              const WeightLoadOptions& options) {
  Loader loader(checkpoint, backend);
  ModelWeights weights;
  const int64_t v = config.vocab_size, h = config.hidden_size;
  SY_ASSIGN_OR_RETURN(weights.embed_tokens, loader.Load(config.tensor_prefix + "embed_tokens.weight", {v, h}));
  SY_ASSIGN_OR_RETURN(weights.final_norm, loader.Load(config.tensor_prefix + "norm.weight", {h}));
  if (config.tie_word_embeddings || config.lm_head_name.empty()) {
    weights.lm_head = weights.embed_tokens;
  } else {
    SY_ASSIGN_OR_RETURN(weights.lm_head, loader.Load(config.lm_head_name, {v, h}));
  }
  weights.layers.resize(config.num_hidden_layers);
  for (int64_t i = 0; i < config.num_hidden_layers; ++i) {
    SY_RETURN_IF_ERROR(LoadAttention(config, i, loader, weights.layers[i]));
    SY_RETURN_IF_ERROR(LoadFfn(config, i, loader, options, weights.layers[i]));
  }
  weights.resident_bytes = loader.resident_bytes();
  return weights;
}

}  // namespace switchyard
