#include "tests/unit/worker/moe/moe_test_util.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "absl/strings/str_cat.h"

namespace switchyard::testing {

RankInputs MakeInputs(const MoeCase& moe_case, int rank) {
  RankInputs inputs;
  inputs.num_tokens = moe_case.tokens_per_rank[rank];
  const int64_t k = moe_case.k;
  std::mt19937 rng(moe_case.seed * 7919u + rank);
  std::uniform_real_distribution<float> value(-1.0f, 1.0f);
  std::uniform_real_distribution<float> weight(0.05f, 1.0f);
  inputs.x.resize(inputs.num_tokens * moe_case.hidden);
  for (float& v : inputs.x) v = value(rng);
  inputs.ids.resize(inputs.num_tokens * k);
  inputs.weights.resize(inputs.num_tokens * k);
  for (float& w : inputs.weights) w = weight(rng);
  std::vector<int32_t> experts(moe_case.num_experts);
  for (int64_t t = 0; t < inputs.num_tokens; ++t) {
    std::iota(experts.begin(), experts.end(), 0);
    std::shuffle(experts.begin(), experts.end(), rng);
    for (int64_t j = 0; j < k; ++j) {
      int32_t& id = inputs.ids[t * k + j];
      switch (moe_case.routing) {
        case Routing::kRandom:
          id = experts[j];
          break;
        case Routing::kSameExpert:
          id = 0;
          break;
        case Routing::kSpread:
          id = static_cast<int32_t>((t * k + j + rank) % moe_case.num_experts);
          break;
        case Routing::kOneBlock:
          id = static_cast<int32_t>(((t + rank) % (moe_case.num_experts / k)) * k + (j + t) % k);
      }
    }
  }
  return inputs;
}

GroupedExpertFn ToyExperts(const LayerPlacement& placement, int rank, int* num_calls) {
  return [&placement, rank, num_calls](const Tensor& row_tensor,
                                       std::span<const int64_t> expert_offsets,
                                       const Tensor& out_tensor) -> absl::Status {
    if (num_calls != nullptr) ++*num_calls;
    const int64_t num_local_slots = static_cast<int64_t>(expert_offsets.size()) - 1;
    const int64_t hidden = row_tensor.dim(1);
    const float* rows = row_tensor.data_as<const float>();
    float* out_rows = out_tensor.data_as<float>();
    if (row_tensor.dtype() != DType::kF32 || out_tensor.shape() != row_tensor.shape() ||
        row_tensor.dim(0) != expert_offsets.back()) {
      return absl::InternalError(absl::StrCat("rank ", rank, ": expert call with rows ",
                                              row_tensor.ShapeString(), ", out ",
                                              out_tensor.ShapeString(), ", ",
                                              expert_offsets.back(), " rows by offsets"));
    }
    if (num_local_slots != placement.num_local_slots(rank)) {
      return absl::InternalError(absl::StrCat("rank ", rank, ": expert call with ", num_local_slots,
                                              " slots, placement has ",
                                              placement.num_local_slots(rank)));
    }
    for (int64_t slot = 0; slot < num_local_slots; ++slot) {
      const float expert = static_cast<float>(placement.expert_at(rank, slot));
      for (int64_t row = expert_offsets[slot]; row < expert_offsets[slot + 1]; ++row) {
        for (int64_t h = 0; h < hidden; ++h) {
          out_rows[row * hidden + h] = rows[row * hidden + h] * (expert + 1.0f) + expert;
        }
      }
    }
    return absl::OkStatus();
  };
}

std::vector<float> ReferenceOutput(const MoeCase& moe_case, const RankInputs& inputs) {
  const int64_t hidden = moe_case.hidden, k = moe_case.k;
  std::vector<float> out(inputs.num_tokens * hidden, 0.0f);
  std::vector<float> scaled(hidden);
  for (int64_t t = 0; t < inputs.num_tokens; ++t) {
    for (int64_t j = 0; j < k; ++j) {
      const float expert = static_cast<float>(inputs.ids[t * k + j]);
      const float w = inputs.weights[t * k + j];
      for (int64_t h = 0; h < hidden; ++h) {
        const float x = inputs.x[t * hidden + h];
        if (moe_case.scale_input_by_weight) {
          const float input = x * w;
          out[t * hidden + h] += input * (expert + 1.0f) + expert;
        } else {
          const float y = x * (expert + 1.0f) + expert;
          out[t * hidden + h] += w * y;
        }
      }
    }
  }
  return out;
}

absl::Status CompareOutputs(const std::vector<float>& expected, const std::vector<float>& actual,
                            int rank) {
  if (expected.size() != actual.size()) {
    return absl::InternalError(
        absl::StrCat("rank ", rank, ": ", actual.size(), " outputs, expected ", expected.size()));
  }
  for (size_t i = 0; i < expected.size(); ++i) {
    const float tolerance = 1e-6f * std::max(1.0f, std::fabs(expected[i]));
    if (!(std::fabs(expected[i] - actual[i]) <= tolerance)) {
      return absl::InternalError(absl::StrCat("rank ", rank, ": output ", i, " is ", actual[i],
                                              ", expected ", expected[i]));
    }
  }
  return absl::OkStatus();
}

absl::Status RunAndCheckDispatch(Communicator& comm, const LayerPlacement& placement,
                                 const MoeCase& moe_case, DispatchStats* stats) {
  const int rank = comm.rank();
  const RankInputs inputs = MakeInputs(moe_case, rank);
  // NaN-filled: the combine must overwrite every element.
  std::vector<float> out(inputs.num_tokens * moe_case.hidden, std::nanf(""));
  int num_calls = 0;
  DispatchOptions options;
  options.scale_input_by_weight = moe_case.scale_input_by_weight;
  options.sum_per_rank = moe_case.sum_per_rank;
  absl::Status status =
      MoeDispatchCombine(comm, placement, inputs.x.data(), inputs.num_tokens, moe_case.hidden,
                         inputs.ids.data(), inputs.weights.data(), moe_case.k,
                         ToyExperts(placement, rank, &num_calls), out.data(), stats, options);
  if (!status.ok()) return status;
  if (num_calls != 1) {
    return absl::InternalError(
        absl::StrCat("rank ", rank, ": expert fn called ", num_calls, " times, expected once"));
  }
  return CompareOutputs(ReferenceOutput(moe_case, inputs), out, rank);
}

}  // namespace switchyard::testing
