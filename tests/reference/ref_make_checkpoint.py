#!/usr/bin/python3
"""Writes a small random Hugging Face-format checkpoint (config.json + safetensors, no tokenizer)
for one family, with numpy only. Independent of the C++ model maker: used to test the golden
driver and the reference before the C++ binaries exist, and to feed the engine a checkpoint it did
not write itself.

Usage: ref_make_checkpoint.py --family F --out DIR [--dtype f32|bf16] [--seed S] [--shards N]
Families: llama, mixtral, qwen2_moe, qwen3_moe, olmoe, llama4, llama4_text.
"""

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from ref_checkpoint import parse_config, write_safetensors  # noqa: E402

FAMILIES = ("llama", "mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "llama4", "llama4_text")

_COMMON = {"vocab_size": 97, "hidden_size": 32, "num_hidden_layers": 2,
           "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5,
           "hidden_act": "silu", "max_position_embeddings": 256, "bos_token_id": 1,
           "eos_token_id": 2, "tie_word_embeddings": False}


def family_config(family):
    """A small config exercising the family's variants (scaling, dense layers, clipping...)."""
    cfg = dict(_COMMON, model_type=family)
    if family == "llama":
        cfg.update(intermediate_size=48, rope_theta=10000.0, tie_word_embeddings=True,
                   rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                 "high_freq_factor": 4.0,
                                 "original_max_position_embeddings": 64})
    elif family == "mixtral":
        cfg.update(intermediate_size=24, num_local_experts=4, num_experts_per_tok=2,
                   rope_theta=1e6, sliding_window=None)
    elif family == "qwen2_moe":
        cfg.update(intermediate_size=40, moe_intermediate_size=16, num_experts=4,
                   num_experts_per_tok=2, shared_expert_intermediate_size=24,
                   decoder_sparse_step=1, mlp_only_layers=[1], norm_topk_prob=False,
                   rope_theta=10000.0, use_sliding_window=False)
    elif family == "qwen3_moe":
        cfg.update(intermediate_size=40, moe_intermediate_size=16, num_experts=4,
                   num_experts_per_tok=2, head_dim=16, decoder_sparse_step=1, mlp_only_layers=[],
                   norm_topk_prob=True, rope_theta=10000.0, use_sliding_window=False)
    elif family == "olmoe":
        cfg.update(intermediate_size=16, num_experts=4, num_experts_per_tok=2,
                   norm_topk_prob=False, clip_qkv=1.5, rope_theta=10000.0)
    else:
        text = dict(cfg, model_type="llama4_text", num_hidden_layers=4, head_dim=8,
                    intermediate_size=16, intermediate_size_mlp=32, num_local_experts=4,
                    num_experts_per_tok=1, interleave_moe_layer_step=2, no_rope_layer_interval=4,
                    use_qk_norm=True, attention_chunk_size=8, attn_temperature_tuning=True,
                    floor_scale=4, attn_scale=0.1, rope_theta=500000.0)
        if family == "llama4_text":
            return text
        return {"model_type": "llama4", "tie_word_embeddings": False, "text_config": text,
                "vision_config": {}}
    return cfg


def random_tensors(cfg_json, rng):
    """Every tensor the reference reads for this config, filled with scaled Gaussians."""
    rc = parse_config(cfg_json)
    tensors = {}

    def add(name, *shape, scale=0.2, offset=0.0):
        tensors[name] = offset + scale * rng.standard_normal(shape)

    hidden, head_dim = rc.hidden_size, rc.head_dim
    q_out, kv_out = rc.num_attention_heads * head_dim, rc.num_key_value_heads * head_dim
    add(rc.tensor_prefix + "embed_tokens.weight", rc.vocab_size, hidden, scale=1.0)
    add(rc.tensor_prefix + "norm.weight", hidden, scale=0.1, offset=1.0)
    if rc.lm_head_name:
        add(rc.lm_head_name, rc.vocab_size, hidden)
    for layer_idx in range(rc.num_hidden_layers):
        name = lambda suffix: rc.layer_name(layer_idx, suffix)
        for norm in ("input_layernorm", "post_attention_layernorm"):
            add(name(norm + ".weight"), hidden, scale=0.1, offset=1.0)
        for proj, out in (("q_proj", q_out), ("k_proj", kv_out), ("v_proj", kv_out)):
            add(name(f"self_attn.{proj}.weight"), out, hidden)
            if rc.qkv_bias:
                add(name(f"self_attn.{proj}.bias"), out, scale=0.1)
        add(name("self_attn.o_proj.weight"), hidden, q_out)
        if rc.qk_norm == "per_head":
            add(name("self_attn.q_norm.weight"), head_dim, scale=0.1, offset=1.0)
            add(name("self_attn.k_norm.weight"), head_dim, scale=0.1, offset=1.0)
        elif rc.qk_norm == "flat":
            add(name("self_attn.q_norm.weight"), q_out, scale=0.1, offset=1.0)
            add(name("self_attn.k_norm.weight"), kv_out, scale=0.1, offset=1.0)
        add_ffn(rc, layer_idx, add)
    return tensors


