#include "worker/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace switchyard {
namespace {

// Ranges this small are sorted and walked instead of partitioned further.
constexpr size_t kMinSortChunk = 64;

absl::Status FieldError(const char* field, const char* expected, const std::string& found) {
  return absl::InvalidArgumentError(
      absl::StrCat("sampling parameter ", field, ": expected ", expected, ", found ", found));
}

bool InRange(float value, float lo, float hi) {
  return std::isfinite(value) && value >= lo && value <= hi;  // false for NaN
}

// Strict total order: higher logit first, ties by lower id.
struct ByLogitDesc {
  const float* logits;
  bool operator()(int32_t a, int32_t b) const {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  }
};

// The same order over Sampler candidates.
struct CandidateOrder {
  template <typename C>
  bool operator()(const C& a, const C& b) const {
    return a.logit > b.logit || (a.logit == b.logit && a.token_id < b.token_id);
  }
};

bool InVocab(int32_t token_id, size_t vocab_size) {
  return token_id >= 0 && static_cast<size_t>(token_id) < vocab_size;
}

void ApplyPenalties(std::span<float> logits, const SamplingParams& params,
                    const TokenCounts& counts) {
  if (params.repetition_penalty == 1.0f && params.frequency_penalty == 0.0f &&
      params.presence_penalty == 0.0f) {
    return;
  }
  // Each distinct prompt or output token once: repetition over both, then frequency and presence
  // for output tokens (Backend::ApplyPenalties does the same per token, in the same order).
  counts.ForEachDistinctToken([&](int32_t token_id, int32_t output_count) {
    if (!InVocab(token_id, logits.size())) return;
    float& logit = logits[token_id];
    if (params.repetition_penalty != 1.0f) {
      logit = logit > 0.0f ? logit / params.repetition_penalty : logit * params.repetition_penalty;
    }
    if (output_count > 0) {
      logit -= params.frequency_penalty * static_cast<float>(output_count);
      logit -= params.presence_penalty;
    }
  });
}

float MaxLogit(std::span<const float> logits) {
  return *std::max_element(logits.begin(), logits.end());
}

// log(sum(exp(logits))) in double.
double LogSumExp(std::span<const float> logits) {
  const double max_logit = MaxLogit(logits);
  if (std::isinf(max_logit)) return max_logit;
  double sum = 0.0;
  for (float logit : logits) sum += std::exp(static_cast<double>(logit) - max_logit);
  return max_logit + std::log(sum);
}

// First index of the largest logit: ties go to the lowest id, like torch.argmax.
int32_t Argmax(std::span<const float> logits) {
  return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
}

uint32_t MulHiLo(uint32_t a, uint32_t b, uint32_t* hi) {
  const uint64_t product = static_cast<uint64_t>(a) * b;
  *hi = static_cast<uint32_t>(product >> 32);
  return static_cast<uint32_t>(product);
}

}  // namespace

absl::Status ValidateSamplingParams(const SamplingParams& params, int64_t vocab_size) {
  if (vocab_size <= 0) {
    return FieldError("vocab_size", "> 0", absl::StrCat(vocab_size));
  }
  if (!std::isfinite(params.temperature) || params.temperature < 0.0f) {
    return FieldError("temperature", "a finite value >= 0", absl::StrCat(params.temperature));
  }
  if (!InRange(params.top_p, 0.0f, 1.0f) || params.top_p == 0.0f) {
    return FieldError("top_p", "a value in (0, 1]", absl::StrCat(params.top_p));
  }
  if (params.top_k < -1 || params.top_k > vocab_size) {
    return FieldError(
        "top_k",
        absl::StrCat("-1 or 0 (off) or a value in [1, ", vocab_size, "] (the vocabulary size)")
            .c_str(),
        absl::StrCat(params.top_k));
  }
  if (!InRange(params.min_p, 0.0f, 1.0f)) {
    return FieldError("min_p", "a value in [0, 1]", absl::StrCat(params.min_p));
  }
  if (!std::isfinite(params.repetition_penalty) || params.repetition_penalty <= 0.0f) {
    return FieldError("repetition_penalty", "a finite value > 0",
                      absl::StrCat(params.repetition_penalty));
  }
  if (!InRange(params.presence_penalty, -2.0f, 2.0f)) {
    return FieldError("presence_penalty", "a value in [-2, 2]",
                      absl::StrCat(params.presence_penalty));
  }
  if (!InRange(params.frequency_penalty, -2.0f, 2.0f)) {
    return FieldError("frequency_penalty", "a value in [-2, 2]",
                      absl::StrCat(params.frequency_penalty));
  }
  if (params.num_logprobs < 0 || params.num_logprobs > kMaxNumLogprobs) {
    return FieldError("num_logprobs", "a value in [0, 20]", absl::StrCat(params.num_logprobs));
  }
  return absl::OkStatus();
}

