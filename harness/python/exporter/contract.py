"""No silent mis-export: every tensor and metadata key of a GGUF is consumed, or the export fails
naming it.

A GGUF can carry something that changes what the model computes which an exporter that does not
know it would skip without a word: Llama 3.1/3.2 keep their rope scaling in the tensor
`rope_freqs.weight`, Mixtral its experts in `ffn_*_exps`, a converter may add biases. So:

- tensors: before anything is built, each tensor name must be one the architecture's graph reads
  (`known_tensors`); after the graph is built, each tensor must have been read
  (`GGUFModel.read_tensors`; `check_all_read`). Either failure names the tensors.
- metadata: each key must have been read by the hyper-parameters or the tokenizer
  (`GGUFModel.read_keys`, recorded by `GGUFModel.meta`), or be on the allow-list below of keys
  known not to change the computation (provenance, unused special tokens, alternative chat
  templates). Anything else fails by name (`check_metadata`).
- architectures the exporter does not support fail naming what is missing (`UNSUPPORTED`,
  mixture-of-experts by `expert_count` or `_exps` tensors).
"""

from __future__ import annotations

import re
from typing import Any, Iterable


class ExportError(Exception):
    """An error with a message meant for the user."""


# Prefixes of keys that never change the computation: the reader's own fields, provenance
# (name, license, file type, quantization version: the tensors' types are read from the tensors),
# the importance matrix's provenance, named alternative chat templates (tool use, RAG).
IGNORED_PREFIXES = ("GGUF.", "general.", "quantize.", "tokenizer.chat_template.")

# Exact keys known not to change generation: special tokens a decoder-only generation never
# inserts by itself (classification, separator, mask, fill-in-the-middle markers), and the
# end-of-message token of Llama 3.x tool calls (a stop token only after a tool call, which the
# harness never asks for).
IGNORED_KEYS = frozenset({
    "tokenizer.ggml.cls_token_id",
    "tokenizer.ggml.sep_token_id",
    "tokenizer.ggml.seperator_token_id",
    "tokenizer.ggml.mask_token_id",
    "tokenizer.ggml.add_sep_token",
    "tokenizer.ggml.prefix_token_id",
    "tokenizer.ggml.suffix_token_id",
    "tokenizer.ggml.middle_token_id",
    "tokenizer.ggml.fim_pre_token_id",
    "tokenizer.ggml.fim_suf_token_id",
    "tokenizer.ggml.fim_mid_token_id",
    "tokenizer.ggml.fim_pad_token_id",
    "tokenizer.ggml.fim_rep_token_id",
    "tokenizer.ggml.fim_sep_token_id",
    "tokenizer.ggml.eom_token_id",
})

# Keys under `{arch}.` that do not change the computation.
IGNORED_ARCH_SUFFIXES = frozenset({
    # llama.cpp's own bookkeeping of the vocabulary size (the embedding's shape is read)
    "vocab_size",
})

# Architectures llama.cpp runs that the exporter does not, and what the graph would need.
UNSUPPORTED = {
    "mamba": "state-space layers (ssm_in, ssm_conv1d, ssm_x, ssm_dt, ssm_a, ssm_d, ssm_out) and "
             "a recurrent state in place of the KV cache",
    "mamba2": "state-space layers (ssm_in, ssm_conv1d, ssm_a, ssm_d, ssm_norm, ssm_out) and a "
              "recurrent state in place of the KV cache",
    "jamba": "state-space (Mamba) layers with a recurrent state, interleaved with attention, and "
             "mixture-of-experts feed-forward layers",
    "rwkv6": "RWKV time-mix/channel-mix layers and a recurrent state",
    "rwkv7": "RWKV time-mix/channel-mix layers and a recurrent state",
    "chatglm": "ChatGLM's fused attn_qkv with biases, partial 2D rotary on interleaved pairs "
               "and its own tokenizer",
    "qwen2moe": "mixture-of-experts feed-forward layers (router ffn_gate_inp, experts "
                "ffn_*_exps, shared expert ffn_*_shexp)",
    "qwen3moe": "mixture-of-experts feed-forward layers (router ffn_gate_inp, experts ffn_*_exps)",
    "olmoe": "mixture-of-experts feed-forward layers (router ffn_gate_inp, experts ffn_*_exps)",
    "phimoe": "mixture-of-experts feed-forward layers (router ffn_gate_inp, experts ffn_*_exps)",
    "deepseek2": "multi-head latent attention and mixture-of-experts feed-forward layers",
    "granitemoe": "mixture-of-experts feed-forward layers (router ffn_gate_inp, experts "
                  "ffn_*_exps)",
}

# The tensors each architecture's graph reads: global names, and per-layer names (blk.N.<name>).
_DECODER = ("attn_norm.weight", "attn_q.weight", "attn_k.weight", "attn_v.weight",
            "attn_output.weight", "ffn_norm.weight", "ffn_gate.weight", "ffn_up.weight",
            "ffn_down.weight")
