// Expert parallelism for the engine: a MoeExecutor that runs each MoE layer's routed experts over
// the data plane (worker/moe/dispatch.h) instead of in-process, plus the helpers that shard the
// weights by placement.
//
// Every rank runs a whole Engine for its own sequences (data-parallel attention, router and shared
// expert) but loads only the routed experts of its placement slots (ShardLoadPredicate). Per MoE
// layer, the executor hands the router's choices to a MoeDispatcher, which sends each token's rows
// to the ranks holding its experts; the grouped expert function runs GroupedExpertForward over the
// local slots on the rows it receives; results come back and are combined in fixed j order, so the
// logits equal the single-process engine's. Every rank must run every MoE layer of every step in
// the same order, a rank without tokens through Engine::ForwardIdle() (each layer is three
// collectives).
//
// Any backend: the rows stay in the backend's memory in its activation dtype, and the dispatcher
// stages the exchanges through the host when a device backend runs over a host communicator
// (see worker/moe/dispatch.h).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/model_config.h"
#include "worker/backend/backend.h"
#include "worker/backend/scratch.h"
#include "worker/comm/communicator.h"
#include "worker/engine.h"
#include "worker/model_weights.h"
#include "worker/moe/dispatch.h"
#include "worker/moe/placement.h"
#include "worker/moe_block.h"

namespace switchyard {

// The layer indices of the config's MoE layers in layer order: the i-th entry is the layer whose
// placement is placements[i] below ("MoE layer ordinal" i).
std::vector<int64_t> MoeLayerIndices(const ModelConfig& config);

// One contiguous placement per MoE layer (LayerPlacement::Contiguous), for `world_size` ranks.
absl::StatusOr<std::vector<LayerPlacement>> ContiguousPlacements(const ModelConfig& config,
                                                                 int32_t world_size);

// Checks that there is one placement per MoE layer, each for config.num_experts experts and
// `world_size` ranks. INVALID_ARGUMENT naming the first mismatch.
absl::Status ValidatePlacements(const ModelConfig& config,
                                const std::vector<LayerPlacement>& placements, int32_t world_size);

// The WeightLoadOptions::load_expert predicate for `rank`: true exactly for the (layer, expert)
// pairs held in one of the rank's slots of that layer's placement (replicas included). The
// placements must have passed ValidatePlacements.
std::function<bool(int64_t, int64_t)> ShardLoadPredicate(
    const ModelConfig& config, const std::vector<LayerPlacement>& placements, int32_t rank);

// Sums of DispatchStats over every Run of the executor (all MoE layers, all steps).
struct ExpertParallelTotals {
  int64_t num_runs = 0;
  int64_t rows_sent = 0;      // routed rows this rank dispatched (to itself included)
  int64_t rows_received = 0;  // rows its local experts processed
  int64_t bytes_sent = 0;     // dispatch direction, to other ranks only
  int64_t bytes_received = 0;
  absl::Duration dispatch_time;
  absl::Duration expert_time;
  absl::Duration combine_time;
};

// The expert-parallel executor of one rank. Owned by the engine it is installed in (keep a raw
// pointer for the stats). Not thread-safe: called by the engine thread; read the stats between
// steps on that thread. Does not own the communicator or the weights, which must outlive it.
class ExpertParallelMoeExecutor final : public MoeExecutor {
 public:
  ExpertParallelMoeExecutor(const ModelConfig& config, const ModelWeights& weights,
                            Backend& backend, Communicator& comm,
                            std::vector<LayerPlacement> placements);

  // Dispatches, runs the local experts and combines (see MoeExecutor). Blocks in three
  // collectives. INVALID_ARGUMENT for a layer that is not MoE or mismatched shapes (the
  // communicator is aborted first, so peers fail fast); otherwise the dispatcher's errors
  // (peer failures: DEADLINE_EXCEEDED, UNAVAILABLE, ABORTED).
  absl::Status Run(int64_t layer_idx, const Tensor& x, std::span<const int32_t> topk_ids,
                   std::span<const float> topk_weights, int64_t k, const Tensor& out) override;

  int32_t rank() const { return rank_; }
  const std::vector<LayerPlacement>& placements() const { return placements_; }
  // The stats of the latest Run of each MoE layer, indexed by MoE layer ordinal.
  const std::vector<DispatchStats>& last_layer_stats() const { return last_stats_; }
  const ExpertParallelTotals& totals() const { return totals_; }
  // Rows each local slot processed over all steps, [MoE layer ordinal][local slot]: the measured
  // per-replica load a rebalancer reads.
  const std::vector<std::vector<int64_t>>& slot_rows() const { return slot_rows_; }

 private:
  // The GroupedExpertFn body: GroupedExpertForward over the local slots of `moe_idx`'s placement.
  absl::Status RunLocalExperts(int64_t moe_idx, const Tensor& rows,
                               std::span<const int64_t> expert_offsets, const Tensor& out_rows);
  absl::Status Fail(absl::Status status);
  void AddToTotals(int64_t moe_idx, const DispatchStats& stats);

  const ModelConfig& config_;
  const ModelWeights& weights_;
  Backend& backend_;
  Communicator& comm_;
  const int32_t rank_;
  std::vector<LayerPlacement> placements_;
  std::vector<int64_t> moe_layers_;        // MoE layer ordinal -> layer index
  std::vector<int64_t> moe_idx_of_layer_;  // layer index -> MoE layer ordinal, -1 for dense
  MoeDispatcher dispatcher_;
  ScratchArena scratch_;
  // Per MoE layer ordinal, the weights of each local slot's expert.
  std::vector<std::vector<const ExpertWeights*>> slot_experts_;
  std::vector<DispatchStats> last_stats_;
  ExpertParallelTotals totals_;
  std::vector<std::vector<int64_t>> slot_rows_;
};

// Builds the executor after checking its inputs: placements valid for comm.world_size(), a
// communicator that can reach the backend's memory (ChooseExchangePath), and every expert of this
// rank's slots loaded in `weights`. INVALID_ARGUMENT or FAILED_PRECONDITION (a host backend with
// a device communicator; an expert of a local slot not loaded) otherwise.
absl::StatusOr<std::unique_ptr<ExpertParallelMoeExecutor>> MakeExpertParallelMoeExecutor(
    const ModelConfig& config, const ModelWeights& weights, Backend& backend, Communicator& comm,
    std::vector<LayerPlacement> placements);

// Builds the executor from the engine's config, weights and backend and installs it in the engine.
// Returns a pointer owned by the engine, for the stats.
absl::StatusOr<ExpertParallelMoeExecutor*> InstallExpertParallel(
    Engine& engine, Communicator& comm, std::vector<LayerPlacement> placements);

}  // namespace switchyard
