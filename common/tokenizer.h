// Hugging Face tokenizer.json: encode, decode, and incremental (streaming) decode.
//
// Supports the BPE tokenizers of the model families Switchyard serves: byte-level BPE with a
// regex pre-tokenizer (Llama 3/4, Qwen2/3, OLMoE/GPT-NeoX) and SentencePiece-style BPE with byte
// fallback (Mixtral), with added/special tokens, the normalizers NFC/NFD/NFKC/NFKD, Sequence,
// Prepend and Replace, and the TemplateProcessing/ByteLevel/Sequence post-processors. Ids match
// those of Hugging Face's `tokenizers` library for the same file and text (the golden tests in
// tests/data/tokenizer/ were produced by it). Components outside that set fail to load with
// UNIMPLEMENTED naming the component type.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"

namespace switchyard {

namespace tokenizer_internal {
class BpeModel;
class Normalizer;
class PreTokenizer;
class Decoder;
class Regex;
struct Piece;
}  // namespace tokenizer_internal

// A token added on top of the model vocabulary (tokenizer.json "added_tokens").
struct AddedToken {
  int32_t id = 0;
  std::string content;
  bool special = false;      // skipped by Decode(skip_special_tokens=true)
  bool normalized = false;   // matched in the normalized text rather than the raw input
  bool lstrip = false;       // swallows whitespace on its left
  bool rstrip = false;       // swallows whitespace on its right
  bool single_word = false;  // only matches when not inside a word
};

// A loaded tokenizer. Immutable after load; every method is thread-safe.
class Tokenizer {
 public:
  // NOT_FOUND when the file is missing; otherwise as FromJson.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromFile(const std::filesystem::path& path);
  // INVALID_ARGUMENT for malformed JSON or inconsistent contents (e.g. a merge naming a token not
  // in the vocab); UNIMPLEMENTED for a model, normalizer, pre-tokenizer, post-processor or
  // decoder type this implementation does not support (the message names it).
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromJson(std::string_view json);
  ~Tokenizer();

  // Token ids for `text` (UTF-8; INVALID_ARGUMENT otherwise). With add_special_tokens the
  // post-processor runs (e.g. adds BOS), as `tokenizers` does by default.
  absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text,
                                              bool add_special_tokens = true) const;
  // Text for `ids`; INVALID_ARGUMENT for an id that is neither in the vocab nor added.
  absl::StatusOr<std::string> Decode(std::span<const int32_t> ids,
                                     bool skip_special_tokens = false) const;

  int64_t vocab_size() const;  // max id + 1 over the vocab and the added tokens
  std::optional<int32_t> TokenToId(std::string_view token) const;
  std::optional<std::string> IdToToken(int32_t id) const;
  bool IsSpecial(int32_t id) const;
  const std::vector<AddedToken>& added_tokens() const { return added_tokens_; }

 private:
  Tokenizer();
  class Loader;
  struct AddedMatcher;
  // One stretch of the input: either an added token's id or text still to tokenize.
  struct Segment {
    int32_t added_id = -1;
    std::string text;
    bool at_start = false;
  };
  absl::Status SplitAdded(const AddedMatcher& matcher, std::vector<Segment>* segments) const;
  absl::Status TokenizeText(std::vector<Segment>* segments, std::vector<int32_t>* ids) const;
  void PostProcess(std::vector<int32_t>* ids) const;
  // The token string of `id` (added tokens first); nullptr when unknown.
  const std::string* TokenString(int32_t id) const;

  std::unique_ptr<tokenizer_internal::BpeModel> model_;
  std::unique_ptr<tokenizer_internal::Normalizer> normalizer_;
  std::unique_ptr<tokenizer_internal::PreTokenizer> pre_tokenizer_;
  std::unique_ptr<tokenizer_internal::Decoder> decoder_;
  std::vector<AddedToken> added_tokens_;
  absl::flat_hash_map<int32_t, size_t> added_by_id_;  // id -> index in added_tokens_
  absl::flat_hash_map<std::string, int32_t> added_by_content_;
  std::unique_ptr<AddedMatcher> raw_matcher_;         // tokens with normalized == false
  std::unique_ptr<AddedMatcher> normalized_matcher_;  // tokens with normalized == true
  // Post-processor template for one sequence: ids before and after the text.
  std::vector<int32_t> prefix_ids_, suffix_ids_;
  int64_t vocab_size_ = 0;
};

// Streaming detokenizer for one sequence: each Push returns the text that the new id completes,
// never a broken UTF-8 character, so that the concatenation of all chunks plus Flush() equals
// Decode(all ids). Keeps a short window of recent ids (the prefix/read offset method), so a Push
// costs a decode of a few tokens. Not thread-safe; holds a reference to `tokenizer`, which must
// outlive it.
class IncrementalDecoder {
 public:
  // `prompt_ids` give context (e.g. SentencePiece's leading-space handling) and are not emitted.
  IncrementalDecoder(const Tokenizer& tokenizer, bool skip_special_tokens = false,
                     std::span<const int32_t> prompt_ids = {});
  // Newly complete text, possibly empty. INVALID_ARGUMENT for an unknown id (not recorded).
  absl::StatusOr<std::string> Push(int32_t id);
  // Whatever is pending (may contain U+FFFD for truly invalid bytes); the decoder stays usable.
  std::string Flush();

 private:
  absl::StatusOr<std::string> DecodeWindow(size_t begin, size_t end) const;

  const Tokenizer& tokenizer_;
  bool skip_special_tokens_;
  std::vector<int32_t> ids_;  // recent ids; older ones are dropped as the window advances
  size_t prefix_offset_ = 0;  // start of the context already emitted
  size_t read_offset_ = 0;    // end of the emitted text
};

}  // namespace switchyard
