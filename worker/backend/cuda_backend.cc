// The CUDA backend (see cuda_backend.h). Every op checks dtypes, converts host arguments to device
// arrays, and launches one or a few kernels on the backend's stream.
#include "worker/backend/cuda_backend.h"

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <thread>
#include <type_traits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/safetensors.h"
#include "common/status_macros.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/elementwise.h"
#include "kernels/cuda/embedding.h"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/permute.h"
#include "kernels/cuda/rope.h"
#include "kernels/cuda/router.h"
#include "kernels/cuda/sampling.h"

namespace switchyard {
namespace {

namespace kc = kernels::cuda;
using bf16 = __nv_bfloat16;

absl::Status CudaStatus(cudaError_t err, std::string_view call) {
  if (err == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat("cuda backend: ", std::string(call), ": ",
                                          cudaGetErrorName(err), ": ", cudaGetErrorString(err)));
}

absl::Status GemmStatusToStatus(const kc::GemmStatus& s) {
  if (s.ok()) return absl::OkStatus();
  if (s.cuda != cudaSuccess) return CudaStatus(s.cuda, s.call);
  return absl::InternalError(
      absl::StrCat("cuda backend: ", s.call, ": cublas status ", static_cast<int>(s.cublas)));
}

// Rows of a [..., cols] view; a zero-column view still has its leading dims' product of rows.
int64_t Rows(const Tensor& t) {
  if (t.rank() == 0) return 1;
  int64_t rows = 1;
  for (int64_t i = 0; i + 1 < t.rank(); ++i) rows *= t.dim(static_cast<int>(i));
  return rows;
}
int64_t Cols(const Tensor& t) { return t.shape().back(); }

template <typename T>
T* P(const Tensor& t) {
  return t.empty() ? nullptr : t.data_as<T>();
}

// The stream, cuBLAS handle and device of one backend. Shared with every tensor's deleter so the
// stream outlives the memory freed on it.
struct CudaContext {
  int device_idx = 0;
  cudaStream_t stream = nullptr;
  cublasHandle_t cublas = nullptr;
  ~CudaContext() {
    if (cublas != nullptr) cublasDestroy(cublas);
    if (stream != nullptr) cudaStreamDestroy(stream);
  }
};

// Host arrays copied to the device, one growable buffer per purpose.
enum UploadSlot {
  kIds, kPositions, kInvFreq, kSlots, kAttnPlan, kRowIdx, kRowScale, kSamplingParams,
  kPenaltyRows, kPenaltyTokens, kLogprobRows, kLogprobChosen, kNumUploadSlots
};

class CudaBackend final : public Backend {
 public:
  CudaBackend(std::shared_ptr<CudaContext> ctx, const CudaBackendOptions& options)
      : ctx_(std::move(ctx)), options_(options) {}
  ~CudaBackend() override {
    // Queued work may still read the upload buffers; wait (bounded) before freeing them.
    Synchronize().IgnoreError();
    for (DeviceBuffer& b : uploads_) cudaFreeAsync(b.data, ctx_->stream);
    cudaFreeAsync(router_out_.data, ctx_->stream);
    for (DeviceBuffer* b : {&sample_logits_, &sample_ids_, &sample_workspace_, &logprobs_out_}) {
      cudaFreeAsync(b->data, ctx_->stream);
    }
    if (pinned_ != nullptr) cudaFreeHost(pinned_);
  }

  BackendKind kind() const override { return BackendKind::kCuda; }
  std::string_view name() const override { return "cuda"; }
  DType activation_dtype() const override { return DType::kBF16; }
  uint64_t total_memory_bytes() const override {
    size_t free_bytes = 0, total_bytes = 0;
    return cudaMemGetInfo(&free_bytes, &total_bytes) == cudaSuccess ? total_bytes : 0;
  }
  bool host_memory() const override { return false; }

  absl::StatusOr<Tensor> Empty(DType dtype, std::vector<int64_t> shape) override {
    if (dtype != DType::kF32 && dtype != DType::kBF16) {
      return absl::UnimplementedError(absl::StrCat("cuda backend: tensors are F32 or BF16, asked for ",
                                                   std::string(DTypeName(dtype))));
    }
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    // At least one element, so data() is never null; whole 256-byte units keep rows of views
    // as aligned as the allocator's base.
    const size_t bytes = ((std::max<int64_t>(n, 1) * DTypeSize(dtype) + 255) / 256) * 256;
    void* raw = nullptr;
    const cudaError_t err = cudaMallocAsync(&raw, bytes, ctx_->stream);
    if (err != cudaSuccess) {
      return absl::ResourceExhaustedError(absl::StrCat("cuda backend: cudaMallocAsync of ", bytes,
                                                       " bytes: ", cudaGetErrorString(err)));
    }
    std::shared_ptr<void> storage(raw, [ctx = ctx_](void* p) { cudaFreeAsync(p, ctx->stream); });
    return Tensor(std::move(storage), raw, dtype, std::move(shape));
  }

