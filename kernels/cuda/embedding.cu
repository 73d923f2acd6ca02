#include "kernels/cuda/embedding.h"

#include "kernels/cuda/internal/device_utils.cuh"

namespace switchyard::kernels::cuda {
namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void EmbeddingKernel(const T* table, const int32_t* ids, int64_t vocab_size,
                                int64_t dim, T* out) {
  const int32_t id = ids[blockIdx.x];
  T* dst = out + blockIdx.x * dim;
  const bool valid = id >= 0 && id < vocab_size;
  const T* src = table + (valid ? static_cast<int64_t>(id) : 0) * dim;
  for (int64_t c = threadIdx.x; c < dim; c += blockDim.x) {
    dst[c] = valid ? src[c] : internal::FromFloat<T>(0.0f);
  }
}

template <typename T>
cudaError_t EmbeddingImpl(const T* table, const int32_t* ids, int64_t num_tokens,
                          int64_t vocab_size, int64_t dim, T* out, cudaStream_t stream) {
  if (num_tokens == 0 || dim == 0) return cudaSuccess;
  if (!internal::FitsGridX(num_tokens) || dim < 0) return cudaErrorInvalidValue;
  EmbeddingKernel<T><<<static_cast<unsigned>(num_tokens), kThreads, 0, stream>>>(table, ids, vocab_size,
                                                                                 dim, out);
  return cudaGetLastError();
}

}  // namespace

cudaError_t LaunchEmbedding(const float* table, const int32_t* ids, int64_t num_tokens,
                            int64_t vocab_size, int64_t dim, float* out, cudaStream_t stream) {
  return EmbeddingImpl(table, ids, num_tokens, vocab_size, dim, out, stream);
}

cudaError_t LaunchEmbedding(const __nv_bfloat16* table, const int32_t* ids, int64_t num_tokens,
                            int64_t vocab_size, int64_t dim, __nv_bfloat16* out,
                            cudaStream_t stream) {
  return EmbeddingImpl(table, ids, num_tokens, vocab_size, dim, out, stream);
}

}  // namespace switchyard::kernels::cuda
