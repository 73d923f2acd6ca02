// Normalisation, activation and elementwise ops on the CPU (fp32). Each is the reference for its
// CUDA counterpart in kernels/cuda/.
#pragma once

#include <cstdint>

namespace switchyard::kernels::cpu {

// out[r, :] = x[r, :] / sqrt(mean(x[r, :]^2) + eps) * weight   (weight may be null: no scale).
// x and out may alias.
void RmsNorm(const float* x, const float* weight, float* out, int64_t num_rows, int64_t dim,
             float eps);

// out[r, i] = silu(gate[r, i]) * up[r, i], where gate and up are rows of a [num_rows, dim]
// layout with separate strides (so a fused [gate | up] row can be read in place).
void SiluMul(const float* gate, int64_t gate_stride, const float* up, int64_t up_stride, float* out,
             int64_t num_rows, int64_t dim);

// y[i] += x[i]
void AddInPlace(float* y, const float* x, int64_t n);

// y[r, :] *= scale[r]
void ScaleRows(float* y, const float* scale, int64_t num_rows, int64_t dim);

// x[i] = clamp(x[i], -limit, limit)
void Clamp(float* x, int64_t n, float limit);

// out[t, :] = table[ids[t], :]
void EmbeddingLookup(const float* table, const int32_t* ids, int64_t num_tokens, int64_t dim,
                     float* out);

}  // namespace switchyard::kernels::cpu
