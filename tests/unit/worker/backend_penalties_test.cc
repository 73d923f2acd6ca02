// Backend::ApplyPenalties on the CPU backend (the reference of the CUDA kernel): it must do to a
// row exactly what the host Sampler's penalties do, so that a penalised sequence sampled on a
// device picks the Sampler's token.
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "worker/backend/backend.h"
#include "worker/sampler.h"

namespace switchyard {
namespace {

TEST(BackendPenaltiesTest, CpuOpThenPlainSamplingEqualsTheSamplersPenalties) {
  const int64_t vocab = 300, num_rows = 4;
  std::unique_ptr<Backend> backend = MakeCpuBackend();
  std::mt19937 rng(5);
  std::normal_distribution<float> logit(0.0f, 2.0f);
  std::uniform_int_distribution<int32_t> token(0, vocab - 1);
  Sampler sampler(vocab);
  for (int trial = 0; trial < 20; ++trial) {
    absl::StatusOr<Tensor> logits = backend->Empty(DType::kF32, {num_rows, vocab});
    ASSERT_TRUE(logits.ok());
    std::vector<float> host(num_rows * vocab);
    for (float& v : host) v = logit(rng);
    ASSERT_TRUE(backend->CopyFromHost(host, *logits).ok());
    std::vector<PenaltyRow> rows;
    std::vector<PenaltyToken> tokens;
    std::vector<TokenCounts> counts(num_rows);
    std::vector<SamplingParams> params(num_rows);
    for (int64_t r = 0; r < num_rows; ++r) {
      SamplingParams& p = params[r];
      p.temperature = 0.8f;
      p.top_k = 40;
      p.seed = 100 + trial;
      p.repetition_penalty = r == 0 ? 1.0f : 1.1f + 0.2f * static_cast<float>(r);
      p.frequency_penalty = r == 1 ? 0.0f : 0.3f * static_cast<float>(r);
      p.presence_penalty = r == 2 ? -0.5f : 0.4f;
      std::vector<int32_t> prompt;
      for (int i = 0; i < 12; ++i) prompt.push_back(token(rng));
      counts[r].AddPromptTokens(prompt);
      for (int i = 0; i < 10; ++i) counts[r].AddOutputToken(i < 4 ? prompt[i] : token(rng));
      // The token list the worker builds: each distinct token once.
      PenaltyRow& row = rows.emplace_back();
      row.row = r;
      row.repetition = p.repetition_penalty;
      row.frequency = p.frequency_penalty;
      row.presence = p.presence_penalty;
      row.first_token = static_cast<int32_t>(tokens.size());
      counts[r].ForEachDistinctToken([&](int32_t id, int32_t output_count) {
        tokens.push_back(PenaltyToken{id, output_count});
      });
      row.num_tokens = static_cast<int32_t>(tokens.size()) - row.first_token;
    }
    tokens.push_back(PenaltyToken{static_cast<int32_t>(vocab) + 5, 3});  // out of range: skipped
    ++rows.back().num_tokens;
    ASSERT_TRUE(backend->ApplyPenalties(*logits, rows, tokens).ok());
    std::vector<float> penalised(num_rows * vocab);
    ASSERT_TRUE(backend->CopyToHost(*logits, penalised).ok());
    for (int64_t r = 0; r < num_rows; ++r) {
      // The Sampler applies the penalties itself to the raw row...
      std::vector<float> raw(host.begin() + r * vocab, host.begin() + (r + 1) * vocab);
      const int32_t want = sampler.Sample(raw, params[r], counts[r], 7).token_id;
      // ...and applies them to `raw` in place first: the op must have written the same values.
      SamplingParams plain = params[r];
      plain.repetition_penalty = 1.0f;
      plain.frequency_penalty = 0.0f;
      plain.presence_penalty = 0.0f;
      std::vector<float> mine(penalised.begin() + r * vocab, penalised.begin() + (r + 1) * vocab);
      EXPECT_EQ(sampler.Sample(mine, plain, TokenCounts(), 7).token_id, want)
          << "trial " << trial << " row " << r;
      std::vector<float> expected(host.begin() + r * vocab, host.begin() + (r + 1) * vocab);
      SamplingParams only_penalties = params[r];
      only_penalties.temperature = 0.0f;  // greedy: the Sampler leaves the row penalised, unscaled
      sampler.Sample(expected, only_penalties, counts[r], 7);
      for (int64_t v = 0; v < vocab; ++v) {
        ASSERT_EQ(penalised[r * vocab + v], expected[v]) << "trial " << trial << " row " << r
                                                         << " token " << v;
      }
    }
  }
}

}  // namespace
}  // namespace switchyard
