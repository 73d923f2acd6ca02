#include "common/internal/tokenizer_pipeline.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "common/internal/tokenizer_text.h"
#include "common/status_macros.h"

namespace switchyard::tokenizer_internal {
namespace {

using Json = nlohmann::json;
using Ranges = std::vector<std::pair<size_t, size_t>>;

// GPT-2's pre-tokenizer pattern, which ByteLevel(use_regex=true) applies.
constexpr char kGpt2Pattern[] =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// A tokenizer.json pattern: {"String": literal} or {"Regex": pattern}.

}  // namespace

std::string ComponentType(const Json& json) {
  return json.is_object() && json.contains("type") && json["type"].is_string()
             ? json["type"].get<std::string>()
             : std::string("<missing type>");
}

absl::Status UnsupportedComponent(const char* kind, const Json& json, const std::string& where) {
  return absl::UnimplementedError(
      absl::StrCat(where, ": ", kind, " type '", ComponentType(json), "' is not supported"));
}

absl::StatusOr<std::unique_ptr<Regex>> ParsePattern(const Json& json, const std::string& where) {
  if (json.contains("String")) {
    return Regex::Compile(Regex::Escape(json["String"].get<std::string>()));
  }
  if (json.contains("Regex")) return Regex::Compile(json["Regex"].get<std::string>());
  return absl::InvalidArgumentError(absl::StrCat(
      where, ": expected a pattern {\"String\": ...} or {\"Regex\": ...}, found ", json.dump()));
}

absl::StatusOr<PrependScheme> ParsePrependScheme(const Json& json, const std::string& where) {
  if (!json.contains("prepend_scheme")) {
    return json.value("add_prefix_space", true) ? PrependScheme::kAlways : PrependScheme::kNever;
  }
  const std::string name = json["prepend_scheme"].get<std::string>();
  if (name == "always") return PrependScheme::kAlways;
  if (name == "first") return PrependScheme::kFirst;
  if (name == "never") return PrependScheme::kNever;
  return absl::InvalidArgumentError(absl::StrCat(where, ": unknown prepend_scheme '", name,
                                                 "', expected always, first or never"));
}

namespace {

// ---------------------------------------------------------------- normalizers

class SequenceNormalizer : public Normalizer {
 public:
  explicit SequenceNormalizer(std::vector<std::unique_ptr<Normalizer>> steps)
      : steps_(std::move(steps)) {}
  absl::Status Normalize(std::string* text) const override {
    for (const auto& step : steps_) SY_RETURN_IF_ERROR(step->Normalize(text));
    return absl::OkStatus();
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> steps_;
};

class PrependNormalizer : public Normalizer {
 public:
  explicit PrependNormalizer(std::string prefix) : prefix_(std::move(prefix)) {}
  absl::Status Normalize(std::string* text) const override {
    if (!text->empty()) text->insert(0, prefix_);
    return absl::OkStatus();
  }

 private:
  std::string prefix_;
};

class ReplaceNormalizer : public Normalizer {
 public:
  ReplaceNormalizer(std::unique_ptr<Regex> pattern, std::string content)
      : pattern_(std::move(pattern)), content_(std::move(content)) {}
  absl::Status Normalize(std::string* text) const override {
    SY_ASSIGN_OR_RETURN(*text, pattern_->ReplaceAll(*text, content_));
    return absl::OkStatus();
  }

 private:
  std::unique_ptr<Regex> pattern_;
  std::string content_;
};

class UnicodeNormalizer : public Normalizer {
 public:
  explicit UnicodeNormalizer(NormalForm form) : form_(form) {}
  absl::Status Normalize(std::string* text) const override {
    SY_ASSIGN_OR_RETURN(*text, UnicodeNormalize(*text, form_));
    return absl::OkStatus();
  }

