#include "worker/moe/dispatch.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace switchyard {
namespace {

// Fills buffer->counts_bytes with rows_per_peer * row_bytes and packs the offsets.
void DescribeRows(void* data, const std::vector<int64_t>& rows_per_peer, int64_t row_bytes,
                  AllToAllVBuffer* buffer) {
  buffer->data = data;
  buffer->counts_bytes.resize(rows_per_peer.size());
  for (size_t peer = 0; peer < rows_per_peer.size(); ++peer) {
    buffer->counts_bytes[peer] = rows_per_peer[peer] * row_bytes;
  }
  PackOffsets(buffer);
}

// Grows `buffer` to at least num_floats (never shrinks, so a warm dispatcher does not allocate).
float* Reserve(std::vector<float>* buffer, int64_t num_floats) {
  if (static_cast<int64_t>(buffer->size()) < num_floats) buffer->resize(num_floats);
  return buffer->data();
}

// The same for a byte count (rows of any element type live in float-aligned storage).
char* ReserveBytes(std::vector<float>* buffer, int64_t num_bytes) {
  const int64_t num_floats = (num_bytes + sizeof(float) - 1) / sizeof(float);
  return reinterpret_cast<char*>(Reserve(buffer, num_floats));
}

}  // namespace

MoeDispatcher::MoeDispatcher(Communicator* comm, DispatchOptions options)
    : comm_(comm), options_(options) {}

absl::Status MoeDispatcher::AbortWith(absl::Status status) {
  comm_->Abort(status.ToString());
  return status;
}

absl::Status MoeDispatcher::Validate(const LayerPlacement& placement, const float* x,
                                     int64_t num_tokens, int64_t hidden, const int32_t* topk_ids,
                                     const float* topk_weights, int64_t k, const float* out) const {
  const std::string where = absl::StrCat("moe dispatch on rank ", comm_->rank());
  if (placement.world_size() != comm_->world_size()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": placement v", placement.version(),
                                                   " is for ", placement.world_size(),
                                                   " ranks, the group has ", comm_->world_size()));
  }
  if (num_tokens < 0 || hidden < 1 || k < 1) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": expected num_tokens >= 0, hidden >= 1",
                                                   " and k >= 1, got ", num_tokens, ", ", hidden,
                                                   ", ", k));
  }
  if (num_tokens > 0 &&
      (x == nullptr || topk_ids == nullptr || topk_weights == nullptr || out == nullptr)) {
    return absl::InvalidArgumentError(absl::StrCat(
        where, ": null x, topk_ids, topk_weights or out with ", num_tokens, " tokens"));
  }
  for (int64_t i = 0; i < num_tokens * k; ++i) {
    if (topk_ids[i] < 0 || topk_ids[i] >= placement.num_experts()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": token ", i / k, " choice ", i % k, " routes to expert ",
                       topk_ids[i], ", expected [0, ", placement.num_experts(), ")"));
    }
  }
  return absl::OkStatus();
}

void MoeDispatcher::Route(const LayerPlacement& placement, int64_t num_routed,
                          const int32_t* topk_ids) {
  const int32_t world_size = placement.world_size();
  dest_slot_offsets_.resize(world_size + 1);
  dest_slot_offsets_[0] = 0;
  for (int32_t rank = 0; rank < world_size; ++rank) {
    dest_slot_offsets_[rank + 1] = dest_slot_offsets_[rank] + placement.num_local_slots(rank);
  }
  send_slot_counts_.assign(dest_slot_offsets_[world_size], 0);
  routed_dest_slot_.resize(num_routed);
  routed_position_.resize(num_routed);
  chooser_.Reset(placement, comm_->rank());
  for (int64_t i = 0; i < num_routed; ++i) {
    const PhysicalSlot slot = chooser_.Choose(placement, topk_ids[i]);
    routed_dest_slot_[i] = dest_slot_offsets_[slot.rank] + slot.local_slot;
    ++send_slot_counts_[routed_dest_slot_[i]];
  }
  // Rows go out ordered by (rank, slot), then (t, j): an exclusive prefix sum gives each (rank,
  // slot) its first row, and a running cursor the position of each routed row.
  std::vector<int64_t>& cursor = slot_cursor_;
  cursor.resize(send_slot_counts_.size());
  int64_t row = 0;
  for (size_t flat = 0; flat < send_slot_counts_.size(); ++flat) {
    cursor[flat] = row;
    row += send_slot_counts_[flat];
  }
  for (int64_t i = 0; i < num_routed; ++i) routed_position_[i] = cursor[routed_dest_slot_[i]]++;
  send_rows_per_peer_.assign(world_size, 0);
  for (int32_t rank = 0; rank < world_size; ++rank) {
    for (int64_t flat = dest_slot_offsets_[rank]; flat < dest_slot_offsets_[rank + 1]; ++flat) {
      send_rows_per_peer_[rank] += send_slot_counts_[flat];
    }
  }
}

