// CUDA MoE router: scores, top-k, optional renormalisation and per-expert counts, with the
// semantics of kernels/cpu/router.h (descending score order, ties to the lower expert id).
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include "kernels/cpu/router.h"

namespace switchyard::kernels::cuda {

inline constexpr int64_t kMaxRouterTopK = 32;
inline constexpr int64_t kMaxRouterExperts = 4096;

// logits [num_tokens, num_experts] (device, fp32 or bf16; scores are computed in fp32, the softmax
// denominator in double) -> topk_ids / topk_weights [num_tokens, k] (device). When expert_counts
// is not null, counts[e] is incremented once per pair routed to e (zero it first). One warp per
// token. REQUIRES: 1 <= k <= min(num_experts, kMaxRouterTopK), num_experts <= kMaxRouterExperts
// (cudaErrorInvalidValue otherwise).
cudaError_t LaunchRouterTopK(const float* logits, int64_t num_tokens, int64_t num_experts,
                             int64_t k, cpu::RouterKind kind, bool renormalize, int32_t* topk_ids,
                             float* topk_weights, int32_t* expert_counts, cudaStream_t stream);
cudaError_t LaunchRouterTopK(const __nv_bfloat16* logits, int64_t num_tokens, int64_t num_experts,
                             int64_t k, cpu::RouterKind kind, bool renormalize, int32_t* topk_ids,
                             float* topk_weights, int32_t* expert_counts, cudaStream_t stream);

}  // namespace switchyard::kernels::cuda
