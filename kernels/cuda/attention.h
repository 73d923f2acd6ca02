// CUDA attention over the paged KV cache (reference: kernels/cpu/attention.h): causal, grouped-
// query, optionally chunked (Llama 4), fp32 softmax with online rescaling (flash-attention style).
//
// Two kernels share one call. Prefill work is split into tiles of up to kAttentionRowsPerTile
// consecutive query rows of one sequence; a block (tile, head) stages 32 keys and values at a time
// in shared memory and every warp (one query row each) reuses them. Decode rows (sequences with
// one query this step) get a block per (row, head) whose warps split the keys and merge their
// partial softmax states at the end. Neither uses tensor cores yet: a later version should move
// QK^T and PV of the prefill kernel onto mma/wgmma, and split long decode contexts over blocks.
#pragma once

#include <cstdint>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

namespace switchyard::kernels::cuda {

inline constexpr int kAttentionRowsPerTile = 8;
inline constexpr int64_t kMaxAttentionHeadDim = 256;

// One sequence of the batch; block_table_begin indexes the flattened block tables.
struct PagedAttentionSeq {
  int64_t q_row_begin = 0;
  int64_t num_q = 0;
  int64_t start_pos = 0;
  int64_t block_table_begin = 0;
};

// Rows [first_q, first_q + num_rows) of sequence seq_idx.
struct AttentionWorkItem {
  int32_t seq_idx = 0;
  int32_t first_q = 0;
  int32_t num_rows = 0;
  int32_t unused = 0;
};

struct PagedAttentionParams {
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t block_size = 0;
  int64_t chunk_size = 0;  // 0 = full causal attention
  float scale = 1.0f;
};

// Splits the sequences into prefill tiles (num_q > 1) and decode rows (num_q == 1), on the host.
void PlanPagedAttention(const PagedAttentionSeq* seqs, int64_t num_seqs,
                        std::vector<AttentionWorkItem>* prefill_items,
                        std::vector<AttentionWorkItem>* decode_items);

// Writes k/v rows ([num_tokens, kv_dim]) into the caches ([num_slots, kv_dim]) at slots[t]
// (device int64; a negative slot is skipped).
cudaError_t LaunchWriteKvCache(const float* k, const float* v, const int64_t* slots,
                               int64_t num_tokens, int64_t kv_dim, float* k_cache, float* v_cache,
                               cudaStream_t stream);
cudaError_t LaunchWriteKvCache(const __nv_bfloat16* k, const __nv_bfloat16* v,
                               const int64_t* slots, int64_t num_tokens, int64_t kv_dim,
                               __nv_bfloat16* k_cache, __nv_bfloat16* v_cache, cudaStream_t stream);

// out[row, h, :] for every row of every work item. q / out are [rows, num_heads * head_dim]; the
// caches are [num_slots, num_kv_heads * head_dim]; seqs, block_tables and the item arrays are
// device copies of what PlanPagedAttention produced. cudaErrorInvalidValue when head_dim is not in
// [1, kMaxAttentionHeadDim], num_heads is not a multiple of num_kv_heads, or block_size < 1.
cudaError_t LaunchPagedAttention(const float* q, const float* k_cache, const float* v_cache,
                                 const PagedAttentionSeq* seqs, const int32_t* block_tables,
                                 const AttentionWorkItem* prefill_items, int64_t num_prefill_items,
                                 const AttentionWorkItem* decode_items, int64_t num_decode_items,
                                 const PagedAttentionParams& params, float* out,
                                 cudaStream_t stream);
cudaError_t LaunchPagedAttention(const __nv_bfloat16* q, const __nv_bfloat16* k_cache,
                                 const __nv_bfloat16* v_cache, const PagedAttentionSeq* seqs,
                                 const int32_t* block_tables,
                                 const AttentionWorkItem* prefill_items, int64_t num_prefill_items,
                                 const AttentionWorkItem* decode_items, int64_t num_decode_items,
                                 const PagedAttentionParams& params, __nv_bfloat16* out,
                                 cudaStream_t stream);

}  // namespace switchyard::kernels::cuda
