#include "kernels/cuda/elementwise.h"

namespace switchyard::kernels::cuda {
namespace {

constexpr int kThreads = 256;

__device__ float BlockSum(float value) {
  __shared__ float warp_sums[kThreads / 32];
  for (int offset = 16; offset > 0; offset /= 2) value += __shfl_xor_sync(0xffffffff, value, offset);
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  if (lane == 0) warp_sums[warp] = value;
  __syncthreads();
  value = threadIdx.x < kThreads / 32 ? warp_sums[threadIdx.x] : 0.0f;
  if (warp == 0) {
    for (int offset = 16; offset > 0; offset /= 2) value += __shfl_xor_sync(0xffffffff, value, offset);
  }
  __shared__ float total;
  if (threadIdx.x == 0) total = value;
  __syncthreads();
  return total;
}

__global__ void RmsNormKernel(const float* x, const float* weight, float* out, int64_t dim,
                              float eps) {
  const float* xr = x + blockIdx.x * dim;
  float* yr = out + blockIdx.x * dim;
  float sum_sq = 0.0f;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) sum_sq += xr[i] * xr[i];
  const float inv = rsqrtf(BlockSum(sum_sq) / dim + eps);
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
    const float normed = xr[i] * inv;
    yr[i] = weight != nullptr ? normed * weight[i] : normed;
  }
}

__global__ void SiluMulKernel(const float* gate, int64_t gate_stride, const float* up,
                              int64_t up_stride, float* out, int64_t dim) {
  const float* g = gate + blockIdx.x * gate_stride;
  const float* u = up + blockIdx.x * up_stride;
  float* o = out + blockIdx.x * dim;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
    o[i] = g[i] / (1.0f + __expf(-g[i])) * u[i];
  }
}

}  // namespace

cudaError_t LaunchRmsNorm(const float* x, const float* weight, float* out, int64_t num_rows,
                          int64_t dim, float eps, cudaStream_t stream) {
  if (num_rows == 0) return cudaSuccess;
  RmsNormKernel<<<num_rows, kThreads, 0, stream>>>(x, weight, out, dim, eps);
  return cudaGetLastError();
}

cudaError_t LaunchSiluMul(const float* gate, int64_t gate_stride, const float* up,
                          int64_t up_stride, float* out, int64_t num_rows, int64_t dim,
                          cudaStream_t stream) {
  if (num_rows == 0) return cudaSuccess;
  SiluMulKernel<<<num_rows, kThreads, 0, stream>>>(gate, gate_stride, up, up_stride, out, dim);
  return cudaGetLastError();
}

}  // namespace switchyard::kernels::cuda
