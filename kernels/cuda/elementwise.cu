#include "kernels/cuda/elementwise.h"

#include "kernels/cuda/internal/device_utils.cuh"

namespace switchyard::kernels::cuda {
namespace {

using internal::FromFloat;
using internal::GridFor;
using internal::ToFloat;

constexpr int kThreads = 256;

template <typename T>
__global__ void RmsNormKernel(const T* x, const T* weight, T* out, int64_t dim, float eps) {
  const T* xr = x + blockIdx.x * dim;
  T* yr = out + blockIdx.x * dim;
  float sum_sq = 0.0f;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
    const float v = ToFloat(xr[i]);
    sum_sq += v * v;
  }
  // BlockSum synchronises the block, so every read of xr is done before out (maybe xr) is written.
  const float inv = rsqrtf(internal::BlockSum<kThreads>(sum_sq) / static_cast<float>(dim) + eps);
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
    const float normed = ToFloat(xr[i]) * inv;
    yr[i] = FromFloat<T>(weight != nullptr ? normed * ToFloat(weight[i]) : normed);
  }
}

template <typename T>
__global__ void SiluMulKernel(const T* gate, int64_t gate_stride, const T* up, int64_t up_stride,
                              T* out, int64_t dim) {
  const T* g = gate + blockIdx.x * gate_stride;
  const T* u = up + blockIdx.x * up_stride;
  T* o = out + blockIdx.x * dim;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
    const float gv = ToFloat(g[i]);
    o[i] = FromFloat<T>(gv / (1.0f + expf(-gv)) * ToFloat(u[i]));
  }
}

template <typename T>
__global__ void AddKernel(T* y, const T* x, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    y[i] = FromFloat<T>(ToFloat(y[i]) + ToFloat(x[i]));
  }
}

template <typename T>
__global__ void AddBiasKernel(T* y, const T* bias, int64_t cols) {
  T* row = y + blockIdx.x * cols;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    row[c] = FromFloat<T>(ToFloat(row[c]) + ToFloat(bias[c]));
  }
}

template <typename T>
__global__ void ScaleRowsKernel(T* y, const float* scale, int64_t cols) {
  T* row = y + blockIdx.x * cols;
  const float s = scale[blockIdx.x];
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) row[c] = FromFloat<T>(ToFloat(row[c]) * s);
}

template <typename T>
__global__ void ScaleRowsBySigmoidKernel(T* y, const T* gate, int64_t cols) {
  T* row = y + blockIdx.x * cols;
  const float s = 1.0f / (1.0f + expf(-ToFloat(gate[blockIdx.x])));
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) row[c] = FromFloat<T>(ToFloat(row[c]) * s);
}

template <typename T>
__global__ void ClampKernel(T* x, int64_t n, float limit) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    x[i] = FromFloat<T>(fminf(fmaxf(ToFloat(x[i]), -limit), limit));
  }
}

template <typename Src, typename Dst>
__global__ void ConvertKernel(const Src* src, Dst* dst, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    dst[i] = FromFloat<Dst>(ToFloat(src[i]));
  }
}

template <typename T>
cudaError_t RmsNormImpl(const T* x, const T* weight, T* out, int64_t num_rows, int64_t dim,
                        float eps, cudaStream_t stream) {
  if (num_rows == 0 || dim == 0) return cudaSuccess;
  if (!internal::FitsGridX(num_rows) || dim < 0) return cudaErrorInvalidValue;
  RmsNormKernel<T><<<static_cast<unsigned>(num_rows), kThreads, 0, stream>>>(x, weight, out, dim, eps);
  return cudaGetLastError();
}

template <typename T>
cudaError_t SiluMulImpl(const T* gate, int64_t gate_stride, const T* up, int64_t up_stride, T* out,
                        int64_t num_rows, int64_t dim, cudaStream_t stream) {
  if (num_rows == 0 || dim == 0) return cudaSuccess;
  if (!internal::FitsGridX(num_rows) || dim < 0) return cudaErrorInvalidValue;
  SiluMulKernel<T><<<static_cast<unsigned>(num_rows), kThreads, 0, stream>>>(gate, gate_stride, up,
                                                                             up_stride, out, dim);
  return cudaGetLastError();
}

template <typename T>
cudaError_t AddImpl(T* y, const T* x, int64_t n, cudaStream_t stream) {
  if (n <= 0) return n == 0 ? cudaSuccess : cudaErrorInvalidValue;
  AddKernel<T><<<GridFor(n, kThreads), kThreads, 0, stream>>>(y, x, n);
  return cudaGetLastError();
}

// Launches a one-block-per-row kernel; shared checks for the row ops below.
template <typename Kernel, typename... Args>
cudaError_t LaunchPerRow(Kernel kernel, int64_t num_rows, int64_t cols, cudaStream_t stream,
                         Args... args) {
  if (num_rows == 0 || cols == 0) return cudaSuccess;
  if (!internal::FitsGridX(num_rows) || cols < 0) return cudaErrorInvalidValue;
  kernel<<<static_cast<unsigned>(num_rows), kThreads, 0, stream>>>(args..., cols);
  return cudaGetLastError();
}

