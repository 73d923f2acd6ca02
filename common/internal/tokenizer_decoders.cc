// Decoders of tokenizer.json: they turn token strings back into text (HF's decode_chain).
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "common/internal/tokenizer_pipeline.h"
#include "common/internal/tokenizer_text.h"
#include "common/status_macros.h"

namespace switchyard::tokenizer_internal {
namespace {

using Json = nlohmann::json;

class SequenceDecoder : public Decoder {
 public:
  explicit SequenceDecoder(std::vector<std::unique_ptr<Decoder>> steps)
      : steps_(std::move(steps)) {}
  void DecodeChain(std::vector<std::string>* tokens) const override {
    for (const auto& step : steps_) step->DecodeChain(tokens);
  }

 private:
  std::vector<std::unique_ptr<Decoder>> steps_;
};

class ByteLevelDecoder : public Decoder {
 public:
  void DecodeChain(std::vector<std::string>* tokens) const override {
    const ByteLevelAlphabet& alphabet = ByteLevelAlphabet::Get();
    std::string bytes;
    for (const std::string& token : *tokens) {
      const size_t mark = bytes.size();
      bool all_mapped = true;
      for (size_t pos = 0; pos < token.size();) {
        int n = 0;
        const int byte = alphabet.CharToByte(DecodeUtf8(token, pos, &n));
        if (byte < 0) {
          all_mapped = false;
          break;
        }
        bytes.push_back(static_cast<char>(byte));
        pos += n;
      }
      if (!all_mapped) {  // not a byte-level token (an added token): keep its text
        bytes.resize(mark);
        bytes.append(token);
      }
    }
    *tokens = {Utf8Lossy(bytes)};
  }
};

class ReplaceDecoder : public Decoder {
 public:
  ReplaceDecoder(std::unique_ptr<Regex> pattern, std::string content)
      : pattern_(std::move(pattern)), content_(std::move(content)) {}
  void DecodeChain(std::vector<std::string>* tokens) const override {
    for (std::string& token : *tokens) {
      auto replaced = pattern_->ReplaceAll(token, content_);
      if (replaced.ok()) token = *std::move(replaced);
    }
  }

 private:
  std::unique_ptr<Regex> pattern_;
  std::string content_;
};

// "<0xAB>" -> 0xAB, or -1.
int ParseByteToken(const std::string& token) {
  if (token.size() != 6 || token.compare(0, 3, "<0x") != 0 || token[5] != '>') return -1;
  auto hex = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  const int hi = hex(token[3]), lo = hex(token[4]);
  return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

class ByteFallbackDecoder : public Decoder {
 public:
  void DecodeChain(std::vector<std::string>* tokens) const override {
    std::vector<std::string> out;
    std::string pending;
    auto flush = [&] {
      if (pending.empty()) return;
      if (IsValidUtf8(pending)) {
        out.push_back(pending);
      } else {
        for (size_t i = 0; i < pending.size(); ++i) out.push_back("\xEF\xBF\xBD");
      }
      pending.clear();
    };
    for (std::string& token : *tokens) {
      const int byte = ParseByteToken(token);
      if (byte >= 0) {
        pending.push_back(static_cast<char>(byte));
      } else {
        flush();
        out.push_back(std::move(token));
      }
    }
    flush();
    *tokens = std::move(out);
  }
};

class FuseDecoder : public Decoder {
 public:
  void DecodeChain(std::vector<std::string>* tokens) const override {
    std::string all;
    for (const std::string& token : *tokens) all += token;
    *tokens = {std::move(all)};
  }
};

class StripDecoder : public Decoder {
 public:
  StripDecoder(std::string content, int num_start, int num_stop)
      : content_(std::move(content)), num_start_(num_start), num_stop_(num_stop) {}
  void DecodeChain(std::vector<std::string>* tokens) const override {
    if (content_.empty()) return;
    const size_t n = content_.size();
    for (std::string& token : *tokens) {
      size_t begin = 0, end = token.size();
      for (int i = 0; i < num_start_ && token.compare(begin, n, content_) == 0; ++i) begin += n;
      for (int i = 0; i < num_stop_ && end >= begin + n && token.compare(end - n, n, content_) == 0;
           ++i) {
        end -= n;
      }
      token = token.substr(begin, end - begin);
    }
  }

 private:
  std::string content_;
  int num_start_, num_stop_;
};

class MetaspaceDecoder : public Decoder {
 public:
  MetaspaceDecoder(std::string replacement, PrependScheme scheme)
      : replacement_(std::move(replacement)), scheme_(scheme) {}
  void DecodeChain(std::vector<std::string>* tokens) const override {
    for (size_t i = 0; i < tokens->size(); ++i) {
      const bool drop = i == 0 && scheme_ != PrependScheme::kNever;
      (*tokens)[i] = absl::StrReplaceAll((*tokens)[i], {{replacement_, drop ? "" : " "}});
    }
  }

 private:
  std::string replacement_;
  PrependScheme scheme_;
};

absl::StatusOr<std::unique_ptr<Decoder>> ParseDecoderImpl(const Json& json,
                                                          const std::string& where) {
  if (json.is_null()) return nullptr;
  const std::string type = ComponentType(json);
  if (type == "Sequence") {
    std::vector<std::unique_ptr<Decoder>> steps;
    const Json& list = json.at("decoders");
    for (size_t i = 0; i < list.size(); ++i) {
      SY_ASSIGN_OR_RETURN(auto step,
                          ParseDecoderImpl(list[i], absl::StrCat(where, ".decoders[", i, "]")));
      if (step != nullptr) steps.push_back(std::move(step));
    }
    return std::make_unique<SequenceDecoder>(std::move(steps));
  }
  if (type == "ByteLevel") return std::make_unique<ByteLevelDecoder>();
  if (type == "ByteFallback") return std::make_unique<ByteFallbackDecoder>();
  if (type == "Fuse") return std::make_unique<FuseDecoder>();
  if (type == "Replace") {
    SY_ASSIGN_OR_RETURN(auto pattern, ParsePattern(json.at("pattern"), where + ".pattern"));
    return std::make_unique<ReplaceDecoder>(std::move(pattern),
                                            json.at("content").get<std::string>());
  }
  if (type == "Strip") {
    return std::make_unique<StripDecoder>(json.at("content").get<std::string>(),
                                          json.value("start", 0), json.value("stop", 0));
  }
  if (type == "Metaspace") {
    SY_ASSIGN_OR_RETURN(PrependScheme scheme, ParsePrependScheme(json, where));
    return std::make_unique<MetaspaceDecoder>(
        json.value("replacement", std::string("\xE2\x96\x81")), scheme);
  }
  return UnsupportedComponent("decoder", json, where);
}

}  // namespace

absl::StatusOr<std::unique_ptr<Decoder>> ParseDecoder(const Json& json, const std::string& where) {
  return GuardJson<std::unique_ptr<Decoder>>(where, [&] { return ParseDecoderImpl(json, where); });
}

}  // namespace switchyard::tokenizer_internal
