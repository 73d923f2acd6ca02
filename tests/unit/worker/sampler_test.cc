#include "worker/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace switchyard {
namespace {

SamplingParams Greedy() {
  SamplingParams params;
  params.temperature = 0.0f;
  return params;
}

SamplingParams Seeded(uint64_t seed) {
  SamplingParams params;
  params.seed = seed;
  params.has_seed = true;
  return params;
}

// Logits whose softmax is exactly `probs`.
std::vector<float> LogitsOf(const std::vector<double>& probs) {
  std::vector<float> logits;
  for (double p : probs) {
    logits.push_back(p > 0 ? static_cast<float>(std::log(p)) : -INFINITY);
  }
  return logits;
}

// Frequencies of tokens over `num_positions` positions, fresh logits each time.
std::vector<double> Frequencies(Sampler& sampler, const std::vector<float>& logits,
                                const SamplingParams& params, int num_positions) {
  std::vector<double> counts(logits.size(), 0.0);
  const TokenCounts history;
  for (int pos = 0; pos < num_positions; ++pos) {
    std::vector<float> work = logits;
    counts[sampler.Sample(work, params, history, pos).token_id] += 1.0;
  }
  for (double& count : counts) count /= num_positions;
  return counts;
}

TEST(PhiloxTest, MatchesRandom123KnownAnswers) {
  EXPECT_EQ(Philox4x32x10({0, 0, 0, 0}, {0, 0}),
            (std::array<uint32_t, 4>{0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}));
  EXPECT_EQ(
      Philox4x32x10({0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff}, {0xffffffff, 0xffffffff}),
      (std::array<uint32_t, 4>{0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}));
  EXPECT_EQ(
      Philox4x32x10({0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344}, {0xa4093822, 0x299f31d0}),
      (std::array<uint32_t, 4>{0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}));
}

TEST(PhiloxTest, UniformIsInUnitIntervalWithMeanOneHalf) {
  double sum = 0.0;
  constexpr int kNumDraws = 20000;
  for (int pos = 0; pos < kNumDraws; ++pos) {
    const double u = SamplingUniform(42, pos);
    ASSERT_GE(u, 0.0);
    ASSERT_LT(u, 1.0);
    sum += u;
  }
  EXPECT_NEAR(sum / kNumDraws, 0.5, 0.01);
}

TEST(SamplerTest, GreedyIsArgmaxWithTiesToLowestId) {
  Sampler sampler(5);
  std::vector<float> logits = {0.1f, 2.0f, -1.0f, 2.0f, 1.9f};
  EXPECT_EQ(sampler.Sample(logits, Greedy(), TokenCounts(), 0).token_id, 1);
  std::vector<float> logits2 = {-3.0f, -2.0f, -5.0f, -0.5f, -4.0f};
  EXPECT_EQ(sampler.Sample(logits2, Greedy(), TokenCounts(), 7).token_id, 3);
}

TEST(SamplerTest, TemperatureOneFollowsTheDistribution) {
  Sampler sampler(4);
  const std::vector<double> probs = {0.1, 0.2, 0.3, 0.4};
  const auto freq = Frequencies(sampler, LogitsOf(probs), Seeded(1234), 20000);
  for (size_t idx = 0; idx < probs.size(); ++idx) EXPECT_NEAR(freq[idx], probs[idx], 0.02) << idx;
}

TEST(SamplerTest, TemperatureSharpensTheDistribution) {
  Sampler sampler(4);
  // At temperature 0.5 the probabilities become p^2 / sum(p^2) = {1, 4, 9, 16} / 30.
  SamplingParams params = Seeded(99);
  params.temperature = 0.5f;
  const auto freq = Frequencies(sampler, LogitsOf({0.1, 0.2, 0.3, 0.4}), params, 20000);
  const double expected[] = {1.0 / 30, 4.0 / 30, 9.0 / 30, 16.0 / 30};
  for (size_t idx = 0; idx < 4; ++idx) EXPECT_NEAR(freq[idx], expected[idx], 0.02) << idx;
}

TEST(SamplerTest, TopKOneEqualsGreedy) {
  Sampler sampler(6);
  const std::vector<float> logits = {0.5f, 1.5f, 1.4f, -2.0f, 1.5f, 0.0f};
  SamplingParams params = Seeded(5);
  params.top_k = 1;
  for (int pos = 0; pos < 200; ++pos) {
    std::vector<float> work = logits;
    ASSERT_EQ(sampler.Sample(work, params, TokenCounts(), pos).token_id, 1) << pos;
  }
}

TEST(SamplerTest, TopKKeepsTheKMostLikelyRenormalised) {
  Sampler sampler(4);
  SamplingParams params = Seeded(17);
  params.top_k = 2;
  const auto freq = Frequencies(sampler, LogitsOf({0.1, 0.2, 0.3, 0.4}), params, 20000);
  EXPECT_EQ(freq[0], 0.0);
  EXPECT_EQ(freq[1], 0.0);
  EXPECT_NEAR(freq[2], 3.0 / 7, 0.02);
  EXPECT_NEAR(freq[3], 4.0 / 7, 0.02);
}

TEST(SamplerTest, TopPKeepsTheSmallestSetReachingP) {
  Sampler sampler(5);
  // Sorted: 0.4 (id 4), 0.3 (id 1), 0.15 (id 0), 0.1 (id 2), 0.05 (id 3). top_p = 0.75: 0.4 + 0.3
  // = 0.7 < 0.75, so id 0 is needed too (0.85); ids 2 and 3 are dropped. Kept mass renormalised:
  // {0.15, 0.3, 0.4} / 0.85.
  const std::vector<double> probs = {0.15, 0.3, 0.1, 0.05, 0.4};
  SamplingParams params = Seeded(3);
  params.top_p = 0.75f;
  const auto freq = Frequencies(sampler, LogitsOf(probs), params, 20000);
  EXPECT_EQ(freq[2], 0.0);
  EXPECT_EQ(freq[3], 0.0);
  EXPECT_NEAR(freq[0], 0.15 / 0.85, 0.02);
  EXPECT_NEAR(freq[1], 0.3 / 0.85, 0.02);
  EXPECT_NEAR(freq[4], 0.4 / 0.85, 0.02);

  // 0.65 is reached by {4, 1}: 0.4 < 0.65 <= 0.7.
  params.top_p = 0.65f;
  const auto freq2 = Frequencies(sampler, LogitsOf(probs), params, 20000);
  EXPECT_EQ(freq2[0] + freq2[2] + freq2[3], 0.0);
  EXPECT_NEAR(freq2[4], 0.4 / 0.7, 0.02);
  // top_p below the largest probability keeps one token.
  params.top_p = 0.1f;
  const auto freq3 = Frequencies(sampler, LogitsOf(probs), params, 2000);
  EXPECT_EQ(freq3[4], 1.0);
}

TEST(SamplerTest, MinPDropsTokensBelowTheThreshold) {
  Sampler sampler(4);
  // p_max = 0.5; min_p = 0.5 -> threshold 0.25: 0.3 and 0.5 stay, 0.15 and 0.05 go.
  SamplingParams params = Seeded(8);
  params.min_p = 0.5f;
  const auto freq = Frequencies(sampler, LogitsOf({0.15, 0.5, 0.05, 0.3}), params, 20000);
  EXPECT_EQ(freq[0], 0.0);
  EXPECT_EQ(freq[2], 0.0);
  EXPECT_NEAR(freq[1], 0.5 / 0.8, 0.02);
  EXPECT_NEAR(freq[3], 0.3 / 0.8, 0.02);
}

TEST(SamplerTest, PenaltiesOnHandComputedLogits) {
  Sampler sampler(6);
  TokenCounts counts;
  const std::vector<int32_t> prompt = {0, 1};
  counts.AddPromptTokens(prompt);
  counts.AddOutputToken(1);  // in prompt and output: repetition applies once
  counts.AddOutputToken(2);
  counts.AddOutputToken(2);
  counts.AddOutputToken(3);
  SamplingParams params = Greedy();
  params.repetition_penalty = 2.0f;
  params.frequency_penalty = 0.5f;
  params.presence_penalty = 0.25f;
  std::vector<float> logits = {4.0f, -1.0f, 3.0f, -2.0f, 1.0f, 0.5f};
  sampler.Sample(logits, params, counts, 0);
  // id 0: prompt only: 4 / 2 = 2.
  // id 1: prompt + output x1: -1 * 2 = -2, - 0.5 * 1 - 0.25 = -2.75.
  // id 2: output x2: 3 / 2 = 1.5, - 0.5 * 2 - 0.25 = 0.25.
  // id 3: output x1: -2 * 2 = -4, - 0.5 - 0.25 = -4.75.
  // ids 4, 5: untouched.
  const std::vector<float> expected = {2.0f, -2.75f, 0.25f, -4.75f, 1.0f, 0.5f};
  for (size_t idx = 0; idx < expected.size(); ++idx) EXPECT_FLOAT_EQ(logits[idx], expected[idx]);
}

TEST(SamplerTest, PenaltiesChangeTheGreedyChoice) {
  Sampler sampler(3);
  TokenCounts counts;
  counts.AddOutputToken(0);
  SamplingParams params = Greedy();
  params.presence_penalty = 1.0f;
  std::vector<float> logits = {2.0f, 1.5f, 0.0f};
  EXPECT_EQ(sampler.Sample(logits, params, counts, 0).token_id, 1);
}

TEST(SamplerTest, TemperatureIsAppliedInPlaceAfterPenalties) {
  Sampler sampler(2);
  TokenCounts counts;
  counts.AddOutputToken(0);
  SamplingParams params = Seeded(1);
  params.frequency_penalty = 1.0f;
  params.temperature = 2.0f;
  std::vector<float> logits = {3.0f, 1.0f};
  sampler.Sample(logits, params, counts, 0);
  EXPECT_FLOAT_EQ(logits[0], 1.0f);  // (3 - 1) / 2
  EXPECT_FLOAT_EQ(logits[1], 0.5f);
}

TEST(SamplerTest, SameSeedAndPositionGiveTheSameToken) {
  Sampler sampler_a(50);
  Sampler sampler_b(50);
  std::vector<float> logits(50, 0.0f);  // uniform: every draw matters
  const SamplingParams params = Seeded(777);
  for (int pos = 0; pos < 100; ++pos) {
    std::vector<float> work_a = logits;
    std::vector<float> work_b = logits;
    // Sampler b sees another sequence in between: the result must not depend on it.
    std::vector<float> other = logits;
    sampler_b.Sample(other, Seeded(1), TokenCounts(), 12345);
    EXPECT_EQ(sampler_a.Sample(work_a, params, TokenCounts(), pos).token_id,
              sampler_b.Sample(work_b, params, TokenCounts(), pos).token_id);
  }
}

TEST(SamplerTest, DifferentSeedsGiveDifferentSequences) {
  Sampler sampler(50);
  const std::vector<float> logits(50, 0.0f);
  std::vector<int32_t> seq_a;
  std::vector<int32_t> seq_b;
  for (int pos = 0; pos < 100; ++pos) {
    std::vector<float> work_a = logits;
    std::vector<float> work_b = logits;
    seq_a.push_back(sampler.Sample(work_a, Seeded(1), TokenCounts(), pos).token_id);
    seq_b.push_back(sampler.Sample(work_b, Seeded(2), TokenCounts(), pos).token_id);
  }
  int num_equal = 0;
  for (size_t idx = 0; idx < seq_a.size(); ++idx) num_equal += seq_a[idx] == seq_b[idx];
  EXPECT_LT(num_equal, 15);  // about 2 expected by chance out of 100
}

TEST(SamplerTest, LogprobsAreLogSoftmaxOfRawLogits) {
  Sampler sampler(3);
  // log_softmax([1, 2, 3]): log-sum-exp = 3 + log(1 + e^-1 + e^-2) = 3.40760596.
  const double lse = 3.0 + std::log(1.0 + std::exp(-1.0) + std::exp(-2.0));
  TokenCounts counts;
  counts.AddOutputToken(2);
  SamplingParams params = Greedy();
  params.presence_penalty = 2.0f;  // must not change the reported logprobs
  params.num_logprobs = 3;
  std::vector<float> logits = {1.0f, 2.0f, 3.0f};
  const SampledToken token = sampler.Sample(logits, params, counts, 0);
  EXPECT_EQ(token.token_id, 1);  // 3 - 2 = 1 < 2
  EXPECT_NEAR(token.logprob, 2.0 - lse, 1e-6);
  ASSERT_EQ(token.top_logprobs.size(), 3u);
  EXPECT_EQ(token.top_logprobs[0].first, 2);
  EXPECT_NEAR(token.top_logprobs[0].second, 3.0 - lse, 1e-6);
  EXPECT_EQ(token.top_logprobs[1].first, 1);
  EXPECT_NEAR(token.top_logprobs[1].second, 2.0 - lse, 1e-6);
  EXPECT_EQ(token.top_logprobs[2].first, 0);
  EXPECT_NEAR(token.top_logprobs[2].second, 1.0 - lse, 1e-6);
}

TEST(SamplerTest, TopLogprobsAreSortedWithTiesByLowerId) {
  constexpr int kVocab = 1000;
  Sampler sampler(kVocab);
  std::vector<float> logits(kVocab);
  for (int idx = 0; idx < kVocab; ++idx) logits[idx] = static_cast<float>((idx * 37) % 101) / 10;
  SamplingParams params = Seeded(4);
  params.num_logprobs = 20;
  const SampledToken token = sampler.Sample(logits, params, TokenCounts(), 0);
  ASSERT_EQ(token.top_logprobs.size(), 20u);
  // The largest value 10.0 occurs for idx * 37 % 101 == 100, i.e. idx = 30 + 101 k (37 * 30 =
  // 1110 = 10 * 101 + 100): ten ties, listed by id.
  EXPECT_EQ(token.top_logprobs[0].first, 30);
  EXPECT_EQ(token.top_logprobs[1].first, 131);
  EXPECT_EQ(token.top_logprobs[9].first, 939);
  for (size_t idx = 1; idx < token.top_logprobs.size(); ++idx) {
    const auto& prev = token.top_logprobs[idx - 1];
    const auto& cur = token.top_logprobs[idx];
    EXPECT_TRUE(prev.second > cur.second || (prev.second == cur.second && prev.first < cur.first));
  }
}

TEST(SamplerTest, LargeVocabularySamplesFromTheHead) {
  // A peaked distribution over a big vocabulary: most mass in the first chunk, the rest in the
  // tail; checks the chunked sort against the expected head probability.
  constexpr int kVocab = 32000;
  Sampler sampler(kVocab);
  std::vector<float> logits(kVocab, 0.0f);
  logits[12345] = std::log(static_cast<float>(kVocab - 1));  // p = 0.5
  const auto freq = Frequencies(sampler, logits, Seeded(11), 2000);
  EXPECT_NEAR(freq[12345], 0.5, 0.04);
}

// A plain reference: sort the whole vocabulary, apply min_p, top_k, top_p, walk the CDF.
int32_t ReferenceSample(const std::vector<float>& raw_logits, const SamplingParams& params,
                        double u) {
  std::vector<float> logits = raw_logits;
  for (float& logit : logits) logit /= params.temperature;
  std::vector<int32_t> ids(logits.size());
  for (size_t idx = 0; idx < ids.size(); ++idx) ids[idx] = static_cast<int32_t>(idx);
  std::sort(ids.begin(), ids.end(), [&](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  });
  const double max_logit = logits[ids[0]];
  std::vector<double> weights;
  for (int32_t id : ids) {
    const double weight = std::exp(logits[id] - max_logit);
    if (weight < params.min_p) break;  // p / p_max < min_p
    if (params.top_k > 0 && weights.size() == static_cast<size_t>(params.top_k)) break;
    weights.push_back(weight);
  }
  double total = 0.0;
  for (double weight : weights) total += weight;
  double kept = 0.0;
  size_t num_kept = 0;
  while (num_kept < weights.size() && (num_kept == 0 || kept < params.top_p * total)) {
    kept += weights[num_kept++];
  }
  double cumulative = 0.0;
  for (size_t rank = 0; rank < num_kept; ++rank) {
    cumulative += weights[rank];
    if (cumulative > u * kept) return ids[rank];
  }
  return ids[num_kept - 1];
}

TEST(SamplerTest, MatchesASortedReferenceImplementation) {
  constexpr int kVocab = 3000;
  std::mt19937 gen(2024);
  std::normal_distribution<float> normal(0.0f, 2.5f);
  std::vector<float> logits(kVocab);
  for (float& logit : logits) logit = normal(gen);
  Sampler sampler(kVocab);
  std::vector<SamplingParams> cases(5, Seeded(31337));
  cases[1].temperature = 0.7f;
  cases[1].top_p = 0.9f;
  cases[2].top_k = 40;
  cases[3].min_p = 0.05f;
  cases[4].temperature = 1.3f;
  cases[4].top_k = 300;
  cases[4].top_p = 0.8f;
  cases[4].min_p = 0.01f;
  for (size_t case_idx = 0; case_idx < cases.size(); ++case_idx) {
    for (int pos = 0; pos < 300; ++pos) {
      std::vector<float> work = logits;
      const int32_t expected =
          ReferenceSample(logits, cases[case_idx], SamplingUniform(cases[case_idx].seed, pos));
      ASSERT_EQ(sampler.Sample(work, cases[case_idx], TokenCounts(), pos).token_id, expected)
          << "case " << case_idx << " position " << pos;
    }
  }
}

TEST(ValidateSamplingParamsTest, AcceptsDefaultsAndBounds) {
  EXPECT_TRUE(ValidateSamplingParams(SamplingParams(), 100).ok());
  SamplingParams params;
  params.temperature = 0.0f;
  params.top_p = 1.0f;
  params.top_k = 100;
  params.min_p = 1.0f;
  params.presence_penalty = -2.0f;
  params.frequency_penalty = 2.0f;
  params.num_logprobs = 20;
  const absl::Status status = ValidateSamplingParams(params, 100);
  EXPECT_TRUE(status.ok()) << status;
  params.top_k = -1;
  EXPECT_TRUE(ValidateSamplingParams(params, 100).ok());
}

void ExpectRejected(const SamplingParams& params, const std::string& field) {
  const absl::Status status = ValidateSamplingParams(params, 100);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << field;
  EXPECT_NE(status.message().find(field), absl::string_view::npos) << status;
  EXPECT_NE(status.message().find("found"), absl::string_view::npos) << status;
}

TEST(ValidateSamplingParamsTest, RejectsEachBadField) {
  const float kNan = std::numeric_limits<float>::quiet_NaN();
  auto with = [](auto setter) {
    SamplingParams params;
    setter(params);
    return params;
  };
  ExpectRejected(with([](auto& p) { p.temperature = -0.1f; }), "temperature");
  ExpectRejected(with([&](auto& p) { p.temperature = kNan; }), "temperature");
  ExpectRejected(with([](auto& p) { p.temperature = INFINITY; }), "temperature");
  ExpectRejected(with([](auto& p) { p.top_p = 0.0f; }), "top_p");
  ExpectRejected(with([](auto& p) { p.top_p = 1.01f; }), "top_p");
  ExpectRejected(with([&](auto& p) { p.top_p = kNan; }), "top_p");
  ExpectRejected(with([](auto& p) { p.top_k = -2; }), "top_k");
  ExpectRejected(with([](auto& p) { p.top_k = 101; }), "top_k");
  ExpectRejected(with([](auto& p) { p.min_p = -0.1f; }), "min_p");
  ExpectRejected(with([](auto& p) { p.min_p = 1.5f; }), "min_p");
  ExpectRejected(with([&](auto& p) { p.min_p = kNan; }), "min_p");
  ExpectRejected(with([](auto& p) { p.repetition_penalty = 0.0f; }), "repetition_penalty");
  ExpectRejected(with([](auto& p) { p.repetition_penalty = -1.0f; }), "repetition_penalty");
  ExpectRejected(with([&](auto& p) { p.repetition_penalty = kNan; }), "repetition_penalty");
  ExpectRejected(with([](auto& p) { p.presence_penalty = 2.5f; }), "presence_penalty");
  ExpectRejected(with([](auto& p) { p.presence_penalty = -2.5f; }), "presence_penalty");
  ExpectRejected(with([](auto& p) { p.frequency_penalty = 2.1f; }), "frequency_penalty");
  ExpectRejected(with([&](auto& p) { p.frequency_penalty = kNan; }), "frequency_penalty");
  ExpectRejected(with([](auto& p) { p.num_logprobs = 21; }), "num_logprobs");
  ExpectRejected(with([](auto& p) { p.num_logprobs = -1; }), "num_logprobs");
}

TEST(ValidateSamplingParamsTest, MessageNamesRangeAndValue) {
  SamplingParams params;
  params.top_p = 1.5f;
  const absl::Status status = ValidateSamplingParams(params, 100);
  EXPECT_NE(status.message().find("(0, 1]"), absl::string_view::npos) << status;
  EXPECT_NE(status.message().find("1.5"), absl::string_view::npos) << status;
}

}  // namespace
}  // namespace switchyard
