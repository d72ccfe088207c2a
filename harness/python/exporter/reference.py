"""A small numpy forward pass of a GGUF model, written the way llama.cpp computes it.

It reads the dequantized GGUF weights as stored (no un-permutation) and applies rotary the way
llama.cpp does for each architecture: interleaved pairs ("NORM") for llama, whose q/k rows the
converter permuted, and rotate-half ("NEOX") for qwen2. The ONNX graph instead un-permutes the
llama weights and uses rotate-half everywhere, so agreement between the two checks that step too.
`Gemma3Reference` follows llama.cpp's `llm_build_gemma3` (scaled embeddings, q/k norms, post
norms, GELU, sliding-window layers with their own rope base); `reference_for` picks the class.
Used by the tests (tiny fixtures) and by validate.py as a second opinion.
"""

from __future__ import annotations

import numpy as np

from . import quant
from .gguf_model import PERMUTED_QK, GGUFModel
from .graph import rope_angles

LINEAR = ("attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_output.weight",
          "ffn_gate.weight", "ffn_up.weight", "ffn_down.weight")


def as_exported(w: np.ndarray, precision: str) -> np.ndarray:
    """A linear weight [N, K] as an export of `precision` stores it (for the reference)."""
    if precision == "int4":
        packed, scales = quant.quantize_int4(w)
        return quant.dequantize(packed, scales, 4, w.shape[1])
    if precision == "int8":
        packed, scales = quant.quantize_int8(w)
        return quant.dequantize(packed, scales, 8, w.shape[1])
    if precision == "fp16":
        return w.astype(np.float16).astype(np.float32)
    return w


def _rms(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    x64 = x.astype(np.float64)
    return (x64 / np.sqrt(np.mean(x64 * x64, axis=-1, keepdims=True) + eps) * w).astype(np.float32)


def _rope(x: np.ndarray, pos: np.ndarray, base: float, interleaved: bool,
          freq_scale: float = 1.0, factors: np.ndarray | None = None) -> np.ndarray:
    """x: [S, H, D]; pos: [S]."""
    d = x.shape[-1]
    ang = rope_angles(0, d, base, freq_scale, factors, positions=pos)
    cos = np.cos(ang)[:, None, :]
    sin = np.sin(ang)[:, None, :]
    if interleaved:
        a, b = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x, dtype=np.float64)
        out[..., 0::2] = a * cos - b * sin
        out[..., 1::2] = a * sin + b * cos
    else:
        a, b = x[..., : d // 2], x[..., d // 2:]
        out = np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1)
    return out.astype(np.float32)


class Reference:
    def __init__(self, model: GGUFModel, precision: str = "fp32"):
        """With a precision other than fp32, the weights are rounded the way an export of that
        precision stores them (the row permutation commutes with row-wise block quantization)."""
        self.m = model
        self.hp = model.hp
        self.w: dict[str, np.ndarray] = {}
        for name in model.tensors:
            self.w[name] = model.raw(name)
        head = self.w.get("output.weight", self.w["token_embd.weight"])
        if precision != "fp32":
            for name in list(self.w):
                if name.endswith(LINEAR):
                    self.w[name] = as_exported(self.w[name], precision)
            self.w["token_embd.weight"] = as_exported(self.w["token_embd.weight"], "fp16")
        self.head = as_exported(head, precision)
        self.reset()

    def reset(self) -> None:
        self.k_cache = [np.zeros((0, self.hp.n_kv_heads, self.hp.head_dim), np.float32)
                        for _ in range(self.hp.n_layers)]
        self.v_cache = [c.copy() for c in self.k_cache]

    def forward(self, ids: list[int]) -> np.ndarray:
        """Append `ids` (batch 1) and return their logits [len(ids), vocab]."""
        hp, w = self.hp, self.w
        past = self.k_cache[0].shape[0]
        s = len(ids)
        pos = np.arange(past, past + s)
        x = w["token_embd.weight"][np.asarray(ids)]
        interleaved = hp.arch in PERMUTED_QK
        group = hp.n_heads // hp.n_kv_heads
        for i in range(hp.n_layers):
            h = _rms(x, w[f"blk.{i}.attn_norm.weight"], hp.rms_eps)
            q = h @ w[f"blk.{i}.attn_q.weight"].T
            k = h @ w[f"blk.{i}.attn_k.weight"].T
            v = h @ w[f"blk.{i}.attn_v.weight"].T
            if f"blk.{i}.attn_q.bias" in w:
                q = q + w[f"blk.{i}.attn_q.bias"]
                k = k + w[f"blk.{i}.attn_k.bias"]
                v = v + w[f"blk.{i}.attn_v.bias"]
            rope = (hp.rope_base, interleaved, hp.rope_freq_scale, self.m.rope_factors)
            q = q.reshape(s, hp.n_heads, hp.head_dim)
            k = k.reshape(s, hp.n_kv_heads, hp.head_dim)
            if hp.qk_norm:
                q = _rms(q, w[f"blk.{i}.attn_q_norm.weight"], hp.rms_eps)
                k = _rms(k, w[f"blk.{i}.attn_k_norm.weight"], hp.rms_eps)
            if not hp.no_rope_layers[i]:
                q = _rope(q, pos, *rope)
                k = _rope(k, pos, *rope)
            v = v.reshape(s, hp.n_kv_heads, hp.head_dim)
            self.k_cache[i] = np.concatenate([self.k_cache[i], k])
            self.v_cache[i] = np.concatenate([self.v_cache[i], v])
            kk = np.repeat(self.k_cache[i], group, axis=1)  # [T, H, D]
            vv = np.repeat(self.v_cache[i], group, axis=1)
            t = kk.shape[0]
            scores = np.einsum("shd,thd->hst", q, kk) / np.sqrt(hp.head_dim)
            mask = (np.arange(t)[None, :] > pos[:, None])  # [S, T]
            if hp.swa_layers and hp.swa_layers[i]:  # Mistral's window
                mask |= pos[:, None] - np.arange(t)[None, :] >= hp.sliding_window
            scores = np.where(mask[None], -np.inf, scores)
            scores = scores - scores.max(-1, keepdims=True)
            p = np.exp(scores)
            p /= p.sum(-1, keepdims=True)
            attn = np.einsum("hst,thd->shd", p, vv).reshape(s, -1)
            x = x + attn @ w[f"blk.{i}.attn_output.weight"].T
            h = _rms(x, w[f"blk.{i}.ffn_norm.weight"], hp.rms_eps)
            g = h @ w[f"blk.{i}.ffn_gate.weight"].T
            u = h @ w[f"blk.{i}.ffn_up.weight"].T
            x = x + ((g / (1.0 + np.exp(-g))) * u) @ w[f"blk.{i}.ffn_down.weight"].T
        h = _rms(x, w["output_norm.weight"], hp.rms_eps)
        return (h @ self.head.T).astype(np.float32)


