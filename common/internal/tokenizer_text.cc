#include "common/internal/tokenizer_text.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <cctype>
#include <cstdio>
#include <cstdlib>

#include "absl/strings/str_cat.h"

#if defined(SWITCHYARD_HAVE_UTF8PROC)
#include <utf8proc.h>
#elif defined(SWITCHYARD_HAVE_ICU)
#include <unicode/normalizer2.h>
#include <unicode/unistr.h>
#endif

namespace switchyard::tokenizer_internal {
namespace {

bool IsCont(unsigned char b) { return (b & 0xC0) == 0x80; }

// Length of the valid UTF-8 sequence at text[pos], or -(bytes consumed by the invalid
// sequence), following the "maximal subpart" rule that Rust's from_utf8_lossy uses.
int ValidSequenceLength(std::string_view text, size_t pos) {
  const auto b0 = static_cast<unsigned char>(text[pos]);
  if (b0 < 0x80) return 1;
  const size_t left = text.size() - pos;
  auto at = [&](size_t i) { return static_cast<unsigned char>(text[pos + i]); };
  int width = 0;
  unsigned char lo = 0x80, hi = 0xBF;
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    width = 2;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    width = 3;
    if (b0 == 0xE0) lo = 0xA0;
    if (b0 == 0xED) hi = 0x9F;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    width = 4;
    if (b0 == 0xF0) lo = 0x90;
    if (b0 == 0xF4) hi = 0x8F;
  } else {
    return -1;
  }
  if (left < 2 || at(1) < lo || at(1) > hi) return -1;
  for (int i = 2; i < width; ++i) {
    if (left < static_cast<size_t>(i) + 1 || !IsCont(at(i))) return -i;
  }
  return width;
}

const char kReplacementChar[] = "\xEF\xBF\xBD";

// A per-thread JIT stack larger than PCRE2's 32 KiB default (long whitespace runs recurse
// deeply), freed when the thread ends.
struct MatchResources {
  MatchResources()
      : stack(pcre2_jit_stack_create(64 * 1024, 8 << 20, nullptr)),
        context(pcre2_match_context_create(nullptr)) {
    pcre2_jit_stack_assign(context, nullptr, stack);
  }
  ~MatchResources() {
    pcre2_match_context_free(context);
    pcre2_jit_stack_free(stack);
  }
  pcre2_jit_stack* stack;
  pcre2_match_context* context;
};

}  // namespace

int Utf8CharLength(unsigned char lead) {
  if (lead < 0x80) return 1;
  if ((lead & 0xE0) == 0xC0) return 2;
  if ((lead & 0xF0) == 0xE0) return 3;
  if ((lead & 0xF8) == 0xF0) return 4;
  return 1;
}

size_t FirstInvalidUtf8(std::string_view text) {
  size_t pos = 0;
  while (pos < text.size()) {
    const int n = ValidSequenceLength(text, pos);
    if (n < 0) return pos;
    pos += n;
  }
  return text.size();
}

bool IsValidUtf8(std::string_view text) { return FirstInvalidUtf8(text) == text.size(); }

std::string Utf8Lossy(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  size_t pos = 0;
  while (pos < bytes.size()) {
    const int n = ValidSequenceLength(bytes, pos);
    if (n > 0) {
      out.append(bytes.substr(pos, n));
      pos += n;
    } else {
      out.append(kReplacementChar);
      pos += -n;
    }
  }
  return out;
}

void AppendUtf8(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

uint32_t DecodeUtf8(std::string_view text, size_t pos, int* num_bytes) {
  const auto b0 = static_cast<unsigned char>(text[pos]);
  int n = Utf8CharLength(b0);
  if (pos + n > text.size()) n = 1;
  *num_bytes = n;
  if (n == 1) return b0;
  uint32_t cp = b0 & (0x7F >> n);
  for (int i = 1; i < n; ++i) cp = (cp << 6) | (static_cast<unsigned char>(text[pos + i]) & 0x3F);
  return cp;
}

bool IsUnicodeWhitespace(uint32_t cp) {
  if (cp >= 0x09 && cp <= 0x0D) return true;
  if (cp >= 0x2000 && cp <= 0x200A) return true;
  switch (cp) {
    case 0x20:
    case 0x85:
    case 0xA0:
    case 0x1680:
    case 0x2028:
    case 0x2029:
    case 0x202F:
    case 0x205F:
    case 0x3000:
      return true;
    default:
      return false;
  }
}

const ByteLevelAlphabet& ByteLevelAlphabet::Get() {
  static const ByteLevelAlphabet* alphabet = new ByteLevelAlphabet();
  return *alphabet;
}

ByteLevelAlphabet::ByteLevelAlphabet() {
  cp_to_byte_.fill(-1);
  uint32_t next_extra = 256;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
    const uint32_t cp = printable ? b : next_extra++;
    AppendUtf8(cp, &byte_to_char_[b]);
    cp_to_byte_[cp] = static_cast<int16_t>(b);
  }
}

std::string ByteLevelAlphabet::EncodeAll(std::string_view text) const {
  std::string out;
  out.reserve(text.size() * 2);
  for (char c : text) out.append(byte_to_char_[static_cast<uint8_t>(c)]);
  return out;
}

int ByteLevelAlphabet::CharToByte(uint32_t cp) const {
  return cp < cp_to_byte_.size() ? cp_to_byte_[cp] : -1;
}

