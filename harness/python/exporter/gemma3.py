"""The gemma3 decoder graph, in the same onnxruntime-genai layout as `graph.GraphBuilder`.

Inputs, outputs and KV names are those of `graph.py` (the engine's contract). What differs from
the llama/qwen2 graph, each step as llama.cpp's `llm_build_gemma3` computes it:

- embeddings are scaled by sqrt(hidden);
- q and k get a per-head RMSNorm (`attn_q_norm`, `attn_k_norm`, weight [head_dim]) before the
  rotary, which is rotate-half (llama.cpp's NEOX), so the GGUF's q/k rows are used as stored;
- q, k and v go to GroupQueryAttention as three inputs (no packed QKV weight);
- attention and MLP outputs are RMS-normed (`post_attention_norm`, `post_ffw_norm`) before
  their residual add; the MLP is GELU(tanh)(gate) * up;
- sliding-window layers (5 of every 6) attend to the last `sliding_window` positions (the
  current one included; GroupQueryAttention's local_window_size) with rope base 10000; global layers use the GGUF's rope base, hence two
  cos/sin caches;
- norm weights are used as stored: llama.cpp's converter already wrote gemma's (1 + w);
- the residual stream is float32 also where activations are float16 (the cuda target): in
  gemma-3-270m it reaches ~1e5, past float16's 65504 (an all-fp16 graph gives NaN logits), so
  each block's normed input is cast down to ACT and its post-normed output back up.

The lm_head is tied to `token_embd` (or `output.weight` where present); logits are float32.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto

from .graph import GraphBuilder


class Gemma3Builder(GraphBuilder):
    """GraphBuilder for `general.architecture == "gemma3"`; reuses its helpers and `linear`."""

    def rms(self, name: str, x: str, weight: str, fp32: bool = False) -> str:
        """RMSNorm of x (ACT, or float32 with `fp32`) times the GGUF weight `weight`."""
        w = self.residual_weight(weight) if fp32 else self.norm_weight(weight)
        return self.node("SimplifiedLayerNormalization", [x, w],
                         name=name, epsilon=self.hp.rms_eps, axis=-1, stash_type=1)[0]

    def residual_weight(self, name: str) -> str:
        """A norm weight applied to the float32 residual stream."""
        return self.const(name, self.m.raw(name).astype(np.float32))

    def to_act(self, x: str) -> str:
        """float32 (residual stream) -> ACT."""
        return x if self.act_onnx == TensorProto.FLOAT else self.cast(x, self.act_onnx)

    def to_residual(self, x: str) -> str:
        """ACT -> float32 (residual stream)."""
        return x if self.act_onnx == TensorProto.FLOAT else self.cast(x, TensorProto.FLOAT)

    def head_norm(self, name: str, x: str, heads: int, weight: str) -> str:
        """RMSNorm over each head of x [B, S, heads*head_dim]."""
        hp = self.hp
        split = self.const(f"{name}.shape_split", np.array([0, 0, heads, hp.head_dim], np.int64))
        joined = self.const(f"{name}.shape_join", np.array([0, 0, heads * hp.head_dim], np.int64))
        h = self.node("Reshape", [x, split], name=f"{name}/Reshape_split")[0]
        h = self.rms(f"{name}/SimplifiedLayerNormalization", h, weight)
        return self.node("Reshape", [h, joined], name=f"{name}/Reshape_join")[0]

    def skip_rms(self, name: str, x: str, skip: str, weight: str) -> tuple[str, str]:
        """(rms(x + skip) * weight, x + skip), all float32 (the residual stream)."""
        out, _, _, total = self.node(
            "SkipSimplifiedLayerNormalization", [x, skip, self.residual_weight(weight)],
            [f"{name}/output_0", "", "", f"{name}/output_3"],
            domain="com.microsoft", name=name, epsilon=self.hp.rms_eps)
        return out, total

    def build(self) -> onnx.ModelProto:
        hp = self.hp
        inputs, outputs = self.graph_io()

        # embeddings (GraphBuilder.embedding), * sqrt(hidden), in float32: the residual stream
        self.progress("embeddings")
        x = self.embedding()
        if np.dtype(self.act) != np.dtype(np.float32):
            x = self.cast(x, TensorProto.FLOAT)
        scale = self.const("model.embed_tokens.scale", np.array(np.sqrt(hp.hidden), np.float32))
        x = self.node("Mul", [x, scale], name="model/embed_tokens/Mul")[0]

        seqlens_k, total_len = self.sequence_lengths()

        # llama.cpp scales the positions of the global layers only (rope_freq_scale_train_swa
        # is 1 for the sliding-window layers)
        rope_global = self.rotary_caches("global", hp.rope_base, hp.rope_freq_scale)
        rope_local = self.rotary_caches("local", hp.rope_local_base) if any(hp.swa_layers) else None
        attn_scale = hp.attn_scale or float(1.0 / np.sqrt(hp.head_dim))

        residual = x
        pending = None  # the previous block's post-normed MLP output, not yet added
        for i in range(hp.n_layers):
            self.progress(f"layer {i + 1}/{hp.n_layers}")
            p = f"model.layers.{i}"
            b = f"blk.{i}"
            if pending is None:
                h = self.rms(f"/{p}/input_layernorm", x, f"{b}.attn_norm.weight", fp32=True)
            else:
                h, residual = self.skip_rms(f"/{p}/input_layernorm", pending, residual,
                                            f"{b}.attn_norm.weight")
            h = self.to_act(h)
            q = self.linear(f"{p}.attn.q_proj", h, f"{b}.attn_q.weight")
            k = self.linear(f"{p}.attn.k_proj", h, f"{b}.attn_k.weight")
            v = self.linear(f"{p}.attn.v_proj", h, f"{b}.attn_v.weight")
            q = self.head_norm(f"/{p}/attn/q_norm", q, hp.n_heads, f"{b}.attn_q_norm.weight")
            k = self.head_norm(f"/{p}/attn/k_norm", k, hp.n_kv_heads, f"{b}.attn_k_norm.weight")
            sliding = hp.swa_layers[i]
            cos, sin = rope_local if sliding else rope_global
            # llama.cpp and HF attend to `sliding_window` positions, the current one included;
            # ONNX Runtime 1.31's CPU GroupQueryAttention keeps local_window_size positions the
            # same way (measured: tests/test_exporter.py compares prefill, chunked prefill and
            # decode past a window of 4 with the reference; window - 1 or + 1 fails there).
            window = hp.sliding_window if sliding else -1
            attn = self.gqa(p, i, [q, k, v], seqlens_k, total_len, (cos, sin), window,
                            attn_scale)
            o = self.linear(f"{p}.attn.o_proj", attn,
                            f"{b}.attn_output.weight")
            o = self.rms(f"/{p}/post_attention_layernorm", o, f"{b}.post_attention_norm.weight")
            h2, residual = self.skip_rms(f"/{p}/pre_feedforward_layernorm", self.to_residual(o),
                                         residual, f"{b}.ffn_norm.weight")
            h2 = self.to_act(h2)
            gate = self.linear(f"{p}.mlp.gate_proj", h2, f"{b}.ffn_gate.weight")
            up = self.linear(f"{p}.mlp.up_proj", h2, f"{b}.ffn_up.weight")
            act = self.node("Gelu", [gate], name=f"/{p}/mlp/act_fn/Gelu", approximate="tanh")[0]
            prod = self.node("Mul", [act, up], name=f"/{p}/mlp/Mul")[0]
            down = self.linear(f"{p}.mlp.down_proj", prod,
                               f"{b}.ffn_down.weight")
            pending = self.to_residual(self.rms(f"/{p}/post_feedforward_layernorm", down,
                                                f"{b}.post_ffw_norm.weight"))

        self.progress("lm_head")
        hf, _ = self.skip_rms("/model/norm", pending, residual, "output_norm.weight")
        hf = self.to_act(hf)
        self.lm_head(hf)

        return self.model_proto(inputs, outputs)
