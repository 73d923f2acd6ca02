// Expert placement: which rank holds which experts of one MoE layer (DESIGN.md §4).
//
// Each logical expert maps to one or more physical slots (rank, local_slot). A rank's slots are
// numbered densely from 0 and hold the experts in the order the rank runs them (the grouped expert
// call sees rows sorted by local slot). A placement is immutable and carries a version; a new
// version replaces it between steps (online rebalancing comes later).
//
// Builders:
//  - Contiguous: experts in contiguous shards over the ranks. With E experts and W ranks, the
//    first E % W ranks hold ceil(E/W) experts and the rest floor(E/W) (rank r starts at
//    r*floor(E/W) + min(r, E%W)); when E < W the last W-E ranks hold none.
//  - Balanced (EPLB-style redundant experts): each rank gets `num_redundant_slots_per_rank` extra
//    slots; given predicted per-expert loads, replicas go to the hottest experts and replicas are
//    packed so that the predicted load per rank evens out. Algorithm (greedy, deterministic):
//      1. every expert gets one replica; each of the W*R extra replicas goes, one at a time, to the
//         expert with the largest load per replica (ties: lower expert id), up to W replicas each;
//      2. per-rank slot capacities: E + W*R slots split as evenly as possible (first ranks get
//         the remainder);
//      3. replicas sorted by per-replica load (load / replica count) descending (ties: expert id,
//         then replica idx) are placed one at a time on the rank with the lowest load so far that
//         has a free slot and does not hold that expert yet (ties: lower rank); if every rank with
//         a free slot holds it already, a full rank without it hands one of its replicas to the
//         least loaded rank with a free slot and takes this one instead (always possible, since
//         slot capacities differ by at most one);
//      4. each rank's slots are sorted by expert id (dense local slot indices).
//
// Token -> replica: a source rank sends the i-th (in token order) of its rows routed to expert e
// to replica (i + source_rank) % num_replicas(e): deterministic, and each rank spreads its rows
// evenly over the replicas (ReplicaChooser below). The result never depends on the replica: all
// replicas hold the same weights and the combine order is fixed.
//
// Text form (for `switchyard status`, logs, flags), one line:
//   v<version> e<num_experts> w<world_size> | <rank 0 slots> | <rank 1 slots> | ...
// where <rank r slots> lists the logical expert of each local slot in slot order, comma-separated
// (empty for a rank with no slots). Example, 4 experts on 2 ranks with expert 0 replicated:
//   v3 e4 w2 | 0,1,2 | 3,0
// JSON form: {"version":3,"num_experts":4,"world_size":2,"ranks":[[0,1,2],[3,0]]}.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace switchyard {

struct PhysicalSlot {
  int32_t rank = 0;
  int32_t local_slot = 0;
  bool operator==(const PhysicalSlot& other) const {
    return rank == other.rank && local_slot == other.local_slot;
  }
};

// The placement of one MoE layer. Immutable value type; thread-safe to read from many threads.
class LayerPlacement {
 public:
  // rank_slots[r][s] is the logical expert held in local slot s of rank r. Validates: world size
  // >= 1, every expert id in [0, num_experts), every expert held at least once, no rank holding the
  // same expert twice. INVALID_ARGUMENT naming the first problem otherwise.
  static absl::StatusOr<LayerPlacement> Create(int64_t version, int32_t num_experts,
                                               std::vector<std::vector<int32_t>> rank_slots);

  // Equal contiguous shards (see the file comment for how the remainder is spread).
  static absl::StatusOr<LayerPlacement> Contiguous(int32_t num_experts, int32_t world_size,
                                                   int64_t version = 0);

  // EPLB-style placement with `num_redundant_slots_per_rank` extra slots per rank, balanced for
  // `expert_loads` (num_experts non-negative numbers, e.g. token counts; empty = uniform).
  static absl::StatusOr<LayerPlacement> Balanced(int32_t num_experts, int32_t world_size,
                                                 int32_t num_redundant_slots_per_rank,
                                                 absl::Span<const double> expert_loads,
                                                 int64_t version = 0);

  int64_t version() const { return version_; }
  int32_t num_experts() const { return num_experts_; }
  int32_t world_size() const { return static_cast<int32_t>(rank_slots_.size()); }
  int32_t num_local_slots(int32_t rank) const {
    return static_cast<int32_t>(rank_slots_[rank].size());
  }
  int32_t max_local_slots() const { return max_local_slots_; }
  // The logical expert in `local_slot` of `rank`.
  int32_t expert_at(int32_t rank, int32_t local_slot) const {
    return rank_slots_[rank][local_slot];
  }
  const std::vector<std::vector<int32_t>>& rank_slots() const { return rank_slots_; }
  // The physical replicas of `expert`, ordered by (rank, local_slot).
  absl::Span<const PhysicalSlot> replicas(int32_t expert) const {
    return absl::MakeConstSpan(replicas_.data() + replica_offsets_[expert],
                               replicas_.data() + replica_offsets_[expert + 1]);
  }
  int32_t num_replicas(int32_t expert) const {
    return replica_offsets_[expert + 1] - replica_offsets_[expert];
  }

  // Predicted load per rank: each expert's load split evenly over its replicas (as the replica
  // chooser does). For tests, metrics and the balancer's own checks.
  std::vector<double> RankLoads(absl::Span<const double> expert_loads) const;

  std::string ToString() const;
  static absl::StatusOr<LayerPlacement> FromString(const std::string& text);
  std::string ToJson() const;
  static absl::StatusOr<LayerPlacement> FromJson(const std::string& json);

 private:
  LayerPlacement() = default;

  int64_t version_ = 0;
  int32_t num_experts_ = 0;
  int32_t max_local_slots_ = 0;
  std::vector<std::vector<int32_t>> rank_slots_;
  std::vector<int32_t> replica_offsets_;  // num_experts + 1 entries into replicas_
  std::vector<PhysicalSlot> replicas_;
};

// Picks a replica per routed row on one source rank: the i-th row routed to expert e (in the order
// Choose is called) goes to replica (i + source_rank) % num_replicas(e). Reset() before each batch.
// Not thread-safe; one per dispatcher.
class ReplicaChooser {
 public:
  void Reset(const LayerPlacement& placement, int32_t source_rank);
  PhysicalSlot Choose(const LayerPlacement& placement, int32_t expert) {
    const int32_t num_replicas = placement.num_replicas(expert);
    const int64_t replica_idx =
        num_replicas == 1 ? 0 : (rows_per_expert_[expert]++ + source_rank_) % num_replicas;
    return placement.replicas(expert)[replica_idx];
  }

 private:
  int32_t source_rank_ = 0;
  std::vector<int64_t> rows_per_expert_;
};

}  // namespace switchyard
