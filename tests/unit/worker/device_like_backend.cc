#include "tests/unit/worker/device_like_backend.h"

#include "absl/strings/str_cat.h"
#include "worker/sampler.h"

namespace switchyard::testing {

DeviceLikeBackend::DeviceLikeBackend() : inner_(MakeCpuBackend()) {}

bool DeviceLikeBackend::Owns(const void* data, int64_t num_bytes) const {
  const uintptr_t begin = reinterpret_cast<uintptr_t>(data);
  absl::MutexLock lock(&registry_->mu);
  auto it = registry_->allocations.upper_bound(begin);
  if (it == registry_->allocations.begin()) return false;
  --it;
  return begin + num_bytes <= it->first + it->second;
}

absl::StatusOr<Tensor> DeviceLikeBackend::Empty(DType dtype, std::vector<int64_t> shape) {
  ++num_allocations_;
  absl::StatusOr<Tensor> tensor = inner_->Empty(dtype, std::move(shape));
  if (!tensor.ok()) return tensor;
  const uintptr_t begin = reinterpret_cast<uintptr_t>(tensor->data());
  {
    absl::MutexLock lock(&registry_->mu);
    registry_->allocations[begin] = std::max<int64_t>(tensor->num_bytes(), 1);
  }
  // The storage forgets the allocation when the last view goes (host vectors may reuse it then).
  std::shared_ptr<void> storage(new Tensor(*tensor), [registry = registry_, begin](void* held) {
    {
      absl::MutexLock lock(&registry->mu);
      registry->allocations.erase(begin);
    }
    delete static_cast<Tensor*>(held);
  });
  return Tensor(std::move(storage), tensor->data(), tensor->dtype(), tensor->shape());
}

absl::Status DeviceLikeBackend::CopyFromHost(std::span<const float> src, const Tensor& dst) {
  return inner_->CopyFromHost(src, dst);
}
absl::Status DeviceLikeBackend::CopyToHost(const Tensor& src, std::span<float> dst) {
  num_tensor_bytes_to_host_ += static_cast<int64_t>(dst.size_bytes());
  return inner_->CopyToHost(src, dst);
}
absl::Status DeviceLikeBackend::Synchronize() {
  ++num_synchronizes_;
  return inner_->Synchronize();
}

absl::Status DeviceLikeBackend::CopyBytesFromHost(const void* host, int64_t num_bytes,
                                                  void* device) {
  if (num_bytes > 0 && (!Owns(device, num_bytes) || Owns(host, num_bytes))) {
    return absl::InternalError("device-like backend: CopyBytesFromHost with the sides swapped");
  }
  return inner_->CopyBytesFromHost(host, num_bytes, device);
}

absl::Status DeviceLikeBackend::CopyBytesToHost(const void* device, int64_t num_bytes,
                                                void* host) {
  if (num_bytes > 0 && (!Owns(device, num_bytes) || Owns(host, num_bytes))) {
    return absl::InternalError("device-like backend: CopyBytesToHost with the sides swapped");
  }
  num_bytes_to_host_ += num_bytes;
  return inner_->CopyBytesToHost(device, num_bytes, host);
}

absl::Status DeviceLikeBackend::Embedding(const Tensor& table, std::span<const int32_t> ids,
                                          const Tensor& out) {
  return inner_->Embedding(table, ids, out);
}
absl::Status DeviceLikeBackend::RmsNorm(const Tensor& x, const Tensor& weight, float eps,
                                        const Tensor& out) {
  return inner_->RmsNorm(x, weight, eps, out);
}
absl::Status DeviceLikeBackend::Linear(const Tensor& x, const Tensor& w, const Tensor& bias,
                                       const Tensor& out, bool accumulate) {
  return inner_->Linear(x, w, bias, out, accumulate);
}
absl::Status DeviceLikeBackend::MatMul(const Tensor& x, const Tensor& w, const Tensor& out) {
  return inner_->MatMul(x, w, out);
}
absl::Status DeviceLikeBackend::GroupedLinear(const Tensor& x,
                                              std::span<const Tensor* const> weights,
                                              std::span<const int64_t> offsets,
                                              const Tensor& out) {
  return inner_->GroupedLinear(x, weights, offsets, out);
}
absl::Status DeviceLikeBackend::GroupedMatMul(const Tensor& x,
                                              std::span<const Tensor* const> weights,
                                              std::span<const int64_t> offsets,
                                              const Tensor& out) {
  return inner_->GroupedMatMul(x, weights, offsets, out);
}
absl::Status DeviceLikeBackend::Rope(const Tensor& x, std::span<const int32_t> positions,
                                     std::span<const float> inv_freq, int64_t num_heads,
                                     int64_t head_dim, bool interleaved) {
  return inner_->Rope(x, positions, inv_freq, num_heads, head_dim, interleaved);
}
absl::Status DeviceLikeBackend::WriteKvCache(const Tensor& k, const Tensor& v,
                                             std::span<const int64_t> slots,
                                             const Tensor& k_cache, const Tensor& v_cache) {
  return inner_->WriteKvCache(k, v, slots, k_cache, v_cache);
}
absl::Status DeviceLikeBackend::Attention(const Tensor& q, const Tensor& k_cache,
                                          const Tensor& v_cache,
                                          std::span<const kernels::cpu::AttentionSeq> seqs,
                                          const AttentionParams& params, const Tensor& out) {
  return inner_->Attention(q, k_cache, v_cache, seqs, params, out);
}
absl::Status DeviceLikeBackend::SiluMulFused(const Tensor& gate_up, const Tensor& out) {
  return inner_->SiluMulFused(gate_up, out);
}
absl::Status DeviceLikeBackend::SiluMul(const Tensor& gate, const Tensor& up, const Tensor& out) {
  return inner_->SiluMul(gate, up, out);
}
absl::Status DeviceLikeBackend::Add(const Tensor& y, const Tensor& x) { return inner_->Add(y, x); }
absl::Status DeviceLikeBackend::ScaleRows(const Tensor& y, std::span<const float> scale) {
  return inner_->ScaleRows(y, scale);
}
absl::Status DeviceLikeBackend::ScaleRowsBySigmoid(const Tensor& y, const Tensor& gate) {
  return inner_->ScaleRowsBySigmoid(y, gate);
}
absl::Status DeviceLikeBackend::Clamp(const Tensor& x, float limit) {
  return inner_->Clamp(x, limit);
}
absl::Status DeviceLikeBackend::RouterTopK(const Tensor& logits, int64_t k,
                                           kernels::cpu::RouterKind kind, bool renormalize,
                                           std::span<int32_t> topk_ids,
                                           std::span<float> topk_weights) {
  return inner_->RouterTopK(logits, k, kind, renormalize, topk_ids, topk_weights);
}
absl::Status DeviceLikeBackend::GatherRows(const Tensor& x, std::span<const int32_t> src_rows,
                                           std::span<const float> row_scale, const Tensor& out) {
  return inner_->GatherRows(x, src_rows, row_scale, out);
}
absl::Status DeviceLikeBackend::CombineRows(const Tensor& rows, std::span<const int32_t> row_of,
                                            std::span<const float> weights, int64_t k,
                                            const Tensor& out) {
  return inner_->CombineRows(rows, row_of, weights, k, out);
}

absl::Status DeviceLikeBackend::ApplyPenalties(const Tensor& logits,
                                               std::span<const PenaltyRow> rows,
                                               std::span<const PenaltyToken> tokens) {
  num_rows_penalized_ += static_cast<int64_t>(rows.size());
  return inner_->ApplyPenalties(logits, rows, tokens);
}

absl::Status DeviceLikeBackend::Logprobs(const Tensor& logits, std::span<const int64_t> rows,
                                         std::span<const int32_t> chosen, int32_t num_top,
                                         std::span<float> chosen_logprobs,
                                         std::span<int32_t> top_ids,
                                         std::span<float> top_logprobs) {
  if (!Owns(logits.data(), logits.num_bytes())) {
    return absl::InvalidArgumentError("device-like backend: Logprobs of host memory");
  }
  num_rows_with_logprobs_ += static_cast<int64_t>(rows.size());
  return inner_->Logprobs(logits, rows, chosen, num_top, chosen_logprobs, top_ids, top_logprobs);
}

absl::Status DeviceLikeBackend::SampleTokens(const Tensor& logits, std::span<const int64_t> rows,
                                             std::span<const DeviceSamplingRow> params,
                                             std::span<int32_t> token_ids) {
  if (params.size() != rows.size() || token_ids.size() != rows.size() ||
      logits.dtype() != DType::kF32 || !Owns(logits.data(), logits.num_bytes())) {
    return absl::InvalidArgumentError("device-like backend: SampleTokens arguments");
  }
  const int64_t vocab = logits.dim(1);
  Sampler sampler(vocab);
  std::vector<float> row(vocab);
  for (size_t i = 0; i < rows.size(); ++i) {
    // Reads "device" memory as the device's own sampler would: not a copy to the host.
    if (absl::Status s = inner_->CopyToHost(logits.Rows(rows[i], rows[i] + 1), row); !s.ok()) {
      return s;
    }
    SamplingParams p;
    p.temperature = params[i].temperature;
    p.top_k = params[i].top_k;
    p.top_p = params[i].top_p;
    p.min_p = params[i].min_p;
    p.seed = params[i].seed;
    p.has_seed = true;
    token_ids[i] = sampler.Sample(row, p, TokenCounts(), params[i].position).token_id;
    ++num_rows_sampled_;
  }
  return absl::OkStatus();
}

absl::Status MemoryCheckingCommunicator::Check(const AllToAllVBuffer& buffer, MemorySpace space,
                                               const char* what) {
  for (size_t peer = 0; peer < buffer.counts_bytes.size(); ++peer) {
    const int64_t count = buffer.counts_bytes[peer];
    if (count == 0) continue;
    const char* region = static_cast<const char*>(buffer.data) + buffer.offsets_bytes[peer];
    const bool in_backend = backend_->Owns(region, count);
    if (in_backend != (space == MemorySpace::kDevice)) {
      absl::Status status = absl::InternalError(absl::StrCat(
          name(), " rank ", rank(), ": ", what, " region for peer ", peer, " is in ",
          in_backend ? "backend" : "host", " memory, expected ",
          space == MemorySpace::kDevice ? "backend" : "host", " memory"));
      inner_->Abort(status.ToString());
      return status;
    }
  }
  return absl::OkStatus();
}

absl::Status MemoryCheckingCommunicator::AllToAllV(const AllToAllVBuffer& send,
                                                   const AllToAllVBuffer& recv) {
  ++num_all_to_all_;
  if (absl::Status s = Check(send, space_, "send"); !s.ok()) return s;
  if (absl::Status s = Check(recv, space_, "recv"); !s.ok()) return s;
  return inner_->AllToAllV(send, recv);
}

absl::Status MemoryCheckingCommunicator::AllToAllVHost(const AllToAllVBuffer& send,
                                                       const AllToAllVBuffer& recv) {
  ++num_all_to_all_;
  if (absl::Status s = Check(send, MemorySpace::kHost, "host send"); !s.ok()) return s;
  if (absl::Status s = Check(recv, MemorySpace::kHost, "host recv"); !s.ok()) return s;
  return inner_->AllToAllV(send, recv);
}

}  // namespace switchyard::testing
