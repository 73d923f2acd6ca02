// The CPU backend: fp32 tensors in host memory, computed by the reference kernels in kernels/cpu
// (GEMMs through OpenBLAS).
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/rope.h"
#include "kernels/cpu/router.h"
#include "worker/backend/backend.h"

namespace switchyard {
namespace {

namespace cpu = kernels::cpu;

float* F(const Tensor& t) { return t.data_as<float>(); }
int64_t Rows(const Tensor& t) { return t.rank() == 0 ? 1 : t.num_elements() / t.shape().back(); }
int64_t Cols(const Tensor& t) { return t.shape().back(); }

class CpuBackend final : public Backend {
 public:
  BackendKind kind() const override { return BackendKind::kCpu; }
  std::string_view name() const override { return "cpu"; }
  DType activation_dtype() const override { return DType::kF32; }
  uint64_t total_memory_bytes() const override {
    const long pages = sysconf(_SC_PHYS_PAGES), page_bytes = sysconf(_SC_PAGESIZE);
    return pages > 0 && page_bytes > 0 ? static_cast<uint64_t>(pages) * page_bytes : 0;
  }
  bool host_memory() const override { return true; }

  absl::StatusOr<Tensor> Empty(DType dtype, std::vector<int64_t> shape) override {
    if (dtype != DType::kF32) {
      return absl::UnimplementedError(
          absl::StrCat("cpu backend: tensors are F32, asked for ", std::string(DTypeName(dtype))));
    }
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    // 64-byte alignment for the GEMM kernels; at least one element so data() is never null.
    const size_t bytes = ((std::max<int64_t>(n, 1) * sizeof(float) + 63) / 64) * 64;
    void* raw = std::aligned_alloc(64, bytes);
    if (raw == nullptr) {
      return absl::ResourceExhaustedError(absl::StrCat("cpu backend: cannot allocate ", bytes, " bytes"));
    }
    std::shared_ptr<void> storage(raw, std::free);
    return Tensor(std::move(storage), raw, dtype, std::move(shape));
  }

  absl::Status CopyFromHost(std::span<const float> src, const Tensor& dst) override {
    SY_CHECK(static_cast<int64_t>(src.size()) == dst.num_elements());
    std::memcpy(dst.data(), src.data(), src.size_bytes());
    return absl::OkStatus();
  }

  absl::Status CopyToHost(const Tensor& src, std::span<float> dst) override {
    SY_CHECK(static_cast<int64_t>(dst.size()) == src.num_elements());
    std::memcpy(dst.data(), src.data(), dst.size_bytes());
    return absl::OkStatus();
  }

  absl::Status Synchronize() override { return absl::OkStatus(); }

  absl::Status CopyBytesFromHost(const void* host, int64_t num_bytes, void* device) override {
    if (num_bytes > 0) std::memcpy(device, host, num_bytes);
    return absl::OkStatus();
  }
  absl::Status CopyBytesToHost(const void* device, int64_t num_bytes, void* host) override {
    if (num_bytes > 0) std::memcpy(host, device, num_bytes);
    return absl::OkStatus();
  }

  absl::Status Embedding(const Tensor& table, std::span<const int32_t> ids,
                         const Tensor& out) override {
    cpu::EmbeddingLookup(F(table), ids.data(), ids.size(), Cols(table), F(out));
    return absl::OkStatus();
  }

  absl::Status RmsNorm(const Tensor& x, const Tensor& weight, float eps,
                       const Tensor& out) override {
    cpu::RmsNorm(F(x), weight.empty() ? nullptr : F(weight), F(out), Rows(x), Cols(x), eps);
    return absl::OkStatus();
  }

  absl::Status Linear(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& out,
                      bool accumulate) override {
    const int64_t m = Rows(x), n = w.dim(0), k = w.dim(1);
    SY_DCHECK(Cols(x) == k && Cols(out) == n && Rows(out) == m);
    cpu::GemmNT(F(x), F(w), F(out), m, n, k, 1.0f, accumulate ? 1.0f : 0.0f);
    if (!bias.empty()) {
      for (int64_t r = 0; r < m; ++r) cpu::AddInPlace(F(out) + r * n, F(bias), n);
    }
    return absl::OkStatus();
  }

