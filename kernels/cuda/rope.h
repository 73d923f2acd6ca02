// CUDA rotary position embeddings (reference: kernels/cpu/rope.h, same layouts and angles).
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

namespace switchyard::kernels::cuda {

// Rotates x[t, h, :] ([num_tokens, num_heads, head_dim], in place) by positions[t] * inv_freq[i]
// (angles in double, like the CPU reference; cos/sin rounded to fp32). positions [num_tokens] and
// inv_freq [head_dim / 2] are device arrays. One block per token. head_dim must be even and at
// most 2048; otherwise cudaErrorInvalidValue.
cudaError_t LaunchRope(float* x, const int32_t* positions, const float* inv_freq,
                       int64_t num_tokens, int64_t num_heads, int64_t head_dim, bool interleaved,
                       cudaStream_t stream);
cudaError_t LaunchRope(__nv_bfloat16* x, const int32_t* positions, const float* inv_freq,
                       int64_t num_tokens, int64_t num_heads, int64_t head_dim, bool interleaved,
                       cudaStream_t stream);

}  // namespace switchyard::kernels::cuda
