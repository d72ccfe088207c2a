"""Read a GGUF file: hyper-parameters, tokenizer data and dequantized weights.

Weights are dequantized with gguf's own routines (`gguf.quants.dequantize`) and returned in the
Hugging Face orientation `[out_features, in_features]`. For the llama architecture, llama.cpp's
converter permutes the rows of the q and k projections so that its interleaved ("NORM") rotary can
be used; `hf_weight` undoes that permutation so the ONNX graph can use rotate-half rotary like
the original Hugging Face model. gemma3 needs no un-permutation (llama.cpp runs it with NEOX,
i.e. rotate-half, rotary) and its converter already stored every norm weight as (1 + w).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import gguf

from . import contract, native
from .contract import ExportError

SUPPORTED_ARCHS = ("llama", "qwen2", "qwen3", "gemma3", "smollm3", "olmo2", "gpt2", "phi2",
                   "phi3")

# architectures with biased LayerNorm (`layer_norm_epsilon`) instead of RMSNorm
LAYER_NORM_ARCHS = ("gpt2", "phi2")
# architectures whose rotary may cover only the first `rope.dimension_count` dims of a head
PARTIAL_ROTARY_ARCHS = ("phi2", "phi3")

# architectures whose q/k rows llama.cpp's converter permuted for its interleaved ("NORM") rotary
PERMUTED_QK = ("llama", "smollm3")
# smollm3 (llama.cpp's llm_build_smollm3, hard-coded there): every 4th layer has no rotary
SMOLLM3_NO_ROPE_STEP = 4

ROPE_FREQS = "rope_freqs.weight"
ROPE_LONG = "rope_factors_long.weight"
ROPE_SHORT = "rope_factors_short.weight"

# llama.cpp (llama-model.cpp, LLM_ARCH_GEMMA3): every 6th layer is global, the others use a
# sliding window and rope base 10000 (hard-coded there, not in the GGUF).
GEMMA3_SWA_PATTERN = 6
GEMMA3_LOCAL_ROPE_BASE = 10000.0


@dataclasses.dataclass
class HParams:
    arch: str
    n_layers: int
    hidden: int
    intermediate: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    rope_base: float
    rms_eps: float
    context_length: int
    vocab_size: int
    tied_embeddings: bool
    qkv_bias: bool
    name: str
    # gemma3 only: sliding-window size (0: none), per-layer flag (True: sliding-window layer),
    # rope base of the sliding-window layers, attention scale (0: 1/sqrt(head_dim))
    sliding_window: int = 0
    swa_layers: list[bool] = dataclasses.field(default_factory=list)
    rope_local_base: float = 0.0
    attn_scale: float = 0.0
    # llama: positions are multiplied by this before the rotary (linear rope scaling:
    # 1 / rope.scaling.factor); whether `rope_freqs.weight` divides the inverse frequencies
    # (Llama 3.1/3.2's "llama3" rope scaling, stored as a tensor)
    rope_freq_scale: float = 1.0
    rope_freq_factors: bool = False
    # rope.scaling.attn_factor (cos and sin scaled by it), the training context before rope
    # scaling, and which of phi3's longrope factor sets the export uses ("" when none)
    rope_attn_factor: float = 1.0
    rope_original_context: int = 0
    rope_factor_set: str = ""
    # dims of each head the rotary covers (phi2: partial rotary; gpt2: unused)
    rope_dim: int = 0
    # qwen3: RMSNorm of each head of q and k (attn_q_norm/attn_k_norm) before the rotary
    qk_norm: bool = False
    # per layer: True where the layer has no rotary (smollm3: every 4th)
    no_rope_layers: list[bool] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _scalar(field) -> Any:
    value = field.contents()
    return value


class GGUFModel:
    """A GGUF file opened for export (memory-mapped; tensors are dequantized on demand)."""

    def __init__(self, path: str):
        self.path = path
        try:
            self.reader = gguf.GGUFReader(path)
        except Exception as exc:  # noqa: BLE001 - gguf raises plain exceptions
            raise ExportError(f"failed to read GGUF file {path}: {exc}") from exc
        self.tensors = {t.name: t for t in self.reader.tensors}
        # what the export read: every tensor and metadata key must be read or known not to
        # matter (`contract.py`), or the export fails naming it
        self.read_keys: set[str] = set()
        self.read_tensors: set[str] = set()
        self.hp = self._hparams()
        contract.check_tensor_names(self, contract.known_tensors(self.hp, self.tensors))
        # llama3 rope scaling: per-frequency divisors of the rotary's inverse frequencies
        # (rope_freqs.weight); phi3's longrope: the long or the short ones, chosen as llama.cpp
        # chooses them for a context of the export's context_length (long past the original)
        self.rope_factors: np.ndarray | None = None
        name = None
        if self.hp.rope_freq_factors:
            name = ROPE_FREQS
        elif ROPE_LONG in self.tensors or ROPE_SHORT in self.tensors:
            long = self.hp.context_length > self.hp.rope_original_context
            name = ROPE_LONG if long else ROPE_SHORT
            for other in (ROPE_LONG, ROPE_SHORT):
                if other not in self.tensors:
                    raise ExportError(f"failed to export: {other} is missing beside "
                                      f"{ROPE_LONG if other == ROPE_SHORT else ROPE_SHORT}")
                self.read_tensors.add(other)  # read: one of the two is chosen here
            self.hp.rope_factor_set = "long" if long else "short"
        if name is not None:
            self.rope_factors = self.raw(name).reshape(-1).astype(np.float64)
            want = (self.hp.rope_dim or self.hp.head_dim) // 2
            if self.rope_factors.shape[0] != want:
                raise ExportError(
                    f"failed to export: {name} has {self.rope_factors.shape[0]} entries, "
                    f"expected rope_dim/2 = {want}")

    # -- metadata ---------------------------------------------------------------------------
    def meta(self, key: str, default: Any = None) -> Any:
        self.read_keys.add(key)
        field = self.reader.fields.get(key)
        if field is None:
            return default
        return _scalar(field)

    def _require(self, key: str) -> Any:
        value = self.meta(key)
        if value is None:
            raise ExportError(f"failed to export: GGUF metadata key {key!r} is missing")
        return value

    def _hparams(self) -> HParams:
        arch = self._require("general.architecture")
        if arch not in SUPPORTED_ARCHS:
            reason = contract.unsupported_reason(arch)
            raise ExportError(
                f"failed to export: architecture {arch!r} is not supported "
                + (f"(missing: {reason}) " if reason else "")
                + f"(supported: {', '.join(SUPPORTED_ARCHS)})"
            )
        contract.check_arch_keys(self, arch)
        freq_scale = self._rope_scaling(arch)
        hidden = int(self._require(f"{arch}.embedding_length"))
        n_heads = int(self._require(f"{arch}.attention.head_count"))
        n_kv = int(self.meta(f"{arch}.attention.head_count_kv", n_heads))
        head_dim = int(self.meta(f"{arch}.attention.key_length", hidden // n_heads))
        value_dim = int(self.meta(f"{arch}.attention.value_length", head_dim))
        if value_dim != head_dim:
            raise ExportError(f"failed to export: value head size {value_dim} differs from the "
                              f"key head size {head_dim}")
        rope_dim = int(self.meta(f"{arch}.rope.dimension_count", head_dim))
        if rope_dim != head_dim and arch not in PARTIAL_ROTARY_ARCHS:
            raise ExportError(
                f"failed to export: partial rotary (rope dim {rope_dim} of head dim {head_dim}) "
                "is not supported"
            )
        tokens = self.meta("tokenizer.ggml.tokens")
        vocab = int(self.meta(f"{arch}.vocab_size", len(tokens) if tokens else 0))
        emb = self.tensors.get("token_embd.weight")
        if emb is None:
            raise ExportError("failed to export: tensor token_embd.weight is missing")
        vocab = int(emb.shape[1])
        default_base = 1e6 if arch in ("qwen2", "gemma3") else 1e4
        n_layers = int(self._require(f"{arch}.block_count"))
        extra: dict[str, Any] = {}
        if arch == "llama":
            # Mistral: a sliding window where the GGUF names one (every layer; Hugging Face's
            # MistralForCausalLM). llama.cpp's llama graph does not read this key and attends
            # to the whole context past the window; the goldens record that difference.
            window = int(self.meta("llama.attention.sliding_window", 0) or 0)
            if window:
                extra = {"sliding_window": window, "swa_layers": [True] * n_layers}
        if arch == "phi3":
            # read and ignored as llama.cpp ignores it: "Phi SWA is currently disabled"
            # (llama_model_phi3::load_arch_hparams sets n_swa = 0), so every layer attends to
            # the whole context
            self.meta("phi3.attention.sliding_window")
        if arch == "gemma3":
            extra = self._gemma3_hparams(n_layers, hidden, n_heads, head_dim)
        return HParams(
            arch=arch,
            n_layers=n_layers,
            hidden=hidden,
            intermediate=int(self._require(f"{arch}.feed_forward_length")),
            n_heads=n_heads,
            n_kv_heads=n_kv,
            head_dim=head_dim,
            rope_base=float(self.meta(f"{arch}.rope.freq_base", default_base)),
            rms_eps=float(self._require(f"{arch}.attention.layer_norm_epsilon"
                                        if arch in LAYER_NORM_ARCHS
                                        else f"{arch}.attention.layer_norm_rms_epsilon")),
            rope_dim=rope_dim,
            rope_attn_factor=self._rope_attn_factor,
            rope_original_context=self._rope_original,
            context_length=int(self.meta(f"{arch}.context_length", 4096)),
            vocab_size=vocab,
            tied_embeddings="output.weight" not in self.tensors,
            qkv_bias="blk.0.attn_q.bias" in self.tensors,
            name=str(self.meta("general.name", "model")),
            rope_freq_scale=freq_scale,
            rope_freq_factors=ROPE_FREQS in self.tensors,
            qk_norm=arch == "qwen3",
            no_rope_layers=[arch == "smollm3" and (i + 1) % SMOLLM3_NO_ROPE_STEP == 0
                            for i in range(n_layers)],
            **extra,
        )

    def _rope_scaling(self, arch: str) -> float:
        """The position scale llama.cpp derives from `rope.scaling.*` (linear: 1/factor; a
        factor without a type is linear there too); other scaling types fail by name."""
        scaling = self.meta(f"{arch}.rope.scaling.type")
        factor = float(self.meta(f"{arch}.rope.scaling.factor",
                                 self.meta(f"{arch}.rope.scale_linear", 0.0)) or 0.0)
        # read and irrelevant unless yarn (which fails below): the training context, and
        # whether the model was fine-tuned at the longer context
        self._rope_original = int(self.meta(f"{arch}.rope.scaling.original_context_length", 0)
                                  or 0)
        self._rope_attn_factor = float(self.meta(f"{arch}.rope.scaling.attn_factor", 1.0))
        self.meta(f"{arch}.rope.scaling.finetuned")
        if scaling in (None, "linear"):
            return 1.0 if factor in (0.0, 1.0) else 1.0 / factor
        if scaling == "none":
            return 1.0
        raise ExportError(f"failed to export: {arch}.rope.scaling.type {scaling!r} is not "
                          "supported (supported: none, linear, and llama3's rope_freqs.weight)")

    def _gemma3_hparams(self, n_layers: int, hidden: int, n_heads: int,
                        head_dim: int) -> dict[str, Any]:
        """Sliding window, its layer pattern and rope base, and the attention scale, as
        llama.cpp's loader sets them for gemma3."""
        window = int(self._require("gemma3.attention.sliding_window"))
        pattern = self.meta("gemma3.attention.sliding_window_pattern")
        if isinstance(pattern, list):  # newer converters: one flag per layer
            if len(pattern) != n_layers:
                raise ExportError(
                    f"failed to export: gemma3.attention.sliding_window_pattern has "
                    f"{len(pattern)} entries for {n_layers} layers")
            swa = [bool(v) for v in pattern]
        else:
            every = int(pattern) if pattern else GEMMA3_SWA_PATTERN
            swa = [(i % every) < every - 1 for i in range(n_layers)]
        for key in ("gemma3.attn_logit_softcapping", "gemma3.final_logit_softcapping"):
            if self.meta(key):
                raise ExportError(f"failed to export: {key} is not supported")
        # query_pre_attn_scalar: hidden/n_heads for the 27B model (62 layers), head_dim otherwise
        scale = self.meta("gemma3.attention.scale")
        if scale is None:
            scale = 1.0 / np.sqrt(hidden / n_heads if n_layers == 62 else head_dim)
        return {"sliding_window": window, "swa_layers": swa,
                "rope_local_base": GEMMA3_LOCAL_ROPE_BASE, "attn_scale": float(scale)}

    # -- tensors ----------------------------------------------------------------------------
    def has(self, name: str) -> bool:
        return name in self.tensors

    def raw(self, name: str) -> np.ndarray:
        """Dequantized tensor in GGUF's own row order, shape [ne1, ne0] (HF orientation)."""
        t = self.tensors.get(name)
        if t is None:
            raise ExportError(f"failed to export: tensor {name!r} is missing")
        self.read_tensors.add(name)
        try:
            data = gguf.quants.dequantize(t.data, t.tensor_type)
        except NotImplementedError as exc:
            raise ExportError(
                f"failed to export: tensor {name} has type {t.tensor_type.name}, "
                f"which gguf cannot dequantize: {exc}"
            ) from exc
        shape = tuple(int(d) for d in reversed(t.shape))
        return np.ascontiguousarray(data.reshape(shape), dtype=np.float32)

    def hf_weight(self, name: str) -> np.ndarray:
        """Dequantized tensor in Hugging Face layout (q/k permutation undone for llama)."""
        w = self.raw(name)
        if self.hp.arch in PERMUTED_QK:
            base = name.rsplit(".", 1)[0]
            if base.endswith("attn_q"):
                w = unpermute_rows(w, self.hp.n_heads)
            elif base.endswith("attn_k"):
                w = unpermute_rows(w, self.hp.n_kv_heads)
        return w

    def tensor_type(self, name: str) -> str:
        t = self.tensors.get(name)
        if t is None:
            raise ExportError(f"failed to export: tensor {name!r} is missing")
        return t.tensor_type.name

    def block_weight(self, name: str) -> native.BlockWeight | None:
        """The tensor's own GGUF blocks as a `native.BlockWeight` in Hugging Face layout (q/k
        rows reordered as `hf_weight` does), or None when its format has no exact MatMulNBits
        form (float and IQ/TQ formats)."""
        t = self.tensors.get(name)
        if t is None:
            raise ExportError(f"failed to export: tensor {name!r} is missing")
        self.read_tensors.add(name)
        shape = tuple(int(d) for d in reversed(t.shape))
        if len(shape) != 2:
            return None
        bw = native.decompose(t.tensor_type.name, t.data, shape)
        if bw is None or self.hp.arch not in PERMUTED_QK:
            return bw
        base = name.rsplit(".", 1)[0]
        heads = {"attn_q": self.hp.n_heads, "attn_k": self.hp.n_kv_heads}.get(base.split(".")[-1])
        if heads is None:
            return bw
        return bw.take_rows(unpermute_rows(np.arange(shape[0]), heads))

    def unread_tensors(self) -> list[str]:
        """Tensors of the file the export has not read (in file order)."""
        return [t.name for t in self.reader.tensors if t.name not in self.read_tensors]

    def tensor_types(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.reader.tensors:
            out[t.tensor_type.name] = out.get(t.tensor_type.name, 0) + 1
        return out


def unpermute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """Invert llama.cpp's q/k row permutation (rows j*2+a of a head go back to a*half+j)."""
    rows = w.shape[0]
    rest = w.shape[1:]
    half = rows // n_head // 2
    return w.reshape(n_head, half, 2, *rest).swapaxes(1, 2).reshape(w.shape)


def permute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k permutation (used by tests to write llama-style fixtures)."""
    rows = w.shape[0]
    rest = w.shape[1:]
    half = rows // n_head // 2
    return w.reshape(n_head, 2, half, *rest).swapaxes(1, 2).reshape(w.shape)
