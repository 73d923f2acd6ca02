// Token sampling on the CPU: penalties, temperature, min_p/top_k/top_p filtering and a seeded draw,
// with the semantics of vLLM's sampler, for one sequence at a time.
//
// The worker calls Sampler::Sample once per sequence per step on the final logits of that
// sequence. A CUDA sampler must reproduce the same choice: it draws the same uniform
// (SamplingUniform below) and walks the same order.
//
// Order of processing (as vLLM applies it):
//   1. logprobs of the RAW model logits are taken first (vLLM's default "raw_logprobs"): the
//      returned logprob and top_logprobs are log_softmax(raw logits), before any penalty,
//      temperature or filter.
//   2. penalties: repetition (over prompt AND output tokens: logit > 0 -> logit / penalty, else
//      logit * penalty), then frequency (logit -= frequency_penalty * count in output) and
//      presence (logit -= presence_penalty if the token occurs in the output).
//   3. temperature < kGreedyTemperature: greedy, argmax of the penalised logits, ties -> lowest id
//      (vLLM's _SAMPLING_EPS; filters are then irrelevant). Otherwise logits /= temperature.
//   4. min_p (drop p < min_p * p_max), then top_k, then top_p over the distribution renormalised
//      after top_k: keep the smallest set, in descending probability, whose mass reaches top_p.
//   5. one uniform u in [0, 1) from (seed, position); inverse-CDF over the kept tokens in
//      descending probability order (ties -> lower id): the first token whose cumulative weight
//      exceeds u * (total kept weight). Weights are exp(logit - max) in double.
//      The vocabulary is not sorted: a selection by mass (nth_element partitions, like
//      quickselect) finds that token in expected O(vocab) time. Partial sums are taken per
//      partition, so a sorted-order implementation can differ only when u * total falls within
//      rounding error (~1e-16 relative) of a token boundary.
//
// Reproducibility: u depends on (seed, position) only: Philox4x32-10 (Salmon et al., SC'11) keyed
// by the 64-bit seed, with the 64-bit position as the counter. It does not depend on the batch, on
// other sequences or on the number of workers, so a sequence recomputed after a failure continues
// with the same tokens. `position` should be the absolute index of the token being sampled in its
// sequence (prompt length + number of output tokens so far), which a recompute knows.
//
// Deviations from vLLM, chosen for determinism: top_k keeps exactly k tokens (ties at the k-th
// logit broken by lower id; vLLM keeps every token tied with the k-th); the draw is an inverse CDF
// over a fixed order instead of an exponential race, so the same seed gives different tokens than
// vLLM's (only the distribution is the same).
//
// min_tokens is not handled here: the sampler never masks EOS or stop tokens; the StopChecker
// (common/stop_checker.h) just does not stop before min_tokens.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"

namespace switchyard {

// Below this temperature sampling is greedy (vLLM's _SAMPLING_EPS).
inline constexpr float kGreedyTemperature = 1e-5f;
inline constexpr int32_t kMaxNumLogprobs = 20;

struct SamplingParams {
  float temperature = 1.0f;         // >= 0; < kGreedyTemperature = greedy
  float top_p = 1.0f;               // (0, 1]
  int32_t top_k = 0;                // 0 or -1 = off; else keep the k most likely
  float min_p = 0.0f;               // [0, 1]: drop tokens with p < min_p * p_max
  float repetition_penalty = 1.0f;  // > 0, over prompt and output tokens
  float presence_penalty = 0.0f;    // [-2, 2], output tokens only
  float frequency_penalty = 0.0f;   // [-2, 2], output tokens only
  uint64_t seed = 0;                // used as given; see has_seed
  bool has_seed = false;            // informational: without a user seed the caller draws one
                                    // random seed per request and stores it here
  int32_t num_logprobs = 0;         // 0..kMaxNumLogprobs: also return the top-n (id, logprob)
};

// Returns INVALID_ARGUMENT naming the field, the allowed range and the value found (NaN and
// infinities are rejected everywhere). vocab_size bounds top_k.
absl::Status ValidateSamplingParams(const SamplingParams& params, int64_t vocab_size);

struct SampledToken {
  int32_t token_id = 0;
  float logprob = 0.0f;  // log_softmax(raw logits)[token_id]
  // num_logprobs entries (id, logprob) by descending raw logit, ties by lower id.
  std::vector<std::pair<int32_t, float>> top_logprobs;
};

// Token history of one sequence, as the penalties need it. The owner updates it as tokens are
// appended (O(1) each); Sample reads it in O(distinct tokens). Not thread-safe.
class TokenCounts {
 public:
  void AddPromptTokens(std::span<const int32_t> token_ids);
  void AddOutputToken(int32_t token_id) { ++output_counts_[token_id]; }
  void Clear();

