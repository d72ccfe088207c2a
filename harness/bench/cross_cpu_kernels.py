"""Which ONNX Runtime kernels give different numbers for the same input on different CPUs.

Builds one-node models of the operators the default export uses (MatMulNBits with 4- and 8-bit
weights at accuracy levels 0 and 4, SimplifiedLayerNormalization, Softmax, MatMul), runs each
on fixed random inputs, and writes the outputs to an .npz file. Run it once natively and once
under an emulated CPU of another kind (e.g. `qemu-x86_64 -cpu EPYC-Rome`, AVX2 without
AVX-512 or VNNI), then compare the two files:

    python cross_cpu_kernels.py run OUT.npz
    qemu-x86_64 -cpu EPYC-Rome python cross_cpu_kernels.py run OUT-avx2.npz
    python cross_cpu_kernels.py compare OUT.npz OUT-avx2.npz

Needs numpy, onnx and onnxruntime (the exporter's venv has them).
"""

import sys

import numpy as np
import onnx
from onnx import TensorProto, helper

# The default model's sizes: hidden 896, MLP 4864, M rows (1 = a decode step, 64 = a prefill).
K, N, BLOCK = 896, 4864, 32


def matmul_nbits(bits, level, m, rng, outliers=False):
    blocks = K // BLOCK
    codes = rng.integers(0, 2**bits, size=(N, blocks, BLOCK), dtype=np.uint8)
    if bits == 4:
        packed = (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)
    else:
        packed = codes
    scales = (rng.random((N, blocks), dtype=np.float32) * 0.02 + 0.001).astype(np.float32)
    zero = np.full((N, (blocks * bits + 7) // 8), 0x88 if bits == 4 else 0x80, dtype=np.uint8)
    node = helper.make_node(
        "MatMulNBits", ["x", "w", "s", "z"], ["y"], domain="com.microsoft",
        K=K, N=N, bits=bits, block_size=BLOCK, accuracy_level=level,
    )
    inits = [
        helper.make_tensor("w", TensorProto.UINT8, packed.shape, packed.tobytes(), raw=True),
        helper.make_tensor("s", TensorProto.FLOAT, scales.shape, scales.tobytes(), raw=True),
        helper.make_tensor("z", TensorProto.UINT8, zero.shape, zero.tobytes(), raw=True),
    ]
    x = (rng.standard_normal((m, K)) * 2.0).astype(np.float32)
    if outliers:
        # Real hidden states have a few channels hundreds of times larger than the rest.
        x[:, [7, 300, 641]] = [180.0, -240.0, 95.0]
    return node, inits, {"x": x}, [m, N]


def norm(m, rng):
    w = (rng.random(K, dtype=np.float32) + 0.5).astype(np.float32)
    node = helper.make_node("SimplifiedLayerNormalization", ["x", "g"], ["y"], axis=-1, epsilon=1e-6)
    inits = [helper.make_tensor("g", TensorProto.FLOAT, [K], w.tobytes(), raw=True)]
    return node, inits, {"x": rng.standard_normal((m, K)).astype(np.float32) * 3}, [m, K]


def softmax(m, rng):
    node = helper.make_node("Softmax", ["x"], ["y"], axis=-1)
    return node, [], {"x": rng.standard_normal((m, 151936)).astype(np.float32) * 4}, [m, 151936]


def matmul(m, rng):
    w = (rng.standard_normal((K, N)) * 0.05).astype(np.float32)
    node = helper.make_node("MatMul", ["x", "w"], ["y"])
    inits = [helper.make_tensor("w", TensorProto.FLOAT, [K, N], w.tobytes(), raw=True)]
    return node, inits, {"x": rng.standard_normal((m, K)).astype(np.float32)}, [m, N]


CASES = {
    **{
        f"MatMulNBits {bits}-bit, accuracy level {level}, M={m}": (
            lambda rng, bits=bits, level=level, m=m: matmul_nbits(bits, level, m, rng)
        )
        for bits in (4, 8)
        for level in (0, 4)
        for m in (1, 64)
    },
    **{
        f"MatMulNBits {bits}-bit, accuracy level {level}, M={m}, outlier channels": (
            lambda rng, bits=bits, level=level, m=m: matmul_nbits(bits, level, m, rng, True)
        )
        for bits in (4, 8)
        for level in (0, 4)
        for m in (1, 64)
    },
    "SimplifiedLayerNormalization M=64": lambda rng: norm(64, rng),
    "Softmax over 151936, M=4": lambda rng: softmax(4, rng),
    "MatMul float32, M=64": lambda rng: matmul(64, rng),
}


def run(out):
    import onnxruntime as ort

    results = {}
    for name, make in CASES.items():
        rng = np.random.default_rng(20261205)
        node, inits, feeds, shape = make(rng)
        inputs = [
            helper.make_tensor_value_info(k, TensorProto.FLOAT, list(v.shape)) for k, v in feeds.items()
        ]
        graph = helper.make_graph([node], "k", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)], inits)
        model = helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        sess = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        results[name] = sess.run(["y"], feeds)[0]
        print(f"ran {name}", flush=True)
    np.savez(out, **results)


def compare(a_path, b_path):
    a, b = np.load(a_path), np.load(b_path)
    print(f"| kernel | max abs difference | max relative to the output's range | elements that differ |")
    print("| --- | ---: | ---: | ---: |")
    for name in a.files:
        x, y = a[name].astype(np.float64), b[name].astype(np.float64)
        diff = np.abs(x - y)
        span = max(np.abs(x).max(), 1e-30)
        print(f"| {name} | {diff.max():.3g} | {diff.max() / span:.3g} | {np.count_nonzero(diff)} of {diff.size} |")


if __name__ == "__main__":
    if sys.argv[1:2] == ["run"]:
        run(sys.argv[2])
    elif sys.argv[1:2] == ["compare"]:
        compare(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)
