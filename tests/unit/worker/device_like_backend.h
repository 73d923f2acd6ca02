// Test doubles for the device paths of the data plane on a machine without a GPU:
//  - DeviceLikeBackend: a CPU backend that says its tensors are NOT in host memory and remembers
//    every allocation, so a test can tell "backend memory" from host memory by address; its byte
//    copies refuse a wrong-side pointer. It samples "on the device" (SampleTokens) with the host
//    Sampler, as the CUDA sampler must (same semantics), and counts the rows it sampled.
//  - MemoryCheckingCommunicator: wraps a host communicator, claims a memory space (host or device)
//    and fails any AllToAllV whose buffers are on the wrong side of that line (AllToAllVHost must
//    get host memory). The memory is host memory underneath, so the collectives still work.
// Together they prove that the dispatcher stages through the host for a device backend over a
// host communicator, and hands backend memory straight to a device communicator.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "absl/synchronization/mutex.h"
#include "worker/backend/backend.h"
#include "worker/comm/communicator.h"

namespace switchyard::testing {

class DeviceLikeBackend final : public Backend {
 public:
  DeviceLikeBackend();

  // True when [data, data + num_bytes) lies inside one allocation of this backend.
  bool Owns(const void* data, int64_t num_bytes) const;
  int64_t num_synchronizes() const { return num_synchronizes_.load(); }
  int64_t num_allocations() const { return num_allocations_.load(); }  // Empty() calls
  int64_t num_bytes_to_host() const { return num_bytes_to_host_.load(); }
  // Bytes of tensors copied to the host with CopyToHost (e.g. logits), apart from the above.
  int64_t num_tensor_bytes_to_host() const { return num_tensor_bytes_to_host_.load(); }
  int64_t num_rows_sampled() const { return num_rows_sampled_.load(); }
  int64_t num_rows_penalized() const { return num_rows_penalized_.load(); }
  int64_t num_rows_with_logprobs() const { return num_rows_with_logprobs_.load(); }

  BackendKind kind() const override { return inner_->kind(); }
  std::string_view name() const override { return "device-like"; }
  DType activation_dtype() const override { return inner_->activation_dtype(); }
  uint64_t total_memory_bytes() const override { return inner_->total_memory_bytes(); }
  bool host_memory() const override { return false; }
  absl::StatusOr<Tensor> Empty(DType dtype, std::vector<int64_t> shape) override;
  absl::Status CopyFromHost(std::span<const float> src, const Tensor& dst) override;
  absl::Status CopyToHost(const Tensor& src, std::span<float> dst) override;
  absl::Status Synchronize() override;
  absl::Status CopyBytesFromHost(const void* host, int64_t num_bytes, void* device) override;
  absl::Status CopyBytesToHost(const void* device, int64_t num_bytes, void* host) override;
  absl::Status Embedding(const Tensor& table, std::span<const int32_t> ids,
                         const Tensor& out) override;
  absl::Status RmsNorm(const Tensor& x, const Tensor& weight, float eps,
                       const Tensor& out) override;
  absl::Status Linear(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& out,
                      bool accumulate) override;
  absl::Status MatMul(const Tensor& x, const Tensor& w, const Tensor& out) override;
  absl::Status GroupedLinear(const Tensor& x, std::span<const Tensor* const> weights,
                             std::span<const int64_t> offsets, const Tensor& out) override;
  absl::Status GroupedMatMul(const Tensor& x, std::span<const Tensor* const> weights,
                             std::span<const int64_t> offsets, const Tensor& out) override;
  absl::Status Rope(const Tensor& x, std::span<const int32_t> positions,
                    std::span<const float> inv_freq, int64_t num_heads, int64_t head_dim,
                    bool interleaved) override;
  absl::Status WriteKvCache(const Tensor& k, const Tensor& v, std::span<const int64_t> slots,
                            const Tensor& k_cache, const Tensor& v_cache) override;
  absl::Status Attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                         std::span<const kernels::cpu::AttentionSeq> seqs,
                         const AttentionParams& params, const Tensor& out) override;
  absl::Status SiluMulFused(const Tensor& gate_up, const Tensor& out) override;
  absl::Status SiluMul(const Tensor& gate, const Tensor& up, const Tensor& out) override;
  absl::Status Add(const Tensor& y, const Tensor& x) override;
  absl::Status ScaleRows(const Tensor& y, std::span<const float> scale) override;
  absl::Status ScaleRowsBySigmoid(const Tensor& y, const Tensor& gate) override;
  absl::Status Clamp(const Tensor& x, float limit) override;
  absl::Status RouterTopK(const Tensor& logits, int64_t k, kernels::cpu::RouterKind kind,
                          bool renormalize, std::span<int32_t> topk_ids,
                          std::span<float> topk_weights) override;
  absl::Status GatherRows(const Tensor& x, std::span<const int32_t> src_rows,
                          std::span<const float> row_scale, const Tensor& out) override;
  absl::Status CombineRows(const Tensor& rows, std::span<const int32_t> row_of,
                           std::span<const float> weights, int64_t k, const Tensor& out) override;
  absl::Status ApplyPenalties(const Tensor& logits, std::span<const PenaltyRow> rows,
                              std::span<const PenaltyToken> tokens) override;
  absl::Status Logprobs(const Tensor& logits, std::span<const int64_t> rows,
                        std::span<const int32_t> chosen, int32_t num_top,
                        std::span<float> chosen_logprobs, std::span<int32_t> top_ids,
                        std::span<float> top_logprobs) override;
  bool samples_on_device() const override { return true; }
  absl::Status SampleTokens(const Tensor& logits, std::span<const int64_t> rows,
                            std::span<const DeviceSamplingRow> params,
                            std::span<int32_t> token_ids) override;