  absl::Status MatMul(const Tensor& x, const Tensor& w, const Tensor& out) override {
    const int64_t m = Rows(x), k = w.dim(0), n = w.dim(1);
    SY_DCHECK(Cols(x) == k && Cols(out) == n);
    cpu::GemmNN(F(x), F(w), F(out), m, n, k);
    return absl::OkStatus();
  }

  absl::Status GroupedLinear(const Tensor& x, std::span<const Tensor* const> weights,
                             std::span<const int64_t> offsets, const Tensor& out) override {
    return Grouped(x, weights, offsets, out, /*w_layout_nk=*/true);
  }

  absl::Status GroupedMatMul(const Tensor& x, std::span<const Tensor* const> weights,
                             std::span<const int64_t> offsets, const Tensor& out) override {
    return Grouped(x, weights, offsets, out, /*w_layout_nk=*/false);
  }

  absl::Status Rope(const Tensor& x, std::span<const int32_t> positions,
                    std::span<const float> inv_freq, int64_t num_heads, int64_t head_dim,
                    bool interleaved) override {
    cpu::ApplyRope(F(x), positions.data(), inv_freq.data(), positions.size(), num_heads, head_dim,
                   interleaved);
    return absl::OkStatus();
  }

  absl::Status WriteKvCache(const Tensor& k, const Tensor& v, std::span<const int64_t> slots,
                            const Tensor& k_cache, const Tensor& v_cache) override {
    cpu::WriteKvCache(F(k), F(v), slots.data(), slots.size(), Cols(k), F(k_cache), F(v_cache));
    return absl::OkStatus();
  }

  absl::Status Attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                         std::span<const cpu::AttentionSeq> seqs, const AttentionParams& p,
                         const Tensor& out) override {
    cpu::PagedAttention(F(q), F(k_cache), F(v_cache), seqs.data(), seqs.size(), p.num_heads,
                        p.num_kv_heads, p.head_dim, p.block_size, p.scale, p.chunk_size, F(out));
    return absl::OkStatus();
  }

  absl::Status SiluMulFused(const Tensor& gate_up, const Tensor& out) override {
    const int64_t inter = Cols(out);
    cpu::SiluMul(F(gate_up), 2 * inter, F(gate_up) + inter, 2 * inter, F(out), Rows(out), inter);
    return absl::OkStatus();
  }

  absl::Status SiluMul(const Tensor& gate, const Tensor& up, const Tensor& out) override {
    const int64_t inter = Cols(out);
    cpu::SiluMul(F(gate), inter, F(up), inter, F(out), Rows(out), inter);
    return absl::OkStatus();
  }

  absl::Status Add(const Tensor& y, const Tensor& x) override {
    cpu::AddInPlace(F(y), F(x), y.num_elements());
    return absl::OkStatus();
  }

  absl::Status ScaleRows(const Tensor& y, std::span<const float> scale) override {
    cpu::ScaleRows(F(y), scale.data(), Rows(y), Cols(y));
    return absl::OkStatus();
  }

  absl::Status ScaleRowsBySigmoid(const Tensor& y, const Tensor& gate) override {
    const int64_t rows = Rows(y), cols = Cols(y);
    for (int64_t r = 0; r < rows; ++r) {
      const float s = 1.0f / (1.0f + std::exp(-F(gate)[r]));
      for (int64_t c = 0; c < cols; ++c) F(y)[r * cols + c] *= s;
    }
    return absl::OkStatus();
  }

  absl::Status Clamp(const Tensor& x, float limit) override {
    cpu::Clamp(F(x), x.num_elements(), limit);
    return absl::OkStatus();
  }