void TokenCounts::AddPromptTokens(std::span<const int32_t> token_ids) {
  prompt_tokens_.insert(token_ids.begin(), token_ids.end());
}

void TokenCounts::Clear() {
  prompt_tokens_.clear();
  output_counts_.clear();
}

std::array<uint32_t, 4> Philox4x32x10(std::array<uint32_t, 4> counter,
                                      std::array<uint32_t, 2> key) {
  constexpr uint32_t kMul0 = 0xD2511F53u;
  constexpr uint32_t kMul1 = 0xCD9E8D57u;
  constexpr uint32_t kWeyl0 = 0x9E3779B9u;  // golden ratio
  constexpr uint32_t kWeyl1 = 0xBB67AE85u;  // sqrt(3) - 1
  for (int round_idx = 0; round_idx < 10; ++round_idx) {
    if (round_idx > 0) {
      key[0] += kWeyl0;
      key[1] += kWeyl1;
    }
    uint32_t hi0;
    uint32_t hi1;
    const uint32_t lo0 = MulHiLo(kMul0, counter[0], &hi0);
    const uint32_t lo1 = MulHiLo(kMul1, counter[2], &hi1);
    counter = {hi1 ^ counter[1] ^ key[0], lo1, hi0 ^ counter[3] ^ key[1], lo0};
  }
  return counter;
}

double SamplingUniform(uint64_t seed, uint64_t position) {
  const std::array<uint32_t, 4> block = Philox4x32x10(
      {static_cast<uint32_t>(position), static_cast<uint32_t>(position >> 32), 0u, 0u},
      {static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)});
  const uint64_t bits = ((static_cast<uint64_t>(block[0]) << 32) | block[1]) >> 11;
  return static_cast<double>(bits) * 0x1.0p-53;
}

Sampler::Sampler(int64_t vocab_size)
    : vocab_size_(vocab_size), raw_logits_(vocab_size), candidates_(vocab_size) {
  SY_CHECK(vocab_size > 0);
  top_ids_.reserve(kMaxNumLogprobs + 1);
}

SampledToken Sampler::Sample(std::span<float> logits, const SamplingParams& params,
                             const TokenCounts& counts, uint64_t position) {
  SampledToken out;
  Sample(logits, params, counts, position, &out);
  return out;
}

void Sampler::Sample(std::span<float> logits, const SamplingParams& params,
                     const TokenCounts& counts, uint64_t position, SampledToken* out) {
  SY_CHECK(static_cast<int64_t>(logits.size()) == vocab_size_);
  SY_DCHECK(ValidateSamplingParams(params, vocab_size_).ok());
  std::copy(logits.begin(), logits.end(), raw_logits_.begin());
  const double log_z = LogSumExp(logits);
  ComputeTopLogprobs(logits, params.num_logprobs, log_z, out);

  ApplyPenalties(logits, params, counts);
  int32_t token_id;
  if (params.temperature < kGreedyTemperature) {
    token_id = Argmax(logits);
  } else {
    if (params.temperature != 1.0f) {
      for (float& logit : logits) logit /= params.temperature;
    }
    token_id = SampleFiltered(logits, params, SamplingUniform(params.seed, position));
  }
  out->token_id = token_id;
  out->logprob = static_cast<float>(raw_logits_[token_id] - log_z);
}

// One pass over the vocabulary keeping the best num_logprobs ids in a small sorted array.
void Sampler::ComputeTopLogprobs(std::span<const float> logits, int32_t num_logprobs, double log_z,
                                 SampledToken* out) {
  out->top_logprobs.clear();
  if (num_logprobs <= 0) return;
  const auto num_top = std::min<size_t>(num_logprobs, logits.size());
  const ByLogitDesc order{logits.data()};
  top_ids_.clear();
  for (size_t token_idx = 0; token_idx < logits.size(); ++token_idx) {
    const auto token_id = static_cast<int32_t>(token_idx);
    if (top_ids_.size() == num_top && !order(token_id, top_ids_.back())) continue;
    top_ids_.insert(std::upper_bound(top_ids_.begin(), top_ids_.end(), token_id, order), token_id);
    if (top_ids_.size() > num_top) top_ids_.pop_back();
  }
  for (int32_t token_id : top_ids_) {
    out->top_logprobs.emplace_back(token_id, static_cast<float>(logits[token_id] - log_z));
  }
}

