// The Hugging Face tensor names and shapes of every supported family, derived from a ModelConfig.
// Used to validate a checkpoint (missing, extra, wrong shape), to load a subset (one rank's
// experts), and by the model maker to write one.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/model_config.h"

namespace switchyard {

// What a tensor is for; lets a loader pick a subset (e.g. only some experts).
struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
  int64_t layer_idx = -1;   // -1 for tensors outside the decoder layers
  int64_t expert_idx = -1;  // routed expert index, -1 otherwise; Llama 4's fused tensors hold all
  bool fused_experts = false;  // true for Llama 4's [E, ...] expert tensors
};

// Every tensor a checkpoint of this config must hold, in a stable order.
std::vector<TensorSpec> ExpectedTensors(const ModelConfig& config);

// Name builders (prefix included), so the engine never spells a tensor name itself.
std::string LayerTensorName(const ModelConfig& config, int64_t layer_idx, std::string_view suffix);

}  // namespace switchyard
