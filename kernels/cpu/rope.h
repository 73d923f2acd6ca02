// Rotary position embeddings on the CPU (fp32), in both layouts the supported families use.
#pragma once

#include <cstdint>

namespace switchyard::kernels::cpu {

// Rotates x[t, h, :] (num_tokens x num_heads x head_dim, in place) by angle positions[t] * inv_freq[i]
// for frequency i in [0, head_dim / 2).
//   interleaved = false: pairs (i, i + head_dim / 2)   ("rotate_half": Llama, Mixtral, Qwen, OLMoE)
//   interleaved = true:  pairs (2i, 2i + 1)            (complex form: Llama 4)
// Angles are computed in double so long positions do not lose precision.
void ApplyRope(float* x, const int32_t* positions, const float* inv_freq, int64_t num_tokens,
               int64_t num_heads, int64_t head_dim, bool interleaved);

}  // namespace switchyard::kernels::cpu
