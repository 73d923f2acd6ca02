// The BPE model of a Hugging Face tokenizer.json: vocabulary, ranked merges, and the options
// byte-level (GPT-2, Llama 3, Qwen) and SentencePiece-style (Mixtral) files use: ignore_merges,
// byte_fallback, unk_token, fuse_unk, continuing_subword_prefix, end_of_word_suffix.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace switchyard::tokenizer_internal {

// Immutable after FromJson; Tokenize is thread-safe.
class BpeModel {
 public:
  // Builds the model from tokenizer.json's "model" object. INVALID_ARGUMENT when a merge names a
  // token missing from the vocab, or the unk_token is not in it.
  static absl::StatusOr<std::unique_ptr<BpeModel>> FromJson(const nlohmann::json& model);

  // Appends the ids of one pre-token (already normalized and pre-tokenized).
  void Tokenize(std::string_view word, std::vector<int32_t>* ids) const;

  std::optional<int32_t> TokenToId(std::string_view token) const;
  // nullptr when no token has this id.
  const std::string* IdToToken(int32_t id) const;
  int32_t max_id() const { return static_cast<int32_t>(id_to_token_.size()) - 1; }

 private:
  struct Symbol {
    int32_t id;
    int32_t prev, next;  // neighbour indices, -1 at the ends
    int32_t num_bytes;   // 0 once merged into its left neighbour
  };
  struct MergeResult {
    int32_t rank;
    int32_t new_id;
  };
  static uint64_t PairKey(int32_t left, int32_t right) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) |
           static_cast<uint32_t>(right);
  }
  absl::Status LoadMerges(const nlohmann::json& merges);
  // Splits the word into initial symbols (characters, byte fallbacks or unk).
  std::vector<Symbol> InitialSymbols(std::string_view word) const;
  void ApplyMerges(std::vector<Symbol>* symbols) const;

  absl::flat_hash_map<std::string, int32_t> vocab_;
  std::vector<std::string> id_to_token_;
  std::vector<bool> has_id_;
  absl::flat_hash_map<uint64_t, MergeResult> merges_;
  std::optional<int32_t> unk_id_;
  std::string continuing_subword_prefix_;
  std::string end_of_word_suffix_;
  bool fuse_unk_ = false;
  bool byte_fallback_ = false;
  bool ignore_merges_ = false;
  std::vector<int32_t> byte_ids_;  // id of "<0xXX>" per byte, -1 when missing
};

}  // namespace switchyard::tokenizer_internal
