// Text helpers for the tokenizer: UTF-8 validation and lossy decoding (the way Rust's
// String::from_utf8_lossy does it, which Hugging Face's decoders rely on), the GPT-2 byte-level
// alphabet, PCRE2 regexes compiled for Unicode, and Unicode normalization forms.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace switchyard::tokenizer_internal {

// Byte length of the UTF-8 character starting with `lead` (1 for invalid lead bytes).
int Utf8CharLength(unsigned char lead);

// True when `text` is well-formed UTF-8.
bool IsValidUtf8(std::string_view text);

// Returns the byte offset of the first invalid sequence, or text.size() when all is valid.
size_t FirstInvalidUtf8(std::string_view text);

// Replaces each maximal invalid subsequence with U+FFFD, as Rust's from_utf8_lossy does.
std::string Utf8Lossy(std::string_view bytes);

// Appends the UTF-8 encoding of code point `cp`.
void AppendUtf8(uint32_t cp, std::string* out);

// Decodes the character at text[pos] (which must be valid UTF-8); sets *num_bytes.
uint32_t DecodeUtf8(std::string_view text, size_t pos, int* num_bytes);

// Rust's char::is_whitespace (the Unicode White_Space property).
bool IsUnicodeWhitespace(uint32_t cp);

// The GPT-2 byte-to-character map: printable Latin-1 bytes map to themselves, the rest to
// U+0100 onwards. ByteLevel pre-tokenizers and decoders use it.
class ByteLevelAlphabet {
 public:
  static const ByteLevelAlphabet& Get();
  // UTF-8 encoding of the character that stands for `byte`.
  const std::string& Encode(uint8_t byte) const { return byte_to_char_[byte]; }
  // Maps each byte of `text` to its character.
  std::string EncodeAll(std::string_view text) const;
  // The byte a code point stands for, or -1 when it is not in the alphabet.
  int CharToByte(uint32_t cp) const;

 private:
  ByteLevelAlphabet();
  std::array<std::string, 256> byte_to_char_;
  std::array<int16_t, 512> cp_to_byte_;  // every alphabet code point is below 0x200
};

// A PCRE2 regex compiled with PCRE2_UTF | PCRE2_UCP (and JIT when available). Immutable after
// construction; FindAll is thread-safe.
class Regex {
 public:
  // INVALID_ARGUMENT naming the pattern and PCRE2's message when it does not compile.
  static absl::StatusOr<std::unique_ptr<Regex>> Compile(std::string_view pattern);
  // Escapes `literal` so that it matches itself.
  static std::string Escape(std::string_view literal);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Byte ranges [begin, end) of the non-overlapping, non-empty matches in `text` (valid UTF-8).
  absl::Status FindAll(std::string_view text,
                       std::vector<std::pair<size_t, size_t>>* matches) const;
  // Replaces every match with `replacement` (literal).
  absl::StatusOr<std::string> ReplaceAll(std::string_view text, std::string_view replacement) const;

 private:
  explicit Regex(void* code, std::string pattern) : code_(code), pattern_(std::move(pattern)) {}
  void* code_;  // pcre2_code_8*
  std::string pattern_;
};

enum class NormalForm { kNfc, kNfd, kNfkc, kNfkd };

// Unicode normalization of valid UTF-8 text. UNIMPLEMENTED when built without a Unicode
// library (utf8proc or ICU).
absl::StatusOr<std::string> UnicodeNormalize(std::string_view text, NormalForm form);

}  // namespace switchyard::tokenizer_internal
