// MoE dispatch and combine over a Communicator (DESIGN.md §3): send each token's row once to every
// rank that holds one of its chosen experts, run the local experts once on rows grouped by local
// slot, send the per-choice results back and sum them in a fixed order.
//
// Rows live in the backend's memory in the activation dtype (host fp32 on the CPU backend, device
// bf16 on CUDA); every row movement is a backend op (GatherRows, CombineRows), and the routing
// metadata stays on the host. The exchanges go straight through the communicator when it reads the
// backend's memory (CPU backend with a host communicator; CUDA with NCCL), and are staged through
// host buffers when a device backend meets a host communicator (CUDA with Gloo). A host backend
// with a device communicator is refused.
//
// Layout (row_bytes = hidden * dtype size):
//  1. Route: for each routed choice (token t, choice j) in (t, j) order, the ReplicaChooser picks a
//     physical slot (rank r, local slot s) of expert topk_ids[t, j]. Each choice becomes an entry
//     {row, s, topk_weights[t, j]} in r's entry list (in (t, j) order), where row indexes the
//     token rows going to r: a token sends its row to a rank ONCE however many of its choices live
//     there (DeepEP-style deduplication). This rank's own choices are entries too; their rows are
//     gathered from x into a local region and never enter an exchange.
//  2. Count exchange: one all-to-all-v of int64s: to each rank r, the number of token rows and the
//     number of entries per r-local slot (num_local_slots(r) + 1 values, sizes known to both sides
//     from the placement).
//  3. Dispatch: one all-to-all-v whose region for peer r is [r's token rows, in token order][r's
//     entries, kDispatchEntryBytes each, zero-padded to whole rows] (whole rows keep every region
//     row-aligned in the receive buffer; the padding is under one row per peer).
//  4. Expand: one gather copies each entry's row into the expert input at its slot's next position
//     (scaled by the entry's weight under scale_input_by_weight), slot-major, then by source rank,
//     then the source's (t, j) order; expert_offsets[s] is where slot s starts.
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
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "worker/backend/backend.h"
#include "worker/backend/scratch.h"
#include "worker/comm/communicator.h"
#include "worker/moe/placement.h"

namespace switchyard {

// Runs this rank's local experts on rows [R, hidden] sorted by local expert slot: rows
// [expert_offsets[s], expert_offsets[s + 1]) belong to local slot s; expert_offsets has
// num_local_slots + 1 entries. Writes one output row per input row to out [R, hidden] (same order).
// Both tensors are in the dispatcher's backend, in the dtype of the x given to Run.
using GroupedExpertFn = std::function<absl::Status(
    const Tensor& rows, std::span<const int64_t> expert_offsets, const Tensor& out)>;

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
  // (dispatch: token rows + entries padded to whole rows; combine: one result row per choice, or
  // per token row with sum_per_rank). Self entries are 0: local rows never enter an exchange.
  std::vector<int64_t> token_rows_sent_per_peer;
  std::vector<int64_t> token_rows_received_per_peer;
  std::vector<int64_t> dispatch_bytes_sent_per_peer;
  std::vector<int64_t> dispatch_bytes_received_per_peer;
  std::vector<int64_t> combine_bytes_sent_per_peer;
  std::vector<int64_t> combine_bytes_received_per_peer;
  // Rows each local slot processed (the per-expert load the balancer will read).
  std::vector<int64_t> rows_per_local_slot;
  absl::Duration dispatch_time;  // routing, count exchange, row exchange, expansion
  absl::Duration expert_time;    // the grouped expert call (to completion on a device)
  absl::Duration combine_time;   // return packing, return exchange, weighted sum
};

// How a dispatcher's exchanges reach the communicator (see the top of this file).
enum class ExchangePath {
  kDirect,        // the communicator reads and writes the backend's memory
  kStagedOnHost,  // device backend, host communicator: copied through host buffers
};

// The path for this backend and communicator; FAILED_PRECONDITION for a host backend with a
// device communicator.
absl::StatusOr<ExchangePath> ChooseExchangePath(const Backend& backend, const Communicator& comm);

// Dispatch + combine for one rank. Keeps its buffers across calls, so a warm dispatcher does not
// allocate for batches no larger than earlier ones. Not thread-safe: one per engine thread. Does
// not own the communicator or the backend, which must outlive it.
class MoeDispatcher {
 public:
  MoeDispatcher(Communicator* comm, Backend* backend, DispatchOptions options = {});

  // x: [num_tokens, hidden] in the backend; topk_ids, topk_weights: [num_tokens, k] on the host
  // (logical experts); out: [num_tokens, hidden] in the backend, same dtype as x, overwritten.
  // stats may be null. INVALID_ARGUMENT for bad shapes or expert ids, FAILED_PRECONDITION for a
  // host backend with a device communicator (the communicator is aborted first in both cases, so
  // the peers fail fast instead of waiting); the communicator's errors as they come; the expert
  // function's or the backend's error (communicator aborted too); INTERNAL (aborted too) for a
  // malformed entry from a peer.
  absl::Status Run(const LayerPlacement& placement, const Tensor& x,
                   std::span<const int32_t> topk_ids, std::span<const float> topk_weights,
                   int64_t k, const GroupedExpertFn& experts, const Tensor& out,
                   DispatchStats* stats);

