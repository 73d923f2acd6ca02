"""The forward pass of every supported family in float64, for one sequence, without a KV cache.

Follows the eager-mode semantics of the Hugging Face transformers modeling files (llama, mixtral,
qwen2_moe, qwen3_moe, olmoe, llama4); written from those semantics, not copied. Because it runs in
float64, it is the "truth" the C++ engine's float32 logits are compared against.

Top-k tie rule: among equal router scores the lower expert index wins (a stable descending sort).
torch.topk does not document its order for ties; with random float weights ties do not occur.
"""

import math

import numpy as np

from ref_checkpoint import CheckpointError


# ----------------------------------------------------------------------------------------------
# Small numeric building blocks
# ----------------------------------------------------------------------------------------------

def rms_norm(x, weight, eps):
    """x * rsqrt(mean(x^2) + eps) * weight over the last axis (weight None: no weight)."""
    normed = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)
    return normed if weight is None else normed * weight


def silu(x):
    return x / (1.0 + np.exp(-x))


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def softmax(x, axis=-1):
    shifted = x - np.max(x, axis=axis, keepdims=True)
    e = np.exp(shifted)
    return e / np.sum(e, axis=axis, keepdims=True)


def top_k_indices(scores, k):
    """Indices of the k largest scores, largest first; ties: lower index first."""
    return np.argsort(-scores, kind="stable")[:k]


def swiglu(x, gate_w, up_w, down_w):
    """down(silu(gate(x)) * up(x)) with weights in nn.Linear layout [out, in]."""
    return (silu(x @ gate_w.T) * (x @ up_w.T)) @ down_w.T


# ----------------------------------------------------------------------------------------------
# RoPE
# ----------------------------------------------------------------------------------------------

def rope_inv_freq(head_dim, theta, scaling):
    """Inverse frequencies theta^(-2i/d), then the configured scaling (linear or llama3)."""
    inv_freq = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    if scaling.rope_type == "linear":
        return inv_freq / scaling.factor
    if scaling.rope_type == "llama3":
        return llama3_scale_inv_freq(inv_freq, scaling)
    return inv_freq


