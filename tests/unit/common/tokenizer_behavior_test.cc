// Tokenizer behaviour with hand-derived expectations: characters split over tokens in
// incremental decoding, digit and contraction splitting, special tokens, errors, the CLI.
#include <sys/wait.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "common/tokenizer.h"
#include "gtest/gtest.h"

namespace switchyard {
namespace {

namespace fs = std::filesystem;

fs::path DataFile(const std::string& name) {
  const char* src = std::getenv("SWITCHYARD_SOURCE_DIR");
  return fs::path(src != nullptr ? src : SWITCHYARD_TEST_SOURCE_DIR) / "tests" / "data" /
         "tokenizer" / name;
}

std::unique_ptr<Tokenizer> Made(const std::string& name) {
  auto tok = Tokenizer::FromFile(DataFile(name + ".tokenizer.json"));
  EXPECT_TRUE(tok.ok()) << tok.status();
  return tok.ok() ? *std::move(tok) : nullptr;
}

std::vector<std::string> Tokens(const Tokenizer& tok, const std::string& text) {
  std::vector<std::string> tokens;
  const std::vector<int32_t> ids = tok.Encode(text, false).value();
  for (int32_t id : ids) tokens.push_back(*tok.IdToToken(id));
  return tokens;
}

// Byte-level ids 0..255 of the made tokenizers are the bytes themselves.
TEST(IncrementalDecoderTest, ByteLevelHoldsPartialCharacters) {
  const auto tok = Made("llama");
  ASSERT_NE(tok, nullptr);
  IncrementalDecoder decoder(*tok);
  EXPECT_EQ(decoder.Push('a').value(), "a");
  EXPECT_EQ(decoder.Push(0xF0).value(), "");
  EXPECT_EQ(decoder.Push(0x9F).value(), "");
  EXPECT_EQ(decoder.Push(0x91).value(), "");
  EXPECT_EQ(decoder.Push(0x8D).value(), "\xF0\x9F\x91\x8D");  // U+1F44D thumbs up
  EXPECT_EQ(decoder.Push('b').value(), "b");
  EXPECT_EQ(decoder.Flush(), "");
}

// Mixtral-style ids 3..258 are <0x00>..<0xFF>.
TEST(IncrementalDecoderTest, ByteFallbackHoldsPartialCharacters) {
  const auto tok = Made("mixtral");
  ASSERT_NE(tok, nullptr);
  IncrementalDecoder decoder(*tok);
  EXPECT_EQ(decoder.Push(3 + 0xE4).value(), "");
  EXPECT_EQ(decoder.Push(3 + 0xB8).value(), "");
  EXPECT_EQ(decoder.Push(3 + 0xAD).value(), "\xE4\xB8\xAD");  // U+4E2D
}

TEST(IncrementalDecoderTest, FlushReleasesInvalidBytesAsReplacementCharacter) {
  const auto tok = Made("llama");
  ASSERT_NE(tok, nullptr);
  IncrementalDecoder decoder(*tok);
  EXPECT_EQ(decoder.Push('x').value(), "x");
  EXPECT_EQ(decoder.Push(0xF0).value(), "");
  EXPECT_EQ(decoder.Flush(), "\xEF\xBF\xBD");
}

TEST(IncrementalDecoderTest, SentencePieceKeepsSpacesAfterPrompt) {
  const auto tok = Made("mixtral");
  ASSERT_NE(tok, nullptr);
  const std::vector<int32_t> prompt = tok->Encode("Hello").value();
  const std::vector<int32_t> more = tok->Encode("world", false).value();  // starts with ▁
  IncrementalDecoder decoder(*tok, /*skip_special_tokens=*/true, prompt);
  std::string streamed;
  for (int32_t id : more) streamed += decoder.Push(id).value();
  streamed += decoder.Flush();
  EXPECT_EQ(streamed, " world");
}

TEST(IncrementalDecoderTest, SkipsSpecialTokens) {
  const auto tok = Made("qwen3_moe");
  ASSERT_NE(tok, nullptr);
  const int32_t im_end = *tok->TokenToId("<|im_end|>");
  IncrementalDecoder skipping(*tok, true);
  IncrementalDecoder keeping(*tok, false);
  EXPECT_EQ(skipping.Push(im_end).value(), "");
  EXPECT_EQ(keeping.Push(im_end).value(), "<|im_end|>");
}

TEST(IncrementalDecoderTest, UnknownIdIsInvalidArgument) {
  const auto tok = Made("llama");
  ASSERT_NE(tok, nullptr);
  IncrementalDecoder decoder(*tok);
  EXPECT_EQ(decoder.Push(100000).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(decoder.Push(-1).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(decoder.Push('a').value(), "a");
}

TEST(TokenizerTest, Llama3SplitsDigitsInGroupsOfUpToThree) {
  const auto tok = Made("llama");
  ASSERT_NE(tok, nullptr);
  size_t pos = 0;
  std::vector<size_t> ends;
  for (const std::string& token : Tokens(*tok, "1234567")) ends.push_back(pos += token.size());
  EXPECT_EQ(pos, 7u);
  // Pre-tokens are 123|456|7: a token never crosses offsets 3 or 6.
  EXPECT_NE(std::find(ends.begin(), ends.end(), 3u), ends.end());
  EXPECT_NE(std::find(ends.begin(), ends.end(), 6u), ends.end());
}

TEST(TokenizerTest, QwenSplitsSingleDigits) {
  const auto tok = Made("qwen3_moe");
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(Tokens(*tok, "2024"), (std::vector<std::string>{"2", "0", "2", "4"}));
}

TEST(TokenizerTest, ContractionsArePreTokens) {
  const auto tok = Made("llama");
  ASSERT_NE(tok, nullptr);
  for (const char* suffix : {"'s", "'t", "'re"}) {
    const std::vector<std::string> tokens = Tokens(*tok, std::string("they") + suffix);
    size_t pos = 0;
    bool boundary = false;
    for (const std::string& token : tokens) boundary |= (pos += token.size()) == 4;
    EXPECT_TRUE(boundary) << suffix;
  }
}

TEST(TokenizerTest, SpecialTokensAndPostProcessor) {
  const auto tok = Made("llama");
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->vocab_size(), 512);
  const int32_t bos = *tok->TokenToId("<|begin_of_text|>");
  const int32_t eot = *tok->TokenToId("<|eot_id|>");
  EXPECT_TRUE(tok->IsSpecial(bos));
  EXPECT_FALSE(tok->IsSpecial('a'));
  EXPECT_EQ(tok->Encode("<|eot_id|>", false).value(), std::vector<int32_t>{eot});
  EXPECT_EQ(tok->Encode("<|eot_id|>").value(), (std::vector<int32_t>{bos, eot}));
  EXPECT_EQ(tok->Encode("").value(), std::vector<int32_t>{bos});
  EXPECT_EQ(tok->Decode(std::vector<int32_t>{bos, 'H', 'i', eot}, true).value(), "Hi");
  EXPECT_EQ(tok->Decode(std::vector<int32_t>{bos, 'H', 'i'}).value(), "<|begin_of_text|>Hi");
}

TEST(TokenizerTest, RoundTripsText) {
  for (const std::string name : {"llama", "olmoe", "mixtral"}) {
    const auto tok = Made(name);
    ASSERT_NE(tok, nullptr);
    for (const std::string text :
         {"Grüße, Müller! Ärger über Öl.", "中文分词测试。",
          "👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈", "a  b\t\tc\n\n d ",
          "x = [1, 22, 333, 4444]; // it's", "  leading", "trailing  "}) {
      EXPECT_EQ(tok->Decode(tok->Encode(text, false).value()).value(), text) << name;
    }
  }
}

TEST(TokenizerTest, EncodingIsThreadSafe) {
  const auto tok = Made("qwen3_moe");
  ASSERT_NE(tok, nullptr);
  const std::string text = "Thread safety: 并发 🧵 test 12345";
  const std::vector<int32_t> expected = tok->Encode(text).value();
  std::vector<std::thread> threads;
  std::vector<bool> same(4, false);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      bool ok = true;
      for (int i = 0; i < 200; ++i) ok = ok && tok->Encode(text).value() == expected;
      same[t] = ok;
    });
  }
  for (auto& thread : threads) thread.join();
  for (int t = 0; t < 4; ++t) EXPECT_TRUE(same[t]) << t;
}

