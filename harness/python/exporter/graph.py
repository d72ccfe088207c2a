"""Build the decoder graph in onnxruntime-genai's model-builder layout.

Inputs:  input_ids int64 [B, S], attention_mask int64 [B, T],
         past_key_values.{i}.key|value  ACT [B, kv_heads, P, head_dim],
         logits_positions int64 [B, L] (optional: the positions of input_ids whose logits to
         compute; default [1, 0], meaning every position, which is what onnxruntime-genai expects)
Outputs: logits float32 [B, L or S, vocab], present.{i}.key|value ACT [B, kv_heads, T', head_dim]

Why logits_positions: a batched prefill needs one position per row (its last prompt token), and
[B, S, vocab] float32 logits of a 151936-token vocabulary are 0.6 MB per prompt token: 164
HumanEval prompts of ~300 tokens came to tens of GB on the GPU for logits nobody reads.

ACT is float32 for the cpu target and float16 for the cuda target. Attention is
com.microsoft GroupQueryAttention with packed QKV and fused rotate-half rotary (cos/sin caches);
seqlens_k (= sum(attention_mask) - 1, int32) and total_sequence_length (int32 scalar) are computed
inside the graph from attention_mask. Linear layers are MatMulNBits (native: each GGUF tensor's own
blocks, see `native.py`; int4/int8: re-quantized, block 32, symmetric) or MatMul (fp16/fp32).
Norms are (Skip)SimplifiedLayerNormalization.
"""

from __future__ import annotations

import os
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper

from . import native, quant
from .gguf_model import GGUFModel

PRECISIONS = ("native", "int4", "int8", "fp16", "fp32")
TARGETS = ("cpu", "cuda")
OPSET = 21
MS_OPSET = 1
ALIGN = 4096


