// The MoE layer on one GPU, the way the CUDA backend runs it: router GEMM (bf16 -> fp32 logits),
// top-k, per-expert counts and offsets, the offsets to the host (one sync, as the engine does),
// the row map and gather into expert order, grouped gate_up GEMM, SiLU*up, grouped down GEMM,
// and the fixed-order weighted combine. Shapes of Mixtral-8x7B, Qwen3-30B-A3B and DeepSeek-V3
// (routed experts only; DeepSeek's grouped top-k and shared expert are not modelled), decode 64
// and 128 tokens and prefill 4096 and 16384 tokens, with both grouped-GEMM methods.
//
// Printed beside each time: achieved TFLOP/s against a large cuBLAS bf16 GEMM measured in the
// same run, and GB/s of expert weights read against device copy bandwidth measured in the same
// run (each touched expert's three projections read once). Timing: CUDA events, median of the
// repetitions after warm-up; inputs are pseudo-random (never zeros).
//
// Usage: moe-layer-bench [--out FILE.csv] [--quick]   (--quick: fewer repetitions, smaller peers)
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/cpu/router.h"
#include "kernels/cuda/elementwise.h"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/permute.h"
#include "kernels/cuda/router.h"

namespace switchyard::bench {
namespace {

namespace kc = kernels::cuda;
using bf16 = __nv_bfloat16;

#define BENCH_CUDA(expr)                                                                      \
  do {                                                                                        \
    cudaError_t e_ = (expr);                                                                  \
    if (e_ != cudaSuccess) {                                                                  \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #expr, cudaGetErrorString(e_)); \
      std::exit(1);                                                                           \
    }                                                                                         \
  } while (0)
#define BENCH_CUBLAS(expr)                                                                    \
  do {                                                                                        \
    cublasStatus_t s_ = (expr);                                                               \
    if (s_ != CUBLAS_STATUS_SUCCESS) {                                                        \
      std::fprintf(stderr, "%s:%d: %s: cublas status %d\n", __FILE__, __LINE__, #expr, int(s_)); \
      std::exit(1);                                                                           \
    }                                                                                         \
  } while (0)
#define BENCH_GEMM(expr)                                                                      \
  do {                                                                                        \
    kc::GemmStatus g_ = (expr);                                                               \
    if (!g_.ok()) {                                                                           \
      std::fprintf(stderr, "%s:%d: %s failed (cuda %d, cublas %d)\n", __FILE__, __LINE__, g_.call, \
                   int(g_.cuda), int(g_.cublas));                                             \
      std::exit(1);                                                                           \
    }                                                                                         \
  } while (0)

struct ModelShape {
  const char* name;
  int64_t num_experts, top_k, hidden, ffn;
};

constexpr ModelShape kModels[] = {
    {"Mixtral-8x7B", 8, 2, 4096, 14336},
    {"Qwen3-30B-A3B", 128, 8, 2048, 768},
    {"DeepSeek-V3", 256, 8, 7168, 2048},
};
constexpr int64_t kTokenCounts[] = {64, 128, 4096, 16384};

// Uniform values in [-scale, scale) from a hash of (seed, index): reproducible, never all zero.
__global__ void FillKernel(bf16* p, int64_t n, uint32_t seed, float scale) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) {
    uint32_t h = static_cast<uint32_t>(i) * 2654435761u ^ (seed * 0x9E3779B9u) ^ static_cast<uint32_t>(i >> 32);
    h ^= h >> 16;
    h *= 0x85EBCA6Bu;
    h ^= h >> 13;
    p[i] = __float2bfloat16_rn((static_cast<float>(h >> 8) * (1.0f / 16777216.0f) * 2.0f - 1.0f) * scale);
  }
}

template <typename T>
T* Alloc(int64_t n) {
  T* p = nullptr;
  BENCH_CUDA(cudaMalloc(reinterpret_cast<void**>(&p), std::max<int64_t>(n, 1) * sizeof(T)));
  return p;
}

void Fill(bf16* p, int64_t n, uint32_t seed, float scale) {
  FillKernel<<<4096, 256>>>(p, n, seed, scale);
  BENCH_CUDA(cudaGetLastError());
}

float Median(std::vector<float> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Times `fn` (which enqueues on `stream`) with events: median ms over `reps` after `warmup`.
template <typename Fn>
float TimeMs(cudaStream_t stream, int warmup, int reps, Fn fn) {
  cudaEvent_t start, stop;
  BENCH_CUDA(cudaEventCreate(&start));
  BENCH_CUDA(cudaEventCreate(&stop));
  for (int i = 0; i < warmup; ++i) fn();
  BENCH_CUDA(cudaStreamSynchronize(stream));
  std::vector<float> ms;
  for (int i = 0; i < reps; ++i) {
    BENCH_CUDA(cudaEventRecord(start, stream));
    fn();
    BENCH_CUDA(cudaEventRecord(stop, stream));
    BENCH_CUDA(cudaEventSynchronize(stop));
    float t = 0;
    BENCH_CUDA(cudaEventElapsedTime(&t, start, stop));
    ms.push_back(t);
  }
  BENCH_CUDA(cudaEventDestroy(start));
  BENCH_CUDA(cudaEventDestroy(stop));
  return Median(ms);
}

// The peers: a large bf16 GEMM through cuBLAS and a device-to-device copy.
struct Peers {
  double gemm_tflops = 0, copy_gbps = 0;
};

Peers MeasurePeers(cublasHandle_t handle, cudaStream_t stream, bool quick) {
  Peers peers;
  const int64_t n = quick ? 4096 : 8192;
  bf16 *a = Alloc<bf16>(n * n), *b = Alloc<bf16>(n * n), *c = Alloc<bf16>(n * n);
  Fill(a, n * n, 1, 1.0f);
  Fill(b, n * n, 2, 1.0f);
  const float ms = TimeMs(stream, 3, quick ? 5 : 20, [&] {
    BENCH_GEMM(kc::Gemm(handle, a, b, kc::GemmType::kBF16, c, kc::GemmType::kBF16, n, n, n, true, 0.0f));
  });
  peers.gemm_tflops = 2.0 * n * n * n / (ms * 1e-3) / 1e12;
  BENCH_CUDA(cudaFree(a));
  BENCH_CUDA(cudaFree(b));
  BENCH_CUDA(cudaFree(c));
  const size_t bytes = size_t{quick ? 256u : 2048u} << 20;
  void *src = Alloc<char>(bytes), *dst = Alloc<char>(bytes);
  BENCH_CUDA(cudaMemsetAsync(src, 0x5a, bytes, stream));
  const float copy_ms = TimeMs(stream, 3, quick ? 5 : 20, [&] {
    BENCH_CUDA(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream));
  });
  peers.copy_gbps = 2.0 * bytes / (copy_ms * 1e-3) / 1e9;  // bytes read + bytes written
  BENCH_CUDA(cudaFree(src));
  BENCH_CUDA(cudaFree(dst));
  return peers;
}

// One model's layer: weights for every expert, buffers for the largest token count.
class MoeLayer {
 public:
  MoeLayer(const ModelShape& m, int64_t max_tokens) : m_(m) {
    const int64_t h = m.hidden, f = m.ffn, e = m.num_experts, rows = max_tokens * m.top_k;
    router_w_ = Alloc<bf16>(e * h);
    gate_up_w_ = Alloc<bf16>(e * 2 * f * h);  // per expert [2F, H]: gate rows then up rows
    down_w_ = Alloc<bf16>(e * h * f);         // per expert [H, F]
    Fill(router_w_, e * h, 11, 0.05f);
    Fill(gate_up_w_, e * 2 * f * h, 12, 0.02f);
    Fill(down_w_, e * h * f, 13, 0.02f);
    x_ = Alloc<bf16>(max_tokens * h);
    Fill(x_, max_tokens * h, 14, 1.0f);
    logits_ = Alloc<float>(max_tokens * e);
    topk_ids_ = Alloc<int32_t>(rows);
    topk_w_ = Alloc<float>(rows);
    counts_ = Alloc<int32_t>(e);
    offsets_ = Alloc<int64_t>(e + 1);
    src_token_ = Alloc<int32_t>(rows);
    row_of_ = Alloc<int32_t>(rows);
    sorted_ = Alloc<bf16>(rows * h);
    gate_up_ = Alloc<bf16>(rows * 2 * f);
    act_ = Alloc<bf16>(rows * f);
    expert_out_ = Alloc<bf16>(rows * h);
    out_ = Alloc<bf16>(max_tokens * h);
    BENCH_CUDA(cudaMallocHost(reinterpret_cast<void**>(&host_offsets_), (e + 1) * sizeof(int64_t)));
  }
  ~MoeLayer() {
    for (void* p : {(void*)router_w_, (void*)gate_up_w_, (void*)down_w_, (void*)x_, (void*)logits_,
                    (void*)topk_ids_, (void*)topk_w_, (void*)counts_, (void*)offsets_, (void*)src_token_,
                    (void*)row_of_, (void*)sorted_, (void*)gate_up_, (void*)act_, (void*)expert_out_,
                    (void*)out_}) {
      cudaFree(p);
    }
    cudaFreeHost(host_offsets_);
  }

