#include "worker/moe/dispatch.h"

#include <algorithm>
#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace switchyard {
namespace {

static_assert(sizeof(MoeDispatcher::Entry) == kDispatchEntryBytes,
              "the dispatch entry is part of the wire format");

enum ScratchSlot { kSendRows, kRecvRows, kExpertIn, kResults, kReturnRows };

// Whole rows that hold `num_entries` entries (the dispatch region pads them to rows).
int64_t EntryRows(int64_t num_entries, int64_t row_bytes) {
  return (num_entries * kDispatchEntryBytes + row_bytes - 1) / row_bytes;
}

// Byte address of row `row` of a [rows, hidden] buffer.
char* RowAddress(const Tensor& rows, int64_t row, int64_t row_bytes) {
  return static_cast<char*>(rows.data()) + row * row_bytes;
}

}  // namespace

Tensor BorrowedHostRows(const float* data, int64_t num_rows, int64_t hidden) {
  return Tensor(std::shared_ptr<void>(), const_cast<float*>(data), DType::kF32, {num_rows, hidden});
}

absl::StatusOr<ExchangePath> ChooseExchangePath(const Backend& backend, const Communicator& comm) {
  const bool host_comm = comm.memory_space() == MemorySpace::kHost;
  if (backend.host_memory()) {
    if (host_comm) return ExchangePath::kDirect;
    return absl::FailedPreconditionError(absl::StrCat(
        "moe dispatch: the ", comm.name(), " communicator needs device memory, but the ",
        std::string(backend.name()), " backend keeps tensors in host memory"));
  }
  return host_comm ? ExchangePath::kStagedOnHost : ExchangePath::kDirect;
}

MoeDispatcher::MoeDispatcher(Communicator* comm, Backend* backend, DispatchOptions options)
    : comm_(comm), backend_(backend), options_(options), scratch_(*backend) {}

absl::Status MoeDispatcher::AbortWith(absl::Status status) {
  comm_->Abort(status.ToString());
  return status;
}