def add_mlp(add, module, hidden, inter):
    add(f"{module}.gate_proj.weight", inter, hidden)
    add(f"{module}.up_proj.weight", inter, hidden)
    add(f"{module}.down_proj.weight", hidden, inter)


def add_ffn(rc, layer_idx, add):
    hidden, inter, num_experts = rc.hidden_size, rc.moe_intermediate_size, rc.num_experts
    base = rc.layer_name(layer_idx, "")
    if not rc.layer_is_moe[layer_idx]:
        mlp = "feed_forward" if rc.family == "llama4" else "mlp"
        add_mlp(add, base + mlp, hidden, rc.intermediate_size)
    elif rc.family == "llama4":
        add(base + "feed_forward.router.weight", num_experts, hidden, scale=0.5)
        add(base + "feed_forward.experts.gate_up_proj", num_experts, hidden, 2 * inter)
        add(base + "feed_forward.experts.down_proj", num_experts, inter, hidden)
        add_mlp(add, base + "feed_forward.shared_expert", hidden,
                rc.shared_expert_intermediate_size)
    elif rc.family == "mixtral":
        add(base + "block_sparse_moe.gate.weight", num_experts, hidden, scale=0.5)
        for e in range(num_experts):
            prefix = f"{base}block_sparse_moe.experts.{e}."
            add(prefix + "w1.weight", inter, hidden)
            add(prefix + "w3.weight", inter, hidden)
            add(prefix + "w2.weight", hidden, inter)
    else:
        add(base + "mlp.gate.weight", num_experts, hidden, scale=0.5)
        for e in range(num_experts):
            add_mlp(add, f"{base}mlp.experts.{e}", hidden, inter)
        if rc.shared_expert_intermediate_size > 0:
            add_mlp(add, base + "mlp.shared_expert", hidden, rc.shared_expert_intermediate_size)
            add(base + "mlp.shared_expert_gate.weight", 1, hidden, scale=0.5)


def write_checkpoint(out_dir, family, dtype="f32", seed=0, num_shards=1):
    cfg_json = family_config(family)
    tensors = random_tensors(cfg_json, np.random.default_rng(seed))
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(cfg_json, f, indent=2)
    dtype_name = {"f32": "F32", "bf16": "BF16", "f16": "F16"}[dtype]
    names = sorted(tensors)
    if num_shards <= 1:
        write_safetensors(os.path.join(out_dir, "model.safetensors"), tensors, dtype_name)
        return
    weight_map = {}
    for shard_idx in range(num_shards):
        file_name = f"model-{shard_idx + 1:05d}-of-{num_shards:05d}.safetensors"
        shard = {n: tensors[n] for n in names[shard_idx::num_shards]}
        write_safetensors(os.path.join(out_dir, file_name), shard, dtype_name)
        weight_map.update({n: file_name for n in shard})
    with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f, indent=2)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", required=True, choices=FAMILIES)
    parser.add_argument("--out", required=True)
    parser.add_argument("--dtype", default="f32", choices=("f32", "bf16", "f16"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shards", type=int, default=1)
    args = parser.parse_args(argv)
    write_checkpoint(args.out, args.family, args.dtype, args.seed, args.shards)
    return 0


if __name__ == "__main__":
    sys.exit(main())
