#include "kernels/cuda/permute.h"

#include "kernels/cuda/internal/device_utils.cuh"

namespace switchyard::kernels::cuda {
namespace {

using internal::FromFloat;
using internal::ToFloat;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

__global__ void CountExpertsKernel(const int32_t* topk_ids, int64_t num_pairs, int64_t num_experts,
                                   int32_t* counts) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < num_pairs;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int32_t e = topk_ids[i];
    if (e >= 0 && e < num_experts) atomicAdd(&counts[e], 1);
  }
}

// A single thread: num_experts is small (hundreds) and this keeps the scan obviously right.
__global__ void ExpertOffsetsKernel(const int32_t* counts, int64_t num_experts, int64_t* offsets) {
  if (threadIdx.x != 0 || blockIdx.x != 0) return;
  int64_t total = 0;
  offsets[0] = 0;
  for (int64_t e = 0; e < num_experts; ++e) {
    total += counts[e];
    offsets[e + 1] = total;
  }
}

// Block e walks every pair in order, kThreads at a time; a ballot per warp and the warp totals
// give each matching pair its rank among the earlier matches, so the grouping is stable.
__global__ void BuildRowMapKernel(const int32_t* topk_ids, const float* topk_weights,
                                  int64_t num_pairs, int64_t k, const int64_t* offsets,
                                  int32_t* src_token, float* row_weight, int32_t* row_of) {
  __shared__ int warp_counts[kWarps];
  const int32_t expert = static_cast<int32_t>(blockIdx.x);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const unsigned lanes_below = (1u << lane) - 1u;
  int64_t running = offsets[expert];
  for (int64_t chunk = 0; chunk < num_pairs; chunk += kThreads) {
    const int64_t i = chunk + threadIdx.x;
    const bool match = i < num_pairs && topk_ids[i] == expert;
    const unsigned ballot = __ballot_sync(0xffffffffu, match);
    if (lane == 0) warp_counts[warp] = __popc(ballot);
    __syncthreads();
    int before = 0, chunk_total = 0;
    for (int w = 0; w < kWarps; ++w) {
      before += w < warp ? warp_counts[w] : 0;
      chunk_total += warp_counts[w];
    }
    if (match) {
      const int64_t row = running + before + __popc(ballot & lanes_below);
      src_token[row] = static_cast<int32_t>(i / k);
      if (row_weight != nullptr) row_weight[row] = topk_weights[i];
      row_of[i] = static_cast<int32_t>(row);
    }
    running += chunk_total;
    __syncthreads();  // warp_counts is rewritten by the next chunk
  }
}

// 16-byte vectors of 8 bf16 when the row starts and the column count allow it.
bool CanUseVec8(const void* a, const void* b, int64_t cols) {
  return cols % 8 == 0 && reinterpret_cast<uintptr_t>(a) % 16 == 0 &&
         reinterpret_cast<uintptr_t>(b) % 16 == 0;
}

__device__ __forceinline__ void Unpack8(const uint4& v, float* f) {
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&v);
  for (int i = 0; i < 4; ++i) {
    const float2 p = __bfloat1622float2(h[i]);
    f[2 * i] = p.x;
    f[2 * i + 1] = p.y;
  }
}

__device__ __forceinline__ uint4 Pack8(const float* f) {
  uint4 v;
  __nv_bfloat162* h = reinterpret_cast<__nv_bfloat162*>(&v);
  for (int i = 0; i < 4; ++i) h[i] = __floats2bfloat162_rn(f[2 * i], f[2 * i + 1]);
  return v;
}

template <typename T>
__global__ void GatherRowsKernel(const T* x, const int32_t* src_rows, const float* row_scale,
                                 int64_t cols, T* out) {
  const T* src = x + static_cast<int64_t>(src_rows[blockIdx.x]) * cols;
  T* dst = out + blockIdx.x * cols;
  const float s = row_scale != nullptr ? row_scale[blockIdx.x] : 1.0f;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) dst[c] = FromFloat<T>(ToFloat(src[c]) * s);
}

