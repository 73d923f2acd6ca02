// CUDA token sampling with the semantics of worker/sampler.h (penalties by LaunchApplyPenalties
// first, logprobs of the raw logits by LaunchLogprobs): greedy below kGreedyTemperature, else logits / temperature, then min_p, top_k,
// top_p, and an inverse-CDF draw over the kept tokens in descending order with the same
// (seed, position) Philox4x32-10 uniform as SamplingUniform, so GPU and CPU pick the same token
// from the same logits (up to rounding of partial sums at a token boundary, ~1e-16 relative).
//
// Each row's vocabulary is sorted (CUB segmented radix sort, stable, so ties keep the lower id
// first), then one block per row counts, scans and selects in double. Sorting the whole vocabulary
// is the simple first version; a later one should select the top candidates without a full sort.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

namespace switchyard::kernels::cuda {

inline constexpr float kCudaGreedyTemperature = 1e-5f;  // worker/sampler.h kGreedyTemperature

struct SamplingRowParams {
  float temperature = 1.0f;
  int32_t top_k = 0;  // 0 or -1: off
  float top_p = 1.0f;
  float min_p = 0.0f;
  uint64_t seed = 0;
  uint64_t position = 0;
};

// Bytes of device workspace LaunchSampleTokens needs for this shape (queries CUB; needs a device).
// 0 with an error when the shape is out of range (num_rows * vocab_size >= 2^31).
cudaError_t SamplingWorkspaceBytes(int64_t num_rows, int64_t vocab_size, size_t* bytes);

// token_ids[r] = the token sampled from logits[r, :] with params[r] (device arrays). REQUIRES:
// workspace of at least SamplingWorkspaceBytes bytes (256-byte aligned); each row valid per
// ValidateSamplingParams, with no NaN or +inf and at least one finite logit.
cudaError_t LaunchSampleTokens(const float* logits, int64_t num_rows, int64_t vocab_size,
                               const SamplingRowParams* params, void* workspace,
                               size_t workspace_bytes, int32_t* token_ids, cudaStream_t stream);

// Penalties of one logits row (worker/sampler.h semantics): its tokens are
// entries[first_entry, first_entry + num_entries), each listed once.
struct PenaltyRowParams {
  int64_t row = 0;  // row of the logits array
  float repetition = 1.0f;
  float frequency = 0.0f;
  float presence = 0.0f;
  int32_t first_entry = 0;
  int32_t num_entries = 0;
};
// A token of the prompt or the output of a sequence: output_count 0 = prompt only.
struct PenaltyEntry {
  int32_t token_id = 0;
  int32_t output_count = 0;
};

// In place on logits [*, vocab_size], per listed token: repetition (logit > 0: / r, else * r),
// then for output tokens logit -= frequency * count, then logit -= presence; each step rounded as
// the host sampler rounds it (no fused multiply-add). One block per row. Token ids outside
// [0, vocab_size) are skipped.
cudaError_t LaunchApplyPenalties(float* logits, int64_t vocab_size, const PenaltyRowParams* rows,
                                 int64_t num_rows, const PenaltyEntry* entries,
                                 cudaStream_t stream);

// Logprobs of the raw logits, per row r of logits[rows[r], :] (worker/sampler.h semantics):
// log_z = max + log(sum exp(l - max)) in double; chosen_logprob[r] = l[chosen[r]] - log_z;
// top_ids[r * num_top + i] and top_logprobs[...] for the num_top largest logits in descending order,
// ties to the lower id. REQUIRES: 0 <= num_top <= vocab_size, chosen ids in range, no NaN. One block
// per row (num_top passes over the row).
cudaError_t LaunchLogprobs(const float* logits, int64_t vocab_size, const int64_t* rows,
                           int64_t num_rows, const int32_t* chosen, int32_t num_top,
                           float* chosen_logprob, int32_t* top_ids, float* top_logprobs,
                           cudaStream_t stream);

// token_ids[r] = argmax of logits[r, :] (ties to the lowest id). No workspace.
cudaError_t LaunchArgmax(const float* logits, int64_t num_rows, int64_t vocab_size,
                         int32_t* token_ids, cudaStream_t stream);

// out[i] = the uniform SamplingUniform(seeds[i], positions[i]) computed on the device (tests).
cudaError_t LaunchSamplingUniform(const uint64_t* seeds, const uint64_t* positions, int64_t n,
                                  double* out, cudaStream_t stream);

}  // namespace switchyard::kernels::cuda