  // Phase times in ms of the last Run (router, permute incl. the offsets sync, experts, combine).
  float phase_ms[4] = {0, 0, 0, 0};

  void Run(cublasHandle_t handle, cudaStream_t stream, kc::GroupedGemmMethod method, int64_t tokens,
           cudaEvent_t* marks) {
    const int64_t h = m_.hidden, f = m_.ffn, e = m_.num_experts, k = m_.top_k, rows = tokens * k;
    auto mark = [&](int i) { if (marks != nullptr) BENCH_CUDA(cudaEventRecord(marks[i], stream)); };
    mark(0);
    BENCH_GEMM(kc::Gemm(handle, x_, router_w_, kc::GemmType::kBF16, logits_, kc::GemmType::kF32, tokens, e, h,
                        true, 0.0f));
    BENCH_CUDA(kc::LaunchRouterTopK(logits_, tokens, e, k, kernels::cpu::RouterKind::kSoftmaxTopK, true,
                                    topk_ids_, topk_w_, nullptr, stream));
    mark(1);
    BENCH_CUDA(kc::LaunchCountExperts(topk_ids_, rows, e, counts_, stream));
    BENCH_CUDA(kc::LaunchExpertOffsets(counts_, e, offsets_, stream));
    BENCH_CUDA(cudaMemcpyAsync(host_offsets_, offsets_, (e + 1) * sizeof(int64_t), cudaMemcpyDeviceToHost,
                               stream));
    BENCH_CUDA(kc::LaunchBuildRowMap(topk_ids_, topk_w_, tokens, k, e, offsets_, src_token_, nullptr, row_of_,
                                     stream));
    BENCH_CUDA(kc::LaunchGatherRows(x_, src_token_, nullptr, rows, h, sorted_, stream));
    BENCH_CUDA(cudaStreamSynchronize(stream));  // the grouped GEMMs need the offsets on the host
    mark(2);
    groups_.clear();
    touched_experts = 0;
    for (int64_t i = 0; i < e; ++i) {
      const int64_t n_rows = host_offsets_[i + 1] - host_offsets_[i];
      touched_experts += n_rows > 0;
      groups_.push_back({gate_up_w_ + i * 2 * f * h, host_offsets_[i], n_rows});
    }
    BENCH_GEMM(grouped_.Run(handle, method, groups_, sorted_, gate_up_, 2 * f, h, true));
    BENCH_CUDA(kc::LaunchSiluMul(gate_up_, 2 * f, gate_up_ + f, 2 * f, act_, rows, f, stream));
    for (int64_t i = 0; i < e; ++i) groups_[i].w = down_w_ + i * h * f;
    BENCH_GEMM(grouped_.Run(handle, method, groups_, act_, expert_out_, h, f, true));
    mark(3);
    BENCH_CUDA(kc::LaunchCombineRows(expert_out_, row_of_, topk_w_, tokens, k, h, out_, stream));
    mark(4);
  }