def _gelu_tanh(x: np.ndarray) -> np.ndarray:
    x64 = x.astype(np.float64)
    return (0.5 * x64 * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x64 + 0.044715 * x64 ** 3)))
            ).astype(np.float32)


class Gemma3Reference(Reference):
    """gemma3: a sliding-window layer attends to key positions p with q - p < sliding_window."""

    def forward(self, ids: list[int]) -> np.ndarray:
        hp, w = self.hp, self.w
        past = self.k_cache[0].shape[0]
        s = len(ids)
        pos = np.arange(past, past + s)
        x = w["token_embd.weight"][np.asarray(ids)] * np.float32(np.sqrt(hp.hidden))
        group = hp.n_heads // hp.n_kv_heads
        scale = hp.attn_scale or 1.0 / np.sqrt(hp.head_dim)
        for i in range(hp.n_layers):
            b = f"blk.{i}"
            sliding = hp.swa_layers[i]
            base = hp.rope_local_base if sliding else hp.rope_base
            pscale = 1.0 if sliding else hp.rope_freq_scale
            h = _rms(x, w[f"{b}.attn_norm.weight"], hp.rms_eps)
            q = (h @ w[f"{b}.attn_q.weight"].T).reshape(s, hp.n_heads, hp.head_dim)
            k = (h @ w[f"{b}.attn_k.weight"].T).reshape(s, hp.n_kv_heads, hp.head_dim)
            v = (h @ w[f"{b}.attn_v.weight"].T).reshape(s, hp.n_kv_heads, hp.head_dim)
            q = _rope(_rms(q, w[f"{b}.attn_q_norm.weight"], hp.rms_eps), pos, base, False, pscale)
            k = _rope(_rms(k, w[f"{b}.attn_k_norm.weight"], hp.rms_eps), pos, base, False, pscale)
            self.k_cache[i] = np.concatenate([self.k_cache[i], k])
            self.v_cache[i] = np.concatenate([self.v_cache[i], v])
            kk = np.repeat(self.k_cache[i], group, axis=1)  # [T, H, D]
            vv = np.repeat(self.v_cache[i], group, axis=1)
            t = kk.shape[0]
            scores = np.einsum("shd,thd->hst", q, kk) * scale
            kpos = np.arange(t)[None, :]
            mask = kpos > pos[:, None]  # [S, T]
            if sliding:
                mask |= pos[:, None] - kpos >= hp.sliding_window
            scores = np.where(mask[None], -np.inf, scores)
            scores = scores - scores.max(-1, keepdims=True)
            p = np.exp(scores)
            p /= p.sum(-1, keepdims=True)
            attn = np.einsum("hst,thd->shd", p, vv).reshape(s, -1)
            o = attn @ w[f"{b}.attn_output.weight"].T
            x = x + _rms(o, w[f"{b}.post_attention_norm.weight"], hp.rms_eps)
            h = _rms(x, w[f"{b}.ffn_norm.weight"], hp.rms_eps)
            g = h @ w[f"{b}.ffn_gate.weight"].T
            u = h @ w[f"{b}.ffn_up.weight"].T
            down = (_gelu_tanh(g) * u) @ w[f"{b}.ffn_down.weight"].T
            x = x + _rms(down, w[f"{b}.post_ffw_norm.weight"], hp.rms_eps)
        h = _rms(x, w["output_norm.weight"], hp.rms_eps)
        return (h @ self.head.T).astype(np.float32)


