#include "kernels/cuda/attention.h"

#include "kernels/cuda/internal/device_utils.cuh"

namespace switchyard::kernels::cuda {
namespace {

using internal::FromFloat;
using internal::ToFloat;

constexpr int kKeysPerTile = 32;  // one key per lane
constexpr int kPrefillThreads = kAttentionRowsPerTile * 32;
constexpr int kDecodeWarps = 4;
constexpr int kDecodeThreads = kDecodeWarps * 32;

__device__ __forceinline__ int64_t SlotOf(const int32_t* table, int64_t pos, int64_t block_size) {
  return static_cast<int64_t>(table[pos / block_size]) * block_size + pos % block_size;
}

// First key a query at `pos` may see.
__device__ __forceinline__ int64_t WindowStart(int64_t pos, int64_t chunk_size) {
  return chunk_size > 0 ? pos - pos % chunk_size : 0;
}

template <typename T>
__global__ void WriteKvCacheKernel(const T* k, const T* v, const int64_t* slots, int64_t kv_dim,
                                   T* k_cache, T* v_cache) {
  const int64_t slot = slots[blockIdx.x];
  if (slot < 0) return;
  for (int64_t c = threadIdx.x; c < kv_dim; c += blockDim.x) {
    k_cache[slot * kv_dim + c] = k[blockIdx.x * kv_dim + c];
    v_cache[slot * kv_dim + c] = v[blockIdx.x * kv_dim + c];
  }
}

// Block (tile, head); warp w owns query row first_q + w of the tile. Lane j scores key tile + j.
template <typename T, int kDimsPerLane>
__global__ void __launch_bounds__(kPrefillThreads)
    PrefillKernel(const T* q, const T* k_cache, const T* v_cache, const PagedAttentionSeq* seqs,
                  const int32_t* block_tables, const AttentionWorkItem* items,
                  PagedAttentionParams p, T* out) {
  extern __shared__ float smem[];
  const int hd = static_cast<int>(p.head_dim);
  float* qs = smem;                                // [rows][hd]
  float* ks = qs + kAttentionRowsPerTile * hd;     // [32][hd + 1] (padded: conflict-free columns)
  float* vs = ks + kKeysPerTile * (hd + 1);        // [32][hd]
  const AttentionWorkItem item = items[blockIdx.x];
  const PagedAttentionSeq seq = seqs[item.seq_idx];
  const int32_t* table = block_tables + seq.block_table_begin;
  const int64_t h = blockIdx.y, kv_head = h / (p.num_heads / p.num_kv_heads);
  const int64_t kv_dim = p.num_kv_heads * hd;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const bool has_row = warp < item.num_rows;
  const int64_t row = seq.q_row_begin + item.first_q + warp;
  const int64_t pos = seq.start_pos + item.first_q + warp;
  const int64_t row_lo = WindowStart(pos, p.chunk_size);
  if (has_row) {
    for (int d = lane; d < hd; d += 32) qs[warp * hd + d] = ToFloat(q[(row * p.num_heads + h) * hd + d]);
  }
  const int64_t first_pos = seq.start_pos + item.first_q;
  const int64_t last_pos = first_pos + item.num_rows - 1;
  float m = -INFINITY, l = 0.0f, acc[kDimsPerLane];
#pragma unroll
  for (int i = 0; i < kDimsPerLane; ++i) acc[i] = 0.0f;
  for (int64_t tile = WindowStart(first_pos, p.chunk_size); tile <= last_pos; tile += kKeysPerTile) {
    __syncthreads();  // the previous tile is consumed (and qs is written, on the first pass)
    for (int idx = threadIdx.x; idx < kKeysPerTile * hd; idx += blockDim.x) {
      const int j = idx / hd, d = idx % hd;
      const int64_t kp = tile + j;
      float kv = 0.0f, vv = 0.0f;
      if (kp <= last_pos) {
        const int64_t offset = SlotOf(table, kp, p.block_size) * kv_dim + kv_head * hd + d;
        kv = ToFloat(k_cache[offset]);
        vv = ToFloat(v_cache[offset]);
      }
      ks[j * (hd + 1) + d] = kv;
      vs[j * hd + d] = vv;
    }
    __syncthreads();
    if (!has_row) continue;
    const int64_t kp = tile + lane;
    const bool valid = kp >= row_lo && kp <= pos;
    float score = -INFINITY;
    if (valid) {
      float dot = 0.0f;
      for (int d = 0; d < hd; ++d) dot += qs[warp * hd + d] * ks[lane * (hd + 1) + d];
      score = dot * p.scale;
    }
    const float m_new = fmaxf(m, internal::WarpMax(score));
    if (m_new == -INFINITY) continue;  // warp-uniform: nothing visible yet
    const float alpha = expf(m - m_new);  // 0 while m is -inf
    const float prob = valid ? expf(score - m_new) : 0.0f;
    l = l * alpha + internal::WarpSum(prob);
#pragma unroll
    for (int i = 0; i < kDimsPerLane; ++i) acc[i] *= alpha;
    for (int j = 0; j < kKeysPerTile; ++j) {
      const float pj = __shfl_sync(0xffffffffu, prob, j);
#pragma unroll
      for (int i = 0; i < kDimsPerLane; ++i) {
        const int d = lane + 32 * i;
        if (d < hd) acc[i] += pj * vs[j * hd + d];
      }
    }
    m = m_new;
  }
  if (!has_row) return;
  const float inv_l = 1.0f / l;  // l > 0: the key at pos itself is always visible
#pragma unroll
  for (int i = 0; i < kDimsPerLane; ++i) {
    const int d = lane + 32 * i;
    if (d < hd) out[(row * p.num_heads + h) * hd + d] = FromFloat<T>(acc[i] * inv_l);
  }
}

// Block (decode row, head); warp w takes keys row_lo + w, + kDecodeWarps, ...; lane owns dims
// lane + 32 i. The warps' softmax states (m, l, acc) are merged through shared memory.
template <typename T, int kDimsPerLane>
__global__ void __launch_bounds__(kDecodeThreads)
    DecodeKernel(const T* q, const T* k_cache, const T* v_cache, const PagedAttentionSeq* seqs,
                 const int32_t* block_tables, const AttentionWorkItem* items,
                 PagedAttentionParams p, T* out) {
  __shared__ float warp_m[kDecodeWarps], warp_l[kDecodeWarps];
  __shared__ float warp_acc[kDecodeWarps][kDimsPerLane * 32];
  const int hd = static_cast<int>(p.head_dim);
  const AttentionWorkItem item = items[blockIdx.x];
  const PagedAttentionSeq seq = seqs[item.seq_idx];
  const int32_t* table = block_tables + seq.block_table_begin;
  const int64_t h = blockIdx.y, kv_head = h / (p.num_heads / p.num_kv_heads);
  const int64_t kv_dim = p.num_kv_heads * hd;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t row = seq.q_row_begin + item.first_q;
  const int64_t pos = seq.start_pos + item.first_q;
  float q_reg[kDimsPerLane], acc[kDimsPerLane];
#pragma unroll
  for (int i = 0; i < kDimsPerLane; ++i) {
    const int d = lane + 32 * i;
    q_reg[i] = d < hd ? ToFloat(q[(row * p.num_heads + h) * hd + d]) : 0.0f;
    acc[i] = 0.0f;
  }
  float m = -INFINITY, l = 0.0f;
  for (int64_t kp = WindowStart(pos, p.chunk_size) + warp; kp <= pos; kp += kDecodeWarps) {
    const int64_t offset = SlotOf(table, kp, p.block_size) * kv_dim + kv_head * hd;
    float partial = 0.0f;
#pragma unroll
    for (int i = 0; i < kDimsPerLane; ++i) {
      const int d = lane + 32 * i;
      if (d < hd) partial += q_reg[i] * ToFloat(k_cache[offset + d]);
    }
    const float score = internal::WarpSum(partial) * p.scale;
    const float m_new = fmaxf(m, score);
    const float alpha = expf(m - m_new);
    const float prob = expf(score - m_new);
    l = l * alpha + prob;
#pragma unroll
    for (int i = 0; i < kDimsPerLane; ++i) {
      const int d = lane + 32 * i;
      if (d < hd) acc[i] = acc[i] * alpha + prob * ToFloat(v_cache[offset + d]);
    }
    m = m_new;
  }
  if (lane == 0) {
    warp_m[warp] = m;
    warp_l[warp] = l;
  }
#pragma unroll
  for (int i = 0; i < kDimsPerLane; ++i) warp_acc[warp][lane + 32 * i] = acc[i];
  __syncthreads();
  if (warp != 0) return;
  float m_all = -INFINITY;
  for (int w = 0; w < kDecodeWarps; ++w) m_all = fmaxf(m_all, warp_m[w]);
  float l_all = 0.0f, factor[kDecodeWarps];
  for (int w = 0; w < kDecodeWarps; ++w) {
    factor[w] = expf(warp_m[w] - m_all);  // 0 for a warp that saw no key
    l_all += warp_l[w] * factor[w];
  }
#pragma unroll
  for (int i = 0; i < kDimsPerLane; ++i) {
    const int d = lane + 32 * i;
    if (d >= hd) continue;
    float o = 0.0f;
    for (int w = 0; w < kDecodeWarps; ++w) o += warp_acc[w][d] * factor[w];
    out[(row * p.num_heads + h) * hd + d] = FromFloat<T>(o / l_all);
  }
}

template <typename T, int kDimsPerLane>
cudaError_t LaunchKernels(const T* q, const T* k_cache, const T* v_cache,
                          const PagedAttentionSeq* seqs, const int32_t* block_tables,
                          const AttentionWorkItem* prefill_items, int64_t num_prefill_items,
                          const AttentionWorkItem* decode_items, int64_t num_decode_items,
                          const PagedAttentionParams& p, T* out, cudaStream_t stream) {
  const unsigned heads = static_cast<unsigned>(p.num_heads);
  if (num_prefill_items > 0) {
    const int64_t hd = p.head_dim;
    const size_t smem_bytes =
        (kAttentionRowsPerTile * hd + kKeysPerTile * (hd + 1) + kKeysPerTile * hd) * sizeof(float);
    auto kernel = PrefillKernel<T, kDimsPerLane>;
    if (smem_bytes > 48 * 1024) {
      cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             static_cast<int>(smem_bytes));
      if (err != cudaSuccess) return err;
    }
    kernel<<<dim3(static_cast<unsigned>(num_prefill_items), heads), kPrefillThreads, smem_bytes,
             stream>>>(q, k_cache, v_cache, seqs, block_tables, prefill_items, p, out);
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  if (num_decode_items > 0) {
    DecodeKernel<T, kDimsPerLane>
        <<<dim3(static_cast<unsigned>(num_decode_items), heads), kDecodeThreads, 0, stream>>>(
            q, k_cache, v_cache, seqs, block_tables, decode_items, p, out);
    return cudaGetLastError();
  }
  return cudaSuccess;
}

template <typename T>
cudaError_t AttentionImpl(const T* q, const T* k_cache, const T* v_cache,
                          const PagedAttentionSeq* seqs, const int32_t* block_tables,
                          const AttentionWorkItem* prefill_items, int64_t num_prefill_items,
                          const AttentionWorkItem* decode_items, int64_t num_decode_items,
                          const PagedAttentionParams& p, T* out, cudaStream_t stream) {
  if (num_prefill_items + num_decode_items == 0 || p.num_heads == 0) return cudaSuccess;
  if (p.head_dim < 1 || p.head_dim > kMaxAttentionHeadDim || p.num_kv_heads < 1 ||
      p.num_heads < 0 || p.num_heads % p.num_kv_heads != 0 || p.num_heads > 65535 ||
      p.block_size < 1 || p.chunk_size < 0 || !internal::FitsGridX(num_prefill_items) ||
      !internal::FitsGridX(num_decode_items)) {
    return cudaErrorInvalidValue;
  }
  const int64_t dims_per_lane = (p.head_dim + 31) / 32;
  auto launch = [&](auto kernels_fn) {
    return kernels_fn(q, k_cache, v_cache, seqs, block_tables, prefill_items, num_prefill_items,
                      decode_items, num_decode_items, p, out, stream);
  };
  if (dims_per_lane <= 1) return launch(LaunchKernels<T, 1>);
  if (dims_per_lane <= 2) return launch(LaunchKernels<T, 2>);
  if (dims_per_lane <= 4) return launch(LaunchKernels<T, 4>);
  return launch(LaunchKernels<T, 8>);
}

template <typename T>
cudaError_t WriteKvImpl(const T* k, const T* v, const int64_t* slots, int64_t num_tokens,
                        int64_t kv_dim, T* k_cache, T* v_cache, cudaStream_t stream) {
  if (num_tokens == 0 || kv_dim == 0) return cudaSuccess;
  if (!internal::FitsGridX(num_tokens) || kv_dim < 0) return cudaErrorInvalidValue;
  WriteKvCacheKernel<T><<<static_cast<unsigned>(num_tokens), 256, 0, stream>>>(k, v, slots, kv_dim,
                                                                               k_cache, v_cache);
  return cudaGetLastError();
}

}  // namespace

void PlanPagedAttention(const PagedAttentionSeq* seqs, int64_t num_seqs,
                        std::vector<AttentionWorkItem>* prefill_items,
                        std::vector<AttentionWorkItem>* decode_items) {
  prefill_items->clear();
  decode_items->clear();
  for (int64_t s = 0; s < num_seqs; ++s) {
    const int64_t num_q = seqs[s].num_q;
    if (num_q == 1) {
      decode_items->push_back({static_cast<int32_t>(s), 0, 1, 0});
      continue;
    }
    for (int64_t first = 0; first < num_q; first += kAttentionRowsPerTile) {
      const int64_t rows = num_q - first < kAttentionRowsPerTile ? num_q - first : kAttentionRowsPerTile;
      prefill_items->push_back({static_cast<int32_t>(s), static_cast<int32_t>(first),
                                static_cast<int32_t>(rows), 0});
    }
  }
}

cudaError_t LaunchWriteKvCache(const float* k, const float* v, const int64_t* slots,
                               int64_t num_tokens, int64_t kv_dim, float* k_cache, float* v_cache,
                               cudaStream_t stream) {
  return WriteKvImpl(k, v, slots, num_tokens, kv_dim, k_cache, v_cache, stream);
}

cudaError_t LaunchWriteKvCache(const __nv_bfloat16* k, const __nv_bfloat16* v,
                               const int64_t* slots, int64_t num_tokens, int64_t kv_dim,
                               __nv_bfloat16* k_cache, __nv_bfloat16* v_cache,
                               cudaStream_t stream) {
  return WriteKvImpl(k, v, slots, num_tokens, kv_dim, k_cache, v_cache, stream);
}

cudaError_t LaunchPagedAttention(const float* q, const float* k_cache, const float* v_cache,
                                 const PagedAttentionSeq* seqs, const int32_t* block_tables,
                                 const AttentionWorkItem* prefill_items, int64_t num_prefill_items,
                                 const AttentionWorkItem* decode_items, int64_t num_decode_items,
                                 const PagedAttentionParams& params, float* out,
                                 cudaStream_t stream) {
  return AttentionImpl(q, k_cache, v_cache, seqs, block_tables, prefill_items, num_prefill_items,
                       decode_items, num_decode_items, params, out, stream);
}

cudaError_t LaunchPagedAttention(const __nv_bfloat16* q, const __nv_bfloat16* k_cache,
                                 const __nv_bfloat16* v_cache, const PagedAttentionSeq* seqs,
                                 const int32_t* block_tables,
                                 const AttentionWorkItem* prefill_items, int64_t num_prefill_items,
                                 const AttentionWorkItem* decode_items, int64_t num_decode_items,
                                 const PagedAttentionParams& params, __nv_bfloat16* out,
                                 cudaStream_t stream) {
  return AttentionImpl(q, k_cache, v_cache, seqs, block_tables, prefill_items, num_prefill_items,
                       decode_items, num_decode_items, params, out, stream);
}

}  // namespace switchyard::kernels::cuda
