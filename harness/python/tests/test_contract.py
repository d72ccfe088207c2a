"""No silent mis-export: every tensor and metadata key is consumed or the export fails naming it;
llama3 rope scaling (`rope_freqs.weight`) is read and changes the result.

Run from harness/python: `python -m unittest tests.test_contract -v`.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import unittest

import numpy as np
import gguf

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from exporter import contract  # noqa: E402
from exporter.export import check, export  # noqa: E402
from exporter.gguf_model import ExportError, GGUFModel  # noqa: E402
from exporter.reference import reference_for  # noqa: E402
from fixtures import write_fixture  # noqa: E402
from test_exporter import PROMPT, Runner  # noqa: E402

SMALL = {"hidden": 64, "n_heads": 2, "n_kv": 1, "inter": 128, "layers": 1}


def llama3_factors(head_dim: int, base: float = 1e5, factor: float = 8.0, low: float = 1.0,
                   high: float = 4.0, original: int = 32) -> np.ndarray:
    """`rope_freqs.weight` as llama.cpp's converter computes it for Llama 3.1 (rope_type
    llama3), with a tiny original context so that a tiny model's positions reach every band."""
    inv = 1.0 / base ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    wavelen = 2 * np.pi / inv
    low_wl, high_wl = original / low, original / high
    out = []
    for w in wavelen:
        if w < high_wl:
            out.append(1.0)
        elif w > low_wl:
            out.append(factor)
        else:
            smooth = (original / w - low) / (high - low)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.array(out, np.float32)


class ContractTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="contract-test-")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def write(self, name: str, arch: str = "llama", **kw) -> str:
        path = os.path.join(self.tmp, f"{name}.gguf")
        write_fixture(path, arch, **{**SMALL, **kw})
        return path

    def export_error(self, path: str) -> str:
        with self.assertRaises(ExportError) as ctx:
            export(path, os.path.join(self.tmp, os.path.basename(path) + "-out"), "cpu", "fp32")
        with self.assertRaises(ExportError) as ctx2:
            check(path)
        self.assertEqual(str(ctx.exception), str(ctx2.exception), "check says what export says")
        return str(ctx.exception)

    def test_a_plain_fixture_passes_the_check(self):
        result = check(self.write("plain"))
        self.assertTrue(result["ok"])
        self.assertEqual(result["architecture"], "llama")

    def test_an_unknown_tensor_fails_by_name(self):
        path = self.write("bias", extra_tensors={
            "blk.0.attn_output.bias": np.zeros(64, np.float32)})
        msg = self.export_error(path)
        self.assertIn("blk.0.attn_output.bias", msg)
        self.assertIn("does not read", msg)

    def test_a_tensor_of_a_layer_past_block_count_fails(self):
        path = self.write("extra-layer", extra_tensors={
            "blk.1.attn_norm.weight": np.ones(64, np.float32)})
        self.assertIn("blk.1.attn_norm.weight", self.export_error(path))

    def test_an_unknown_metadata_key_fails_by_name(self):
        path = self.write("key", extra_meta=lambda w: w.add_float32("llama.attention.temperature",
                                                                   0.5))
        msg = self.export_error(path)
        self.assertIn("llama.attention.temperature", msg)

    def test_a_rope_scaling_type_the_exporter_lacks_fails_by_name(self):
        path = self.write("yarn", extra_meta=lambda w: w.add_string("llama.rope.scaling.type",
                                                                   "yarn"))
        self.assertIn("'yarn'", self.export_error(path))

    def test_allow_listed_keys_pass(self):
        def meta(w):
            w.add_string("general.license", "apache-2.0")
            w.add_uint32("tokenizer.ggml.fim_pre_token_id", 3)
            w.add_string("tokenizer.chat_template.tool_use", "{{ messages }}")
            w.add_string("quantize.imatrix.file", "x.dat")
        self.assertTrue(check(self.write("allowed", extra_meta=meta))["ok"])

    def test_mixture_of_experts_is_named(self):
        path = self.write("moe", extra_meta=lambda w: (w.add_uint32("llama.expert_count", 8),
                                                      w.add_uint32("llama.expert_used_count", 2)))
        msg = self.export_error(path)
        self.assertIn("mixture-of-experts", msg)
        self.assertIn("llama.expert_count is 8", msg)

    def test_unsupported_architectures_say_what_is_missing(self):
        for arch, says in (("mamba", "state-space"), ("chatglm", "ChatGLM"),
                           ("qwen2moe", "mixture-of-experts"), ("jamba", "Mamba")):
            path = os.path.join(self.tmp, f"{arch}.gguf")
            w = gguf.GGUFWriter(path, arch)
            w.add_block_count(1)
            w.add_tensor("token_embd.weight", np.zeros((4, 32), np.float32))
            w.write_header_to_file()
            w.write_kv_data_to_file()
            w.write_tensors_to_file()
            w.close()
            msg = self.export_error(path)
            self.assertIn(arch, msg)
            self.assertIn(says, msg)

    def test_a_tensor_the_graph_forgets_fails_after_the_build(self):
        # a graph that does not read a tensor its contract names: the build's own record fails
        path = self.write("forgot")
        original = contract.ARCH_TENSORS["llama"]
        contract.ARCH_TENSORS["llama"] = (original[0] + ("extra.weight",), original[1])
        try:
            path = self.write("forgot", extra_tensors={"extra.weight": np.ones(4, np.float32)})
            with self.assertRaises(ExportError) as ctx:
                export(path, os.path.join(self.tmp, "forgot-out"), "cpu", "fp32")
            self.assertIn("did not use", str(ctx.exception))
            self.assertIn("extra.weight", str(ctx.exception))
        finally:
            contract.ARCH_TENSORS["llama"] = original

    def test_rope_freqs_are_read_and_matter(self):
        factors = llama3_factors(32)
        self.assertGreater(factors.max(), 1.0)
        path = self.write("llama3", rope_freqs=factors)
        model = GGUFModel(path)
        self.assertTrue(model.hp.rope_freq_factors)
        out = os.path.join(self.tmp, "llama3-out")
        export(path, out, "cpu", "fp32")
        ids = PROMPT * 6  # 42 positions: past the tiny original context of 32
        got = Runner(out).step(ids)
        want = reference_for(GGUFModel(path)).forward(ids)
        self.assertLess(np.abs(got - want).max() / np.abs(want).max(), 1e-4)
        # without the factors the logits are not those (the bug this guards against)
        plain = reference_for(GGUFModel(path))
        plain.m.rope_factors = None
        wrong = plain.forward(ids)
        self.assertGreater(np.abs(wrong - want).max() / np.abs(want).max(), 1e-2)

    def test_linear_rope_scaling_scales_positions(self):
        path = self.write("linear", extra_meta=lambda w: w.add_float32("llama.rope.scaling.factor",
                                                                      4.0))
        self.assertAlmostEqual(GGUFModel(path).hp.rope_freq_scale, 0.25)
        out = os.path.join(self.tmp, "linear-out")
        export(path, out, "cpu", "fp32")
        got = Runner(out).step(PROMPT)
        want = reference_for(GGUFModel(path)).forward(PROMPT)
        self.assertLess(np.abs(got - want).max() / np.abs(want).max(), 1e-4)


if __name__ == "__main__":
    unittest.main()
