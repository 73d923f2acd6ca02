// Builds small but real Hugging Face tokenizer.json files for generated test checkpoints: a BPE
// vocabulary learned from a built-in multilingual corpus, in the style each family uses
// (byte-level BPE with the family's pre-tokenizer regex, or SentencePiece-style BPE with byte
// fallback), plus the family's special tokens.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/model_config.h"

namespace switchyard {

struct MadeTokenizer {
  std::string json;                // the tokenizer.json text
  int64_t vocab_size = 0;          // total ids including special tokens
  int64_t bos_token_id = -1;       // -1 when the family has no BOS (Qwen, OLMoE)
  std::vector<int64_t> eos_token_ids;
  std::string tokenizer_config_json;  // tokenizer_config.json text (bos/eos names, chat template)
};

// Makes a tokenizer for `family` with exactly `vocab_size` ids (INVALID_ARGUMENT if too small to
// hold the byte alphabet and the special tokens). Deterministic for a given (family, vocab_size).
absl::StatusOr<MadeTokenizer> MakeTokenizer(ModelFamily family, int64_t vocab_size);

}  // namespace switchyard
