"""Time com.microsoft MatMulNBits on CUDA at batch 1: 4-bit vs 8-bit codes, block 32 vs 16,
float16, for the 0.5B default model's matrix shapes (the native export's formats: Q5_0/Q8_0 are
8-bit block 32, Q6_K 8-bit block 16, Q4_K 4-bit block 32).

Needs onnxruntime-gpu on PYTHONPATH (e.g. the wheel that ../shared/gpu/stage.sh stages, unzipped)
and the CUDA 13 / cuDNN 9 libraries on LD_LIBRARY_PATH:

    PYTHONPATH=/tmp/site python3 harness/gpu/probe_matmulnbits.py
"""
import time, numpy as np, onnxruntime as ort
from onnx import helper, TensorProto, numpy_helper
print(ort.__version__, ort.get_available_providers())
def model(K, N, bits, block, reps=8):
    nb = K // block
    nodes, inits = [], []
    x = "X"
    for r in range(reps):
        codes = np.random.randint(0, 1 << bits, size=(N, nb, block)).astype(np.uint8)
        packed = codes if bits == 8 else codes[..., 0::2] | (codes[..., 1::2] << 4)
        z = np.full((N, nb), 1, np.uint8)
        zp = z.reshape(-1) if bits == 8 else (z[:, 0::2] | (z[:, 1::2] << 4)).reshape(-1)
        inits += [numpy_helper.from_array(packed, f"B{r}"), numpy_helper.from_array((np.random.rand(N * nb) * 0.01).astype(np.float16), f"S{r}"), numpy_helper.from_array(zp, f"Z{r}")]
        nodes.append(helper.make_node("MatMulNBits", ["X", f"B{r}", f"S{r}", f"Z{r}"], [f"Y{r}"], domain="com.microsoft", K=K, N=N, bits=bits, block_size=block))
    nodes.append(helper.make_node("Sum", [f"Y{r}" for r in range(reps)], ["Y"]))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT16, [1, K])], [helper.make_tensor_value_info("Y", TensorProto.FLOAT16, [1, N])], initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]); m.ir_version = 10
    return m.SerializeToString()
for K, N in ((896, 4864), (4864, 896), (896, 151936)):
    for bits, block in ((4, 32), (8, 32), (8, 16), (4, 16)):
        s = ort.InferenceSession(model(K, N, bits, block, 8 if N < 100000 else 1), providers=["CUDAExecutionProvider"])
        x = np.random.rand(1, K).astype(np.float16)
        io = s.io_binding(); xo = ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0); io.bind_ortvalue_input("X", xo); io.bind_output("Y", "cuda")
        for _ in range(20): s.run_with_iobinding(io)
        n = 200; t = time.perf_counter()
        for _ in range(n): s.run_with_iobinding(io)
        dt = (time.perf_counter() - t) / n * 1e6
        print(f"K={K} N={N} bits={bits} block={block}: {dt:.0f} us per run ({'8 matmuls' if N < 100000 else '1 matmul'})")
