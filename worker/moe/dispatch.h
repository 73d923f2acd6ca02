// MoE dispatch and combine over a Communicator (DESIGN.md §3): send each token's rows to the ranks
// that hold its chosen experts, run the local experts once on rows grouped by local slot, send the
// results back and sum them in a fixed order.
//
// Layout (all row buffers are byte buffers of `row_bytes` per row; fp32 today, so row_bytes =
// hidden * 4; bf16 or a device buffer only change row_bytes and where the buffers live):
//  1. Route: for each routed row (token t, choice j) in (t, j) order, the ReplicaChooser picks a
//     physical slot (rank r, local slot s) of expert topk_ids[t, j].
//  2. Send buffer: rows ordered by destination rank, then local slot, then (t, j). Alongside, the
//     position of every (t, j) in it is kept for the combine.
//  3. Count exchange: one all-to-all-v of int64s where rank p sends rank r the row count of each of
//     r's local slots (num_local_slots(r) values, known to both sides from the placement). Row
//     counts per peer follow from these, so no separate count exchange is needed.
//  4. Dispatch: one all-to-all-v of rows. The receive buffer is ordered by source rank, then local
//     slot, then the source's order.
//  5. Group: rows are copied slot-major (local slot, then source rank, then source order) into the
//     expert input; expert_offsets[s] is where slot s starts (num_local_slots + 1 entries).
//  6. Experts: one call of the grouped expert function, even with zero rows.
//  7. Ungroup + combine exchange: the expert output is copied back into the receive layout of step
//     4 and sent back with the mirrored counts; each source then finds the result of (t, j) at the
//     position recorded in step 2.
//  8. Combine: out[t] = sum over j = 0..k-1, accumulated in that order starting from zero, of
//     topk_weights[t, j] * y(t, j), so the result does not depend on the number of ranks or on
//     which replica ran a row. With scale_input_by_weight (Llama 4) the expert input is
//     x[t] * topk_weights[t, j] and the outputs are summed unweighted, in the same order.
// Every rank must call Run for every MoE layer, even with zero tokens, since each call runs three
// all-to-all-v collectives on the whole group (slot counts, rows out, rows back).
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
};

// What one Run moved and how long it took; for metrics. Per-peer vectors have world_size entries
// and count the dispatch direction (the combine moves the same rows back).
struct DispatchStats {
  std::vector<int64_t> rows_sent_per_peer;
  std::vector<int64_t> rows_received_per_peer;
  std::vector<int64_t> bytes_sent_per_peer;
  std::vector<int64_t> bytes_received_per_peer;
  // Rows each local slot processed (the per-expert load the balancer will read).
  std::vector<int64_t> rows_per_local_slot;
  absl::Duration dispatch_time;  // routing, count exchange, row exchange, grouping
  absl::Duration expert_time;    // the grouped expert call
  absl::Duration combine_time;   // ungrouping, return exchange, weighted sum
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
  // communicator's errors as they come; the expert function's error (communicator aborted too).
  absl::Status Run(const LayerPlacement& placement, const float* x, int64_t num_tokens,
                   int64_t hidden, const int32_t* topk_ids, const float* topk_weights, int64_t k,
                   const GroupedExpertFn& experts, float* out, DispatchStats* stats);

 private:
  absl::Status Validate(const LayerPlacement& placement, const float* x, int64_t num_tokens,
                        int64_t hidden, const int32_t* topk_ids, const float* topk_weights,
                        int64_t k, const float* out) const;
  void Route(const LayerPlacement& placement, int64_t num_routed, const int32_t* topk_ids);
  void PackSendRows(const float* x, int64_t hidden, int64_t k, const float* topk_weights);
  absl::Status ExchangeSlotCounts(const LayerPlacement& placement);
  absl::Status ExchangeRows(int64_t row_bytes);
  void GroupBySlot(int64_t row_bytes);
  absl::Status ReturnRows(int64_t row_bytes);
  void Combine(int64_t num_tokens, int64_t hidden, int64_t k, const float* topk_weights,
               float* out) const;
  void FillStats(int64_t row_bytes, DispatchStats* stats) const;
  absl::Status AbortWith(absl::Status status);

  Communicator* comm_;
  const DispatchOptions options_;
  ReplicaChooser chooser_;
  int32_t my_num_slots_ = 0;
  // Routing, per destination rank r and local slot s (flattened at dest_slot_offsets_[r] + s).
  std::vector<int64_t> dest_slot_offsets_;  // world_size + 1
  std::vector<int64_t> send_slot_counts_;   // rows this rank sends to (r, s)
  std::vector<int64_t> routed_dest_slot_;   // flattened (r, s) of each routed row (t, j)
  std::vector<int64_t> routed_position_;    // row index of (t, j) in the send buffer
  std::vector<int64_t> send_rows_per_peer_;
  // Received, per source rank p and my local slot s (flattened at p * my_num_slots_ + s).
  std::vector<int64_t> recv_slot_counts_;
  std::vector<int64_t> recv_rows_per_peer_;
  std::vector<int64_t> expert_offsets_;  // my_num_slots_ + 1
  std::vector<int64_t> slot_cursor_;     // scratch for the layout passes
  // Row buffers (fp32 storage; addressed as bytes by the exchange and grouping steps).
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