 private:
  // Live allocations, begin -> bytes; shared with the tensors' deleters (which may outlive us).
  struct Registry {
    absl::Mutex mu;
    std::map<uintptr_t, int64_t> allocations ABSL_GUARDED_BY(mu);
  };
  std::unique_ptr<Backend> inner_;
  std::shared_ptr<Registry> registry_ = std::make_shared<Registry>();
  std::atomic<int64_t> num_synchronizes_{0};
  std::atomic<int64_t> num_bytes_to_host_{0};
  std::atomic<int64_t> num_allocations_{0};
  std::atomic<int64_t> num_tensor_bytes_to_host_{0};
  std::atomic<int64_t> num_rows_sampled_{0};
  std::atomic<int64_t> num_rows_penalized_{0};
  std::atomic<int64_t> num_rows_with_logprobs_{0};
};

class MemoryCheckingCommunicator final : public Communicator {
 public:
  // `backend` tells backend memory from host memory; neither is owned.
  MemoryCheckingCommunicator(Communicator* inner, const DeviceLikeBackend* backend,
                             MemorySpace space)
      : inner_(inner), backend_(backend), space_(space) {}

  int rank() const override { return inner_->rank(); }
  int world_size() const override { return inner_->world_size(); }
  MemorySpace memory_space() const override { return space_; }
  std::string name() const override { return "checking(" + inner_->name() + ")"; }
  absl::Status AllToAllV(const AllToAllVBuffer& send, const AllToAllVBuffer& recv) override;
  absl::Status AllToAllVHost(const AllToAllVBuffer& send, const AllToAllVBuffer& recv) override;
  absl::Status AllGather(const void* send_buffer, int64_t num_bytes, void* recv_buffer) override {
    return inner_->AllGather(send_buffer, num_bytes, recv_buffer);
  }
  absl::Status Barrier() override { return inner_->Barrier(); }
  void Abort(const std::string& reason) override { inner_->Abort(reason); }

  int64_t num_all_to_all() const { return num_all_to_all_; }

 private:
  // INTERNAL (and the group aborted) when a non-empty region of `buffer` is not in `space`.
  absl::Status Check(const AllToAllVBuffer& buffer, MemorySpace space, const char* what);

  Communicator* inner_;
  const DeviceLikeBackend* backend_;
  const MemorySpace space_;
  int64_t num_all_to_all_ = 0;
};

}  // namespace switchyard::testing
