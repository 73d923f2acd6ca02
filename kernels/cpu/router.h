// MoE router on the CPU (fp32): scores, top-k and weights per token, for every family's semantics.
#pragma once

#include <cstdint>

namespace switchyard::kernels::cpu {

enum class RouterKind {
  kSoftmaxTopK,  // p = softmax(logits); pick the k largest p; weights p (renormalised if asked)
  kTopKSigmoid,  // pick the k largest logits; weights sigmoid(logit)
};

// logits [num_tokens, num_experts] -> ids and weights [num_tokens, k], in descending score order
// (ties: lower expert id first). renormalize divides the k weights by their sum.
void RouterTopK(const float* logits, int64_t num_tokens, int64_t num_experts, int64_t k,
                RouterKind kind, bool renormalize, int32_t* topk_ids, float* topk_weights);

}  // namespace switchyard::kernels::cpu