void MoeDispatcher::PackSendRows(const float* x, int64_t hidden, int64_t k,
                                 const float* topk_weights) {
  const int64_t num_routed = static_cast<int64_t>(routed_position_.size());
  float* send = Reserve(&send_rows_, num_routed * hidden);
  for (int64_t i = 0; i < num_routed; ++i) {
    const float* src = x + (i / k) * hidden;
    float* dst = send + routed_position_[i] * hidden;
    if (options_.scale_input_by_weight) {
      const float weight = topk_weights[i];
      for (int64_t h = 0; h < hidden; ++h) dst[h] = src[h] * weight;
    } else {
      std::memcpy(dst, src, hidden * sizeof(float));
    }
  }
}

absl::Status MoeDispatcher::ExchangeSlotCounts(const LayerPlacement& placement) {
  const int32_t world_size = placement.world_size();
  my_num_slots_ = placement.num_local_slots(comm_->rank());
  recv_slot_counts_.assign(static_cast<size_t>(world_size) * my_num_slots_, 0);
  send_desc_.data = send_slot_counts_.data();
  send_desc_.counts_bytes.resize(world_size);
  recv_desc_.data = recv_slot_counts_.data();
  recv_desc_.counts_bytes.assign(world_size, my_num_slots_ * sizeof(int64_t));
  for (int32_t rank = 0; rank < world_size; ++rank) {
    send_desc_.counts_bytes[rank] = placement.num_local_slots(rank) * sizeof(int64_t);
  }
  PackOffsets(&send_desc_);  // packed by (rank, slot): exactly send_slot_counts_' layout
  PackOffsets(&recv_desc_);
  SY_RETURN_IF_ERROR(comm_->AllToAllV(send_desc_, recv_desc_));
  recv_rows_per_peer_.assign(world_size, 0);
  for (int32_t peer = 0; peer < world_size; ++peer) {
    for (int32_t slot = 0; slot < my_num_slots_; ++slot) {
      recv_rows_per_peer_[peer] += recv_slot_counts_[peer * my_num_slots_ + slot];
    }
  }
  return absl::OkStatus();
}

absl::Status MoeDispatcher::ExchangeRows(int64_t row_bytes) {
  int64_t num_recv_rows = 0;
  for (int64_t rows : recv_rows_per_peer_) num_recv_rows += rows;
  ReserveBytes(&recv_rows_, num_recv_rows * row_bytes);
  DescribeRows(send_rows_.data(), send_rows_per_peer_, row_bytes, &send_desc_);
  DescribeRows(recv_rows_.data(), recv_rows_per_peer_, row_bytes, &recv_desc_);
  return comm_->AllToAllV(send_desc_, recv_desc_);
}

void MoeDispatcher::GroupBySlot(int64_t row_bytes) {
  const int32_t world_size = static_cast<int32_t>(recv_rows_per_peer_.size());
  expert_offsets_.assign(my_num_slots_ + 1, 0);
  for (int32_t slot = 0; slot < my_num_slots_; ++slot) {
    int64_t rows = 0;
    for (int32_t peer = 0; peer < world_size; ++peer) {
      rows += recv_slot_counts_[peer * my_num_slots_ + slot];
    }
    expert_offsets_[slot + 1] = expert_offsets_[slot] + rows;
  }
  const int64_t num_rows = expert_offsets_[my_num_slots_];
  char* grouped = ReserveBytes(&expert_in_, num_rows * row_bytes);
  const char* received = reinterpret_cast<const char*>(recv_rows_.data());
  // The receive buffer is (peer, slot)-major; walk it once, appending each block to its slot.
  std::vector<int64_t>& fill = slot_cursor_;
  fill.assign(expert_offsets_.begin(), expert_offsets_.end() - 1);
  int64_t src_row = 0;
  for (int32_t peer = 0; peer < world_size; ++peer) {
    for (int32_t slot = 0; slot < my_num_slots_; ++slot) {
      const int64_t rows = recv_slot_counts_[peer * my_num_slots_ + slot];
      if (rows > 0) {
        std::memcpy(grouped + fill[slot] * row_bytes, received + src_row * row_bytes,
                    rows * row_bytes);
      }
      fill[slot] += rows;
      src_row += rows;
    }
  }
}