  absl::Status CopyFromHost(std::span<const float> src, const Tensor& dst) override {
    SY_CHECK(static_cast<int64_t>(src.size()) == dst.num_elements());
    if (src.empty()) return absl::OkStatus();
    if (dst.dtype() == DType::kF32) {
      return CudaStatus(cudaMemcpyAsync(dst.data(), src.data(), src.size_bytes(),
                                        cudaMemcpyHostToDevice, ctx_->stream),
                        "cudaMemcpyAsync(CopyFromHost)");
    }
    SY_RETURN_IF_ERROR(CheckDType(dst, DType::kBF16, "CopyFromHost"));
    host_bf16_.resize(src.size());
    for (size_t i = 0; i < src.size(); ++i) host_bf16_[i] = FloatToBFloat16(src[i]);
    // Pageable source: consumed when the call returns, so host_bf16_ may be reused at once.
    return CudaStatus(cudaMemcpyAsync(dst.data(), host_bf16_.data(), host_bf16_.size() * 2,
                                      cudaMemcpyHostToDevice, ctx_->stream),
                      "cudaMemcpyAsync(CopyFromHost bf16)");
  }

  absl::Status CopyToHost(const Tensor& src, std::span<float> dst) override {
    SY_CHECK(static_cast<int64_t>(dst.size()) == src.num_elements());
    if (dst.empty()) return absl::OkStatus();
    if (src.dtype() != DType::kF32 && src.dtype() != DType::kBF16) {
      return CheckDType(src, DType::kF32, "CopyToHost");
    }
    SY_ASSIGN_OR_RETURN(void* staged, Download(src.data(), src.num_bytes(), "CopyToHost"));
    if (src.dtype() == DType::kF32) {
      std::memcpy(dst.data(), staged, dst.size_bytes());
    } else {
      const uint16_t* h = static_cast<const uint16_t*>(staged);
      for (size_t i = 0; i < dst.size(); ++i) dst[i] = BFloat16ToFloat(h[i]);
    }
    return absl::OkStatus();
  }

  absl::Status CopyBytesFromHost(const void* host, int64_t num_bytes, void* device) override {
    if (num_bytes <= 0) return absl::OkStatus();
    // From pageable memory: returns once the bytes are staged, so the host buffer may be reused.
    return CudaStatus(
        cudaMemcpyAsync(device, host, num_bytes, cudaMemcpyHostToDevice, ctx_->stream),
        "cudaMemcpyAsync(CopyBytesFromHost)");
  }

  absl::Status CopyBytesToHost(const void* device, int64_t num_bytes, void* host) override {
    if (num_bytes <= 0) return absl::OkStatus();
    SY_ASSIGN_OR_RETURN(void* staged, Download(device, num_bytes, "CopyBytesToHost"));
    std::memcpy(host, staged, num_bytes);
    return absl::OkStatus();
  }

  absl::Status CopyRangesToHost(std::span<const ByteRange> ranges, void* host) override {
    int64_t total = 0;
    for (const ByteRange& range : ranges) total += range.num_bytes;
    if (total == 0) return absl::OkStatus();
    SY_RETURN_IF_ERROR(ReservePinned(total));
    int64_t offset = 0;
    for (const ByteRange& range : ranges) {
      if (range.num_bytes == 0) continue;
      SY_RETURN_IF_ERROR(CudaStatus(
          cudaMemcpyAsync(static_cast<char*>(pinned_) + offset, range.device, range.num_bytes,
                          cudaMemcpyDeviceToHost, ctx_->stream),
          "cudaMemcpyAsync(CopyRangesToHost)"));
      offset += range.num_bytes;
    }
    SY_RETURN_IF_ERROR(Synchronize());
    std::memcpy(host, pinned_, total);
    return absl::OkStatus();
  }

  absl::Status Synchronize() override {
    const auto deadline = std::chrono::steady_clock::now() +
                          absl::ToChronoNanoseconds(options_.sync_timeout);
    for (int spins = 0;; ++spins) {
      const cudaError_t err = cudaStreamQuery(ctx_->stream);
      if (err == cudaSuccess) return absl::OkStatus();
      if (err != cudaErrorNotReady) return CudaStatus(err, "cudaStreamQuery");
      if (std::chrono::steady_clock::now() > deadline) {
        return absl::DeadlineExceededError(absl::StrCat(
            "cuda backend: the device did not finish queued work within ",
            absl::FormatDuration(options_.sync_timeout)));
      }
      if (spins < 1000) {
        std::this_thread::yield();
      } else {
        std::this_thread::sleep_for(std::chrono::microseconds(50));
      }
    }
  }

  absl::Status Embedding(const Tensor& table, std::span<const int32_t> ids,
                         const Tensor& out) override {
    SY_RETURN_IF_ERROR(SameDType(table, out, "Embedding"));
    SY_ASSIGN_OR_RETURN(const int32_t* d_ids, Upload(kIds, ids));
    return Typed(table, "LaunchEmbedding", [&](auto* tag) {
      using T = std::remove_pointer_t<decltype(tag)>;
      return kc::LaunchEmbedding(P<T>(table), d_ids, ids.size(), table.dim(0), Cols(table),
                                 P<T>(out), ctx_->stream);
    });
  }

  absl::Status RmsNorm(const Tensor& x, const Tensor& weight, float eps,
                       const Tensor& out) override {
    SY_RETURN_IF_ERROR(SameDType(x, out, "RmsNorm"));
    if (!weight.empty()) SY_RETURN_IF_ERROR(SameDType(x, weight, "RmsNorm weight"));
    return Typed(x, "LaunchRmsNorm", [&](auto* tag) {
      using T = std::remove_pointer_t<decltype(tag)>;
      return kc::LaunchRmsNorm(P<T>(x), P<T>(weight), P<T>(out), Rows(x), Cols(x), eps,
                               ctx_->stream);
    });
  }

