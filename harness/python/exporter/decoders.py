"""Decoder graphs whose block differs from llama's, in the same onnxruntime-genai layout as
`graph.GraphBuilder` (same inputs, outputs and KV names: the engine's contract). Each follows
the llama.cpp graph of its architecture (`src/models/<arch>.cpp`), noted per class.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto

from .graph import GraphBuilder


class Olmo2Builder(GraphBuilder):
    """olmo2 (llama.cpp `llm_build_olmo2`): no norm before attention or MLP; q and k are
    RMS-normed over their whole width (attn_q_norm [hidden], attn_k_norm [kv_heads*head_dim])
    before a NEOX rotary; the attention and MLP outputs are RMS-normed (post_attention_norm,
    post_ffw_norm) before their residual add; SwiGLU MLP; untied lm_head."""

    def rms(self, name: str, x: str, weight: str) -> str:
        return self.node("SimplifiedLayerNormalization", [x, self.norm_weight(weight)],
                         name=name, epsilon=self.hp.rms_eps, axis=-1, stash_type=1)[0]

    def build(self) -> onnx.ModelProto:
        hp = self.hp
        inputs, outputs = self.graph_io()
        self.progress("embeddings")
        x = self.embedding()
        seqlens_k, total_len = self.sequence_lengths()
        cos, sin = self.rotary_caches("", hp.rope_base, hp.rope_freq_scale)
        for i in range(hp.n_layers):
            self.progress(f"layer {i + 1}/{hp.n_layers}")
            p, b = f"model.layers.{i}", f"blk.{i}"
            q = self.linear(f"{p}.attn.q_proj", x, f"{b}.attn_q.weight")
            k = self.linear(f"{p}.attn.k_proj", x, f"{b}.attn_k.weight")
            v = self.linear(f"{p}.attn.v_proj", x, f"{b}.attn_v.weight")
            q = self.rms(f"/{p}/attn/q_norm", q, f"{b}.attn_q_norm.weight")
            k = self.rms(f"/{p}/attn/k_norm", k, f"{b}.attn_k_norm.weight")
            attn = self.gqa(p, i, [q, k, v], seqlens_k, total_len, (cos, sin))
            o = self.linear(f"{p}.attn.o_proj", attn, f"{b}.attn_output.weight")
            o = self.rms(f"/{p}/post_attention_layernorm", o, f"{b}.post_attention_norm.weight")
            x = self.node("Add", [x, o], name=f"/{p}/attn/residual")[0]
            gate = self.linear(f"{p}.mlp.gate_proj", x, f"{b}.ffn_gate.weight")
            up = self.linear(f"{p}.mlp.up_proj", x, f"{b}.ffn_up.weight")
            sig = self.node("Sigmoid", [gate], name=f"/{p}/mlp/act_fn/Sigmoid")[0]
            act = self.node("Mul", [gate, sig], name=f"/{p}/mlp/act_fn/Mul")[0]
            prod = self.node("Mul", [act, up], name=f"/{p}/mlp/Mul")[0]
            down = self.linear(f"{p}.mlp.down_proj", prod, f"{b}.ffn_down.weight")
            down = self.rms(f"/{p}/post_feedforward_layernorm", down, f"{b}.post_ffw_norm.weight")
            x = self.node("Add", [x, down], name=f"/{p}/mlp/residual")[0]
        self.progress("lm_head")
        hf = self.rms("/model/norm", x, "output_norm.weight")
        return self.finish(hf, inputs, outputs)

    def finish(self, hf: str, inputs: list, outputs: list) -> onnx.ModelProto:
        head_name = "output.weight" if self.m.has("output.weight") else "token_embd.weight"
        logits = self.linear("lm_head", self.logits_rows(hf), head_name,
                             precision=self.head_precision)
        if np.dtype(self.act) != np.dtype(np.float32):
            self.node("Cast", [logits], ["logits"], name="lm_head/Cast", to=TensorProto.FLOAT)
        else:
            self.node("Identity", [logits], ["logits"], name="lm_head/Identity")
        return self.model_proto(inputs, outputs)


class LayerNormBuilder(Olmo2Builder):
    """Helpers of the LayerNorm families (gpt2, phi2)."""

    def layer_norm(self, name: str, x: str, prefix: str) -> str:
        """LayerNormalization of x with the GGUF's `prefix.weight` and `prefix.bias`."""
        w = self.norm_weight(f"{prefix}.weight")
        b = self.norm_weight(f"{prefix}.bias")
        return self.node("LayerNormalization", [x, w, b], name=name, axis=-1,
                         epsilon=self.hp.rms_eps, stash_type=1)[0]

    def bias(self, name: str) -> np.ndarray:
        return self.m.raw(name).reshape(-1)

    def packed_qkv(self, p: str, b: str, h: str) -> str:
        """q|k|v [B, S, q+2kv]: the fused attn_qkv (+ bias), or attn_q/k/v (+ biases)."""
        if self.m.has(f"{b}.attn_qkv.weight"):
            bias = self.bias(f"{b}.attn_qkv.bias") if self.m.has(f"{b}.attn_qkv.bias") else None
            return self.linear(f"{p}.attn.qkv_proj", h, f"{b}.attn_qkv.weight", bias)
        bias = None
        if self.m.has(f"{b}.attn_q.bias"):
            bias = np.concatenate([self.bias(f"{b}.attn_{t}.bias") for t in "qkv"])
        return self.linear(f"{p}.attn.qkv_proj", h, [f"{b}.attn_{t}.weight" for t in "qkv"],
                           bias)

    def attention(self, p: str, i: int, qkv: str, seqlens_k: str, total_len: str,
                  rope: tuple[str, str] | None) -> str:
        return self.gqa(p, i, [qkv, "", ""], seqlens_k, total_len, rope)

    def gelu_mlp(self, p: str, b: str, h: str) -> str:
        """down(gelu_tanh(up(h) + b_up)) + b_down (llama.cpp's LLM_FFN_GELU: ggml_gelu, tanh)."""
        up = self.linear(f"{p}.mlp.fc1", h, f"{b}.ffn_up.weight", self.bias(f"{b}.ffn_up.bias"))
        act = self.node("Gelu", [up], name=f"/{p}/mlp/act_fn/Gelu", approximate="tanh")[0]
        return self.linear(f"{p}.mlp.fc2", act, f"{b}.ffn_down.weight",
                           self.bias(f"{b}.ffn_down.bias"))

    def positions(self) -> str:
        """Each input token's position [B, S]: (cumsum(attention_mask) - 1) of the last S
        columns, clamped at 0 (left padding)."""
        c = "model.positions"
        one = self.const(f"{c}.one", np.array(1, np.int64))
        zero = self.const(f"{c}.zero", np.array(0, np.int64))
        count = self.node("CumSum", ["attention_mask", one], name=f"{c}/CumSum")[0]
        pos = self.node("Sub", [count, one], name=f"{c}/Sub")[0]
        s_len = self.node("Shape", ["input_ids"], name=f"{c}/SeqShape", start=1, end=2)[0]
        start = self.node("Neg", [s_len], name=f"{c}/Neg")[0]
        big = self.const(f"{c}.end", np.array([np.iinfo(np.int64).max], np.int64))
        axis = self.const(f"{c}.axis", np.array([1], np.int64))
        pos = self.node("Slice", [pos, start, big, axis], name=f"{c}/Slice")[0]
        return self.node("Max", [pos, zero], name=f"{c}/Max")[0]


