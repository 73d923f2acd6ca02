#include "common/tokenizer.h"

#include <algorithm>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/internal/tokenizer_bpe.h"
#include "common/internal/tokenizer_pipeline.h"
#include "common/internal/tokenizer_text.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace switchyard {
namespace {

using Json = nlohmann::json;
using tokenizer_internal::DecodeUtf8;
using tokenizer_internal::IsUnicodeWhitespace;

// Rust's char::is_alphanumeric, close enough for single_word checks: ASCII letters and digits
// and every non-ASCII character that is not whitespace or general punctuation.
bool IsWordChar(uint32_t cp) {
  if (cp < 0x80) return std::isalnum(static_cast<int>(cp)) != 0;
  return !IsUnicodeWhitespace(cp) && !(cp >= 0x2000 && cp <= 0x206F) &&
         !(cp >= 0x3000 && cp <= 0x303F);
}

// The last character of text[0, end), or 0 when there is none.
uint32_t CharBefore(std::string_view text, size_t end) {
  if (end == 0) return 0;
  size_t pos = end - 1;
  while (pos > 0 && (static_cast<unsigned char>(text[pos]) & 0xC0) == 0x80) --pos;
  int n = 0;
  return DecodeUtf8(text, pos, &n);
}

bool EndsWithReplacementChar(const std::string& text) {
  return text.size() >= 3 && text.compare(text.size() - 3, 3, "\xEF\xBF\xBD") == 0;
}

// The text that `text` adds after `prefix`. Normally `text` starts with `prefix`; when a later id
// rewrites earlier text (ByteFallback turns a whole run of bytes into U+FFFD once it proves
// invalid), it returns `text` from the first difference, moved back to a character boundary, so
// that the result is always valid UTF-8.
std::string TextAfter(const std::string& prefix, const std::string& text) {
  if (text.compare(0, prefix.size(), prefix) == 0) return text.substr(prefix.size());
  size_t common = 0;
  while (common < prefix.size() && common < text.size() && prefix[common] == text[common]) {
    ++common;
  }
  while (common > 0 && (static_cast<unsigned char>(text[common]) & 0xC0) == 0x80) --common;
  return text.substr(common);
}

}  // namespace

// Finds added tokens in text, leftmost first and longest at a position (HF uses an
// Aho-Corasick automaton with leftmost-longest semantics; added vocabularies are small enough
// for candidates bucketed by first byte).
struct Tokenizer::AddedMatcher {
  struct Entry {
    std::string pattern;
    const AddedToken* token;
  };
  std::vector<std::vector<Entry>> by_first_byte = std::vector<std::vector<Entry>>(256);
  bool empty = true;

  void Add(std::string_view pattern, const AddedToken* token) {
    if (pattern.empty()) return;
    const auto first_byte = static_cast<uint8_t>(pattern.front());
    by_first_byte[first_byte].push_back({std::string(pattern), token});
    empty = false;
  }

  // Longest first, so that the first hit at a position is the longest match.
  void SortBuckets() {
    for (auto& bucket : by_first_byte) {
      std::stable_sort(bucket.begin(), bucket.end(), [](const Entry& a, const Entry& b) {
        return a.pattern.size() > b.pattern.size();
      });
    }
  }

  const Entry* LongestAt(std::string_view text, size_t pos) const {
    for (const Entry& entry : by_first_byte[static_cast<uint8_t>(text[pos])]) {
      if (text.compare(pos, entry.pattern.size(), entry.pattern) == 0) return &entry;
    }
    return nullptr;
  }
};

Tokenizer::Tokenizer() = default;
Tokenizer::~Tokenizer() = default;

