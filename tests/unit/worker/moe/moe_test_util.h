// Test problems for MoE dispatch/combine: deterministic per-rank inputs, a toy grouped expert
// (expert e maps a row x to x * (e + 1) + e), and the direct single-process reference.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "worker/comm/communicator.h"
#include "worker/moe/dispatch.h"
#include "worker/moe/placement.h"

namespace switchyard::testing {

enum class Routing {
  kRandom,      // k distinct random experts per token
  kSameExpert,  // every choice of every token on every rank picks expert 0 (k must be 1)
  kSpread,      // choice j of token t on rank r picks (t * k + j + r) % num_experts: all-to-all
  kOneBlock,    // choice j of token t on rank r picks b * k + (j + t) % k with b = (t + r) %
                // (num_experts / k): all k choices in one block of k consecutive experts (one
                // rank under Contiguous(k * world_size)), in a rotated order
};

struct MoeCase {
  int world_size = 1;
  int32_t num_experts = 8;
  int64_t hidden = 16;
  int64_t k = 2;
  std::vector<int64_t> tokens_per_rank;  // world_size entries
  Routing routing = Routing::kRandom;
  bool scale_input_by_weight = false;
  bool sum_per_rank = false;  // DispatchOptions::sum_per_rank
  uint32_t seed = 1;
};

struct RankInputs {
  int64_t num_tokens = 0;
  std::vector<float> x;        // [num_tokens, hidden]
  std::vector<int32_t> ids;    // [num_tokens, k]
  std::vector<float> weights;  // [num_tokens, k]
};

RankInputs MakeInputs(const MoeCase& moe_case, int rank);

// The toy expert for `rank` under `placement`; counts its calls in *num_calls when given.
GroupedExpertFn ToyExperts(const LayerPlacement& placement, int rank, int* num_calls = nullptr);

// out[t] = sum_j w[t, j] * (x[t] * (e + 1) + e), accumulated in j order (or with the input
// scaled by w and the sum unweighted), computed directly without any dispatch.
std::vector<float> ReferenceOutput(const MoeCase& moe_case, const RankInputs& inputs);

// Compares within 1e-6 relative (the orders of operations agree, so the values should be equal).
absl::Status CompareOutputs(const std::vector<float>& expected, const std::vector<float>& actual,
                            int rank);

// Runs one dispatch/combine for `moe_case` on `comm` and checks the result against the
// reference. stats (optional) receives the dispatcher's stats.
absl::Status RunAndCheckDispatch(Communicator& comm, const LayerPlacement& placement,
                                 const MoeCase& moe_case, DispatchStats* stats = nullptr);

}  // namespace switchyard::testing