class Gpt2Builder(LayerNormBuilder):
    """gpt2 (llama.cpp `llm_build_gpt2`): token + learned position embeddings; pre-LayerNorm
    (biased) blocks; fused attn_qkv with bias, no rotary; GELU(tanh) MLP with biases; final
    LayerNorm; lm_head tied to token_embd unless output.weight is present."""

    def build(self) -> onnx.ModelProto:
        hp = self.hp
        inputs, outputs = self.graph_io()
        self.progress("embeddings")
        x = self.embedding()
        table = self.float_weight("model.embed_positions.weight",
                                  self.m.raw("position_embd.weight"))
        pe = self.node("Gather", [table, self.positions()], name="model/embed_positions")[0]
        x = self.node("Add", [x, pe], name="model/embed/Add")[0]
        seqlens_k, total_len = self.sequence_lengths()
        for i in range(hp.n_layers):
            self.progress(f"layer {i + 1}/{hp.n_layers}")
            p, b = f"model.layers.{i}", f"blk.{i}"
            h = self.layer_norm(f"/{p}/ln_1", x, f"{b}.attn_norm")
            attn = self.attention(p, i, self.packed_qkv(p, b, h), seqlens_k, total_len, None)
            o = self.linear(f"{p}.attn.o_proj", attn, f"{b}.attn_output.weight",
                            self.bias(f"{b}.attn_output.bias"))
            x = self.node("Add", [x, o], name=f"/{p}/attn/residual")[0]
            h = self.layer_norm(f"/{p}/ln_2", x, f"{b}.ffn_norm")
            x = self.node("Add", [x, self.gelu_mlp(p, b, h)], name=f"/{p}/mlp/residual")[0]
        self.progress("lm_head")
        hf = self.layer_norm("/model/norm", x, "output_norm")
        return self.finish(hf, inputs, outputs)


