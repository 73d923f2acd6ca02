// Single-process engine throughput: prefill and decode tokens/s on a documented MoE model size. On
// the CPU backend the GEMM rate the forward pass reached is printed beside OpenBLAS's own sgemm rate
// measured in the same run (the bound); on CUDA (bf16) the card's bounds come from moe-layer-bench.
// Decode generates: each step's tokens are the greedy picks of the step before, sampled where the
// worker would sample them (on the device when the backend can).
//
//   build/bin/bench-engine [--backend cpu|cuda|auto] [--demo 1] [--layers N --hidden H
//                           --experts E --top-k K --moe-inter I --prompt-tokens P
//                           --decode-tokens D --decode-batch B]
// --demo 1: the demo model's shape (scripts/demo.sh: Qwen3-MoE, 4 layers, hidden 64, 8 experts).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "kernels/cpu/gemm.h"
#include "tools/model_maker.h"
#include "worker/engine.h"

namespace switchyard {
namespace {

using Clock = std::chrono::steady_clock;

struct BenchOptions {
  std::string backend = "cpu";
  int64_t layers = 4, hidden = 1024, heads = 16, kv_heads = 4, head_dim = 64;
  int64_t experts = 16, top_k = 2, moe_inter = 512, vocab = 4096;
  int64_t prompt_tokens = 512, decode_tokens = 32, decode_batch = 16;