absl::Status MoeDispatcher::Validate(const LayerPlacement& placement, const Tensor& x,
                                     std::span<const int32_t> topk_ids,
                                     std::span<const float> topk_weights, int64_t k,
                                     const Tensor& out) const {
  // Messages are built only on failure: this runs for every MoE layer of every step.
  auto invalid = [&](auto&&... parts) {
    return absl::InvalidArgumentError(
        absl::StrCat("moe dispatch on rank ", comm_->rank(), ": ", parts...));
  };
  if (placement.world_size() != comm_->world_size()) {
    return invalid("placement v", placement.version(), " is for ", placement.world_size(),
                   " ranks, the group has ", comm_->world_size());
  }
  const int64_t num_tokens = x.rank() == 2 ? x.dim(0) : -1;
  const int64_t hidden = x.rank() == 2 ? x.dim(1) : -1;
  if (num_tokens < 0 || num_tokens > std::numeric_limits<int32_t>::max() || hidden < 1 || k < 1) {
    return invalid("expected x [num_tokens < 2^31, hidden >= 1] and k >= 1, found x ",
                   x.ShapeString(), " and k ", k);
  }
  if (out.shape() != x.shape() || out.dtype() != x.dtype()) {
    return invalid("expected out like x ", x.ShapeString(), " ", std::string(DTypeName(x.dtype())),
                   ", found ", out.ShapeString(), " ", std::string(DTypeName(out.dtype())));
  }
  if (static_cast<int64_t>(topk_ids.size()) != num_tokens * k ||
      static_cast<int64_t>(topk_weights.size()) != num_tokens * k) {
    return invalid("expected ", num_tokens * k, " routed ids and weights (", num_tokens, " x ", k,
                   "), found ", topk_ids.size(), " and ", topk_weights.size());
  }
  if (num_tokens > 0 && (x.empty() || out.empty())) {
    return invalid("null x or out with ", num_tokens, " tokens");
  }
  for (size_t i = 0; i < topk_ids.size(); ++i) {
    if (topk_ids[i] < 0 || topk_ids[i] >= placement.num_experts()) {
      return invalid("token ", i / k, " choice ", i % k, " routes to expert ", topk_ids[i],
                     ", expected [0, ", placement.num_experts(), ")");
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<Tensor> MoeDispatcher::RowBuffer(int slot, int64_t num_rows) {
  return scratch_.Get(slot, dtype_, {num_rows, hidden_});
}

void MoeDispatcher::Route(const LayerPlacement& placement, int64_t num_tokens, int64_t k,
                          const int32_t* topk_ids, const float* topk_weights) {
  const int32_t world_size = placement.world_size(), me = comm_->rank();
  entries_to_.resize(world_size);
  token_rows_to_.resize(world_size);
  for (std::vector<Entry>& entries : entries_to_) entries.clear();
  for (std::vector<int32_t>& rows : token_rows_to_) rows.clear();
  last_token_to_.assign(world_size, -1);
  count_send_offsets_.resize(world_size + 1);
  count_send_offsets_[0] = 0;
  for (int32_t rank = 0; rank < world_size; ++rank) {
    count_send_offsets_[rank + 1] = count_send_offsets_[rank] + 1 + placement.num_local_slots(rank);
  }
  count_send_.assign(count_send_offsets_[world_size], 0);
  routed_rank_.resize(num_tokens * k);
  routed_entry_.resize(num_tokens * k);
  chooser_.Reset(placement, me);
  for (int64_t t = 0; t < num_tokens; ++t) {
    for (int64_t i = t * k; i < (t + 1) * k; ++i) {
      const PhysicalSlot slot = chooser_.Choose(placement, topk_ids[i]);
      const int32_t rank = slot.rank;
      std::vector<int32_t>& rows = token_rows_to_[rank];
      if (last_token_to_[rank] != t) {
        last_token_to_[rank] = t;
        rows.push_back(static_cast<int32_t>(t));
      }
      routed_rank_[i] = rank;
      routed_entry_[i] = static_cast<int32_t>(entries_to_[rank].size());
      entries_to_[rank].push_back(
          Entry{static_cast<int32_t>(rows.size()) - 1, slot.local_slot, topk_weights[i]});
      ++count_send_[count_send_offsets_[rank] + 1 + slot.local_slot];
    }
  }
  for (int32_t rank = 0; rank < world_size; ++rank) {
    count_send_[count_send_offsets_[rank]] = static_cast<int64_t>(token_rows_to_[rank].size());
  }
}

absl::Status MoeDispatcher::ExchangeCounts(const LayerPlacement& placement) {
  const int32_t world_size = placement.world_size();
  my_num_slots_ = placement.num_local_slots(comm_->rank());
  const int64_t stride = my_num_slots_ + 1;
  count_recv_.assign(world_size * stride, 0);
  send_desc_.data = count_send_.data();
  send_desc_.counts_bytes.resize(world_size);
  recv_desc_.data = count_recv_.data();
  recv_desc_.counts_bytes.assign(world_size, stride * sizeof(int64_t));
  for (int32_t rank = 0; rank < world_size; ++rank) {
    send_desc_.counts_bytes[rank] =
        (count_send_offsets_[rank + 1] - count_send_offsets_[rank]) * sizeof(int64_t);
  }
  PackOffsets(&send_desc_);  // packed by rank: exactly count_send_'s layout
  PackOffsets(&recv_desc_);
  // Host memory: a device communicator stages these through its own device buffers.
  SY_RETURN_IF_ERROR(comm_->AllToAllVHost(send_desc_, recv_desc_));
  entries_from_.assign(world_size, 0);
  for (int32_t peer = 0; peer < world_size; ++peer) {
    for (int64_t slot = 0; slot < my_num_slots_; ++slot) {
      entries_from_[peer] += count_recv_[peer * stride + 1 + slot];
    }
  }
  return absl::OkStatus();
}

absl::Status MoeDispatcher::Exchange() {
  if (path_ == ExchangePath::kDirect) {
    // A device communicator runs on its own stream: the rows packed on the backend's stream must
    // be complete first. Its calls return with the receive buffer complete.
    if (!backend_->host_memory()) SY_RETURN_IF_ERROR(backend_->Synchronize());
    return comm_->AllToAllV(send_desc_, recv_desc_);
  }
  const int32_t world_size = comm_->world_size();
  int64_t send_bytes = 0, recv_bytes = 0;
  for (int32_t peer = 0; peer < world_size; ++peer) {
    send_bytes = std::max(send_bytes, send_desc_.offsets_bytes[peer] + send_desc_.counts_bytes[peer]);
    recv_bytes = std::max(recv_bytes, recv_desc_.offsets_bytes[peer] + recv_desc_.counts_bytes[peer]);
  }
  if (static_cast<int64_t>(staged_send_.size()) < send_bytes) staged_send_.resize(send_bytes);
  if (static_cast<int64_t>(staged_recv_.size()) < recv_bytes) staged_recv_.resize(recv_bytes);
  SY_RETURN_IF_ERROR(backend_->CopyBytesToHost(send_desc_.data, send_bytes, staged_send_.data()));
  AllToAllVBuffer send = send_desc_, recv = recv_desc_;
  send.data = staged_send_.data();
  recv.data = staged_recv_.data();
  SY_RETURN_IF_ERROR(comm_->AllToAllV(send, recv));
  for (int32_t peer = 0; peer < world_size; ++peer) {
    const int64_t offset = recv_desc_.offsets_bytes[peer];
    SY_RETURN_IF_ERROR(backend_->CopyBytesFromHost(staged_recv_.data() + offset,
                                                   recv_desc_.counts_bytes[peer],
                                                   static_cast<char*>(recv_desc_.data) + offset));
  }
  return absl::OkStatus();
}

absl::Status MoeDispatcher::ExchangeRows(const Tensor& x) {
  const int32_t world_size = comm_->world_size(), me = comm_->rank();
  const int64_t stride = my_num_slots_ + 1;
  send_desc_.counts_bytes.assign(world_size, 0);
  recv_desc_.counts_bytes.assign(world_size, 0);
  for (int32_t peer = 0; peer < world_size; ++peer) {
    if (peer == me) continue;  // local choices never enter the exchange
    send_desc_.counts_bytes[peer] =
        (static_cast<int64_t>(token_rows_to_[peer].size()) +
         EntryRows(static_cast<int64_t>(entries_to_[peer].size()), row_bytes_)) *
        row_bytes_;
    recv_desc_.counts_bytes[peer] =
        (count_recv_[peer * stride] + EntryRows(entries_from_[peer], row_bytes_)) * row_bytes_;
  }
  const int64_t send_rows = PackOffsets(&send_desc_) / row_bytes_;
  const int64_t exchanged_rows = PackOffsets(&recv_desc_) / row_bytes_;
  // The receive buffer: every peer's region, then this rank's own token rows gathered from x.
  const int64_t own_rows = static_cast<int64_t>(token_rows_to_[me].size());
  SY_ASSIGN_OR_RETURN(send_rows_, RowBuffer(kSendRows, send_rows));
  SY_ASSIGN_OR_RETURN(recv_rows_, RowBuffer(kRecvRows, exchanged_rows + own_rows));
  send_desc_.data = send_rows_.data();
  recv_desc_.data = recv_rows_.data();
  region_row_.assign(world_size, 0);
  for (int32_t peer = 0; peer < world_size; ++peer) {
    region_row_[peer] = peer == me ? exchanged_rows : recv_desc_.offsets_bytes[peer] / row_bytes_;
  }
  // Pack [token rows][entries, padded] per destination; the padding bytes are never read.
  for (int32_t peer = 0; peer < world_size; ++peer) {
    if (peer == me || send_desc_.counts_bytes[peer] == 0) continue;
    const std::vector<int32_t>& tokens = token_rows_to_[peer];
    const int64_t first = send_desc_.offsets_bytes[peer] / row_bytes_;
    const int64_t num_tokens = static_cast<int64_t>(tokens.size());
    SY_RETURN_IF_ERROR(backend_->GatherRows(x, tokens, {}, send_rows_.Rows(first, first + num_tokens)));
    SY_RETURN_IF_ERROR(backend_->CopyBytesFromHost(
        entries_to_[peer].data(), static_cast<int64_t>(entries_to_[peer].size()) * kDispatchEntryBytes,
        RowAddress(send_rows_, first + num_tokens, row_bytes_)));
  }
  SY_RETURN_IF_ERROR(backend_->GatherRows(
      x, token_rows_to_[me], {}, recv_rows_.Rows(exchanged_rows, exchanged_rows + own_rows)));
  return Exchange();
}

absl::Status MoeDispatcher::ReadEntries() {
  const int32_t world_size = comm_->world_size(), me = comm_->rank();
  const int64_t stride = my_num_slots_ + 1;
  entry_pos_offsets_.resize(world_size + 1);
  entry_pos_offsets_[0] = 0;
  for (int32_t peer = 0; peer < world_size; ++peer) {
    entry_pos_offsets_[peer + 1] = entry_pos_offsets_[peer] + entries_from_[peer];
  }
  entries_in_.resize(entry_pos_offsets_[world_size]);
  // Where each peer's entries are in the receive buffer; this rank's own are on the host already.
  entry_ranges_.clear();
  for (int32_t peer = 0; peer < world_size; ++peer) {
    Entry* dst = entries_in_.data() + entry_pos_offsets_[peer];
    const int64_t num_bytes = entries_from_[peer] * kDispatchEntryBytes;
    if (num_bytes == 0) continue;
    if (peer == me) {
      std::memcpy(dst, entries_to_[me].data(), num_bytes);
      continue;
    }
    const int64_t offset = recv_desc_.offsets_bytes[peer] + count_recv_[peer * stride] * row_bytes_;
    if (path_ == ExchangePath::kStagedOnHost) {
      std::memcpy(dst, staged_recv_.data() + offset, num_bytes);
    } else {
      entry_ranges_.push_back({static_cast<const char*>(recv_desc_.data) + offset, num_bytes});
    }
  }
  if (entry_ranges_.empty()) return absl::OkStatus();
  // In the backend's memory: every peer's entries in one go (one wait on a device), in peer order,
  // which is their order in entries_in_ after this rank's own.
  entry_bytes_.resize(static_cast<size_t>(entry_pos_offsets_[world_size]) * kDispatchEntryBytes);
  SY_RETURN_IF_ERROR(backend_->CopyRangesToHost(entry_ranges_, entry_bytes_.data()));
  const char* src = entry_bytes_.data();
  for (int32_t peer = 0; peer < world_size; ++peer) {
    const int64_t num_bytes = entries_from_[peer] * kDispatchEntryBytes;
    if (peer == me || num_bytes == 0) continue;
    std::memcpy(entries_in_.data() + entry_pos_offsets_[peer], src, num_bytes);
    src += num_bytes;
  }
  return absl::OkStatus();
}

absl::Status MoeDispatcher::Expand() {
  const int32_t world_size = comm_->world_size(), me = comm_->rank();
  const int64_t num_slots = my_num_slots_, stride = num_slots + 1;
  // Slot-major, then source rank: slot_cursor_[p * num_slots + s] is where p's rows of s start.
  expert_offsets_.assign(num_slots + 1, 0);
  slot_cursor_.resize(world_size * num_slots);
  slot_end_.resize(world_size * num_slots);
  for (int64_t slot = 0; slot < num_slots; ++slot) {
    int64_t position = expert_offsets_[slot];
    for (int32_t peer = 0; peer < world_size; ++peer) {
      slot_cursor_[peer * num_slots + slot] = position;
      position += count_recv_[peer * stride + 1 + slot];
      slot_end_[peer * num_slots + slot] = position;
    }
    expert_offsets_[slot + 1] = position;
  }
  const int64_t num_rows = expert_offsets_[num_slots];
  if (num_rows != entry_pos_offsets_[world_size]) {
    return absl::InternalError(absl::StrCat("moe dispatch on rank ", me, ": ", num_rows,
                                            " rows by slot counts but ",
                                            entry_pos_offsets_[world_size], " entries"));
  }
  entry_pos_.resize(num_rows);
  gather_rows_.resize(num_rows);
  gather_scale_.resize(options_.scale_input_by_weight ? num_rows : 0);
  for (int32_t peer = 0; peer < world_size; ++peer) {
    const int64_t peer_rows = peer == me ? static_cast<int64_t>(token_rows_to_[me].size())
                                         : count_recv_[peer * stride];
    int64_t* cursor = slot_cursor_.data() + peer * num_slots;
    const int64_t* end = slot_end_.data() + peer * num_slots;
    for (int64_t e = entry_pos_offsets_[peer]; e < entry_pos_offsets_[peer + 1]; ++e) {
      const Entry& entry = entries_in_[e];
      // Entries that disagree with the peer's announced counts must not write past its range.
      if (entry.slot < 0 || entry.slot >= num_slots || entry.row < 0 || entry.row >= peer_rows ||
          cursor[entry.slot] >= end[entry.slot]) {
        return absl::InternalError(absl::StrCat(
            "moe dispatch on rank ", me, ": entry ", e - entry_pos_offsets_[peer], " from rank ",
            peer, " names row ", entry.row, " of ", peer_rows, " and slot ", entry.slot, " of ",
            num_slots, ", or more entries for that slot than the rank announced"));
      }
      const int64_t position = cursor[entry.slot]++;
      entry_pos_[e] = position;
      gather_rows_[position] = static_cast<int32_t>(region_row_[peer] + entry.row);
      if (options_.scale_input_by_weight) gather_scale_[position] = entry.weight;
    }
  }
  SY_ASSIGN_OR_RETURN(expert_in_, RowBuffer(kExpertIn, num_rows));
  return backend_->GatherRows(recv_rows_, gather_rows_, gather_scale_, expert_in_);
}

absl::Status MoeDispatcher::ReturnRows(int64_t k) {
  const int32_t world_size = comm_->world_size(), me = comm_->rank();
  const int64_t stride = my_num_slots_ + 1;
  const int64_t num_expert_rows = expert_offsets_[my_num_slots_];
  send_desc_.counts_bytes.assign(world_size, 0);
  recv_desc_.counts_bytes.assign(world_size, 0);
  for (int32_t peer = 0; peer < world_size; ++peer) {
    if (peer == me) continue;  // local results are combined from the expert output in place
    if (options_.sum_per_rank) {
      send_desc_.counts_bytes[peer] = count_recv_[peer * stride] * row_bytes_;
      recv_desc_.counts_bytes[peer] =
          static_cast<int64_t>(token_rows_to_[peer].size()) * row_bytes_;
    } else {
      send_desc_.counts_bytes[peer] = entries_from_[peer] * row_bytes_;
      recv_desc_.counts_bytes[peer] = static_cast<int64_t>(entries_to_[peer].size()) * row_bytes_;
    }
  }
  const int64_t return_rows = PackOffsets(&send_desc_) / row_bytes_;
  const int64_t result_rows = PackOffsets(&recv_desc_) / row_bytes_;
  SY_ASSIGN_OR_RETURN(return_rows_, RowBuffer(kReturnRows, return_rows));
  // The results land right after the expert output rows (one buffer: the combine reads both).
  if (results_.dim(0) != num_expert_rows + result_rows) {
    return absl::InternalError(absl::StrCat("moe dispatch on rank ", me, ": ", result_rows,
                                            " result rows, expected ",
                                            results_.dim(0) - num_expert_rows));
  }
  const Tensor expert_out = results_.Rows(0, num_expert_rows);
  result_row_.assign(world_size, 0);
  for (int32_t peer = 0; peer < world_size; ++peer) {
    result_row_[peer] = num_expert_rows + recv_desc_.offsets_bytes[peer] / row_bytes_;
    recv_desc_.offsets_bytes[peer] += num_expert_rows * row_bytes_;
  }
  send_desc_.data = return_rows_.data();
  recv_desc_.data = results_.data();
  // Packed by peer in peer order, so one backend call fills the whole send buffer.
  if (options_.sum_per_rank) {
    // Per token row a peer sent: its entries here (adjacent, in j order), padded to k with -1.
    combine_row_of_.assign(return_rows * k, -1);
    combine_weights_.assign(return_rows * k, 0.0f);
    int64_t token_row_base = 0;
    for (int32_t peer = 0; peer < world_size; ++peer) {
      if (peer == me) continue;
      int32_t previous_row = -1;
      int64_t j = 0;
      for (int64_t e = entry_pos_offsets_[peer]; e < entry_pos_offsets_[peer + 1]; ++e) {
        const Entry& entry = entries_in_[e];
        j = entry.row == previous_row ? j + 1 : 0;
        previous_row = entry.row;
        if (j >= k) {
          return absl::InternalError(absl::StrCat("moe dispatch on rank ", me, ": token row ",
                                                  entry.row, " from rank ", peer, " has more than ",
                                                  k, " entries"));
        }
        const int64_t slot = (token_row_base + entry.row) * k + j;
        combine_row_of_[slot] = static_cast<int32_t>(entry_pos_[e]);
        combine_weights_[slot] = options_.scale_input_by_weight ? 1.0f : entry.weight;
      }
      token_row_base += count_recv_[peer * stride];
    }
    SY_RETURN_IF_ERROR(
        backend_->CombineRows(expert_out, combine_row_of_, combine_weights_, k, return_rows_));
  } else {
    gather_rows_.clear();
    for (int32_t peer = 0; peer < world_size; ++peer) {
      if (peer == me) continue;
      for (int64_t e = entry_pos_offsets_[peer]; e < entry_pos_offsets_[peer + 1]; ++e) {
        gather_rows_.push_back(static_cast<int32_t>(entry_pos_[e]));
      }
    }
    SY_RETURN_IF_ERROR(backend_->GatherRows(expert_out, gather_rows_, {}, return_rows_));
  }
  return Exchange();
}

absl::Status MoeDispatcher::Combine(int64_t num_tokens, int64_t k, const float* topk_weights,
                                    const Tensor& out) {
  const int32_t me = comm_->rank();
  const int64_t* local_positions = entry_pos_.data() + entry_pos_offsets_[me];
  std::vector<int64_t>& added = last_token_to_;  // per rank: the last token whose sum was added
  added.assign(comm_->world_size(), -1);
  combine_row_of_.resize(num_tokens * k);
  combine_weights_.resize(num_tokens * k);
  for (int64_t t = 0; t < num_tokens; ++t) {
    for (int64_t j = 0; j < k; ++j) {
      const int64_t i = t * k + j;
      const int32_t rank = routed_rank_[i];
      int64_t row;
      float weight = options_.scale_input_by_weight ? 1.0f : topk_weights[i];
      if (rank == me) {
        row = local_positions[routed_entry_[i]];
      } else if (options_.sum_per_rank) {
        if (added[rank] == t) {  // this rank's partial sum is in already
          row = -1;
          weight = 0.0f;
        } else {
          added[rank] = t;
          row = result_row_[rank] + entries_to_[rank][routed_entry_[i]].row;
          weight = 1.0f;  // weighted on the expert's rank
        }
      } else {
        row = result_row_[rank] + routed_entry_[i];
      }
      combine_row_of_[i] = static_cast<int32_t>(row);
      combine_weights_[i] = weight;
    }
  }
  // Accumulated from zero in j order, exactly as a single process would (with sum_per_rank, a
  // remote rank's partial sum comes in at that rank's first choice).
  return backend_->CombineRows(results_, combine_row_of_, combine_weights_, k, out);
}

void MoeDispatcher::FillStats(DispatchStats* stats) const {
  const int32_t world_size = comm_->world_size(), me = comm_->rank();
  const int64_t stride = my_num_slots_ + 1;
  for (auto* v : {&stats->rows_sent_per_peer, &stats->rows_received_per_peer,
                  &stats->bytes_sent_per_peer, &stats->bytes_received_per_peer,
                  &stats->token_rows_sent_per_peer, &stats->token_rows_received_per_peer,
                  &stats->dispatch_bytes_sent_per_peer, &stats->dispatch_bytes_received_per_peer,
                  &stats->combine_bytes_sent_per_peer, &stats->combine_bytes_received_per_peer}) {
    v->assign(world_size, 0);
  }
  for (int32_t peer = 0; peer < world_size; ++peer) {
    const int64_t sent = static_cast<int64_t>(entries_to_[peer].size());
    const int64_t received = entries_from_[peer];
    stats->rows_sent_per_peer[peer] = sent;
    stats->rows_received_per_peer[peer] = received;
    stats->bytes_sent_per_peer[peer] = sent * row_bytes_;
    stats->bytes_received_per_peer[peer] = received * row_bytes_;
    if (peer == me) continue;
    const int64_t token_rows_sent = static_cast<int64_t>(token_rows_to_[peer].size());
    const int64_t token_rows_received = count_recv_[peer * stride];
    stats->token_rows_sent_per_peer[peer] = token_rows_sent;
    stats->token_rows_received_per_peer[peer] = token_rows_received;
    stats->dispatch_bytes_sent_per_peer[peer] =
        (token_rows_sent + EntryRows(sent, row_bytes_)) * row_bytes_;
    stats->dispatch_bytes_received_per_peer[peer] =
        (token_rows_received + EntryRows(received, row_bytes_)) * row_bytes_;
    stats->combine_bytes_sent_per_peer[peer] =
        (options_.sum_per_rank ? token_rows_received : received) * row_bytes_;
    stats->combine_bytes_received_per_peer[peer] =
        (options_.sum_per_rank ? token_rows_sent : sent) * row_bytes_;
  }
  stats->rows_per_local_slot.resize(my_num_slots_);
  for (int32_t slot = 0; slot < my_num_slots_; ++slot) {
    stats->rows_per_local_slot[slot] = expert_offsets_[slot + 1] - expert_offsets_[slot];
  }
}

absl::Status MoeDispatcher::Run(const LayerPlacement& placement, const Tensor& x,
                                std::span<const int32_t> topk_ids,
                                std::span<const float> topk_weights, int64_t k,
                                const GroupedExpertFn& experts, const Tensor& out,
                                DispatchStats* stats) {
  // Any failure leaves the peers inside this layer's collectives: abort the group so that they fail
  // now rather than at their deadline (the communicator's own errors have aborted it already).
  absl::Status status = RunSteps(placement, x, topk_ids, topk_weights, k, experts, out, stats);
  if (!status.ok()) return AbortWith(std::move(status));
  return absl::OkStatus();
}

absl::Status MoeDispatcher::RunSteps(const LayerPlacement& placement, const Tensor& x,
                                     std::span<const int32_t> topk_ids,
                                     std::span<const float> topk_weights, int64_t k,
                                     const GroupedExpertFn& experts, const Tensor& out,
                                     DispatchStats* stats) {
  SY_RETURN_IF_ERROR(Validate(placement, x, topk_ids, topk_weights, k, out));
  SY_ASSIGN_OR_RETURN(path_, ChooseExchangePath(*backend_, *comm_));
  const int32_t world_size = comm_->world_size(), me = comm_->rank();
  const int64_t num_tokens = x.dim(0);
  dtype_ = x.dtype();
  hidden_ = x.dim(1);
  row_bytes_ = hidden_ * DTypeSize(dtype_);
  const absl::Time start = absl::Now();
  Route(placement, num_tokens, k, topk_ids.data(), topk_weights.data());
  SY_RETURN_IF_ERROR(ExchangeCounts(placement));
  SY_RETURN_IF_ERROR(ExchangeRows(x));
  SY_RETURN_IF_ERROR(ReadEntries());
  SY_RETURN_IF_ERROR(Expand());
  const absl::Time dispatched = absl::Now();
  // One buffer for the expert output and the results coming back (see ReturnRows).
  const int64_t num_expert_rows = expert_offsets_[my_num_slots_];
  int64_t result_rows = 0;
  for (int32_t peer = 0; peer < world_size; ++peer) {
    if (peer == me) continue;
    result_rows += static_cast<int64_t>(options_.sum_per_rank ? token_rows_to_[peer].size()
                                                              : entries_to_[peer].size());
  }
  SY_ASSIGN_OR_RETURN(results_, RowBuffer(kResults, num_expert_rows + result_rows));
  absl::Status expert_status =
      experts(expert_in_, expert_offsets_, results_.Rows(0, num_expert_rows));
  // On a device the experts were only queued: wait, so that expert_time is the compute (the
  // return exchange needs the rows complete anyway).
  if (expert_status.ok() && !backend_->host_memory()) expert_status = backend_->Synchronize();
  if (!expert_status.ok()) {
    return absl::Status(expert_status.code(), absl::StrCat("moe experts on rank ", me, ": ",
                                                           expert_status.message()));
  }
  const absl::Time computed = absl::Now();
  SY_RETURN_IF_ERROR(ReturnRows(k));
  SY_RETURN_IF_ERROR(Combine(num_tokens, k, topk_weights.data(), out));
  if (stats != nullptr) {
    FillStats(stats);
    stats->dispatch_time = dispatched - start;
    stats->expert_time = computed - dispatched;
    stats->combine_time = absl::Now() - computed;
  }
  return absl::OkStatus();
}

absl::Status MoeDispatchCombine(Communicator& comm, const LayerPlacement& placement, const float* x,
                                int64_t num_tokens, int64_t hidden, const int32_t* topk_ids,
                                const float* topk_weights, int64_t k,
                                const GroupedExpertFn& experts, float* out, DispatchStats* stats,
                                const DispatchOptions& options) {
  std::unique_ptr<Backend> backend = MakeCpuBackend();
  MoeDispatcher dispatcher(&comm, backend.get(), options);
  const int64_t num_choices = std::max<int64_t>(num_tokens, 0) * std::max<int64_t>(k, 0);
  return dispatcher.Run(
      placement, BorrowedHostRows(x, num_tokens, hidden),
      std::span<const int32_t>(topk_ids, topk_ids == nullptr ? 0 : num_choices),
      std::span<const float>(topk_weights, topk_weights == nullptr ? 0 : num_choices), k, experts,
      BorrowedHostRows(out, num_tokens, hidden), stats);
}

}  // namespace switchyard
