#include "kernels/cpu/gemm.h"

#include <cblas.h>

namespace switchyard::kernels::cpu {

void GemmNT(const float* a, const float* b, float* c, int64_t m, int64_t n, int64_t k, float alpha,
            float beta) {
  if (m == 0 || n == 0) return;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k, alpha, a, k, b, k, beta, c, n);
}

void GemmNN(const float* a, const float* b, float* c, int64_t m, int64_t n, int64_t k, float alpha,
            float beta) {
  if (m == 0 || n == 0) return;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, n, k, alpha, a, k, b, n, beta, c, n);
}

const char* BlasCoreName() { return openblas_get_corename(); }

}  // namespace switchyard::kernels::cpu
