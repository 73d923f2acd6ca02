// Attention over a paged KV cache on the CPU (fp32): the reference for the CUDA attention kernels.
//
// The cache of one layer is [num_blocks, block_size, num_kv_heads, head_dim] for keys and the same
// for values. A sequence's block table lists its blocks in position order, so position p lives in
// block block_table[p / block_size], row p % block_size ("slot" = block * block_size + row).
#pragma once

#include <cstdint>

namespace switchyard::kernels::cpu {

// One sequence's share of a batched attention call.
struct AttentionSeq {
  int64_t q_row_begin = 0;   // first row of this sequence in q / out
  int64_t num_q = 0;         // query tokens this step (a prefill chunk, or 1 when decoding)
  int64_t start_pos = 0;     // position of the first query token; keys 0..start_pos+num_q-1 exist
  const int32_t* block_table = nullptr;
};

// The cache row ("slot") holding position `pos` of a sequence with this block table.
inline int64_t KvSlot(const int32_t* block_table, int64_t pos, int64_t block_size) {
  return static_cast<int64_t>(block_table[pos / block_size]) * block_size + pos % block_size;
}

// Writes k/v rows ([num_tokens, num_kv_heads * head_dim]) into the cache at the given slots.
void WriteKvCache(const float* k, const float* v, const int64_t* slots, int64_t num_tokens,
                  int64_t kv_dim, float* k_cache, float* v_cache);

// out[row, h, :] = softmax(scale * q[row, h, :] . K^T) V over the causal window of that row's
// position p: keys max(0, chunk_start(p))..p, where chunk_start(p) = p - p % chunk_size when
// chunk_size > 0 (Llama 4's chunked attention) and 0 otherwise. Query head h reads KV head
// h / (num_heads / num_kv_heads) (grouped-query attention).
void PagedAttention(const float* q, const float* k_cache, const float* v_cache,
                    const AttentionSeq* seqs, int64_t num_seqs, int64_t num_heads,
                    int64_t num_kv_heads, int64_t head_dim, int64_t block_size, float scale,
                    int64_t chunk_size, float* out);

}  // namespace switchyard::kernels::cpu