class Olmo2Reference(Reference):
    """olmo2: no pre-norms, q/k RMS-normed over their whole width, post-norms, NEOX rotary."""

    def forward(self, ids: list[int]) -> np.ndarray:
        hp, w = self.hp, self.w
        past = self.k_cache[0].shape[0]
        s = len(ids)
        pos = np.arange(past, past + s)
        x = w["token_embd.weight"][np.asarray(ids)]
        group = hp.n_heads // hp.n_kv_heads
        for i in range(hp.n_layers):
            b = f"blk.{i}"
            q = _rms(x @ w[f"{b}.attn_q.weight"].T, w[f"{b}.attn_q_norm.weight"], hp.rms_eps)
            k = _rms(x @ w[f"{b}.attn_k.weight"].T, w[f"{b}.attn_k_norm.weight"], hp.rms_eps)
            v = (x @ w[f"{b}.attn_v.weight"].T).reshape(s, hp.n_kv_heads, hp.head_dim)
            q = _rope(q.reshape(s, hp.n_heads, hp.head_dim), pos, hp.rope_base, False)
            k = _rope(k.reshape(s, hp.n_kv_heads, hp.head_dim), pos, hp.rope_base, False)
            self.k_cache[i] = np.concatenate([self.k_cache[i], k])
            self.v_cache[i] = np.concatenate([self.v_cache[i], v])
            attn = _attend(q, self.k_cache[i], self.v_cache[i], pos, group,
                           1.0 / np.sqrt(hp.head_dim))
            o = attn @ w[f"{b}.attn_output.weight"].T
            x = x + _rms(o, w[f"{b}.post_attention_norm.weight"], hp.rms_eps)
            g = x @ w[f"{b}.ffn_gate.weight"].T
            u = x @ w[f"{b}.ffn_up.weight"].T
            down = ((g / (1.0 + np.exp(-g))) * u) @ w[f"{b}.ffn_down.weight"].T
            x = x + _rms(down, w[f"{b}.post_ffw_norm.weight"], hp.rms_eps)
        h = _rms(x, w["output_norm.weight"], hp.rms_eps)
        return (h @ self.head.T).astype(np.float32)


def _attend(q: np.ndarray, kc: np.ndarray, vc: np.ndarray, pos: np.ndarray, group: int,
            scale: float, window: int = 0) -> np.ndarray:
    """Causal attention of q [S, H, D] over the cache [T, KV, D]; returns [S, H*D]."""
    kk = np.repeat(kc, group, axis=1)
    vv = np.repeat(vc, group, axis=1)
    t = kk.shape[0]
    scores = np.einsum("shd,thd->hst", q, kk) * scale
    kpos = np.arange(t)[None, :]
    mask = kpos > pos[:, None]
    if window:
        mask |= pos[:, None] - kpos >= window
    scores = np.where(mask[None], -np.inf, scores)
    scores = scores - scores.max(-1, keepdims=True)
    p = np.exp(scores)
    p /= p.sum(-1, keepdims=True)
    return np.einsum("hst,thd->shd", p, vv).reshape(q.shape[0], -1)


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    x64 = x.astype(np.float64)
    mu = x64.mean(-1, keepdims=True)
    var = ((x64 - mu) ** 2).mean(-1, keepdims=True)
    return ((x64 - mu) / np.sqrt(var + eps) * w + b).astype(np.float32)


