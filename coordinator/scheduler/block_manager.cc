#include "coordinator/scheduler/block_manager.h"

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace switchyard {

BlockManager::BlockManager(int64_t num_blocks)
    : ref_counts_(num_blocks, 0),
      hashes_(num_blocks, 0),
      cached_(num_blocks, 0),
      lru_prev_(num_blocks, -1),
      lru_next_(num_blocks, -1) {
  free_.reserve(num_blocks);
  // Lowest ids on top of the stack: block 0 is handed out first (easier to read in tests).
  for (int64_t block = num_blocks - 1; block >= 0; --block) {
    free_.push_back(static_cast<int32_t>(block));
  }
}

int32_t BlockManager::Allocate() {
  int32_t block;
  if (!free_.empty()) {
    block = free_.back();
    free_.pop_back();
  } else if (lru_head_ >= 0) {
    block = lru_head_;
    LruRemove(block);
    hash_to_block_.erase(hashes_[block]);
    cached_[block] = 0;
    hashes_[block] = 0;
    ++num_evictions_;
  } else {
    return -1;
  }
  ref_counts_[block] = 1;
  return block;
}

bool BlockManager::AllocateMany(int64_t num_blocks, std::vector<int32_t>* out) {
  if (num_blocks > num_allocatable()) return false;
  for (int64_t i = 0; i < num_blocks; ++i) out->push_back(Allocate());
  return true;
}

int32_t BlockManager::Lookup(uint64_t hash) const {
  auto it = hash_to_block_.find(hash);
  return it == hash_to_block_.end() ? -1 : it->second;
}

void BlockManager::Acquire(int32_t block) {
  SY_DCHECK(block >= 0 && block < num_blocks());
  SY_DCHECK(ref_counts_[block] > 0 || cached_[block]);
  if (ref_counts_[block] == 0) LruRemove(block);
  ++ref_counts_[block];
}

void BlockManager::Release(int32_t block) {
  SY_DCHECK(block >= 0 && block < num_blocks());
  SY_DCHECK(ref_counts_[block] > 0);
  if (--ref_counts_[block] > 0) return;
  if (cached_[block]) {
    LruPushBack(block);
  } else {
    free_.push_back(block);
  }
}

bool BlockManager::Register(int32_t block, uint64_t hash) {
  SY_DCHECK(ref_counts_[block] > 0);
  if (cached_[block]) return false;
  auto [it, inserted] = hash_to_block_.try_emplace(hash, block);
  if (!inserted) return false;
  cached_[block] = 1;
  hashes_[block] = hash;
  return true;
}

void BlockManager::LruPushBack(int32_t block) {
  lru_prev_[block] = lru_tail_;
  lru_next_[block] = -1;
  if (lru_tail_ >= 0) {
    lru_next_[lru_tail_] = block;
  } else {
    lru_head_ = block;
  }
  lru_tail_ = block;
  ++num_evictable_;
}

void BlockManager::LruRemove(int32_t block) {
  const int32_t prev = lru_prev_[block], next = lru_next_[block];
  if (prev >= 0) {
    lru_next_[prev] = next;
  } else {
    lru_head_ = next;
  }
  if (next >= 0) {
    lru_prev_[next] = prev;
  } else {
    lru_tail_ = prev;
  }
  lru_prev_[block] = lru_next_[block] = -1;
  --num_evictable_;
}

absl::Status BlockManager::Validate() const {
  const int64_t n = num_blocks();
  std::vector<int> seen(n, 0);  // 1 free, 2 evictable
  for (int32_t block : free_) {
    if (block < 0 || block >= n || seen[block] != 0) {
      return absl::InternalError(
          absl::StrCat("free stack: block ", block, " repeated or out of range"));
    }
    if (ref_counts_[block] != 0 || cached_[block]) {
      return absl::InternalError(absl::StrCat("free block ", block, " has ref_count ",
                                              ref_counts_[block], ", cached ",
                                              int{cached_[block]}));
    }
    seen[block] = 1;
  }
  int64_t num_lru = 0;
  for (int32_t block = lru_head_, prev = -1; block >= 0; prev = block, block = lru_next_[block]) {
    if (seen[block] != 0 || lru_prev_[block] != prev || ++num_lru > n) {
      return absl::InternalError(absl::StrCat("LRU list broken at block ", block));
    }
    if (ref_counts_[block] != 0 || !cached_[block]) {
      return absl::InternalError(absl::StrCat("evictable block ", block, " has ref_count ",
                                              ref_counts_[block], ", cached ",
                                              int{cached_[block]}));
    }
    seen[block] = 2;
  }
  if (num_lru != num_evictable_) {
    return absl::InternalError(
        absl::StrCat("LRU holds ", num_lru, " blocks, counter says ", num_evictable_));
  }
  for (int64_t block = 0; block < n; ++block) {
    if (seen[block] == 0 && ref_counts_[block] <= 0) {
      return absl::InternalError(absl::StrCat("block ", block, " is lost: ref_count ",
                                              ref_counts_[block], ", neither free nor evictable"));
    }
  }
  int64_t num_flagged = 0;
  for (int64_t block = 0; block < n; ++block) num_flagged += cached_[block] ? 1 : 0;
  if (num_flagged != static_cast<int64_t>(hash_to_block_.size())) {
    return absl::InternalError(
        absl::StrCat(num_flagged, " blocks flagged cached, index holds ", hash_to_block_.size()));
  }
  for (const auto& [hash, block] : hash_to_block_) {
    if (!cached_[block] || hashes_[block] != hash) {
      return absl::InternalError(absl::StrCat("hash index entry for block ", block, " is stale"));
    }
  }
  return absl::OkStatus();
}

}  // namespace switchyard
