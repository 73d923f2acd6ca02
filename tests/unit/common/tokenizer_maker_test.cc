// Tokenizer maker tests: exact vocab sizes, family specials, round trips, determinism, and ids
// that agree with Hugging Face's `tokenizers` (the golden files were generated from the made
// tokenizers with vocab_size 512 by tests/data/tokenizer/generate_expected.js).
#include "common/tokenizer_maker.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "common/tokenizer.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace switchyard {
namespace {

using Json = nlohmann::json;

const ModelFamily kFamilies[] = {ModelFamily::kLlama,    ModelFamily::kLlama4,
                                 ModelFamily::kQwen2Moe, ModelFamily::kQwen3Moe,
                                 ModelFamily::kOlmoe,    ModelFamily::kMixtral};

const char* const kTexts[] = {
    "Hello, world! It's a test; they're here and we've seen it.",
    "Grüße aus München: Äpfel, Öl und Übermut.",
    "我们今天去北京。",
    "Emoji 👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈 🇩🇪",
    "code:\n    for (int i = 0; i < 10; ++i) {}\n\n",
    "Digits 1 12 123 1234 12345",
    "   spaces   and\ttabs  ",
};

std::unique_ptr<Tokenizer> Load(const MadeTokenizer& made) {
  auto tok = Tokenizer::FromJson(made.json);
  EXPECT_TRUE(tok.ok()) << tok.status();
  return tok.ok() ? *std::move(tok) : nullptr;
}

class MakerTest : public ::testing::TestWithParam<ModelFamily> {};

TEST_P(MakerTest, RoundTripsWithExactVocabSize) {
  for (int64_t vocab_size : {300, 512, 2000}) {
    auto made = MakeTokenizer(GetParam(), vocab_size);
    ASSERT_TRUE(made.ok()) << made.status();
    EXPECT_EQ(made->vocab_size, vocab_size);
    const auto tok = Load(*made);
    ASSERT_NE(tok, nullptr);
    EXPECT_EQ(tok->vocab_size(), vocab_size);
    for (int32_t id = 0; id < vocab_size; ++id) EXPECT_TRUE(tok->IdToToken(id).has_value()) << id;
    for (const char* text : kTexts) {
      auto ids = tok->Encode(text, false);
      ASSERT_TRUE(ids.ok()) << ids.status();
      EXPECT_EQ(tok->Decode(*ids).value(), text)
          << ModelFamilyName(GetParam()) << " " << vocab_size;
    }
  }
}

TEST_P(MakerTest, SpecialTokensAndConfig) {
  auto made = MakeTokenizer(GetParam(), 512);
  ASSERT_TRUE(made.ok()) << made.status();
  const auto tok = Load(*made);
  ASSERT_NE(tok, nullptr);
  const Json config = Json::parse(made->tokenizer_config_json);
  ASSERT_FALSE(made->eos_token_ids.empty());
  for (int64_t eos : made->eos_token_ids) EXPECT_TRUE(tok->IsSpecial(static_cast<int32_t>(eos)));
  EXPECT_TRUE(config.at("chat_template").is_string());
  EXPECT_EQ(tok->TokenToId(config.at("eos_token").get<std::string>()).value_or(-1),
            *std::find(made->eos_token_ids.begin(), made->eos_token_ids.end(),
                       *tok->TokenToId(config.at("eos_token").get<std::string>())));
  const std::vector<int32_t> ids = tok->Encode("hi").value();
  if (made->bos_token_id >= 0) {
    EXPECT_EQ(ids.front(), made->bos_token_id);
    EXPECT_EQ(*tok->IdToToken(static_cast<int32_t>(made->bos_token_id)),
              config.at("bos_token").get<std::string>());
    EXPECT_TRUE(config.at("add_bos_token").get<bool>());
  } else {
    EXPECT_EQ(ids, tok->Encode("hi", false).value());  // nothing added
    EXPECT_TRUE(config.at("bos_token").is_null());
  }
}

TEST_P(MakerTest, IsDeterministic) {
  auto a = MakeTokenizer(GetParam(), 700);
  auto b = MakeTokenizer(GetParam(), 700);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->json, b->json);
}

TEST_P(MakerTest, RejectsTooSmallVocab) {
  EXPECT_EQ(MakeTokenizer(GetParam(), 100).status().code(), absl::StatusCode::kInvalidArgument);
}

