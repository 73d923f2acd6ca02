// MoE dispatch and combine over a Communicator (DESIGN.md §3): send each token's row once to every
// rank that holds one of its chosen experts, run the local experts once on rows grouped by local
// slot, send the per-choice results back and sum them in a fixed order.
//
// Layout (row buffers are byte buffers of `row_bytes` per row; fp32 today, so row_bytes =
// hidden * 4; bf16 or a device buffer only change row_bytes and where the buffers live):
//  1. Route: for each routed choice (token t, choice j) in (t, j) order, the ReplicaChooser picks a
//     physical slot (rank r, local slot s) of expert topk_ids[t, j]. Each choice becomes an entry
//     {row, s, topk_weights[t, j]} in r's entry list (in (t, j) order), where row indexes the
//     token rows going to r: a token sends its row to a rank ONCE however many of its choices live
//     there (DeepEP-style deduplication). Choices on this rank are entries too, with row = t: their
//     rows are read from x in place, never copied into a send buffer.
//  2. Count exchange: one all-to-all-v of int64s: to each rank r, the number of token rows and the
//     number of entries per r-local slot (num_local_slots(r) + 1 values, sizes known to both sides
//     from the placement).
//  3. Dispatch: one all-to-all-v whose region for peer r is [r's token rows, in token order][r's
//     entries, kDispatchEntryBytes each], packed straight from x (no self region).
//  4. Expand: each entry's row is copied into the expert input at its slot's next position (scaled
//     by the entry's weight under scale_input_by_weight), slot-major, then by source rank, then the
//     source's (t, j) order; expert_offsets[s] is where slot s starts (num_local_slots + 1 values).
//  5. Experts: one call of the grouped expert function, even with zero rows.
//  6. Return: one all-to-all-v of one output row per entry, in each source's entry order (the
//     per-choice rows, so that the combine below keeps its exact order); results for this rank's
//     own choices are read from the expert output in place.
//  7. Combine: out[t] = sum over j = 0..k-1, accumulated in that order starting from zero, of
//     topk_weights[t, j] * y(t, j), so the result does not depend on the number of ranks or on
//     which replica ran a row (the same additions in the same order). With scale_input_by_weight
//     (Llama 4) the expert input is x[t] * topk_weights[t, j] and the outputs are summed
//     unweighted, in the same order. Opt-in (DispatchOptions::sum_per_rank): each rank returns ONE
//     row per token row it received, the sum of that token's local choices in j order, and the
//     source adds the ranks' partial sums in the order of each rank's first choice. That cuts the
//     return traffic like the dispatch's, but regroups the sum by rank, so results then change with
//     the placement and the number of ranks by float reassociation.
// Every rank must call Run for every MoE layer, even with zero tokens, since each call runs three
// all-to-all-v collectives on the whole group (counts, rows out, rows back).
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "worker/comm/communicator.h"
#include "worker/moe/placement.h"

namespace switchyard {

// Runs this rank's local experts on rows sorted by local expert slot: rows [expert_offsets[s],
// expert_offsets[s + 1]) belong to local slot s; expert_offsets has num_local_slots + 1 entries.
// Writes one output row of `hidden` floats per input row to out_rows (same order).
using GroupedExpertFn =
    std::function<absl::Status(const float* rows, const int64_t* expert_offsets,
                               int64_t num_local_slots, int64_t hidden, float* out_rows)>;

struct DispatchOptions {
  // Llama 4: multiply the expert input by the routing weight and sum the outputs unweighted.
  bool scale_input_by_weight = false;
  // Return one partial sum per (token, rank) instead of one row per choice (see step 7 above):
  // less traffic, but the combine is no longer in exact j order across ranks.
  bool sum_per_rank = false;
};

// Wire size of one dispatch entry: int32 token row, int32 local slot, fp32 routing weight.
inline constexpr int64_t kDispatchEntryBytes = 12;

// What one Run moved and how long it took; for metrics. Per-peer vectors have world_size entries.
struct DispatchStats {
  // Logical traffic, dispatch direction: routed (t, j) choices and rows * row_bytes, as if every
  // choice travelled on its own (the self entry counts choices on local slots). The combine moves
  // the same rows back.
  std::vector<int64_t> rows_sent_per_peer;
  std::vector<int64_t> rows_received_per_peer;
  std::vector<int64_t> bytes_sent_per_peer;
  std::vector<int64_t> bytes_received_per_peer;
  // Actual traffic: token rows sent once per (token, rank), and the bytes each exchange moved
  // (dispatch: token rows + entries; combine: one result row per choice, or per token row with
  // sum_per_rank). Self entries are 0: local rows are read in place.
  std::vector<int64_t> token_rows_sent_per_peer;
  std::vector<int64_t> token_rows_received_per_peer;
  std::vector<int64_t> dispatch_bytes_sent_per_peer;
  std::vector<int64_t> dispatch_bytes_received_per_peer;
  std::vector<int64_t> combine_bytes_sent_per_peer;
  std::vector<int64_t> combine_bytes_received_per_peer;
  // Rows each local slot processed (the per-expert load the balancer will read).
  std::vector<int64_t> rows_per_local_slot;
  absl::Duration dispatch_time;  // routing, count exchange, row exchange, expansion
  absl::Duration expert_time;    // the grouped expert call
  absl::Duration combine_time;   // return packing, return exchange, weighted sum
};

// Dispatch + combine for one rank. Keeps its buffers across calls, so a warm dispatcher does not
// allocate for batches no larger than earlier ones. Not thread-safe: one per engine thread. Does
// not own the communicator, which must outlive it.
class MoeDispatcher {
 public:
  explicit MoeDispatcher(Communicator* comm, DispatchOptions options = {});

