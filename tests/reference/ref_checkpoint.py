"""Loading side of the numpy reference: safetensors files, config.json, and a checkpoint directory.

Written independently of the C++ engine from the published formats:
- safetensors: 8-byte little-endian header length N, N bytes of JSON header mapping each tensor name
  to {dtype, shape, data_offsets [begin, end)} relative to the byte buffer after the header.
- Hugging Face checkpoints: one model.safetensors, or shards listed in model.safetensors.index.json
  ("weight_map": name -> file).
- config.json of model_type llama, mixtral, qwen2_moe, qwen3_moe, olmoe, llama4 (text_config inside,
  tensors under "language_model.") and llama4_text.

Everything is returned as float64 numpy arrays so the model runs in float64 (the "truth").
Only needs numpy (Debian's python3-numpy).
"""

import dataclasses
import json
import os
import struct

import numpy as np

SUPPORTED_MODEL_TYPES = ("llama", "mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "llama4",
                         "llama4_text")


class CheckpointError(Exception):
    """A checkpoint or config that the reference cannot read; the message says what and where."""


# ----------------------------------------------------------------------------------------------
# safetensors
# ----------------------------------------------------------------------------------------------

_NUMPY_DTYPES = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),  # raw bits; widened to float32 by bf16_bits_to_float32
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
}


def bf16_bits_to_float32(bits):
    """bf16 is the top half of an IEEE float32: shift the 16 bits up and reinterpret."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def float32_to_bf16_bits(values):
    """Round-to-nearest-even float32 -> bf16 bits (used only by the test checkpoint writer)."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounding = ((bits >> 16) & 1) + 0x7FFF
    return ((bits + rounding) >> 16).astype(np.uint16)


def read_safetensors_header(path):
    """Returns (header dict without __metadata__, byte offset where tensor data starts)."""
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) != 8:
            raise CheckpointError(f"{path}: expected an 8-byte header length, file has "
                                  f"{len(prefix)} bytes")
        (header_bytes,) = struct.unpack("<Q", prefix)
        file_bytes = os.path.getsize(path)
        if header_bytes > file_bytes - 8:
            raise CheckpointError(f"{path}: header length {header_bytes} exceeds file size "
                                  f"{file_bytes}")
        try:
            header = json.loads(f.read(header_bytes).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path}: header is not valid JSON: {e}") from e
    header.pop("__metadata__", None)
    return header, 8 + header_bytes


def read_safetensors(path, names=None):
    """Reads tensors (all, or those in `names`) from one file as float64 arrays keyed by name."""
    header, data_start = read_safetensors_header(path)
    wanted = header.keys() if names is None else names
    tensors = {}
    with open(path, "rb") as f:
        for name in wanted:
            if name not in header:
                raise CheckpointError(f"{path}: tensor {name!r} not found")
            tensors[name] = _read_one(f, path, name, header[name], data_start)
    return tensors


def _read_one(f, path, name, info, data_start):
    dtype_name = info.get("dtype")
    if dtype_name not in _NUMPY_DTYPES:
        raise CheckpointError(f"{path}: tensor {name!r} has dtype {dtype_name!r}; expected one of "
                              f"{sorted(_NUMPY_DTYPES)}")
    dtype = _NUMPY_DTYPES[dtype_name]
    shape = tuple(int(d) for d in info["shape"])
    begin, end = (int(x) for x in info["data_offsets"])
    expected_bytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if end - begin != expected_bytes:
        raise CheckpointError(f"{path}: tensor {name!r} shape {list(shape)} {dtype_name} needs "
                              f"{expected_bytes} bytes, data_offsets span {end - begin}")
    f.seek(data_start + begin)
    raw = np.frombuffer(f.read(expected_bytes), dtype=dtype).reshape(shape)
    if dtype_name == "BF16":
        raw = bf16_bits_to_float32(raw)
    return raw.astype(np.float64)


