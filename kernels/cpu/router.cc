#include "kernels/cpu/router.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

namespace switchyard::kernels::cpu {

void RouterTopK(const float* logits, int64_t num_tokens, int64_t num_experts, int64_t k,
                RouterKind kind, bool renormalize, int32_t* topk_ids, float* topk_weights) {
  std::vector<float> scores(num_experts);
  std::vector<int32_t> order(num_experts);
  for (int64_t t = 0; t < num_tokens; ++t) {
    const float* row = logits + t * num_experts;
    if (kind == RouterKind::kSoftmaxTopK) {
      const float max_logit = *std::max_element(row, row + num_experts);
      double denom = 0.0;
      for (int64_t e = 0; e < num_experts; ++e) {
        scores[e] = std::exp(row[e] - max_logit);
        denom += scores[e];
      }
      for (int64_t e = 0; e < num_experts; ++e) scores[e] = static_cast<float>(scores[e] / denom);
    } else {
      std::copy(row, row + num_experts, scores.begin());
    }
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int32_t a, int32_t b) {
      return scores[a] > scores[b] || (scores[a] == scores[b] && a < b);
    });
    float sum = 0.0f;
    for (int64_t j = 0; j < k; ++j) {
      const int32_t e = order[j];
      const float w = kind == RouterKind::kSoftmaxTopK ? scores[e] : 1.0f / (1.0f + std::exp(-scores[e]));
      topk_ids[t * k + j] = e;
      topk_weights[t * k + j] = w;
      sum += w;
    }
    if (renormalize && sum > 0.0f) {
      for (int64_t j = 0; j < k; ++j) topk_weights[t * k + j] /= sum;
    }
  }
}

}  // namespace switchyard::kernels::cpu
