#include "worker/comm/communicator.h"

#include "absl/strings/str_cat.h"

namespace switchyard {

absl::Status Communicator::AllToAllVHost(const AllToAllVBuffer& send,
                                         const AllToAllVBuffer& recv) {
  if (memory_space() == MemorySpace::kHost) return AllToAllV(send, recv);
  return absl::UnimplementedError(
      absl::StrCat(name(), " rank ", rank(), ": no all-to-all-v over host memory"));
}

absl::Status Communicator::ExchangeCounts(const std::vector<int64_t>& send_counts,
                                          std::vector<int64_t>* recv_counts) {
  const int num_ranks = world_size();
  if (static_cast<int>(send_counts.size()) != num_ranks) {
    return absl::InvalidArgumentError(
        absl::StrCat(name(), " rank ", rank(), ": ExchangeCounts expects ", num_ranks,
                     " send counts (one per rank), got ", send_counts.size()));
  }
  recv_counts->assign(num_ranks, 0);
  AllToAllVBuffer send{const_cast<int64_t*>(send_counts.data()),
                       std::vector<int64_t>(num_ranks, sizeof(int64_t)),
                       {}};
  AllToAllVBuffer recv{recv_counts->data(), std::vector<int64_t>(num_ranks, sizeof(int64_t)), {}};
  PackOffsets(&send);
  PackOffsets(&recv);
  return AllToAllVHost(send, recv);
}

int64_t PackOffsets(AllToAllVBuffer* buffer) {
  buffer->offsets_bytes.resize(buffer->counts_bytes.size());
  int64_t total_bytes = 0;
  for (size_t i = 0; i < buffer->counts_bytes.size(); ++i) {
    buffer->offsets_bytes[i] = total_bytes;
    total_bytes += buffer->counts_bytes[i];
  }
  return total_bytes;
}

absl::Status ValidateAllToAllVBuffer(const AllToAllVBuffer& buffer, int world_size,
                                     const char* side) {
  if (static_cast<int>(buffer.counts_bytes.size()) != world_size ||
      static_cast<int>(buffer.offsets_bytes.size()) != world_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        "all-to-all-v ", side, " buffer: expected ", world_size, " counts and offsets, got ",
        buffer.counts_bytes.size(), " counts and ", buffer.offsets_bytes.size(), " offsets"));
  }
  bool any_bytes = false;
  for (int peer = 0; peer < world_size; ++peer) {
    if (buffer.counts_bytes[peer] < 0 || buffer.offsets_bytes[peer] < 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "all-to-all-v ", side, " buffer: peer ", peer, " has count ", buffer.counts_bytes[peer],
          " and offset ", buffer.offsets_bytes[peer], "; both must be >= 0"));
    }
    any_bytes = any_bytes || buffer.counts_bytes[peer] > 0;
  }
  if (any_bytes && buffer.data == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("all-to-all-v ", side, " buffer: null data with non-zero counts"));
  }
  return absl::OkStatus();
}

bool IsPeerFailure(const absl::Status& status) {
  return status.code() == absl::StatusCode::kDeadlineExceeded ||
         status.code() == absl::StatusCode::kUnavailable ||
         status.code() == absl::StatusCode::kAborted;
}

}  // namespace switchyard