// bf16 rows as uint4 vectors: num_vecs = cols / 8.
__global__ void GatherRowsVec8Kernel(const uint4* x, const int32_t* src_rows,
                                     const float* row_scale, int64_t num_vecs, uint4* out) {
  const uint4* src = x + static_cast<int64_t>(src_rows[blockIdx.x]) * num_vecs;
  uint4* dst = out + blockIdx.x * num_vecs;
  for (int64_t c = threadIdx.x; c < num_vecs; c += blockDim.x) {
    if (row_scale == nullptr) {
      dst[c] = src[c];
      continue;
    }
    float f[8];
    Unpack8(src[c], f);
    for (int i = 0; i < 8; ++i) f[i] *= row_scale[blockIdx.x];
    dst[c] = Pack8(f);
  }
}

// The token's (row, weight) pairs are staged in shared memory once; j order is kept per element.
template <typename T>
__global__ void CombineRowsKernel(const T* rows, const int32_t* row_of, const float* weights,
                                  int64_t k, int64_t cols, T* out) {
  __shared__ int32_t rs[kMaxCombineK];
  __shared__ float ws[kMaxCombineK];
  for (int64_t j = threadIdx.x; j < k; j += blockDim.x) {
    rs[j] = row_of[blockIdx.x * k + j];
    ws[j] = weights[blockIdx.x * k + j];
  }
  __syncthreads();
  T* dst = out + blockIdx.x * cols;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    float acc = 0.0f;
    for (int64_t j = 0; j < k; ++j) {
      if (rs[j] < 0) continue;
      acc += ws[j] * ToFloat(rows[static_cast<int64_t>(rs[j]) * cols + c]);
    }
    dst[c] = FromFloat<T>(acc);
  }
}

__global__ void CombineRowsVec8Kernel(const uint4* rows, const int32_t* row_of,
                                      const float* weights, int64_t k, int64_t num_vecs,
                                      uint4* out) {
  __shared__ int32_t rs[kMaxCombineK];
  __shared__ float ws[kMaxCombineK];
  for (int64_t j = threadIdx.x; j < k; j += blockDim.x) {
    rs[j] = row_of[blockIdx.x * k + j];
    ws[j] = weights[blockIdx.x * k + j];
  }
  __syncthreads();
  uint4* dst = out + blockIdx.x * num_vecs;
  for (int64_t c = threadIdx.x; c < num_vecs; c += blockDim.x) {
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int64_t j = 0; j < k; ++j) {
      if (rs[j] < 0) continue;
      float f[8];
      Unpack8(rows[static_cast<int64_t>(rs[j]) * num_vecs + c], f);
      for (int i = 0; i < 8; ++i) acc[i] += ws[j] * f[i];
    }
    dst[c] = Pack8(acc);
  }
}

template <typename T>
cudaError_t GatherImpl(const T* x, const int32_t* src_rows, const float* row_scale,
                       int64_t num_out_rows, int64_t cols, T* out, cudaStream_t stream) {
  if (num_out_rows == 0 || cols == 0) return cudaSuccess;
  if (!internal::FitsGridX(num_out_rows) || cols < 0) return cudaErrorInvalidValue;
  const unsigned grid = static_cast<unsigned>(num_out_rows);
  if constexpr (sizeof(T) == 2) {
    if (CanUseVec8(x, out, cols)) {
      GatherRowsVec8Kernel<<<grid, kThreads, 0, stream>>>(reinterpret_cast<const uint4*>(x), src_rows,
                                                          row_scale, cols / 8,
                                                          reinterpret_cast<uint4*>(out));
      return cudaGetLastError();
    }
  }
  GatherRowsKernel<T><<<grid, kThreads, 0, stream>>>(x, src_rows, row_scale, cols, out);
  return cudaGetLastError();
}