TEST(TokenizerErrorTest, DecodeUnknownIdIsInvalidArgument) {
  const auto tok = Made("mixtral");
  ASSERT_NE(tok, nullptr);
  auto text = tok->Decode(std::vector<int32_t>{1, 512});
  EXPECT_EQ(text.status().code(), absl::StatusCode::kInvalidArgument) << text.status();
  EXPECT_FALSE(tok->IdToToken(512).has_value());
}

TEST(TokenizerErrorTest, EncodeRejectsInvalidUtf8) {
  const auto tok = Made("llama");
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->Encode("ab\xC3").status().code(), absl::StatusCode::kInvalidArgument);
}

constexpr char kTinyModel[] =
    R"("model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]})";

void ExpectLoadError(const std::string& json, absl::StatusCode code, const std::string& needle) {
  auto tok = Tokenizer::FromJson(json);
  ASSERT_FALSE(tok.ok()) << json;
  EXPECT_EQ(tok.status().code(), code) << tok.status();
  EXPECT_NE(tok.status().message().find(needle), std::string::npos) << tok.status();
}

TEST(TokenizerErrorTest, BadFilesGiveClearErrors) {
  ExpectLoadError("{\"model\": {", absl::StatusCode::kInvalidArgument, "malformed");
  ExpectLoadError(R"({"model": {"type": "Magic", "vocab": {}}})",
                  absl::StatusCode::kInvalidArgument, "Magic");
  ExpectLoadError(R"({"model": {"type": "Unigram", "vocab": []}})",
                  absl::StatusCode::kUnimplemented, "Unigram");
  ExpectLoadError(R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": ["a c"]}})",
                  absl::StatusCode::kInvalidArgument, "'c' is not in the vocab");
  ExpectLoadError(
      std::string(R"({"pre_tokenizer": {"type": "BertPreTokenizer"}, )") + kTinyModel + "}",
      absl::StatusCode::kUnimplemented, "BertPreTokenizer");
  ExpectLoadError(std::string(R"({"normalizer": {"type": "Lowercase"}, )") + kTinyModel + "}",
                  absl::StatusCode::kUnimplemented, "Lowercase");
  ExpectLoadError(std::string(R"({"decoder": {"type": "WordPiece"}, )") + kTinyModel + "}",
                  absl::StatusCode::kUnimplemented, "WordPiece");
  ExpectLoadError(
      std::string(R"({"post_processor": {"type": "RobertaProcessing"}, )") + kTinyModel + "}",
      absl::StatusCode::kUnimplemented, "RobertaProcessing");
  ExpectLoadError(std::string(R"({"pre_tokenizer": {"type": "Split", "pattern": {"Regex": "(["},
                                  "behavior": "Isolated"}, )") +
                      kTinyModel + "}",
                  absl::StatusCode::kInvalidArgument, "does not compile");
  EXPECT_EQ(Tokenizer::FromFile("/nonexistent/tokenizer.json").status().code(),
            absl::StatusCode::kNotFound);
}

TEST(TokenizerTest, TinyModelMergesAndDropsUnknownCharacters) {
  auto tok = Tokenizer::FromJson(std::string("{") + kTinyModel + "}");
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->Encode("abxa").value(), (std::vector<int32_t>{2, 0}));
  EXPECT_EQ((*tok)->Decode(std::vector<int32_t>{2, 0}).value(), "ab a");  // no decoder: spaces
}

