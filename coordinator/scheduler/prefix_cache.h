// Prefix-cache hashing: the identity of a full KV block is the hash of its tokens chained with the
// hash of everything before it, so the same tokens after a different prefix get a different hash
// (vLLM's automatic prefix caching; SGLang gets the same effect from its radix tree).
//
//   hash(block 0) = XXH64(tokens of block 0, seed = kRootBlockHash)
//   hash(block i) = XXH64(tokens of block i, seed = hash(block i - 1))
//
// Tokens are hashed as their little-endian int32 bytes. A 64-bit hash identifies a block without
// comparing tokens: with n cached blocks a collision has probability about n^2 / 2^65 (1e-9 for
// 200k blocks), which we accept as vLLM does for its default hash.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace switchyard {

class BlockManager;

inline constexpr uint64_t kRootBlockHash = 0x5377697463687961ull;  // "Switchya"

// The hash of one full block of `tokens`, after the block whose hash is `parent_hash`.
uint64_t HashBlockTokens(uint64_t parent_hash, std::span<const int32_t> tokens);

// Extends `hashes` (the chain for the leading full blocks of `token_ids`) until it covers
// min(max_num_blocks, token_ids.size() / block_size) blocks. Costs O(block_size) per new block.
void ExtendBlockHashes(std::span<const int32_t> token_ids, int64_t block_size,
                       int64_t max_num_blocks, std::vector<uint64_t>* hashes);

// How many leading blocks of `hashes` `blocks` caches (referenced or evictable).
int64_t CountCachedPrefixBlocks(const BlockManager& blocks, std::span<const uint64_t> hashes);

}  // namespace switchyard
