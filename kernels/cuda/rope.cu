#include "kernels/cuda/rope.h"

#include "kernels/cuda/internal/device_utils.cuh"

namespace switchyard::kernels::cuda {
namespace {

using internal::FromFloat;
using internal::ToFloat;

constexpr int kThreads = 256;
constexpr int64_t kMaxHeadDim = 2048;

template <typename T>
__global__ void RopeKernel(T* x, const int32_t* positions, const float* inv_freq,
                           int64_t num_heads, int64_t head_dim, bool interleaved) {
  extern __shared__ float cos_sin[];  // [half] cos, then [half] sin
  const int64_t half = head_dim / 2;
  const double pos = static_cast<double>(positions[blockIdx.x]);
  for (int64_t i = threadIdx.x; i < half; i += blockDim.x) {
    const double angle = pos * static_cast<double>(inv_freq[i]);
    cos_sin[i] = static_cast<float>(cos(angle));
    cos_sin[half + i] = static_cast<float>(sin(angle));
  }
  __syncthreads();
  T* token = x + blockIdx.x * num_heads * head_dim;
  for (int64_t idx = threadIdx.x; idx < num_heads * half; idx += blockDim.x) {
    const int64_t h = idx / half, i = idx % half;
    T* row = token + h * head_dim;
    const int64_t a = interleaved ? 2 * i : i;
    const int64_t b = interleaved ? 2 * i + 1 : i + half;
    const float c = cos_sin[i], s = cos_sin[half + i];
    const float x0 = ToFloat(row[a]), x1 = ToFloat(row[b]);
    row[a] = FromFloat<T>(x0 * c - x1 * s);
    row[b] = FromFloat<T>(x1 * c + x0 * s);
  }
}

template <typename T>
cudaError_t RopeImpl(T* x, const int32_t* positions, const float* inv_freq, int64_t num_tokens,
                     int64_t num_heads, int64_t head_dim, bool interleaved, cudaStream_t stream) {
  if (num_tokens == 0 || num_heads == 0 || head_dim == 0) return cudaSuccess;
  if (!internal::FitsGridX(num_tokens) || num_heads < 0 || head_dim < 0 || head_dim % 2 != 0 ||
      head_dim > kMaxHeadDim) {
    return cudaErrorInvalidValue;
  }
  const size_t smem_bytes = static_cast<size_t>(head_dim) * sizeof(float);
  RopeKernel<T><<<static_cast<unsigned>(num_tokens), kThreads, smem_bytes, stream>>>(
      x, positions, inv_freq, num_heads, head_dim, interleaved);
  return cudaGetLastError();
}

}  // namespace

cudaError_t LaunchRope(float* x, const int32_t* positions, const float* inv_freq,
                       int64_t num_tokens, int64_t num_heads, int64_t head_dim, bool interleaved,
                       cudaStream_t stream) {
  return RopeImpl(x, positions, inv_freq, num_tokens, num_heads, head_dim, interleaved, stream);
}

cudaError_t LaunchRope(__nv_bfloat16* x, const int32_t* positions, const float* inv_freq,
                       int64_t num_tokens, int64_t num_heads, int64_t head_dim, bool interleaved,
                       cudaStream_t stream) {
  return RopeImpl(x, positions, inv_freq, num_tokens, num_heads, head_dim, interleaved, stream);
}

}  // namespace switchyard::kernels::cuda
