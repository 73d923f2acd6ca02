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

// Packs the offsets of `buffer` (counts already set), reserves its storage and points it there.
void LayOut(std::vector<float>* storage, AllToAllVBuffer* buffer) {
  buffer->data = ReserveBytes(storage, PackOffsets(buffer));
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
  if (num_tokens < 0 || num_tokens > std::numeric_limits<int32_t>::max() || hidden < 1 || k < 1) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": expected 0 <= num_tokens < 2^31, ",
                                                   "hidden >= 1 and k >= 1, got ", num_tokens, ", ",
                                                   hidden, ", ", k));
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
      int32_t row = static_cast<int32_t>(t);  // local choices read x in place
      if (rank != me) {
        std::vector<int32_t>& rows = token_rows_to_[rank];
        if (last_token_to_[rank] != t) {
          last_token_to_[rank] = t;
          rows.push_back(static_cast<int32_t>(t));
        }
        row = static_cast<int32_t>(rows.size()) - 1;
      }
      routed_rank_[i] = rank;
      routed_entry_[i] = static_cast<int32_t>(entries_to_[rank].size());
      entries_to_[rank].push_back(Entry{row, slot.local_slot, topk_weights[i]});
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
  SY_RETURN_IF_ERROR(comm_->AllToAllV(send_desc_, recv_desc_));
  entries_from_.assign(world_size, 0);
  for (int32_t peer = 0; peer < world_size; ++peer) {
    for (int64_t slot = 0; slot < my_num_slots_; ++slot) {
      entries_from_[peer] += count_recv_[peer * stride + 1 + slot];
    }
  }
  return absl::OkStatus();
}

absl::Status MoeDispatcher::ExchangeRows(const float* x, int64_t hidden) {
  const int32_t world_size = comm_->world_size(), me = comm_->rank();
  const int64_t row_bytes = hidden * static_cast<int64_t>(sizeof(float));
  const int64_t stride = my_num_slots_ + 1;
  send_desc_.counts_bytes.assign(world_size, 0);
  recv_desc_.counts_bytes.assign(world_size, 0);
  for (int32_t peer = 0; peer < world_size; ++peer) {
    if (peer == me) continue;  // local choices never enter the exchange
    send_desc_.counts_bytes[peer] =
        static_cast<int64_t>(token_rows_to_[peer].size()) * row_bytes +
        static_cast<int64_t>(entries_to_[peer].size()) * kDispatchEntryBytes;
    recv_desc_.counts_bytes[peer] =
        count_recv_[peer * stride] * row_bytes + entries_from_[peer] * kDispatchEntryBytes;
  }
  LayOut(&send_rows_, &send_desc_);
  LayOut(&recv_rows_, &recv_desc_);
  dispatch_recv_offsets_ = recv_desc_.offsets_bytes;
  // Pack straight from x into the final order: [token rows][entries] per destination.
  for (int32_t peer = 0; peer < world_size; ++peer) {
    if (peer == me) continue;
    char* region = static_cast<char*>(send_desc_.data) + send_desc_.offsets_bytes[peer];
    const std::vector<int32_t>& tokens = token_rows_to_[peer];
    for (size_t row = 0; row < tokens.size(); ++row) {
      std::memcpy(region + row * row_bytes, x + tokens[row] * hidden, row_bytes);
    }
    const std::vector<Entry>& entries = entries_to_[peer];
    if (!entries.empty()) {
      std::memcpy(region + tokens.size() * row_bytes, entries.data(),
                  entries.size() * kDispatchEntryBytes);
    }
  }
  return comm_->AllToAllV(send_desc_, recv_desc_);
}