  int64_t touched_experts = 0;

 private:
  ModelShape m_;
  bf16 *router_w_, *gate_up_w_, *down_w_, *x_, *sorted_, *gate_up_, *act_, *expert_out_, *out_;
  float *logits_, *topk_w_;
  int32_t *topk_ids_, *counts_, *src_token_, *row_of_;
  int64_t* offsets_;
  int64_t* host_offsets_ = nullptr;
  std::vector<kc::GemmGroup> groups_;
  kc::GroupedGemm grouped_;
};

int Main(int argc, char** argv) {
  std::string out_path;
  bool quick = false;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--out") == 0 && i + 1 < argc) out_path = argv[++i];
    else if (std::strcmp(argv[i], "--quick") == 0) quick = true;
    else {
      std::fprintf(stderr, "usage: %s [--out FILE.csv] [--quick]\n", argv[0]);
      return 2;
    }
  }
  cudaDeviceProp prop;
  BENCH_CUDA(cudaGetDeviceProperties(&prop, 0));
  cudaStream_t stream;
  BENCH_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  cublasHandle_t handle;
  BENCH_CUBLAS(cublasCreate(&handle));
  BENCH_CUBLAS(cublasSetStream(handle, stream));
  const Peers peers = MeasurePeers(handle, stream, quick);
  std::printf("device: %s, %d SMs, %.1f GiB\n", prop.name, prop.multiProcessorCount,
              prop.totalGlobalMem / double(1 << 30));
  std::printf("peers (same run): cuBLAS bf16 GEMM %.1f TFLOP/s; device copy %.1f GB/s (read + write)\n",
              peers.gemm_tflops, peers.copy_gbps);
  FILE* csv = out_path.empty() ? nullptr : std::fopen(out_path.c_str(), "w");
  if (csv != nullptr) {
    std::fprintf(csv, "model,tokens,method,ms,tflops,gemm_peak_tflops,weight_gbps,copy_gbps,experts_touched,"
                      "router_ms,permute_ms,experts_ms,combine_ms\n");
  }
  std::printf("%-14s %6s %-8s %9s %8s %6s %9s %6s %5s | %7s %7s %8s %7s\n", "model", "tokens", "method", "ms",
              "TFLOP/s", "%gemm", "wt GB/s", "%copy", "exp", "router", "permute", "experts", "combine");
  cudaEvent_t marks[5];
  for (cudaEvent_t& ev : marks) BENCH_CUDA(cudaEventCreate(&ev));
  for (const ModelShape& m : kModels) {
    MoeLayer layer(m, kTokenCounts[std::size(kTokenCounts) - 1]);
    for (int64_t tokens : kTokenCounts) {
      for (auto method : {kc::GroupedGemmMethod::kLoop, kc::GroupedGemmMethod::kCublasGrouped}) {
        const bool big = tokens >= 4096;
        const int reps = quick ? 3 : (big ? 7 : 30);
        const float ms = TimeMs(stream, 2, reps, [&] { layer.Run(handle, stream, method, tokens, nullptr); });
        // One more run with phase marks (not part of the median).
        layer.Run(handle, stream, method, tokens, marks);
        BENCH_CUDA(cudaEventSynchronize(marks[4]));
        float phase[4];
        for (int i = 0; i < 4; ++i) BENCH_CUDA(cudaEventElapsedTime(&phase[i], marks[i], marks[i + 1]));
        const int64_t rows = tokens * m.top_k;
        const double flops = 2.0 * tokens * m.hidden * m.num_experts + 6.0 * rows * m.hidden * m.ffn;
        const double tflops = flops / (ms * 1e-3) / 1e12;
        const double weight_bytes = 3.0 * m.hidden * m.ffn * 2.0 * layer.touched_experts;
        const double gbps = weight_bytes / (ms * 1e-3) / 1e9;
        const char* method_name = method == kc::GroupedGemmMethod::kLoop ? "loop" : "grouped";
        std::printf("%-14s %6ld %-8s %9.3f %8.1f %5.1f%% %9.1f %5.1f%% %5ld | %7.3f %7.3f %8.3f %7.3f\n", m.name,
                    static_cast<long>(tokens), method_name, ms, tflops, 100 * tflops / peers.gemm_tflops, gbps,
                    100 * gbps / peers.copy_gbps, static_cast<long>(layer.touched_experts), phase[0], phase[1],
                    phase[2], phase[3]);
        if (csv != nullptr) {
          std::fprintf(csv, "%s,%ld,%s,%.4f,%.2f,%.2f,%.2f,%.2f,%ld,%.4f,%.4f,%.4f,%.4f\n", m.name,
                       static_cast<long>(tokens), method_name, ms, tflops, peers.gemm_tflops, gbps, peers.copy_gbps,
                       static_cast<long>(layer.touched_experts), phase[0], phase[1], phase[2], phase[3]);
        }
        std::fflush(stdout);
      }
    }
  }
  if (csv != nullptr) std::fclose(csv);
  for (cudaEvent_t& ev : marks) cudaEventDestroy(ev);
  cublasDestroy(handle);
  cudaStreamDestroy(stream);
  return 0;
}

}  // namespace
}  // namespace switchyard::bench

int main(int argc, char** argv) { return switchyard::bench::Main(argc, argv); }
