"""The native precision is exact: every GGUF block format it maps to MatMulNBits (and
GatherBlockQuantized) gives back gguf's own float32 dequantization bit for bit on the cpu target,
and within the rounding of float16 scales on the cuda target; a whole model exported native
matches the float32 reference forward pass.

Run from harness/python: `python -m unittest tests.test_native -v`.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import unittest

import gguf
import numpy as np
import onnxruntime as ort
from gguf import GGMLQuantizationType as Q
from onnx import TensorProto, helper

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from exporter import native  # noqa: E402
from exporter.export import export  # noqa: E402
from exporter.graph import OPSET, GraphBuilder, WeightFile  # noqa: E402
from fixtures import random_blocks, write_fixture, write_gemma3_fixture  # noqa: E402
from test_exporter import PROMPT, DECODE, Runner  # noqa: E402
from exporter.gguf_model import GGUFModel  # noqa: E402
from exporter.reference import reference_for  # noqa: E402

N, K = 48, 512


class _Builder(GraphBuilder):
    """GraphBuilder's node helpers without a model: enough to build one linear layer."""

    def __init__(self, target: str, folder: str):  # noqa: D107 - deliberately skips super()
        self.target = target
        self.act = np.float32 if target == "cpu" else np.float16
        self.act_onnx = TensorProto.FLOAT if target == "cpu" else TensorProto.FLOAT16
        self.w = WeightFile(folder)
        self.nodes = []
        self.counter = 0
        self.accuracy_level = 0
        self.tensor_forms = {}


def _run_linear(bw: native.BlockWeight, target: str, folder: str) -> np.ndarray:
    """Evaluate the exported linear layer on the identity: returns its weight [N, K] as float32."""
    b = _Builder(target, folder)
    y = b.block_matmul("lin", "x", bw)
    b.node("Cast", [y], ["y"], to=TensorProto.FLOAT)
    b.w.close()
    n, k = bw.shape
    graph = helper.make_graph(
        b.nodes, "linear", [helper.make_tensor_value_info("x", b.act_onnx, [1, k, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, k, n])],
        initializer=b.w.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 10
    path = os.path.join(folder, "linear.onnx")
    with open(path, "wb") as fh:
        fh.write(model.SerializeToString())
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    eye = np.eye(k, dtype=b.act)[None]
    return sess.run(None, {"x": eye})[0][0].T


class NativeFormatsTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="native-test-")

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def check_format(self, qtype: Q):
        rng = np.random.default_rng(int(qtype))
        data = random_blocks(qtype, N, K, rng)
        want = gguf.quants.dequantize(data, qtype).reshape(N, K).astype(np.float32)
        bw = native.decompose(qtype.name, data, (N, K))
        self.assertIsNotNone(bw, qtype.name)
        self.assertTrue(np.array_equal(bw.dequantize(), want), f"{qtype.name}: formula")
        got = _run_linear(bw, "cpu", self.tmp)
        self.assertTrue(np.array_equal(got, want),
                        f"{qtype.name}: cpu max abs diff {np.abs(got - want).max()}")
        # cuda target: float16 scales/adds and float16 activations (run here on the CPU EP)
        got16 = _run_linear(bw, "cuda", self.tmp)
        scale = np.abs(want).max()
        self.assertLess(float(np.abs(got16 - want).max()), 2.0 ** -9 * scale,
                        f"{qtype.name}: cuda target beyond float16 rounding")

    def test_every_format_is_exact(self):
        for qtype in (Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0, Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K,
                      Q.Q6_K):
            with self.subTest(qtype=qtype.name):
                self.check_format(qtype)

    def test_ternary_formats_are_exact_with_2_bit_codes(self):
        # ONNX Runtime 1.31's CPU MatMulNBits with bits=2, block 32, zero point 1
        rng = np.random.default_rng(3)
        for qtype in (Q.TQ1_0, Q.TQ2_0):
            with self.subTest(qtype=qtype.name):
                w = rng.standard_normal((8, 512)).astype(np.float32)
                data = gguf.quants.quantize(w, qtype)
                want = gguf.quants.dequantize(data, qtype).reshape(8, 512).astype(np.float32)
                bw = native.decompose(qtype.name, data, (8, 512))
                self.assertEqual((bw.bits, bw.block), (2, 32))
                self.assertTrue(np.array_equal(bw.dequantize(), want), f"{qtype.name}: formula")
                got = _run_linear(bw, "cpu", self.tmp)
                self.assertTrue(np.array_equal(got, want),
                                f"{qtype.name}: cpu max abs diff {np.abs(got - want).max()}")

    def test_formats_without_exact_form_are_not_decomposed(self):
        self.assertIsNone(native.decompose("IQ4_NL", np.zeros(18, np.uint8), (1, 32)))
        self.assertIsNone(native.decompose("F16", np.zeros(64, np.uint8), (1, 32)))

    def test_rows_of_different_layouts_are_not_concatenated(self):
        rng = np.random.default_rng(1)
        a = native.decompose("Q5_0", random_blocks(Q.Q5_0, 4, 64, rng), (4, 64))
        b = native.decompose("Q8_0", random_blocks(Q.Q8_0, 4, 64, rng), (4, 64))
        c = native.decompose("Q4_K", random_blocks(Q.Q4_K, 4, 256, rng), (4, 256))
        both = native.concat_rows([a, b])
        self.assertIsNotNone(both)  # both are 8-bit codes, block 32, symmetric
        self.assertTrue(np.array_equal(both.dequantize()[:4], a.dequantize()))
        self.assertIsNone(native.concat_rows([a, c]))


