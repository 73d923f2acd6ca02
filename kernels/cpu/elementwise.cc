#include "kernels/cpu/elementwise.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace switchyard::kernels::cpu {

void RmsNorm(const float* x, const float* weight, float* out, int64_t num_rows, int64_t dim,
             float eps) {
  for (int64_t r = 0; r < num_rows; ++r) {
    const float* xr = x + r * dim;
    float* yr = out + r * dim;
    double sum_sq = 0.0;
    for (int64_t i = 0; i < dim; ++i) sum_sq += static_cast<double>(xr[i]) * xr[i];
    const float inv = 1.0f / std::sqrt(static_cast<float>(sum_sq / dim) + eps);
    for (int64_t i = 0; i < dim; ++i) {
      const float normed = xr[i] * inv;
      yr[i] = weight != nullptr ? normed * weight[i] : normed;
    }
  }
}

void SiluMul(const float* gate, int64_t gate_stride, const float* up, int64_t up_stride, float* out,
             int64_t num_rows, int64_t dim) {
  for (int64_t r = 0; r < num_rows; ++r) {
    const float* g = gate + r * gate_stride;
    const float* u = up + r * up_stride;
    float* o = out + r * dim;
    for (int64_t i = 0; i < dim; ++i) o[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
  }
}

void AddInPlace(float* y, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += x[i];
}

void ScaleRows(float* y, const float* scale, int64_t num_rows, int64_t dim) {
  for (int64_t r = 0; r < num_rows; ++r) {
    float* yr = y + r * dim;
    for (int64_t i = 0; i < dim; ++i) yr[i] *= scale[r];
  }
}

void Clamp(float* x, int64_t n, float limit) {
  for (int64_t i = 0; i < n; ++i) x[i] = std::clamp(x[i], -limit, limit);
}

void EmbeddingLookup(const float* table, const int32_t* ids, int64_t num_tokens, int64_t dim,
                     float* out) {
  for (int64_t t = 0; t < num_tokens; ++t) {
    std::memcpy(out + t * dim, table + static_cast<int64_t>(ids[t]) * dim, dim * sizeof(float));
  }
}

}  // namespace switchyard::kernels::cpu