  absl::Status Linear(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& out,
                      bool accumulate) override {
    const int64_t m = Rows(x), n = w.dim(0), k = w.dim(1);
    SY_DCHECK(Cols(x) == k && Cols(out) == n && Rows(out) == m);
    // The bias is checked first: with accumulate a failure after the GEMM would leave out changed.
    if (!bias.empty()) SY_RETURN_IF_ERROR(SameDType(out, bias, "Linear bias"));
    SY_RETURN_IF_ERROR(Gemm(x, w, out, m, n, k, /*w_layout_nk=*/true, accumulate ? 1.0f : 0.0f));
    if (bias.empty()) return absl::OkStatus();
    return Typed(out, "LaunchAddBias", [&](auto* tag) {
      using T = std::remove_pointer_t<decltype(tag)>;
      return kc::LaunchAddBias(P<T>(out), P<T>(bias), m, n, ctx_->stream);
    });
  }

  absl::Status MatMul(const Tensor& x, const Tensor& w, const Tensor& out) override {
    const int64_t m = Rows(x), k = w.dim(0), n = w.dim(1);
    SY_DCHECK(Cols(x) == k && Cols(out) == n);
    return Gemm(x, w, out, m, n, k, /*w_layout_nk=*/false, 0.0f);
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
    SY_ASSIGN_OR_RETURN(const int32_t* d_pos, Upload(kPositions, positions));
    SY_ASSIGN_OR_RETURN(const float* d_freq, Upload(kInvFreq, inv_freq));
    return Typed(x, "LaunchRope", [&](auto* tag) {
      using T = std::remove_pointer_t<decltype(tag)>;
      return kc::LaunchRope(P<T>(x), d_pos, d_freq, positions.size(), num_heads, head_dim,
                            interleaved, ctx_->stream);
    });
  }

  absl::Status WriteKvCache(const Tensor& k, const Tensor& v, std::span<const int64_t> slots,
                            const Tensor& k_cache, const Tensor& v_cache) override {
    for (const Tensor* t : {&v, &k_cache, &v_cache}) SY_RETURN_IF_ERROR(SameDType(k, *t, "WriteKvCache"));
    SY_ASSIGN_OR_RETURN(const int64_t* d_slots, Upload(kSlots, slots));
    return Typed(k, "LaunchWriteKvCache", [&](auto* tag) {
      using T = std::remove_pointer_t<decltype(tag)>;
      return kc::LaunchWriteKvCache(P<T>(k), P<T>(v), d_slots, slots.size(), Cols(k),
                                    P<T>(k_cache), P<T>(v_cache), ctx_->stream);
    });
  }

  absl::Status Attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                         std::span<const kernels::cpu::AttentionSeq> seqs,
                         const AttentionParams& params, const Tensor& out) override;

  absl::Status SiluMulFused(const Tensor& gate_up, const Tensor& out) override {
    SY_RETURN_IF_ERROR(SameDType(gate_up, out, "SiluMulFused"));
    const int64_t inter = Cols(out);
    return Typed(out, "LaunchSiluMul", [&](auto* tag) {
      using T = std::remove_pointer_t<decltype(tag)>;
      return kc::LaunchSiluMul(P<T>(gate_up), 2 * inter, P<T>(gate_up) + inter, 2 * inter, P<T>(out),
                               Rows(out), inter, ctx_->stream);
    });
  }

  absl::Status SiluMul(const Tensor& gate, const Tensor& up, const Tensor& out) override {
    SY_RETURN_IF_ERROR(SameDType(gate, up, "SiluMul"));
    SY_RETURN_IF_ERROR(SameDType(gate, out, "SiluMul"));
    const int64_t inter = Cols(out);
    return Typed(out, "LaunchSiluMul", [&](auto* tag) {
      using T = std::remove_pointer_t<decltype(tag)>;
      return kc::LaunchSiluMul(P<T>(gate), inter, P<T>(up), inter, P<T>(out), Rows(out), inter,
                               ctx_->stream);
    });
  }

  absl::Status Add(const Tensor& y, const Tensor& x) override {
    SY_RETURN_IF_ERROR(SameDType(y, x, "Add"));
    return Typed(y, "LaunchAdd", [&](auto* tag) {
      using T = std::remove_pointer_t<decltype(tag)>;
      return kc::LaunchAdd(P<T>(y), P<T>(x), y.num_elements(), ctx_->stream);
    });
  }

  absl::Status ScaleRows(const Tensor& y, std::span<const float> scale) override {
    SY_ASSIGN_OR_RETURN(const float* d_scale, Upload(kRowScale, scale));
    return Typed(y, "LaunchScaleRows", [&](auto* tag) {
      using T = std::remove_pointer_t<decltype(tag)>;
      return kc::LaunchScaleRows(P<T>(y), d_scale, Rows(y), Cols(y), ctx_->stream);
    });
  }

  absl::Status ScaleRowsBySigmoid(const Tensor& y, const Tensor& gate) override {
    SY_RETURN_IF_ERROR(SameDType(y, gate, "ScaleRowsBySigmoid"));
    return Typed(y, "LaunchScaleRowsBySigmoid", [&](auto* tag) {
      using T = std::remove_pointer_t<decltype(tag)>;
      return kc::LaunchScaleRowsBySigmoid(P<T>(y), P<T>(gate), Rows(y), Cols(y), ctx_->stream);
    });
  }