// Runs the CLI; returns its exit code and stdout.
std::pair<int, std::string> RunCli(const std::string& args) {
  const char* bin = std::getenv("SWITCHYARD_BIN_DIR");
  const std::string command =
      (fs::path(bin != nullptr ? bin : SWITCHYARD_TEST_BIN_DIR) / "switchyard-tokenize").string() +
      " " + args + " 2>/dev/null";
  FILE* pipe = popen(command.c_str(), "r");
  std::string out;
  char buffer[256];
  while (pipe != nullptr && fgets(buffer, sizeof(buffer), pipe) != nullptr) out += buffer;
  const int status = pipe != nullptr ? pclose(pipe) : -1;
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

TEST(TokenizeCliTest, EncodesDecodesAndReportsErrors) {
  const std::string file = DataFile("mixtral.tokenizer.json").string();
  const auto tok = Made("mixtral");
  ASSERT_NE(tok, nullptr);
  std::string ids;
  const std::vector<int32_t> encoded = tok->Encode("Hallo Welt").value();
  for (int32_t id : encoded) {
    if (!ids.empty()) ids.push_back(',');
    ids.append(std::to_string(id));
  }
  EXPECT_EQ(ids.substr(0, 2), "1,");  // BOS from the template
  EXPECT_EQ(RunCli("--tokenizer " + file + " --encode 'Hallo Welt'"),
            std::make_pair(0, ids + "\n"));
  EXPECT_EQ(RunCli("--tokenizer " + file + " --encode 'Hallo Welt' --no-special"),
            std::make_pair(0, ids.substr(2) + "\n"));
  EXPECT_EQ(RunCli("--tokenizer " + file + " --decode " + ids.substr(2)),
            std::make_pair(0, std::string("Hallo Welt\n")));
  EXPECT_EQ(RunCli("--tokenizer " + file + " --decode 999999").first, 1);
  EXPECT_EQ(RunCli("--tokenizer /nonexistent.json --encode x").first, 1);
  EXPECT_EQ(RunCli("--tokenizer " + file).first, 2);
  EXPECT_EQ(RunCli("--bogus").first, 2);
}

}  // namespace
}  // namespace switchyard
