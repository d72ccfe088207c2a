"""Write the engine's token-choice heads: tiny ONNX graphs that run on the model's device.

A head takes the model's `logits` [batch, seq, vocab] where the model left them (GPU memory
under the CUDA provider), picks one position per row, and returns only the top-k
log-probabilities and token ids of that position. The engine then copies k numbers per row
to the host instead of the whole vocabulary (151,936 logits per token for Qwen2.5) and does
no log-sum-exp on the host.

Graph (opset 17):
    logits [B, S, V] (float or float16), index [B] int64 (row r: r * S + position), k [1] int64
    -> Flatten(axis 2) [B * S, V] -> Gather(axis 0)  [B, V]   the position each row continues from
    -> Cast(float)                                log-softmax in fp32 even for fp16 logits
    -> LogSoftmax(axis=-1)
    -> TopK(k, largest, sorted)       top_logprobs [B, k] float, top_ids [B, k] int64

TopK breaks ties by the lower index, as the host's argmax does.

Usage: python make_heads.py OUT_DIR   (writes last_token_top_f32.onnx and last_token_top_f16.onnx)
The files are committed under src/engine/onnx/heads/ and embedded in the binary;
tests/engine.rs checks that the committed files are what this script writes.
"""

import sys
from pathlib import Path

import onnx
from onnx import TensorProto, helper


def head(elem_type: int) -> onnx.ModelProto:
    logits = helper.make_tensor_value_info("logits", elem_type, ["batch", "seq", "vocab"])
    index = helper.make_tensor_value_info("index", TensorProto.INT64, ["batch"])
    k = helper.make_tensor_value_info("k", TensorProto.INT64, [1])
    top_logprobs = helper.make_tensor_value_info("top_logprobs", TensorProto.FLOAT, ["batch", "k"])
    top_ids = helper.make_tensor_value_info("top_ids", TensorProto.INT64, ["batch", "k"])
    nodes = [
        # [B, S, V] -> [B * S, V], then one row per sequence: plain Gather, the best-trodden
        # kernel on every execution provider.
        helper.make_node("Flatten", ["logits"], ["rows"], axis=2),
        helper.make_node("Gather", ["rows", "index"], ["last"], axis=0),
        helper.make_node("Cast", ["last"], ["last_f32"], to=TensorProto.FLOAT),
        helper.make_node("LogSoftmax", ["last_f32"], ["logprobs"], axis=-1),
        helper.make_node(
            "TopK", ["logprobs", "k"], ["top_logprobs", "top_ids"], axis=-1, largest=1, sorted=1
        ),
    ]
    graph = helper.make_graph(nodes, "last_token_top", [logits, index, k], [top_logprobs, top_ids])
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17)],
        producer_name="codegen-harness make_heads.py",
        ir_version=8,
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for name, elem in (("f32", TensorProto.FLOAT), ("f16", TensorProto.FLOAT16)):
        (out / f"last_token_top_{name}.onnx").write_bytes(head(elem).SerializeToString())


if __name__ == "__main__":
    main()
