// The compute backend seam (DESIGN.md §5): memory and the ops the model forward needs. The engine is
// written once against this interface; the CPU backend (always built) runs the reference kernels in
// fp32, the CUDA backend runs kernels/cuda on a stream.
//
// Ops are stream-ordered on an accelerator: they may return before the work is done. Host outputs
// (CopyToHost, RouterTopK) are complete when the call returns. Shapes are the caller's contract
// (REQUIRES), checked with SY_DCHECK; errors from the device come back as INTERNAL.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/router.h"
#include "worker/backend/tensor.h"

namespace switchyard {

enum class BackendKind { kCpu, kCuda };

// Per-layer attention options (family variants).
struct AttentionParams {
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t block_size = 0;
  float scale = 1.0f;
  int64_t chunk_size = 0;  // 0 = full causal attention
};

// Per-row parameters of Backend::SampleTokens: the penalty-free part of SamplingParams
// (worker/sampler.h), with the row's seed and the absolute position of the token being sampled.
struct DeviceSamplingRow {
  float temperature = 1.0f;
  int32_t top_k = 0;
  float top_p = 1.0f;
  float min_p = 0.0f;
  uint64_t seed = 0;
  uint64_t position = 0;
};

// Penalties of one logits row for Backend::ApplyPenalties: the row's tokens are
// tokens[first_token, first_token + num_tokens).
struct PenaltyRow {
  int64_t row = 0;
  float repetition = 1.0f;
  float frequency = 0.0f;
  float presence = 0.0f;
  int32_t first_token = 0;
  int32_t num_tokens = 0;
};
// A distinct token of a sequence's prompt or output: output_count 0 = prompt only.
struct PenaltyToken {
  int32_t token_id = 0;
  int32_t output_count = 0;
};

// One backend instance per worker; not thread-safe (one engine thread drives it).
class Backend {
 public:
  virtual ~Backend() = default;
  virtual BackendKind kind() const = 0;
  virtual std::string_view name() const = 0;
  // The dtype the engine uses for weights, activations and the KV cache on this backend (CPU: F32;
  // CUDA: BF16, with fp32 accumulation inside the ops). Logits and router scores stay F32.
  virtual DType activation_dtype() const = 0;
  // Memory of the device this backend computes on (host RAM for the CPU backend), 0 if unknown.
  virtual uint64_t total_memory_bytes() const = 0;
  // True when the backend's tensors are in host memory, directly addressable by the CPU (and by a
  // host-memory communicator).
  virtual bool host_memory() const = 0;

  // Memory. Contents of Empty() are unspecified.
  virtual absl::StatusOr<Tensor> Empty(DType dtype, std::vector<int64_t> shape) = 0;
  // Copies host fp32 values into dst (converting to dst's dtype). REQUIRES: size == num_elements.
  virtual absl::Status CopyFromHost(std::span<const float> src, const Tensor& dst) = 0;
  // Copies src (converted to fp32) to the host; complete on return.
  virtual absl::Status CopyToHost(const Tensor& src, std::span<float> dst) = 0;
  virtual absl::Status Synchronize() = 0;
  // Raw byte copies between the host and this backend's memory (`device` points into a tensor of
  // this backend). To the device: stream-ordered, and the host bytes may be reused on return. To
  // the host: complete on return.
  virtual absl::Status CopyBytesFromHost(const void* host, int64_t num_bytes, void* device) = 0;
  virtual absl::Status CopyBytesToHost(const void* device, int64_t num_bytes, void* host) = 0;
  // Several ranges of this backend's memory to the host, back to back from `host` in the order
  // given; complete on return. A device backend waits once for all of them (the default copies one
  // range at a time).
  struct ByteRange {
    const void* device = nullptr;
    int64_t num_bytes = 0;
  };
  virtual absl::Status CopyRangesToHost(std::span<const ByteRange> ranges, void* host);

