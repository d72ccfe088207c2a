"""Export tiny GGUF fixtures, run them in ONNX Runtime, compare with a numpy forward pass.

Run from harness/python: `python -m unittest discover -s tests -t . -v`.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import unittest

import numpy as np
import onnx
import onnxruntime as ort
from gguf import GGMLQuantizationType as Q

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from exporter import quant  # noqa: E402
from exporter.export import export  # noqa: E402
from exporter.gguf_model import ExportError, GGUFModel  # noqa: E402
from exporter.reference import Reference, reference_for  # noqa: E402
from exporter.tokenizer import spm_merges  # noqa: E402
from fixtures import write_fixture, write_gemma3_fixture  # noqa: E402

PROMPT = [5, 17, 260, 99, 3, 200, 42]
DECODE = [77, 150, 9]

MIXED = {"embd": Q.Q8_0, "q": Q.Q4_K, "k": Q.Q4_0, "v": Q.Q8_0, "o": Q.Q5_0,
         "gate": Q.Q4_1, "up": Q.F16, "down": Q.Q6_K}


def _load(path: str):
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


class Runner:
    """Drive an exported folder through ONNX Runtime with a growing KV cache (batch 1)."""

    def __init__(self, folder: str):
        cfg = _load(os.path.join(folder, "config.json"))
        self.layers = cfg["num_hidden_layers"]
        self.kv = cfg["num_key_value_heads"]
        self.head_dim = cfg["head_dim"]
        so = ort.SessionOptions()
        so.intra_op_num_threads = 2
        self.sess = ort.InferenceSession(os.path.join(folder, "model.onnx"), so,
                                         providers=["CPUExecutionProvider"])
        self.dtype = np.float16 if cfg["codegen_export"]["target"] == "cuda" else np.float32
        self.past = [np.zeros((1, self.kv, 0, self.head_dim), self.dtype)] * (2 * self.layers)
        self.total = 0

    def step(self, ids: list[int]) -> np.ndarray:
        self.total += len(ids)
        feeds = {"input_ids": np.array([ids], np.int64),
                 "attention_mask": np.ones((1, self.total), np.int64)}
        for i in range(self.layers):
            feeds[f"past_key_values.{i}.key"] = self.past[2 * i]
            feeds[f"past_key_values.{i}.value"] = self.past[2 * i + 1]
        out = self.sess.run(None, feeds)
        self.past = out[1:]
        assert out[0].dtype == np.float32
        return out[0][0]


class ExporterTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="exporter-test-")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def fixture(self, name: str, arch: str, types=None, **kw) -> str:
        path = os.path.join(self.tmp, f"{name}.gguf")
        if not os.path.exists(path):
            if arch == "gemma3":
                write_gemma3_fixture(path, types, **kw)
            else:
                write_fixture(path, arch, types, **kw)
        return path

    def compare(self, gguf_path: str, target: str, precision: str, rtol: float,
                argmax: bool = True, accuracy_level: int | None = None,
                chunks: list[list[int]] | None = None) -> float:
        """Prefill + 3 decode steps (or `chunks`, fed in turn); returns the worst max-abs
        difference relative to scale."""
        out = os.path.join(self.tmp, f"{os.path.basename(gguf_path)}-{target}-{precision}"
                           f"-{accuracy_level}")
        export(gguf_path, out, target, precision, accuracy_level=accuracy_level)
        for name in ("model.onnx", "model.onnx.data", "config.json", "generation_config.json",
                     "tokenizer.json", "tokenizer_config.json", "genai_config.json"):
            self.assertTrue(os.path.isfile(os.path.join(out, name)), name)
        run = Runner(out)
        ref = reference_for(GGUFModel(gguf_path), precision)
        worst = 0.0
        for chunk in chunks or [PROMPT] + [[t] for t in DECODE]:
            got = run.step(chunk)
            want = ref.forward(chunk)
            self.assertEqual(got.shape, want.shape)
            rel = float(np.abs(got - want).max() / np.abs(want).max())
            worst = max(worst, rel)
            if argmax:
                agree = float(np.mean(got.argmax(-1) == want.argmax(-1)))
                self.assertGreaterEqual(agree, 0.99 if rtol < 1e-3 else 0.6,
                                        f"{precision}: argmax agreement {agree}")
        self.assertLess(worst, rtol, f"{target}/{precision}: relative max abs diff {worst}")
        return worst

    # -- fp32 exports match the reference closely ------------------------------------------
    def test_llama_f32_weights_fp32(self):
        self.compare(self.fixture("llama-f32", "llama"), "cpu", "fp32", 1e-4)

    def test_qwen2_f32_weights_fp32(self):
        self.compare(self.fixture("qwen2-f32", "qwen2"), "cpu", "fp32", 1e-4)

    def test_llama_mixed_quant_types_fp32(self):
        self.compare(self.fixture("llama-mixed", "llama", MIXED), "cpu", "fp32", 1e-4)

    def test_qwen2_mixed_quant_types_untied_head_fp32(self):
        types = dict(MIXED, head=Q.Q8_0, q=Q.Q6_K, k=Q.Q4_K)
        self.compare(self.fixture("qwen2-mixed", "qwen2", types), "cpu", "fp32", 1e-4)

    # -- lower precisions stay close --------------------------------------------------------
    def test_fp16_weights(self):
        self.compare(self.fixture("qwen2-mixed2", "qwen2", MIXED), "cpu", "fp16", 5e-3)

    def test_int8_weights(self):
        self.compare(self.fixture("llama-mixed", "llama", MIXED), "cpu", "int8", 1e-3)

    def test_int4_weights_float_activations(self):
        self.compare(self.fixture("qwen2-mixed", "qwen2", MIXED), "cpu", "int4", 1e-3,
                     accuracy_level=0)
        self.compare(self.fixture("llama-f32", "llama"), "cpu", "int4", 1e-3, accuracy_level=0)

    def test_int4_weights_int8_activations(self):
        # the default for cpu int4: the kernel also quantizes activations, so looser
        self.compare(self.fixture("qwen2-f32", "qwen2"), "cpu", "int4", 0.1)

    def test_cuda_target_int4_runs_on_cpu(self):
        path = self.fixture("qwen2-f32", "qwen2")
        out = os.path.join(self.tmp, "cuda-int4")
        export(path, out, "cuda", "int4")
        try:
            got = Runner(out).step(PROMPT)
        except Exception as exc:  # noqa: BLE001 - not every fp16 kernel exists on CPU
            self.skipTest(f"fp16 int4 graph does not run on the CPU provider here: {exc}")
        want = Reference(GGUFModel(path), "int4").forward(PROMPT)
        rel = float(np.abs(got - want).max() / np.abs(want).max())
        self.assertLess(rel, 2e-2)

    def test_batch_of_two(self):
        path = self.fixture("qwen2-f32", "qwen2")
        out = os.path.join(self.tmp, "batch")
        export(path, out, "cpu", "fp32")
        run = Runner(out)
        other = [7, 8, 9, 10, 11, 12, 13]
        feeds = {"input_ids": np.array([PROMPT, other], np.int64),
                 "attention_mask": np.ones((2, len(PROMPT)), np.int64)}
        for i in range(run.layers):
            for kind in ("key", "value"):
                feeds[f"past_key_values.{i}.{kind}"] = np.zeros((2, run.kv, 0, run.head_dim),
                                                                np.float32)
        out0 = run.sess.run(None, feeds)
        # logits_positions: one position per row, the same numbers as those rows of the full
        # logits (the prefill's memory no longer scales with the vocabulary times the prompt).
        picked = run.sess.run(["logits"], {**feeds, "logits_positions": np.array([[6], [2]])})[0]
        self.assertEqual(picked.shape, (2, 1, out0[0].shape[2]))
        np.testing.assert_allclose(picked[0, 0], out0[0][0, 6], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(picked[1, 0], out0[0][1, 2], rtol=1e-5, atol=1e-5)
        # one decode step for both rows
        feeds = {"input_ids": np.array([[DECODE[0]], [DECODE[1]]], np.int64),
                 "attention_mask": np.ones((2, len(PROMPT) + 1), np.int64)}
        for i in range(run.layers):
            feeds[f"past_key_values.{i}.key"] = out0[1 + 2 * i]
            feeds[f"past_key_values.{i}.value"] = out0[2 + 2 * i]
        out1 = run.sess.run(None, feeds)
        for row, (ids, nxt) in enumerate(((PROMPT, DECODE[0]), (other, DECODE[1]))):
            ref = Reference(GGUFModel(path))
            want0 = ref.forward(ids)
            want1 = ref.forward([nxt])
            np.testing.assert_allclose(out0[0][row], want0, atol=1e-4 * np.abs(want0).max())
            np.testing.assert_allclose(out1[0][row], want1, atol=1e-4 * np.abs(want1).max())

    def test_cuda_target_graph_is_fp16_and_runs_on_cpu(self):
        path = self.fixture("llama-f32", "llama")
        out = os.path.join(self.tmp, "cuda-fp16")
        export(path, out, "cuda", "fp16")
        model = onnx.load(os.path.join(out, "model.onnx"), load_external_data=False)
        types = {i.name: i.type.tensor_type.elem_type for i in model.graph.input}
        self.assertEqual(types["past_key_values.0.key"], onnx.TensorProto.FLOAT16)
        self.assertEqual(types["input_ids"], onnx.TensorProto.INT64)
        self.assertEqual(model.graph.output[0].type.tensor_type.elem_type, onnx.TensorProto.FLOAT)
        try:
            run = Runner(out)
            got = run.step(PROMPT)
        except Exception as exc:  # noqa: BLE001 - not every fp16 kernel exists on CPU
            self.skipTest(f"fp16 graph does not run on the CPU provider here: {exc}")
        want = Reference(GGUFModel(path)).forward(PROMPT)
        rel = float(np.abs(got - want).max() / np.abs(want).max())
        self.assertLess(rel, 2e-2)

    # -- graph layout -------------------------------------------------------------------------
    def test_graph_layout(self):
        path = self.fixture("qwen2-f32", "qwen2")
        out = os.path.join(self.tmp, "layout")
        export(path, out, "cpu", "int4")
        model = onnx.load(os.path.join(out, "model.onnx"), load_external_data=False)
        ops = {n.op_type for n in model.graph.node}
        for op in ("GroupQueryAttention", "MatMulNBits", "SkipSimplifiedLayerNormalization",
                   "SimplifiedLayerNormalization"):
            self.assertIn(op, ops)
        for node in model.graph.node:
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            if node.op_type == "MatMulNBits":
                self.assertEqual((attrs["bits"], attrs["block_size"]), (4, 32))
                self.assertEqual(len(node.input), 3, "symmetric: no zero points")
            if node.op_type == "GroupQueryAttention":
                self.assertEqual(attrs["do_rotary"], 1)
        names = [i.name for i in model.graph.input]
        self.assertEqual(names[:4], ["input_ids", "attention_mask", "past_key_values.0.key",
                                     "past_key_values.0.value"])
        outs = [o.name for o in model.graph.output]
        self.assertEqual(outs[:3], ["logits", "present.0.key", "present.0.value"])
        genai = _load(os.path.join(out, "genai_config.json"))
        self.assertEqual(genai["model"]["type"], "qwen2")
        self.assertEqual(genai["model"]["decoder"]["inputs"]["past_key_names"],
                         "past_key_values.%d.key")
        tok_cfg = _load(os.path.join(out, "tokenizer_config.json"))
        self.assertIn("<|im_start|>", tok_cfg["chat_template"])
        self.assertEqual(tok_cfg["eos_token"], "<|im_end|>")

    def test_tokenizer_json(self):
        path = self.fixture("llama-f32", "llama")
        out = os.path.join(self.tmp, "tok")
        export(path, out, "cpu", "fp32")
        tok = _load(os.path.join(out, "tokenizer.json"))
        self.assertEqual(tok["model"]["type"], "BPE")
        self.assertEqual(len(tok["model"]["vocab"]), 300)
        self.assertIn("Ġ t", tok["model"]["merges"])
        specials = [t["content"] for t in tok["added_tokens"] if t["special"]]
        self.assertEqual(specials, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
        try:
            from tokenizers import Tokenizer
        except ImportError:
            return  # the structure is checked; encoding is checked where `tokenizers` exists
        t = Tokenizer.from_file(os.path.join(out, "tokenizer.json"))
        enc = t.encode("the ret 12<|im_end|>")
        self.assertEqual(t.decode(enc.ids, skip_special_tokens=False), "the ret 12<|im_end|>")

    # -- gemma3 ------------------------------------------------------------------------------
    # window 4: the 7-token prompt, a 3-token chunk after a cache and the decode steps all reach
    # past the window, so an off-by-one in the sliding window shows in every layer but one
    GEMMA_CHUNKS = [PROMPT, [40, 41, 42], [77], [150], [9]]

    def test_gemma3_f32_weights_fp32(self):
        self.compare(self.fixture("gemma3-f32", "gemma3"), "cpu", "fp32", 1e-4,
                     chunks=self.GEMMA_CHUNKS)

    def test_gemma3_mixed_quant_types_fp32(self):
        self.compare(self.fixture("gemma3-mixed", "gemma3", MIXED), "cpu", "fp32", 1e-4,
                     chunks=self.GEMMA_CHUNKS)

    def test_gemma3_int8_and_int4_weights(self):
        path = self.fixture("gemma3-mixed", "gemma3", MIXED)
        self.compare(path, "cpu", "int8", 1e-3, chunks=self.GEMMA_CHUNKS)
        self.compare(path, "cpu", "int4", 1e-3, accuracy_level=0, chunks=self.GEMMA_CHUNKS)

    def test_gemma3_cuda_target_keeps_the_residual_stream_in_fp32(self):
        # gemma-3-270m's residual stream reaches ~1e5, past float16's range
        path = self.fixture("gemma3-f32", "gemma3")
        out = os.path.join(self.tmp, "gemma3-cuda-fp16")
        export(path, out, "cuda", "fp16")
        model = onnx.load(os.path.join(out, "model.onnx"), load_external_data=False)
        types = {t.name: t.data_type for t in model.graph.initializer}
        skips = [n for n in model.graph.node if n.op_type == "SkipSimplifiedLayerNormalization"]
        self.assertEqual(len(skips), 2 * 7)
        for node in skips:
            self.assertEqual(types[node.input[2]], onnx.TensorProto.FLOAT, node.name)
        try:
            got = Runner(out).step(PROMPT)
        except Exception as exc:  # noqa: BLE001 - not every fp16 kernel exists on CPU
            self.skipTest(f"fp16 graph does not run on the CPU provider here: {exc}")
        want = reference_for(GGUFModel(path)).forward(PROMPT)
        rel = float(np.abs(got - want).max() / np.abs(want).max())
        self.assertLess(rel, 2e-2)

    def test_gemma3_sliding_window_matters(self):
        # the fixture's window does change the logits, so the comparisons above check it
        model = GGUFModel(self.fixture("gemma3-f32", "gemma3"))
        with_window = reference_for(model).forward(PROMPT)
        model.hp.sliding_window = 10**6
        without = reference_for(model).forward(PROMPT)
        self.assertGreater(float(np.abs(with_window - without).max()), 1e-3)
        np.testing.assert_allclose(with_window[:4], without[:4], rtol=1e-5, atol=1e-5)

    def test_gemma3_batch_of_two(self):
        path = self.fixture("gemma3-f32", "gemma3")
        out = os.path.join(self.tmp, "gemma3-batch")
        export(path, out, "cpu", "fp32")
        run = Runner(out)
        other = [7, 8, 9, 10, 11, 12, 13]
        feeds = {"input_ids": np.array([PROMPT, other], np.int64),
                 "attention_mask": np.ones((2, len(PROMPT)), np.int64)}
        for i in range(run.layers):
            for kind in ("key", "value"):
                feeds[f"past_key_values.{i}.{kind}"] = np.zeros((2, run.kv, 0, run.head_dim),
                                                                np.float32)
        got = run.sess.run(None, feeds)[0]
        for row, ids in enumerate((PROMPT, other)):
            want = reference_for(GGUFModel(path)).forward(ids)
            np.testing.assert_allclose(got[row], want, atol=1e-4 * np.abs(want).max())
        last = run.sess.run(["logits"], {**feeds, "logits_positions": np.array([[6, 0], [3, 4]])})[0]
        np.testing.assert_allclose(last[0], got[0][[6, 0]], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(last[1], got[1][[3, 4]], rtol=1e-5, atol=1e-5)

    def test_gemma3_graph_layout_and_configs(self):
        path = self.fixture("gemma3-f32", "gemma3")
        out = os.path.join(self.tmp, "gemma3-layout")
        export(path, out, "cpu", "int4")
        model = onnx.load(os.path.join(out, "model.onnx"), load_external_data=False)
        windows, caches = [], set()
        for node in model.graph.node:
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            if node.op_type == "GroupQueryAttention":
                self.assertTrue(all(node.input[:3]), "separate query, key and value inputs")
                windows.append(attrs["local_window_size"])
                caches.add(node.input[7])
                self.assertAlmostEqual(attrs["scale"], 1 / 8)  # 1/sqrt(head_dim 64)
        # local_window_size counts the current position, as HF's sliding_window; layer 5 global
        self.assertEqual(windows, [4, 4, 4, 4, 4, -1, 4])
        self.assertEqual(len(caches), 2, "one cos cache per rope base")
        names = [i.name for i in model.graph.input]
        self.assertEqual(names[:4], ["input_ids", "attention_mask", "past_key_values.0.key",
                                     "past_key_values.0.value"])
        self.assertEqual([o.name for o in model.graph.output][:3],
                         ["logits", "present.0.key", "present.0.value"])
        cfg = _load(os.path.join(out, "config.json"))
        self.assertEqual((cfg["model_type"], cfg["architectures"]),
                         ("gemma3_text", ["Gemma3ForCausalLM"]))
        self.assertEqual((cfg["head_dim"], cfg["sliding_window"]), (64, 4))
        self.assertEqual(cfg["layer_types"][4:6], ["sliding_attention", "full_attention"])
        self.assertEqual(cfg["eos_token_id"], [1, 5])  # <eos>, <end_of_turn>
        self.assertEqual(_load(os.path.join(out, "genai_config.json"))["model"]["type"],
                         "gemma3_text")
        tok_cfg = _load(os.path.join(out, "tokenizer_config.json"))
        self.assertEqual((tok_cfg["bos_token"], tok_cfg["add_bos_token"]), ("<bos>", True))

    def test_spm_merges_follow_scores(self):
        tokens = ["a", "b", "c", "ab", "bc", "abc", "<0x41>"]
        scores = [-100, -100, -100, -2, -1, -3, 0]
        types = [1, 1, 1, 1, 1, 1, 6]
        self.assertEqual(spm_merges(tokens, scores, types),
                         [["b", "c"], ["a", "b"], ["a", "bc"], ["ab", "c"]])

    def test_spm_tokenizer_json(self):
        path = self.fixture("gemma3-f32", "gemma3")
        out = os.path.join(self.tmp, "gemma3-tok")
        export(path, out, "cpu", "fp32")
        tok = _load(os.path.join(out, "tokenizer.json"))
        self.assertTrue(tok["model"]["byte_fallback"])
        self.assertIn(["▁", "t"], tok["model"]["merges"])
        added = {t["content"]: t["special"] for t in tok["added_tokens"]}
        self.assertEqual((added["<bos>"], added["\n"], added["  "]), (True, False, False))
        try:
            from tokenizers import Tokenizer
        except ImportError:
            return  # the structure is checked; encoding is checked where `tokenizers` exists
        t = Tokenizer.from_file(os.path.join(out, "tokenizer.json"))
        vocab = GGUFModel(path)
        tokens = list(vocab.meta("tokenizer.ggml.tokens"))
        scores = list(vocab.meta("tokenizer.ggml.scores"))
        for text in ("def f(x):\n    return x + 1\n", "the  retu\trn", "é✓ de", " d"):
            enc = t.encode(text)
            self.assertEqual(enc.ids[0], 2, "<bos> first")
            self.assertEqual(enc.ids[1:], spm_reference(text, tokens, scores), text)
            self.assertEqual(t.decode(enc.ids, skip_special_tokens=True), text)

    def test_unsupported_architecture_is_a_clear_error(self):
        import gguf
        path = os.path.join(self.tmp, "phi.gguf")
        w = gguf.GGUFWriter(path, "phi3")
        w.add_block_count(1)
        w.add_tensor("token_embd.weight", np.zeros((4, 32), np.float32))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        with self.assertRaises(ExportError) as ctx:
            export(path, os.path.join(self.tmp, "phi"), "cpu", "fp32")
        self.assertIn("failed to", str(ctx.exception))
        self.assertIn("phi3", str(ctx.exception))


def spm_reference(text: str, tokens: list[str], scores: list[float]) -> list[int]:
    """llama.cpp's SPM tokenizer, written out: user-defined whitespace tokens split out first
    (longest first), then per fragment spaces as "▁", characters merged highest-score pair
    first (leftmost on ties), unknown characters as their UTF-8 byte tokens."""
    ids = {t: i for i, t in enumerate(tokens)}
    user = sorted(("\n\n", "\n", "    ", "  ", "\t"), key=len, reverse=True)
    out: list[int] = []
    i = 0
    frag = ""

    def flush(frag: str) -> None:
        syms = list(frag.replace(" ", "▁"))
        while True:
            best = None
            for j in range(len(syms) - 1):
                pair = syms[j] + syms[j + 1]
                if pair in ids and (best is None or scores[ids[pair]] > scores[ids[best[1]]]):
                    best = (j, pair)
            if best is None:
                break
            syms[best[0]:best[0] + 2] = [best[1]]
        for sym in syms:
            if sym in ids:
                out.append(ids[sym])
            else:
                out.extend(ids[f"<0x{b:02X}>"] for b in sym.encode("utf-8"))

    while i < len(text):
        match = next((u for u in user if text.startswith(u, i)), None)
        if match:
            flush(frag)
            frag = ""
            out.append(ids[match])
            i += len(match)
        else:
            frag += text[i]
            i += 1
    flush(frag)
    return out


class QuantTest(unittest.TestCase):
    def test_int4_and_int8_round_trip(self):
        rng = np.random.default_rng(1)
        w = rng.standard_normal((48, 100)).astype(np.float32)  # K not a multiple of 32
        for bits, fn in ((4, quant.quantize_int4), (8, quant.quantize_int8)):
            packed, scales = fn(w)
            self.assertEqual(packed.shape, (48, 4, 32 * bits // 8))
            self.assertEqual(scales.shape, (48 * 4,))
            back = quant.dequantize(packed, scales, bits, 100)
            step = np.repeat(np.abs(scales.reshape(48, 4)), 32, axis=1)[:, :100]
            # int4 may shrink the scale (clipping the peak by at most 16% of its range)
            slack = 1.6 if bits == 4 else 0.5
            self.assertTrue(np.all(np.abs(back - w) <= step * slack + 1e-6), bits)
            self.assertLess(float(np.sqrt(np.mean((back - w) ** 2))), 0.15 if bits == 4 else 0.01)


if __name__ == "__main__":
    unittest.main()
