// The model maker: writes a small, random-weight Hugging Face checkpoint directory for one model
// family (config.json and generation_config.json as transformers writes them, model.safetensors or
// shards plus model.safetensors.index.json, tokenizer.json and tokenizer_config.json), so tests,
// golden references and demos run on every family without downloading anything.
//
// The defaults exercise each family's features at toy size: Llama with llama3 RoPE scaling whose
// original context (32) is short enough that scaling changes frequencies; Qwen2-MoE with a shared
// expert and one dense layer; Qwen3-MoE with head_dim * heads != hidden; OLMoE with clip_qkv;
// Llama 4 with MoE on every second layer, a NoPE layer, chunked attention (chunk 8) and
// temperature tuning with floor_scale 4. Weights are deterministic in (seed, tensor name).
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/safetensors.h"

namespace switchyard {

struct MakeModelOptions {
  // Hugging Face model_type: llama, mixtral, qwen2_moe, qwen3_moe, olmoe, llama4 (the multimodal
  // wrapper: text_config, tensors under "language_model.", plus two vision tensors the text engine
  // ignores) or llama4_text.
  std::string family = "mixtral";
  std::filesystem::path out_dir;
  int64_t num_layers = 4;
  int64_t hidden_size = 64;
  int64_t intermediate_size = 128;     // dense FFN: Llama, Qwen dense layers, Llama 4 _mlp
  int64_t moe_intermediate_size = 32;  // each routed expert (and Llama 4's shared expert)
  int64_t num_experts = 8;
  int64_t top_k = 0;  // 0: family default (2; Llama 4: 1)
  int64_t num_heads = 4;
  int64_t num_kv_heads = 2;
  int64_t head_dim = 0;  // 0: family default (16; Qwen3-MoE: 32)
  int64_t vocab_size = 512;
  int64_t shared_expert_size = 64;  // Qwen2-MoE shared expert
  DType dtype = DType::kF32;
  int64_t num_shards = 1;  // 1: model.safetensors; N: N shards and an index
  uint64_t seed = 0;
  bool tie_embeddings = false;
};

// Writes the checkpoint into options.out_dir (created if needed; earlier model*.safetensors and
// index files there are removed). INVALID_ARGUMENT for inconsistent sizes, UNIMPLEMENTED for an
// unknown family, or the error of writing a file.
absl::Status MakeModel(const MakeModelOptions& options);

// Parses the command line of switchyard-make-model (arguments after argv[0]): --family, --out,
// --layers, --hidden-size, --intermediate-size, --moe-intermediate-size, --experts, --top-k,
// --heads, --kv-heads, --head-dim, --vocab-size, --shared-expert-size, --dtype f32|bf16|f16,
// --shards, --seed, --tie-embeddings; "--flag value" or "--flag=value", '_' or '-' alike.
absl::StatusOr<MakeModelOptions> ParseMakeModelArgs(const std::vector<std::string>& args);

// Usage text for --help.
std::string MakeModelUsage();

}  // namespace switchyard
