// Single-process generation on one engine: prefill in chunks, then decode token by token, sampling
// with per-request parameters, detokenizing incrementally and checking stop conditions. This is
// what `switchyard-run` drives; the cluster's scheduler replaces it with continuous batching.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/stop_checker.h"
#include "common/tokenizer.h"
#include "worker/engine.h"
#include "worker/kv_blocks.h"
#include "worker/sampler.h"

namespace switchyard {

struct GenerationRequest {
  std::vector<int32_t> prompt_ids;
  SamplingParams sampling;
  StopConfig stop;
  bool skip_special_tokens = true;
  bool return_prompt_logits = false;  // every prompt position's logits, [num_prompt, vocab]
  int64_t prefill_chunk_tokens = 512;
};

struct GenerationResult {
  std::vector<int32_t> output_ids;
  std::vector<float> output_logprobs;
  std::string text;
  StopResult finish;  // reason and stop string / token
  std::vector<float> prompt_logits;
  int64_t num_prefill_steps = 0;
  double prefill_seconds = 0.0;
  double decode_seconds = 0.0;
};

// Called with each piece of text as it becomes final (never a partial UTF-8 character).
using TextCallback = std::function<void(std::string_view text_delta)>;

// Owns the engine's block pool and a sampler; runs one request at a time. Not thread-safe.
class Generator {
 public:
  // tokenizer may be null: then no text is produced (ids only) and stop strings are rejected.
  Generator(Engine& engine, const Tokenizer* tokenizer);

  // INVALID_ARGUMENT for an empty prompt, a token id outside the vocabulary, bad sampling values
  // or a prompt + max_tokens longer than the model's context; RESOURCE_EXHAUSTED when the KV cache
  // cannot hold the sequence.
  absl::StatusOr<GenerationResult> Generate(const GenerationRequest& request,
                                            const TextCallback& on_text = nullptr);

 private:
  absl::Status Validate(const GenerationRequest& request) const;
  absl::Status EnsureBlocks(int64_t num_tokens, std::vector<int32_t>* blocks);

  Engine& engine_;
  const Tokenizer* tokenizer_;
  BlockAllocator blocks_;
  Sampler sampler_;
};

}  // namespace switchyard