  absl::Status Clamp(const Tensor& x, float limit) override {
    return Typed(x, "LaunchClamp", [&](auto* tag) {
      using T = std::remove_pointer_t<decltype(tag)>;
      return kc::LaunchClamp(P<T>(x), x.num_elements(), limit, ctx_->stream);
    });
  }

  absl::Status RouterTopK(const Tensor& logits, int64_t k, kernels::cpu::RouterKind kind,
                          bool renormalize, std::span<int32_t> topk_ids,
                          std::span<float> topk_weights) override;

  absl::Status GatherRows(const Tensor& x, std::span<const int32_t> src_rows,
                          std::span<const float> row_scale, const Tensor& out) override {
    SY_RETURN_IF_ERROR(SameDType(x, out, "GatherRows"));
    SY_ASSIGN_OR_RETURN(const int32_t* d_rows, Upload(kRowIdx, src_rows));
    const float* d_scale = nullptr;
    if (!row_scale.empty()) {
      SY_ASSIGN_OR_RETURN(d_scale, Upload(kRowScale, row_scale));
    }
    return Typed(x, "LaunchGatherRows", [&](auto* tag) {
      using T = std::remove_pointer_t<decltype(tag)>;
      return kc::LaunchGatherRows(P<T>(x), d_rows, d_scale, src_rows.size(), Cols(x), P<T>(out),
                                  ctx_->stream);
    });
  }

  bool samples_on_device() const override { return true; }

  absl::Status ApplyPenalties(const Tensor& logits, std::span<const PenaltyRow> rows,
                              std::span<const PenaltyToken> tokens) override {
    SY_RETURN_IF_ERROR(CheckDType(logits, DType::kF32, "ApplyPenalties"));
    if (rows.empty()) return absl::OkStatus();
    penalty_rows_.resize(rows.size());
    for (size_t i = 0; i < rows.size(); ++i) {
      const PenaltyRow& p = rows[i];
      penalty_rows_[i] = kc::PenaltyRowParams{p.row, p.repetition, p.frequency, p.presence,
                                              p.first_token, p.num_tokens};
    }
    penalty_tokens_.resize(tokens.size());
    for (size_t i = 0; i < tokens.size(); ++i) {
      penalty_tokens_[i] = kc::PenaltyEntry{tokens[i].token_id, tokens[i].output_count};
    }
    SY_ASSIGN_OR_RETURN(const kc::PenaltyRowParams* d_rows,
                        Upload(kPenaltyRows, std::span<const kc::PenaltyRowParams>(penalty_rows_)));
    SY_ASSIGN_OR_RETURN(const kc::PenaltyEntry* d_tokens,
                        Upload(kPenaltyTokens, std::span<const kc::PenaltyEntry>(penalty_tokens_)));
    return CudaStatus(kc::LaunchApplyPenalties(P<float>(logits), Cols(logits), d_rows,
                                               static_cast<int64_t>(rows.size()), d_tokens,
                                               ctx_->stream),
                      "LaunchApplyPenalties");
  }

  absl::Status SampleTokens(const Tensor& logits, std::span<const int64_t> rows,
                            std::span<const DeviceSamplingRow> params,
                            std::span<int32_t> token_ids) override;

  absl::Status Logprobs(const Tensor& logits, std::span<const int64_t> rows,
                        std::span<const int32_t> chosen, int32_t num_top,
                        std::span<float> chosen_logprobs, std::span<int32_t> top_ids,
                        std::span<float> top_logprobs) override;

  absl::Status CombineRows(const Tensor& rows, std::span<const int32_t> row_of,
                           std::span<const float> weights, int64_t k, const Tensor& out) override {
    SY_RETURN_IF_ERROR(SameDType(rows, out, "CombineRows"));
    if (k > kc::kMaxCombineK) {
      return absl::UnimplementedError(absl::StrCat("cuda backend: CombineRows supports k <= ",
                                                   kc::kMaxCombineK, ", found ", k));
    }
    SY_ASSIGN_OR_RETURN(const int32_t* d_row_of, Upload(kRowIdx, row_of));
    SY_ASSIGN_OR_RETURN(const float* d_weights, Upload(kRowScale, weights));
    return Typed(out, "LaunchCombineRows", [&](auto* tag) {
      using T = std::remove_pointer_t<decltype(tag)>;
      return kc::LaunchCombineRows(P<T>(rows), d_row_of, d_weights, Rows(out), k, Cols(out),
                                   P<T>(out), ctx_->stream);
    });
  }

 private:
  struct DeviceBuffer {
    void* data = nullptr;
    size_t capacity = 0;
  };

  static absl::Status CheckDType(const Tensor& t, DType want, std::string_view op) {
    if (t.dtype() == want) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrCat("cuda backend: ", std::string(op), ": expected ",
                                                   std::string(DTypeName(want)), ", found ",
                                                   std::string(DTypeName(t.dtype()))));
  }
  static absl::Status SameDType(const Tensor& a, const Tensor& b, std::string_view op) {
    return CheckDType(b, a.dtype(), op);
  }

  // Calls fn with a (float*) or (bf16*) tag for t's dtype and turns its cudaError_t into a status.
  template <typename Fn>
  absl::Status Typed(const Tensor& t, std::string_view call, Fn fn) {
    if (t.dtype() == DType::kF32) return CudaStatus(fn(static_cast<float*>(nullptr)), call);
    if (t.dtype() == DType::kBF16) return CudaStatus(fn(static_cast<bf16*>(nullptr)), call);
    return absl::UnimplementedError(absl::StrCat("cuda backend: ", std::string(call), ": dtype ",
                                                 std::string(DTypeName(t.dtype()))));
  }

