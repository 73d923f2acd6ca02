#include "worker/moe/placement.h"

#include <algorithm>
#include <numeric>
#include <queue>
#include <tuple>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace switchyard {

absl::StatusOr<LayerPlacement> LayerPlacement::Create(
    int64_t version, int32_t num_experts, std::vector<std::vector<int32_t>> rank_slots) {
  if (rank_slots.empty()) {
    return absl::InvalidArgumentError("placement: world size must be >= 1, got 0 ranks");
  }
  if (num_experts < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("placement: num_experts must be >= 1, got ", num_experts));
  }
  std::vector<int32_t> num_replicas(num_experts, 0);
  for (size_t rank = 0; rank < rank_slots.size(); ++rank) {
    std::vector<bool> held(num_experts, false);
    for (size_t slot = 0; slot < rank_slots[rank].size(); ++slot) {
      const int32_t expert = rank_slots[rank][slot];
      if (expert < 0 || expert >= num_experts) {
        return absl::InvalidArgumentError(
            absl::StrCat("placement: rank ", rank, " slot ", slot, " holds expert ", expert,
                         ", expected an expert id in [0, ", num_experts, ")"));
      }
      if (held[expert]) {
        return absl::InvalidArgumentError(absl::StrCat("placement: rank ", rank, " holds expert ",
                                                       expert, " twice (slot ", slot, ")"));
      }
      held[expert] = true;
      ++num_replicas[expert];
    }
  }
  for (int32_t expert = 0; expert < num_experts; ++expert) {
    if (num_replicas[expert] == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("placement: expert ", expert, " of ", num_experts, " has no slot on any of ",
                       rank_slots.size(), " ranks; every expert needs at least one"));
    }
  }
  LayerPlacement placement;
  placement.version_ = version;
  placement.num_experts_ = num_experts;
  placement.rank_slots_ = std::move(rank_slots);
  placement.replica_offsets_.assign(num_experts + 1, 0);
  for (int32_t expert = 0; expert < num_experts; ++expert) {
    placement.replica_offsets_[expert + 1] =
        placement.replica_offsets_[expert] + num_replicas[expert];
  }
  placement.replicas_.resize(placement.replica_offsets_[num_experts]);
  std::vector<int32_t> fill(placement.replica_offsets_.begin(),
                            placement.replica_offsets_.end() - 1);
  for (int32_t rank = 0; rank < placement.world_size(); ++rank) {
    const auto& slots = placement.rank_slots_[rank];
    placement.max_local_slots_ =
        std::max(placement.max_local_slots_, static_cast<int32_t>(slots.size()));
    for (int32_t slot = 0; slot < static_cast<int32_t>(slots.size()); ++slot) {
      placement.replicas_[fill[slots[slot]]++] = PhysicalSlot{rank, slot};
    }
  }
  return placement;
}

absl::StatusOr<LayerPlacement> LayerPlacement::Contiguous(int32_t num_experts, int32_t world_size,
                                                          int64_t version) {
  if (world_size < 1 || num_experts < 1) {
    return absl::InvalidArgumentError(absl::StrCat("placement: need >= 1 expert and rank, got ",
                                                   num_experts, " experts, ", world_size,
                                                   " ranks"));
  }
  const int32_t base = num_experts / world_size;
  const int32_t remainder = num_experts % world_size;
  std::vector<std::vector<int32_t>> rank_slots(world_size);
  int32_t expert = 0;
  for (int32_t rank = 0; rank < world_size; ++rank) {
    const int32_t count = base + (rank < remainder ? 1 : 0);
    for (int32_t i = 0; i < count; ++i) rank_slots[rank].push_back(expert++);
  }
  return Create(version, num_experts, std::move(rank_slots));
}

namespace {

// Step 1 of the balancer: replica counts, one extra at a time to the highest load per replica,
// never more replicas than ranks (a rank holds an expert at most once).
std::vector<int32_t> ReplicateHottest(const std::vector<double>& loads, int64_t num_extra,
                                      int32_t world_size) {
  std::vector<int32_t> counts(loads.size(), 1);
  // (load per replica, -expert) so that ties go to the lower expert id.
  std::priority_queue<std::pair<double, int32_t>> heap;
  for (int32_t expert = 0; expert < static_cast<int32_t>(loads.size()); ++expert) {
    if (world_size > 1) heap.push({loads[expert], -expert});
  }
  for (int64_t i = 0; i < num_extra && !heap.empty(); ++i) {
    const int32_t expert = -heap.top().second;
    heap.pop();
    ++counts[expert];
    if (counts[expert] < world_size) heap.push({loads[expert] / counts[expert], -expert});
  }
  return counts;
}

// The packing state of the balancer: per rank, the experts placed and their per-replica loads.
struct Packing {
  std::vector<std::vector<int32_t>> experts;
  std::vector<std::vector<double>> loads;
  std::vector<double> rank_load;
  std::vector<int64_t> capacity;