  // x: [num_tokens, hidden]; topk_ids, topk_weights: [num_tokens, k] (logical experts); out:
  // [num_tokens, hidden], overwritten. stats may be null. INVALID_ARGUMENT for bad shapes or expert
  // ids (the communicator is aborted first, so the peers fail fast instead of waiting); the
  // communicator's errors as they come; the expert function's error (communicator aborted too);
  // INTERNAL (aborted too) for a malformed entry from a peer.
  absl::Status Run(const LayerPlacement& placement, const float* x, int64_t num_tokens,
                   int64_t hidden, const int32_t* topk_ids, const float* topk_weights, int64_t k,
                   const GroupedExpertFn& experts, float* out, DispatchStats* stats);

  // One routed choice as it travels (kDispatchEntryBytes bytes, host byte order).
  struct Entry {
    int32_t row;   // token row in the source's region for this rank (the token itself when local)
    int32_t slot;  // destination local slot
    float weight;  // topk_weights[t, j]
  };

 private:
  absl::Status Validate(const LayerPlacement& placement, const float* x, int64_t num_tokens,
                        int64_t hidden, const int32_t* topk_ids, const float* topk_weights,
                        int64_t k, const float* out) const;
  void Route(const LayerPlacement& placement, int64_t num_tokens, int64_t k,
             const int32_t* topk_ids, const float* topk_weights);
  absl::Status ExchangeCounts(const LayerPlacement& placement);
  absl::Status ExchangeRows(const float* x, int64_t hidden);
  absl::Status Expand(const float* x, int64_t num_tokens, int64_t hidden);
  absl::Status ReturnRows(int64_t hidden);
  void PackPartialSums(int32_t peer, int64_t hidden, char* region) const;
  void Combine(int64_t num_tokens, int64_t hidden, int64_t k, const float* topk_weights,
               float* out);
  void FillStats(int64_t row_bytes, DispatchStats* stats) const;
  absl::Status AbortWith(absl::Status status);

  Communicator* comm_;
  const DispatchOptions options_;
  ReplicaChooser chooser_;
  int32_t my_num_slots_ = 0;
  // Routing, per destination rank r.
  std::vector<std::vector<Entry>> entries_to_;       // r's entries, (t, j) order
  std::vector<std::vector<int32_t>> token_rows_to_;  // tokens whose row goes to r (r != me)
  std::vector<int64_t> last_token_to_;               // scratch for deduplication
  std::vector<int64_t> count_send_offsets_;          // world_size + 1, into count_send_
  std::vector<int64_t> count_send_;                  // per r: [token rows, entries per slot...]
  std::vector<int32_t> routed_rank_;                 // per (t, j): destination rank
  std::vector<int32_t> routed_entry_;                // per (t, j): index in entries_to_[rank]
  // Received, per source rank p: [token rows, entries per local slot...] (my_num_slots_ + 1 each).
  std::vector<int64_t> count_recv_;
  std::vector<int64_t> entries_from_;           // per p: entries received (own entries for p = me)
  std::vector<int64_t> entry_pos_offsets_;      // world_size + 1, into entry_pos_
  std::vector<int64_t> entry_pos_;              // per (p, entry): its row in the expert buffers
  std::vector<int64_t> expert_offsets_;         // my_num_slots_ + 1
  std::vector<int64_t> slot_cursor_;            // scratch for the expansion
  std::vector<int64_t> dispatch_recv_offsets_;  // byte offset of each peer's region in recv_rows_
  // Row buffers (fp32 storage; addressed as bytes by the exchanges).
  std::vector<float> send_rows_, recv_rows_, expert_in_, expert_out_, return_rows_, result_rows_;
  AllToAllVBuffer send_desc_, recv_desc_;
};

// One-shot convenience wrapper around MoeDispatcher (allocates its buffers on every call).
absl::Status MoeDispatchCombine(Communicator& comm, const LayerPlacement& placement, const float* x,
                                int64_t num_tokens, int64_t hidden, const int32_t* topk_ids,
                                const float* topk_weights, int64_t k,
                                const GroupedExpertFn& experts, float* out, DispatchStats* stats,
                                const DispatchOptions& options = {});

}  // namespace switchyard
