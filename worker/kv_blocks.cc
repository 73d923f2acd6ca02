#include "worker/kv_blocks.h"

#include "absl/strings/str_cat.h"

namespace switchyard {

BlockAllocator::BlockAllocator(int64_t num_blocks) : num_total_(num_blocks) {
  free_.reserve(num_blocks);
  for (int64_t b = num_blocks - 1; b >= 0; --b) free_.push_back(static_cast<int32_t>(b));
}

absl::StatusOr<std::vector<int32_t>> BlockAllocator::Allocate(int64_t num_blocks) {
  if (num_blocks > num_free()) {
    return absl::ResourceExhaustedError(absl::StrCat("KV cache: asked for ", num_blocks,
                                                     " blocks, ", num_free(), " of ", num_total_,
                                                     " free"));
  }
  std::vector<int32_t> blocks(free_.end() - num_blocks, free_.end());
  free_.resize(free_.size() - num_blocks);
  return blocks;
}

void BlockAllocator::Free(std::span<const int32_t> blocks) {
  free_.insert(free_.end(), blocks.begin(), blocks.end());
}

}  // namespace switchyard