  absl::Status Gemm(const Tensor& x, const Tensor& w, const Tensor& out, int64_t m, int64_t n,
                    int64_t k, bool w_layout_nk, float beta) {
    SY_RETURN_IF_ERROR(SameDType(x, w, "Gemm"));
    const auto type = [](DType d) { return d == DType::kF32 ? kc::GemmType::kF32 : kc::GemmType::kBF16; };
    for (const Tensor* t : {&x, &out}) {
      if (t->dtype() != DType::kF32 && t->dtype() != DType::kBF16) return CheckDType(*t, DType::kBF16, "Gemm");
    }
    return GemmStatusToStatus(kc::Gemm(ctx_->cublas, x.data(), w.data(), type(x.dtype()), out.data(),
                                       type(out.dtype()), m, n, k, w_layout_nk, beta));
  }

  // bf16 operands go through one GroupedGemm call; fp32 ones (not the engine's dtype here) take
  // one Gemm per group.
  absl::Status Grouped(const Tensor& x, std::span<const Tensor* const> weights,
                       std::span<const int64_t> offsets, const Tensor& out, bool w_layout_nk) {
    const std::string_view op = w_layout_nk ? "GroupedLinear" : "GroupedMatMul";
    SY_RETURN_IF_ERROR(CheckGroupedGemmArgs(weights, offsets, Rows(x), op));
    const int64_t k = Cols(x), n = Cols(out);
    const bool bf16_path = x.dtype() == DType::kBF16 && out.dtype() == DType::kBF16;
    groups_.clear();
    for (size_t g = 0; g < weights.size(); ++g) {
      const int64_t begin = offsets[g], end = offsets[g + 1];
      if (begin == end) continue;
      const Tensor& w = *weights[g];
      SY_DCHECK(w.rank() == 2 && w.dim(0) == (w_layout_nk ? n : k) &&
                w.dim(1) == (w_layout_nk ? k : n));
      if (!bf16_path) {
        SY_RETURN_IF_ERROR(Gemm(x.Rows(begin, end), w, out.Rows(begin, end), end - begin, n, k,
                                w_layout_nk, 0.0f));
        continue;
      }
      SY_RETURN_IF_ERROR(CheckDType(w, DType::kBF16, op));
      groups_.push_back(kc::GemmGroup{w.data(), begin, end - begin});
    }
    if (!bf16_path) return absl::OkStatus();
    const kc::GroupedGemmMethod method = options_.grouped_gemm == CudaGroupedGemm::kPerGroupLoop
                                             ? kc::GroupedGemmMethod::kLoop
                                             : kc::GroupedGemmMethod::kCublasGrouped;
    return GemmStatusToStatus(grouped_gemm_.Run(ctx_->cublas, method, groups_, x.data(), out.data(),
                                                n, k, w_layout_nk));
  }

  // Ensures upload slot `slot` holds at least `bytes` (stream-ordered, so a buffer still read by
  // queued kernels is freed only after them).
  absl::StatusOr<void*> Reserve(DeviceBuffer& b, size_t bytes) {
    if (b.capacity >= bytes) return b.data;
    if (b.data != nullptr) SY_RETURN_IF_ERROR(CudaStatus(cudaFreeAsync(b.data, ctx_->stream), "cudaFreeAsync"));
    b.data = nullptr;
    b.capacity = 0;
    const size_t capacity = std::max<size_t>(bytes * 3 / 2, 4096);
    SY_RETURN_IF_ERROR(CudaStatus(cudaMallocAsync(&b.data, capacity, ctx_->stream), "cudaMallocAsync(upload)"));
    b.capacity = capacity;
    return b.data;
  }

  // Copies a host array into upload slot `slot`; the device copy is valid for kernels queued
  // before the slot's next upload. From pageable memory, so the host array may change on return.
  // The same bytes as the slot's previous upload are not copied again: every layer of a step
  // passes the step's positions, slots and attention plan, which kernels only read.
  template <typename T>
  absl::StatusOr<const T*> Upload(UploadSlot slot, std::span<const T> host) {
    const size_t bytes = host.size_bytes();
    DeviceBuffer& buffer = uploads_[slot];
    std::vector<char>& last = last_upload_[slot];
    const char* bytes_in = reinterpret_cast<const char*>(host.data());
    if (buffer.data != nullptr && bytes == last.size() &&
        (bytes == 0 || std::memcmp(last.data(), bytes_in, bytes) == 0)) {
      return static_cast<const T*>(buffer.data);
    }
    SY_ASSIGN_OR_RETURN(void* dst, Reserve(buffer, std::max<size_t>(bytes, 1)));
    last.clear();  // a failed copy must not look like the previous upload
    if (bytes > 0) {
      SY_RETURN_IF_ERROR(CudaStatus(
          cudaMemcpyAsync(dst, host.data(), bytes, cudaMemcpyHostToDevice, ctx_->stream),
          "cudaMemcpyAsync(upload)"));
    }
    last.assign(bytes_in, bytes_in + bytes);
    return static_cast<const T*>(dst);
  }