  const absl::flat_hash_set<int32_t>& prompt_tokens() const { return prompt_tokens_; }
  const absl::flat_hash_map<int32_t, int32_t>& output_counts() const { return output_counts_; }

  // Calls fn(token_id, output_count) once per distinct token of the prompt and the output (count 0:
  // prompt only): the tokens the penalties touch.
  template <typename Fn>
  void ForEachDistinctToken(Fn&& fn) const {
    for (int32_t token_id : prompt_tokens_) {
      auto it = output_counts_.find(token_id);
      fn(token_id, it == output_counts_.end() ? 0 : it->second);
    }
    for (const auto& [token_id, count] : output_counts_) {
      if (!prompt_tokens_.contains(token_id)) fn(token_id, count);
    }
  }

 private:
  absl::flat_hash_set<int32_t> prompt_tokens_;
  absl::flat_hash_map<int32_t, int32_t> output_counts_;
};

// The Philox4x32-10 block function: 4 output words from a 128-bit counter and a 64-bit key.
std::array<uint32_t, 4> Philox4x32x10(std::array<uint32_t, 4> counter, std::array<uint32_t, 2> key);

// The uniform in [0, 1) (53 random bits) used to sample the token at `position` of a sequence
// seeded with `seed`: the first two words of Philox4x32x10({pos_lo, pos_hi, 0, 0},
// {seed_lo, seed_hi}).
double SamplingUniform(uint64_t seed, uint64_t position);

// Samples one token per call. Owns scratch buffers sized once for the vocabulary, so Sample does
// not allocate after the first calls (except the top_logprobs vector of a returned SampledToken;
// the SampledToken* overload reuses its capacity). One per worker thread: not thread-safe.
class Sampler {
 public:
  explicit Sampler(int64_t vocab_size);

  Sampler(const Sampler&) = delete;
  Sampler& operator=(const Sampler&) = delete;

  // Samples the next token from `logits` (the model's raw logits; modified in place: penalties and
  // temperature are applied to them). `counts` is the sequence's history, `position` the absolute
  // index of the token being sampled.
  // REQUIRES: logits.size() == vocab_size; ValidateSamplingParams(params, vocab_size).ok();
  // no NaN or +inf in logits and at least one finite logit.
  SampledToken Sample(std::span<float> logits, const SamplingParams& params,
                      const TokenCounts& counts, uint64_t position);
  void Sample(std::span<float> logits, const SamplingParams& params, const TokenCounts& counts,
              uint64_t position, SampledToken* out);

  int64_t vocab_size() const { return vocab_size_; }

 private:
  // A token still in the running, with its weight exp(logit - max_logit).
  struct Candidate {
    double weight;
    float logit;
    int32_t token_id;
  };

  void ComputeTopLogprobs(std::span<const float> logits, int32_t num_logprobs, double log_z,
                          SampledToken* out);
  int32_t SampleFiltered(std::span<const float> logits, const SamplingParams& params, double u);
  size_t CollectCandidates(std::span<const float> logits, float min_p, float max_logit);
  double WeighCandidates(size_t num_candidates, float max_logit);
  size_t SelectByMass(size_t num_candidates, double target, bool inclusive, double* mass_through);

  int64_t vocab_size_;
  std::vector<float> raw_logits_;      // copy of the raw logits, for logprobs
  std::vector<Candidate> candidates_;  // tokens that passed min_p (then top_k)
  std::vector<int32_t> top_ids_;       // the top num_logprobs ids, sorted
};

}  // namespace switchyard
