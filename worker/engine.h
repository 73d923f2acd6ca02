// The model forward pass: one call runs a batch of sequences (prefill chunks and single decode
// tokens mixed) through every layer and returns logits. Written once against the Backend seam.
//
// KV cache: the engine owns the physical blocks ([num_blocks, block_size, kv_heads * head_dim] per
// layer, keys and values); which blocks a sequence uses is the caller's business (the block table
// in each BatchEntry), so a scheduler elsewhere can do the accounting.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/model_config.h"
#include "common/safetensors.h"
#include "worker/backend/backend.h"
#include "worker/backend/scratch.h"
#include "worker/model_weights.h"
#include "worker/moe_block.h"

namespace switchyard {

struct EngineOptions {
  int64_t block_size = 16;          // tokens per KV block
  int64_t num_kv_blocks = 0;        // 0: derive from kv_cache_bytes
  int64_t kv_cache_bytes = 256ll << 20;
  WeightLoadOptions weights;        // e.g. load only some experts
};

// One sequence's work in a forward call.
struct BatchEntry {
  std::span<const int32_t> token_ids;    // tokens to run now (>= 1)
  int64_t start_position = 0;            // tokens of this sequence already in the KV cache
  std::span<const int32_t> block_table;  // blocks covering start_position + token_ids.size()
  bool all_logits = false;               // logits of every token, else only of the last
};

struct ForwardOptions {
  // Copy the logits to ForwardOutput::logits. Off when the caller samples on the device
  // (Backend::SampleTokens on ForwardOutput::device_logits).
  bool logits_to_host = true;
};

struct ForwardOutput {
  int64_t vocab_size = 0;
  std::vector<float> logits;        // [num_rows, vocab], entries in batch order (logits_to_host)
  std::vector<int64_t> first_row;   // per entry, its first row in logits
  // The same logits in the backend's memory (F32 [num_rows, vocab]); valid until the next Forward.
  Tensor device_logits;
};

// Not thread-safe: one thread drives an engine.
class Engine {
 public:
  // Reads config.json and the safetensors in `model_dir`, validates and loads the weights.
  static absl::StatusOr<std::unique_ptr<Engine>> Load(const std::filesystem::path& model_dir,
                                                      std::unique_ptr<Backend> backend,
                                                      const EngineOptions& options = {});
  static absl::StatusOr<std::unique_ptr<Engine>> Create(const ModelConfig& config,
                                                        const Checkpoint& checkpoint,
                                                        std::unique_ptr<Backend> backend,
                                                        const EngineOptions& options = {});

  const ModelConfig& config() const { return config_; }
  int64_t block_size() const { return block_size_; }
  int64_t num_kv_blocks() const { return num_kv_blocks_; }
  uint64_t weight_bytes_loaded() const { return weight_bytes_loaded_; }
  // Bytes held in the backend's memory: resident weights plus the KV cache.
  uint64_t resident_bytes() const;
  Backend& backend() { return *backend_; }
  const Backend& backend() const { return *backend_; }
  // The loaded weights (an expert-parallel executor runs its local experts from them).
  const ModelWeights& weights() const { return weights_; }

  // Runs the batch. INVALID_ARGUMENT for a bad entry (empty tokens, token id out of the vocab,
  // block table too short or naming a block out of range) before any state changes.
  // An empty batch runs ForwardIdle() and returns no logits.
  absl::Status Forward(std::span<const BatchEntry> batch, ForwardOutput* output,
                       const ForwardOptions& options = {});

  // A step with no tokens on this rank: runs every MoE layer's executor with zero rows, so that an
  // expert-parallel rank takes part in the collectives of a step its peers run (lockstep). Touches
  // no KV cache. With the local executor it does nothing useful but is harmless.
  absl::Status ForwardIdle();

  // Replaces the MoE executor (default: every expert computed locally). The data plane installs
  // one that dispatches to other ranks.
  void SetMoeExecutor(std::unique_ptr<MoeExecutor> executor) { moe_executor_ = std::move(executor); }

 private:
  Engine(ModelConfig config, std::unique_ptr<Backend> backend);
  absl::Status AllocateKvCache(const EngineOptions& options);
  absl::Status ValidateBatch(std::span<const BatchEntry> batch) const;
  absl::Status PrepareStep(std::span<const BatchEntry> batch);
  absl::Status AttentionBlock(int64_t layer_idx, const Tensor& x);
  absl::Status FfnBlock(int64_t layer_idx, const Tensor& x);
  absl::Status ComputeLogits(std::span<const BatchEntry> batch, const Tensor& x,
                             const ForwardOptions& options, ForwardOutput* output);

  ModelConfig config_;
  std::unique_ptr<Backend> backend_;
  ModelWeights weights_;
  std::unique_ptr<MoeExecutor> moe_executor_;
  uint64_t weight_bytes_loaded_ = 0;
  int64_t block_size_ = 0;
  int64_t num_kv_blocks_ = 0;
  std::vector<Tensor> k_cache_, v_cache_;  // per layer
  std::vector<float> inv_freq_;

  // Per-step host state, sized once per step shape.
  std::vector<int32_t> step_tokens_, step_positions_;
  std::vector<int64_t> step_slots_;
  std::vector<int32_t> logit_rows_;  // rows of the step's hidden states that get logits
  std::vector<kernels::cpu::AttentionSeq> step_seqs_;
  std::vector<float> step_temperature_scale_;  // Llama 4 NoPE-layer query scale per token
  std::unique_ptr<ScratchArena> scratch_;
  std::vector<int32_t> topk_ids_;
  std::vector<float> topk_weights_;
};

// RoPE inverse frequencies for the config (with Llama 3 / linear scaling), head_dim / 2 values.
std::vector<float> ComputeRopeInvFreq(const ModelConfig& config);

}  // namespace switchyard
