#include "kernels/cpu/rope.h"

#include <cmath>

namespace switchyard::kernels::cpu {

void ApplyRope(float* x, const int32_t* positions, const float* inv_freq, int64_t num_tokens,
               int64_t num_heads, int64_t head_dim, bool interleaved) {
  const int64_t half = head_dim / 2;
  for (int64_t t = 0; t < num_tokens; ++t) {
    for (int64_t i = 0; i < half; ++i) {
      const double angle = static_cast<double>(positions[t]) * static_cast<double>(inv_freq[i]);
      const float c = static_cast<float>(std::cos(angle));
      const float s = static_cast<float>(std::sin(angle));
      for (int64_t h = 0; h < num_heads; ++h) {
        float* row = x + (t * num_heads + h) * head_dim;
        const int64_t a = interleaved ? 2 * i : i;
        const int64_t b = interleaved ? 2 * i + 1 : i + half;
        const float x0 = row[a];
        const float x1 = row[b];
        row[a] = x0 * c - x1 * s;
        row[b] = x1 * c + x0 * s;
      }
    }
  }
}

}  // namespace switchyard::kernels::cpu