absl::Status MoeDispatcher::ReturnRows(int64_t row_bytes) {
  const int32_t world_size = static_cast<int32_t>(recv_rows_per_peer_.size());
  const int64_t num_rows = expert_offsets_[my_num_slots_];
  char* back = ReserveBytes(&return_rows_, num_rows * row_bytes);
  const char* computed = reinterpret_cast<const char*>(expert_out_.data());
  std::vector<int64_t>& fill = slot_cursor_;
  fill.assign(expert_offsets_.begin(), expert_offsets_.end() - 1);
  int64_t dst_row = 0;
  for (int32_t peer = 0; peer < world_size; ++peer) {
    for (int32_t slot = 0; slot < my_num_slots_; ++slot) {
      const int64_t rows = recv_slot_counts_[peer * my_num_slots_ + slot];
      if (rows > 0) {
        std::memcpy(back + dst_row * row_bytes, computed + fill[slot] * row_bytes,
                    rows * row_bytes);
      }
      fill[slot] += rows;
      dst_row += rows;
    }
  }
  ReserveBytes(&result_rows_, static_cast<int64_t>(routed_position_.size()) * row_bytes);
  DescribeRows(return_rows_.data(), recv_rows_per_peer_, row_bytes, &send_desc_);
  DescribeRows(result_rows_.data(), send_rows_per_peer_, row_bytes, &recv_desc_);
  return comm_->AllToAllV(send_desc_, recv_desc_);
}

void MoeDispatcher::Combine(int64_t num_tokens, int64_t hidden, int64_t k,
                            const float* topk_weights, float* out) const {
  for (int64_t t = 0; t < num_tokens; ++t) {
    float* dst = out + t * hidden;
    std::fill(dst, dst + hidden, 0.0f);
    for (int64_t j = 0; j < k; ++j) {
      const float* y = result_rows_.data() + routed_position_[t * k + j] * hidden;
      if (options_.scale_input_by_weight) {
        for (int64_t h = 0; h < hidden; ++h) dst[h] += y[h];
      } else {
        const float weight = topk_weights[t * k + j];
        for (int64_t h = 0; h < hidden; ++h) dst[h] += weight * y[h];
      }
    }
  }
}

void MoeDispatcher::FillStats(int64_t row_bytes, DispatchStats* stats) const {
  stats->rows_sent_per_peer = send_rows_per_peer_;
  stats->rows_received_per_peer = recv_rows_per_peer_;
  stats->bytes_sent_per_peer.resize(send_rows_per_peer_.size());
  stats->bytes_received_per_peer.resize(recv_rows_per_peer_.size());
  for (size_t peer = 0; peer < send_rows_per_peer_.size(); ++peer) {
    stats->bytes_sent_per_peer[peer] = send_rows_per_peer_[peer] * row_bytes;
    stats->bytes_received_per_peer[peer] = recv_rows_per_peer_[peer] * row_bytes;
  }
  stats->rows_per_local_slot.resize(my_num_slots_);
  for (int32_t slot = 0; slot < my_num_slots_; ++slot) {
    stats->rows_per_local_slot[slot] = expert_offsets_[slot + 1] - expert_offsets_[slot];
  }
}

absl::Status MoeDispatcher::Run(const LayerPlacement& placement, const float* x, int64_t num_tokens,
                                int64_t hidden, const int32_t* topk_ids, const float* topk_weights,
                                int64_t k, const GroupedExpertFn& experts, float* out,
                                DispatchStats* stats) {
  absl::Status valid = Validate(placement, x, num_tokens, hidden, topk_ids, topk_weights, k, out);
  if (!valid.ok()) return AbortWith(valid);
  const int64_t row_bytes = hidden * static_cast<int64_t>(sizeof(float));
  const absl::Time start = absl::Now();
  Route(placement, num_tokens * k, topk_ids);
  PackSendRows(x, hidden, k, topk_weights);
  SY_RETURN_IF_ERROR(ExchangeSlotCounts(placement));
  SY_RETURN_IF_ERROR(ExchangeRows(row_bytes));
  GroupBySlot(row_bytes);
  const absl::Time dispatched = absl::Now();
  const int64_t num_rows = expert_offsets_[my_num_slots_];
  float* expert_out = Reserve(&expert_out_, num_rows * hidden);
  absl::Status expert_status =
      experts(expert_in_.data(), expert_offsets_.data(), my_num_slots_, hidden, expert_out);
  if (!expert_status.ok()) {
    return AbortWith(absl::Status(
        expert_status.code(),
        absl::StrCat("moe experts on rank ", comm_->rank(), ": ", expert_status.message())));
  }
  const absl::Time computed = absl::Now();
  SY_RETURN_IF_ERROR(ReturnRows(row_bytes));
  Combine(num_tokens, hidden, k, topk_weights, out);
  if (stats != nullptr) {
    FillStats(row_bytes, stats);
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
  MoeDispatcher dispatcher(&comm, options);
  return dispatcher.Run(placement, x, num_tokens, hidden, topk_ids, topk_weights, k, experts, out,
                        stats);
}

}  // namespace switchyard
