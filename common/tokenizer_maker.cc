#include "common/tokenizer_maker.h"

#include <algorithm>
#include <map>
#include <string_view>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/internal/tokenizer_corpus.h"
#include "common/internal/tokenizer_pipeline.h"
#include "common/internal/tokenizer_text.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace switchyard {
namespace {

using OJson = nlohmann::ordered_json;
using Json = nlohmann::json;
using Pair = std::pair<std::string, std::string>;
// A training word: its symbols and how often it occurs.
using Word = std::pair<std::vector<std::string>, int64_t>;

constexpr char kMetaspace[] = "\xE2\x96\x81";  // U+2581, SentencePiece's space
constexpr char kLlama3Pattern[] =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr char kQwen2Pattern[] =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// How a family's tokenizer.json looks.
struct Style {
  bool sentencepiece = false;
  std::string split_pattern;  // Split pre-tokenizer; empty: ByteLevel(use_regex=true)
  bool nfc = false;
  bool ignore_merges = false;
  bool merges_as_pairs = false;       // ["a", "b"] instead of "a b" (newer files)
  std::vector<std::string> specials;  // byte-level: appended at the end of the vocab
  std::string bos;                    // empty: no BOS
  std::string eos;                    // tokenizer_config's eos_token
  std::vector<std::string> eos_tokens;
  std::string chat_template;
};

Style StyleFor(ModelFamily family) {
  Style s;
  switch (family) {
    case ModelFamily::kLlama:
    case ModelFamily::kLlama4: {
      const bool v4 = family == ModelFamily::kLlama4;
      const std::string eot = v4 ? "<|eot|>" : "<|eot_id|>";
      const std::string start = v4 ? "<|header_start|>" : "<|start_header_id|>";
      const std::string end = v4 ? "<|header_end|>" : "<|end_header_id|>";
      s.split_pattern = kLlama3Pattern;
      s.ignore_merges = true;
      s.specials = {"<|begin_of_text|>", "<|end_of_text|>", eot, start, end};
      s.bos = "<|begin_of_text|>";
      s.eos = eot;
      s.eos_tokens = {"<|end_of_text|>", eot};
      s.chat_template = absl::StrCat(
          "{{ bos_token }}{% for message in messages %}", start, "{{ message['role'] }}", end,
          "\n\n{{ message['content'] | trim }}", eot, "{% endfor %}{% if add_generation_prompt %}",
          start, "assistant", end, "\n\n{% endif %}");
      return s;
    }
    case ModelFamily::kQwen2Moe:
    case ModelFamily::kQwen3Moe:
      s.split_pattern = kQwen2Pattern;
      s.nfc = true;
      s.merges_as_pairs = true;
      s.specials = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"};
      s.eos = "<|im_end|>";
      s.eos_tokens = {"<|endoftext|>", "<|im_end|>"};
      s.chat_template =
          "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] "
          "}}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif "
          "%}";
      return s;
    case ModelFamily::kOlmoe:
      s.specials = {"<|endoftext|>", "<|padding|>"};
      s.eos = "<|endoftext|>";
      s.eos_tokens = {"<|endoftext|>"};
      s.chat_template =
          "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}\n{% "
          "endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}";
      return s;
    case ModelFamily::kMixtral:
      s.sentencepiece = true;
      s.specials = {"<unk>", "<s>", "</s>"};
      s.bos = "<s>";
      s.eos = "</s>";
      s.eos_tokens = {"</s>"};
      s.chat_template =
          "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}[INST] {{ "
          "message['content'] }} [/INST]{% else %}{{ message['content'] }}{{ eos_token }}{% endif "
          "%}{% endfor %}";
      return s;
  }
  return s;
}

std::vector<std::string> SplitChars(std::string_view text) {
  std::vector<std::string> chars;
  for (size_t pos = 0; pos < text.size();) {
    const int n = tokenizer_internal::Utf8CharLength(static_cast<unsigned char>(text[pos]));
    chars.emplace_back(text.substr(pos, n));
    pos += n;
  }
  return chars;
}

// Greedy BPE training: repeatedly merge the most frequent adjacent pair (ties: the smallest pair
// in byte order, so the result is deterministic).
std::vector<Pair> LearnMerges(std::vector<Word> words, int64_t max_merges) {
  std::vector<Pair> merges;
  while (static_cast<int64_t>(merges.size()) < max_merges) {
    absl::flat_hash_map<Pair, int64_t> counts;
    for (const auto& [symbols, freq] : words) {
      for (size_t i = 0; i + 1 < symbols.size(); ++i) counts[{symbols[i], symbols[i + 1]}] += freq;
    }
    const Pair* best = nullptr;
    int64_t best_count = 0;
    for (const auto& [pair, count] : counts) {
      if (count > best_count || (count == best_count && best != nullptr && pair < *best)) {
        best = &pair;
        best_count = count;
      }
    }
    if (best == nullptr) break;
    const Pair merge = *best;
    const std::string joined = merge.first + merge.second;
    for (auto& [symbols, freq] : words) {
      std::vector<std::string> out;
      out.reserve(symbols.size());
      for (size_t i = 0; i < symbols.size(); ++i) {
        if (i + 1 < symbols.size() && symbols[i] == merge.first && symbols[i + 1] == merge.second) {
          out.push_back(joined);
          ++i;
        } else {
          out.push_back(symbols[i]);
        }
      }
      symbols = std::move(out);
    }
    merges.push_back(merge);
  }
  return merges;
}

std::vector<Word> CountWords(const std::vector<std::string>& pieces) {
  std::map<std::string, int64_t> freq;
  for (const std::string& piece : pieces) ++freq[piece];
  std::vector<Word> words;
  for (const auto& [text, count] : freq) words.emplace_back(SplitChars(text), count);
  return words;
}

OJson AddedTokenJson(int64_t id, const std::string& content) {
  return OJson{{"id", id},        {"content", content},  {"single_word", false}, {"lstrip", false},
               {"rstrip", false}, {"normalized", false}, {"special", true}};
}

OJson ModelJson(const Style& style, const OJson& vocab, const std::vector<Pair>& merges) {
  OJson merge_list = OJson::array();
  for (const Pair& merge : merges) {
    merge_list.push_back(style.merges_as_pairs ? OJson::array({merge.first, merge.second})
                                               : OJson(merge.first + " " + merge.second));
  }
  return OJson{{"type", "BPE"},
               {"dropout", nullptr},
               {"unk_token", style.sentencepiece ? OJson("<unk>") : OJson(nullptr)},
               {"continuing_subword_prefix", nullptr},
               {"end_of_word_suffix", nullptr},
               {"fuse_unk", style.sentencepiece},
               {"byte_fallback", style.sentencepiece},
               {"ignore_merges", style.ignore_merges},
               {"vocab", vocab},
               {"merges", merge_list}};
}

OJson BosTemplate(const std::string& bos, int64_t bos_id) {
  auto special = [&](int type_id) {
    return OJson{{"SpecialToken", {{"id", bos}, {"type_id", type_id}}}};
  };
  auto sequence = [](const char* id, int type_id) {
    return OJson{{"Sequence", {{"id", id}, {"type_id", type_id}}}};
  };
  return OJson{{"type", "TemplateProcessing"},
               {"single", {special(0), sequence("A", 0)}},
               {"pair", {special(0), sequence("A", 0), special(1), sequence("B", 1)}},
               {"special_tokens", {{bos, {{"id", bos}, {"ids", {bos_id}}, {"tokens", {bos}}}}}}};
}

OJson ByteLevelJson(bool use_regex, bool trim_offsets) {
  return OJson{{"type", "ByteLevel"},
               {"add_prefix_space", false},
               {"trim_offsets", trim_offsets},
               {"use_regex", use_regex}};
}

// Pipeline JSON of a byte-level family: normalizer, pre_tokenizer, post_processor, decoder.
struct Pipeline {
  OJson normalizer, pre_tokenizer, post_processor, decoder;
};

Pipeline ByteLevelPipeline(const Style& style) {
  Pipeline p;
  p.normalizer = style.nfc ? OJson{{"type", "NFC"}} : OJson(nullptr);
  if (style.split_pattern.empty()) {
    p.pre_tokenizer = ByteLevelJson(true, true);
  } else {
    p.pre_tokenizer = OJson{{"type", "Sequence"},
                            {"pretokenizers",
                             {OJson{{"type", "Split"},
                                    {"pattern", {{"Regex", style.split_pattern}}},
                                    {"behavior", "Isolated"},
                                    {"invert", false}},
                              ByteLevelJson(false, !style.nfc)}}};
  }
  p.post_processor = ByteLevelJson(true, false);
  p.decoder = ByteLevelJson(true, true);
  return p;
}

Pipeline SentencePiecePipeline() {
  Pipeline p;
  p.normalizer = OJson{
      {"type", "Sequence"},
      {"normalizers",
       {OJson{{"type", "Prepend"}, {"prepend", kMetaspace}},
        OJson{{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", kMetaspace}}}}};
  p.pre_tokenizer = nullptr;
  p.decoder =
      OJson{{"type", "Sequence"},
            {"decoders",
             {OJson{{"type", "Replace"}, {"pattern", {{"String", kMetaspace}}}, {"content", " "}},
              OJson{{"type", "ByteFallback"}}, OJson{{"type", "Fuse"}},
              OJson{{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}}}};
  return p;
}

// Runs text through a pipeline's normalizer and pre-tokenizer, as encoding will.
absl::StatusOr<std::vector<std::string>> PreTokenize(const Pipeline& pipeline, std::string text) {
  SY_ASSIGN_OR_RETURN(auto normalizer, tokenizer_internal::ParseNormalizer(
                                           Json::parse(pipeline.normalizer.dump()), "normalizer"));
  SY_ASSIGN_OR_RETURN(auto pre_tokenizer,
                      tokenizer_internal::ParsePreTokenizer(
                          Json::parse(pipeline.pre_tokenizer.dump()), "pre_tokenizer"));
  if (normalizer != nullptr) SY_RETURN_IF_ERROR(normalizer->Normalize(&text));
  std::vector<tokenizer_internal::Piece> pieces = {{std::move(text), true}};
  if (pre_tokenizer != nullptr) SY_RETURN_IF_ERROR(pre_tokenizer->Split(&pieces));
  std::vector<std::string> out;
  for (auto& piece : pieces) out.push_back(std::move(piece.text));
  return out;
}

MadeTokenizer Finish(const Style& style, const Pipeline& pipeline, const OJson& added,
                     const OJson& model, int64_t vocab_size,
                     const absl::flat_hash_map<std::string, int64_t>& special_ids) {
  MadeTokenizer made;
  made.vocab_size = vocab_size;
  made.bos_token_id = style.bos.empty() ? -1 : special_ids.at(style.bos);
  for (const std::string& eos : style.eos_tokens) made.eos_token_ids.push_back(special_ids.at(eos));
  const OJson root{{"version", "1.0"},
                   {"truncation", nullptr},
                   {"padding", nullptr},
                   {"added_tokens", added},
                   {"normalizer", pipeline.normalizer},
                   {"pre_tokenizer", pipeline.pre_tokenizer},
                   {"post_processor", pipeline.post_processor},
                   {"decoder", pipeline.decoder},
                   {"model", model}};
  made.json = root.dump(2);
  const OJson config{{"tokenizer_class", "PreTrainedTokenizerFast"},
                     {"bos_token", style.bos.empty() ? OJson(nullptr) : OJson(style.bos)},
                     {"eos_token", style.eos},
                     {"add_bos_token", !style.bos.empty()},
                     {"add_eos_token", false},
                     {"model_max_length", 131072},
                     {"clean_up_tokenization_spaces", false},
                     {"chat_template", style.chat_template}};
  made.tokenizer_config_json = config.dump(2);
  return made;
}

// Token strings in id order. (ordered_json's own insertion searches linearly: too slow for
// 100k-token vocabularies.)
class VocabBuilder {
 public:
  // Gives `token` the next id unless it already has one (two merges can spell the same string).
  void Add(std::string token) {
    if (seen_.insert(token).second) tokens_.push_back(std::move(token));
  }
  bool Contains(const std::string& token) const { return seen_.contains(token); }
  int64_t size() const { return static_cast<int64_t>(tokens_.size()); }
  OJson ToJson() const {
    OJson vocab = OJson::object();
    auto& entries = vocab.get_ref<OJson::object_t&>();
    entries.reserve(tokens_.size());
    for (size_t id = 0; id < tokens_.size(); ++id) entries.emplace_back(tokens_[id], id);
    return vocab;
  }

 private:
  std::vector<std::string> tokens_;
  absl::flat_hash_set<std::string> seen_;
};

// Byte-level BPE: ids 0..255 are the byte alphabet, then the learned merges, then filler when
// the corpus runs out of pairs, then the family's specials.
absl::StatusOr<MadeTokenizer> MakeByteLevel(const Style& style, int64_t vocab_size) {
  const auto num_specials = static_cast<int64_t>(style.specials.size());
  if (vocab_size < 256 + num_specials) {
    return absl::InvalidArgumentError(absl::StrCat(
        "MakeTokenizer: vocab_size ", vocab_size, " is below the ", 256 + num_specials,
        " ids a byte-level tokenizer needs (256 bytes + ", num_specials, " special tokens)"));
  }
  Pipeline pipeline = ByteLevelPipeline(style);
  SY_ASSIGN_OR_RETURN(std::vector<std::string> pieces,
                      PreTokenize(pipeline, std::string(tokenizer_internal::MakerCorpus())));
  const std::vector<Pair> merges = LearnMerges(CountWords(pieces), vocab_size - 256 - num_specials);
  VocabBuilder vocab;
  const auto& alphabet = tokenizer_internal::ByteLevelAlphabet::Get();
  for (int b = 0; b < 256; ++b) vocab.Add(alphabet.Encode(static_cast<uint8_t>(b)));
  for (const Pair& merge : merges) vocab.Add(merge.first + merge.second);
  // Filler when the corpus runs out of pairs: plain vocab entries that no merge produces and no
  // pre-token can equal, so they never appear in encodings (unlike thousands of added tokens,
  // which would slow down added-token matching).
  for (int64_t i = 0; vocab.size() < vocab_size - num_specials; ++i) {
    vocab.Add(absl::StrCat("<|unused_", i, "|>"));
  }
  OJson added = OJson::array();
  absl::flat_hash_map<std::string, int64_t> special_ids;
  int64_t next_id = vocab.size();
  for (const std::string& special : style.specials) {
    added.push_back(AddedTokenJson(next_id, special));
    special_ids[special] = next_id++;
  }
  if (!style.bos.empty()) {
    pipeline.post_processor =
        OJson{{"type", "Sequence"},
              {"processors",
               {ByteLevelJson(true, false), BosTemplate(style.bos, special_ids[style.bos])}}};
  }
  return Finish(style, pipeline, added, ModelJson(style, vocab.ToJson(), merges), vocab_size,
                special_ids);
}

// SentencePiece-style training words: each starts at a U+2581 and stops before the next one or
// at a character outside the alphabet (which byte fallback will encode).
std::vector<Word> SentencePieceWords(const std::vector<std::string>& chars,
                                     const absl::flat_hash_map<std::string, int>& alphabet) {
  std::vector<std::string> words;
  std::string current;
  for (const std::string& ch : chars) {
    const bool known = alphabet.contains(ch);
    if (!known || ch == kMetaspace) {
      if (!current.empty()) words.push_back(std::move(current));
      current.clear();
    }
    if (known) current += ch;
  }
  if (!current.empty()) words.push_back(std::move(current));
  return CountWords(words);
}

// SentencePiece-style BPE (Mixtral): <unk> <s> </s>, the 256 byte tokens <0x00>..<0xFF>, the most
// frequent characters, the learned merges, then the remaining characters and filler pieces.
absl::StatusOr<MadeTokenizer> MakeSentencePiece(const Style& style, int64_t vocab_size) {
  constexpr int64_t kFixed = 3 + 256;
  if (vocab_size < kFixed) {
    return absl::InvalidArgumentError(absl::StrCat(
        "MakeTokenizer: vocab_size ", vocab_size, " is below the ", kFixed,
        " ids a SentencePiece-style tokenizer needs (<unk>, <s>, </s> and 256 byte tokens)"));
  }
  Pipeline pipeline = SentencePiecePipeline();
  SY_ASSIGN_OR_RETURN(std::vector<std::string> pieces,
                      PreTokenize(pipeline, std::string(tokenizer_internal::MakerCorpus())));
  const std::vector<std::string> chars = SplitChars(pieces.empty() ? "" : pieces[0]);
  std::map<std::string, int64_t> char_counts;
  for (const std::string& ch : chars) {
    if (static_cast<unsigned char>(ch[0]) >= 0x20) ++char_counts[ch];  // controls: byte fallback
  }
  std::vector<std::pair<std::string, int64_t>> ranked(char_counts.begin(), char_counts.end());
  std::stable_sort(ranked.begin(), ranked.end(),
                   [](const auto& a, const auto& b) { return a.second > b.second; });
  const int64_t room = vocab_size - kFixed;
  const auto num_first_chars = std::min<int64_t>(static_cast<int64_t>(ranked.size()), room / 2);
  absl::flat_hash_map<std::string, int> alphabet;
  for (int64_t i = 0; i < num_first_chars; ++i) alphabet[ranked[i].first] = 1;
  const std::vector<Pair> merges =
      LearnMerges(SentencePieceWords(chars, alphabet), room - num_first_chars);

  VocabBuilder vocab;
  absl::flat_hash_map<std::string, int64_t> special_ids;
  OJson added = OJson::array();
  for (const std::string& special : style.specials) {
    special_ids[special] = vocab.size();
    added.push_back(AddedTokenJson(vocab.size(), special));
    vocab.Add(special);
  }
  for (int b = 0; b < 256; ++b) vocab.Add(absl::StrFormat("<0x%02X>", b));
  for (int64_t i = 0; i < num_first_chars; ++i) vocab.Add(ranked[i].first);
  for (const Pair& merge : merges) vocab.Add(merge.first + merge.second);
  for (size_t i = num_first_chars; i < ranked.size() && vocab.size() < vocab_size; ++i) {
    vocab.Add(ranked[i].first);
  }
  for (int64_t i = 0; vocab.size() < vocab_size; ++i) vocab.Add(absl::StrCat("<unused_", i, ">"));
  pipeline.post_processor = BosTemplate(style.bos, special_ids[style.bos]);
  return Finish(style, pipeline, added, ModelJson(style, vocab.ToJson(), merges), vocab_size,
                special_ids);
}

}  // namespace

absl::StatusOr<MadeTokenizer> MakeTokenizer(ModelFamily family, int64_t vocab_size) {
  const Style style = StyleFor(family);
  try {
    return style.sentencepiece ? MakeSentencePiece(style, vocab_size)
                               : MakeByteLevel(style, vocab_size);
  } catch (const nlohmann::json::exception& e) {
    return absl::InternalError(absl::StrCat("MakeTokenizer: JSON error: ", e.what()));
  }
}

}  // namespace switchyard