class LayerNormReference(Reference):
    """gpt2 and phi2 (biased LayerNorms, GELU MLPs with biases, fused or separate qkv)."""

    def ln(self, x: np.ndarray, prefix: str) -> np.ndarray:
        return _layer_norm(x, self.w[f"{prefix}.weight"], self.w[f"{prefix}.bias"], self.hp.rms_eps)

    def qkv(self, b: str, h: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        hp, w = self.hp, self.w
        s = h.shape[0]
        if f"{b}.attn_qkv.weight" in w:
            y = h @ w[f"{b}.attn_qkv.weight"].T + w.get(f"{b}.attn_qkv.bias", 0.0)
            nq, nk = hp.n_heads * hp.head_dim, hp.n_kv_heads * hp.head_dim
            q, k, v = y[:, :nq], y[:, nq:nq + nk], y[:, nq + nk:]
        else:
            q, k, v = (h @ w[f"{b}.attn_{t}.weight"].T + w.get(f"{b}.attn_{t}.bias", 0.0)
                       for t in "qkv")
        return (q.reshape(s, hp.n_heads, hp.head_dim), k.reshape(s, hp.n_kv_heads, hp.head_dim),
                v.reshape(s, hp.n_kv_heads, hp.head_dim))

    def mlp(self, b: str, h: np.ndarray) -> np.ndarray:
        w = self.w
        up = h @ w[f"{b}.ffn_up.weight"].T + w[f"{b}.ffn_up.bias"]
        return _gelu_tanh(up) @ w[f"{b}.ffn_down.weight"].T + w[f"{b}.ffn_down.bias"]

    def attend(self, i: int, q, k, v, pos) -> np.ndarray:
        hp = self.hp
        self.k_cache[i] = np.concatenate([self.k_cache[i], k])
        self.v_cache[i] = np.concatenate([self.v_cache[i], v])
        return _attend(q, self.k_cache[i], self.v_cache[i], pos, hp.n_heads // hp.n_kv_heads,
                       1.0 / np.sqrt(hp.head_dim))

    def forward(self, ids: list[int]) -> np.ndarray:
        hp, w = self.hp, self.w
        past = self.k_cache[0].shape[0]
        s = len(ids)
        pos = np.arange(past, past + s)
        x = w["token_embd.weight"][np.asarray(ids)]
        if hp.arch == "gpt2":
            x = x + w["position_embd.weight"][pos]
        for i in range(hp.n_layers):
            b = f"blk.{i}"
            h = self.ln(x, f"{b}.attn_norm")
            q, k, v = self.qkv(b, h)
            if hp.arch == "phi2":  # NEOX rotary on the first rope_dim dims
                r = hp.rope_dim
                q = np.concatenate([_rope(q[..., :r], pos, hp.rope_base, False), q[..., r:]], -1)
                k = np.concatenate([_rope(k[..., :r], pos, hp.rope_base, False), k[..., r:]], -1)
            o = self.attend(i, q, k, v, pos) @ w[f"{b}.attn_output.weight"].T \
                + w[f"{b}.attn_output.bias"]
            if hp.arch == "phi2":
                x = x + o + self.mlp(b, h)
            else:
                x = x + o
                x = x + self.mlp(b, self.ln(x, f"{b}.ffn_norm"))
        h = self.ln(x, "output_norm")
        return (h @ self.head.T + w.get("output.bias", 0.0)).astype(np.float32)


class Phi3Reference(LayerNormReference):
    """phi3: RMSNorm blocks, fused qkv, partial NEOX rotary with longrope factors and
    attn_factor (q and k each scaled by it), fused gate|up."""

    def forward(self, ids: list[int]) -> np.ndarray:
        hp, w = self.hp, self.w
        past = self.k_cache[0].shape[0]
        s = len(ids)
        pos = np.arange(past, past + s)
        x = w["token_embd.weight"][np.asarray(ids)]
        r = hp.rope_dim or hp.head_dim
        for i in range(hp.n_layers):
            b = f"blk.{i}"
            h = _rms(x, w[f"{b}.attn_norm.weight"], hp.rms_eps)
            q, k, v = self.qkv(b, h)

            def rope(t):
                rot = _rope(t[..., :r], pos, hp.rope_base, False, hp.rope_freq_scale,
                            self.m.rope_factors) * np.float32(hp.rope_attn_factor)
                return np.concatenate([rot, t[..., r:]], -1)
            o = self.attend(i, rope(q), rope(k), v, pos) @ w[f"{b}.attn_output.weight"].T
            x = x + o
            h = _rms(x, w[f"{b}.ffn_norm.weight"], hp.rms_eps)
            gu = h @ w[f"{b}.ffn_up.weight"].T
            g, u = gu[:, :hp.intermediate], gu[:, hp.intermediate:]
            x = x + ((g / (1.0 + np.exp(-g))) * u) @ w[f"{b}.ffn_down.weight"].T
        h = _rms(x, w["output_norm.weight"], hp.rms_eps)
        return (h @ self.head.T).astype(np.float32)


REFERENCES = {"phi3": Phi3Reference, "gemma3": Gemma3Reference, "olmo2": Olmo2Reference, "gpt2": LayerNormReference,
              "phi2": LayerNormReference}


def reference_for(model: GGUFModel, precision: str = "fp32") -> Reference:
    """The reference forward pass for the model's architecture."""
    return REFERENCES.get(model.hp.arch, Reference)(model, precision)