  // Copies device bytes into the pinned staging buffer and waits (bounded) for them.
  // Grows the pinned staging buffer to at least `bytes`.
  absl::Status ReservePinned(size_t bytes) {
    if (bytes <= pinned_bytes_) return absl::OkStatus();
    if (pinned_ != nullptr) {
      SY_RETURN_IF_ERROR(Synchronize());  // an earlier download may still target it
      cudaFreeHost(pinned_);
    }
    pinned_ = nullptr;
    pinned_bytes_ = 0;
    const size_t capacity = std::max<size_t>(bytes * 3 / 2, 1 << 16);
    SY_RETURN_IF_ERROR(CudaStatus(cudaMallocHost(&pinned_, capacity), "cudaMallocHost"));
    pinned_bytes_ = capacity;
    return absl::OkStatus();
  }

  absl::StatusOr<void*> Download(const void* src, size_t bytes, std::string_view op) {
    SY_RETURN_IF_ERROR(ReservePinned(bytes));
    SY_RETURN_IF_ERROR(CudaStatus(
        cudaMemcpyAsync(pinned_, src, bytes, cudaMemcpyDeviceToHost, ctx_->stream),
        absl::StrCat("cudaMemcpyAsync(", std::string(op), ")")));
    SY_RETURN_IF_ERROR(Synchronize());
    return pinned_;
  }

  std::shared_ptr<CudaContext> ctx_;
  CudaBackendOptions options_;
  // After ctx_, so it is destroyed before the stream and cuBLAS handle it used.
  kc::GroupedGemm grouped_gemm_;
  std::vector<kc::GemmGroup> groups_;  // the current grouped call's non-empty groups
  DeviceBuffer uploads_[kNumUploadSlots];
  std::vector<char> last_upload_[kNumUploadSlots];  // host copy of each slot's device contents
  DeviceBuffer router_out_;  // topk ids then weights
  // SampleTokens: the rows to sample, gathered; the sampled ids; CUB's workspace.
  DeviceBuffer sample_logits_, sample_ids_, sample_workspace_;
  DeviceBuffer logprobs_out_;  // Logprobs: chosen logprobs, top ids, top logprobs
  std::vector<int32_t> sample_rows_;
  std::vector<kc::SamplingRowParams> sample_params_;
  std::vector<kc::PenaltyRowParams> penalty_rows_;
  std::vector<kc::PenaltyEntry> penalty_tokens_;
  void* pinned_ = nullptr;
  size_t pinned_bytes_ = 0;
  std::vector<uint16_t> host_bf16_;
  std::vector<uint8_t> attn_plan_;
  std::vector<kc::PagedAttentionSeq> attn_seqs_;
  std::vector<int32_t> attn_tables_;
  std::vector<kc::AttentionWorkItem> prefill_items_, decode_items_;
};

size_t Align16(size_t bytes) { return (bytes + 15) / 16 * 16; }

absl::Status CudaBackend::Logprobs(const Tensor& logits, std::span<const int64_t> rows,
                                   std::span<const int32_t> chosen, int32_t num_top,
                                   std::span<float> chosen_logprobs, std::span<int32_t> top_ids,
                                   std::span<float> top_logprobs) {
  SY_RETURN_IF_ERROR(CheckDType(logits, DType::kF32, "Logprobs"));
  const size_t n = rows.size();
  if (chosen.size() != n || chosen_logprobs.size() != n || num_top < 0 ||
      num_top > Cols(logits) || top_ids.size() != n * num_top ||
      top_logprobs.size() != top_ids.size()) {
    return absl::InvalidArgumentError(absl::StrCat("cuda backend: Logprobs: ", n, " rows, ",
                                                   chosen.size(), " chosen ids, num_top ",
                                                   num_top, ", ", top_ids.size(), " top slots"));
  }
  if (n == 0) return absl::OkStatus();
  SY_ASSIGN_OR_RETURN(const int64_t* d_rows, Upload(kLogprobRows, rows));
  SY_ASSIGN_OR_RETURN(const int32_t* d_chosen, Upload(kLogprobChosen, chosen));
  // One output buffer, one copy back: [chosen logprobs][top ids][top logprobs], 4 bytes each.
  const size_t num_values = n + 2 * n * static_cast<size_t>(num_top);
  SY_ASSIGN_OR_RETURN(void* d_out, Reserve(logprobs_out_, num_values * 4));
  float* d_chosen_logprobs = static_cast<float*>(d_out);
  int32_t* d_top_ids = reinterpret_cast<int32_t*>(d_chosen_logprobs + n);
  float* d_top_logprobs = reinterpret_cast<float*>(d_top_ids + n * num_top);
  SY_RETURN_IF_ERROR(CudaStatus(
      kc::LaunchLogprobs(P<float>(logits), Cols(logits), d_rows, static_cast<int64_t>(n),
                         d_chosen, num_top, d_chosen_logprobs, d_top_ids, d_top_logprobs,
                         ctx_->stream),
      "LaunchLogprobs"));
  SY_ASSIGN_OR_RETURN(void* staged, Download(d_out, num_values * 4, "Logprobs"));
  const char* bytes = static_cast<const char*>(staged);
  std::memcpy(chosen_logprobs.data(), bytes, n * 4);
  std::memcpy(top_ids.data(), bytes + n * 4, n * num_top * 4);
  std::memcpy(top_logprobs.data(), bytes + (n + n * num_top) * 4, n * num_top * 4);
  return absl::OkStatus();
}