  absl::Status RouterTopK(const Tensor& logits, int64_t k, cpu::RouterKind kind, bool renormalize,
                          std::span<int32_t> topk_ids, std::span<float> topk_weights) override {
    cpu::RouterTopK(F(logits), Rows(logits), Cols(logits), k, kind, renormalize, topk_ids.data(),
                    topk_weights.data());
    return absl::OkStatus();
  }

  absl::Status GatherRows(const Tensor& x, std::span<const int32_t> src_rows,
                          std::span<const float> row_scale, const Tensor& out) override {
    const int64_t cols = Cols(x);
    for (size_t i = 0; i < src_rows.size(); ++i) {
      const float* src = F(x) + static_cast<int64_t>(src_rows[i]) * cols;
      float* dst = F(out) + i * cols;
      if (row_scale.empty()) {
        std::memcpy(dst, src, cols * sizeof(float));
        continue;
      }
      const float s = row_scale[i];
      for (int64_t c = 0; c < cols; ++c) dst[c] = src[c] * s;
    }
    return absl::OkStatus();
  }

  absl::Status CombineRows(const Tensor& rows, std::span<const int32_t> row_of,
                           std::span<const float> weights, int64_t k, const Tensor& out) override {
    const int64_t cols = Cols(out), num_tokens = Rows(out);
    for (int64_t t = 0; t < num_tokens; ++t) {
      float* dst = F(out) + t * cols;
      bool first = true;  // accumulated from zero: the first term is 0 + w * src
      for (int64_t j = 0; j < k; ++j) {
        const int32_t r = row_of[t * k + j];
        if (r < 0) continue;
        const float* src = F(rows) + static_cast<int64_t>(r) * cols;
        const float w = weights[t * k + j];
        if (first) {
          for (int64_t c = 0; c < cols; ++c) dst[c] = 0.0f + w * src[c];
          first = false;
        } else {
          for (int64_t c = 0; c < cols; ++c) dst[c] += w * src[c];
        }
      }
      if (first) std::memset(dst, 0, cols * sizeof(float));
    }
    return absl::OkStatus();
  }

  absl::Status ApplyPenalties(const Tensor& logits, std::span<const PenaltyRow> rows,
                              std::span<const PenaltyToken> tokens) override {
    const int64_t vocab = Cols(logits);
    for (const PenaltyRow& p : rows) {
      float* row = F(logits) + p.row * vocab;
      for (const PenaltyToken& token : tokens.subspan(p.first_token, p.num_tokens)) {
        if (token.token_id < 0 || token.token_id >= vocab) continue;
        float& logit = row[token.token_id];
        if (p.repetition != 1.0f) logit = logit > 0.0f ? logit / p.repetition : logit * p.repetition;
        if (token.output_count > 0) {
          logit -= p.frequency * static_cast<float>(token.output_count);
          logit -= p.presence;
        }
      }
    }
    return absl::OkStatus();
  }

  absl::Status Logprobs(const Tensor& logits, std::span<const int64_t> rows,
                        std::span<const int32_t> chosen, int32_t num_top,
                        std::span<float> chosen_logprobs, std::span<int32_t> top_ids,
                        std::span<float> top_logprobs) override {
    const int64_t vocab = Cols(logits);
    SY_CHECK(chosen.size() == rows.size() && chosen_logprobs.size() == rows.size() &&
             num_top >= 0 && num_top <= vocab &&
             top_ids.size() == rows.size() * num_top && top_logprobs.size() == top_ids.size());
    for (size_t i = 0; i < rows.size(); ++i) {
      const float* row = F(logits) + rows[i] * vocab;
      // As the host Sampler: the max, then the sum of exp(l - max) in order, in double.
      const double max_logit = *std::max_element(row, row + vocab);
      double log_z = max_logit;
      if (!std::isinf(max_logit)) {
        double sum = 0.0;
        for (int64_t v = 0; v < vocab; ++v) sum += std::exp(static_cast<double>(row[v]) - max_logit);
        log_z = max_logit + std::log(sum);
      }
      chosen_logprobs[i] = static_cast<float>(row[chosen[i]] - log_z);
      top_order_.resize(vocab);
      for (int64_t v = 0; v < vocab; ++v) top_order_[v] = static_cast<int32_t>(v);
      std::partial_sort(top_order_.begin(), top_order_.begin() + num_top, top_order_.end(),
                        [row](int32_t a, int32_t b) {
                          return row[a] > row[b] || (row[a] == row[b] && a < b);
                        });
      for (int32_t j = 0; j < num_top; ++j) {
        top_ids[i * num_top + j] = top_order_[j];
        top_logprobs[i * num_top + j] = static_cast<float>(row[top_order_[j]] - log_z);
      }
    }
    return absl::OkStatus();
  }