// Reads the parts of tokenizer.json into a Tokenizer.
class Tokenizer::Loader {
 public:
  static absl::Status Load(const Json& root, Tokenizer* tok) {
    if (!root.is_object()) {
      return absl::InvalidArgumentError("tokenizer.json: expected a JSON object at the top level");
    }
    SY_RETURN_IF_ERROR(LoadModel(root, tok));
    SY_RETURN_IF_ERROR(LoadAddedTokens(root, tok));
    const Json null_json;
    auto part = [&](const char* key) -> const Json& {
      return root.contains(key) ? root[key] : null_json;
    };
    SY_ASSIGN_OR_RETURN(tok->normalizer_,
                        tokenizer_internal::ParseNormalizer(part("normalizer"), "normalizer"));
    SY_ASSIGN_OR_RETURN(tok->pre_tokenizer_, tokenizer_internal::ParsePreTokenizer(
                                                 part("pre_tokenizer"), "pre_tokenizer"));
    SY_ASSIGN_OR_RETURN(tok->decoder_,
                        tokenizer_internal::ParseDecoder(part("decoder"), "decoder"));
    SY_RETURN_IF_ERROR(LoadPostProcessor(part("post_processor"), "post_processor", tok));
    return BuildMatchers(tok);
  }

 private:
  static absl::Status LoadModel(const Json& root, Tokenizer* tok) {
    if (!root.contains("model") || !root["model"].is_object()) {
      return absl::InvalidArgumentError("tokenizer.json: expected a \"model\" object");
    }
    const Json& model = root["model"];
    std::string type = model.contains("type") ? model["type"].get<std::string>() : "";
    if (type.empty() && model.contains("merges")) type = "BPE";
    if (type == "WordPiece" || type == "WordLevel" || type == "Unigram") {
      return absl::UnimplementedError(
          absl::StrCat("model.type: model type '", type, "' is not supported (only BPE is)"));
    }
    if (type != "BPE") {
      return absl::InvalidArgumentError(
          absl::StrCat("model.type: unknown model type '", type,
                       "', expected one of BPE, WordPiece, WordLevel, Unigram"));
    }
    SY_ASSIGN_OR_RETURN(tok->model_, tokenizer_internal::BpeModel::FromJson(model));
    tok->vocab_size_ = static_cast<int64_t>(tok->model_->max_id()) + 1;
    return absl::OkStatus();
  }

