#!/usr/bin/python3
"""Checks of the numpy reference against cases derived by hand (not against its own output).

Run: /usr/bin/python3 tests/reference/test_reference.py   (unittest; also registered in ctest)
"""

import math
import os
import sys
import tempfile
import unittest

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import ref_checkpoint as ck  # noqa: E402
import ref_make_checkpoint as mk  # noqa: E402
import ref_model as rm  # noqa: E402


def silu(x):
    return x / (1.0 + math.exp(-x))


def tiny_llama_config(**overrides):
    cfg = {"model_type": "llama", "vocab_size": 4, "hidden_size": 4, "num_hidden_layers": 1,
           "num_attention_heads": 1, "num_key_value_heads": 1, "intermediate_size": 2,
           "rms_norm_eps": 1e-12, "rope_theta": 10000.0, "tie_word_embeddings": False}
    cfg.update(overrides)
    return cfg


class HandComputedAttentionTest(unittest.TestCase):
    """One layer, one head, head_dim 4, identity projections, zero MLP, identity LM head."""

    def make_model(self):
        eye, zeros = np.eye(4), np.zeros((2, 4))
        tensors = {"model.embed_tokens.weight": np.array([[2.0, 0, 0, 0], [0, 0, 2.0, 0],
                                                          [0, 0, 0, 1.0], [0, 1.0, 0, 0]]),
                   "model.norm.weight": np.ones(4), "lm_head.weight": eye}
        for n in ("input_layernorm", "post_attention_layernorm"):
            tensors[f"model.layers.0.{n}.weight"] = np.ones(4)
        for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
            tensors[f"model.layers.0.self_attn.{n}.weight"] = eye
        tensors["model.layers.0.mlp.gate_proj.weight"] = zeros
        tensors["model.layers.0.mlp.up_proj.weight"] = zeros
        tensors["model.layers.0.mlp.down_proj.weight"] = zeros.T
        return rm.ReferenceModel(ck.parse_config(tiny_llama_config()), tensors)

    def test_two_tokens(self):
        logits = self.make_model().forward([0, 1])
        # Token 0 (embedding [2,0,0,0], RMS 1) sees only itself: x = e + v = [4,0,0,0]; the final
        # norm divides by RMS 2.
        np.testing.assert_allclose(logits[0], [2, 0, 0, 0], atol=1e-12)
        # Token 1: q1 = k1 = [0,0,2,0] rotated by angle 1 in the (0,2) pair
        # = [-2 sin1, 0, 2 cos1, 0]; k0 = [2,0,0,0] (position 0). Scores / sqrt(4):
        # q1.k0 = -4 sin1 -> -2 sin1; q1.k1 = 4 -> 2.
        s0, s1 = -2 * math.sin(1.0), 2.0
        p0 = math.exp(s0) / (math.exp(s0) + math.exp(s1))
        p1 = 1 - p0
        x = np.array([2 * p0, 0, 2 + 2 * p1, 0])  # residual [0,0,2,0] + p0 v0 + p1 v1
        expected = x / math.sqrt(np.mean(x * x))
        np.testing.assert_allclose(logits[1], expected, atol=1e-12)