absl::Status CudaBackend::SampleTokens(const Tensor& logits, std::span<const int64_t> rows,
                                       std::span<const DeviceSamplingRow> params,
                                       std::span<int32_t> token_ids) {
  SY_RETURN_IF_ERROR(CheckDType(logits, DType::kF32, "SampleTokens"));
  const int64_t num_rows = static_cast<int64_t>(rows.size());
  if (params.size() != rows.size() || token_ids.size() != rows.size()) {
    return absl::InvalidArgumentError(absl::StrCat("cuda backend: SampleTokens: ", rows.size(),
                                                   " rows, ", params.size(), " params, ",
                                                   token_ids.size(), " outputs"));
  }
  if (num_rows == 0) return absl::OkStatus();
  const int64_t vocab = Cols(logits);
  // The rows to sample, gathered into one [num_rows, vocab] block.
  sample_rows_.assign(rows.begin(), rows.end());
  SY_ASSIGN_OR_RETURN(void* compact, Reserve(sample_logits_, num_rows * vocab * sizeof(float)));
  SY_ASSIGN_OR_RETURN(const int32_t* d_rows,
                      Upload(kRowIdx, std::span<const int32_t>(sample_rows_)));
  SY_RETURN_IF_ERROR(CudaStatus(
      kc::LaunchGatherRows(P<float>(logits), d_rows, nullptr, num_rows, vocab,
                           static_cast<float*>(compact), ctx_->stream),
      "LaunchGatherRows(SampleTokens)"));
  SY_ASSIGN_OR_RETURN(void* d_ids, Reserve(sample_ids_, num_rows * sizeof(int32_t)));
  bool all_greedy = true;
  sample_params_.resize(num_rows);
  for (int64_t i = 0; i < num_rows; ++i) {
    const DeviceSamplingRow& p = params[i];
    sample_params_[i] = kc::SamplingRowParams{p.temperature, p.top_k, p.top_p, p.min_p, p.seed,
                                              p.position};
    all_greedy = all_greedy && p.temperature < kc::kCudaGreedyTemperature;
  }
  if (all_greedy) {
    SY_RETURN_IF_ERROR(CudaStatus(kc::LaunchArgmax(static_cast<const float*>(compact), num_rows,
                                                   vocab, static_cast<int32_t*>(d_ids),
                                                   ctx_->stream),
                                  "LaunchArgmax"));
  } else {
    size_t workspace_bytes = 0;
    SY_RETURN_IF_ERROR(CudaStatus(kc::SamplingWorkspaceBytes(num_rows, vocab, &workspace_bytes),
                                  "SamplingWorkspaceBytes"));
    SY_ASSIGN_OR_RETURN(void* workspace,
                        Reserve(sample_workspace_, std::max<size_t>(workspace_bytes, 1)));
    SY_ASSIGN_OR_RETURN(const kc::SamplingRowParams* d_params,
                        Upload(kSamplingParams,
                               std::span<const kc::SamplingRowParams>(sample_params_)));
    SY_RETURN_IF_ERROR(CudaStatus(
        kc::LaunchSampleTokens(static_cast<const float*>(compact), num_rows, vocab, d_params,
                               workspace, workspace_bytes, static_cast<int32_t*>(d_ids),
                               ctx_->stream),
        "LaunchSampleTokens"));
  }
  SY_ASSIGN_OR_RETURN(void* staged,
                      Download(d_ids, num_rows * sizeof(int32_t), "SampleTokens"));
  std::memcpy(token_ids.data(), staged, num_rows * sizeof(int32_t));
  return absl::OkStatus();
}

absl::Status CudaBackend::Attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                                    std::span<const kernels::cpu::AttentionSeq> seqs,
                                    const AttentionParams& params, const Tensor& out) {
  for (const Tensor* t : {&k_cache, &v_cache, &out}) SY_RETURN_IF_ERROR(SameDType(q, *t, "Attention"));
  if (params.block_size < 1) {
    return absl::InvalidArgumentError(absl::StrCat("cuda backend: Attention: block_size ", params.block_size));
  }
  attn_seqs_.clear();
  attn_tables_.clear();
  for (const kernels::cpu::AttentionSeq& s : seqs) {
    kc::PagedAttentionSeq d;
    d.q_row_begin = s.q_row_begin;
    d.num_q = s.num_q;
    d.start_pos = s.start_pos;
    d.block_table_begin = static_cast<int64_t>(attn_tables_.size());
    const int64_t num_blocks = (s.start_pos + s.num_q + params.block_size - 1) / params.block_size;
    attn_tables_.insert(attn_tables_.end(), s.block_table, s.block_table + num_blocks);
    attn_seqs_.push_back(d);
  }
  kc::PlanPagedAttention(attn_seqs_.data(), attn_seqs_.size(), &prefill_items_, &decode_items_);
  // One upload: [seqs | block tables | prefill items | decode items], sections 16-byte aligned.
  const size_t seq_bytes = Align16(attn_seqs_.size() * sizeof(kc::PagedAttentionSeq));
  const size_t table_bytes = Align16(attn_tables_.size() * sizeof(int32_t));
  const size_t prefill_bytes = Align16(prefill_items_.size() * sizeof(kc::AttentionWorkItem));
  const size_t decode_bytes = Align16(decode_items_.size() * sizeof(kc::AttentionWorkItem));
  attn_plan_.assign(seq_bytes + table_bytes + prefill_bytes + decode_bytes, 0);
  uint8_t* h = attn_plan_.data();
  std::memcpy(h, attn_seqs_.data(), attn_seqs_.size() * sizeof(kc::PagedAttentionSeq));
  std::memcpy(h + seq_bytes, attn_tables_.data(), attn_tables_.size() * sizeof(int32_t));
  std::memcpy(h + seq_bytes + table_bytes, prefill_items_.data(),
              prefill_items_.size() * sizeof(kc::AttentionWorkItem));
  std::memcpy(h + seq_bytes + table_bytes + prefill_bytes, decode_items_.data(),
              decode_items_.size() * sizeof(kc::AttentionWorkItem));
  SY_ASSIGN_OR_RETURN(const uint8_t* d, Upload(kAttnPlan, std::span<const uint8_t>(attn_plan_)));
  kc::PagedAttentionParams p;
  p.num_heads = params.num_heads;
  p.num_kv_heads = params.num_kv_heads;
  p.head_dim = params.head_dim;
  p.block_size = params.block_size;
  p.chunk_size = params.chunk_size;
  p.scale = params.scale;
  const auto* d_seqs = reinterpret_cast<const kc::PagedAttentionSeq*>(d);
  const auto* d_tables = reinterpret_cast<const int32_t*>(d + seq_bytes);
  const auto* d_prefill = reinterpret_cast<const kc::AttentionWorkItem*>(d + seq_bytes + table_bytes);
  const auto* d_decode =
      reinterpret_cast<const kc::AttentionWorkItem*>(d + seq_bytes + table_bytes + prefill_bytes);
  return Typed(q, "LaunchPagedAttention", [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    return kc::LaunchPagedAttention(P<T>(q), P<T>(k_cache), P<T>(v_cache), d_seqs, d_tables,
                                    d_prefill, prefill_items_.size(), d_decode,
                                    decode_items_.size(), p, P<T>(out), ctx_->stream);
  });
}