  static absl::Status LoadAddedTokens(const Json& root, Tokenizer* tok) {
    if (!root.contains("added_tokens") || root["added_tokens"].is_null()) return absl::OkStatus();
    const Json& list = root["added_tokens"];
    for (size_t i = 0; i < list.size(); ++i) {
      const Json& entry = list[i];
      AddedToken token;
      token.id = entry.at("id").get<int32_t>();
      token.content = entry.at("content").get<std::string>();
      token.special = entry.value("special", false);
      token.normalized = entry.value("normalized", !token.special);
      token.lstrip = entry.value("lstrip", false);
      token.rstrip = entry.value("rstrip", false);
      token.single_word = entry.value("single_word", false);
      // HF gives an added token whose content the model already has the model's id.
      if (auto model_id = tok->model_->TokenToId(token.content)) token.id = *model_id;
      if (token.id < 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("added_tokens[", i, "]: negative id ", token.id));
      }
      tok->added_by_id_[token.id] = tok->added_tokens_.size();
      tok->added_by_content_[token.content] = token.id;
      tok->vocab_size_ = std::max<int64_t>(tok->vocab_size_, int64_t{token.id} + 1);
      tok->added_tokens_.push_back(std::move(token));
    }
    return absl::OkStatus();
  }

  // Ids a TemplateProcessing "SpecialToken" item stands for.
  static absl::StatusOr<std::vector<int32_t>> TemplateSpecialIds(const Json& processor,
                                                                 const std::string& name,
                                                                 const std::string& where) {
    if (processor.contains("special_tokens") && processor["special_tokens"].contains(name)) {
      return processor["special_tokens"][name].at("ids").get<std::vector<int32_t>>();
    }
    return absl::InvalidArgumentError(absl::StrCat(where, ": template names special token '", name,
                                                   "' missing from special_tokens"));
  }

  static absl::Status LoadTemplate(const Json& processor, const std::string& where,
                                   Tokenizer* tok) {
    std::vector<int32_t> prefix, suffix;
    bool seen_sequence = false;
    for (const Json& item : processor.at("single")) {
      if (item.contains("Sequence")) {
        seen_sequence = true;
        continue;
      }
      if (!item.contains("SpecialToken")) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, ".single: unexpected item ", item.dump()));
      }
      SY_ASSIGN_OR_RETURN(
          std::vector<int32_t> ids,
          TemplateSpecialIds(processor, item["SpecialToken"].at("id").get<std::string>(), where));
      auto& target = seen_sequence ? suffix : prefix;
      target.insert(target.end(), ids.begin(), ids.end());
    }
    // A later processor wraps the output of the earlier ones.
    tok->prefix_ids_.insert(tok->prefix_ids_.begin(), prefix.begin(), prefix.end());
    tok->suffix_ids_.insert(tok->suffix_ids_.end(), suffix.begin(), suffix.end());
    return absl::OkStatus();
  }

  static absl::Status LoadPostProcessor(const Json& processor, const std::string& where,
                                        Tokenizer* tok) {
    if (processor.is_null()) return absl::OkStatus();
    const std::string type = processor.value("type", std::string("<missing type>"));
    if (type == "ByteLevel") return absl::OkStatus();  // only adjusts offsets
    if (type == "TemplateProcessing") return LoadTemplate(processor, where, tok);
    if (type == "Sequence") {
      const Json& list = processor.at("processors");
      for (size_t i = 0; i < list.size(); ++i) {
        SY_RETURN_IF_ERROR(
            LoadPostProcessor(list[i], absl::StrCat(where, ".processors[", i, "]"), tok));
      }
      return absl::OkStatus();
    }
    return absl::UnimplementedError(
        absl::StrCat(where, ": post_processor type '", type, "' is not supported"));
  }

  static absl::Status BuildMatchers(Tokenizer* tok) {
    tok->raw_matcher_ = std::make_unique<AddedMatcher>();
    tok->normalized_matcher_ = std::make_unique<AddedMatcher>();
    for (const AddedToken& token : tok->added_tokens_) {
      if (!token.normalized || tok->normalizer_ == nullptr) {
        (token.normalized ? tok->normalized_matcher_ : tok->raw_matcher_)
            ->Add(token.content, &token);
        continue;
      }
      std::string pattern = token.content;  // HF matches normalized tokens in normalized form
      SY_RETURN_IF_ERROR(tok->normalizer_->Normalize(&pattern));
      tok->normalized_matcher_->Add(pattern, &token);
    }
    tok->raw_matcher_->SortBuckets();
    tok->normalized_matcher_->SortBuckets();
    return absl::OkStatus();
  }
};

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromFile(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open tokenizer file ", path.string()));
  std::stringstream buffer;
  buffer << in.rdbuf();
  auto tok = FromJson(buffer.str());
  if (!tok.ok()) {
    return absl::Status(tok.status().code(),
                        absl::StrCat(path.string(), ": ", tok.status().message()));
  }
  return tok;
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromJson(std::string_view json_text) {
  auto tok = std::unique_ptr<Tokenizer>(new Tokenizer());
  try {
    const Json root = Json::parse(json_text);
    SY_RETURN_IF_ERROR(Loader::Load(root, tok.get()));
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("tokenizer.json is malformed: ", e.what()));
  }
  return tok;
}