class RopeTest(unittest.TestCase):
    def test_position_zero_is_identity(self):
        rng = np.random.default_rng(1)
        x = rng.standard_normal((1, 3, 8))
        inv_freq = rm.rope_inv_freq(8, 10000.0, ck.RopeScaling())
        pos = np.array([0.0])
        np.testing.assert_array_equal(rm.apply_rope_half(x, pos, inv_freq), x)
        np.testing.assert_array_equal(rm.apply_rope_interleaved(x, pos, inv_freq), x)

    def test_pairs(self):
        inv_freq = np.array([1.0, 0.5])
        x = np.array([[[1.0, 2.0, 3.0, 4.0]]])
        c1, s1, c2, s2 = math.cos(3), math.sin(3), math.cos(1.5), math.sin(1.5)
        pos = np.array([3.0])
        # rotate_half: pairs (0,2) at angle 3*1 and (1,3) at angle 3*0.5.
        np.testing.assert_allclose(rm.apply_rope_half(x, pos, inv_freq)[0, 0],
                                   [1 * c1 - 3 * s1, 2 * c2 - 4 * s2, 3 * c1 + 1 * s1,
                                    4 * c2 + 2 * s2], atol=1e-12)
        # Llama 4: complex pairs (0,1) at angle 3 and (2,3) at angle 1.5.
        np.testing.assert_allclose(rm.apply_rope_interleaved(x, pos, inv_freq)[0, 0],
                                   [1 * c1 - 2 * s1, 1 * s1 + 2 * c1, 3 * c2 - 4 * s2,
                                    3 * s2 + 4 * c2], atol=1e-12)

    def test_llama3_scaling(self):
        scaling = ck.RopeScaling("llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                 original_max_position_embeddings=64)
        base = rm.rope_inv_freq(8, 10000.0, ck.RopeScaling())  # 1, 0.1, 0.01, 0.001
        scaled = rm.rope_inv_freq(8, 10000.0, scaling)
        wavelen = 2 * math.pi / base  # 6.3, 63, 628, 6283 vs thresholds 16 and 64
        self.assertEqual(scaled[0], base[0])  # high frequency: untouched
        np.testing.assert_allclose(scaled[2:], base[2:] / 8.0, rtol=1e-15)  # low: divided
        smooth = (64 / wavelen[1] - 1.0) / (4.0 - 1.0)
        self.assertAlmostEqual(scaled[1], (1 - smooth) * base[1] / 8 + smooth * base[1], 15)
        self.assertTrue(base[1] / 8 < scaled[1] < base[1])

    def test_linear_scaling(self):
        base = rm.rope_inv_freq(8, 10000.0, ck.RopeScaling())
        np.testing.assert_allclose(rm.rope_inv_freq(8, 10000.0, ck.RopeScaling("linear", 4.0)),
                                   base / 4.0)


class AttentionTest(unittest.TestCase):
    def test_chunked_mask(self):
        allowed = rm.attention_mask(12, chunk_size=8)
        self.assertEqual(allowed[9].tolist(), [False] * 8 + [True, True] + [False] * 2)
        self.assertEqual(allowed[7].tolist(), [True] * 8 + [False] * 4)

    def test_gqa_head_mapping(self):
        # 4 query heads, 2 kv heads: heads 0,1 read kv head 0 and heads 2,3 read kv head 1
        # (repeat_kv order), not h % 2.
        rng = np.random.default_rng(2)
        q = np.repeat(rng.standard_normal((3, 1, 4)), 4, axis=1)
        k, v = rng.standard_normal((3, 2, 4)), rng.standard_normal((3, 2, 4))
        out = rm.scaled_dot_product(q, k, v, rm.attention_mask(3)).reshape(3, 4, 4)
        np.testing.assert_array_equal(out[:, 0], out[:, 1])
        np.testing.assert_array_equal(out[:, 2], out[:, 3])
        self.assertFalse(np.allclose(out[1:, 0], out[1:, 2]))
        np.testing.assert_allclose(out[0, 0], v[0, 0])  # first token sees only itself

    def test_temperature_scales(self):
        scales = rm.temperature_scales(np.arange(10.0), floor_scale=4.0, attn_scale=0.1)
        np.testing.assert_allclose(scales[:3], 1.0)  # pos + 1 < 4
        self.assertAlmostEqual(scales[3], 1 + 0.1 * math.log(2), 15)
        self.assertAlmostEqual(scales[7], 1 + 0.1 * math.log(3), 15)


def llama4_model(uses_rope):
    text = mk.family_config("llama4_text")
    text.update(num_hidden_layers=1, no_rope_layers=[1 if uses_rope else 0])
    tensors = mk.random_tensors(text, np.random.default_rng(3))
    return rm.ReferenceModel(ck.parse_config(text), tensors)


class Llama4ChunkTest(unittest.TestCase):
    def test_token_9_ignores_tokens_0_to_7_on_rope_layer(self):
        model = llama4_model(uses_rope=True)
        ids = list(range(10, 22))
        changed = [(t + 5) % 97 for t in ids[:8]] + ids[8:]
        np.testing.assert_array_equal(model.forward(ids)[9], model.forward(changed)[9])
        other = ids[:8] + [50] + ids[9:]
        self.assertFalse(np.allclose(model.forward(ids)[9], model.forward(other)[9]))

    def test_nope_layer_sees_whole_prefix(self):
        model = llama4_model(uses_rope=False)
        ids = list(range(10, 22))
        changed = [50] + ids[1:]
        self.assertFalse(np.allclose(model.forward(ids)[9], model.forward(changed)[9]))


class RouterTest(unittest.TestCase):
    """Router logits [1, 3, 2, 0] for h = e0; expert e outputs silu(h0 * s) * (h0 * s) on axis e,
    where s is the expert's input scale (1 for softmax families, the sigmoid score for Llama 4)."""

    def moe_tensors(self, prefix, router_name, expert_fmt, names):
        router = np.zeros((4, 4))
        router[:, 0] = [1, 3, 2, 0]
        tensors = {prefix + router_name: router}
        for e in range(4):
            gate = np.zeros((1, 4))
            gate[0, 0] = 1.0
            down = np.zeros((4, 1))
            down[e, 0] = 1.0
            for n, w in zip(names, (gate, gate.copy(), down)):
                tensors[prefix + expert_fmt.format(e=e, n=n)] = w
        return tensors

    def softmax_model(self, model_type, **extra):
        cfg = tiny_llama_config(model_type=model_type, num_experts=4, num_local_experts=4,
                                num_experts_per_tok=2, moe_intermediate_size=1, intermediate_size=1,
                                **extra)
        rc = ck.parse_config(cfg)
        if model_type == "mixtral":
            tensors = self.moe_tensors("model.layers.0.", "block_sparse_moe.gate.weight",
                                       "block_sparse_moe.experts.{e}.{n}.weight",
                                       ("w1", "w3", "w2"))
        else:
            tensors = self.moe_tensors("model.layers.0.", "mlp.gate.weight",
                                       "mlp.experts.{e}.{n}.weight",
                                       ("gate_proj", "up_proj", "down_proj"))
        return rm.ReferenceModel(rc, tensors)

    def test_mixtral_softmax_topk_renormalised(self):
        out = self.softmax_model("mixtral").softmax_moe(0, np.array([[1.0, 0, 0, 0]]))[0]
        p = np.exp([1, 3, 2, 0]) / np.sum(np.exp([1, 3, 2, 0]))
        w1, w2 = p[1] / (p[1] + p[2]), p[2] / (p[1] + p[2])
        np.testing.assert_allclose(out, [0, w1 * silu(1), w2 * silu(1), 0], atol=1e-15)

    def test_qwen_without_renormalisation(self):
        out = self.softmax_model("qwen3_moe", norm_topk_prob=False).softmax_moe(
            0, np.array([[1.0, 0, 0, 0]]))[0]
        p = np.exp([1, 3, 2, 0]) / np.sum(np.exp([1, 3, 2, 0]))
        np.testing.assert_allclose(out, [0, p[1] * silu(1), p[2] * silu(1), 0], atol=1e-15)

    def test_qwen2_shared_expert_gate(self):
        model = self.softmax_model("qwen2_moe", norm_topk_prob=False,
                                   shared_expert_intermediate_size=1)
        t = model.tensors
        t["model.layers.0.mlp.shared_expert.gate_proj.weight"] = np.array([[1.0, 0, 0, 0]])
        t["model.layers.0.mlp.shared_expert.up_proj.weight"] = np.array([[1.0, 0, 0, 0]])
        t["model.layers.0.mlp.shared_expert.down_proj.weight"] = np.array([[0], [0], [0], [1.0]])
        t["model.layers.0.mlp.shared_expert_gate.weight"] = np.array([[0.5, 0, 0, 0]])
        out = model.softmax_moe(0, np.array([[1.0, 0, 0, 0]]))[0]
        self.assertAlmostEqual(out[3], silu(1) / (1 + math.exp(-0.5)), 15)

    def test_llama4_sigmoid_scales_input(self):
        text = mk.family_config("llama4_text")
        text.update(hidden_size=4, num_hidden_layers=1, num_attention_heads=1,
                    num_key_value_heads=1, head_dim=4, intermediate_size=1, num_local_experts=4,
                    num_experts_per_tok=1, interleave_moe_layer_step=1)
        prefix = "model.layers.0.feed_forward."
        router = np.zeros((4, 4))
        router[:, 0] = [1, 3, 2, 0]
        gate_up = np.zeros((4, 4, 2))
        gate_up[:, 0, :] = 1.0  # gate = up = input[0]
        down = np.zeros((4, 1, 4))
        for e in range(4):
            down[e, 0, e] = 1.0
        tensors = {prefix + "router.weight": router, prefix + "experts.gate_up_proj": gate_up,
                   prefix + "experts.down_proj": down}
        for n, shape in (("gate_proj", (1, 4)), ("up_proj", (1, 4)), ("down_proj", (4, 1))):
            tensors[prefix + f"shared_expert.{n}.weight"] = np.zeros(shape)
        model = rm.ReferenceModel(ck.parse_config(text), tensors)
        out = model.llama4_moe(0, np.array([[1.0, 0, 0, 0]]))[0]
        s = 1 / (1 + math.exp(-3))  # top-1 on logits -> expert 1, score sigmoid(3)
        np.testing.assert_allclose(out, [0, silu(s) * s, 0, 0], atol=1e-15)

    def test_ties_pick_lower_index(self):
        self.assertEqual(rm.top_k_indices(np.array([2.0, 2.0, 1.0, 2.0]), 2).tolist(), [0, 1])


class CheckpointTest(unittest.TestCase):
    def test_bf16_bits(self):
        bits = ck.float32_to_bf16_bits(np.array([1.0, -2.5, 3.140625], dtype=np.float32))
        self.assertEqual(bits.tolist(), [0x3F80, 0xC020, 0x4049])
        np.testing.assert_array_equal(ck.bf16_bits_to_float32(bits), [1.0, -2.5, 3.140625])

    def test_round_trip_and_shards(self):
        with tempfile.TemporaryDirectory() as tmp:
            one, three = os.path.join(tmp, "one"), os.path.join(tmp, "three")
            mk.write_checkpoint(one, "mixtral", seed=5)
            mk.write_checkpoint(three, "mixtral", seed=5, num_shards=3)
            a, b = ck.read_checkpoint_tensors(one), ck.read_checkpoint_tensors(three)
            self.assertEqual(sorted(a), sorted(b))
            for name in a:
                np.testing.assert_array_equal(a[name], b[name])
            bf16 = os.path.join(tmp, "bf16")
            mk.write_checkpoint(bf16, "mixtral", dtype="bf16", seed=5)
            c = ck.read_checkpoint_tensors(bf16)
            name = "model.embed_tokens.weight"
            np.testing.assert_allclose(c[name], a[name], rtol=2 ** -8)
            self.assertFalse(np.array_equal(c[name], a[name]))

    def test_bad_header(self):
        with tempfile.NamedTemporaryFile(suffix=".safetensors") as f:
            f.write((1 << 40).to_bytes(8, "little"))
            f.flush()
            with self.assertRaisesRegex(ck.CheckpointError, "exceeds file size"):
                ck.read_safetensors(f.name)


class ConfigTest(unittest.TestCase):
    def test_llama4_wrapper(self):
        rc = ck.parse_config(mk.family_config("llama4"))
        self.assertEqual(rc.tensor_prefix, "language_model.model.")
        self.assertEqual(rc.lm_head_name, "language_model.lm_head.weight")
        self.assertEqual(rc.layer_uses_rope, [True, True, True, False])
        self.assertEqual(rc.layer_is_moe, [False, True, False, True])
        self.assertEqual((rc.router, rc.qk_norm, rc.rope_style), ("sigmoid_topk", "l2",
                                                                  "interleaved"))

    def test_llama4_text_and_explicit_lists(self):
        text = mk.family_config("llama4_text")
        text.update(moe_layers=[0], no_rope_layers=[0, 1, 1, 1])
        rc = ck.parse_config(text)
        self.assertEqual(rc.tensor_prefix, "model.")
        self.assertEqual(rc.layer_is_moe, [True, False, False, False])
        self.assertEqual(rc.layer_uses_rope, [False, True, True, True])

    def test_llama4_class_defaults(self):
        text = mk.family_config("llama4_text")
        del text["head_dim"], text["attention_chunk_size"]
        rc = ck.parse_config(text)
        self.assertEqual((rc.head_dim, rc.attention_chunk_size), (128, 8192))
        text.update(head_dim=None, attention_chunk_size=None)
        rc = ck.parse_config(text)
        self.assertEqual((rc.head_dim, rc.attention_chunk_size), (8, 0))

    def test_qwen_sparse_layers(self):
        cfg = mk.family_config("qwen2_moe")
        cfg.update(num_hidden_layers=6, decoder_sparse_step=2, mlp_only_layers=[3])
        rc = ck.parse_config(cfg)
        self.assertEqual(rc.layer_is_moe, [False, True, False, False, False, True])
        self.assertTrue(rc.qkv_bias and rc.shared_expert_gate)

    def test_tied_embeddings_and_rope_parameters(self):
        cfg = tiny_llama_config(tie_word_embeddings=True, rope_parameters={
            "rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
        del cfg["rope_theta"]
        rc = ck.parse_config(cfg)
        self.assertEqual(rc.lm_head_name, "")
        self.assertEqual((rc.rope_theta, rc.rope_scaling.rope_type), (5e5, "llama3"))

    def test_unsupported(self):
        with self.assertRaisesRegex(ck.CheckpointError, "model_type"):
            ck.parse_config({"model_type": "gpt2"})
        with self.assertRaisesRegex(ck.CheckpointError, "rope_type 'yarn'"):
            ck.parse_config(tiny_llama_config(rope_scaling={"type": "yarn", "factor": 2.0}))


class EndToEndTest(unittest.TestCase):
    def test_every_family_runs_and_greedy_matches_logits(self):
        for family in mk.FAMILIES:
            with self.subTest(family=family), tempfile.TemporaryDirectory() as tmp:
                mk.write_checkpoint(tmp, family, seed=7)
                model = rm.ReferenceModel(*ck.load_model_dir(tmp))
                prompt = [3, 4, 5, 6, 7, 8, 9, 10, 11, 12]
                logits = model.forward(prompt)
                self.assertEqual(logits.shape, (10, 97))
                self.assertTrue(np.all(np.isfinite(logits)))
                ids, gaps = rm.greedy_generate(model, prompt, 3)
                self.assertEqual(ids[0], int(np.argmax(logits[-1])))
                # Causality: the prompt logits do not change when the sequence grows.
                np.testing.assert_allclose(model.forward(prompt + ids)[:10], logits, atol=1e-12)
                self.assertEqual(model.unused_tensors(), [])


class CommandLineTest(unittest.TestCase):
    def test_logits_and_ids_files(self):
        import contextlib  # pylint: disable=import-outside-toplevel
        import io  # pylint: disable=import-outside-toplevel
        import moe_reference  # pylint: disable=import-outside-toplevel
        with tempfile.TemporaryDirectory() as tmp:
            mk.write_checkpoint(tmp, "olmoe", seed=9)
            logits_path, ids_path = os.path.join(tmp, "l.bin"), os.path.join(tmp, "ids.txt")
            stdout = io.StringIO()
            with contextlib.redirect_stdout(stdout):
                rc = moe_reference.main(["--model", tmp, "--prompt-ids", "5,6,7", "--logits-out",
                                         logits_path, "--generate", "4", "--ids-out", ids_path])
            self.assertEqual(rc, 0)
            model = rm.ReferenceModel(*ck.load_model_dir(tmp))
            written = np.fromfile(logits_path, dtype="<f4")
            self.assertEqual(written.size, 3 * 97)
            np.testing.assert_array_equal(written.reshape(3, 97),
                                          model.forward([5, 6, 7]).astype(np.float32))
            with open(ids_path) as f:
                ids = [int(t) for t in f.read().split(",")]
            self.assertEqual(ids, rm.greedy_generate(model, [5, 6, 7], 4)[0])
            self.assertEqual(sum(line.startswith("step ") for line in
                                 stdout.getvalue().splitlines()), 4)


class GoldenDriverTest(unittest.TestCase):
    """The comparison rules of tests/golden/golden_test.py."""

    @classmethod
    def setUpClass(cls):
        golden_dir = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                  "golden")
        sys.path.insert(0, golden_dir)
        import golden_test  # pylint: disable=import-outside-toplevel
        cls.g = golden_test

    def test_tokens(self):
        ok, _ = self.g.compare_tokens("p", [5, 6, 7], [5, 6, 7], [1.0] * 3, {2})
        self.assertTrue(ok)
        ok, msg = self.g.compare_tokens("p", [5, 6, 7], [5, 9, 7], [1.0, 0.5, 1.0], {2})
        self.assertFalse(ok)
        self.assertIn("token 1 expected 6, found 9", msg)
        ok, msg = self.g.compare_tokens("p", [5, 6, 7], [5, 9, 3], [1.0, 5e-5, 1.0], {2})
        self.assertTrue(ok)
        self.assertIn("NEAR-TIE", msg)
        self.assertTrue(self.g.compare_tokens("p", [5, 2, 7], [5, 2], [1.0] * 3, {2})[0])
        self.assertFalse(self.g.compare_tokens("p", [5, 6, 7], [5, 6], [1.0] * 3, {2})[0])
        self.assertFalse(self.g.compare_tokens("p", [5, 6], [5, 6, 7], [1.0] * 2, {2})[0])

    def test_logits(self):
        expected = np.array([[10.0, -20.0], [1.0, 2.0]])
        self.assertTrue(self.g.compare_logits("p", expected, expected + 1.9e-3)[0])
        ok, msg = self.g.compare_logits("p", expected, expected + [[0, 0], [0, 2.1e-3]])
        self.assertFalse(ok)
        self.assertIn("position 1 vocab id 1", msg)
        self.assertFalse(self.g.compare_logits("p", expected, expected * np.nan)[0])


if __name__ == "__main__":
    unittest.main()
