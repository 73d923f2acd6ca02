#include "worker/ep_moe_executor.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace switchyard {
namespace {

enum ScratchSlot { kScratchA, kScratchB };

}  // namespace

std::vector<int64_t> MoeLayerIndices(const ModelConfig& config) {
  std::vector<int64_t> layers;
  for (size_t i = 0; i < config.layer_is_moe.size(); ++i) {
    if (config.layer_is_moe[i]) layers.push_back(static_cast<int64_t>(i));
  }
  return layers;
}

absl::StatusOr<std::vector<LayerPlacement>> ContiguousPlacements(const ModelConfig& config,
                                                                 int32_t world_size) {
  std::vector<LayerPlacement> placements;
  for (size_t i = 0; i < MoeLayerIndices(config).size(); ++i) {
    SY_ASSIGN_OR_RETURN(
        LayerPlacement placement,
        LayerPlacement::Contiguous(static_cast<int32_t>(config.num_experts), world_size));
    placements.push_back(std::move(placement));
  }
  return placements;
}

absl::Status ValidatePlacements(const ModelConfig& config,
                                const std::vector<LayerPlacement>& placements, int32_t world_size) {
  const std::vector<int64_t> moe_layers = MoeLayerIndices(config);
  if (placements.size() != moe_layers.size()) {
    return absl::InvalidArgumentError(absl::StrCat("expert parallel: expected one placement per ",
                                                   "MoE layer (", moe_layers.size(), "), found ",
                                                   placements.size()));
  }
  for (size_t i = 0; i < placements.size(); ++i) {
    const LayerPlacement& p = placements[i];
    if (p.num_experts() != config.num_experts || p.world_size() != world_size) {
      return absl::InvalidArgumentError(
          absl::StrCat("expert parallel: placement of layer ", moe_layers[i], " is for ",
                       p.num_experts(), " experts on ", p.world_size(), " ranks, expected ",
                       config.num_experts, " experts on ", world_size, " ranks"));
    }
  }
  return absl::OkStatus();
}

std::function<bool(int64_t, int64_t)> ShardLoadPredicate(
    const ModelConfig& config, const std::vector<LayerPlacement>& placements, int32_t rank) {
  // held[layer][expert], precomputed so the predicate is a lookup.
  std::vector<std::vector<bool>> held(config.num_hidden_layers);
  const std::vector<int64_t> moe_layers = MoeLayerIndices(config);
  for (size_t i = 0; i < moe_layers.size() && i < placements.size(); ++i) {
    std::vector<bool>& layer = held[moe_layers[i]];
    layer.assign(config.num_experts, false);
    for (int32_t slot = 0; slot < placements[i].num_local_slots(rank); ++slot) {
      layer[placements[i].expert_at(rank, slot)] = true;
    }
  }
  return [held = std::move(held)](int64_t layer_idx, int64_t expert_idx) {
    if (layer_idx < 0 || layer_idx >= static_cast<int64_t>(held.size())) return false;
    const std::vector<bool>& layer = held[layer_idx];
    return expert_idx >= 0 && expert_idx < static_cast<int64_t>(layer.size()) && layer[expert_idx];
  };
}

ExpertParallelMoeExecutor::ExpertParallelMoeExecutor(const ModelConfig& config,
                                                     const ModelWeights& weights, Backend& backend,
                                                     Communicator& comm,
                                                     std::vector<LayerPlacement> placements)
    : config_(config),
      weights_(weights),
      backend_(backend),
      comm_(comm),
      rank_(comm.rank()),
      placements_(std::move(placements)),
      moe_layers_(MoeLayerIndices(config)),
      moe_idx_of_layer_(config.num_hidden_layers, -1),
      dispatcher_(&comm, &backend,
                  DispatchOptions{.scale_input_by_weight = config.router_scales_input}),
      scratch_(backend),
      last_stats_(placements_.size()) {
  for (size_t i = 0; i < moe_layers_.size(); ++i) {
    moe_idx_of_layer_[moe_layers_[i]] = static_cast<int64_t>(i);
    const LayerPlacement& placement = placements_[i];
    const LayerWeights& layer = weights_.layers[moe_layers_[i]];
    // Null for an expert not loaded here (MakeExpertParallelMoeExecutor checked that none is).
    std::vector<const ExpertWeights*>& experts = slot_experts_.emplace_back();
    for (int32_t slot = 0; slot < placement.num_local_slots(rank_); ++slot) {
      const ExpertWeights& expert = layer.experts[placement.expert_at(rank_, slot)];
      experts.push_back(expert.loaded() ? &expert : nullptr);
    }
    slot_rows_.emplace_back(placement.num_local_slots(rank_), 0);
  }
}

absl::Status ExpertParallelMoeExecutor::Fail(absl::Status status) {
  // The peers are (or will be) inside this layer's collectives: break the group so they fail now.
  comm_.Abort(status.ToString());
  return status;
}