  // One routed choice as it travels (kDispatchEntryBytes bytes, host byte order).
  struct Entry {
    int32_t row;   // token row in the source's region for this rank
    int32_t slot;  // destination local slot
    float weight;  // topk_weights[t, j]
  };

 private:
  // Run without the abort on failure.
  absl::Status RunSteps(const LayerPlacement& placement, const Tensor& x,
                        std::span<const int32_t> topk_ids, std::span<const float> topk_weights,
                        int64_t k, const GroupedExpertFn& experts, const Tensor& out,
                        DispatchStats* stats);
  absl::Status Validate(const LayerPlacement& placement, const Tensor& x,
                        std::span<const int32_t> topk_ids, std::span<const float> topk_weights,
                        int64_t k, const Tensor& out) const;
  void Route(const LayerPlacement& placement, int64_t num_tokens, int64_t k,
             const int32_t* topk_ids, const float* topk_weights);
  absl::Status ExchangeCounts(const LayerPlacement& placement);
  absl::Status ExchangeRows(const Tensor& x);
  absl::Status ReadEntries();
  absl::Status Expand();
  absl::Status ReturnRows(int64_t k);
  absl::Status Combine(int64_t num_tokens, int64_t k, const float* topk_weights, const Tensor& out);
  // One all-to-all-v of send_desc_/recv_desc_ whose data point into the backend's memory, staged
  // through host buffers on kStagedOnHost.
  absl::Status Exchange();
  // A scratch buffer of num_rows rows [num_rows, hidden_] in the current row dtype.
  absl::StatusOr<Tensor> RowBuffer(int slot, int64_t num_rows);
  void FillStats(DispatchStats* stats) const;
  absl::Status AbortWith(absl::Status status);

  Communicator* comm_;
  Backend* backend_;
  const DispatchOptions options_;
  ReplicaChooser chooser_;
  ScratchArena scratch_;
  // Per Run: row shape.
  DType dtype_ = DType::kF32;
  int64_t hidden_ = 0;
  int64_t row_bytes_ = 0;
  int32_t my_num_slots_ = 0;
  // Routing, per destination rank r (this rank included).
  std::vector<std::vector<Entry>> entries_to_;       // r's entries, (t, j) order
  std::vector<std::vector<int32_t>> token_rows_to_;  // tokens whose row goes to r
  std::vector<int64_t> last_token_to_;               // scratch for deduplication
  std::vector<int64_t> count_send_offsets_;          // world_size + 1, into count_send_
  std::vector<int64_t> count_send_;                  // per r: [token rows, entries per slot...]
  std::vector<int32_t> routed_rank_;                 // per (t, j): destination rank
  std::vector<int32_t> routed_entry_;                // per (t, j): index in entries_to_[rank]
  // Received, per source rank p: [token rows, entries per local slot...] (my_num_slots_ + 1 each).
  std::vector<int64_t> count_recv_;
  std::vector<int64_t> entries_from_;       // per p: entries received (own entries for p = me)
  std::vector<int64_t> entry_pos_offsets_;  // world_size + 1, into entries_in_ and entry_pos_
  std::vector<Entry> entries_in_;           // every received entry by source (own ones for me)
  std::vector<Backend::ByteRange> entry_ranges_;  // peers' entries in the receive buffer
  std::vector<char> entry_bytes_;                 // ...copied to the host back to back
  std::vector<int64_t> entry_pos_;          // per (p, entry): its row in the expert buffers
  std::vector<int64_t> region_row_;         // per p: first row of p's token rows in the recv rows
  std::vector<int64_t> expert_offsets_;     // my_num_slots_ + 1
  std::vector<int64_t> slot_cursor_;        // scratch for the expansion: next row per (p, slot)
  std::vector<int64_t> slot_end_;           // ...and the end of that (p, slot) range
  std::vector<int64_t> result_row_;         // per r: first row of r's results after expert rows
  // Host index lists handed to the backend's row ops.
  std::vector<int32_t> gather_rows_;
  std::vector<float> gather_scale_;
  std::vector<int32_t> combine_row_of_;
  std::vector<float> combine_weights_;
  // Row buffers of the current Run (views of scratch_).
  Tensor send_rows_, recv_rows_, expert_in_, results_, return_rows_;
  // Host staging for kStagedOnHost.
  ExchangePath path_ = ExchangePath::kDirect;
  std::vector<char> staged_send_, staged_recv_;
  AllToAllVBuffer send_desc_, recv_desc_;
};

// One-shot convenience wrapper around MoeDispatcher over host fp32 arrays (a CPU backend and fresh
// buffers on every call): x and out [num_tokens, hidden], topk_ids and topk_weights
// [num_tokens, k]. The communicator must be a host one.
absl::Status MoeDispatchCombine(Communicator& comm, const LayerPlacement& placement, const float* x,
                                int64_t num_tokens, int64_t hidden, const int32_t* topk_ids,
                                const float* topk_weights, int64_t k,
                                const GroupedExpertFn& experts, float* out, DispatchStats* stats,
                                const DispatchOptions& options = {});

// A Tensor over host fp32 memory the caller owns (nothing kept alive): [num_rows, hidden].
Tensor BorrowedHostRows(const float* data, int64_t num_rows, int64_t hidden);

}  // namespace switchyard
