// Dense fp32 matrix products on the CPU (OpenBLAS). The reference for the CUDA GEMMs.
#pragma once

#include <cstdint>

namespace switchyard::kernels::cpu {

// c[m, n] = alpha * a[m, k] * b[n, k]^T + beta * c  (a "linear layer": b is [out, in], row-major).
void GemmNT(const float* a, const float* b, float* c, int64_t m, int64_t n, int64_t k,
            float alpha = 1.0f, float beta = 0.0f);

// c[m, n] = alpha * a[m, k] * b[k, n] + beta * c  (b row-major [in, out], as Llama 4's fused
// expert tensors are stored).
void GemmNN(const float* a, const float* b, float* c, int64_t m, int64_t n, int64_t k,
            float alpha = 1.0f, float beta = 0.0f);

// Name of the kernel OpenBLAS chose (e.g. "SkylakeX"), for benchmark output.
const char* BlasCoreName();

}  // namespace switchyard::kernels::cpu
