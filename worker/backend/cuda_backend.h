// The CUDA backend: weights, activations and the KV cache in bf16 device memory (norms, softmax,
// router and sampling math in fp32), kernels from kernels/cuda and GEMMs on cuBLAS, all ordered on
// one stream. Logits and router scores come out in fp32.
//
// Host-side arguments of the Backend ops (token ids, positions, slots, block tables, row maps)
// are copied to the device on each call; host outputs (CopyToHost, CopyBytesToHost,
// CopyRangesToHost, RouterTopK, SampleTokens, Logprobs) wait for the stream with a deadline (DEADLINE_EXCEEDED rather than a hang). CUDA and cuBLAS errors come back as
// INTERNAL naming the call.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "worker/backend/backend.h"

namespace switchyard {

// How GroupedLinear / GroupedMatMul run on cuBLAS (kernels/cuda/gemm.h GroupedGemm):
// kPerGroupLoop is one cublasGemmEx per non-empty group, kCublasGroupedBatched one
// cublasGemmGroupedBatchedEx over them all.
enum class CudaGroupedGemm { kPerGroupLoop, kCublasGroupedBatched };

struct CudaBackendOptions {
  int device_idx = 0;
  // The grouped-batched default is a guess (fewer launches when experts are many and their row
  // counts small); it must be confirmed by the GPU benchmark (bench/gpu/moe_layer_bench).
  CudaGroupedGemm grouped_gemm = CudaGroupedGemm::kCublasGroupedBatched;
  // Longest wait for the device in a host-blocking call before DEADLINE_EXCEEDED.
  absl::Duration sync_timeout = absl::Seconds(120);
};

// True when the CUDA runtime finds at least one usable device; otherwise false with the reason
// in *why (no driver, no device, ...).
bool CudaDeviceAvailable(std::string* why = nullptr);

// UNAVAILABLE when there is no usable device; INTERNAL when the stream or cuBLAS cannot be set up.
absl::StatusOr<std::unique_ptr<Backend>> MakeCudaBackend(const CudaBackendOptions& options = {});

}  // namespace switchyard
