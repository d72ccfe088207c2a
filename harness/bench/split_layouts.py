"""Layouts of a Q5_0 matrix for ONNX Runtime's MatMulNBits, timed at M = 1 and M = 8.

usage: python split_layouts.py K N   (the exporter venv's Python: onnx, onnxruntime 1.31.1)

Compares, on random Q5_0 codes, the exporter's layout (8-bit codes, float32 scales, zero point
16) with an exact split into a 4-bit part (the low four bits, zero point 0) and a 2-bit part
(the fifth bit, zero point 1, scales times 16), and with float16 scales (MatMulNBits takes
scales in the activations' type, so float16 activations with casts around it). Two threads,
64 MiB written before each timed run; medians of 15. Prints how far each result is from the
8-bit layout's on the same input (int8 activation rounding in each product).
"""
import onnx, onnxruntime as ort, numpy as np, time, sys
from onnx import helper, TensorProto, numpy_helper
K, N = int(sys.argv[1]), int(sys.argv[2])
def model(parts, a_type=TensorProto.FLOAT):
    nodes=[]; inits=[]; outs=[]
    for i,(bits,block,codes,scales,zp) in enumerate(parts):
        nb=K//block
        inits += [numpy_helper.from_array(codes,f"b{i}"), numpy_helper.from_array(scales,f"s{i}")]
        ins=["x",f"b{i}",f"s{i}"]
        if zp is not None: inits.append(numpy_helper.from_array(zp,f"z{i}")); ins.append(f"z{i}")
        nodes.append(helper.make_node("MatMulNBits",ins,[f"y{i}"],domain="com.microsoft",K=K,N=N,bits=bits,block_size=block,accuracy_level=4))
        outs.append(f"y{i}")
    if len(outs)>1: nodes.append(helper.make_node("Add",outs,["y"]))
    else: nodes[-1].output[0]="y"
    g=helper.make_graph(nodes,"g",[helper.make_tensor_value_info("x",a_type,["M",K])],[helper.make_tensor_value_info("y",a_type,["M",N])],inits)
    m=helper.make_model(g,opset_imports=[helper.make_opsetid("",17),helper.make_opsetid("com.microsoft",1)]); m.ir_version=9
    return m.SerializeToString()
rng=np.random.default_rng(0)
def pack(q,bits,block):
    # q: [N, K] codes -> [N, K/block, block*bits/8] uint8, low bits first
    per=8//bits; q=q.reshape(N,K//block,block//per,per).astype(np.uint8)
    out=np.zeros(q.shape[:3],np.uint8)
    for j in range(per): out|= (q[...,j] << (bits*j)).astype(np.uint8)
    return out
def zp_pack(z,bits):
    per=8//bits; nb=z.shape[1]; pad=(-nb)%per
    z=np.concatenate([z,np.zeros((N,pad),np.uint8)],1).reshape(N,-1,per)
    out=np.zeros(z.shape[:2],np.uint8)
    for j in range(per): out|=(z[...,j]<<(bits*j)).astype(np.uint8)
    return out.reshape(-1)
q5=rng.integers(0,32,(N,K)).astype(np.uint8); s=rng.random((N*(K//32),)).astype(np.float32)
eight=[(8,32,pack(q5,8,32),s,np.full(N*(K//32),16,np.uint8))]
split=[(4,32,pack(q5&15,4,32),s,zp_pack(np.zeros((N,K//32),np.uint8),4)),
       (2,32,pack(q5>>4,2,32),s*16,zp_pack(np.ones((N,K//32),np.uint8),2))]
so=ort.SessionOptions(); so.intra_op_num_threads=2; so.add_session_config_entry("session.intra_op.allow_spinning","0")
flush=np.ones(64<<20)
x_check=rng.standard_normal((1,K)).astype(np.float32)
for name,parts in [("8-bit (now)",eight),("4-bit + 2-bit split",split)]:
    try:
        sess=ort.InferenceSession(model(parts),so,providers=["CPUExecutionProvider"])
    except Exception as e:
        print(name,"refused:",str(e)[:200]); continue
    for M in (1,8):
        x=rng.standard_normal((M,K)).astype(np.float32)
        ys=sess.run(None,{"x":x})[0]
        ts=[]
        for r in range(15):
            flush+=1
            t=time.perf_counter(); sess.run(None,{"x":x}); ts.append(time.perf_counter()-t)
        print(f"{name:22s} M={M}: {np.median(ts)*1e3:.3f} ms")
    y=sess.run(None,{"x":x_check})[0]
    if name.startswith("8"): ref=y
    else: print("   max |difference| from 8-bit:", float(np.abs(y-ref).max()), "of range", float(np.abs(ref).max()))
# float16 scales: MatMulNBits takes its scales in the activations' type, so float16 activations around it.
def fp16_model():
    codes=pack(q5,8,32); sc=s.astype(np.float16)
    inits=[numpy_helper.from_array(codes,"b"),numpy_helper.from_array(sc,"s"),numpy_helper.from_array(np.full(N*(K//32),16,np.uint8),"z")]
    nodes=[helper.make_node("Cast",["x"],["xh"],to=TensorProto.FLOAT16),
           helper.make_node("MatMulNBits",["xh","b","s","z"],["yh"],domain="com.microsoft",K=K,N=N,bits=8,block_size=32,accuracy_level=4),
           helper.make_node("Cast",["yh"],["y"],to=TensorProto.FLOAT)]
    g=helper.make_graph(nodes,"g",[helper.make_tensor_value_info("x",TensorProto.FLOAT,["M",K])],[helper.make_tensor_value_info("y",TensorProto.FLOAT,["M",N])],inits)
    m=helper.make_model(g,opset_imports=[helper.make_opsetid("",17),helper.make_opsetid("com.microsoft",1)]); m.ir_version=9
    return m.SerializeToString()
sess=ort.InferenceSession(fp16_model(),so,providers=["CPUExecutionProvider"])
for M in (1,8):
    x=rng.standard_normal((M,K)).astype(np.float32)
    ts=[]
    for r in range(15):
        flush+=1; t=time.perf_counter(); sess.run(None,{"x":x}); ts.append(time.perf_counter()-t)
    print(f"{'8-bit, float16 scales':22s} M={M}: {np.median(ts)*1e3:.3f} ms")