absl::Status Tokenizer::SplitAdded(const AddedMatcher& matcher,
                                   std::vector<Segment>* segments) const {
  if (matcher.empty) return absl::OkStatus();
  std::vector<Segment> out;
  for (Segment& segment : *segments) {
    if (segment.added_id >= 0) {
      out.push_back(std::move(segment));
      continue;
    }
    const std::string& text = segment.text;
    size_t emitted = 0;  // end of the last match, as extended by rstrip
    for (size_t pos = 0; pos < text.size();) {
      const AddedMatcher::Entry* entry = matcher.LongestAt(text, pos);
      if (entry == nullptr) {
        ++pos;
        continue;
      }
      size_t begin = pos, end = pos + entry->pattern.size();
      const AddedToken& token = *entry->token;
      pos = end;
      if (token.single_word) {
        int n = 0;
        const bool word_before = begin > 0 && IsWordChar(CharBefore(text, begin));
        const bool word_after = end < text.size() && IsWordChar(DecodeUtf8(text, end, &n));
        if (word_before || word_after) continue;
      }
      if (token.lstrip) {
        while (begin > emitted && IsUnicodeWhitespace(CharBefore(text, begin))) {
          const uint32_t cp = CharBefore(text, begin);
          begin -= cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
        }
      }
      if (token.rstrip) {
        int n = 0;
        while (end < text.size() && IsUnicodeWhitespace(DecodeUtf8(text, end, &n))) end += n;
      }
      if (begin > emitted) {
        out.push_back(
            {-1, text.substr(emitted, begin - emitted), segment.at_start && emitted == 0});
      }
      out.push_back({token.id, "", false});
      emitted = end;
      pos = end;
    }
    if (emitted < text.size()) {
      out.push_back({-1, text.substr(emitted), segment.at_start && emitted == 0});
    }
  }
  *segments = std::move(out);
  return absl::OkStatus();
}

absl::Status Tokenizer::TokenizeText(std::vector<Segment>* segments,
                                     std::vector<int32_t>* ids) const {
  std::vector<tokenizer_internal::Piece> pieces;
  for (Segment& segment : *segments) {
    if (segment.added_id >= 0) {
      ids->push_back(segment.added_id);
      continue;
    }
    pieces.clear();
    pieces.push_back({std::move(segment.text), segment.at_start});
    if (pre_tokenizer_ != nullptr) SY_RETURN_IF_ERROR(pre_tokenizer_->Split(&pieces));
    for (const auto& piece : pieces) model_->Tokenize(piece.text, ids);
  }
  return absl::OkStatus();
}

void Tokenizer::PostProcess(std::vector<int32_t>* ids) const {
  ids->insert(ids->begin(), prefix_ids_.begin(), prefix_ids_.end());
  ids->insert(ids->end(), suffix_ids_.begin(), suffix_ids_.end());
}

absl::StatusOr<std::vector<int32_t>> Tokenizer::Encode(std::string_view text,
                                                       bool add_special_tokens) const {
  if (const size_t bad = tokenizer_internal::FirstInvalidUtf8(text); bad != text.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("Encode: text is not valid UTF-8 (bad byte at offset ", bad, ")"));
  }
  std::vector<Segment> segments = {{-1, std::string(text), true}};
  SY_RETURN_IF_ERROR(SplitAdded(*raw_matcher_, &segments));
  if (normalizer_ != nullptr) {
    for (Segment& segment : segments) {
      if (segment.added_id < 0) SY_RETURN_IF_ERROR(normalizer_->Normalize(&segment.text));
    }
  }
  SY_RETURN_IF_ERROR(SplitAdded(*normalized_matcher_, &segments));
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  SY_RETURN_IF_ERROR(TokenizeText(&segments, &ids));
  if (add_special_tokens) PostProcess(&ids);
  return ids;
}

const std::string* Tokenizer::TokenString(int32_t id) const {
  if (auto it = added_by_id_.find(id); it != added_by_id_.end()) {
    return &added_tokens_[it->second].content;
  }
  return model_->IdToToken(id);
}

