// Dense and grouped (per-expert) matrix products on cuBLAS, row-major like kernels/cpu/gemm.h:
// bf16 (or fp32) operands, fp32 accumulation, bf16 or fp32 output.
//
// The grouped product runs one projection of every expert in a layer over that expert's slice of
// a row-sorted activation matrix (rows [offsets[e], offsets[e+1]) belong to expert e). Two ways
// are built, because which is faster depends on the card and the shapes and is not measured yet
// (bench/gpu/moe_layer_bench prints both; see docs/benchmarks.md):
//   kLoop:          one cublasGemmEx per non-empty expert (launch-bound when experts are many and
//                   their row counts small, e.g. decode with 128 or 256 experts);
//   kCublasGrouped: one cublasGemmGroupedBatchedEx (cuBLAS 12.5+) over the non-empty experts.
// Both need the row offsets on the host, so the caller syncs once per layer after routing; a
// device-driven grouped kernel (CUTLASS-style) would remove that sync.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

namespace switchyard::kernels::cuda {

enum class GemmType { kF32, kBF16 };

// What failed, for the caller to turn into a status naming the call.
struct GemmStatus {
  cudaError_t cuda = cudaSuccess;
  cublasStatus_t cublas = CUBLAS_STATUS_SUCCESS;
  const char* call = "";
  bool ok() const { return cuda == cudaSuccess && cublas == CUBLAS_STATUS_SUCCESS; }
};

// out[m, n] = x[m, k] w[n, k]^T + beta * out   (w_layout_nk = true: a Linear layer's [out, in])
// out[m, n] = x[m, k] w[k, n] + beta * out     (w_layout_nk = false: MatMul, Llama 4 experts)
// x and w share a type (fp32 or bf16); out may be either. m == 0 is a no-op.
GemmStatus Gemm(cublasHandle_t handle, const void* x, const void* w, GemmType in_type, void* out,
                GemmType out_type, int64_t m, int64_t n, int64_t k, bool w_layout_nk, float beta);

enum class GroupedGemmMethod { kLoop, kCublasGrouped };

// One expert's share of a grouped product: rows [row_begin, row_begin + num_rows) of x and out.
struct GemmGroup {
  const void* w = nullptr;
  int64_t row_begin = 0;
  int64_t num_rows = 0;
};

// Runs grouped products on the handle's stream; keeps its pointer arrays between calls. Not
// thread-safe. The device pointer array grows stream-ordered; the destructor frees it with
// cudaFree, which waits for the device.
class GroupedGemm {
 public:
  GroupedGemm() = default;
  ~GroupedGemm();
  GroupedGemm(const GroupedGemm&) = delete;
  GroupedGemm& operator=(const GroupedGemm&) = delete;

  // For each group g with num_rows > 0: out[rows of g, n] = x[rows of g, k] w_g (layout as Gemm),
  // beta = 0. bf16 in and out. Groups with no rows are skipped (an empty list is a no-op).
  GemmStatus Run(cublasHandle_t handle, GroupedGemmMethod method, std::span<const GemmGroup> groups,
                 const void* x, void* out, int64_t n, int64_t k, bool w_layout_nk);

 private:
  GemmStatus RunGrouped(cublasHandle_t handle, const void* x, void* out, int64_t n, int64_t k,
                        bool w_layout_nk);

  std::vector<GemmGroup> live_;           // non-empty groups of the current call
  std::vector<const void*> host_ptrs_;    // A, then B, then C pointers (cuBLAS column-major)
  std::vector<int> m_, n_, k_, lda_, ldb_, ldc_, group_size_;
  std::vector<cublasOperation_t> trans_a_, trans_b_;
  std::vector<float> alpha_, beta_;
  void** device_ptrs_ = nullptr;
  size_t device_ptr_capacity_ = 0;
};

}  // namespace switchyard::kernels::cuda