template <typename T>
cudaError_t ClampImpl(T* x, int64_t n, float limit, cudaStream_t stream) {
  if (n <= 0) return n == 0 ? cudaSuccess : cudaErrorInvalidValue;
  ClampKernel<T><<<GridFor(n, kThreads), kThreads, 0, stream>>>(x, n, limit);
  return cudaGetLastError();
}

template <typename Src, typename Dst>
cudaError_t ConvertImpl(const Src* src, Dst* dst, int64_t n, cudaStream_t stream) {
  if (n <= 0) return n == 0 ? cudaSuccess : cudaErrorInvalidValue;
  ConvertKernel<Src, Dst><<<GridFor(n, kThreads), kThreads, 0, stream>>>(src, dst, n);
  return cudaGetLastError();
}

}  // namespace

using bf16 = __nv_bfloat16;

cudaError_t LaunchRmsNorm(const float* x, const float* weight, float* out, int64_t num_rows,
                          int64_t dim, float eps, cudaStream_t stream) {
  return RmsNormImpl(x, weight, out, num_rows, dim, eps, stream);
}
cudaError_t LaunchRmsNorm(const bf16* x, const bf16* weight, bf16* out, int64_t num_rows,
                          int64_t dim, float eps, cudaStream_t stream) {
  return RmsNormImpl(x, weight, out, num_rows, dim, eps, stream);
}

cudaError_t LaunchSiluMul(const float* gate, int64_t gate_stride, const float* up,
                          int64_t up_stride, float* out, int64_t num_rows, int64_t dim,
                          cudaStream_t stream) {
  return SiluMulImpl(gate, gate_stride, up, up_stride, out, num_rows, dim, stream);
}
cudaError_t LaunchSiluMul(const bf16* gate, int64_t gate_stride, const bf16* up, int64_t up_stride,
                          bf16* out, int64_t num_rows, int64_t dim, cudaStream_t stream) {
  return SiluMulImpl(gate, gate_stride, up, up_stride, out, num_rows, dim, stream);
}

cudaError_t LaunchAdd(float* y, const float* x, int64_t n, cudaStream_t stream) {
  return AddImpl(y, x, n, stream);
}
cudaError_t LaunchAdd(bf16* y, const bf16* x, int64_t n, cudaStream_t stream) {
  return AddImpl(y, x, n, stream);
}

cudaError_t LaunchAddBias(float* y, const float* bias, int64_t num_rows, int64_t cols,
                          cudaStream_t stream) {
  return LaunchPerRow(AddBiasKernel<float>, num_rows, cols, stream, y, bias);
}
cudaError_t LaunchAddBias(bf16* y, const bf16* bias, int64_t num_rows, int64_t cols,
                          cudaStream_t stream) {
  return LaunchPerRow(AddBiasKernel<bf16>, num_rows, cols, stream, y, bias);
}

cudaError_t LaunchScaleRows(float* y, const float* scale, int64_t num_rows, int64_t cols,
                            cudaStream_t stream) {
  return LaunchPerRow(ScaleRowsKernel<float>, num_rows, cols, stream, y, scale);
}
cudaError_t LaunchScaleRows(bf16* y, const float* scale, int64_t num_rows, int64_t cols,
                            cudaStream_t stream) {
  return LaunchPerRow(ScaleRowsKernel<bf16>, num_rows, cols, stream, y, scale);
}

cudaError_t LaunchScaleRowsBySigmoid(float* y, const float* gate, int64_t num_rows, int64_t cols,
                                     cudaStream_t stream) {
  return LaunchPerRow(ScaleRowsBySigmoidKernel<float>, num_rows, cols, stream, y, gate);
}
cudaError_t LaunchScaleRowsBySigmoid(bf16* y, const bf16* gate, int64_t num_rows, int64_t cols,
                                     cudaStream_t stream) {
  return LaunchPerRow(ScaleRowsBySigmoidKernel<bf16>, num_rows, cols, stream, y, gate);
}

cudaError_t LaunchClamp(float* x, int64_t n, float limit, cudaStream_t stream) {
  return ClampImpl(x, n, limit, stream);
}
cudaError_t LaunchClamp(bf16* x, int64_t n, float limit, cudaStream_t stream) {
  return ClampImpl(x, n, limit, stream);
}

cudaError_t LaunchConvert(const float* src, bf16* dst, int64_t n, cudaStream_t stream) {
  return ConvertImpl(src, dst, n, stream);
}
cudaError_t LaunchConvert(const bf16* src, float* dst, int64_t n, cudaStream_t stream) {
  return ConvertImpl(src, dst, n, stream);
}

}  // namespace switchyard::kernels::cuda
