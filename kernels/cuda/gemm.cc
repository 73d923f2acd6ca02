#include "kernels/cuda/gemm.h"

#include <climits>

namespace switchyard::kernels::cuda {
namespace {

cudaDataType_t CudaType(GemmType t) { return t == GemmType::kF32 ? CUDA_R_32F : CUDA_R_16BF; }
int64_t ElementBytes(GemmType t) { return t == GemmType::kF32 ? 4 : 2; }

bool FitsInt(int64_t v) { return v >= 0 && v <= INT_MAX; }

GemmStatus CublasError(cublasStatus_t s, const char* call) {
  GemmStatus status;
  status.cublas = s;
  status.call = call;
  return status;
}

GemmStatus CudaError(cudaError_t e, const char* call) {
  GemmStatus status;
  status.cuda = e;
  status.call = call;
  return status;
}

}  // namespace

GemmStatus Gemm(cublasHandle_t handle, const void* x, const void* w, GemmType in_type, void* out,
                GemmType out_type, int64_t m, int64_t n, int64_t k, bool w_layout_nk, float beta) {
  if (m == 0 || n == 0) return {};
  if (!FitsInt(m) || !FitsInt(n) || !FitsInt(k)) {
    return CublasError(CUBLAS_STATUS_INVALID_VALUE, "Gemm: dimension above INT_MAX");
  }
  if (in_type == GemmType::kF32 && out_type != GemmType::kF32) {
    return CublasError(CUBLAS_STATUS_NOT_SUPPORTED, "Gemm: fp32 inputs need an fp32 output");
  }
  const float alpha = 1.0f;
  // Row-major out^T = w^T-or-w times x^T in cuBLAS's column-major view.
  const cublasStatus_t s = cublasGemmEx(
      handle, w_layout_nk ? CUBLAS_OP_T : CUBLAS_OP_N, CUBLAS_OP_N, static_cast<int>(n),
      static_cast<int>(m), static_cast<int>(k), &alpha, w, CudaType(in_type),
      static_cast<int>(w_layout_nk ? k : n), x, CudaType(in_type), static_cast<int>(k), &beta, out,
      CudaType(out_type), static_cast<int>(n), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
  return s == CUBLAS_STATUS_SUCCESS ? GemmStatus{} : CublasError(s, "cublasGemmEx");
}

GroupedGemm::~GroupedGemm() {
  if (device_ptrs_ != nullptr) cudaFree(device_ptrs_);
}

GemmStatus GroupedGemm::Run(cublasHandle_t handle, GroupedGemmMethod method,
                            std::span<const GemmGroup> groups, const void* x, void* out, int64_t n,
                            int64_t k, bool w_layout_nk) {
  live_.clear();
  for (const GemmGroup& g : groups) {
    if (g.num_rows > 0) live_.push_back(g);
  }
  if (live_.empty() || n == 0) return {};
  if (method == GroupedGemmMethod::kCublasGrouped) return RunGrouped(handle, x, out, n, k, w_layout_nk);
  for (const GemmGroup& g : live_) {
    const GemmStatus s =
        Gemm(handle, static_cast<const char*>(x) + g.row_begin * k * 2, g.w, GemmType::kBF16,
             static_cast<char*>(out) + g.row_begin * n * 2, GemmType::kBF16, g.num_rows, n, k,
             w_layout_nk, 0.0f);
    if (!s.ok()) return s;
  }
  return {};
}

GemmStatus GroupedGemm::RunGrouped(cublasHandle_t handle, const void* x, void* out, int64_t n,
                                   int64_t k, bool w_layout_nk) {
  if (!FitsInt(n) || !FitsInt(k)) {
    return CublasError(CUBLAS_STATUS_INVALID_VALUE, "GroupedGemm: dimension above INT_MAX");
  }
  const size_t num_groups = live_.size();
  host_ptrs_.resize(3 * num_groups);
  for (auto* v : {&m_, &n_, &k_, &lda_, &ldb_, &ldc_, &group_size_}) v->resize(num_groups);
  trans_a_.assign(num_groups, w_layout_nk ? CUBLAS_OP_T : CUBLAS_OP_N);
  trans_b_.assign(num_groups, CUBLAS_OP_N);
  alpha_.assign(num_groups, 1.0f);
  beta_.assign(num_groups, 0.0f);
  for (size_t g = 0; g < num_groups; ++g) {
    const GemmGroup& grp = live_[g];
    if (!FitsInt(grp.num_rows)) {
      return CublasError(CUBLAS_STATUS_INVALID_VALUE, "GroupedGemm: group rows above INT_MAX");
    }
    host_ptrs_[g] = grp.w;
    host_ptrs_[num_groups + g] = static_cast<const char*>(x) + grp.row_begin * k * 2;
    host_ptrs_[2 * num_groups + g] = static_cast<char*>(out) + grp.row_begin * n * 2;
    m_[g] = static_cast<int>(n);
    n_[g] = static_cast<int>(grp.num_rows);
    k_[g] = static_cast<int>(k);
    lda_[g] = static_cast<int>(w_layout_nk ? k : n);
    ldb_[g] = static_cast<int>(k);
    ldc_[g] = static_cast<int>(n);
    group_size_[g] = 1;
  }
  cudaStream_t stream = nullptr;
  cublasStatus_t s = cublasGetStream(handle, &stream);
  if (s != CUBLAS_STATUS_SUCCESS) return CublasError(s, "cublasGetStream");
  if (host_ptrs_.size() > device_ptr_capacity_) {
    // Stream-ordered, so growing never blocks the host on the device.
    if (device_ptrs_ != nullptr) {
      const cudaError_t e = cudaFreeAsync(device_ptrs_, stream);
      if (e != cudaSuccess) return CudaError(e, "cudaFreeAsync(grouped gemm pointers)");
    }
    device_ptrs_ = nullptr;
    device_ptr_capacity_ = 0;
    const cudaError_t e = cudaMallocAsync(reinterpret_cast<void**>(&device_ptrs_),
                                          host_ptrs_.size() * sizeof(void*), stream);
    if (e != cudaSuccess) return CudaError(e, "cudaMallocAsync(grouped gemm pointers)");
    device_ptr_capacity_ = host_ptrs_.size();
  }
  // From pageable memory: the copy has consumed host_ptrs_ when it returns, so the vector may be
  // reused by the next call while this one is still queued.
  const cudaError_t e = cudaMemcpyAsync(device_ptrs_, host_ptrs_.data(),
                                        host_ptrs_.size() * sizeof(void*), cudaMemcpyHostToDevice,
                                        stream);
  if (e != cudaSuccess) return CudaError(e, "cudaMemcpyAsync(grouped gemm pointers)");
  const void* const* a = const_cast<const void* const*>(device_ptrs_);
  s = cublasGemmGroupedBatchedEx(handle, trans_a_.data(), trans_b_.data(), m_.data(), n_.data(),
                                 k_.data(), alpha_.data(), a, CUDA_R_16BF, lda_.data(),
                                 a + num_groups, CUDA_R_16BF, ldb_.data(), beta_.data(),
                                 device_ptrs_ + 2 * num_groups, CUDA_R_16BF, ldc_.data(),
                                 static_cast<int>(num_groups), group_size_.data(),
                                 CUBLAS_COMPUTE_32F);
  return s == CUBLAS_STATUS_SUCCESS ? GemmStatus{} : CublasError(s, "cublasGemmGroupedBatchedEx");
}

}  // namespace switchyard::kernels::cuda
