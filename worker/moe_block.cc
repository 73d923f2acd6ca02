#include "worker/moe_block.h"

#include <algorithm>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

#include "common/status_macros.h"
#include "worker/backend/scratch.h"

namespace switchyard {

namespace {

// The first expert that has rows (it sets the fused flag and intermediate size for the call),
// after checking that every group with rows has its weights.
absl::StatusOr<const ExpertWeights*> FirstExpertWithRows(
    std::span<const ExpertWeights* const> experts, std::span<const int64_t> offsets) {
  if (offsets.size() != experts.size() + 1) {
    return absl::InvalidArgumentError(absl::StrCat("GroupedExpertForward: expected ",
                                                   experts.size() + 1, " offsets, found ",
                                                   offsets.size()));
  }
  // Every group with rows needs its weights: checked here for all of them, before any GEMM runs.
  const ExpertWeights* first = nullptr;
  for (size_t g = 0; g < experts.size(); ++g) {
    if (offsets[g + 1] == offsets[g]) continue;
    if (experts[g] == nullptr || !experts[g]->loaded()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "GroupedExpertForward: group ", g, " has ", offsets[g + 1] - offsets[g],
          " rows but its expert is not loaded"));
    }
    if (first == nullptr) first = experts[g];
  }
  return first;
}

// weights[g] = &(experts[g]->*member), or null for an absent expert.
std::vector<const Tensor*> ExpertTensors(std::span<const ExpertWeights* const> experts,
                                         Tensor ExpertWeights::*member) {
  std::vector<const Tensor*> weights(experts.size(), nullptr);
  for (size_t g = 0; g < experts.size(); ++g) {
    if (experts[g] != nullptr && experts[g]->loaded()) weights[g] = &(experts[g]->*member);
  }
  return weights;
}

}  // namespace

absl::Status GroupedExpertForward(Backend& backend, std::span<const ExpertWeights* const> experts,
                                  const Tensor& rows, std::span<const int64_t> offsets,
                                  const Tensor& scratch_a, const Tensor& scratch_b,
                                  const Tensor& out) {
  SY_ASSIGN_OR_RETURN(const ExpertWeights* first, FirstExpertWithRows(experts, offsets));
  if (first == nullptr) return absl::OkStatus();
  for (const ExpertWeights* e : experts) {
    if (e != nullptr && e->loaded() && e->fused != first->fused) {
      return absl::InvalidArgumentError(
          "GroupedExpertForward: experts mix fused gate_up and separate gate/up weights");
    }
  }
  const int64_t num_rows = rows.dim(0);
  const std::vector<const Tensor*> down = ExpertTensors(experts, &ExpertWeights::down);
  if (first->fused) {
    // Llama 4: gate_up [H, 2I] -> [R, 2I] = [gate | up]; down [I, H].
    const int64_t inter = first->down.dim(0);
    Tensor gate_up = scratch_a.Rows(0, num_rows * 2 * inter).Reshape({num_rows, 2 * inter});
    Tensor act = scratch_b.Rows(0, num_rows * inter).Reshape({num_rows, inter});
    SY_RETURN_IF_ERROR(backend.GroupedMatMul(
        rows, ExpertTensors(experts, &ExpertWeights::gate_up), offsets, gate_up));
    SY_RETURN_IF_ERROR(backend.SiluMulFused(gate_up, act));
    return backend.GroupedMatMul(act, down, offsets, out);
  }
  const int64_t inter = first->gate.dim(0);
  Tensor gate = scratch_a.Rows(0, num_rows * inter).Reshape({num_rows, inter});
  Tensor up = scratch_a.Rows(num_rows * inter, 2 * num_rows * inter).Reshape({num_rows, inter});
  Tensor act = scratch_b.Rows(0, num_rows * inter).Reshape({num_rows, inter});
  SY_RETURN_IF_ERROR(
      backend.GroupedLinear(rows, ExpertTensors(experts, &ExpertWeights::gate), offsets, gate));
  SY_RETURN_IF_ERROR(
      backend.GroupedLinear(rows, ExpertTensors(experts, &ExpertWeights::up), offsets, up));
  SY_RETURN_IF_ERROR(backend.SiluMul(gate, up, act));
  return backend.GroupedLinear(act, down, offsets, out);
}