def write_safetensors(path, tensors, dtype_name="F32"):
    """Writes {name: array} in one dtype (F32, F16 or BF16). For tests and scratch checkpoints."""
    header = {}
    blobs = []
    offset = 0
    for name in sorted(tensors):
        array = np.asarray(tensors[name])
        if dtype_name == "BF16":
            data = float32_to_bf16_bits(array.astype(np.float32)).tobytes()
        else:
            data = np.ascontiguousarray(array, dtype=_NUMPY_DTYPES[dtype_name]).tobytes()
        header[name] = {"dtype": dtype_name, "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    header_json = json.dumps(header).encode("utf-8")
    header_json += b" " * (-len(header_json) % 8)  # keep the data 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header_json)))
        f.write(header_json)
        for blob in blobs:
            f.write(blob)


def read_checkpoint_tensors(model_dir):
    """Reads every tensor of a checkpoint directory (single file or sharded)."""
    index_path = os.path.join(model_dir, "model.safetensors.index.json")
    single_path = os.path.join(model_dir, "model.safetensors")
    if os.path.exists(index_path):
        with open(index_path) as f:
            weight_map = json.load(f).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index_path}: expected a 'weight_map' object")
        by_file = {}
        for name, file_name in weight_map.items():
            by_file.setdefault(file_name, []).append(name)
        tensors = {}
        for file_name, names in sorted(by_file.items()):
            tensors.update(read_safetensors(os.path.join(model_dir, file_name), names))
        return tensors
    if os.path.exists(single_path):
        return read_safetensors(single_path)
    raise CheckpointError(f"{model_dir}: neither model.safetensors nor "
                          f"model.safetensors.index.json found")


# ----------------------------------------------------------------------------------------------
# config.json
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass
class RopeScaling:
    rope_type: str = "default"  # "default", "linear" or "llama3"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclasses.dataclass
class ReferenceConfig:
    """Everything the forward pass needs, with family differences expressed as data."""
    model_type: str
    family: str  # llama, mixtral, qwen2_moe, qwen3_moe, olmoe, llama4 (also for llama4_text)
    tensor_prefix: str  # "model." or "language_model.model."
    lm_head_name: str  # "" when tie_word_embeddings
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    tie_word_embeddings: bool
    qkv_bias: bool  # q/k/v projections have biases
    o_bias: bool  # o_proj has a bias (Llama attention_bias)
    rope_theta: float
    rope_style: str  # "half" (rotate_half) or "interleaved" (Llama 4 complex pairs)
    rope_scaling: RopeScaling
    qk_norm: str  # "none", "per_head" (Qwen3), "flat" (OLMoE), "l2" (Llama 4)
    clip_qkv: float  # 0 = off
    layer_uses_rope: list
    attention_chunk_size: int  # 0 = unlimited; applies to RoPE layers only
    sliding_window: int  # 0 = unlimited (Mixtral)
    attn_temperature_tuning: bool
    floor_scale: float
    attn_scale: float
    intermediate_size: int  # dense FFN size
    num_experts: int
    num_experts_per_tok: int
    moe_intermediate_size: int
    router: str  # "softmax" (softmax then top-k) or "sigmoid_topk" (Llama 4)
    norm_topk_prob: bool
    shared_expert_intermediate_size: int  # 0 = none
    shared_expert_gate: bool
    layer_is_moe: list
    eos_token_ids: list

    def layer_name(self, layer_idx, suffix):
        return f"{self.tensor_prefix}layers.{layer_idx}.{suffix}"


_DEFAULT_ROPE_THETA = {"llama": 10000.0, "mixtral": 1e6, "qwen2_moe": 10000.0,
                       "qwen3_moe": 10000.0, "olmoe": 10000.0, "llama4": 500000.0}
_DEFAULT_EPS = {"llama": 1e-6, "mixtral": 1e-5, "qwen2_moe": 1e-6, "qwen3_moe": 1e-6,
                "olmoe": 1e-5, "llama4": 1e-5}


def _require(cfg, key, where):
    if cfg.get(key) is None:
        raise CheckpointError(f"{where}: missing required field {key!r}")
    return cfg[key]


def _parse_rope(cfg, family, where):
    # Older configs put rope_theta at the top and scaling in rope_scaling; newer ones put both in
    # rope_parameters. "type" is the old spelling of "rope_type".
    params = cfg.get("rope_parameters") or {}
    scaling_src = cfg.get("rope_scaling") or params
    theta = cfg.get("rope_theta", params.get("rope_theta", _DEFAULT_ROPE_THETA[family]))
    rope_type = scaling_src.get("rope_type", scaling_src.get("type", "default"))
    scaling = RopeScaling(rope_type=rope_type)
    if rope_type == "linear":
        scaling.factor = float(_require(scaling_src, "factor", where + ".rope_scaling"))
    elif rope_type == "llama3":
        for key in ("factor", "low_freq_factor", "high_freq_factor",
                    "original_max_position_embeddings"):
            setattr(scaling, key, type(getattr(scaling, key))(
                _require(scaling_src, key, where + ".rope_scaling")))
    elif rope_type != "default":
        raise CheckpointError(f"{where}: rope_type {rope_type!r} is not supported by the reference "
                              f"(expected default, linear or llama3)")
    return float(theta), scaling