_GLOBAL = ("token_embd.weight", "output_norm.weight", "output.weight")
ARCH_TENSORS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # llama: rope_freqs.weight holds llama3 rope scaling's per-frequency divisors
    "llama": (_GLOBAL + ("rope_freqs.weight",), _DECODER),
    "qwen2": (_GLOBAL, _DECODER + ("attn_q.bias", "attn_k.bias", "attn_v.bias")),
    "qwen3": (_GLOBAL, _DECODER + ("attn_q_norm.weight", "attn_k_norm.weight")),
    "smollm3": (_GLOBAL, _DECODER),
    "olmo2": (_GLOBAL, ("attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_output.weight",
                        "attn_q_norm.weight", "attn_k_norm.weight", "post_attention_norm.weight",
                        "ffn_gate.weight", "ffn_up.weight", "ffn_down.weight",
                        "post_ffw_norm.weight")),
    # gpt2: learned positions, biased LayerNorms, fused attn_qkv with bias, GELU MLP with biases
    "gpt2": (_GLOBAL + ("position_embd.weight", "output_norm.bias"),
             ("attn_norm.weight", "attn_norm.bias", "attn_qkv.weight", "attn_qkv.bias",
              "attn_output.weight", "attn_output.bias", "ffn_norm.weight", "ffn_norm.bias",
              "ffn_up.weight", "ffn_up.bias", "ffn_down.weight", "ffn_down.bias")),
    # phi3 / Phi-4-mini: fused attn_qkv (or apart), fused gate|up in ffn_up, longrope factors
    "phi3": (_GLOBAL + ("rope_factors_long.weight", "rope_factors_short.weight"),
             ("attn_norm.weight", "attn_qkv.weight", "attn_q.weight", "attn_k.weight",
              "attn_v.weight", "attn_output.weight", "ffn_norm.weight", "ffn_up.weight",
              "ffn_down.weight")),
    # phi2: one biased LayerNorm feeding attention and MLP in parallel; fused or separate qkv
    "phi2": (_GLOBAL + ("output_norm.bias", "output.bias"),
             ("attn_norm.weight", "attn_norm.bias", "attn_qkv.weight", "attn_qkv.bias",
              "attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_q.bias", "attn_k.bias",
              "attn_v.bias", "attn_output.weight", "attn_output.bias", "ffn_up.weight",
              "ffn_up.bias", "ffn_down.weight", "ffn_down.bias")),
    "gemma3": (_GLOBAL, _DECODER + ("attn_q_norm.weight", "attn_k_norm.weight",
                                    "post_attention_norm.weight", "post_ffw_norm.weight")),
}

_LAYER = re.compile(r"^blk\.(\d+)\.(.+)$")


def _names(names: Iterable[str], limit: int = 8) -> str:
    names = list(names)
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def unsupported_reason(arch: str) -> str | None:
    return UNSUPPORTED.get(arch)


def check_arch_keys(model: Any, arch: str) -> None:
    """Fail early, by name, on what no graph of this exporter computes: mixture-of-experts."""
    experts = model.meta(f"{arch}.expert_count")
    used = model.meta(f"{arch}.expert_used_count")
    if experts:
        raise ExportError(
            f"failed to export: {arch}.expert_count is {experts} ({used or '?'} used per token): "
            "mixture-of-experts is not supported (missing: expert routing ffn_gate_inp and the "
            "experts ffn_*_exps in the graph)")
    exps = [n for n in model.tensors if "_exps." in n or n.endswith("ffn_gate_inp.weight")]
    if exps:
        raise ExportError(
            f"failed to export: tensors {_names(exps, 3)} are mixture-of-experts weights, "
            "which are not supported (missing: expert routing in the graph)")


def known_tensors(hp: Any, present: Iterable[str]) -> set[str]:
    """The names of `present` that the architecture's graph reads."""
    glob, per_layer = ARCH_TENSORS[hp.arch]
    known = set()
    for name in present:
        m = _LAYER.match(name)
        if m is None:
            if name in glob:
                known.add(name)
        elif int(m.group(1)) < hp.n_layers and m.group(2) in per_layer:
            known.add(name)
    return known


def check_tensor_names(model: Any, known: set[str]) -> None:
    """Fail naming every tensor of the file that the architecture's graph does not read."""
    unknown = [t.name for t in model.reader.tensors if t.name not in known]
    if unknown:
        raise ExportError(
            f"failed to export: {len(unknown)} tensor(s) that the {model.hp.arch} graph does "
            f"not read: {_names(unknown)} (they would be dropped and the export would compute "
            "something else than the GGUF)")


def check_all_read(model: Any) -> None:
    """After the graph is built: fail naming every tensor it did not read."""
    unread = model.unread_tensors()
    if unread:
        raise ExportError(
            f"failed to export: the {model.hp.arch} graph did not use {len(unread)} tensor(s) "
            f"of the file: {_names(unread)}")


def ignored(key: str, arch: str) -> bool:
    if key.startswith(IGNORED_PREFIXES) or key in IGNORED_KEYS:
        return True
    return key.startswith(arch + ".") and key[len(arch) + 1:] in IGNORED_ARCH_SUFFIXES


def unread_keys(model: Any) -> list[str]:
    """Metadata keys neither read by the export nor known not to matter."""
    arch = model.hp.arch
    return [key for key in model.reader.fields
            if key not in model.read_keys and not ignored(key, arch)]


def check_metadata(model: Any) -> None:
    """Fail naming every metadata key the export did not read and that is not allow-listed
    (call after the hyper-parameters and the tokenizer have been read)."""
    left = unread_keys(model)
    if left:
        raise ExportError(
            f"failed to export: metadata key(s) the exporter does not understand: {_names(left)} "
            "(they may change what the model computes; supporting them, or allow-listing them "
            "in exporter/contract.py as known not to matter, comes first)")
