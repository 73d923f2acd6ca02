#!/usr/bin/env python3
"""The MoE layer of bench/gpu/moe_layer_bench.cu in PyTorch, on the same card, for comparison.

Same shapes (Mixtral-8x7B, Qwen3-30B-A3B, DeepSeek-V3 routed experts; 64, 128, 4096, 16384
tokens) and the same steps: router GEMM in bf16 with fp32 logits, softmax top-k with
renormalisation, a stable sort of the (token, choice) pairs by expert, gather, per-expert SwiGLU
(fused gate_up weight [2F, H], down [H, F]) and the weighted combine. Two expert paths:
  loop:    a Python loop over the experts that received tokens (the common eager baseline);
  grouped: torch._grouped_mm when this PyTorch has it (else reported as unavailable).
Timing: CUDA events, median after warm-up, pseudo-random bf16 inputs.

Usage: moe_layer_torch.py [--ours FILE.csv] [--out FILE.csv] [--quick]
With --ours (moe-layer-bench's CSV from the same card), prints torch_ms / ours_ms per row: above 1
means our layer is faster.
"""
import argparse
import csv
import statistics
import sys

import torch

MODELS = [("Mixtral-8x7B", 8, 2, 4096, 14336), ("Qwen3-30B-A3B", 128, 8, 2048, 768),
          ("DeepSeek-V3", 256, 8, 7168, 2048)]
TOKENS = [64, 128, 4096, 16384]


def time_ms(fn, warmup, reps):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    return statistics.median(times)


class Layer:
    def __init__(self, num_experts, top_k, hidden, ffn, max_tokens, gen):
        dev = "cuda"
        self.e, self.k, self.h, self.f = num_experts, top_k, hidden, ffn

        def rand(*shape, scale):
            # Filled in place in bf16: no fp32 copy of DeepSeek's 22 GB of expert weights.
            return torch.empty(*shape, dtype=torch.bfloat16, device=dev).uniform_(-scale, scale, generator=gen)

        self.router_w = rand(num_experts, hidden, scale=0.05)
        self.gate_up_w = rand(num_experts, 2 * ffn, hidden, scale=0.02)
        self.down_w = rand(num_experts, hidden, ffn, scale=0.02)
        self.x = rand(max_tokens, hidden, scale=1.0)
        # torch._grouped_mm wants B as [E, K, N]: transposed views of the same weights.
        self.gate_up_t = self.gate_up_w.transpose(1, 2)
        self.down_t = self.down_w.transpose(1, 2)

    def route(self, tokens):
        x = self.x[:tokens]
        logits = torch.matmul(x, self.router_w.t()).float()
        probs = torch.softmax(logits, dim=-1)
        weights, ids = torch.topk(probs, self.k, dim=-1)
        weights = weights / weights.sum(dim=-1, keepdim=True)
        flat_ids = ids.reshape(-1)
        order = torch.argsort(flat_ids, stable=True)
        counts = torch.bincount(flat_ids, minlength=self.e)
        sorted_x = x[order // self.k]
        return x, weights, order, counts, sorted_x

    def combine(self, tokens, weights, order, expert_out):
        rows = torch.empty_like(expert_out)
        rows[order] = expert_out  # back to (token, choice) order
        rows = rows.view(tokens, self.k, self.h).float()
        return (rows * weights.unsqueeze(-1)).sum(dim=1).to(torch.bfloat16)

    def run_loop(self, tokens):
        x, weights, order, counts, sorted_x = self.route(tokens)
        offsets = torch.cumsum(counts, 0).tolist()  # host sync, as in our layer
        out = torch.empty(sorted_x.shape[0], self.h, dtype=torch.bfloat16, device="cuda")
        begin = 0
        for e, end in enumerate(offsets):
            if end > begin:
                gu = sorted_x[begin:end] @ self.gate_up_w[e].t()
                act = torch.nn.functional.silu(gu[:, :self.f]) * gu[:, self.f:]
                out[begin:end] = act @ self.down_w[e].t()
            begin = end
        return self.combine(tokens, weights, order, out)

    def run_grouped(self, tokens):
        x, weights, order, counts, sorted_x = self.route(tokens)
        offs = torch.cumsum(counts, 0).to(torch.int32)
        gu = torch._grouped_mm(sorted_x, self.gate_up_t, offs=offs)
        act = torch.nn.functional.silu(gu[:, :self.f]) * gu[:, self.f:]
        out = torch._grouped_mm(act, self.down_t, offs=offs)
        return self.combine(tokens, weights, order, out)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ours", help="moe-layer-bench CSV from the same card")
    parser.add_argument("--out", help="write this script's results as CSV")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to measure")
        return 0
    ours = {}
    if args.ours:
        with open(args.ours) as f:
            for row in csv.DictReader(f):
                key = (row["model"], int(row["tokens"]))
                ours[key] = min(float(row["ms"]), ours.get(key, float("inf")))
    has_grouped = hasattr(torch, "_grouped_mm")
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, "
          f"torch._grouped_mm: {'yes' if has_grouped else 'no'}")
    gen = torch.Generator(device="cuda")
    gen.manual_seed(0)
    results = []
    print(f"{'model':14} {'tokens':>6} {'method':8} {'ms':>9} {'TFLOP/s':>8} {'ours ms':>9} {'torch/ours':>10}")
    for name, e, k, h, f in MODELS:
        layer = Layer(e, k, h, f, TOKENS[-1], gen)
        for tokens in TOKENS:
            for method in ("loop", "grouped"):
                fn = layer.run_loop if method == "loop" else layer.run_grouped
                note = ""
                try:
                    if method == "grouped" and not has_grouped:
                        raise RuntimeError("torch._grouped_mm not in this PyTorch")
                    reps = 3 if args.quick else (5 if tokens >= 4096 else 20)
                    ms = time_ms(lambda: fn(tokens), 2, reps)
                except (RuntimeError, TypeError) as err:  # unsupported shape/arch/version
                    ms, note = float("nan"), f"unavailable: {str(err).splitlines()[0][:60]}"
                flops = 2.0 * tokens * h * e + 6.0 * tokens * k * h * f
                ours_ms = ours.get((name, tokens), float("nan"))
                ratio = ms / ours_ms if ours_ms == ours_ms and ms == ms else float("nan")
                tflops = flops / (ms * 1e-3) / 1e12 if ms == ms else float("nan")
                print(f"{name:14} {tokens:6d} {method:8} {ms:9.3f} {tflops:8.1f} {ours_ms:9.3f} {ratio:10.2f} {note}")
                sys.stdout.flush()
                results.append((name, tokens, method, ms, tflops, ours_ms, ratio, note))
        del layer
        torch.cuda.empty_cache()
    if args.out:
        with open(args.out, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["model", "tokens", "method", "ms", "tflops", "ours_best_ms", "torch_over_ours", "note"])
            w.writerows(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
