// Device helpers shared by the kernels in kernels/cuda: fp32 <-> storage-type conversion, warp and
// block reductions, and launch-shape helpers. Private to kernels/cuda (included only by .cu files).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <climits>
#include <cstdint>

namespace switchyard::kernels::cuda::internal {

// Storage types are float or __nv_bfloat16; arithmetic is always in fp32.
__device__ __forceinline__ float ToFloat(float x) { return x; }
__device__ __forceinline__ float ToFloat(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T FromFloat(float x);
template <>
__device__ __forceinline__ float FromFloat<float>(float x) { return x; }
template <>
__device__ __forceinline__ __nv_bfloat16 FromFloat<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

__device__ __forceinline__ float WarpSum(float v) {
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

__device__ __forceinline__ double WarpSum(double v) {
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

__device__ __forceinline__ float WarpMax(float v) {
  for (int offset = 16; offset > 0; offset /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// Sum over a block of kThreads threads (a multiple of 32, at most 1024). Every thread gets the
// total. Uses one __syncthreads pair, so it may be called repeatedly.
template <int kThreads>
__device__ float BlockSum(float value) {
  static_assert(kThreads % 32 == 0 && kThreads <= 1024);
  __shared__ float warp_sums[kThreads / 32];
  __shared__ float total;
  value = WarpSum(value);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) warp_sums[warp] = value;
  __syncthreads();
  if (warp == 0) {
    float v = lane < kThreads / 32 ? warp_sums[lane] : 0.0f;
    v = WarpSum(v);
    if (lane == 0) total = v;
  }
  __syncthreads();
  const float result = total;
  __syncthreads();  // total and warp_sums may be reused by the next call
  return result;
}

// Blocks for a grid-stride loop over n elements with kThreads threads per block.
inline unsigned GridFor(int64_t n, int threads) {
  const int64_t blocks = (n + threads - 1) / threads;
  return static_cast<unsigned>(blocks < 65536 ? (blocks < 1 ? 1 : blocks) : 65536);
}

// True when a row count fits a 1-D grid dimension (2^31 - 1 blocks).
inline bool FitsGridX(int64_t rows) { return rows >= 0 && rows <= INT_MAX; }

}  // namespace switchyard::kernels::cuda::internal