 private:
  std::vector<int32_t> top_order_;  // Logprobs' scratch

  // One Linear (or MatMul) per non-empty group on row views, so results match the ungrouped ops
  // bit for bit.
  absl::Status Grouped(const Tensor& x, std::span<const Tensor* const> weights,
                       std::span<const int64_t> offsets, const Tensor& out, bool w_layout_nk) {
    SY_RETURN_IF_ERROR(CheckGroupedGemmArgs(weights, offsets, Rows(x),
                                            w_layout_nk ? "GroupedLinear" : "GroupedMatMul"));
    for (size_t g = 0; g < weights.size(); ++g) {
      const int64_t begin = offsets[g], end = offsets[g + 1];
      if (begin == end) continue;
      const Tensor rows = x.Rows(begin, end), rows_out = out.Rows(begin, end);
      SY_RETURN_IF_ERROR(w_layout_nk ? Linear(rows, *weights[g], Tensor(), rows_out, false)
                                     : MatMul(rows, *weights[g], rows_out));
    }
    return absl::OkStatus();
  }
};

}  // namespace

std::unique_ptr<Backend> MakeCpuBackend() { return std::make_unique<CpuBackend>(); }

absl::Status Backend::CopyRangesToHost(std::span<const ByteRange> ranges, void* host) {
  char* dst = static_cast<char*>(host);
  for (const ByteRange& range : ranges) {
    SY_RETURN_IF_ERROR(CopyBytesToHost(range.device, range.num_bytes, dst));
    dst += range.num_bytes;
  }
  return absl::OkStatus();
}

absl::Status Backend::SampleTokens(const Tensor&, std::span<const int64_t>,
                                   std::span<const DeviceSamplingRow>, std::span<int32_t>) {
  return absl::UnimplementedError(
      absl::StrCat(std::string(name()), " backend: no sampler of its own (sample on the host)"));
}

absl::Status CheckGroupedGemmArgs(std::span<const Tensor* const> weights,
                                  std::span<const int64_t> offsets, int64_t num_rows,
                                  std::string_view op) {
  if (offsets.size() != weights.size() + 1) {
    return absl::InvalidArgumentError(absl::StrCat(std::string(op), ": expected ",
                                                   weights.size() + 1, " offsets for ",
                                                   weights.size(), " groups, found ",
                                                   offsets.size()));
  }
  if (offsets.front() < 0 || offsets.back() > num_rows) {
    return absl::InvalidArgumentError(absl::StrCat(std::string(op), ": offsets span rows [",
                                                   offsets.front(), ", ", offsets.back(),
                                                   "), expected within [0, ", num_rows, ")"));
  }
  for (size_t g = 0; g < weights.size(); ++g) {
    if (offsets[g + 1] < offsets[g]) {
      return absl::InvalidArgumentError(absl::StrCat(std::string(op),
                                                     ": offsets decrease at group ", g, " (",
                                                     offsets[g], " > ", offsets[g + 1], ")"));
    }
    if (offsets[g + 1] > offsets[g] && (weights[g] == nullptr || weights[g]->empty())) {
      return absl::FailedPreconditionError(absl::StrCat(std::string(op), ": group ", g, " has ",
                                                        offsets[g + 1] - offsets[g],
                                                        " rows but no weight"));
    }
  }
  return absl::OkStatus();
}

}  // namespace switchyard
