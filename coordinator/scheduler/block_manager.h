// KV-block accounting of one worker's pool, with its prefix-cache index. The coordinator keeps one
// BlockManager per worker; the worker only holds the physical blocks.
//
// Every block is in exactly one of three states:
//   free       ref_count == 0, not cached: on the free stack;
//   evictable  ref_count == 0, cached (has a hash): on the LRU list, reusable by a later hit;
//   in use     ref_count  > 0 (a cached block may be shared by several sequences).
// Allocate takes a free block first and evicts the least recently released evictable block only
// when no free block is left, dropping its hash. Release of a cached block appends it to the LRU
// tail, so a sequence that releases its blocks last-to-first leaves its prefix to be evicted last.
//
// All operations are O(1) (hash-map lookups and an intrusive doubly linked list); nothing
// allocates after construction except the hash map's growth. Not thread-safe: the scheduler's
// thread owns it.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"

namespace switchyard {

class BlockManager {
 public:
  explicit BlockManager(int64_t num_blocks);

  BlockManager(const BlockManager&) = delete;
  BlockManager& operator=(const BlockManager&) = delete;
  BlockManager(BlockManager&&) = default;
  BlockManager& operator=(BlockManager&&) = default;

  int64_t num_blocks() const { return static_cast<int64_t>(ref_counts_.size()); }
  // Blocks Allocate can still hand out: free plus evictable.
  int64_t num_allocatable() const { return static_cast<int64_t>(free_.size()) + num_evictable_; }
  int64_t num_evictable() const { return num_evictable_; }
  int64_t num_in_use() const { return num_blocks() - num_allocatable(); }
  int64_t num_cached() const { return static_cast<int64_t>(hash_to_block_.size()); }
  int64_t num_evictions() const { return num_evictions_; }

  // A block with ref_count 1, or -1 when none is allocatable. Evicts the LRU evictable block
  // when the free stack is empty.
  int32_t Allocate();
  // Appends `num_blocks` blocks to `out`, or returns false and changes nothing.
  bool AllocateMany(int64_t num_blocks, std::vector<int32_t>* out);

  // The cached block holding `hash`, or -1.
  int32_t Lookup(uint64_t hash) const;
  // Takes one more reference on a block (e.g. a prefix-cache hit); an evictable block leaves
  // the LRU list. REQUIRES: block in range and (in use or cached).
  void Acquire(int32_t block);
  // Drops one reference. At zero, a cached block becomes evictable (LRU tail), any other block
  // free. REQUIRES: ref_count(block) > 0.
  void Release(int32_t block);
  // Records that in-use `block` is full and holds the tokens identified by `hash`. Returns false
  // (and changes nothing) when the block is already cached or another block holds `hash`.
  bool Register(int32_t block, uint64_t hash);

  int32_t ref_count(int32_t block) const { return ref_counts_[block]; }
  bool is_cached(int32_t block) const { return cached_[block]; }
  uint64_t hash_of(int32_t block) const { return hashes_[block]; }

  // Checks every internal invariant (states partition the pool, LRU links, hash index). O(pool).
  absl::Status Validate() const;

 private:
  void LruPushBack(int32_t block);
  void LruRemove(int32_t block);

  std::vector<int32_t> ref_counts_;
  std::vector<uint64_t> hashes_;
  std::vector<char> cached_;
  std::vector<int32_t> lru_prev_, lru_next_;  // -1 terminated
  int32_t lru_head_ = -1, lru_tail_ = -1;     // head: least recently released
  int64_t num_evictable_ = 0;
  int64_t num_evictions_ = 0;
  std::vector<int32_t> free_;  // stack
  absl::flat_hash_map<uint64_t, int32_t> hash_to_block_;
};

}  // namespace switchyard