// The top-k lists come back to the host because the MoE executor groups rows there; a later
// version should keep them on the device (kernels/cuda/permute.h builds the row map there) and
// only bring the per-expert counts back.
absl::Status CudaBackend::RouterTopK(const Tensor& logits, int64_t k, kernels::cpu::RouterKind kind,
                                     bool renormalize, std::span<int32_t> topk_ids,
                                     std::span<float> topk_weights) {
  const int64_t num_tokens = Rows(logits), num_experts = Cols(logits);
  SY_CHECK(static_cast<int64_t>(topk_ids.size()) == num_tokens * k &&
           topk_weights.size() == topk_ids.size());
  if (num_tokens == 0) return absl::OkStatus();
  const size_t ids_bytes = Align16(topk_ids.size_bytes());
  SY_ASSIGN_OR_RETURN(void* d_out, Reserve(router_out_, ids_bytes + topk_weights.size_bytes()));
  auto* d_ids = static_cast<int32_t*>(d_out);
  auto* d_weights = reinterpret_cast<float*>(static_cast<char*>(d_out) + ids_bytes);
  SY_RETURN_IF_ERROR(Typed(logits, "LaunchRouterTopK", [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    return kc::LaunchRouterTopK(P<T>(logits), num_tokens, num_experts, k, kind, renormalize, d_ids,
                                d_weights, nullptr, ctx_->stream);
  }));
  SY_ASSIGN_OR_RETURN(void* staged, Download(d_out, ids_bytes + topk_weights.size_bytes(), "RouterTopK"));
  std::memcpy(topk_ids.data(), staged, topk_ids.size_bytes());
  std::memcpy(topk_weights.data(), static_cast<char*>(staged) + ids_bytes, topk_weights.size_bytes());
  return absl::OkStatus();
}

}  // namespace

bool CudaDeviceAvailable(std::string* why) {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess || count == 0) {
    if (why != nullptr) {
      *why = err != cudaSuccess ? absl::StrCat(cudaGetErrorName(err), ": ", cudaGetErrorString(err))
                                : std::string("no CUDA device");
    }
    cudaGetLastError();  // reset the runtime's last error so it does not leak into later calls
    return false;
  }
  return true;
}

absl::StatusOr<std::unique_ptr<Backend>> MakeCudaBackend(const CudaBackendOptions& options) {
  std::string why;
  if (!CudaDeviceAvailable(&why)) {
    return absl::UnavailableError(absl::StrCat("backend cuda: no usable CUDA device (", why, ")"));
  }
  auto ctx = std::make_shared<CudaContext>();
  ctx->device_idx = options.device_idx;
  SY_CUDA_RETURN_IF_ERROR(cudaSetDevice(options.device_idx));
  SY_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&ctx->stream, cudaStreamNonBlocking));
  SY_CUBLAS_RETURN_IF_ERROR(cublasCreate(&ctx->cublas));
  SY_CUBLAS_RETURN_IF_ERROR(cublasSetStream(ctx->cublas, ctx->stream));
  // Keep freed blocks in the stream-ordered pool instead of returning them to the driver at each
  // synchronisation: scratch and upload buffers are freed and reallocated as batches grow.
  cudaMemPool_t pool = nullptr;
  SY_CUDA_RETURN_IF_ERROR(cudaDeviceGetDefaultMemPool(&pool, options.device_idx));
  uint64_t threshold = UINT64_MAX;
  SY_CUDA_RETURN_IF_ERROR(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &threshold));
  return std::unique_ptr<Backend>(new CudaBackend(std::move(ctx), options));
}

}  // namespace switchyard
