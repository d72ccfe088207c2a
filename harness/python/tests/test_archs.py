"""Every architecture of tiny_archs.py: exported (fp32 and native with float activations), run in
ONNX Runtime through a prefill, a chunk and decode steps, against the numpy reference written
the way llama.cpp computes it. (llama.cpp itself: goldens.py and tests/architectures.rs.)

Run from harness/python: `python -m unittest tests.test_archs -v`.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import unittest

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import tiny_archs  # noqa: E402
from exporter.export import check, export  # noqa: E402
from exporter.gguf_model import ExportError, GGUFModel  # noqa: E402
from exporter.reference import reference_for  # noqa: E402
from test_exporter import Runner  # noqa: E402

# prefill 40 tokens (past every tiny model's window), a chunk of 3, then decode steps
CHUNKS = [40, 3, 1, 1, 1]


class ArchitecturesTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="archs-test-")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def run_model(self, name: str) -> None:
        path = os.path.join(self.tmp, f"{name}.gguf")
        tiny_archs.MODELS[name][0](path)
        self.assertTrue(check(path)["ok"])
        ids = [int(t) for t in np.random.default_rng(0).integers(0, 280, size=sum(CHUNKS))]
        for precision, level in (("fp32", None), ("native", 0)):
            out = os.path.join(self.tmp, f"{name}-{precision}")
            export(path, out, "cpu", precision, accuracy_level=level)
            run = Runner(out)
            ref = reference_for(GGUFModel(path))
            at = 0
            for n in CHUNKS:
                got = run.step(ids[at:at + n])
                want = ref.forward(ids[at:at + n])
                at += n
                rel = float(np.abs(got - want).max() / np.abs(want).max())
                self.assertLess(rel, 2e-4, f"{name} {precision}: relative diff {rel}")
                self.assertTrue(np.array_equal(got.argmax(-1), want.argmax(-1)), name)
            with open(os.path.join(out, "config.json"), encoding="utf-8") as fh:
                forms = json.load(fh)["codegen_export"]["tensors"]
            if precision == "native" and "tq" in name:
                self.assertIn("MatMulNBits bits=2", forms["blk.0.ffn_down.weight"])

    def test_every_architecture_matches_the_reference(self):
        for name in tiny_archs.MODELS:
            with self.subTest(model=name):
                self.run_model(name)

    def test_unsupported_architectures_are_named(self):
        for name, says in (("mixtral", "mixture-of-experts"), ("qwen2moe", "mixture-of-experts"),
                           ("mamba", "state-space"), ("jamba", "state-space"),
                           ("chatglm", "ChatGLM")):
            with self.subTest(model=name):
                path = os.path.join(self.tmp, f"{name}.gguf")
                tiny_archs.write_unsupported(path, name)
                with self.assertRaises(ExportError) as ctx:
                    check(path)
                self.assertIn(says, str(ctx.exception))


if __name__ == "__main__":
    unittest.main()
