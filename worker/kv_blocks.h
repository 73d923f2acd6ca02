// KV-cache block accounting for a single process: which physical blocks are free. (In a cluster the
// coordinator does this accounting per worker; the worker only holds the blocks.)
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/statusor.h"

namespace switchyard {

// Not thread-safe.
class BlockAllocator {
 public:
  explicit BlockAllocator(int64_t num_blocks);
  // `num_blocks` free block ids, or RESOURCE_EXHAUSTED (nothing taken) when fewer are free.
  absl::StatusOr<std::vector<int32_t>> Allocate(int64_t num_blocks);
  // Returns blocks to the pool. REQUIRES: each was allocated and not yet freed.
  void Free(std::span<const int32_t> blocks);
  int64_t num_free() const { return static_cast<int64_t>(free_.size()); }
  int64_t num_total() const { return num_total_; }

 private:
  int64_t num_total_;
  std::vector<int32_t> free_;  // a stack: recently freed blocks are reused first
};

}  // namespace switchyard