absl::StatusOr<std::unique_ptr<Regex>> Regex::Compile(std::string_view pattern) {
  int error_code = 0;
  PCRE2_SIZE error_offset = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                   PCRE2_UTF | PCRE2_UCP, &error_code, &error_offset, nullptr);
  if (code == nullptr) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(error_code, message, sizeof(message));
    return absl::InvalidArgumentError(absl::StrCat("regex '", std::string(pattern),
                                                   "' does not compile at offset ", error_offset,
                                                   ": ", reinterpret_cast<char*>(message)));
  }
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // best effort: interpreted matching also works
  return std::unique_ptr<Regex>(new Regex(code, std::string(pattern)));
}

std::string Regex::Escape(std::string_view literal) {
  std::string out;
  for (char c : literal) {
    const auto u = static_cast<unsigned char>(c);
    if (u < 0x80 && !std::isalnum(u) && c != '_' && c != ' ') out.push_back('\\');
    out.push_back(c);
  }
  return out;
}

Regex::~Regex() { pcre2_code_free(static_cast<pcre2_code*>(code_)); }

absl::Status Regex::FindAll(std::string_view text,
                            std::vector<std::pair<size_t, size_t>>* matches) const {
  auto* code = static_cast<pcre2_code*>(code_);
  thread_local const MatchResources resources;
  pcre2_match_data* data = pcre2_match_data_create_from_pattern(code, nullptr);
  size_t pos = 0;
  absl::Status status;
  while (pos <= text.size()) {
    const int rc = pcre2_match(code, reinterpret_cast<PCRE2_SPTR>(text.data()), text.size(), pos,
                               PCRE2_NO_UTF_CHECK, data, resources.context);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(rc, message, sizeof(message));
      status = absl::InternalError(
          absl::StrCat("regex '", pattern_, "' failed: ", reinterpret_cast<char*>(message)));
      break;
    }
    const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(data);
    const size_t begin = ovector[0], end = ovector[1];
    if (end > begin) {
      matches->emplace_back(begin, end);
      pos = end;
    } else {  // empty match: step over one character
      if (begin >= text.size()) break;
      pos = begin + Utf8CharLength(static_cast<unsigned char>(text[begin]));
    }
  }
  pcre2_match_data_free(data);
  return status;
}

absl::StatusOr<std::string> Regex::ReplaceAll(std::string_view text,
                                              std::string_view replacement) const {
  std::vector<std::pair<size_t, size_t>> matches;
  if (absl::Status s = FindAll(text, &matches); !s.ok()) return s;
  std::string out;
  size_t pos = 0;
  for (const auto& [begin, end] : matches) {
    out.append(text.substr(pos, begin - pos));
    out.append(replacement);
    pos = end;
  }
  out.append(text.substr(pos));
  return out;
}

absl::StatusOr<std::string> UnicodeNormalize(std::string_view text, NormalForm form) {
#if defined(SWITCHYARD_HAVE_UTF8PROC)
  int options = UTF8PROC_STABLE;
  if (form == NormalForm::kNfc || form == NormalForm::kNfkc) options |= UTF8PROC_COMPOSE;
  if (form == NormalForm::kNfd || form == NormalForm::kNfkd) options |= UTF8PROC_DECOMPOSE;
  if (form == NormalForm::kNfkc || form == NormalForm::kNfkd) options |= UTF8PROC_COMPAT;
  utf8proc_uint8_t* result = nullptr;
  const utf8proc_ssize_t n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(text.data()),
                                          static_cast<utf8proc_ssize_t>(text.size()), &result,
                                          static_cast<utf8proc_option_t>(options));
  if (n < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("unicode normalization failed: ", utf8proc_errmsg(n)));
  }
  std::string out(reinterpret_cast<char*>(result), static_cast<size_t>(n));
  std::free(result);
  return out;
#elif defined(SWITCHYARD_HAVE_ICU)
  UErrorCode error = U_ZERO_ERROR;
  const icu::Normalizer2* normalizer = nullptr;
  switch (form) {
    case NormalForm::kNfc:
      normalizer = icu::Normalizer2::getNFCInstance(error);
      break;
    case NormalForm::kNfd:
      normalizer = icu::Normalizer2::getNFDInstance(error);
      break;
    case NormalForm::kNfkc:
      normalizer = icu::Normalizer2::getNFKCInstance(error);
      break;
    case NormalForm::kNfkd:
      normalizer = icu::Normalizer2::getNFKDInstance(error);
      break;
  }
  if (U_FAILURE(error)) {
    return absl::InternalError(absl::StrCat("ICU normalizer unavailable: ", u_errorName(error)));
  }
  const icu::UnicodeString input = icu::UnicodeString::fromUTF8(
      icu::StringPiece(text.data(), static_cast<int32_t>(text.size())));
  const icu::UnicodeString normalized = normalizer->normalize(input, error);
  if (U_FAILURE(error)) {
    return absl::InvalidArgumentError(
        absl::StrCat("unicode normalization failed: ", u_errorName(error)));
  }
  std::string out;
  normalized.toUTF8String(out);
  return out;
#else
  (void)text;
  (void)form;
  return absl::UnimplementedError(
      "unicode normalization (NFC/NFD/NFKC/NFKD) needs libutf8proc or ICU, and this build has "
      "neither");
#endif
}

}  // namespace switchyard::tokenizer_internal
