// CUDA launchers for the elementwise family (see kernels/cpu/elementwise.h for the reference
// semantics each one must match). Thin host functions: raw device pointers, shapes, a stream.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

namespace switchyard::kernels::cuda {

// out[r, :] = x[r, :] / sqrt(mean(x[r, :]^2) + eps) * weight (weight may be null). One block per row.
cudaError_t LaunchRmsNorm(const float* x, const float* weight, float* out, int64_t num_rows,
                          int64_t dim, float eps, cudaStream_t stream);

// out[r, i] = silu(gate[r, i]) * up[r, i] with row strides for gate and up.
cudaError_t LaunchSiluMul(const float* gate, int64_t gate_stride, const float* up,
                          int64_t up_stride, float* out, int64_t num_rows, int64_t dim,
                          cudaStream_t stream);

}  // namespace switchyard::kernels::cuda