def llama3_scale_inv_freq(inv_freq, scaling):
    """Llama 3.1 scaling: wavelengths shorter than old_len/high_freq_factor are kept, longer than
    old_len/low_freq_factor are divided by factor, and the band between is interpolated."""
    old_len = scaling.original_max_position_embeddings
    low_wavelen = old_len / scaling.low_freq_factor
    high_wavelen = old_len / scaling.high_freq_factor
    wavelen = 2.0 * math.pi / inv_freq
    scaled = np.where(wavelen > low_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = ((old_len / wavelen - scaling.low_freq_factor)
              / (scaling.high_freq_factor - scaling.low_freq_factor))
    smoothed = (1.0 - smooth) * scaled / scaling.factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return np.where(medium, smoothed, scaled)


def apply_rope_half(x, positions, inv_freq):
    """rotate_half RoPE: element i pairs with i + d/2. x: [T, heads, d]."""
    angles = positions[:, None].astype(np.float64) * inv_freq[None, :]  # [T, d/2]
    cos = np.concatenate([np.cos(angles)] * 2, axis=-1)[:, None, :]
    sin = np.concatenate([np.sin(angles)] * 2, axis=-1)[:, None, :]
    half = x.shape[-1] // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


def apply_rope_interleaved(x, positions, inv_freq):
    """Llama 4 RoPE: (2i, 2i+1) is a complex number multiplied by exp(i * pos * inv_freq[i])."""
    angles = positions[:, None].astype(np.float64) * inv_freq[None, :]
    cos, sin = np.cos(angles)[:, None, :], np.sin(angles)[:, None, :]
    real, imag = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = real * cos - imag * sin
    out[..., 1::2] = real * sin + imag * cos
    return out


# ----------------------------------------------------------------------------------------------
# Attention
# ----------------------------------------------------------------------------------------------

def attention_mask(num_tokens, chunk_size=0, sliding_window=0):
    """Boolean [T, T]: query q may attend key k. Causal; optionally same chunk (k//C == q//C) or
    within a sliding window (k > q - W)."""
    q = np.arange(num_tokens)[:, None]
    k = np.arange(num_tokens)[None, :]
    allowed = k <= q
    if chunk_size > 0:
        allowed &= (k // chunk_size) == (q // chunk_size)
    if sliding_window > 0:
        allowed &= k > q - sliding_window
    return allowed


def temperature_scales(positions, floor_scale, attn_scale):
    """Llama 4 NoPE-layer query scale: log(floor((pos + 1) / floor_scale) + 1) * attn_scale + 1."""
    return np.log1p(np.floor((positions + 1.0) / floor_scale)) * attn_scale + 1.0


def scaled_dot_product(q, k, v, allowed):
    """q: [T, H, d], k/v: [T, KV, d] with H a multiple of KV; GQA as repeat_kv: head h reads kv
    head h // (H / KV). Returns [T, H * d]."""
    num_tokens, num_heads, head_dim = q.shape
    group = num_heads // k.shape[1]
    out = np.empty_like(q)
    for h in range(num_heads):
        scores = (q[:, h, :] @ k[:, h // group, :].T) / math.sqrt(head_dim)
        scores = np.where(allowed, scores, -np.inf)
        out[:, h, :] = softmax(scores) @ v[:, h // group, :]
    return out.reshape(num_tokens, num_heads * head_dim)


class ReferenceModel:
    """A checkpoint held as float64 arrays; forward() returns logits for every position.

    Not thread-safe (records which tensors were used, to flag a checkpoint with extra tensors)."""

    def __init__(self, config, tensors):
        self.config = config
        self.tensors = tensors
        self.used = set()
        self.inv_freq = rope_inv_freq(config.head_dim, config.rope_theta, config.rope_scaling)

    # -- tensor access --------------------------------------------------------------------------

    def tensor(self, name):
        if name not in self.tensors:
            raise CheckpointError(f"checkpoint has no tensor {name!r} (model_type "
                                  f"{self.config.model_type})")
        self.used.add(name)
        return self.tensors[name]

    def layer_tensor(self, layer_idx, suffix):
        return self.tensor(self.config.layer_name(layer_idx, suffix))

    def unused_tensors(self):
        return sorted(set(self.tensors) - self.used)

    # -- forward --------------------------------------------------------------------------------

    def forward(self, token_ids):
        """Logits [T, vocab] (float64) for a batch of one sequence starting at position 0."""
        cfg = self.config
        ids = np.asarray(token_ids, dtype=np.int64)
        if ids.size == 0 or ids.min() < 0 or ids.max() >= cfg.vocab_size:
            raise ValueError(f"token ids must be non-empty and in [0, {cfg.vocab_size}); got "
                             f"{ids.tolist()}")
        x = self.tensor(cfg.tensor_prefix + "embed_tokens.weight")[ids]
        positions = np.arange(len(ids), dtype=np.float64)
        for layer_idx in range(cfg.num_hidden_layers):
            h = self.norm(layer_idx, "input_layernorm", x)
            x = x + self.attention(layer_idx, h, positions)
            h = self.norm(layer_idx, "post_attention_layernorm", x)
            x = x + self.feed_forward(layer_idx, h)
        x = rms_norm(x, self.tensor(cfg.tensor_prefix + "norm.weight"), cfg.rms_norm_eps)
        head_name = cfg.lm_head_name or cfg.tensor_prefix + "embed_tokens.weight"
        return x @ self.tensor(head_name).T

    def norm(self, layer_idx, name, x):
        return rms_norm(x, self.layer_tensor(layer_idx, f"{name}.weight"), self.config.rms_norm_eps)

    def project(self, layer_idx, name, x, with_bias):
        y = x @ self.layer_tensor(layer_idx, f"self_attn.{name}.weight").T
        if with_bias:
            y = y + self.layer_tensor(layer_idx, f"self_attn.{name}.bias")
        return y

    def attention(self, layer_idx, h, positions):
        cfg = self.config
        q = self.project(layer_idx, "q_proj", h, cfg.qkv_bias)
        k = self.project(layer_idx, "k_proj", h, cfg.qkv_bias)
        v = self.project(layer_idx, "v_proj", h, cfg.qkv_bias)
        if cfg.qk_norm == "flat":  # OLMoE: over the whole projection, before the head split
            q = self.norm(layer_idx, "self_attn.q_norm", q)
            k = self.norm(layer_idx, "self_attn.k_norm", k)
        if cfg.clip_qkv > 0:
            q, k, v = (np.clip(t, -cfg.clip_qkv, cfg.clip_qkv) for t in (q, k, v))
        num_tokens = h.shape[0]
        q = q.reshape(num_tokens, cfg.num_attention_heads, cfg.head_dim)
        k = k.reshape(num_tokens, cfg.num_key_value_heads, cfg.head_dim)
        v = v.reshape(num_tokens, cfg.num_key_value_heads, cfg.head_dim)
        if cfg.qk_norm == "per_head":  # Qwen3: per head, before RoPE
            q = self.norm(layer_idx, "self_attn.q_norm", q)
            k = self.norm(layer_idx, "self_attn.k_norm", k)
        uses_rope = cfg.layer_uses_rope[layer_idx]
        if uses_rope:
            rope = apply_rope_interleaved if cfg.rope_style == "interleaved" else apply_rope_half
            q, k = rope(q, positions, self.inv_freq), rope(k, positions, self.inv_freq)
            if cfg.qk_norm == "l2":  # Llama 4: weightless RMS norm per head, after RoPE
                q, k = rms_norm(q, None, cfg.rms_norm_eps), rms_norm(k, None, cfg.rms_norm_eps)
        elif cfg.attn_temperature_tuning:
            q = q * temperature_scales(positions, cfg.floor_scale, cfg.attn_scale)[:, None, None]
        chunk = cfg.attention_chunk_size if uses_rope else 0
        allowed = attention_mask(num_tokens, chunk, cfg.sliding_window)
        out = scaled_dot_product(q, k, v, allowed)
        return self.project(layer_idx, "o_proj", out, cfg.o_bias)

    # -- feed-forward ---------------------------------------------------------------------------

    def feed_forward(self, layer_idx, h):
        cfg = self.config
        if not cfg.layer_is_moe[layer_idx]:
            mlp = "feed_forward" if cfg.family == "llama4" else "mlp"
            return self.dense_mlp(layer_idx, mlp, h)
        if cfg.family == "llama4":
            return self.llama4_moe(layer_idx, h)
        return self.softmax_moe(layer_idx, h)

    def dense_mlp(self, layer_idx, module, h):
        w = lambda n: self.layer_tensor(layer_idx, f"{module}.{n}.weight")
        return swiglu(h, w("gate_proj"), w("up_proj"), w("down_proj"))

    def expert_weights(self, layer_idx, expert_idx):
        """(gate, up, down) of one routed expert in nn.Linear layout."""
        if self.config.family == "mixtral":
            w = lambda n: self.layer_tensor(
                layer_idx, f"block_sparse_moe.experts.{expert_idx}.{n}.weight")
            return w("w1"), w("w3"), w("w2")
        w = lambda n: self.layer_tensor(layer_idx, f"mlp.experts.{expert_idx}.{n}.weight")
        return w("gate_proj"), w("up_proj"), w("down_proj")

    def softmax_moe(self, layer_idx, h):
        """Mixtral / Qwen / OLMoE: softmax over all experts, top-k, optional renormalisation,
        weighted sum of expert outputs; Qwen2-MoE adds a sigmoid-gated shared expert."""
        cfg = self.config
        router = "block_sparse_moe.gate" if cfg.family == "mixtral" else "mlp.gate"
        probs = softmax(h @ self.layer_tensor(layer_idx, f"{router}.weight").T)
        # Fetch every expert up front: a missing expert is an error even if no token picks it.
        experts = [self.expert_weights(layer_idx, e) for e in range(cfg.num_experts)]
        out = np.zeros_like(h)
        for t in range(h.shape[0]):
            chosen = top_k_indices(probs[t], cfg.num_experts_per_tok)
            weights = probs[t, chosen]
            if cfg.norm_topk_prob:
                weights = weights / np.sum(weights)
            for expert_idx, weight in zip(chosen, weights):
                out[t] += weight * swiglu(h[t], *experts[expert_idx])
        if cfg.shared_expert_intermediate_size > 0:
            shared = self.dense_mlp(layer_idx, "mlp.shared_expert", h)
            if cfg.shared_expert_gate:
                gate_w = self.layer_tensor(layer_idx, "mlp.shared_expert_gate.weight")
                shared = sigmoid(h @ gate_w.T) * shared
            out = out + shared
        return out

    def llama4_moe(self, layer_idx, h):
        """Llama 4: top-k on the router logits, sigmoid of the chosen logits scales the expert's
        INPUT (outputs are summed unweighted), plus an always-on shared expert."""
        cfg = self.config
        logits = h @ self.layer_tensor(layer_idx, "feed_forward.router.weight").T
        gate_up = self.layer_tensor(layer_idx, "feed_forward.experts.gate_up_proj")  # [E, H, 2I]
        down = self.layer_tensor(layer_idx, "feed_forward.experts.down_proj")  # [E, I, H]
        inter = cfg.moe_intermediate_size
        expected = ((cfg.num_experts, cfg.hidden_size, 2 * inter),
                    (cfg.num_experts, inter, cfg.hidden_size))
        if (gate_up.shape, down.shape) != expected:
            raise CheckpointError(f"layer {layer_idx}: expected gate_up_proj {list(expected[0])} "
                                  f"and down_proj {list(expected[1])}, found "
                                  f"{list(gate_up.shape)} and {list(down.shape)}")
        out = self.dense_mlp(layer_idx, "feed_forward.shared_expert", h)
        for t in range(h.shape[0]):
            for expert_idx in top_k_indices(logits[t], cfg.num_experts_per_tok):
                x_in = h[t] * sigmoid(logits[t, expert_idx])
                fused = x_in @ gate_up[expert_idx]
                gate, up = fused[:inter], fused[inter:]
                out[t] += (up * silu(gate)) @ down[expert_idx]
        return out


def greedy_generate(model, prompt_ids, num_tokens):
    """Greedy decoding by recomputing the whole sequence each step. Returns (ids, top-2 gaps):
    gaps[i] is the difference between the two largest logits at step i (0 when tied)."""
    ids = list(prompt_ids)
    generated, gaps = [], []
    for _ in range(num_tokens):
        last = model.forward(ids)[-1]
        best = int(np.argmax(last))  # first index among equal maxima
        second = np.partition(last, -2)[-2] if last.size > 1 else -np.inf
        generated.append(best)
        gaps.append(float(last[best] - second))
        ids.append(best)
    return generated, gaps