class Phi2Builder(LayerNormBuilder):
    """phi2 (llama.cpp `llm_build_phi2`): one biased LayerNorm per block feeding attention and
    the MLP in parallel (x + attn(h) + mlp(h)); q/k/v with biases (fused or not); NEOX rotary
    on the first `rope.dimension_count` dims of each head (partial); GELU(tanh) MLP with biases;
    final LayerNorm; untied lm_head with a bias."""

    def build(self) -> onnx.ModelProto:
        hp = self.hp
        inputs, outputs = self.graph_io()
        self.progress("embeddings")
        x = self.embedding()
        seqlens_k, total_len = self.sequence_lengths()
        rope = self.rotary_caches("", hp.rope_base, hp.rope_freq_scale)
        for i in range(hp.n_layers):
            self.progress(f"layer {i + 1}/{hp.n_layers}")
            p, b = f"model.layers.{i}", f"blk.{i}"
            h = self.layer_norm(f"/{p}/input_layernorm", x, f"{b}.attn_norm")
            attn = self.attention(p, i, self.packed_qkv(p, b, h), seqlens_k, total_len, rope)
            o = self.linear(f"{p}.attn.dense", attn, f"{b}.attn_output.weight",
                            self.bias(f"{b}.attn_output.bias"))
            mlp = self.gelu_mlp(p, b, h)
            both = self.node("Add", [o, mlp], name=f"/{p}/parallel/Add")[0]
            x = self.node("Add", [x, both], name=f"/{p}/residual")[0]
        self.progress("lm_head")
        hf = self.layer_norm("/model/final_layernorm", x, "output_norm")
        logits = self.linear("lm_head", self.logits_rows(hf), "output.weight",
                             self.bias("output.bias"), precision=self.head_precision)
        self.node("Identity" if np.dtype(self.act) == np.dtype(np.float32) else "Cast",
                  [logits], ["logits"], name="lm_head/Out",
                  **({} if np.dtype(self.act) == np.dtype(np.float32)
                     else {"to": TensorProto.FLOAT}))
        return self.model_proto(inputs, outputs)


class Phi3Builder(LayerNormBuilder):
    """phi3 / Phi-4-mini (llama.cpp `llm_build_phi3`): RMSNorm pre-norm blocks; fused attn_qkv
    (no bias); NEOX rotary, partial where rope.dimension_count < head_dim (Phi-4-mini), with
    longrope's per-frequency factors (long or short, `GGUFModel.rope_factors`) and
    rope.scaling.attn_factor on cos/sin; fused gate|up in ffn_up (SwiGLU: silu(first half) *
    second half); lm_head tied unless output.weight is present."""

    def build(self) -> onnx.ModelProto:
        hp = self.hp
        inputs, outputs = self.graph_io()
        self.progress("embeddings")
        x = self.embedding()
        seqlens_k, total_len = self.sequence_lengths()
        rope = self.rotary_caches("", hp.rope_base, hp.rope_freq_scale, self.m.rope_factors)
        split = self.const("model.mlp.split", np.array([hp.intermediate, hp.intermediate],
                                                       np.int64))
        for i in range(hp.n_layers):
            self.progress(f"layer {i + 1}/{hp.n_layers}")
            p, b = f"model.layers.{i}", f"blk.{i}"
            h = self.rms(f"/{p}/input_layernorm", x, f"{b}.attn_norm.weight")
            attn = self.attention(p, i, self.packed_qkv(p, b, h), seqlens_k, total_len, rope)
            o = self.linear(f"{p}.attn.o_proj", attn, f"{b}.attn_output.weight")
            x = self.node("Add", [x, o], name=f"/{p}/attn/residual")[0]
            h = self.rms(f"/{p}/post_attention_layernorm", x, f"{b}.ffn_norm.weight")
            gate_up = self.linear(f"{p}.mlp.gate_up_proj", h, f"{b}.ffn_up.weight")
            gate, up = self.node("Split", [gate_up, split], [f"/{p}/mlp/gate", f"/{p}/mlp/up"],
                                 name=f"/{p}/mlp/Split", axis=-1)
            sig = self.node("Sigmoid", [gate], name=f"/{p}/mlp/act_fn/Sigmoid")[0]
            act = self.node("Mul", [gate, sig], name=f"/{p}/mlp/act_fn/Mul")[0]
            prod = self.node("Mul", [act, up], name=f"/{p}/mlp/Mul")[0]
            down = self.linear(f"{p}.mlp.down_proj", prod, f"{b}.ffn_down.weight")
            x = self.node("Add", [x, down], name=f"/{p}/mlp/residual")[0]
        self.progress("lm_head")
        hf = self.rms("/model/norm", x, "output_norm.weight")
        return self.finish(hf, inputs, outputs)


BUILDERS = {"olmo2": Olmo2Builder, "gpt2": Gpt2Builder, "phi2": Phi2Builder,
            "phi3": Phi3Builder}