def rope_angles(n_pos: int, dim: int, base: float, freq_scale: float = 1.0,
                factors: np.ndarray | None = None, positions: np.ndarray | None = None
                ) -> np.ndarray:
    """Rotary angles [positions, dim/2] in float64: pos * freq_scale * base^(-2i/dim) / f[i]."""
    inv_freq = 1.0 / (base ** (np.arange(0, dim // 2, dtype=np.float64) * 2.0 / dim))
    if factors is not None:
        inv_freq = inv_freq / np.asarray(factors, np.float64)
    pos = np.arange(n_pos, dtype=np.float64) if positions is None else \
        np.asarray(positions, np.float64)
    return np.outer(pos * freq_scale, inv_freq)


class WeightFile:
    """Appends initializers to one external-data file as they are made (bounded memory)."""

    def __init__(self, folder: str, location: str = "model.onnx.data"):
        self.location = location
        self.path = os.path.join(folder, location)
        self.fh = open(self.path, "wb")
        self.offset = 0
        self.initializers: list[TensorProto] = []

    def add(self, name: str, array: np.ndarray) -> str:
        array = np.ascontiguousarray(array)
        dtype = helper.np_dtype_to_tensor_dtype(array.dtype)
        tensor = TensorProto()
        tensor.name = name
        tensor.data_type = dtype
        tensor.dims.extend(array.shape)
        if array.nbytes < 1024:
            tensor.raw_data = array.tobytes()
        else:
            pad = (-self.offset) % ALIGN
            if pad:
                self.fh.write(b"\0" * pad)
                self.offset += pad
            data = array.tobytes()
            self.fh.write(data)
            tensor.data_location = TensorProto.EXTERNAL
            for key, value in (
                ("location", self.location),
                ("offset", str(self.offset)),
                ("length", str(len(data))),
            ):
                entry = tensor.external_data.add()
                entry.key = key
                entry.value = value
            self.offset += len(data)
        self.initializers.append(tensor)
        return name

    def close(self) -> None:
        self.fh.close()


class GraphBuilder:
    def __init__(self, model: GGUFModel, target: str, precision: str, weights: WeightFile,
                 progress: Callable[[str], None] = lambda _msg: None,
                 accuracy_level: int | None = None, head_precision: str | None = None):
        if target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}")
        self.m = model
        self.hp = model.hp
        self.target = target
        self.precision = precision
        self.w = weights
        self.progress = progress
        self.act = np.float32 if target == "cpu" else np.float16
        self.act_onnx = TensorProto.FLOAT if target == "cpu" else TensorProto.FLOAT16
        # dtype in which float weights are stored (native: exact, so float32 on the cpu target)
        self.wdtype = np.float32 if precision == "fp32" or (
            precision == "native" and target == "cpu") else np.float16
        # what each GGUF tensor became, recorded in config.json
        self.tensor_forms: dict[str, str] = {}
        if head_precision is not None and head_precision not in PRECISIONS:
            raise ValueError(f"lm_head precision must be one of {PRECISIONS}")
        self.head_precision = head_precision or precision
        self.nodes: list[onnx.NodeProto] = []
        self.counter = 0
        # MatMulNBits accuracy_level: 4 lets the CPU kernel quantize activations to int8 (fast, as
        # onnxruntime-genai's builder does for CPU int4); 0 keeps them in float.
        if accuracy_level is None:
            accuracy_level = 4 if (target == "cpu" and precision in ("int4", "native")) else 0
        self.accuracy_level = accuracy_level

    # -- helpers ----------------------------------------------------------------------------
    def name(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}_{self.counter}"

    def node(self, op: str, inputs: list[str], outputs: list[str] | None = None,
             domain: str = "", name: str | None = None, **attrs) -> list[str]:
        name = name or self.name(op)
        if outputs is None:
            outputs = [f"{name}/output_0"]
        self.nodes.append(helper.make_node(op, inputs, outputs, name=name, domain=domain, **attrs))
        return outputs


    def gqa(self, p: str, i: int, qkv_inputs: list[str], seqlens_k: str, total_len: str,
            rope: tuple[str, str] | None, window: int = -1, scale: float | None = None) -> str:
        """Layer `i`'s com.microsoft GroupQueryAttention over its KV cache: `qkv_inputs` is
        `[qkv, "", ""]` (packed) or `[q, k, v]`; `rope` the cos/sin caches (None: no rotary);
        `window` the local window (-1: none); `scale` 1/sqrt(head_dim) unless given."""
        hp = self.hp
        attn, _, _ = self.node(
            "GroupQueryAttention",
            qkv_inputs + [f"past_key_values.{i}.key", f"past_key_values.{i}.value",
                          seqlens_k, total_len] + (list(rope) if rope else []),
            [f"/{p}/attn/GroupQueryAttention/output_0", f"present.{i}.key", f"present.{i}.value"],
            domain="com.microsoft", name=f"/{p}/attn/GroupQueryAttention",
            num_heads=hp.n_heads, kv_num_heads=hp.n_kv_heads, do_rotary=int(rope is not None),
            rotary_interleaved=0,
            scale=float(1.0 / np.sqrt(hp.head_dim)) if scale is None else float(scale),
            local_window_size=window)
        return attn
    def const(self, name: str, array: np.ndarray) -> str:
        return self.w.add(name, np.asarray(array))

    def cast(self, x: str, to: int) -> str:
        return self.node("Cast", [x], to=to)[0]

    def float_weight(self, name: str, array: np.ndarray, dtype=None) -> str:
        """Store a float weight (default dtype: self.wdtype); cast to the activation dtype if
        they differ."""
        dtype = dtype or self.wdtype
        stored = self.const(name, array.astype(dtype))
        if np.dtype(dtype) != np.dtype(self.act):
            return self.cast(stored, self.act_onnx)
        return stored

    def linear(self, prefix: str, x: str, w: np.ndarray | str | list[str],
               bias: np.ndarray | None = None, precision: str | None = None) -> str:
        """y = x @ w.T (+ bias). `w` is a float32 [N, K] array, or the GGUF name(s) of the weight
        (several names: their rows stacked, as for packed QKV)."""
        precision = precision or self.precision
        if precision == "native":
            if isinstance(w, np.ndarray):
                # an array has lost its GGUF blocks: native needs the tensor's name
                raise ValueError(f"{prefix}: the native precision takes GGUF tensor names")
            y = self.native_linear(prefix, x, [w] if isinstance(w, str) else list(w))
        else:
            if isinstance(w, str):
                w = self.m.hf_weight(w)
            elif isinstance(w, list):
                w = np.concatenate([self.m.hf_weight(name) for name in w])
            y = self.array_linear(prefix, x, w, precision)
        if bias is not None:
            bname = self.const(f"{prefix}.Add.bias", bias.astype(self.act))
            y = self.node("Add", [y, bname], name=f"{prefix}/Add")[0]
        return y

    def array_linear(self, prefix: str, x: str, w: np.ndarray, precision: str) -> str:
        """x @ w.T from a float32 array w [N, K] stored at `precision` (int4/int8 re-quantized,
        fp16/fp32 float)."""
        n, k = w.shape
        if precision in ("int4", "int8"):
            bits = 4 if precision == "int4" else 8
            if bits == 4:
                packed, scales = quant.quantize_int4(w)
            else:
                packed, scales = quant.quantize_int8(w)
            b = self.const(f"{prefix}.MatMul.weight_Q{bits}", packed)
            s = self.const(f"{prefix}.MatMul.weight_scales", scales.astype(self.act))
            return self.node("MatMulNBits", [x, b, s], domain="com.microsoft",
                             name=f"{prefix}/MatMul", K=k, N=n, bits=bits, block_size=quant.BLOCK,
                             accuracy_level=self.accuracy_level)[0]
        dtype = np.float32 if precision == "fp32" else np.float16
        wt = self.float_weight(f"{prefix}.MatMul.weight", np.ascontiguousarray(w.T), dtype)
        return self.node("MatMul", [x, wt], name=f"{prefix}/MatMul")[0]

    def native_linear(self, prefix: str, x: str, names: list[str]) -> str:
        """Each GGUF tensor in its own block format (one MatMulNBits when the parts share a
        layout); a format MatMulNBits cannot represent exactly becomes a float MatMul."""
        parts = [(name, self.m.block_weight(name)) for name in names]
        blocks = [bw for _, bw in parts if bw is not None]
        if len(blocks) == len(parts):
            merged = native.concat_rows(blocks)
            if merged is not None:
                for name, bw in parts:
                    self.record(name, prefix, bw.describe())
                return self.block_matmul(prefix, x, merged)
        outputs = []
        for j, (name, bw) in enumerate(parts):
            sub = prefix if len(parts) == 1 else f"{prefix}.{j}"
            if bw is not None:
                self.record(name, prefix, bw.describe())
                outputs.append(self.block_matmul(sub, x, bw))
                continue
            kind = self.m.tensor_type(name)
            w = self.m.hf_weight(name)
            if self.target == "cpu" or kind == "F16":
                # float32 on cpu; an F16 tensor is exact in the cuda target's float16
                precision = "fp32" if self.target == "cpu" else "fp16"
                self.record(name, prefix, f"{kind} -> {'float32' if precision == 'fp32' else 'float16'}"
                            " MatMul (exact; no MatMulNBits form)")
                outputs.append(self.array_linear(sub, x, w, precision))
                continue
            # cuda target, a format float16 cannot hold exactly: the weight stays float32 (never
            # narrower) and this one MatMul runs in float32 between casts
            self.record(name, prefix, f"{kind} -> float32 MatMul between float16 casts (exact "
                        "weights; no MatMulNBits form)")
            wt = self.const(f"{sub}.MatMul.weight", np.ascontiguousarray(w.T, dtype=np.float32))
            x32 = self.cast(x, TensorProto.FLOAT)
            y32 = self.node("MatMul", [x32, wt], name=f"{sub}/MatMul")[0]
            outputs.append(self.cast(y32, self.act_onnx))
        if len(outputs) == 1:
            return outputs[0]
        return self.node("Concat", outputs, name=f"{prefix}/Concat", axis=-1)[0]

    def record(self, name: str, prefix: str, form: str) -> None:
        """Note what a GGUF tensor became; a tensor used twice (a tied lm_head) is noted per use."""
        key = name if name not in self.tensor_forms else f"{name} as {prefix}"
        self.tensor_forms[key] = form

    def block_matmul(self, prefix: str, x: str, bw: native.BlockWeight) -> str:
        """MatMulNBits for `(code - zero) * scale`, plus `sum(x per block) @ add` when the
        format has a per-block add (x is [batch, seq, K])."""
        n, k = bw.shape
        b = self.const(f"{prefix}.MatMul.weight_Q{bw.bits}", bw.packed_codes())
        s = self.const(f"{prefix}.MatMul.weight_scales", bw.scale.reshape(-1).astype(self.act))
        z = self.const(f"{prefix}.MatMul.weight_zp", bw.packed_zero())
        y = self.node("MatMulNBits", [x, b, s, z], domain="com.microsoft", name=f"{prefix}/MatMul",
                      K=k, N=n, bits=bw.bits, block_size=bw.block,
                      accuracy_level=self.accuracy_level)[0]
        if bw.add is None:
            return y
        n_blocks = k // bw.block
        shape = self.const(f"{prefix}.add.shape", np.array([0, 0, n_blocks, bw.block], np.int64))
        axes = self.const(f"{prefix}.add.axes", np.array([-1], np.int64))
        per_block = self.node("Reshape", [x, shape], name=f"{prefix}/add/Reshape")[0]
        summed = self.node("ReduceSum", [per_block, axes], name=f"{prefix}/add/ReduceSum",
                           keepdims=0)[0]
        table = self.const(f"{prefix}.MatMul.weight_add",
                           np.ascontiguousarray(bw.add.T).astype(self.act))
        offset = self.node("MatMul", [summed, table], name=f"{prefix}/add/MatMul")[0]
        return self.node("Add", [y, offset], name=f"{prefix}/add/Add")[0]

    def embedding(self, ids: str = "input_ids") -> str:
        """Token embeddings as ACT [batch, seq, hidden]. native on cpu: the GGUF blocks through
        GatherBlockQuantized (exact); otherwise a float table (fp32 for fp32 exports, else fp16;
        on the cuda target fp16 is the activations' own precision)."""
        name = "token_embd.weight"
        bw = self.m.block_weight(name) if (self.precision == "native" and self.target == "cpu") \
            else None
        if bw is not None and bw.bits == 2:  # GatherBlockQuantized takes 4- and 8-bit codes
            bw = None
        if bw is None:
            emb = self.m.raw(name)
            emb_dtype = np.float32 if self.wdtype == np.float32 else np.float16
            if self.precision == "native":
                self.tensor_forms[name] = (f"{self.m.tensor_type(name)} -> "
                                           f"{np.dtype(emb_dtype).name} Gather")
            table = self.const("model.embed_tokens.weight", emb.astype(emb_dtype))
            x = self.node("Gather", [table, ids], name="model/embed_tokens/Gather")[0]
            if np.dtype(emb_dtype) != np.dtype(self.act):
                x = self.cast(x, self.act_onnx)
            return x
        self.tensor_forms[name] = bw.describe().replace("MatMulNBits", "GatherBlockQuantized")
        n_blocks = bw.shape[1] // bw.block
        zero = bw.zero if bw.bits == 8 else \
            bw.packed_zero().reshape(bw.zero.shape[0], -1)
        data = self.const("model.embed_tokens.weight_Q", bw.packed_codes().reshape(bw.shape[0], -1))
        scales = self.const("model.embed_tokens.weight_scales", bw.scale.astype(self.act))
        zp = self.const("model.embed_tokens.weight_zp", np.ascontiguousarray(zero))
        x = self.node("GatherBlockQuantized", [data, ids, scales, zp], domain="com.microsoft",
                      name="model/embed_tokens/GatherBlockQuantized", bits=bw.bits,
                      block_size=bw.block, gather_axis=0, quantize_axis=1)[0]
        if bw.add is None:
            return x
        table = self.const("model.embed_tokens.weight_add", bw.add.astype(self.act))
        add = self.node("Gather", [table, ids], name="model/embed_tokens/add/Gather")[0]
        axes = self.const("model.embed_tokens.add.axes", np.array([-1], np.int64))
        add = self.node("Unsqueeze", [add, axes], name="model/embed_tokens/add/Unsqueeze")[0]
        split = self.const("model.embed_tokens.add.shape",
                           np.array([0, 0, n_blocks, bw.block], np.int64))
        merged = self.const("model.embed_tokens.add.merged", np.array([0, 0, -1], np.int64))
        x = self.node("Reshape", [x, split], name="model/embed_tokens/add/Reshape")[0]
        x = self.node("Add", [x, add], name="model/embed_tokens/add/Add")[0]
        return self.node("Reshape", [x, merged], name="model/embed_tokens/add/Merge")[0]

    def rotary_caches(self, name: str, base: float, freq_scale: float = 1.0,
                      factors: np.ndarray | None = None) -> tuple[str, str]:
        """cos/sin caches [context_length, head_dim/2], as llama.cpp's ggml_rope_ext computes
        the angles: position * freq_scale * base^(-2i/head_dim) / factors[i] (factors: llama3's
        `rope_freqs.weight`; freq_scale: linear rope scaling)."""
        hp = self.hp
        # a partial rotary (phi2, phi3) covers the first rope_dim dims: GroupQueryAttention
        # rotates 2 * cos_cache.shape[1] dims of each head and passes the rest through
        angles = rope_angles(hp.context_length, hp.rope_dim or hp.head_dim, base, freq_scale,
                             factors)
        # rope.scaling.attn_factor (phi3's longrope mscale): ggml_rope_ext scales cos and sin
        prefix = f"{name}." if name else ""
        cos = self.const(f"{prefix}cos_cache",
                         (np.cos(angles) * hp.rope_attn_factor).astype(self.act))
        sin = self.const(f"{prefix}sin_cache",
                         (np.sin(angles) * hp.rope_attn_factor).astype(self.act))
        return cos, sin

    def per_head_rms(self, name: str, x: str, heads: int, weight: str) -> str:
        """RMSNorm over each head of x [B, S, heads*head_dim] (weight [head_dim])."""
        hp = self.hp
        split = self.const(f"{name}.shape_split", np.array([0, 0, heads, hp.head_dim], np.int64))
        joined = self.const(f"{name}.shape_join", np.array([0, 0, heads * hp.head_dim], np.int64))
        h = self.node("Reshape", [x, split], name=f"{name}/Reshape_split")[0]
        h = self.node("SimplifiedLayerNormalization", [h, self.norm_weight(weight)],
                      name=f"{name}/SimplifiedLayerNormalization", epsilon=hp.rms_eps, axis=-1,
                      stash_type=1)[0]
        return self.node("Reshape", [h, joined], name=f"{name}/Reshape_join")[0]

    def norm_weight(self, name: str) -> str:
        return self.const(name, self.m.raw(name).astype(self.act))

    # -- shared by every architecture's build() ----------------------------------------------
    def graph_io(self) -> tuple[list, list]:
        """The decoder's inputs and outputs: the contract the engine checks (folder.rs)."""
        hp = self.hp
        kv_shape = ["batch_size", hp.n_kv_heads, "past_sequence_length", hp.head_dim]
        present_shape = ["batch_size", hp.n_kv_heads, "total_sequence_length", hp.head_dim]
        inputs = [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64,
                                          ["batch_size", "sequence_length"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64,
                                          ["batch_size", "total_sequence_length"]),
        ]
        outputs = [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                                          ["batch_size", "logits_length", hp.vocab_size]),
        ]
        for i in range(hp.n_layers):
            for kind in ("key", "value"):
                inputs.append(helper.make_tensor_value_info(
                    f"past_key_values.{i}.{kind}", self.act_onnx, kv_shape))
                outputs.append(helper.make_tensor_value_info(
                    f"present.{i}.{kind}", self.act_onnx, present_shape))
        inputs.append(helper.make_tensor_value_info("logits_positions", TensorProto.INT64,
                                                    ["batch_size", "logits_length"]))
        # An initializer of the same name makes the input optional: its default [1, 0] selects
        # every position (see logits_rows).
        self.w.initializers.append(helper.make_tensor(
            "logits_positions", TensorProto.INT64, [1, 0], []))
        return inputs, outputs

    def lm_head(self, hf: str) -> None:
        """The `logits` output: the lm_head (`output.weight`, else the tied `token_embd`) over
        the rows of `hf` that `logits_positions` names, as float32."""
        head_name = "output.weight" if self.m.has("output.weight") else "token_embd.weight"
        logits = self.linear("lm_head", self.logits_rows(hf), head_name,
                             precision=self.head_precision)
        if np.dtype(self.act) != np.dtype(np.float32):
            self.node("Cast", [logits], ["logits"], name="lm_head/Cast", to=TensorProto.FLOAT)
        else:
            self.node("Identity", [logits], ["logits"], name="lm_head/Identity")

    def logits_rows(self, hf: str) -> str:
        """The rows of the final hidden states `hf` [B, S, H] that the lm_head gets: those named
        by `logits_positions` [B, L], or all S when it is [1, 0] (its default).

        Every device op reads device data: the all-positions index comes from input_ids
        (CumSum of ones), and only Slice's `ends` is computed from shapes, which ONNX Runtime
        keeps on the CPU, so CUDA graph capture sees no copies between devices."""
        hp = self.hp
        c = "model.logits_rows"
        zero = self.const(f"{c}.zero", np.array([0], dtype=np.int64))
        one = self.const(f"{c}.one", np.array([1], dtype=np.int64))
        one_s = self.const(f"{c}.one_scalar", np.array(1, dtype=np.int64))
        ones = self.node("Mul", ["input_ids", self.const(f"{c}.zero_scalar", np.array(0, np.int64))],
                         name=f"{c}/Zeros")[0]
        ones = self.node("Add", [ones, one_s], name=f"{c}/Ones")[0]
        count = self.node("CumSum", [ones, one_s], name=f"{c}/CumSum")[0]
        every = self.node("Sub", [count, one_s], name=f"{c}/Every")[0]           # [B, S]: 0..S-1
        # How many of `every` to keep: S when logits_positions is empty, else 0.
        n_given = self.node("Shape", ["logits_positions"], name=f"{c}/GivenShape", start=1, end=2)[0]
        empty = self.node("Equal", [n_given, zero], name=f"{c}/Empty")[0]
        empty = self.node("Cast", [empty], name=f"{c}/EmptyInt", to=TensorProto.INT64)[0]
        s_len = self.node("Shape", ["input_ids"], name=f"{c}/SeqShape", start=1, end=2)[0]
        keep = self.node("Mul", [empty, s_len], name=f"{c}/Keep")[0]
        every = self.node("Slice", [every, zero, keep, one], name=f"{c}/EverySlice")[0]
        b_len = self.node("Shape", ["input_ids"], name=f"{c}/BatchShape", start=0, end=1)[0]
        given_shape = self.node("Concat", [b_len, n_given], name=f"{c}/GivenBatch", axis=0)[0]
        given = self.node("Expand", ["logits_positions", given_shape], name=f"{c}/Given")[0]
        rows = self.node("Concat", [given, every], name=f"{c}/Rows", axis=1)[0]   # [B, L]
        rows = self.node("Unsqueeze", [rows, self.const(f"{c}.axis2", np.array([2], np.int64))],
                         name=f"{c}/Unsqueeze")[0]
        rows = self.node("Expand", [rows, self.const(f"{c}.hidden", np.array([1, 1, hp.hidden],
                                                                              np.int64))],
                         name=f"{c}/Index")[0]                                    # [B, L, H]
        return self.node("GatherElements", [hf, rows], name=f"{c}/Gather", axis=1)[0]

    def sequence_lengths(self) -> tuple[str, str]:
        """GroupQueryAttention's seqlens_k (sum(attention_mask) - 1) and total_sequence_length,
        int32, computed inside the graph from attention_mask."""
        axes = self.const("model.constants.axes_1", np.array([1], dtype=np.int64))
        one64 = self.const("model.constants.one_i64", np.array(1, dtype=np.int64))
        summed = self.node("ReduceSum", ["attention_mask", axes], name="model/attn_mask/ReduceSum",
                           keepdims=0)[0]
        minus = self.node("Sub", [summed, one64], name="model/attn_mask/Sub")[0]
        seqlens_k = self.node("Cast", [minus], ["seqlens_k"], name="model/attn_mask/seqlens_k",
                              to=TensorProto.INT32)[0]
        shape = self.node("Shape", ["attention_mask"], name="model/attn_mask/Shape")[0]
        total64 = self.node("Gather", [shape, one64], name="model/attn_mask/Gather", axis=0)[0]
        total_len = self.node("Cast", [total64], ["total_seq_len"],
                              name="model/attn_mask/total_seq_len", to=TensorProto.INT32)[0]
        return seqlens_k, total_len

    def model_proto(self, inputs: list, outputs: list) -> onnx.ModelProto:
        """The nodes and initializers made so far as one model (opset 21 + com.microsoft)."""
        graph = helper.make_graph(self.nodes, "decoder", inputs, outputs,
                                  initializer=self.w.initializers)
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("com.microsoft", MS_OPSET)],
            producer_name="codegen-harness-exporter",
        )
        model.ir_version = 10
        return model

    # -- graph ------------------------------------------------------------------------------
    def build(self) -> onnx.ModelProto:
        hp = self.hp
        inputs, outputs = self.graph_io()

        self.progress("embeddings")
        x = self.embedding()

        seqlens_k, total_len = self.sequence_lengths()

        cos, sin = self.rotary_caches("", hp.rope_base, hp.rope_freq_scale, self.m.rope_factors)

        residual = None
        pending = None  # output of the previous block's MLP, not yet added to the residual
        for i in range(hp.n_layers):
            self.progress(f"layer {i + 1}/{hp.n_layers}")
            p = f"model.layers.{i}"
            w_in = self.norm_weight(f"blk.{i}.attn_norm.weight")
            if residual is None:
                h = self.node("SimplifiedLayerNormalization", [x, w_in], name=f"/{p}/input_layernorm",
                              epsilon=hp.rms_eps, axis=-1, stash_type=1)[0]
                residual = x
            else:
                h, _, _, residual = self.node(
                    "SkipSimplifiedLayerNormalization", [pending, residual, w_in],
                    [f"/{p}/input_layernorm/output_0", "", "", f"/{p}/input_layernorm/output_3"],
                    domain="com.microsoft", name=f"/{p}/input_layernorm", epsilon=hp.rms_eps)
            if hp.qk_norm:
                # qwen3: q, k, v apart, each head of q and k RMS-normed before the rotary
                q = self.linear(f"{p}.attn.q_proj", h, f"blk.{i}.attn_q.weight")
                k = self.linear(f"{p}.attn.k_proj", h, f"blk.{i}.attn_k.weight")
                v = self.linear(f"{p}.attn.v_proj", h, f"blk.{i}.attn_v.weight")
                q = self.per_head_rms(f"/{p}/attn/q_norm", q, hp.n_heads,
                                      f"blk.{i}.attn_q_norm.weight")
                k = self.per_head_rms(f"/{p}/attn/k_norm", k, hp.n_kv_heads,
                                      f"blk.{i}.attn_k_norm.weight")
                qkv_inputs = [q, k, v]
            else:
                # packed QKV projection
                bias = None
                if self.m.has(f"blk.{i}.attn_q.bias"):
                    bias = np.concatenate([
                        self.m.hf_weight(f"blk.{i}.attn_q.bias"),
                        self.m.hf_weight(f"blk.{i}.attn_k.bias"),
                        self.m.hf_weight(f"blk.{i}.attn_v.bias"),
                    ])
                qkv = self.linear(f"{p}.attn.qkv_proj", h,
                                  [f"blk.{i}.{t}.weight" for t in ("attn_q", "attn_k", "attn_v")],
                                  bias)
                qkv_inputs = [qkv, "", ""]
            # smollm3: every 4th layer has no rotary
            rotary = not hp.no_rope_layers[i]
            attn = self.gqa(p, i, qkv_inputs, seqlens_k, total_len,
                            (cos, sin) if rotary else None,
                            hp.sliding_window if hp.swa_layers and hp.swa_layers[i] else -1)
            o = self.linear(f"{p}.attn.o_proj", attn, f"blk.{i}.attn_output.weight")
            w_post = self.norm_weight(f"blk.{i}.ffn_norm.weight")
            h2, _, _, residual = self.node(
                "SkipSimplifiedLayerNormalization", [o, residual, w_post],
                [f"/{p}/post_attention_layernorm/output_0", "", "",
                 f"/{p}/post_attention_layernorm/output_3"],
                domain="com.microsoft", name=f"/{p}/post_attention_layernorm", epsilon=hp.rms_eps)
            gate = self.linear(f"{p}.mlp.gate_proj", h2, f"blk.{i}.ffn_gate.weight")
            up = self.linear(f"{p}.mlp.up_proj", h2, f"blk.{i}.ffn_up.weight")
            sig = self.node("Sigmoid", [gate], name=f"/{p}/mlp/act_fn/Sigmoid")[0]
            act = self.node("Mul", [gate, sig], name=f"/{p}/mlp/act_fn/Mul")[0]
            prod = self.node("Mul", [act, up], name=f"/{p}/mlp/Mul")[0]
            pending = self.linear(f"{p}.mlp.down_proj", prod, f"blk.{i}.ffn_down.weight")

        self.progress("lm_head")
        w_final = self.norm_weight("output_norm.weight")
        hf, _, _, _ = self.node(
            "SkipSimplifiedLayerNormalization", [pending, residual, w_final],
            ["/model/norm/output_0", "", "", "/model/norm/output_3"],
            domain="com.microsoft", name="/model/norm", epsilon=hp.rms_eps)
        self.lm_head(hf)

        return self.model_proto(inputs, outputs)