absl::Status MoeDispatcher::Expand(const float* x, int64_t num_tokens, int64_t hidden) {
  const int32_t world_size = comm_->world_size(), me = comm_->rank();
  const int64_t row_bytes = hidden * static_cast<int64_t>(sizeof(float));
  const int64_t num_slots = my_num_slots_, stride = num_slots + 1;
  // Slot-major, then source rank: slot_cursor_[p * num_slots + s] is where p's rows of s start.
  expert_offsets_.assign(num_slots + 1, 0);
  slot_cursor_.resize(world_size * num_slots);
  for (int64_t slot = 0; slot < num_slots; ++slot) {
    int64_t position = expert_offsets_[slot];
    for (int32_t peer = 0; peer < world_size; ++peer) {
      slot_cursor_[peer * num_slots + slot] = position;
      position += count_recv_[peer * stride + 1 + slot];
    }
    expert_offsets_[slot + 1] = position;
  }
  float* expert_in =
      reinterpret_cast<float*>(ReserveBytes(&expert_in_, expert_offsets_[num_slots] * row_bytes));
  entry_pos_offsets_.resize(world_size + 1);
  entry_pos_offsets_[0] = 0;
  for (int32_t peer = 0; peer < world_size; ++peer) {
    entry_pos_offsets_[peer + 1] = entry_pos_offsets_[peer] + entries_from_[peer];
  }
  entry_pos_.resize(entry_pos_offsets_[world_size]);
  for (int32_t peer = 0; peer < world_size; ++peer) {
    // This rank's own choices read x; a peer's read its token rows in the receive buffer.
    const float* rows = x;
    int64_t num_rows = num_tokens;
    const char* entries = reinterpret_cast<const char*>(entries_to_[me].data());
    if (peer != me) {
      const char* region =
          static_cast<const char*>(recv_desc_.data) + recv_desc_.offsets_bytes[peer];
      rows = reinterpret_cast<const float*>(region);
      num_rows = count_recv_[peer * stride];
      entries = region + num_rows * row_bytes;
    }
    int64_t* cursor = slot_cursor_.data() + peer * num_slots;
    int64_t* positions = entry_pos_.data() + entry_pos_offsets_[peer];
    for (int64_t e = 0; e < entries_from_[peer]; ++e) {
      Entry entry;
      std::memcpy(&entry, entries + e * kDispatchEntryBytes, sizeof(entry));
      if (entry.slot < 0 || entry.slot >= num_slots || entry.row < 0 || entry.row >= num_rows) {
        return absl::InternalError(absl::StrCat(
            "moe dispatch on rank ", me, ": entry ", e, " from rank ", peer, " names row ",
            entry.row, " of ", num_rows, " and slot ", entry.slot, " of ", num_slots));
      }
      const int64_t position = cursor[entry.slot]++;
      positions[e] = position;
      const float* src = rows + entry.row * hidden;
      float* dst = expert_in + position * hidden;
      if (options_.scale_input_by_weight) {
        for (int64_t h = 0; h < hidden; ++h) dst[h] = src[h] * entry.weight;
      } else {
        std::memcpy(dst, src, row_bytes);
      }
    }
  }
  return absl::OkStatus();
}

absl::Status MoeDispatcher::ReturnRows(int64_t hidden) {
  const int32_t world_size = comm_->world_size(), me = comm_->rank();
  const int64_t row_bytes = hidden * static_cast<int64_t>(sizeof(float));
  const int64_t stride = my_num_slots_ + 1;
  send_desc_.counts_bytes.assign(world_size, 0);
  recv_desc_.counts_bytes.assign(world_size, 0);
  for (int32_t peer = 0; peer < world_size; ++peer) {
    if (peer == me) continue;  // local results are combined from the expert output in place
    if (options_.sum_per_rank) {
      send_desc_.counts_bytes[peer] = count_recv_[peer * stride] * row_bytes;
      recv_desc_.counts_bytes[peer] = static_cast<int64_t>(token_rows_to_[peer].size()) * row_bytes;
    } else {
      send_desc_.counts_bytes[peer] = entries_from_[peer] * row_bytes;
      recv_desc_.counts_bytes[peer] = static_cast<int64_t>(entries_to_[peer].size()) * row_bytes;
    }
  }
  LayOut(&return_rows_, &send_desc_);
  LayOut(&result_rows_, &recv_desc_);
  const char* computed = reinterpret_cast<const char*>(expert_out_.data());
  for (int32_t peer = 0; peer < world_size; ++peer) {
    if (peer == me) continue;
    char* region = static_cast<char*>(send_desc_.data) + send_desc_.offsets_bytes[peer];
    if (options_.sum_per_rank) {
      PackPartialSums(peer, hidden, region);
      continue;
    }
    const int64_t* positions = entry_pos_.data() + entry_pos_offsets_[peer];
    for (int64_t e = 0; e < entries_from_[peer]; ++e) {
      std::memcpy(region + e * row_bytes, computed + positions[e] * row_bytes, row_bytes);
    }
  }
  return comm_->AllToAllV(send_desc_, recv_desc_);
}

