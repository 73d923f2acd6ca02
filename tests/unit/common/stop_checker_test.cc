#include "common/stop_checker.h"

#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"

namespace switchyard {
namespace {

constexpr int32_t kEos = 2;
constexpr int32_t kText = 100;  // an ordinary token id

StopChecker Make(StopConfig config) {
  auto checker = StopChecker::Create(std::move(config));
  EXPECT_TRUE(checker.ok()) << checker.status();
  return std::move(checker).value();
}

StopConfig WithStops(std::vector<std::string> stops, int64_t max_tokens = 100) {
  StopConfig config;
  config.stop_strings = std::move(stops);
  config.eos_token_ids = {kEos};
  config.max_tokens = max_tokens;
  return config;
}

// Feeds the deltas as ordinary tokens; returns everything released and the last result.
std::pair<std::string, StopResult> Feed(StopChecker& checker,
                                        const std::vector<std::string>& deltas) {
  std::string released;
  StopResult last;
  for (const std::string& delta : deltas) {
    last = checker.Append(kText, delta);
    released += last.text;
    if (last.finished()) break;
  }
  return {released, last};
}

TEST(StopCheckerTest, StopStringInsideOneDelta) {
  StopChecker checker = Make(WithStops({"STOP"}));
  auto [released, last] = Feed(checker, {"Hello", " wor", "ld STOP and more"});
  EXPECT_EQ(released, "Hello world ");
  EXPECT_EQ(last.finish_reason, FinishReason::kStop);
  EXPECT_EQ(last.stop_string, "STOP");
  EXPECT_FALSE(last.stop_token_id.has_value());
  EXPECT_TRUE(checker.finished());
}

TEST(StopCheckerTest, StopStringSplitAcrossThreeDeltasIsNeverStreamed) {
  StopChecker checker = Make(WithStops({"<end>"}));
  StopResult r1 = checker.Append(kText, "abc<e");
  EXPECT_EQ(r1.text, "abc");  // "<e" could start "<end>"
  EXPECT_EQ(checker.held_text(), "<e");
  StopResult r2 = checker.Append(kText, "n");
  EXPECT_EQ(r2.text, "");
  EXPECT_EQ(checker.held_text(), "<en");
  StopResult r3 = checker.Append(kText, "d>tail");
  EXPECT_EQ(r3.text, "");
  EXPECT_EQ(r3.finish_reason, FinishReason::kStop);
  EXPECT_EQ(r3.stop_string, "<end>");
}

TEST(StopCheckerTest, HeldTailIsReleasedWhenItStopsMatching) {
  StopChecker checker = Make(WithStops({"<end>"}));
  EXPECT_EQ(checker.Append(kText, "x<en").text, "x");
  EXPECT_EQ(checker.Append(kText, "try").text, "<entry");
  EXPECT_FALSE(checker.finished());
}

TEST(StopCheckerTest, OverlappingCandidatesAreHeldCorrectly) {
  // "ab" is a complete stop string and a prefix of "abc". Holding "a" is needed; once "ab" is
  // complete the sequence stops at it.
  StopChecker checker = Make(WithStops({"abc", "ab"}));
  EXPECT_EQ(checker.Append(kText, "xa").text, "x");
  StopResult r = checker.Append(kText, "bc");
  EXPECT_EQ(r.finish_reason, FinishReason::kStop);
  EXPECT_EQ(r.stop_string, "ab");  // completes first, whatever the list order
  EXPECT_EQ(r.text, "");

  // Only "abc" is a stop string: "ab" is held (a prefix of "abc"), then released on "d".
  StopChecker checker2 = Make(WithStops({"abc"}));
  EXPECT_EQ(checker2.Append(kText, "zab").text, "z");
  EXPECT_EQ(checker2.held_text(), "ab");
  EXPECT_EQ(checker2.Append(kText, "d").text, "abd");
}

TEST(StopCheckerTest, WinnerDoesNotDependOnHowTheTextIsSplit) {
  // "c" completes before "bcd" when the text arrives a character at a time.
  for (const std::vector<std::string>& deltas :
       {std::vector<std::string>{"abcd"}, std::vector<std::string>{"a", "b", "c", "d"}}) {
    StopChecker checker = Make(WithStops({"bcd", "c"}));
    auto [released, last] = Feed(checker, deltas);
    EXPECT_EQ(last.stop_string, "c");
    EXPECT_EQ(released, "ab");
  }
}

TEST(StopCheckerTest, IncludeStopStringInOutput) {
  StopConfig config = WithStops({"END"});
  config.include_stop_str_in_output = true;
  StopChecker checker = Make(config);
  auto [released, last] = Feed(checker, {"one E", "ND two"});
  EXPECT_EQ(released, "one END");
  EXPECT_EQ(last.stop_string, "END");
}

TEST(StopCheckerTest, StopTokenId) {
  StopConfig config = WithStops({"zz"});
  config.stop_token_ids = {7};
  StopChecker checker = Make(config);
  EXPECT_EQ(checker.Append(kText, "hi z").text, "hi ");
  StopResult r = checker.Append(7, "<tool>");
  EXPECT_EQ(r.finish_reason, FinishReason::kStop);
  EXPECT_EQ(r.stop_token_id, 7);
  EXPECT_FALSE(r.is_eos);
  EXPECT_FALSE(r.stop_string.has_value());
  EXPECT_EQ(r.text, "z");  // the held tail is released; the stop token's own text is not
}

TEST(StopCheckerTest, EosStopsUnlessIgnored) {
  StopChecker checker = Make(WithStops({}));
  EXPECT_EQ(checker.Append(kText, "a").text, "a");
  StopResult r = checker.Append(kEos, "</s>");
  EXPECT_EQ(r.finish_reason, FinishReason::kStop);
  EXPECT_TRUE(r.is_eos);
  EXPECT_EQ(r.stop_token_id, kEos);
  EXPECT_EQ(r.text, "");

  StopConfig config = WithStops({}, /*max_tokens=*/3);
  config.ignore_eos = true;
  StopChecker ignoring = Make(config);
  EXPECT_FALSE(ignoring.Append(kEos, "").finished());
  EXPECT_FALSE(ignoring.Append(kText, "b").finished());
  StopResult last = ignoring.Append(kEos, "");
  EXPECT_EQ(last.finish_reason, FinishReason::kLength);
}

TEST(StopCheckerTest, IgnoreEosDoesNotIgnoreStopTokens) {
  StopConfig config = WithStops({});
  config.ignore_eos = true;
  config.stop_token_ids = {9};
  StopChecker checker = Make(config);
  EXPECT_EQ(checker.Append(9, "").finish_reason, FinishReason::kStop);
}

TEST(StopCheckerTest, MinTokensSuppressesStopsUntilReached) {
  StopConfig config = WithStops({"x"});
  config.stop_token_ids = {7};
  config.min_tokens = 4;
  StopChecker checker = Make(config);
  EXPECT_FALSE(checker.Append(kEos, "").finished());    // 1 < 4
  EXPECT_FALSE(checker.Append(7, "").finished());       // 2 < 4
  EXPECT_EQ(checker.Append(kText, "axb").text, "axb");  // 3 < 4: "x" does not stop
  StopResult r = checker.Append(kEos, "");              // 4 >= 4
  EXPECT_EQ(r.finish_reason, FinishReason::kStop);
  EXPECT_TRUE(r.is_eos);
}

TEST(StopCheckerTest, MinTokensStopStringOnTheFirstEligibleToken) {
  StopConfig config = WithStops({"xy"});
  config.min_tokens = 2;
  StopChecker checker = Make(config);
  EXPECT_EQ(checker.Append(kText, "ax").text, "a");  // "x" held even before min_tokens
  StopResult r = checker.Append(kText, "yz");
  EXPECT_EQ(r.finish_reason, FinishReason::kStop);
  EXPECT_EQ(r.text, "");
}

TEST(StopCheckerTest, MaxTokensEndsWithLengthAndReleasesTheHeldTail) {
  StopChecker checker = Make(WithStops({"STOP"}, /*max_tokens=*/3));
  EXPECT_EQ(checker.Append(kText, "a").text, "a");
  EXPECT_EQ(checker.Append(kText, "b S").text, "b ");
  StopResult r = checker.Append(kText, "T");
  EXPECT_EQ(r.finish_reason, FinishReason::kLength);
  EXPECT_EQ(r.text, "ST");
  EXPECT_EQ(checker.num_output_tokens(), 3);
}

TEST(StopCheckerTest, StopWinsOverLengthOnTheSameToken) {
  StopChecker checker = Make(WithStops({}, /*max_tokens=*/1));
  StopResult r = checker.Append(kEos, "");
  EXPECT_EQ(r.finish_reason, FinishReason::kStop);
}

TEST(StopCheckerTest, FinishByLengthReleasesTheHeldTail) {
  StopChecker checker = Make(WithStops({"abc"}));
  EXPECT_EQ(checker.Append(kText, "xab").text, "x");
  StopResult r = checker.FinishByLength();
  EXPECT_EQ(r.finish_reason, FinishReason::kLength);
  EXPECT_EQ(r.text, "ab");
  EXPECT_TRUE(checker.finished());
}

TEST(StopCheckerTest, MultiByteStopStringAcrossDeltas) {
  // "世界" is 6 bytes; deltas are whole characters.
  StopChecker checker = Make(WithStops({"世界"}));
  EXPECT_EQ(checker.Append(kText, "你").text, "你");
  EXPECT_EQ(checker.Append(kText, "好").text, "好");
  EXPECT_EQ(checker.Append(kText, "世").text, "");
  EXPECT_EQ(checker.held_text(), "世");
  StopResult r = checker.Append(kText, "界!");
  EXPECT_EQ(r.finish_reason, FinishReason::kStop);
  EXPECT_EQ(r.text, "");
}

TEST(StopCheckerTest, HoldingBackNeverSplitsACharacter) {
  // "€" (E2 82 AC) and "₂" (E2 82 82) share two bytes; "₂" must not be held as a partial "€".
  StopChecker checker = Make(WithStops({"€x"}));
  EXPECT_EQ(checker.Append(kText, "a₂").text, "a₂");
  EXPECT_EQ(checker.Append(kText, "b€").text, "b");
  EXPECT_EQ(checker.held_text(), "€");
  EXPECT_EQ(checker.Append(kText, "é").text, "€é");
}

TEST(StopCheckerTest, IncompleteTrailingCharacterIsHeldUntilComplete) {
  // A detokenizer should never emit this, but if it does the partial character waits.
  StopChecker checker = Make(WithStops({}));
  EXPECT_EQ(checker.Append(kText, "a\xE4\xB8").text, "a");
  EXPECT_EQ(checker.Append(kText, "\x96").text, "世");
  EXPECT_EQ(checker.Append(kText, "\xE4").text, "");
  EXPECT_EQ(checker.FinishByLength().text, "\xEF\xBF\xBD");  // U+FFFD, never invalid UTF-8
}

TEST(StopCheckerTest, CreateRejectsBadConfig) {
  auto empty_stop = StopChecker::Create(WithStops({"ok", ""}));
  EXPECT_EQ(empty_stop.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(empty_stop.status().message().find("stop[1]"), absl::string_view::npos);
  EXPECT_EQ(StopChecker::Create(WithStops({"\xC3"})).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(StopChecker::Create(WithStops({}, 0)).status().code(),
            absl::StatusCode::kInvalidArgument);
  StopConfig config = WithStops({}, 5);
  config.min_tokens = 6;
  auto bad_min = StopChecker::Create(config);
  EXPECT_EQ(bad_min.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad_min.status().message().find("min_tokens"), absl::string_view::npos);
}

}  // namespace
}  // namespace switchyard
