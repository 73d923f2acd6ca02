// CUDA permutation of MoE token rows: group the (token, choice) pairs by expert, gather rows into
// that order, and combine expert outputs back per token in a fixed j order. The references are
// the CPU backend's GatherRows / CombineRows and the counting sort in worker/moe_block.cc.
//
// All pointers are device pointers. Pair i = t * k + j is token t's j-th choice.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

namespace switchyard::kernels::cuda {

// counts[e] = number of pairs routed to expert e (counts is zeroed first). Ids outside
// [0, num_experts) are not counted.
cudaError_t LaunchCountExperts(const int32_t* topk_ids, int64_t num_pairs, int64_t num_experts,
                               int32_t* counts, cudaStream_t stream);

// offsets[0] = 0, offsets[e + 1] = offsets[e] + counts[e] (num_experts + 1 values).
cudaError_t LaunchExpertOffsets(const int32_t* counts, int64_t num_experts, int64_t* offsets,
                                cudaStream_t stream);

// The stable grouping by expert (rows of one expert keep pair order): for pair i routed to expert e,
// row = offsets[e] + (number of earlier pairs routed to e); src_token[row] = i / k,
// row_weight[row] = topk_weights[i] (row_weight may be null), row_of[i] = row. Pairs with an id
// outside [0, num_experts) get row_of[i] = -1 and no row. One block per expert.
cudaError_t LaunchBuildRowMap(const int32_t* topk_ids, const float* topk_weights,
                              int64_t num_tokens, int64_t k, int64_t num_experts,
                              const int64_t* offsets, int32_t* src_token, float* row_weight,
                              int32_t* row_of, cudaStream_t stream);

// out[i, :] = x[src_rows[i], :] * (row_scale ? row_scale[i] : 1) for i < num_out_rows.
cudaError_t LaunchGatherRows(const float* x, const int32_t* src_rows, const float* row_scale,
                             int64_t num_out_rows, int64_t cols, float* out, cudaStream_t stream);
cudaError_t LaunchGatherRows(const __nv_bfloat16* x, const int32_t* src_rows,
                             const float* row_scale, int64_t num_out_rows, int64_t cols,
                             __nv_bfloat16* out, cudaStream_t stream);

// out[t, :] = sum over j = 0..k-1, in that order, of weights[t * k + j] * rows[row_of[t * k + j], :]
// accumulated in fp32 (row_of < 0 contributes nothing; a token with no rows gets zeros).
// REQUIRES: k <= kMaxCombineK.
inline constexpr int64_t kMaxCombineK = 64;
cudaError_t LaunchCombineRows(const float* rows, const int32_t* row_of, const float* weights,
                              int64_t num_tokens, int64_t k, int64_t cols, float* out,
                              cudaStream_t stream);
cudaError_t LaunchCombineRows(const __nv_bfloat16* rows, const int32_t* row_of,
                              const float* weights, int64_t num_tokens, int64_t k, int64_t cols,
                              __nv_bfloat16* out, cudaStream_t stream);

}  // namespace switchyard::kernels::cuda