void MoeDispatcher::PackPartialSums(int32_t peer, int64_t hidden, char* region) const {
  // A peer's entries are in its (t, j) order, so a token row's entries are adjacent and in j order.
  const int64_t row_bytes = hidden * static_cast<int64_t>(sizeof(float));
  const int64_t stride = my_num_slots_ + 1;
  const int64_t num_rows = count_recv_[peer * stride];
  const char* received = reinterpret_cast<const char*>(recv_rows_.data());
  const char* entry_bytes = received + dispatch_recv_offsets_[peer] + num_rows * row_bytes;
  const int64_t* positions = entry_pos_.data() + entry_pos_offsets_[peer];
  int32_t previous_row = -1;
  for (int64_t e = 0; e < entries_from_[peer]; ++e) {
    Entry entry;
    std::memcpy(&entry, entry_bytes + e * kDispatchEntryBytes, sizeof(entry));
    const float* y = expert_out_.data() + positions[e] * hidden;
    float* dst = reinterpret_cast<float*>(region + entry.row * row_bytes);
    const float weight = options_.scale_input_by_weight ? 1.0f : entry.weight;
    if (entry.row != previous_row) {
      for (int64_t h = 0; h < hidden; ++h) dst[h] = 0.0f + weight * y[h];
    } else {
      for (int64_t h = 0; h < hidden; ++h) dst[h] += weight * y[h];
    }
    previous_row = entry.row;
  }
}

void MoeDispatcher::Combine(int64_t num_tokens, int64_t hidden, int64_t k,
                            const float* topk_weights, float* out) {
  const int32_t me = comm_->rank();
  const int64_t row_bytes = hidden * static_cast<int64_t>(sizeof(float));
  const float* results = result_rows_.data();
  const float* local = expert_out_.data();
  const int64_t* local_positions = entry_pos_.data() + entry_pos_offsets_[me];
  std::vector<int64_t>& added = last_token_to_;  // per rank: the last token whose sum was added
  added.assign(comm_->world_size(), -1);
  for (int64_t t = 0; t < num_tokens; ++t) {
    float* dst = out + t * hidden;
    bool first = true;
    for (int64_t j = 0; j < k; ++j) {
      const int64_t i = t * k + j;
      const int32_t rank = routed_rank_[i];
      const float* y;
      float weight = options_.scale_input_by_weight ? 1.0f : topk_weights[i];
      const int64_t result_base = rank == me ? 0 : recv_desc_.offsets_bytes[rank] / row_bytes;
      if (rank == me) {
        y = local + local_positions[routed_entry_[i]] * hidden;
      } else if (options_.sum_per_rank) {
        if (added[rank] == t) continue;  // this rank's partial sum is in already
        added[rank] = t;
        y = results + (result_base + entries_to_[rank][routed_entry_[i]].row) * hidden;
        weight = 1.0f;  // weighted on the expert's rank
      } else {
        y = results + (result_base + routed_entry_[i]) * hidden;
      }
      // Accumulated from zero in j order, exactly as a single process would (with sum_per_rank,
      // a remote rank's partial sum comes in at that rank's first choice).
      if (first) {
        for (int64_t h = 0; h < hidden; ++h) dst[h] = 0.0f + weight * y[h];
        first = false;
      } else {
        for (int64_t h = 0; h < hidden; ++h) dst[h] += weight * y[h];
      }
    }
  }
}

void MoeDispatcher::FillStats(int64_t row_bytes, DispatchStats* stats) const {
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
    stats->bytes_sent_per_peer[peer] = sent * row_bytes;
    stats->bytes_received_per_peer[peer] = received * row_bytes;
    if (peer == me) continue;
    const int64_t token_rows_sent = static_cast<int64_t>(token_rows_to_[peer].size());
    const int64_t token_rows_received = count_recv_[peer * stride];
    stats->token_rows_sent_per_peer[peer] = token_rows_sent;
    stats->token_rows_received_per_peer[peer] = token_rows_received;
    stats->dispatch_bytes_sent_per_peer[peer] =
        token_rows_sent * row_bytes + sent * kDispatchEntryBytes;
    stats->dispatch_bytes_received_per_peer[peer] =
        token_rows_received * row_bytes + received * kDispatchEntryBytes;
    stats->combine_bytes_sent_per_peer[peer] =
        (options_.sum_per_rank ? token_rows_received : received) * row_bytes;
    stats->combine_bytes_received_per_peer[peer] =
        (options_.sum_per_rank ? token_rows_sent : sent) * row_bytes;
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
  Route(placement, num_tokens, k, topk_ids, topk_weights);
  SY_RETURN_IF_ERROR(ExchangeCounts(placement));
  SY_RETURN_IF_ERROR(ExchangeRows(x, hidden));
  absl::Status expanded = Expand(x, num_tokens, hidden);
  if (!expanded.ok()) return AbortWith(expanded);
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
  SY_RETURN_IF_ERROR(ReturnRows(hidden));
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