  // out[t, :] = table[ids[t], :]
  virtual absl::Status Embedding(const Tensor& table, std::span<const int32_t> ids,
                                 const Tensor& out) = 0;
  // out = rmsnorm(x) * weight over the last dim of a [rows, dim] view; weight may be empty.
  virtual absl::Status RmsNorm(const Tensor& x, const Tensor& weight, float eps,
                               const Tensor& out) = 0;
  // out[m, n] = x[m, k] w[n, k]^T (+ bias[n]) (+ out when accumulate).
  virtual absl::Status Linear(const Tensor& x, const Tensor& w, const Tensor& bias,
                              const Tensor& out, bool accumulate = false) = 0;
  // out[m, n] = x[m, k] w[k, n]
  virtual absl::Status MatMul(const Tensor& x, const Tensor& w, const Tensor& out) = 0;
  // Grouped Linear over the rows of x [R, K] (one projection of every expert in a layer): group g
  // is rows [offsets[g], offsets[g + 1]), and out[those rows] = x[those rows] weights[g]^T with
  // weights[g] [N, K] like Linear (no bias, no accumulate). offsets has weights.size() + 1
  // non-decreasing entries with offsets.back() <= R; rows outside [offsets[0], offsets.back())
  // are left alone. A group with no rows may have a null or empty weight; a group with rows and
  // none is FAILED_PRECONDITION, bad offsets INVALID_ARGUMENT. Results equal one Linear per
  // non-empty group (exactly so on the CPU backend).
  virtual absl::Status GroupedLinear(const Tensor& x, std::span<const Tensor* const> weights,
                                     std::span<const int64_t> offsets, const Tensor& out) = 0;
  // As GroupedLinear with MatMul's weight layout: weights[g] is [K, N] (Llama 4's experts).
  virtual absl::Status GroupedMatMul(const Tensor& x, std::span<const Tensor* const> weights,
                                     std::span<const int64_t> offsets, const Tensor& out) = 0;
  // In place on x [tokens, heads * head_dim]; see kernels/cpu/rope.h.
  virtual absl::Status Rope(const Tensor& x, std::span<const int32_t> positions,
                            std::span<const float> inv_freq, int64_t num_heads, int64_t head_dim,
                            bool interleaved) = 0;
  virtual absl::Status WriteKvCache(const Tensor& k, const Tensor& v,
                                    std::span<const int64_t> slots, const Tensor& k_cache,
                                    const Tensor& v_cache) = 0;
  virtual absl::Status Attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                                 std::span<const kernels::cpu::AttentionSeq> seqs,
                                 const AttentionParams& params, const Tensor& out) = 0;
  // out[r, :] = silu(gate[r, :]) * up[r, :] where gate_up rows are [gate | up] (fused, [R, 2I]).
  virtual absl::Status SiluMulFused(const Tensor& gate_up, const Tensor& out) = 0;
  // out = silu(gate) * up, all [R, I].
  virtual absl::Status SiluMul(const Tensor& gate, const Tensor& up, const Tensor& out) = 0;
  // y += x
  virtual absl::Status Add(const Tensor& y, const Tensor& x) = 0;
  // y[r, :] *= scale[r]
  virtual absl::Status ScaleRows(const Tensor& y, std::span<const float> scale) = 0;
  // y[r, :] *= sigmoid(gate[r, 0])   (gate [R, 1])
  virtual absl::Status ScaleRowsBySigmoid(const Tensor& y, const Tensor& gate) = 0;
  virtual absl::Status Clamp(const Tensor& x, float limit) = 0;
  // Router: logits [T, E] -> top-k ids and weights on the host ([T, k] row-major).
  virtual absl::Status RouterTopK(const Tensor& logits, int64_t k, kernels::cpu::RouterKind kind,
                                  bool renormalize, std::span<int32_t> topk_ids,
                                  std::span<float> topk_weights) = 0;
  // out[i, :] = x[src_rows[i], :] * (row_scale.empty() ? 1 : row_scale[i])
  virtual absl::Status GatherRows(const Tensor& x, std::span<const int32_t> src_rows,
                                  std::span<const float> row_scale, const Tensor& out) = 0;
  // out[t, :] = sum over j in 0..k-1, in that order, of weights[t, j] * rows[row_of[t, j], :]
  // (row_of[t, j] < 0 contributes nothing). The fixed order makes the sum independent of where
  // the rows were computed.
  virtual absl::Status CombineRows(const Tensor& rows, std::span<const int32_t> row_of,
                                   std::span<const float> weights, int64_t k,
                                   const Tensor& out) = 0;

  // In place on logits (F32 [R, vocab]), for each row's listed tokens, the penalties of
  // Sampler::Sample: repetition (logit > 0: / r, else * r; prompt and output tokens), then for
  // output tokens logit -= frequency * count and logit -= presence. Each token listed once per
  // row; ids outside the vocabulary are skipped.
  virtual absl::Status ApplyPenalties(const Tensor& logits, std::span<const PenaltyRow> rows,
                                      std::span<const PenaltyToken> tokens) = 0;

  // Logprobs of raw logits (F32 [R, vocab]) as Sampler::Sample reports them: for each i,
  // chosen_logprobs[i] = log_softmax(logits[rows[i]])[chosen[i]] and, in top_ids / top_logprobs
  // ([n, num_top] row-major), the num_top largest logits of that row in descending order (ties to
  // the lower id) with their logprobs; log-sum-exp in double. Complete on return.
  // REQUIRES: 0 <= num_top <= vocab, chosen ids in the vocabulary.
  virtual absl::Status Logprobs(const Tensor& logits, std::span<const int64_t> rows,
                                std::span<const int32_t> chosen, int32_t num_top,
                                std::span<float> chosen_logprobs, std::span<int32_t> top_ids,
                                std::span<float> top_logprobs) = 0;

  // True when SampleTokens runs here, so that the logits need not be copied to the host.
  virtual bool samples_on_device() const { return false; }
  // token_ids[i] = the token sampled from row rows[i] of logits (F32 [R, vocab]) with params[i],
  // as Sampler::Sample would pick it without penalties (temperature, min_p, top_k, top_p and the
  // (seed, position) draw; greedy below kGreedyTemperature). No logprobs. Complete on return.
  // UNIMPLEMENTED unless samples_on_device().
  virtual absl::Status SampleTokens(const Tensor& logits, std::span<const int64_t> rows,
                                    std::span<const DeviceSamplingRow> params,
                                    std::span<int32_t> token_ids);
};

// The argument checks GroupedLinear / GroupedMatMul share across backends (see there); `op`
// names the call in the error.
absl::Status CheckGroupedGemmArgs(std::span<const Tensor* const> weights,
                                  std::span<const int64_t> offsets, int64_t num_rows,
                                  std::string_view op);

// The CPU backend: fp32 tensors in host memory, kernels/cpu ops.
std::unique_ptr<Backend> MakeCpuBackend();

// A backend by name ("cpu", "cuda", or "auto": CUDA when built with it and a device is present).
// UNAVAILABLE when "cuda" is asked for and there is no usable device; INVALID_ARGUMENT otherwise.
absl::StatusOr<std::unique_ptr<Backend>> MakeBackend(std::string_view name);

}  // namespace switchyard
