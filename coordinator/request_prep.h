// Turns a client's GenerateRequest into what the step loop needs: the prompt's token ids, the
// sampling parameters with every default resolved, and the stop configuration, all validated.
//
// Defaults (docs/api.md): temperature 1, top_p 1, repetition_penalty 1, max_tokens 256 (clamped
// to the context left when not given), a random seed when none is given, add_special_tokens and
// skip_special_tokens true. Every error is INVALID_ARGUMENT naming the field and the limit.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/stop_checker.h"
#include "common/tokenizer.h"
#include "switchyard/v1/inference.pb.h"
#include "worker/sampler.h"

namespace switchyard {

inline constexpr int64_t kDefaultMaxTokens = 256;

// What request preparation needs to know about the model. Not owned; outlives the requests.
struct ModelContext {
  const Tokenizer* tokenizer = nullptr;  // may be null for token-id-only serving (tests)
  int64_t vocab_size = 0;                // token ids must be in [0, vocab_size)
  int64_t max_model_len = 0;             // prompt + output tokens
  std::vector<int32_t> eos_token_ids;
};

struct PreparedRequest {
  std::string request_id;  // may be empty: the request manager assigns one
  std::vector<int32_t> prompt_token_ids;
  SamplingParams sampling;
  StopConfig stop;  // stop.max_tokens is the effective max_tokens
  std::optional<StopChecker> checker;  // built from `stop`; always set by PrepareRequest
  bool skip_special_tokens = true;
};

// INVALID_ARGUMENT naming the field: empty input, a token id outside the vocabulary, a prompt
// that fills the context, prompt + max_tokens over the context, any sampling or stopping field out
// of range. `random_seed` is used when the request has no seed.
absl::StatusOr<PreparedRequest> PrepareRequest(const v1::GenerateRequest& request,
                                               const ModelContext& model, uint64_t random_seed);

}  // namespace switchyard