absl::StatusOr<std::string> Tokenizer::Decode(std::span<const int32_t> ids,
                                              bool skip_special_tokens) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    const std::string* token = TokenString(ids[i]);
    if (token == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("Decode: id ", ids[i], " at position ", i,
                                                     " is not in the vocabulary (size ",
                                                     vocab_size_, ")"));
    }
    if (skip_special_tokens && IsSpecial(ids[i])) continue;
    tokens.push_back(*token);
  }
  std::string text;
  if (decoder_ == nullptr) {  // HF joins with spaces when there is no decoder
    for (size_t i = 0; i < tokens.size(); ++i) absl::StrAppend(&text, i ? " " : "", tokens[i]);
    return text;
  }
  decoder_->DecodeChain(&tokens);
  for (const std::string& token : tokens) text += token;
  return text;
}

int64_t Tokenizer::vocab_size() const { return vocab_size_; }

std::optional<int32_t> Tokenizer::TokenToId(std::string_view token) const {
  if (auto it = added_by_content_.find(absl::string_view(token.data(), token.size()));
      it != added_by_content_.end()) {
    return it->second;
  }
  return model_->TokenToId(token);
}

std::optional<std::string> Tokenizer::IdToToken(int32_t id) const {
  const std::string* token = TokenString(id);
  if (token == nullptr) return std::nullopt;
  return *token;
}

bool Tokenizer::IsSpecial(int32_t id) const {
  auto it = added_by_id_.find(id);
  return it != added_by_id_.end() && added_tokens_[it->second].special;
}

// ---------------------------------------------------------------- IncrementalDecoder

namespace {
// Prompt ids kept as context, as vLLM does: enough for leading-space rules and partial bytes.
constexpr size_t kPromptContextIds = 5;
}  // namespace

IncrementalDecoder::IncrementalDecoder(const Tokenizer& tokenizer, bool skip_special_tokens,
                                       std::span<const int32_t> prompt_ids)
    : tokenizer_(tokenizer), skip_special_tokens_(skip_special_tokens) {
  const size_t keep = std::min(prompt_ids.size(), kPromptContextIds);
  ids_.assign(prompt_ids.end() - keep, prompt_ids.end());
  read_offset_ = ids_.size();
}

absl::StatusOr<std::string> IncrementalDecoder::DecodeWindow(size_t begin, size_t end) const {
  return tokenizer_.Decode(std::span<const int32_t>(ids_.data() + begin, end - begin),
                           skip_special_tokens_);
}

absl::StatusOr<std::string> IncrementalDecoder::Push(int32_t id) {
  if (!tokenizer_.IdToToken(id).has_value()) {
    return absl::InvalidArgumentError(absl::StrCat("IncrementalDecoder::Push: id ", id,
                                                   " is not in the vocabulary (size ",
                                                   tokenizer_.vocab_size(), ")"));
  }
  ids_.push_back(id);
  SY_ASSIGN_OR_RETURN(std::string prefix_text, DecodeWindow(prefix_offset_, read_offset_));
  SY_ASSIGN_OR_RETURN(std::string new_text, DecodeWindow(prefix_offset_, ids_.size()));
  // A trailing U+FFFD means a character is still incomplete: wait for more ids.
  if (new_text.size() <= prefix_text.size() || EndsWithReplacementChar(new_text)) return "";
  std::string chunk = TextAfter(prefix_text, new_text);
  // Slide the window: what lies before the old read offset is no longer needed.
  ids_.erase(ids_.begin(), ids_.begin() + static_cast<std::ptrdiff_t>(read_offset_));
  prefix_offset_ = 0;
  read_offset_ = ids_.size();
  return chunk;
}

std::string IncrementalDecoder::Flush() {
  auto prefix_text = DecodeWindow(prefix_offset_, read_offset_);
  auto new_text = DecodeWindow(prefix_offset_, ids_.size());
  std::string chunk;
  if (prefix_text.ok() && new_text.ok() && new_text->size() > prefix_text->size()) {
    chunk = TextAfter(*prefix_text, *new_text);
  }
  ids_.erase(ids_.begin(), ids_.begin() + static_cast<std::ptrdiff_t>(read_offset_));
  prefix_offset_ = 0;
  read_offset_ = ids_.size();
  return chunk;
}

}  // namespace switchyard
