#include "coordinator/scheduler/block_manager.h"

#include <vector>

#include "coordinator/scheduler/prefix_cache.h"
#include "gtest/gtest.h"

namespace switchyard {
namespace {

TEST(BlockManagerTest, AllocateReleaseRefCounts) {
  BlockManager blocks(4);
  EXPECT_EQ(blocks.num_allocatable(), 4);
  std::vector<int32_t> got;
  ASSERT_TRUE(blocks.AllocateMany(3, &got));
  EXPECT_EQ(got, (std::vector<int32_t>{0, 1, 2}));
  EXPECT_EQ(blocks.num_in_use(), 3);
  EXPECT_FALSE(blocks.AllocateMany(2, &got)) << "only one block left";
  EXPECT_EQ(got.size(), 3u) << "a failed AllocateMany takes nothing";
  EXPECT_EQ(blocks.ref_count(1), 1);
  ASSERT_TRUE(blocks.Register(1, 111));
  blocks.Acquire(1);  // shared by a second sequence
  EXPECT_EQ(blocks.ref_count(1), 2);
  blocks.Release(1);
  EXPECT_EQ(blocks.num_in_use(), 3);
  blocks.Release(1);
  EXPECT_EQ(blocks.ref_count(1), 0);
  EXPECT_EQ(blocks.num_evictable(), 1);
  EXPECT_EQ(blocks.num_in_use(), 2);
  blocks.Release(0);  // not cached: straight back to the free stack
  EXPECT_EQ(blocks.num_evictable(), 1);
  EXPECT_EQ(blocks.num_allocatable(), 3);
  EXPECT_TRUE(blocks.Validate().ok()) << blocks.Validate();
}

TEST(BlockManagerTest, FreeBlocksBeforeEvictingCachedOnes) {
  BlockManager blocks(3);
  std::vector<int32_t> got;
  ASSERT_TRUE(blocks.AllocateMany(3, &got));
  ASSERT_TRUE(blocks.Register(0, 100));
  blocks.Release(0);  // evictable
  blocks.Release(2);  // free
  EXPECT_EQ(blocks.Allocate(), 2) << "a free block is used before an evictable one";
  EXPECT_EQ(blocks.Lookup(100), 0) << "the cached block survived";
  EXPECT_EQ(blocks.Allocate(), 0) << "then the cached block is evicted";
  EXPECT_EQ(blocks.Lookup(100), -1);
  EXPECT_FALSE(blocks.is_cached(0));
  EXPECT_EQ(blocks.num_evictions(), 1);
  EXPECT_EQ(blocks.Allocate(), -1);
  EXPECT_TRUE(blocks.Validate().ok()) << blocks.Validate();
}

TEST(BlockManagerTest, EvictsLeastRecentlyReleasedFirst) {
  BlockManager blocks(4);
  std::vector<int32_t> got;
  ASSERT_TRUE(blocks.AllocateMany(4, &got));
  for (int32_t b = 0; b < 4; ++b) ASSERT_TRUE(blocks.Register(b, 1000 + b));
  blocks.Release(2);
  blocks.Release(0);
  blocks.Release(3);
  blocks.Release(1);
  // A hit on block 0 takes it off the LRU list; released again it becomes the newest.
  ASSERT_EQ(blocks.Lookup(1000), 0);
  blocks.Acquire(0);
  blocks.Release(0);
  EXPECT_EQ(blocks.Allocate(), 2);
  EXPECT_EQ(blocks.Allocate(), 3);
  EXPECT_EQ(blocks.Allocate(), 1);
  EXPECT_EQ(blocks.Allocate(), 0);
  EXPECT_EQ(blocks.num_cached(), 0);
  EXPECT_TRUE(blocks.Validate().ok()) << blocks.Validate();
}

TEST(BlockManagerTest, RegisterRefusesDuplicates) {
  BlockManager blocks(3);
  std::vector<int32_t> got;
  ASSERT_TRUE(blocks.AllocateMany(3, &got));
  EXPECT_TRUE(blocks.Register(0, 7));
  EXPECT_FALSE(blocks.Register(1, 7)) << "another block already holds hash 7";
  EXPECT_FALSE(blocks.Register(0, 8)) << "block 0 is already cached";
  EXPECT_EQ(blocks.Lookup(7), 0);
  EXPECT_EQ(blocks.Lookup(8), -1);
  blocks.Release(1);
  EXPECT_EQ(blocks.num_evictable(), 0) << "the uncached duplicate is simply free";
  EXPECT_TRUE(blocks.Validate().ok()) << blocks.Validate();
}

TEST(PrefixHashTest, ChainsParentHash) {
  const std::vector<int32_t> a = {1, 2, 3, 4, 5, 6, 7, 8};
  const std::vector<int32_t> b = {9, 9, 9, 9, 5, 6, 7, 8};  // same second block, other prefix
  std::vector<uint64_t> ha, hb, ha2;
  ExtendBlockHashes(a, 4, 10, &ha);
  ExtendBlockHashes(b, 4, 10, &hb);
  ASSERT_EQ(ha.size(), 2u);
  ASSERT_EQ(hb.size(), 2u);
  EXPECT_NE(ha[0], hb[0]);
  EXPECT_NE(ha[1], hb[1]) << "same tokens after a different prefix must hash differently";
  EXPECT_EQ(ha[1], HashBlockTokens(ha[0], std::span<const int32_t>(a).subspan(4, 4)));
  EXPECT_EQ(ha[0], HashBlockTokens(kRootBlockHash, std::span<const int32_t>(a).first(4)));
  // Extension is incremental and stops at full blocks / the cap.
  ExtendBlockHashes(std::span<const int32_t>(a).first(7), 4, 10, &ha2);
  EXPECT_EQ(ha2.size(), 1u);
  ExtendBlockHashes(a, 4, 10, &ha2);
  EXPECT_EQ(ha2, ha);
}

TEST(PrefixHashTest, CountCachedPrefixStopsAtFirstMiss) {
  BlockManager blocks(4);
  std::vector<int32_t> got;
  ASSERT_TRUE(blocks.AllocateMany(3, &got));
  ASSERT_TRUE(blocks.Register(0, 10));
  ASSERT_TRUE(blocks.Register(2, 30));  // block for hash 20 missing
  const std::vector<uint64_t> hashes = {10, 20, 30};
  EXPECT_EQ(CountCachedPrefixBlocks(blocks, hashes), 1);
  EXPECT_EQ(CountCachedPrefixBlocks(blocks, std::span<const uint64_t>(hashes).first(0)), 0);
}

}  // namespace
}  // namespace switchyard
