#include "kernels/cuda/router.h"

#include <climits>

#include "kernels/cuda/internal/device_utils.cuh"

namespace switchyard::kernels::cuda {
namespace {

using internal::ToFloat;

constexpr int kWarpsPerBlock = 4;

// (score, id) order of the CPU reference: higher score first, ties to the lower id.
__device__ __forceinline__ bool Better(float a, int32_t a_id, float b, int32_t b_id) {
  return a > b || (a == b && a_id < b_id);
}

// One warp per token; the token's scores sit in this warp's slice of shared memory.
template <typename T>
__global__ void RouterKernel(const T* logits, int64_t num_tokens, int64_t num_experts, int64_t k,
                             bool softmax, bool renormalize, int32_t* topk_ids,
                             float* topk_weights, int32_t* expert_counts) {
  extern __shared__ float smem[];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t token = blockIdx.x * int64_t{kWarpsPerBlock} + warp;
  if (token >= num_tokens) return;  // whole warps leave; no block barrier follows
  float* scores = smem + warp * num_experts;
  int32_t* picked = reinterpret_cast<int32_t*>(smem + kWarpsPerBlock * num_experts) +
                    warp * kMaxRouterTopK;
  const T* row = logits + token * num_experts;
  float max_logit = -INFINITY;
  for (int64_t e = lane; e < num_experts; e += 32) {
    scores[e] = ToFloat(row[e]);
    max_logit = fmaxf(max_logit, scores[e]);
  }
  max_logit = internal::WarpMax(max_logit);
  if (softmax) {
    double denom = 0.0;
    for (int64_t e = lane; e < num_experts; e += 32) {
      scores[e] = expf(scores[e] - max_logit);
      denom += scores[e];
    }
    denom = internal::WarpSum(denom);
    for (int64_t e = lane; e < num_experts; e += 32) {
      scores[e] = static_cast<float>(static_cast<double>(scores[e]) / denom);
    }
  }
  __syncwarp();
  for (int64_t j = 0; j < k; ++j) {
    float best = -INFINITY;
    int32_t best_id = INT_MAX;
    for (int64_t e = lane; e < num_experts; e += 32) {
      bool taken = false;
      for (int64_t p = 0; p < j; ++p) taken |= picked[p] == e;
      if (!taken && Better(scores[e], static_cast<int32_t>(e), best, best_id)) {
        best = scores[e];
        best_id = static_cast<int32_t>(e);
      }
    }
    for (int offset = 16; offset > 0; offset /= 2) {
      const float other = __shfl_xor_sync(0xffffffffu, best, offset);
      const int32_t other_id = __shfl_xor_sync(0xffffffffu, best_id, offset);
      if (Better(other, other_id, best, best_id)) {
        best = other;
        best_id = other_id;
      }
    }
    // Only NaN scores leave best_id unset; mark the pair invalid (-1) rather than index with it.
    if (lane == 0) picked[j] = best_id == INT_MAX ? -1 : best_id;
    __syncwarp();
  }
  if (lane != 0) return;
  float sum = 0.0f;
  for (int64_t j = 0; j < k; ++j) {
    const int32_t e = picked[j];
    const float w = e < 0 ? 0.0f : (softmax ? scores[e] : 1.0f / (1.0f + expf(-scores[e])));
    topk_ids[token * k + j] = e;
    topk_weights[token * k + j] = w;
    sum += w;
    if (expert_counts != nullptr && e >= 0) atomicAdd(&expert_counts[e], 1);
  }
  if (renormalize && sum > 0.0f) {
    for (int64_t j = 0; j < k; ++j) topk_weights[token * k + j] /= sum;
  }
}

template <typename T>
cudaError_t RouterImpl(const T* logits, int64_t num_tokens, int64_t num_experts, int64_t k,
                       cpu::RouterKind kind, bool renormalize, int32_t* topk_ids,
                       float* topk_weights, int32_t* expert_counts, cudaStream_t stream) {
  if (num_tokens == 0) return cudaSuccess;
  if (num_tokens < 0 || num_experts < 1 || num_experts > kMaxRouterExperts || k < 1 ||
      k > kMaxRouterTopK || k > num_experts) {
    return cudaErrorInvalidValue;
  }
  const int64_t blocks = (num_tokens + kWarpsPerBlock - 1) / kWarpsPerBlock;
  if (!internal::FitsGridX(blocks)) return cudaErrorInvalidValue;
  const size_t smem_bytes =
      kWarpsPerBlock * (num_experts * sizeof(float) + kMaxRouterTopK * sizeof(int32_t));
  if (smem_bytes > 48 * 1024) {
    cudaError_t err = cudaFuncSetAttribute(RouterKernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(smem_bytes));
    if (err != cudaSuccess) return err;
  }
  RouterKernel<T><<<static_cast<unsigned>(blocks), kWarpsPerBlock * 32, smem_bytes, stream>>>(
      logits, num_tokens, num_experts, k, kind == cpu::RouterKind::kSoftmaxTopK, renormalize,
      topk_ids, topk_weights, expert_counts);
  return cudaGetLastError();
}

}  // namespace

cudaError_t LaunchRouterTopK(const float* logits, int64_t num_tokens, int64_t num_experts,
                             int64_t k, cpu::RouterKind kind, bool renormalize, int32_t* topk_ids,
                             float* topk_weights, int32_t* expert_counts, cudaStream_t stream) {
  return RouterImpl(logits, num_tokens, num_experts, k, kind, renormalize, topk_ids, topk_weights,
                    expert_counts, stream);
}

cudaError_t LaunchRouterTopK(const __nv_bfloat16* logits, int64_t num_tokens, int64_t num_experts,
                             int64_t k, cpu::RouterKind kind, bool renormalize, int32_t* topk_ids,
                             float* topk_weights, int32_t* expert_counts, cudaStream_t stream) {
  return RouterImpl(logits, num_tokens, num_experts, k, kind, renormalize, topk_ids, topk_weights,
                    expert_counts, stream);
}

}  // namespace switchyard::kernels::cuda