namespace {

enum ScratchSlot { kSorted, kExpertOut, kScratchA, kScratchB };

class LocalMoeExecutor final : public MoeExecutor {
 public:
  LocalMoeExecutor(const ModelConfig& config, const ModelWeights& weights, Backend& backend)
      : config_(config), weights_(weights), backend_(backend), scratch_(backend),
        experts_by_layer_(weights.layers.size()) {
    // Per MoE layer, each expert's weights (null when not loaded): fixed once loaded.
    for (size_t layer = 0; layer < weights.layers.size(); ++layer) {
      for (const ExpertWeights& expert : weights.layers[layer].experts) {
        experts_by_layer_[layer].push_back(expert.loaded() ? &expert : nullptr);
      }
    }
  }

  absl::Status Run(int64_t layer_idx, const Tensor& x, std::span<const int32_t> topk_ids,
                   std::span<const float> topk_weights, int64_t k, const Tensor& out) override {
    const int64_t num_tokens = x.dim(0), hidden = x.dim(1), num_experts = config_.num_experts;
    const int64_t num_rows = num_tokens * k;
    GroupByExpert(topk_ids, topk_weights, k, num_experts);
    SY_ASSIGN_OR_RETURN(Tensor sorted, scratch_.Get(kSorted, {num_rows, hidden}));
    SY_ASSIGN_OR_RETURN(Tensor expert_out, scratch_.Get(kExpertOut, {num_rows, hidden}));
    const int64_t inter = config_.moe_intermediate_size;
    SY_ASSIGN_OR_RETURN(Tensor a, scratch_.Get(kScratchA, {std::max<int64_t>(num_rows, 1) * 2 * inter}));
    SY_ASSIGN_OR_RETURN(Tensor b, scratch_.Get(kScratchB, {std::max<int64_t>(num_rows, 1) * inter}));
    const bool scale_input = config_.router_scales_input;
    SY_RETURN_IF_ERROR(backend_.GatherRows(x, src_token_, scale_input ? std::span<const float>(row_weight_)
                                                                      : std::span<const float>(), sorted));
    // An expert with rows but no weights (not loaded here) is FAILED_PRECONDITION from there.
    absl::Status computed = GroupedExpertForward(backend_, experts_by_layer_[layer_idx], sorted,
                                                 offsets_, a, b, expert_out);
    if (!computed.ok()) {
      return absl::Status(computed.code(),
                          absl::StrCat("layer ", layer_idx, ": ", computed.message()));
    }
    if (scale_input) {
      if (static_cast<int64_t>(ones_.size()) < num_rows) ones_.assign(num_rows, 1.0f);
      return backend_.CombineRows(expert_out, row_of_,
                                  std::span<const float>(ones_).first(num_rows), k, out);
    }
    return backend_.CombineRows(expert_out, row_of_, topk_weights, k, out);
  }

 private:
  // Counting sort of the (token, j) pairs by expert; stable, so rows of one expert keep token order.
  void GroupByExpert(std::span<const int32_t> topk_ids, std::span<const float> topk_weights,
                     int64_t k, int64_t num_experts) {
    const int64_t num_rows = topk_ids.size();
    offsets_.assign(num_experts + 1, 0);
    for (int32_t e : topk_ids) ++offsets_[e + 1];
    for (int64_t e = 0; e < num_experts; ++e) offsets_[e + 1] += offsets_[e];
    cursor_.assign(offsets_.begin(), offsets_.end() - 1);
    src_token_.resize(num_rows);
    row_weight_.resize(num_rows);
    row_of_.resize(num_rows);
    for (int64_t i = 0; i < num_rows; ++i) {
      const int64_t row = cursor_[topk_ids[i]]++;
      src_token_[row] = static_cast<int32_t>(i / k);
      row_weight_[row] = topk_weights[i];
      row_of_[i] = static_cast<int32_t>(row);
    }
  }

  const ModelConfig& config_;
  const ModelWeights& weights_;
  Backend& backend_;
  ScratchArena scratch_;
  std::vector<int64_t> offsets_, cursor_;
  std::vector<std::vector<const ExpertWeights*>> experts_by_layer_;  // null: not loaded
  std::vector<int32_t> src_token_, row_of_;
  std::vector<float> row_weight_, ones_;
};

}  // namespace

std::unique_ptr<MoeExecutor> MakeLocalMoeExecutor(const ModelConfig& config,
                                                  const ModelWeights& weights, Backend& backend) {
  return std::make_unique<LocalMoeExecutor>(config, weights, backend);
}

}  // namespace switchyard