  // The demo checkpoint's shape (MakeModelOptions' defaults for qwen3_moe).
  void SetDemoShape() {
    const MakeModelOptions demo;
    layers = demo.num_layers;
    hidden = demo.hidden_size;
    heads = demo.num_heads;
    kv_heads = demo.num_kv_heads;
    head_dim = 32;  // Qwen3-MoE's default in the maker
    experts = demo.num_experts;
    top_k = 2;
    moe_inter = demo.moe_intermediate_size;
    vocab = demo.vocab_size;
  }
};

// The greedy next token of every entry of `out` (its last row): on the device when the backend
// samples there (then `out` holds device logits only), else from the host logits.
absl::Status GreedyNext(Engine& engine, const ForwardOutput& out, std::vector<int32_t>* next) {
  const int64_t n = static_cast<int64_t>(out.first_row.size());
  next->resize(n);
  if (engine.backend().samples_on_device()) {
    std::vector<int64_t> rows(out.first_row.begin(), out.first_row.end());
    std::vector<DeviceSamplingRow> params(n);
    for (DeviceSamplingRow& p : params) p.temperature = 0.0f;
    return engine.backend().SampleTokens(out.device_logits, rows, params, *next);
  }
  for (int64_t i = 0; i < n; ++i) {
    const float* row = out.logits.data() + out.first_row[i] * out.vocab_size;
    (*next)[i] = static_cast<int32_t>(std::max_element(row, row + out.vocab_size) - row);
  }
  return absl::OkStatus();
}

double Seconds(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// GEMM FLOPs of one forward over `tokens` tokens producing `logit_rows` logits rows.
double GemmFlops(const ModelConfig& c, int64_t tokens, int64_t logit_rows) {
  const double h = c.hidden_size, q = c.num_attention_heads * c.head_dim,
               kv = c.num_key_value_heads * c.head_dim;
  double per_token = 2 * h * (q + 2 * kv) + 2 * q * h;  // q, k, v, o
  per_token += 2 * h * c.num_experts;                        // router
  per_token += c.num_experts_per_tok * 3 * 2 * h * c.moe_intermediate_size;
  return c.num_hidden_layers * per_token * tokens + 2.0 * h * c.vocab_size * logit_rows;
}

double SgemmRate(int64_t m, int64_t n, int64_t k) {
  std::vector<float> a(m * k, 0.5f), b(n * k, 0.25f), c(m * n);
  kernels::cpu::GemmNT(a.data(), b.data(), c.data(), m, n, k);  // warm-up
  int reps = 0;
  const auto start = Clock::now();
  do {
    kernels::cpu::GemmNT(a.data(), b.data(), c.data(), m, n, k);
    ++reps;
  } while (Seconds(start) < 1.0);
  return 2.0 * m * n * k * reps / Seconds(start);
}

int Run(const BenchOptions& o) {
  const std::filesystem::path dir = std::filesystem::temp_directory_path() / "switchyard-bench-model";
  MakeModelOptions make;
  make.family = "qwen3_moe";
  make.out_dir = dir;
  make.num_layers = o.layers;
  make.hidden_size = o.hidden;
  make.num_heads = o.heads;
  make.num_kv_heads = o.kv_heads;
  make.head_dim = o.head_dim;
  make.num_experts = o.experts;
  make.top_k = o.top_k;
  make.moe_intermediate_size = o.moe_inter;
  make.vocab_size = o.vocab;
  if (absl::Status s = MakeModel(make); !s.ok()) {
    std::fprintf(stderr, "bench-engine: %s\n", s.ToString().c_str());
    return 1;
  }
  EngineOptions options;
  options.block_size = 16;
  options.kv_cache_bytes = 1ll << 30;
  auto backend = MakeBackend(o.backend);
  if (!backend.ok()) {
    std::fprintf(stderr, "bench-engine: --backend %s: %s\n", o.backend.c_str(),
                 backend.status().ToString().c_str());
    return 1;
  }
  auto engine_or = Engine::Load(dir, std::move(backend).value(), options);
  if (!engine_or.ok()) {
    std::fprintf(stderr, "bench-engine: %s\n", engine_or.status().ToString().c_str());
    return 1;
  }
  Engine& engine = **engine_or;
  const ModelConfig& c = engine.config();
  std::mt19937 rng(1);
  std::uniform_int_distribution<int32_t> token(0, c.vocab_size - 1);
  const int64_t blocks_per_seq = (o.prompt_tokens + o.decode_tokens + 15) / 16;

  const bool on_cpu = engine.backend().kind() == BackendKind::kCpu;
  std::printf("backend: %s (%s weights and activations)\n", std::string(engine.backend().name()).c_str(),
              std::string(DTypeName(engine.backend().activation_dtype())).c_str());
  std::printf("model: qwen3_moe-shaped, %lld layers, hidden %lld, %lld heads (%lld kv) x %lld, "
              "%lld experts top-%lld of width %lld, vocab %lld, weights %.1f MB\n",
              (long long)c.num_hidden_layers, (long long)c.hidden_size,
              (long long)c.num_attention_heads, (long long)c.num_key_value_heads,
              (long long)c.head_dim, (long long)c.num_experts, (long long)c.num_experts_per_tok,
              (long long)c.moe_intermediate_size, (long long)c.vocab_size,
              engine.weight_bytes_loaded() / 1e6);
  if (on_cpu) std::printf("OpenBLAS core: %s\n", kernels::cpu::BlasCoreName());
  std::printf("\n");

  // Prefill: one sequence of prompt_tokens, as one chunk.
  std::vector<int32_t> prompt(o.prompt_tokens);
  for (int32_t& t : prompt) t = token(rng);
  std::vector<int32_t> blocks(blocks_per_seq);
  for (int64_t i = 0; i < blocks_per_seq; ++i) blocks[i] = static_cast<int32_t>(i);
  ForwardOutput out;
  BatchEntry entry{prompt, 0, blocks, false};
  (void)engine.Forward({&entry, 1}, &out);  // warm-up
  auto start = Clock::now();
  const int prefill_reps = 3;
  for (int r = 0; r < prefill_reps; ++r) (void)engine.Forward({&entry, 1}, &out);
  const double prefill_s = Seconds(start) / prefill_reps;
  const double prefill_flops = GemmFlops(c, o.prompt_tokens, 1) / prefill_s;

  // Decode: decode_batch sequences, each with a 64-token context, one token per step.
  const int64_t batch = o.decode_batch, ctx = 64;
  std::vector<std::vector<int32_t>> seq_blocks(batch), seq_tokens(batch);
  for (int64_t s = 0; s < batch; ++s) {
    for (int64_t i = 0; i < (ctx + o.decode_tokens + 15) / 16; ++i) {
      seq_blocks[s].push_back(static_cast<int32_t>(blocks_per_seq + s * 16 + i));
    }
    seq_tokens[s].resize(ctx);
    for (int32_t& t : seq_tokens[s]) t = token(rng);
    BatchEntry e{seq_tokens[s], 0, seq_blocks[s], false};
    (void)engine.Forward({&e, 1}, &out);
  }
  std::vector<BatchEntry> step(batch);
  std::vector<int32_t> next(batch);
  for (int64_t s = 0; s < batch; ++s) next[s] = token(rng);
  // Where the worker would sample: logits stay on a device that samples.
  const ForwardOptions forward_options{.logits_to_host = !engine.backend().samples_on_device()};
  start = Clock::now();
  for (int64_t d = 0; d < o.decode_tokens; ++d) {
    for (int64_t s = 0; s < batch; ++s) {
      step[s] = BatchEntry{std::span<const int32_t>(&next[s], 1), ctx + d, seq_blocks[s], false};
    }
    if (absl::Status st = engine.Forward(step, &out, forward_options); !st.ok()) {
      std::fprintf(stderr, "bench-engine: decode: %s\n", st.ToString().c_str());
      return 1;
    }
    if (absl::Status st = GreedyNext(engine, out, &next); !st.ok()) {
      std::fprintf(stderr, "bench-engine: sampling: %s\n", st.ToString().c_str());
      return 1;
    }
  }
  const double decode_s = Seconds(start);
  const double decode_tps = batch * o.decode_tokens / decode_s;
  const double decode_flops = GemmFlops(c, batch, batch) * o.decode_tokens / decode_s;

  std::printf("%-34s %14s %18s\n", "phase", "tokens/s", "GEMM GFLOP/s");
  std::printf("%-34s %14.1f %18.1f\n", ("prefill (" + std::to_string(o.prompt_tokens) + " tokens)").c_str(),
              o.prompt_tokens / prefill_s, prefill_flops / 1e9);
  std::printf("%-34s %14.1f %18.1f\n", ("decode (batch " + std::to_string(batch) + ", ctx 64)").c_str(),
              decode_tps, decode_flops / 1e9);
  std::printf("decode step (forward + greedy sampling): %.3f ms\n", 1e3 * decode_s / o.decode_tokens);
  if (on_cpu) {
    const double bound_square = SgemmRate(1024, 1024, 1024);
    const double bound_expert =
        SgemmRate(o.prompt_tokens * o.top_k / o.experts, o.moe_inter, o.hidden);
    std::printf("\nbound: OpenBLAS sgemm 1024^3 %.1f GFLOP/s; expert-shaped sgemm %.1f GFLOP/s\n",
                bound_square / 1e9, bound_expert / 1e9);
    std::printf("prefill reaches %.0f%% of the square sgemm rate; decode %.0f%%\n",
                100 * prefill_flops / bound_square, 100 * decode_flops / bound_square);
  } else {
    std::printf("\nbounds: the card's bf16 GEMM rate and copy bandwidth are measured by "
                "moe-layer-bench in the same GPU run\n");
  }
  std::filesystem::remove_all(dir);
  return 0;
}

}  // namespace
}  // namespace switchyard

int main(int argc, char** argv) {
  switchyard::BenchOptions o;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--backend") {
      o.backend = argv[i + 1];
      continue;
    }
    int64_t value = 0;
    if (!absl::SimpleAtoi(argv[i + 1], &value)) {
      std::fprintf(stderr, "bench-engine: %s expects an integer, found '%s'\n", argv[i], argv[i + 1]);
      return 2;
    }
    if (flag == "--demo") {
      if (value != 0) o.SetDemoShape();
    } else if (flag == "--layers") o.layers = value;
    else if (flag == "--hidden") o.hidden = value;
    else if (flag == "--experts") o.experts = value;
    else if (flag == "--top-k") o.top_k = value;
    else if (flag == "--moe-inter") o.moe_inter = value;
    else if (flag == "--prompt-tokens") o.prompt_tokens = value;
    else if (flag == "--decode-tokens") o.decode_tokens = value;
    else if (flag == "--decode-batch") o.decode_batch = value;
    else {
      std::fprintf(stderr, "bench-engine: unknown flag %s\n", argv[i]);
      return 2;
    }
  }
  return switchyard::Run(o);
}