 private:
  NormalForm form_;
};

absl::StatusOr<std::unique_ptr<Normalizer>> ParseNormalizerImpl(const Json& json,
                                                                const std::string& where) {
  if (json.is_null()) return nullptr;
  const std::string type = ComponentType(json);
  if (type == "Sequence") {
    std::vector<std::unique_ptr<Normalizer>> steps;
    const Json& list = json.at("normalizers");
    for (size_t i = 0; i < list.size(); ++i) {
      SY_ASSIGN_OR_RETURN(
          auto step, ParseNormalizerImpl(list[i], absl::StrCat(where, ".normalizers[", i, "]")));
      if (step != nullptr) steps.push_back(std::move(step));
    }
    return std::make_unique<SequenceNormalizer>(std::move(steps));
  }
  if (type == "Prepend")
    return std::make_unique<PrependNormalizer>(json.at("prepend").get<std::string>());
  if (type == "Replace") {
    SY_ASSIGN_OR_RETURN(auto pattern, ParsePattern(json.at("pattern"), where + ".pattern"));
    return std::make_unique<ReplaceNormalizer>(std::move(pattern),
                                               json.at("content").get<std::string>());
  }
  if (type == "NFC") return std::make_unique<UnicodeNormalizer>(NormalForm::kNfc);
  if (type == "NFD") return std::make_unique<UnicodeNormalizer>(NormalForm::kNfd);
  if (type == "NFKC") return std::make_unique<UnicodeNormalizer>(NormalForm::kNfkc);
  if (type == "NFKD") return std::make_unique<UnicodeNormalizer>(NormalForm::kNfkd);
  return UnsupportedComponent("normalizer", json, where);
}

// ---------------------------------------------------------------- pre-tokenizers

enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

absl::StatusOr<SplitBehavior> ParseBehavior(const Json& json, const std::string& where) {
  const std::string name = json.get<std::string>();
  if (name == "Removed") return SplitBehavior::kRemoved;
  if (name == "Isolated") return SplitBehavior::kIsolated;
  if (name == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (name == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (name == "Contiguous") return SplitBehavior::kContiguous;
  return absl::InvalidArgumentError(
      absl::StrCat(where, ": unknown split behavior '", name,
                   "', expected Removed, Isolated, MergedWithPrevious, MergedWithNext or "
                   "Contiguous"));
}

struct Span {
  size_t begin, end;
  bool is_match;
};

// Cuts `text` at the matches of `regex` and groups the parts as HF's split behaviors do.
absl::StatusOr<std::vector<Span>> SplitByRegex(const Regex& regex, std::string_view text,
                                               SplitBehavior behavior, bool invert) {
  Ranges matches;
  SY_RETURN_IF_ERROR(regex.FindAll(text, &matches));
  std::vector<Span> parts;
  size_t pos = 0;
  for (const auto& [begin, end] : matches) {
    if (begin > pos) parts.push_back({pos, begin, invert});
    parts.push_back({begin, end, !invert});
    pos = end;
  }
  if (pos < text.size()) parts.push_back({pos, text.size(), invert});
  std::vector<Span> out;
  bool previous_match = false;
  switch (behavior) {
    case SplitBehavior::kIsolated:
      return parts;
    case SplitBehavior::kRemoved:
      for (const Span& s : parts) {
        if (!s.is_match) out.push_back(s);
      }
      return out;
    case SplitBehavior::kContiguous:
      for (const Span& s : parts) {
        if (s.is_match && previous_match && !out.empty()) {
          out.back().end = s.end;
        } else {
          out.push_back(s);
        }
        previous_match = s.is_match;
      }
      return out;
    case SplitBehavior::kMergedWithPrevious:
      for (const Span& s : parts) {
        if (s.is_match && !previous_match && !out.empty()) {
          out.back().end = s.end;
        } else {
          out.push_back(s);
        }
        previous_match = s.is_match;
      }
      return out;
    case SplitBehavior::kMergedWithNext:
      for (auto it = parts.rbegin(); it != parts.rend(); ++it) {
        if (it->is_match && !previous_match && !out.empty()) {
          out.back().begin = it->begin;
        } else {
          out.push_back(*it);
        }
        previous_match = it->is_match;
      }
      return std::vector<Span>(out.rbegin(), out.rend());
  }
  return parts;
}

absl::Status SplitPieces(const Regex& regex, SplitBehavior behavior, bool invert,
                         std::vector<Piece>* pieces) {
  std::vector<Piece> out;
  out.reserve(pieces->size());
  for (Piece& piece : *pieces) {
    SY_ASSIGN_OR_RETURN(std::vector<Span> spans, SplitByRegex(regex, piece.text, behavior, invert));
    for (const Span& span : spans) {
      if (span.end == span.begin) continue;
      out.push_back({piece.text.substr(span.begin, span.end - span.begin),
                     piece.at_start && span.begin == 0});
    }
  }
  *pieces = std::move(out);
  return absl::OkStatus();
}

class SequencePreTokenizer : public PreTokenizer {
 public:
  explicit SequencePreTokenizer(std::vector<std::unique_ptr<PreTokenizer>> steps)
      : steps_(std::move(steps)) {}
  absl::Status Split(std::vector<Piece>* pieces) const override {
    for (const auto& step : steps_) SY_RETURN_IF_ERROR(step->Split(pieces));
    return absl::OkStatus();
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> steps_;
};

class RegexPreTokenizer : public PreTokenizer {
 public:
  RegexPreTokenizer(std::unique_ptr<Regex> regex, SplitBehavior behavior, bool invert)
      : regex_(std::move(regex)), behavior_(behavior), invert_(invert) {}
  absl::Status Split(std::vector<Piece>* pieces) const override {
    return SplitPieces(*regex_, behavior_, invert_, pieces);
  }

 private:
  std::unique_ptr<Regex> regex_;
  SplitBehavior behavior_;
  bool invert_;
};

class ByteLevelPreTokenizer : public PreTokenizer {
 public:
  ByteLevelPreTokenizer(bool add_prefix_space, std::unique_ptr<Regex> regex)
      : add_prefix_space_(add_prefix_space), regex_(std::move(regex)) {}
  absl::Status Split(std::vector<Piece>* pieces) const override {
    if (add_prefix_space_) {
      for (Piece& piece : *pieces) {
        if (piece.text.empty() || piece.text[0] != ' ') piece.text.insert(piece.text.begin(), ' ');
      }
    }
    if (regex_ != nullptr) {
      SY_RETURN_IF_ERROR(SplitPieces(*regex_, SplitBehavior::kIsolated, false, pieces));
    }
    const ByteLevelAlphabet& alphabet = ByteLevelAlphabet::Get();
    for (Piece& piece : *pieces) piece.text = alphabet.EncodeAll(piece.text);
    return absl::OkStatus();
  }

 private:
  bool add_prefix_space_;
  std::unique_ptr<Regex> regex_;  // null when use_regex is false
};

class MetaspacePreTokenizer : public PreTokenizer {
 public:
  MetaspacePreTokenizer(std::string replacement, PrependScheme scheme,
                        std::unique_ptr<Regex> split_regex)
      : replacement_(std::move(replacement)),
        scheme_(scheme),
        split_regex_(std::move(split_regex)) {}
  absl::Status Split(std::vector<Piece>* pieces) const override {
    for (Piece& piece : *pieces) {
      piece.text = absl::StrReplaceAll(piece.text, {{" ", replacement_}});
      const bool prepend =
          scheme_ == PrependScheme::kAlways || (scheme_ == PrependScheme::kFirst && piece.at_start);
      if (prepend && piece.text.compare(0, replacement_.size(), replacement_) != 0) {
        piece.text.insert(0, replacement_);
      }
    }
    if (split_regex_ == nullptr) return absl::OkStatus();
    return SplitPieces(*split_regex_, SplitBehavior::kMergedWithNext, false, pieces);
  }

 private:
  std::string replacement_;
  PrependScheme scheme_;
  std::unique_ptr<Regex> split_regex_;  // null when split is false
};

absl::StatusOr<std::unique_ptr<PreTokenizer>> ParseRegexPreTokenizer(const Json& json,
                                                                     const std::string& where,
                                                                     const std::string& type) {
  if (type == "Split") {
    SY_ASSIGN_OR_RETURN(auto regex, ParsePattern(json.at("pattern"), where + ".pattern"));
    SY_ASSIGN_OR_RETURN(SplitBehavior behavior, ParseBehavior(json.at("behavior"), where));
    return std::make_unique<RegexPreTokenizer>(std::move(regex), behavior,
                                               json.value("invert", false));
  }
  if (type == "Digits") {
    const bool individual = json.value("individual_digits", false);
    SY_ASSIGN_OR_RETURN(auto regex, Regex::Compile(individual ? R"(\p{N})" : R"(\p{N}+)"));
    return std::make_unique<RegexPreTokenizer>(std::move(regex), SplitBehavior::kIsolated, false);
  }
  if (type == "Whitespace") {
    SY_ASSIGN_OR_RETURN(auto regex, Regex::Compile(R"(\w+|[^\w\s]+)"));
    return std::make_unique<RegexPreTokenizer>(std::move(regex), SplitBehavior::kRemoved, true);
  }
  SY_ASSIGN_OR_RETURN(auto regex, Regex::Compile(R"(\s+)"));  // WhitespaceSplit
  return std::make_unique<RegexPreTokenizer>(std::move(regex), SplitBehavior::kRemoved, false);
}

absl::StatusOr<std::unique_ptr<PreTokenizer>> ParsePreTokenizerImpl(const Json& json,
                                                                    const std::string& where) {
  if (json.is_null()) return nullptr;
  const std::string type = ComponentType(json);
  if (type == "Sequence") {
    std::vector<std::unique_ptr<PreTokenizer>> steps;
    const Json& list = json.at("pretokenizers");
    for (size_t i = 0; i < list.size(); ++i) {
      SY_ASSIGN_OR_RETURN(auto step, ParsePreTokenizerImpl(
                                         list[i], absl::StrCat(where, ".pretokenizers[", i, "]")));
      if (step != nullptr) steps.push_back(std::move(step));
    }
    return std::make_unique<SequencePreTokenizer>(std::move(steps));
  }
  if (type == "Split" || type == "Digits" || type == "Whitespace" || type == "WhitespaceSplit") {
    return ParseRegexPreTokenizer(json, where, type);
  }
  if (type == "ByteLevel") {
    std::unique_ptr<Regex> regex;
    if (json.value("use_regex", true)) {
      SY_ASSIGN_OR_RETURN(regex, Regex::Compile(kGpt2Pattern));
    }
    return std::make_unique<ByteLevelPreTokenizer>(json.value("add_prefix_space", true),
                                                   std::move(regex));
  }
  if (type == "Metaspace") {
    const std::string replacement = json.value("replacement", std::string("\xE2\x96\x81"));
    SY_ASSIGN_OR_RETURN(PrependScheme scheme, ParsePrependScheme(json, where));
    std::unique_ptr<Regex> split;
    if (json.value("split", true)) {
      SY_ASSIGN_OR_RETURN(split, Regex::Compile(Regex::Escape(replacement)));
    }
    return std::make_unique<MetaspacePreTokenizer>(replacement, scheme, std::move(split));
  }
  return UnsupportedComponent("pre_tokenizer", json, where);
}

}  // namespace

absl::StatusOr<std::unique_ptr<Normalizer>> ParseNormalizer(const Json& json,
                                                            const std::string& where) {
  return GuardJson<std::unique_ptr<Normalizer>>(where,
                                                [&] { return ParseNormalizerImpl(json, where); });
}

absl::StatusOr<std::unique_ptr<PreTokenizer>> ParsePreTokenizer(const Json& json,
                                                                const std::string& where) {
  return GuardJson<std::unique_ptr<PreTokenizer>>(
      where, [&] { return ParsePreTokenizerImpl(json, where); });
}

}  // namespace switchyard::tokenizer_internal
