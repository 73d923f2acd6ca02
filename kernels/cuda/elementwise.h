// CUDA launchers for the elementwise family (see kernels/cpu/elementwise.h for the reference
// semantics each one must match). Thin host functions: raw device pointers, shapes, a stream.
//
// Every op comes in fp32 and bf16 storage; arithmetic is fp32 (bf16 values are widened on load and
// rounded to nearest even on store). Zero rows or elements is a no-op returning cudaSuccess. Row
// counts above 2^31 - 1 return cudaErrorInvalidValue. Errors are launch errors
// (cudaGetLastError); execution errors surface at the next synchronising call.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

namespace switchyard::kernels::cuda {

// out[r, :] = x[r, :] / sqrt(mean(x[r, :]^2) + eps) * weight (weight may be null). One block per
// row. x and out may alias.
cudaError_t LaunchRmsNorm(const float* x, const float* weight, float* out, int64_t num_rows,
                          int64_t dim, float eps, cudaStream_t stream);
cudaError_t LaunchRmsNorm(const __nv_bfloat16* x, const __nv_bfloat16* weight, __nv_bfloat16* out,
                          int64_t num_rows, int64_t dim, float eps, cudaStream_t stream);

// out[r, i] = silu(gate[r, i]) * up[r, i] with row strides for gate and up (out is dense). out
// may alias gate when gate_stride == dim.
cudaError_t LaunchSiluMul(const float* gate, int64_t gate_stride, const float* up,
                          int64_t up_stride, float* out, int64_t num_rows, int64_t dim,
                          cudaStream_t stream);
cudaError_t LaunchSiluMul(const __nv_bfloat16* gate, int64_t gate_stride, const __nv_bfloat16* up,
                          int64_t up_stride, __nv_bfloat16* out, int64_t num_rows, int64_t dim,
                          cudaStream_t stream);

// y[i] += x[i] for i < n.
cudaError_t LaunchAdd(float* y, const float* x, int64_t n, cudaStream_t stream);
cudaError_t LaunchAdd(__nv_bfloat16* y, const __nv_bfloat16* x, int64_t n, cudaStream_t stream);

// y[r, c] += bias[c] for a [num_rows, cols] y.
cudaError_t LaunchAddBias(float* y, const float* bias, int64_t num_rows, int64_t cols,
                          cudaStream_t stream);
cudaError_t LaunchAddBias(__nv_bfloat16* y, const __nv_bfloat16* bias, int64_t num_rows,
                          int64_t cols, cudaStream_t stream);

// y[r, :] *= scale[r] (scale: device fp32 array of num_rows values).
cudaError_t LaunchScaleRows(float* y, const float* scale, int64_t num_rows, int64_t cols,
                            cudaStream_t stream);
cudaError_t LaunchScaleRows(__nv_bfloat16* y, const float* scale, int64_t num_rows, int64_t cols,
                            cudaStream_t stream);

// y[r, :] *= sigmoid(gate[r]) (gate: num_rows values, the [R, 1] output of a linear layer).
cudaError_t LaunchScaleRowsBySigmoid(float* y, const float* gate, int64_t num_rows, int64_t cols,
                                     cudaStream_t stream);
cudaError_t LaunchScaleRowsBySigmoid(__nv_bfloat16* y, const __nv_bfloat16* gate, int64_t num_rows,
                                     int64_t cols, cudaStream_t stream);

// x[i] = clamp(x[i], -limit, limit)
cudaError_t LaunchClamp(float* x, int64_t n, float limit, cudaStream_t stream);
cudaError_t LaunchClamp(__nv_bfloat16* x, int64_t n, float limit, cudaStream_t stream);

// Dtype conversion of n elements (round to nearest even on the way down).
cudaError_t LaunchConvert(const float* src, __nv_bfloat16* dst, int64_t n, cudaStream_t stream);
cudaError_t LaunchConvert(const __nv_bfloat16* src, float* dst, int64_t n, cudaStream_t stream);

}  // namespace switchyard::kernels::cuda