INSTANTIATE_TEST_SUITE_P(Families, MakerTest, ::testing::ValuesIn(kFamilies),
                         [](const auto& info) { return std::string(ModelFamilyName(info.param)); });

TEST(MakerTest, FamilySpecials) {
  auto llama = MakeTokenizer(ModelFamily::kLlama, 512);
  auto llama4 = MakeTokenizer(ModelFamily::kLlama4, 512);
  auto mixtral = MakeTokenizer(ModelFamily::kMixtral, 512);
  auto qwen = MakeTokenizer(ModelFamily::kQwen3Moe, 512);
  ASSERT_TRUE(llama.ok() && llama4.ok() && mixtral.ok() && qwen.ok());
  const auto tok = Load(*llama);
  EXPECT_EQ(*tok->IdToToken(507), "<|begin_of_text|>");
  EXPECT_EQ(*tok->IdToToken(511), "<|end_header_id|>");
  EXPECT_EQ(llama->eos_token_ids, (std::vector<int64_t>{508, 509}));
  EXPECT_EQ(*Load(*llama4)->IdToToken(509), "<|eot|>");
  EXPECT_EQ(mixtral->bos_token_id, 1);
  EXPECT_EQ(mixtral->eos_token_ids, std::vector<int64_t>{2});
  const auto mix = Load(*mixtral);
  EXPECT_EQ(*mix->IdToToken(0), "<unk>");
  EXPECT_EQ(*mix->IdToToken(3), "<0x00>");
  EXPECT_EQ(*mix->IdToToken(258), "<0xFF>");
  EXPECT_EQ(qwen->bos_token_id, -1);
  EXPECT_EQ(*Load(*qwen)->IdToToken(static_cast<int32_t>(qwen->eos_token_ids[1])), "<|im_end|>");
}

// Real checkpoints have large vocabularies; the corpus runs out of pairs long before, so the rest
// is filler that must still give exactly vocab_size ids.
TEST(MakerTest, LargeVocabularies) {
  for (const auto& [family, vocab_size] : {std::pair{ModelFamily::kLlama, int64_t{128256}},
                                           std::pair{ModelFamily::kMixtral, int64_t{32000}},
                                           std::pair{ModelFamily::kQwen3Moe, int64_t{151936}}}) {
    auto made = MakeTokenizer(family, vocab_size);
    ASSERT_TRUE(made.ok()) << made.status();
    const auto tok = Load(*made);
    ASSERT_NE(tok, nullptr);
    EXPECT_EQ(tok->vocab_size(), vocab_size);
    EXPECT_TRUE(tok->IdToToken(static_cast<int32_t>(vocab_size - 1)).has_value());
    for (int64_t eos : made->eos_token_ids) EXPECT_LT(eos, vocab_size);
    for (const char* text : kTexts) {
      EXPECT_EQ(tok->Decode(tok->Encode(text, false).value()).value(), text);
    }
  }
}

// The made tokenizers with vocab_size 512 must encode as HF tokenizers encodes the committed
// copies of them.
TEST(MakerTest, AgreesWithHuggingFaceGoldenIds) {
  const char* src = std::getenv("SWITCHYARD_SOURCE_DIR");
  const std::filesystem::path dir =
      std::filesystem::path(src != nullptr ? src : SWITCHYARD_TEST_SOURCE_DIR) / "tests" / "data" /
      "tokenizer";
  const std::pair<ModelFamily, const char*> golden[] = {
      {ModelFamily::kLlama, "llama"},        {ModelFamily::kLlama4, "llama4"},
      {ModelFamily::kQwen2Moe, "qwen3_moe"}, {ModelFamily::kQwen3Moe, "qwen3_moe"},
      {ModelFamily::kOlmoe, "olmoe"},        {ModelFamily::kMixtral, "mixtral"}};
  for (const auto& [family, name] : golden) {
    auto made = MakeTokenizer(family, 512);
    ASSERT_TRUE(made.ok()) << made.status();
    const auto tok = Load(*made);
    ASSERT_NE(tok, nullptr);
    std::ifstream in(dir / (std::string(name) + ".expected.json"));
    std::stringstream buffer;
    buffer << in.rdbuf();
    const Json expected = Json::parse(buffer.str());
    for (const Json& c : expected.at("cases")) {
      EXPECT_EQ(tok->Encode(c.at("text").get<std::string>()).value(),
                c.at("ids").get<std::vector<int32_t>>())
          << name << ": " << c.at("text");
    }
  }
}

}  // namespace
}  // namespace switchyard
