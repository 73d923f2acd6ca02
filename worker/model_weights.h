// The model's weights in a backend's memory, loaded from a Hugging Face checkpoint by the names in
// common/tensor_names.h. A worker may load only some routed experts (its shard); the others stay
// empty and are never touched.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "absl/status/statusor.h"
#include "common/model_config.h"
#include "common/safetensors.h"
#include "worker/backend/backend.h"

namespace switchyard {

// One routed expert's projections. Per-expert layouts hold gate/up/down as [I,H], [I,H], [H,I]
// (Linear); Llama 4's fused layout holds gate_up [H, 2I] and down [I, H] (MatMul), views of the
// fused [E, ...] tensors.
struct ExpertWeights {
  Tensor gate, up, down;
  Tensor gate_up;
  bool fused = false;
  bool loaded() const { return !down.empty(); }
};

struct DenseFfnWeights {
  Tensor gate, up, down;  // [I,H], [I,H], [H,I]
};

struct LayerWeights {
  Tensor input_norm, post_attention_norm;
  Tensor q_proj, k_proj, v_proj, o_proj;
  Tensor q_bias, k_bias, v_bias;  // empty unless attention_bias
  Tensor o_bias;                  // empty unless o_proj_bias
  Tensor q_norm, k_norm;          // empty unless the family has a weighted QK-norm
  DenseFfnWeights dense;          // dense layers (ModelConfig::layer_is_moe says which)
  Tensor router;                  // [E, H]
  std::vector<ExpertWeights> experts;  // size num_experts; unloaded ones empty
  DenseFfnWeights shared_expert;  // gate empty when the family has none
  Tensor shared_expert_gate;      // [1, H] (Qwen2-MoE) or empty
};

struct ModelWeights {
  Tensor embed_tokens;  // [V, H]
  Tensor final_norm;    // [H]
  Tensor lm_head;       // [V, H] (the embedding when tied)
  std::vector<LayerWeights> layers;
  uint64_t resident_bytes = 0;  // bytes the weights occupy in the backend's memory
};

struct WeightLoadOptions {
  // Which routed experts to load: (layer_idx, expert_idx) -> bool. Empty = all.
  std::function<bool(int64_t, int64_t)> load_expert;
};

// Loads every tensor the config names (the checkpoint must have passed ValidateCheckpoint).
// Errors name the tensor. Reports bytes through checkpoint.bytes_loaded().
absl::StatusOr<ModelWeights> LoadModelWeights(const ModelConfig& config,
                                              const Checkpoint& checkpoint, Backend& backend,
                                              const WeightLoadOptions& options = {});

}  // namespace switchyard
