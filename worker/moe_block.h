// The MoE feed-forward block: router, experts and combine, behind an executor interface so the same
// engine runs all experts locally (one process) or dispatches token rows to the ranks that hold
// them (expert parallelism, worker/moe/dispatch.h).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "common/model_config.h"
#include "worker/backend/backend.h"
#include "worker/model_weights.h"

namespace switchyard {

// Computes the routed experts' contribution for a batch of tokens.
class MoeExecutor {
 public:
  virtual ~MoeExecutor() = default;
  // x: normalised hidden states [T, H]; topk_ids / topk_weights: [T, k] from the router;
  // out: [T, H], overwritten with sum_j w[t,j] * expert_{ids[t,j]}(x[t]) (or, when the family scales
  // the input, sum_j expert_{ids[t,j]}(w[t,j] * x[t])), summed in j order.
  virtual absl::Status Run(int64_t layer_idx, const Tensor& x, std::span<const int32_t> topk_ids,
                           std::span<const float> topk_weights, int64_t k, const Tensor& out) = 0;
};

// Runs the SwiGLU of many experts over row-sorted rows [R, H] into out [R, H] with grouped backend
// calls (gate and up, or Llama 4's fused gate_up; one SiLU-mul over all rows at once; down):
// rows [offsets[g], offsets[g + 1]) belong to experts[g]. An expert with no rows may be null or
// not loaded; one with rows and no weights is FAILED_PRECONDITION. All experts given must share
// the fused flag and intermediate size. scratch_a holds [R, 2I] at least, scratch_b [R, I].
absl::Status GroupedExpertForward(Backend& backend, std::span<const ExpertWeights* const> experts,
                                  const Tensor& rows, std::span<const int64_t> offsets,
                                  const Tensor& scratch_a, const Tensor& scratch_b,
                                  const Tensor& out);

// Every expert in this process: rows grouped by expert, one grouped SwiGLU over them, fixed-order
// combine.
std::unique_ptr<MoeExecutor> MakeLocalMoeExecutor(const ModelConfig& config,
                                                  const ModelWeights& weights, Backend& backend);

}  // namespace switchyard
