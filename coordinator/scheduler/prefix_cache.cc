#include "coordinator/scheduler/prefix_cache.h"

#include <xxhash.h>

#include <algorithm>

#include "coordinator/scheduler/block_manager.h"

namespace switchyard {

uint64_t HashBlockTokens(uint64_t parent_hash, std::span<const int32_t> tokens) {
  static_assert(sizeof(int32_t) == 4);
  return XXH64(tokens.data(), tokens.size() * sizeof(int32_t), parent_hash);
}

void ExtendBlockHashes(std::span<const int32_t> token_ids, int64_t block_size,
                       int64_t max_num_blocks, std::vector<uint64_t>* hashes) {
  const int64_t num_full = static_cast<int64_t>(token_ids.size()) / block_size;
  const int64_t target = std::min(max_num_blocks, num_full);
  for (int64_t block_idx = static_cast<int64_t>(hashes->size()); block_idx < target; ++block_idx) {
    const uint64_t parent = block_idx == 0 ? kRootBlockHash : (*hashes)[block_idx - 1];
    hashes->push_back(
        HashBlockTokens(parent, token_ids.subspan(block_idx * block_size, block_size)));
  }
}

int64_t CountCachedPrefixBlocks(const BlockManager& blocks, std::span<const uint64_t> hashes) {
  int64_t num_hits = 0;
  for (uint64_t hash : hashes) {
    if (blocks.Lookup(hash) < 0) break;
    ++num_hits;
  }
  return num_hits;
}

}  // namespace switchyard