class NativeExportTest(unittest.TestCase):
    """Whole tiny models, every format in one graph, against the float32 reference."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="native-export-")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def run_model(self, arch: str, types: dict, target: str = "cpu") -> dict:
        path = os.path.join(self.tmp, f"{arch}-{target}.gguf")
        if arch == "gemma3":
            write_gemma3_fixture(path, types)
        else:
            write_fixture(path, arch, types)
        out = os.path.join(self.tmp, f"{arch}-{target}-native")
        export(path, out, target, "native", accuracy_level=0)
        run = Runner(out)
        ref = reference_for(GGUFModel(path), "fp32")
        # gemma3 fixtures have a 4-token sliding window: longer decode chunks cross it
        chunks = [PROMPT, [40, 41, 42], [77], [150], [9]] if arch == "gemma3" else \
            [PROMPT] + [[t] for t in DECODE]
        for chunk in chunks:
            got, want = run.step(chunk), ref.forward(chunk)
            rel = float(np.abs(got - want).max() / np.abs(want).max())
            limit = 1e-4 if target == "cpu" else 2e-2
            self.assertLess(rel, limit, f"{arch}/{target}: relative max abs diff {rel}")
        with open(os.path.join(out, "config.json"), encoding="utf-8") as fh:
            return json.load(fh)["codegen_export"]

    def test_llama_all_formats(self):
        types = {"embd": Q.Q4_1, "q": Q.Q4_K, "k": Q.Q3_K, "v": Q.Q8_0, "o": Q.Q5_1,
                 "gate": Q.Q2_K, "up": Q.Q5_K, "down": Q.Q6_K}
        info = self.run_model("llama", types)
        forms = info["tensors"]
        self.assertIn("Q4_1 -> GatherBlockQuantized bits=4", forms["token_embd.weight"])
        self.assertIn("Q4_K -> MatMulNBits bits=4 block=32 zero=0, + per-block add",
                      forms["blk.0.attn_q.weight"])
        self.assertIn("Q6_K -> MatMulNBits bits=8 block=16 zero=32", forms["blk.1.ffn_down.weight"])

    def test_qwen2_mixed_with_float_fallback(self):
        types = {"embd": Q.Q5_0, "q": Q.Q5_0, "k": Q.Q5_0, "v": Q.Q8_0, "o": Q.Q4_0,
                 "gate": Q.F16, "up": Q.Q5_0, "down": Q.Q4_K, "head": Q.Q8_0}
        forms = self.run_model("qwen2", types)["tensors"]
        self.assertIn("F16 -> float32 MatMul (exact", forms["blk.0.ffn_gate.weight"])
        self.assertIn("Q5_0 -> GatherBlockQuantized bits=8 block=32 zero=16",
                      forms["token_embd.weight"])

    def test_gemma3_native(self):
        types = {"embd": Q.Q8_0, "q": Q.Q4_K, "k": Q.Q5_0, "v": Q.Q6_K, "o": Q.Q4_0,
                 "gate": Q.Q5_K, "up": Q.Q4_1, "down": Q.Q6_K}
        forms = self.run_model("gemma3", types)["tensors"]
        self.assertIn("Q8_0 -> GatherBlockQuantized", forms["token_embd.weight"])
        self.assertIn("Q8_0 -> MatMulNBits bits=8", forms["token_embd.weight as lm_head"])

    def test_cuda_target_runs_on_cpu(self):
        types = {"embd": Q.Q5_0, "q": Q.Q4_K, "k": Q.Q5_0, "v": Q.Q8_0, "o": Q.Q6_K,
                 "gate": Q.Q4_1, "up": Q.Q5_0, "down": Q.Q6_K}
        types["up"] = Q.F32  # not exact in float16: stays float32 on the cuda target too
        forms = self.run_model("qwen2", types, "cuda")["tensors"]
        self.assertIn("Q5_0 -> float16 Gather", forms["token_embd.weight"])
        self.assertIn("F32 -> float32 MatMul between float16 casts", forms["blk.0.ffn_up.weight"])


if __name__ == "__main__":
    unittest.main()