  bool Holds(int32_t rank, int32_t expert) const {
    return std::find(experts[rank].begin(), experts[rank].end(), expert) != experts[rank].end();
  }
  bool Full(int32_t rank) const {
    return static_cast<int64_t>(experts[rank].size()) >= capacity[rank];
  }
  void Put(int32_t rank, int32_t expert, double load) {
    experts[rank].push_back(expert);
    loads[rank].push_back(load);
    rank_load[rank] += load;
  }
  // The least loaded rank with a free slot, among those not holding `expert` when `distinct`.
  int32_t LeastLoaded(int32_t expert, bool distinct) const {
    int32_t best = -1;
    for (int32_t rank = 0; rank < static_cast<int32_t>(experts.size()); ++rank) {
      if (Full(rank) || (distinct && Holds(rank, expert))) continue;
      if (best < 0 || rank_load[rank] < rank_load[best]) best = rank;
    }
    return best;
  }
  // Every rank with a free slot holds `expert`: move some replica that `free_rank` lacks from a
  // full rank without `expert` to `free_rank`, and put `expert` in its place. Such a replica
  // exists: capacities differ by at most one, so the full rank cannot hold a subset of free_rank's.
  void PlaceBySwap(int32_t free_rank, int32_t expert, double load) {
    for (int32_t rank = 0; rank < static_cast<int32_t>(experts.size()); ++rank) {
      if (Holds(rank, expert)) continue;
      for (size_t slot = 0; slot < experts[rank].size(); ++slot) {
        const int32_t moved = experts[rank][slot];
        if (Holds(free_rank, moved)) continue;
        const double moved_load = loads[rank][slot];
        Put(free_rank, moved, moved_load);
        experts[rank][slot] = expert;
        loads[rank][slot] = load;
        rank_load[rank] += load - moved_load;
        return;
      }
    }
  }
};

}  // namespace

absl::StatusOr<LayerPlacement> LayerPlacement::Balanced(int32_t num_experts, int32_t world_size,
                                                        int32_t num_redundant_slots_per_rank,
                                                        absl::Span<const double> expert_loads,
                                                        int64_t version) {
  if (world_size < 1 || num_experts < 1 || num_redundant_slots_per_rank < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "placement: need >= 1 expert and rank and >= 0 redundant slots, got ", num_experts,
        " experts, ", world_size, " ranks, ", num_redundant_slots_per_rank, " redundant slots"));
  }
  std::vector<double> loads(num_experts, 1.0);
  if (!expert_loads.empty()) {
    if (static_cast<int32_t>(expert_loads.size()) != num_experts) {
      return absl::InvalidArgumentError(absl::StrCat(
          "placement: ", expert_loads.size(), " expert loads for ", num_experts, " experts"));
    }
    for (int32_t expert = 0; expert < num_experts; ++expert) {
      if (!(expert_loads[expert] >= 0)) {
        return absl::InvalidArgumentError(absl::StrCat("placement: expert ", expert, " has load ",
                                                       expert_loads[expert], ", expected >= 0"));
      }
      loads[expert] = expert_loads[expert];
    }
  }
  const int64_t num_extra = static_cast<int64_t>(world_size) * num_redundant_slots_per_rank;
  // An expert never gets more replicas than there are ranks (a rank holds each expert once).
  const int64_t max_extra = static_cast<int64_t>(num_experts) * (world_size - 1);
  if (num_extra > max_extra) {
    return absl::InvalidArgumentError(absl::StrCat(
        "placement: ", num_redundant_slots_per_rank, " redundant slots per rank on ", world_size,
        " ranks exceed what ", num_experts, " experts can fill (at most one replica per rank)"));
  }
  const std::vector<int32_t> counts = ReplicateHottest(loads, num_extra, world_size);

  // Replicas in placement order: per-replica load descending, then expert id.
  struct Replica {
    double load;
    int32_t expert;
  };
  std::vector<Replica> replicas;
  for (int32_t expert = 0; expert < num_experts; ++expert) {
    for (int32_t i = 0; i < counts[expert]; ++i) {
      replicas.push_back({loads[expert] / counts[expert], expert});
    }
  }
  std::stable_sort(replicas.begin(), replicas.end(),
                   [](const Replica& a, const Replica& b) { return a.load > b.load; });

  const int64_t num_slots = static_cast<int64_t>(replicas.size());
  Packing packing;
  packing.experts.resize(world_size);
  packing.loads.resize(world_size);
  packing.rank_load.assign(world_size, 0.0);
  packing.capacity.assign(world_size, num_slots / world_size);
  for (int32_t rank = 0; rank < num_slots % world_size; ++rank) ++packing.capacity[rank];
  for (const Replica& replica : replicas) {
    const int32_t rank = packing.LeastLoaded(replica.expert, /*distinct=*/true);
    if (rank >= 0) {
      packing.Put(rank, replica.expert, replica.load);
    } else {
      packing.PlaceBySwap(packing.LeastLoaded(replica.expert, /*distinct=*/false), replica.expert,
                          replica.load);
    }
  }
  std::vector<std::vector<int32_t>> rank_slots = std::move(packing.experts);
  for (auto& slots : rank_slots) std::sort(slots.begin(), slots.end());
  return Create(version, num_experts, std::move(rank_slots));
}