def _moe_layers_qwen(cfg, num_layers, num_experts):
    step = int(cfg.get("decoder_sparse_step", 1) or 1)
    mlp_only = set(cfg.get("mlp_only_layers") or [])
    return [(i not in mlp_only) and num_experts > 0 and (i + 1) % step == 0
            for i in range(num_layers)]


def _llama4_layers(text, num_layers):
    interval = int(text.get("no_rope_layer_interval", 4))
    # no_rope_layers holds 1 for a layer that USES RoPE (the name is historical); an empty or
    # missing list means "every interval-th layer is NoPE".
    no_rope = (text.get("no_rope_layers")
               or [int((i + 1) % interval != 0) for i in range(num_layers)])
    uses_rope = [bool(no_rope[i]) for i in range(num_layers)]
    moe_layers = text.get("moe_layers")
    if moe_layers is None:
        step = int(text.get("interleave_moe_layer_step", 1))
        moe_layers = list(range(step - 1, num_layers, step))
    return uses_rope, [i in set(moe_layers) for i in range(num_layers)]


def parse_config(cfg, where="config.json"):
    """Parses a config.json dict into a ReferenceConfig; CheckpointError on anything unsupported."""
    model_type = _require(cfg, "model_type", where)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise CheckpointError(f"{where}: model_type {model_type!r} not supported; expected one of "
                              f"{list(SUPPORTED_MODEL_TYPES)}")
    text = cfg
    prefix, lm_head = "model.", "lm_head.weight"
    tie = bool(cfg.get("tie_word_embeddings", False))
    family = "llama4" if model_type.startswith("llama4") else model_type
    if model_type == "llama4":
        text = _require(cfg, "text_config", where)
        where += ".text_config"
        prefix, lm_head = "language_model.model.", "language_model.lm_head.weight"
        # The outer config decides tying for Llama4ForConditionalGeneration; fall back to the
        # text config when the outer one does not say.
        tie = bool(cfg.get("tie_word_embeddings", text.get("tie_word_embeddings", False)))
    act = text.get("hidden_act", "silu")
    if act != "silu":
        raise CheckpointError(f"{where}: hidden_act {act!r} not supported (expected 'silu')")

    hidden = int(_require(text, "hidden_size", where))
    num_layers = int(_require(text, "num_hidden_layers", where))
    num_heads = int(_require(text, "num_attention_heads", where))
    num_kv = int(text.get("num_key_value_heads") or num_heads)
    head_dim = int(text.get("head_dim") or hidden // num_heads)
    theta, scaling = _parse_rope(text, family, where)
    eos = text.get("eos_token_id", cfg.get("eos_token_id"))
    eos = [] if eos is None else (list(eos) if isinstance(eos, list) else [eos])
    attention_bias = bool(text.get("attention_bias", False))

    rc = ReferenceConfig(
        model_type=model_type, family=family, tensor_prefix=prefix,
        lm_head_name="" if tie else lm_head,
        vocab_size=int(_require(text, "vocab_size", where)), hidden_size=hidden,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_kv,
        head_dim=head_dim, rms_norm_eps=float(text.get("rms_norm_eps", _DEFAULT_EPS[family])),
        tie_word_embeddings=tie, qkv_bias=attention_bias, o_bias=attention_bias,
        rope_theta=theta, rope_style="half", rope_scaling=scaling, qk_norm="none", clip_qkv=0.0,
        layer_uses_rope=[True] * num_layers, attention_chunk_size=0, sliding_window=0,
        attn_temperature_tuning=False, floor_scale=8192.0, attn_scale=0.1,
        intermediate_size=int(text.get("intermediate_size", 0)), num_experts=0,
        num_experts_per_tok=0, moe_intermediate_size=0, router="softmax", norm_topk_prob=False,
        shared_expert_intermediate_size=0, shared_expert_gate=False,
        layer_is_moe=[False] * num_layers, eos_token_ids=[int(e) for e in eos])
    _FAMILY_PARSERS[family](rc, text, where)
    return rc


def _parse_llama(rc, text, where):
    if text.get("mlp_bias"):
        raise CheckpointError(f"{where}: mlp_bias is not supported by the reference")


def _parse_mixtral(rc, text, where):
    rc.num_experts = int(_require(text, "num_local_experts", where))
    rc.num_experts_per_tok = int(_require(text, "num_experts_per_tok", where))
    rc.moe_intermediate_size = rc.intermediate_size
    rc.norm_topk_prob = True  # Mixtral always renormalises the chosen weights
    rc.sliding_window = int(text.get("sliding_window") or 0)
    rc.layer_is_moe = [True] * rc.num_hidden_layers


def _parse_qwen_moe(rc, text, where):
    if text.get("use_sliding_window"):
        raise CheckpointError(f"{where}: use_sliding_window is not supported by the reference")
    rc.num_experts = int(_require(text, "num_experts", where))
    rc.num_experts_per_tok = int(_require(text, "num_experts_per_tok", where))
    rc.moe_intermediate_size = int(_require(text, "moe_intermediate_size", where))
    rc.norm_topk_prob = bool(text.get("norm_topk_prob", False))
    rc.layer_is_moe = _moe_layers_qwen(text, rc.num_hidden_layers, rc.num_experts)
    if rc.family == "qwen2_moe":
        rc.qkv_bias = bool(text.get("qkv_bias", True))  # Qwen2 always has q/k/v biases
        rc.o_bias = False
        # Qwen2-MoE always builds a gated shared expert (HF default size 5632).
        rc.shared_expert_intermediate_size = int(text.get("shared_expert_intermediate_size", 5632))
        rc.shared_expert_gate = True
    else:
        rc.qk_norm = "per_head"


def _parse_olmoe(rc, text, where):
    rc.num_experts = int(_require(text, "num_experts", where))
    rc.num_experts_per_tok = int(_require(text, "num_experts_per_tok", where))
    rc.moe_intermediate_size = rc.intermediate_size
    rc.norm_topk_prob = bool(text.get("norm_topk_prob", False))
    rc.qk_norm = "flat"
    rc.head_dim = rc.hidden_size // rc.num_attention_heads  # q_norm is sized hidden_size
    rc.clip_qkv = float(text.get("clip_qkv") or 0.0)
    rc.layer_is_moe = [True] * rc.num_hidden_layers


def _parse_llama4(rc, text, where):
    rc.rope_style = "interleaved"
    rc.num_experts = int(_require(text, "num_local_experts", where))
    rc.num_experts_per_tok = int(_require(text, "num_experts_per_tok", where))
    rc.moe_intermediate_size = rc.intermediate_size
    rc.shared_expert_intermediate_size = rc.intermediate_size
    rc.intermediate_size = int(text.get("intermediate_size_mlp", 16384))
    rc.router = "sigmoid_topk"
    rc.qk_norm = "l2" if text.get("use_qk_norm", True) else "none"
    # Absent takes Llama4TextConfig's default (8192); an explicit null disables chunking.
    rc.attention_chunk_size = int(text.get("attention_chunk_size", 8192) or 0)
    if "head_dim" not in text:  # Llama4TextConfig's default; only an explicit null derives it
        rc.head_dim = 128
    rc.attn_temperature_tuning = bool(text.get("attn_temperature_tuning", True))
    rc.floor_scale = float(text.get("floor_scale", 8192))
    rc.attn_scale = float(text.get("attn_scale", 0.1))
    rc.layer_uses_rope, rc.layer_is_moe = _llama4_layers(text, rc.num_hidden_layers)


_FAMILY_PARSERS = {"llama": _parse_llama, "mixtral": _parse_mixtral,
                   "qwen2_moe": _parse_qwen_moe, "qwen3_moe": _parse_qwen_moe,
                   "olmoe": _parse_olmoe, "llama4": _parse_llama4}


def load_config(model_dir):
    path = os.path.join(model_dir, "config.json")
    try:
        with open(path) as f:
            cfg = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read: {e}") from e
    return parse_config(cfg, path)


def load_model_dir(model_dir):
    """Returns (ReferenceConfig, {tensor name: float64 array}) for a checkpoint directory."""
    return load_config(model_dir), read_checkpoint_tensors(model_dir)
