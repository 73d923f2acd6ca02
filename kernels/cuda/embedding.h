// CUDA embedding lookup (reference: kernels/cpu/elementwise.h EmbeddingLookup).
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

namespace switchyard::kernels::cuda {

// out[t, :] = table[ids[t], :] for a [vocab_size, dim] table; ids is a device array. An id outside
// [0, vocab_size) writes a zero row (the engine validates ids first; this only keeps a bad id from
// reading out of bounds). One block per token.
cudaError_t LaunchEmbedding(const float* table, const int32_t* ids, int64_t num_tokens,
                            int64_t vocab_size, int64_t dim, float* out, cudaStream_t stream);
cudaError_t LaunchEmbedding(const __nv_bfloat16* table, const int32_t* ids, int64_t num_tokens,
                            int64_t vocab_size, int64_t dim, __nv_bfloat16* out,
                            cudaStream_t stream);

}  // namespace switchyard::kernels::cuda
