// The stages of a Hugging Face tokenizer.json around the model: normalizers, pre-tokenizers and
// decoders, each built from its JSON object (decoders live in tokenizer_decoders.cc). Components
// the tokenizer does not support fail to load with UNIMPLEMENTED naming the component type.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "common/internal/tokenizer_text.h"
#include "nlohmann/json.hpp"

namespace switchyard::tokenizer_internal {

// A stretch of text on its way through the pipeline. `at_start` is true when it begins at
// offset 0 of the original input (Metaspace's prepend_scheme "first" looks at that).
struct Piece {
  std::string text;
  bool at_start = false;
};

// Rewrites text before pre-tokenization (NFC, Prepend, Replace, ...). Immutable, thread-safe.
class Normalizer {
 public:
  virtual ~Normalizer() = default;
  virtual absl::Status Normalize(std::string* text) const = 0;
};

// Splits pieces into smaller pieces (regex Split, ByteLevel, Metaspace, ...). Immutable,
// thread-safe. Never leaves empty pieces.
class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  virtual absl::Status Split(std::vector<Piece>* pieces) const = 0;
};

// Turns token strings back into text, stage by stage (HF's decode_chain); the final text is the
// concatenation of the tokens. Immutable, thread-safe.
class Decoder {
 public:
  virtual ~Decoder() = default;
  virtual void DecodeChain(std::vector<std::string>* tokens) const = 0;
};

// Parsing helpers shared by the component files.
std::string ComponentType(const nlohmann::json& json);  // its "type", or "<missing type>"
absl::Status UnsupportedComponent(const char* kind, const nlohmann::json& json,
                                  const std::string& where);
// A tokenizer.json pattern: {"String": literal} or {"Regex": pattern}.
absl::StatusOr<std::unique_ptr<Regex>> ParsePattern(const nlohmann::json& json,
                                                    const std::string& where);
// Where Metaspace puts its replacement character in front of a piece.
enum class PrependScheme { kAlways, kFirst, kNever };
absl::StatusOr<PrependScheme> ParsePrependScheme(const nlohmann::json& json,
                                                 const std::string& where);

// nlohmann-json throws on missing keys and type mismatches: turns that into INVALID_ARGUMENT.
template <typename T, typename Fn>
absl::StatusOr<T> GuardJson(const std::string& where, Fn&& fn) {
  try {
    return fn();
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": malformed: ", e.what()));
  }
}

// Each returns nullptr for a JSON null. `where` names the JSON path for error messages.
absl::StatusOr<std::unique_ptr<Normalizer>> ParseNormalizer(const nlohmann::json& json,
                                                            const std::string& where);
absl::StatusOr<std::unique_ptr<PreTokenizer>> ParsePreTokenizer(const nlohmann::json& json,
                                                                const std::string& where);
absl::StatusOr<std::unique_ptr<Decoder>> ParseDecoder(const nlohmann::json& json,
                                                      const std::string& where);

}  // namespace switchyard::tokenizer_internal
