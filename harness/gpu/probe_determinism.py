"""Is an exported decoder deterministic on this GPU? Same inputs, same session, many runs.

Runs the exported model (a folder from `codegen models fetch ... --target cuda`) with ONNX
Runtime's deterministic compute on, REPS times on identical inputs, for a prefill (8 prompts of
400 tokens) and a decode step (164 rows over 300 past tokens, as HumanEval's one batch), and
prints per shape how many runs' logits differ bitwise from the first run's, by how much, and the
first layer whose present key or value differs: layer 0's present comes from the embedding, a
layer norm and the QKV MatMulNBits; layer i > 0's from the whole of layer i - 1 (attention, the
output projection, the MLP), so the first differing layer says where the difference starts.

    PYTHONPATH=/tmp/site python3 harness/gpu/probe_determinism.py MODEL_DIR [REPS]
"""

import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort


def session(model: Path, deterministic: bool) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.use_deterministic_compute = deterministic
    return ort.InferenceSession(str(model), options, providers=["CUDAExecutionProvider"])


def feeds(s: ort.InferenceSession, batch: int, new: int, past: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    out = {
        "input_ids": rng.integers(0, 150000, size=(batch, new), dtype=np.int64),
        "attention_mask": np.ones((batch, past + new), np.int64),
        "logits_positions": np.full((batch, 1), new - 1, np.int64),
    }
    for i in s.get_inputs():
        if i.name.startswith("past_key_values."):
            kv_heads, head_dim = i.shape[1], i.shape[3]
            out[i.name] = (rng.standard_normal((batch, kv_heads, past, head_dim)) * 0.5).astype(np.float16)
    return out


def first_difference(names: list, first: list, other: list) -> str:
    for name, a, b in zip(names, first, other):
        if name.startswith("present.") and not np.array_equal(a, b):
            return name
    return "none"


def probe(s: ort.InferenceSession, label: str, batch: int, new: int, past: int, reps: int) -> None:
    names = [o.name for o in s.get_outputs()]
    inputs = feeds(s, batch, new, past, seed=batch * 1000 + new)
    first = s.run(None, inputs)
    differing, largest, where = 0, 0.0, set()
    for _ in range(reps - 1):
        other = s.run(None, inputs)
        logits_a, logits_b = first[names.index("logits")], other[names.index("logits")]
        if not np.array_equal(logits_a, logits_b):
            differing += 1
            largest = max(largest, float(np.max(np.abs(logits_a - logits_b))))
        where.add(first_difference(names, first, other))
    print(f"{label}: {differing} of {reps - 1} reruns' logits differ from the first "
          f"(largest {largest:.3g}); first differing present: {', '.join(sorted(where))}", flush=True)


def main() -> None:
    model = Path(sys.argv[1])
    model = model / "model.onnx" if model.is_dir() else model
    reps = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    print(ort.__version__, flush=True)
    for deterministic in (True, False):
        s = session(model, deterministic)
        if s.get_providers()[0] != "CUDAExecutionProvider":
            sys.exit(f"CUDA did not load: providers {s.get_providers()}")
        tag = "deterministic compute " + ("on" if deterministic else "off")
        probe(s, f"{tag}, prefill 8 x 400", 8, 400, 0, reps)
        probe(s, f"{tag}, decode 164 rows, past 300", 164, 1, 300, reps)
        probe(s, f"{tag}, decode 1 row, past 300", 1, 1, 300, reps)


if __name__ == "__main__":
    main()