std::vector<double> LayerPlacement::RankLoads(absl::Span<const double> expert_loads) const {
  std::vector<double> rank_loads(world_size(), 0.0);
  for (int32_t expert = 0; expert < num_experts_; ++expert) {
    const double load = expert_loads.empty() ? 1.0 : expert_loads[expert];
    for (const PhysicalSlot& slot : replicas(expert)) {
      rank_loads[slot.rank] += load / num_replicas(expert);
    }
  }
  return rank_loads;
}

void ReplicaChooser::Reset(const LayerPlacement& placement, int32_t source_rank) {
  source_rank_ = source_rank;
  rows_per_expert_.assign(placement.num_experts(), 0);
}

std::string LayerPlacement::ToString() const {
  std::string text = absl::StrCat("v", version_, " e", num_experts_, " w", world_size());
  for (const auto& slots : rank_slots_) absl::StrAppend(&text, " | ", absl::StrJoin(slots, ","));
  return text;
}

namespace {

// Parses "<prefix><integer>", e.g. "v12".
template <typename Int>
absl::Status ParseTagged(absl::string_view token, char prefix, Int* value,
                         const std::string& text) {
  if (token.empty() || token[0] != prefix || !absl::SimpleAtoi(token.substr(1), value)) {
    return absl::InvalidArgumentError(absl::StrCat("placement text '", text, "': expected '",
                                                   std::string(1, prefix), "<integer>', found '",
                                                   std::string(token), "'"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<LayerPlacement> LayerPlacement::FromString(const std::string& text) {
  std::vector<absl::string_view> parts = absl::StrSplit(text, '|');
  std::vector<absl::string_view> header = absl::StrSplit(parts[0], ' ', absl::SkipWhitespace());
  if (header.size() != 3) {
    return absl::InvalidArgumentError(absl::StrCat(
        "placement text '", text, "': expected a header 'v<version> e<experts> w<ranks>'"));
  }
  int64_t version = 0;
  int32_t num_experts = 0, world_size = 0;
  SY_RETURN_IF_ERROR(ParseTagged(header[0], 'v', &version, text));
  SY_RETURN_IF_ERROR(ParseTagged(header[1], 'e', &num_experts, text));
  SY_RETURN_IF_ERROR(ParseTagged(header[2], 'w', &world_size, text));
  if (static_cast<int64_t>(parts.size()) - 1 != world_size) {
    return absl::InvalidArgumentError(absl::StrCat("placement text '", text, "': header says ",
                                                   world_size, " ranks, found ", parts.size() - 1,
                                                   " rank sections"));
  }
  std::vector<std::vector<int32_t>> rank_slots(world_size);
  for (int32_t rank = 0; rank < world_size; ++rank) {
    for (absl::string_view item : absl::StrSplit(parts[rank + 1], ',', absl::SkipWhitespace())) {
      int32_t expert = 0;
      if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(item), &expert)) {
        return absl::InvalidArgumentError(absl::StrCat("placement text '", text, "': rank ", rank,
                                                       " has a non-integer expert '",
                                                       std::string(item), "'"));
      }
      rank_slots[rank].push_back(expert);
    }
  }
  return Create(version, num_experts, std::move(rank_slots));
}

std::string LayerPlacement::ToJson() const {
  nlohmann::json json = {{"version", version_},
                         {"num_experts", num_experts_},
                         {"world_size", world_size()},
                         {"ranks", rank_slots_}};
  return json.dump();
}

absl::StatusOr<LayerPlacement> LayerPlacement::FromJson(const std::string& text) {
  try {
    const nlohmann::json json = nlohmann::json::parse(text);
    auto rank_slots = json.at("ranks").get<std::vector<std::vector<int32_t>>>();
    const int32_t world_size = json.at("world_size").get<int32_t>();
    if (static_cast<int32_t>(rank_slots.size()) != world_size) {
      return absl::InvalidArgumentError(absl::StrCat("placement json: world_size ", world_size,
                                                     " but ", rank_slots.size(), " rank lists"));
    }
    return Create(json.at("version").get<int64_t>(), json.at("num_experts").get<int32_t>(),
                  std::move(rank_slots));
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("placement json: ", e.what()));
  }
}

}  // namespace switchyard