// Keeps the finite logits with exp(logit - max) >= min_p, i.e. p >= min_p * p_max.
size_t Sampler::CollectCandidates(std::span<const float> logits, float min_p, float max_logit) {
  const double threshold =
      min_p > 0.0f ? static_cast<double>(max_logit) + std::log(static_cast<double>(min_p))
                   : -std::numeric_limits<double>::infinity();
  size_t num_candidates = 0;
  for (size_t token_idx = 0; token_idx < logits.size(); ++token_idx) {
    const float logit = logits[token_idx];
    if (std::isinf(logit) || static_cast<double>(logit) < threshold) continue;  // -inf: masked
    candidates_[num_candidates++] = {0.0, logit, static_cast<int32_t>(token_idx)};
  }
  return num_candidates;
}

// Fills the weights exp(logit - max) of candidates_[0, num_candidates) and returns their sum.
double Sampler::WeighCandidates(size_t num_candidates, float max_logit) {
  double total = 0.0;
  for (size_t idx = 0; idx < num_candidates; ++idx) {
    Candidate& candidate = candidates_[idx];
    candidate.weight = std::exp(static_cast<double>(candidate.logit) - max_logit);
    total += candidate.weight;
  }
  return total;
}

// Finds the rank r (0 = most likely) of the first candidate whose cumulative weight reaches
// `target` (>= when inclusive, else >), without sorting all of them: each step partitions the
// remaining range with nth_element and descends into the half that holds the target. On return
// candidates_[0, r] are exactly the r + 1 most likely (in no particular order before the last
// sorted chunk), candidates_[r] is rank r, and *mass_through their total weight.
size_t Sampler::SelectByMass(size_t num_candidates, double target, bool inclusive,
                             double* mass_through) {
  const auto reached = [&](double mass) { return inclusive ? mass >= target : mass > target; };
  const CandidateOrder order;
  const auto first = candidates_.begin();
  size_t lo = 0;
  size_t hi = num_candidates;
  double mass_above = 0.0;  // weight of ranks [0, lo)
  // Most of the mass usually sits in the first few tokens: try a small head first.
  size_t split = std::min(kMinSortChunk, hi / 2);
  while (hi - lo > kMinSortChunk) {
    const size_t mid = lo + split;
    std::nth_element(first + lo, first + mid, first + hi, order);
    double upper = 0.0;
    for (size_t idx = lo; idx < mid; ++idx) upper += candidates_[idx].weight;
    if (reached(mass_above + upper)) {
      hi = mid;
    } else {
      mass_above += upper;
      lo = mid;
    }
    split = (hi - lo) / 2;
  }
  std::sort(first + lo, first + hi, order);
  for (size_t rank = lo; rank < hi; ++rank) {
    mass_above += candidates_[rank].weight;
    if (reached(mass_above)) {
      *mass_through = mass_above;
      return rank;
    }
  }
  *mass_through = mass_above;  // only rounding gets here: the last of the range
  return hi - 1;
}

int32_t Sampler::SampleFiltered(std::span<const float> logits, const SamplingParams& params,
                                double u) {
  const float max_logit = MaxLogit(logits);
  size_t num_candidates = CollectCandidates(logits, params.min_p, max_logit);
  SY_DCHECK(num_candidates > 0);  // the max survives every filter
  if (params.top_k > 0 && static_cast<size_t>(params.top_k) < num_candidates) {
    const auto first = candidates_.begin();
    std::nth_element(first, first + params.top_k, first + num_candidates, CandidateOrder());
    num_candidates = static_cast<size_t>(params.top_k);
  }
  // Weighing after top_k saves an exp per dropped token.
  double total_weight = WeighCandidates(num_candidates, max_logit);
  if (params.top_p < 1.0f) {
    // The kept set ends at the first rank whose cumulative mass reaches top_p.
    const size_t last_kept = SelectByMass(
        num_candidates, static_cast<double>(params.top_p) * total_weight, true, &total_weight);
    num_candidates = last_kept + 1;
  }
  double unused_mass;
  return candidates_[SelectByMass(num_candidates, u * total_weight, false, &unused_mass)].token_id;
}

}  // namespace switchyard