template <typename T>
cudaError_t CombineImpl(const T* rows, const int32_t* row_of, const float* weights,
                        int64_t num_tokens, int64_t k, int64_t cols, T* out, cudaStream_t stream) {
  if (num_tokens == 0 || cols == 0) return cudaSuccess;
  if (!internal::FitsGridX(num_tokens) || cols < 0 || k < 0 || k > kMaxCombineK) {
    return cudaErrorInvalidValue;
  }
  const unsigned grid = static_cast<unsigned>(num_tokens);
  if constexpr (sizeof(T) == 2) {
    if (CanUseVec8(rows, out, cols)) {
      CombineRowsVec8Kernel<<<grid, kThreads, 0, stream>>>(reinterpret_cast<const uint4*>(rows),
                                                           row_of, weights, k, cols / 8,
                                                           reinterpret_cast<uint4*>(out));
      return cudaGetLastError();
    }
  }
  CombineRowsKernel<T><<<grid, kThreads, 0, stream>>>(rows, row_of, weights, k, cols, out);
  return cudaGetLastError();
}

}  // namespace

cudaError_t LaunchCountExperts(const int32_t* topk_ids, int64_t num_pairs, int64_t num_experts,
                               int32_t* counts, cudaStream_t stream) {
  if (num_experts <= 0) return num_experts == 0 ? cudaSuccess : cudaErrorInvalidValue;
  cudaError_t err = cudaMemsetAsync(counts, 0, num_experts * sizeof(int32_t), stream);
  if (err != cudaSuccess || num_pairs == 0) return err;
  CountExpertsKernel<<<internal::GridFor(num_pairs, kThreads), kThreads, 0, stream>>>(
      topk_ids, num_pairs, num_experts, counts);
  return cudaGetLastError();
}

cudaError_t LaunchExpertOffsets(const int32_t* counts, int64_t num_experts, int64_t* offsets,
                                cudaStream_t stream) {
  if (num_experts < 0) return cudaErrorInvalidValue;
  ExpertOffsetsKernel<<<1, 1, 0, stream>>>(counts, num_experts, offsets);
  return cudaGetLastError();
}

cudaError_t LaunchBuildRowMap(const int32_t* topk_ids, const float* topk_weights,
                              int64_t num_tokens, int64_t k, int64_t num_experts,
                              const int64_t* offsets, int32_t* src_token, float* row_weight,
                              int32_t* row_of, cudaStream_t stream) {
  const int64_t num_pairs = num_tokens * k;
  if (num_pairs == 0) return cudaSuccess;
  if (num_pairs < 0 || num_pairs > INT32_MAX || !internal::FitsGridX(num_experts)) {
    return cudaErrorInvalidValue;
  }
  // -1 marks pairs that no expert block claims (invalid ids).
  cudaError_t err = cudaMemsetAsync(row_of, 0xff, num_pairs * sizeof(int32_t), stream);
  if (err != cudaSuccess || num_experts == 0) return err;
  BuildRowMapKernel<<<static_cast<unsigned>(num_experts), kThreads, 0, stream>>>(
      topk_ids, topk_weights, num_pairs, k, offsets, src_token, row_weight, row_of);
  return cudaGetLastError();
}

cudaError_t LaunchGatherRows(const float* x, const int32_t* src_rows, const float* row_scale,
                             int64_t num_out_rows, int64_t cols, float* out, cudaStream_t stream) {
  return GatherImpl(x, src_rows, row_scale, num_out_rows, cols, out, stream);
}
cudaError_t LaunchGatherRows(const __nv_bfloat16* x, const int32_t* src_rows,
                             const float* row_scale, int64_t num_out_rows, int64_t cols,
                             __nv_bfloat16* out, cudaStream_t stream) {
  return GatherImpl(x, src_rows, row_scale, num_out_rows, cols, out, stream);
}

cudaError_t LaunchCombineRows(const float* rows, const int32_t* row_of, const float* weights,
                              int64_t num_tokens, int64_t k, int64_t cols, float* out,
                              cudaStream_t stream) {
  return CombineImpl(rows, row_of, weights, num_tokens, k, cols, out, stream);
}
cudaError_t LaunchCombineRows(const __nv_bfloat16* rows, const int32_t* row_of,
                              const float* weights, int64_t num_tokens, int64_t k, int64_t cols,
                              __nv_bfloat16* out, cudaStream_t stream) {
  return CombineImpl(rows, row_of, weights, num_tokens, k, cols, out, stream);
}

}  // namespace switchyard::kernels::cuda