absl::Status ExpertParallelMoeExecutor::Run(int64_t layer_idx, const Tensor& x,
                                            std::span<const int32_t> topk_ids,
                                            std::span<const float> topk_weights, int64_t k,
                                            const Tensor& out) {
  if (layer_idx < 0 || layer_idx >= static_cast<int64_t>(moe_idx_of_layer_.size()) ||
      moe_idx_of_layer_[layer_idx] < 0) {
    return Fail(absl::InvalidArgumentError(
        absl::StrCat("expert parallel rank ", rank_, " layer ", layer_idx, ": not a MoE layer")));
  }
  if (x.rank() != 2 || x.dim(1) != config_.hidden_size || x.dtype() != backend_.activation_dtype()) {
    return Fail(absl::InvalidArgumentError(absl::StrCat(
        "expert parallel rank ", rank_, " layer ", layer_idx, ": expected x [T, ",
        config_.hidden_size, "] ", std::string(DTypeName(backend_.activation_dtype())), ", found ",
        x.ShapeString(), " ", std::string(DTypeName(x.dtype())))));
  }
  const int64_t moe_idx = moe_idx_of_layer_[layer_idx];
  const GroupedExpertFn experts = [this, moe_idx](const Tensor& rows,
                                                  std::span<const int64_t> offsets,
                                                  const Tensor& out_rows) {
    return RunLocalExperts(moe_idx, rows, offsets, out_rows);
  };
  // The dispatcher checks the rest (out, the routing) and aborts the group on any failure.
  DispatchStats& stats = last_stats_[moe_idx];
  absl::Status status =
      dispatcher_.Run(placements_[moe_idx], x, topk_ids, topk_weights, k, experts, out, &stats);
  // Whatever failed, this rank leaves the layer early: make sure the group knows (idempotent).
  if (!status.ok()) {
    return Fail(absl::Status(status.code(), absl::StrCat("expert parallel rank ", rank_, " layer ",
                                                         layer_idx, ": ", status.message())));
  }
  AddToTotals(moe_idx, stats);
  return absl::OkStatus();
}

absl::Status ExpertParallelMoeExecutor::RunLocalExperts(int64_t moe_idx, const Tensor& rows,
                                                        std::span<const int64_t> expert_offsets,
                                                        const Tensor& out_rows) {
  const int64_t num_rows = rows.dim(0);
  if (num_rows == 0) return absl::OkStatus();
  const int64_t inter = config_.moe_intermediate_size;
  SY_ASSIGN_OR_RETURN(Tensor a, scratch_.Get(kScratchA, {num_rows * 2 * inter}));
  SY_ASSIGN_OR_RETURN(Tensor b, scratch_.Get(kScratchB, {num_rows * inter}));
  return GroupedExpertForward(backend_, slot_experts_[moe_idx], rows, expert_offsets, a, b,
                              out_rows);
}

void ExpertParallelMoeExecutor::AddToTotals(int64_t moe_idx, const DispatchStats& stats) {
  ++totals_.num_runs;
  for (size_t slot = 0; slot < stats.rows_per_local_slot.size(); ++slot) {
    slot_rows_[moe_idx][slot] += stats.rows_per_local_slot[slot];
  }
  for (size_t peer = 0; peer < stats.rows_sent_per_peer.size(); ++peer) {
    totals_.rows_sent += stats.rows_sent_per_peer[peer];
    totals_.rows_received += stats.rows_received_per_peer[peer];
    if (static_cast<int32_t>(peer) == rank_) continue;
    totals_.bytes_sent += stats.bytes_sent_per_peer[peer];
    totals_.bytes_received += stats.bytes_received_per_peer[peer];
  }
  totals_.dispatch_time += stats.dispatch_time;
  totals_.expert_time += stats.expert_time;
  totals_.combine_time += stats.combine_time;
}

absl::StatusOr<std::unique_ptr<ExpertParallelMoeExecutor>> MakeExpertParallelMoeExecutor(
    const ModelConfig& config, const ModelWeights& weights, Backend& backend, Communicator& comm,
    std::vector<LayerPlacement> placements) {
  SY_RETURN_IF_ERROR(ValidatePlacements(config, placements, comm.world_size()));
  SY_RETURN_IF_ERROR(ChooseExchangePath(backend, comm).status());
  const std::vector<int64_t> moe_layers = MoeLayerIndices(config);
  if (weights.layers.size() != static_cast<size_t>(config.num_hidden_layers)) {
    return absl::InvalidArgumentError(absl::StrCat("expert parallel: weights have ",
                                                   weights.layers.size(), " layers, config ",
                                                   config.num_hidden_layers));
  }
  for (size_t i = 0; i < moe_layers.size(); ++i) {
    const std::vector<ExpertWeights>& experts = weights.layers[moe_layers[i]].experts;
    for (int32_t slot = 0; slot < placements[i].num_local_slots(comm.rank()); ++slot) {
      const int32_t expert_idx = placements[i].expert_at(comm.rank(), slot);
      if (expert_idx >= static_cast<int32_t>(experts.size()) || !experts[expert_idx].loaded()) {
        return absl::FailedPreconditionError(absl::StrCat(
            "expert parallel rank ", comm.rank(), ": layer ", moe_layers[i], " slot ", slot,
            " holds expert ", expert_idx, " whose weights were not loaded (load with ",
            "ShardLoadPredicate of the same placements)"));
      }
    }
  }
  return std::make_unique<ExpertParallelMoeExecutor>(config, weights, backend, comm,
                                                     std::move(placements));
}

absl::StatusOr<ExpertParallelMoeExecutor*> InstallExpertParallel(
    Engine& engine, Communicator& comm, std::vector<LayerPlacement> placements) {
  SY_ASSIGN_OR_RETURN(std::unique_ptr<ExpertParallelMoeExecutor> executor,
                      MakeExpertParallelMoeExecutor(engine.config(), engine.weights(),
                                                    engine.backend(), comm, std::move(placements)));
  ExpertParallelMoeExecutor* raw = executor.get();
  engine.SetMoeExecutor(std::move(executor));
  return raw;
}

}  // namespace switchyard
