"""Tiny GGUFs of each architecture the exporter supports, with random weights in the real tensor
layout, metadata and quantization types of that family's files, and the family's tokenizer type
over a small synthetic vocabulary. Written from a seed, so they are the same on every machine
(numpy's PCG64 and gguf's writer are pinned by requirements.txt); `goldens.py` records
llama.cpp's logits on them and checks the exporter's against those.

    python tiny_archs.py OUT_DIR [NAME ...]     # write NAME.gguf (default: all supported)
    python tiny_archs.py OUT_DIR --unsupported  # MoE (mixtral, qwen2moe), mamba, jamba, chatglm

Weights are scaled so that the logits are far from flat (a logit spread of tens), which makes
greedy choices decisive: a mismatch in the graph shows as different tokens, not as noise.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "tests"))
sys.path.insert(0, HERE)

from exporter.gguf_model import permute_rows  # noqa: E402
from fixtures import MERGE_PAIRS, _byte_chars, random_blocks  # noqa: E402

LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}")


def bpe_vocabulary(specials: list[str], size: int) -> tuple[list[str], list[str], list[int]]:
    """Byte-level BPE (GPT-2 alphabet), a few merges, the family's special tokens (CONTROL),
    then reserved CONTROL tokens up to `size`, as Llama 3's vocabulary ends."""
    tokens = _byte_chars()
    merges = []
    for a, b in MERGE_PAIRS + [("Ġ", "x"), ("Ġ", "+"), ("Ġ", "="), ("Ġ", "Ġ"), ("ĠĠ", "ĠĠ")]:
        if a in tokens and b in tokens and a + b not in tokens:
            tokens.append(a + b)
            merges.append(f"{a} {b}")
    types = [int(gguf.TokenType.NORMAL)] * len(tokens)
    for s in specials:
        tokens.append(s)
        types.append(int(gguf.TokenType.CONTROL))
    n = 0
    while len(tokens) < size:
        tokens.append(f"<|reserved_special_token_{n}|>")
        types.append(int(gguf.TokenType.CONTROL))
        n += 1
    return tokens, merges, types


def kquant(qtype: Q, w_shape: tuple[int, int], rng, scale: float) -> np.ndarray:
    """Random blocks of a K-quant (or legacy) type with their float16 scales multiplied by
    `scale` (the fixtures' blocks give weights of ~0.3)."""
    from fixtures import _F16_FIELDS
    blocks = random_blocks(qtype, w_shape[0], w_shape[1], rng)
    size, fields = _F16_FIELDS[qtype]
    flat = blocks.reshape(-1, size)
    for off in fields:
        d = flat[:, off:off + 2].copy().view(np.float16).astype(np.float32) * scale
        flat[:, off:off + 2] = d.astype(np.float16).view(np.uint8)
    return flat.reshape(blocks.shape)


class Writer:
    """A GGUFWriter plus the tensor helpers of the tiny models."""

    def __init__(self, path: str, arch: str, seed: int):
        self.w = gguf.GGUFWriter(path, arch)
        self.rng = np.random.default_rng(seed)

    def mat(self, rows: int, cols: int, std: float) -> np.ndarray:
        return (self.rng.standard_normal((rows, cols)) * std).astype(np.float32)

    def norm(self, n: int) -> np.ndarray:
        return (1.0 + 0.2 * self.rng.standard_normal(n)).astype(np.float32)

    def add(self, name: str, w: np.ndarray | tuple[int, int], qtype: Q,
            kscale: float = 0.15) -> None:
        """A weight [rows, cols]: a float array quantized by gguf (float and legacy types), or
        a shape for random K-quant blocks."""
        if isinstance(w, tuple) and qtype not in (Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K):
            w = self.mat(w[0], w[1], 0.4 * kscale)  # about the K-quant blocks' magnitude
        if qtype in (Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K):
            shape = w if isinstance(w, tuple) else w.shape
            self.w.add_tensor(name, kquant(qtype, shape, self.rng, kscale), raw_dtype=qtype)
        elif qtype == Q.F32:
            self.w.add_tensor(name, np.asarray(w, np.float32))
        elif qtype == Q.F16:
            self.w.add_tensor(name, np.asarray(w, np.float16))
        else:
            self.w.add_tensor(name, gguf.quants.quantize(np.asarray(w, np.float32), qtype),
                              raw_dtype=qtype)

    def close(self) -> None:
        self.w.write_header_to_file()
        self.w.write_kv_data_to_file()
        self.w.write_tensors_to_file()
        self.w.close()


def llama3_rope_freqs(head_dim: int, base: float, factor: float, low: float, high: float,
                      original: int) -> np.ndarray:
    """`rope_freqs.weight` as llama.cpp's convert_hf_to_gguf.py computes it for rope_type
    llama3 (LlamaModel.generate_extra_tensors)."""
    freqs = 1.0 / base ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim)
    low_wl, high_wl = original / low, original / high
    out = []
    for f in freqs:
        wavelen = 2 * np.pi / f
        if wavelen < high_wl:
            out.append(1)
        elif wavelen > low_wl:
            out.append(factor)
        else:
            smooth = (original / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                   "<|end_header_id|>", "<|eot_id|>", "<|eom_id|>"]
CHATML_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def write_decoder(path: str, arch: str, seed: int, *, pre: str, specials: list[str],
                  bos: str | None, eos: str, add_bos: bool, template: str,
                  hidden: int = 256, n_heads: int = 4, n_kv: int = 2, head_dim: int = 64,
                  inter: int = 512, layers: int = 2, ctx: int = 256, base: float = 10000.0,
                  rope_freqs: np.ndarray | None = None, qk_norm: bool = False,
                  permute: bool = False, types: dict[str, Q] | None = None,
                  file_type=gguf.LlamaFileType.MOSTLY_Q4_K_M, tied: bool = True,
                  layout: str = "llama", qkv_bias: bool = False) -> None:
    """A llama-family decoder (RMSNorm, SwiGLU, GQA) as llama.cpp's converter writes one, with a
    byte-level BPE vocabulary of 320 tokens."""
    types = {"embd": Q.Q6_K, "q": Q.Q8_0, "k": Q.Q5_0, "v": Q.Q6_K, "o": Q.Q4_K,
             "gate": Q.Q4_K, "up": Q.Q4_K, "down": Q.Q6_K, "head": Q.Q6_K, **(types or {})}
    tokens, merges, token_types = bpe_vocabulary(specials, 320)
    g = Writer(path, arch, seed)
    w = g.w
    w.add_name(f"tiny-{arch}")
    w.add_block_count(layers)
    w.add_context_length(ctx)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(inter)
    w.add_head_count(n_heads)
    w.add_head_count_kv(n_kv)
    if head_dim != hidden // n_heads:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    w.add_rope_freq_base(base)
    w.add_rope_dimension_count(head_dim)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(len(tokens))
    w.add_file_type(file_type)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(token_types)
    w.add_token_merges(merges)
    if bos is not None:
        w.add_bos_token_id(tokens.index(bos))
    w.add_eos_token_id(tokens.index(eos))
    w.add_add_bos_token(add_bos)
    w.add_chat_template(template)
    vocab = len(tokens)
    g.add("token_embd.weight", (vocab, hidden), types["embd"], kscale=0.6)
    if rope_freqs is not None:
        g.w.add_tensor("rope_freqs.weight", rope_freqs)
    for i in range(layers):
        b = f"blk.{i}"
        if layout != "olmo2":
            g.w.add_tensor(f"{b}.attn_norm.weight", g.norm(hidden))
        wq = g.mat(n_heads * head_dim, hidden, 0.1)
        wk = g.mat(n_kv * head_dim, hidden, 0.1)
        if permute:  # llama.cpp's converter permutes q/k rows for its interleaved rotary
            wq, wk = permute_rows(wq, n_heads), permute_rows(wk, n_kv)
        g.add(f"{b}.attn_q.weight", wq, types["q"])
        g.add(f"{b}.attn_k.weight", wk, types["k"])
        g.add(f"{b}.attn_v.weight", (n_kv * head_dim, hidden), types["v"])
        if qkv_bias:
            for t, n in (("q", n_heads), ("k", n_kv), ("v", n_kv)):
                g.w.add_tensor(f"{b}.attn_{t}.bias",
                               (0.3 * g.rng.standard_normal(n * head_dim)).astype(np.float32))
        if layout == "olmo2":  # q/k norms over the whole width
            g.w.add_tensor(f"{b}.attn_q_norm.weight", g.norm(n_heads * head_dim))
            g.w.add_tensor(f"{b}.attn_k_norm.weight", g.norm(n_kv * head_dim))
        elif qk_norm:
            g.w.add_tensor(f"{b}.attn_q_norm.weight", g.norm(head_dim))
            g.w.add_tensor(f"{b}.attn_k_norm.weight", g.norm(head_dim))
        g.add(f"{b}.attn_output.weight", (hidden, n_heads * head_dim), types["o"])
        if layout == "olmo2":
            g.w.add_tensor(f"{b}.post_attention_norm.weight", g.norm(hidden))
        else:
            g.w.add_tensor(f"{b}.ffn_norm.weight", g.norm(hidden))
        g.add(f"{b}.ffn_gate.weight", (inter, hidden), types["gate"])
        g.add(f"{b}.ffn_up.weight", (inter, hidden), types["up"])
        g.add(f"{b}.ffn_down.weight", (hidden, inter), types["down"])
        if layout == "olmo2":
            g.w.add_tensor(f"{b}.post_ffw_norm.weight", g.norm(hidden))
    g.w.add_tensor("output_norm.weight", g.norm(hidden))
    if not tied:
        g.add("output.weight", (vocab, hidden), types["head"], kscale=0.6)
    g.close()


def write_llama3(path: str) -> None:
    """Llama 3.2 style: GQA, tied embeddings, llama3 rope scaling as `rope_freqs.weight`
    (a tiny original context of 16 so that the divisors reach most frequencies of a 256-token
    context), tiktoken-style byte-level BPE (pre-tokenizer llama-bpe), Q4_K_M's mix of types,
    q/k rows permuted as llama.cpp's converter stores them."""
    base = 500000.0
    write_decoder(path, "llama", 3, pre="llama-bpe", specials=LLAMA3_SPECIALS,
                  bos="<|begin_of_text|>", eos="<|eot_id|>", add_bos=True,
                  template=LLAMA3_TEMPLATE, base=base, permute=True,
                  rope_freqs=llama3_rope_freqs(64, base, 8.0, 1.0, 4.0, 16))


def write_qwen3(path: str) -> None:
    """Qwen3 style: q/k RMSNorm per head, head_dim 128 != hidden/heads, no biases, NEOX rotary
    (rows as stored), untied Q6_K lm_head, ChatML, pre-tokenizer qwen2, no BOS."""
    write_decoder(path, "qwen3", 5, pre="qwen2", specials=CHATML_SPECIALS, bos="<|endoftext|>",
                  eos="<|im_end|>", add_bos=False, template=CHATML_TEMPLATE, base=1e6,
                  head_dim=128, qk_norm=True, tied=False,
                  types={"q": Q.Q4_K, "k": Q.Q4_K, "embd": Q.Q4_K})


def write_qwen2(path: str) -> None:
    """Qwen2.5 style: q/k/v biases, GQA, NEOX rotary (rows as stored), tied embeddings, ChatML,
    pre-tokenizer qwen2, no BOS; Q4_K_M's mix with Q5_0/Q8_0 (the 0.5B's types)."""
    write_decoder(path, "qwen2", 47, pre="qwen2", specials=CHATML_SPECIALS, bos="<|endoftext|>",
                  eos="<|im_end|>", add_bos=False, template=CHATML_TEMPLATE, base=1e6,
                  qkv_bias=True, types={"q": Q.Q5_0, "k": Q.Q5_0, "v": Q.Q8_0, "embd": Q.Q8_0})


def write_smollm3(path: str) -> None:
    """SmolLM3 style: llama layout (permuted q/k) with 4 layers so that layer 3 is one of the
    rope-free layers llama.cpp hard-codes (every 4th), Llama 3's tokenizer type."""
    write_decoder(path, "smollm3", 7, pre="llama-bpe", specials=LLAMA3_SPECIALS,
                  bos="<|begin_of_text|>", eos="<|eot_id|>", add_bos=True,
                  template=LLAMA3_TEMPLATE, base=2e6, permute=True, layers=4,
                  types={"q": Q.Q4_0, "k": Q.Q4_1, "v": Q.Q8_0, "gate": Q.Q5_K})


def write_smollm3_ternary(path: str, qtype: Q) -> None:
    """SmolLM3 at 1.58 bits: every linear layer TQ1_0 or TQ2_0 (ternary), embeddings Q4_K and
    the lm_head Q6_K, as the ternary GGUFs our users compare with full precision keep them."""
    ternary = {k: qtype for k in ("q", "k", "v", "o", "gate", "up", "down")}
    write_decoder(path, "smollm3", 19 if qtype == Q.TQ1_0 else 23, pre="llama-bpe",
                  specials=LLAMA3_SPECIALS, bos="<|begin_of_text|>", eos="<|eot_id|>",
                  add_bos=True, template=LLAMA3_TEMPLATE, base=2e6, permute=True, layers=4,
                  tied=False, types={**ternary, "embd": Q.Q4_K, "head": Q.Q6_K},
                  file_type=gguf.LlamaFileType.MOSTLY_TQ1_0 if qtype == Q.TQ1_0
                  else gguf.LlamaFileType.MOSTLY_TQ2_0)


PHI3_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{'<|system|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'user' %}"
    "{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'assistant' %}"
    "{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}")
PHI3_SPECIALS = ["<|endoftext|>", "<|assistant|>", "<|end|>", "<|user|>", "<|system|>"]


def phi3_spm_vocabulary() -> tuple[list[str], list[float], list[int]]:
    """Phi-3's SentencePiece layout: <unk> <s> </s>, the 256 byte tokens, scored pieces, then
    the chat special tokens (CONTROL)."""
    from fixtures import SPM_MERGED, SPM_PIECES
    tokens = ["<unk>", "<s>", "</s>"]
    types = [int(gguf.TokenType.UNKNOWN), int(gguf.TokenType.CONTROL),
             int(gguf.TokenType.CONTROL)]
    scores = [0.0, 0.0, 0.0]
    for b in range(256):
        tokens.append(f"<0x{b:02X}>")
        types.append(int(gguf.TokenType.BYTE))
        scores.append(0.0)
    pieces = SPM_PIECES + [m for m in SPM_MERGED if m not in SPM_PIECES] + \
        ["▁W", "W", "▁a", "▁l", "▁s", "▁o", "."]
    seen = set(tokens)
    for rank, piece in enumerate(pieces):
        if piece in seen:
            continue
        seen.add(piece)
        tokens.append(piece)
        types.append(int(gguf.TokenType.NORMAL))
        scores.append(-1000.0 - rank if len(piece) == 1 else -float(rank))
    for sp in PHI3_SPECIALS:
        tokens.append(sp)
        types.append(int(gguf.TokenType.CONTROL))
        scores.append(0.0)
    while len(tokens) < 320:
        tokens.append(f"<unused{len(tokens)}>")
        types.append(int(gguf.TokenType.UNUSED))
        scores.append(0.0)
    return tokens, scores, types


def write_phi3(path: str, seed: int, *, original: int, rope_dim: int, n_kv: int, tied: bool,
               spm: bool, window: int = 0) -> None:
    """Phi-3 / Phi-4-mini as llama.cpp's converter writes them: fused attn_qkv, fused gate|up in
    ffn_up [2*inter], longrope (rope_factors_long/short.weight, rope.scaling.attn_factor,
    original_context_length), NEOX rotary over rope_dim dims."""
    hidden, n_heads, head_dim, inter, layers, ctx, base = 256, 4, 64, 512, 2, 256, 10000.0
    factor = ctx / original
    attn_factor = float(np.sqrt(1 + np.log(factor) / np.log(original))) if factor > 1 else 1.0
    g = Writer(path, "phi3", seed)
    w = g.w
    # llama.cpp sets token attributes by general.name: a name with "phi3"/"phi-3" needs the
    # SentencePiece <s> </s> <unk> (Phi-4-mini's real name has neither)
    w.add_name("tiny-phi3" if spm else "tiny-phi-4-mini")
    w.add_block_count(layers)
    w.add_context_length(ctx)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(inter)
    w.add_head_count(n_heads)
    w.add_head_count_kv(n_kv)
    w.add_rope_freq_base(base)
    w.add_rope_dimension_count(rope_dim)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_scaling_attn_factors(attn_factor)
    w.add_rope_scaling_orig_ctx_len(original)
    if window:
        w.add_sliding_window(window)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_K_M)
    if spm:
        tokens, scores, types = phi3_spm_vocabulary()
        w.add_tokenizer_model("llama")
        w.add_tokenizer_pre("default")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(types)
        w.add_bos_token_id(tokens.index("<s>"))
        w.add_eos_token_id(tokens.index("<|end|>"))
        w.add_unk_token_id(tokens.index("<unk>"))
        w.add_pad_token_id(tokens.index("<|endoftext|>"))
        w.add_add_bos_token(False)
        w.add_add_eos_token(False)
    else:  # Phi-4-mini: o200k byte-level BPE
        tokens, merges, types = bpe_vocabulary(PHI3_SPECIALS, 320)
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("gpt-4o")
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(merges)
        w.add_bos_token_id(tokens.index("<|endoftext|>"))
        w.add_eos_token_id(tokens.index("<|end|>"))
        w.add_add_bos_token(False)
    w.add_chat_template(PHI3_TEMPLATE)
    vocab = len(tokens)
    half = rope_dim // 2
    # longrope factors as Phi-3's config lists them: >= 1, growing with the wavelength
    short = (1.0 + 0.5 * np.linspace(0, 1, half) ** 2).astype(np.float32)
    long = (1.0 + (factor - 1.0) * np.linspace(0, 1, half) ** 1.5).astype(np.float32)
    g.add("token_embd.weight", (vocab, hidden), Q.Q4_K, kscale=0.6)
    g.w.add_tensor("rope_factors_long.weight", long)
    g.w.add_tensor("rope_factors_short.weight", short)
    for i in range(layers):
        b = f"blk.{i}"
        g.w.add_tensor(f"{b}.attn_norm.weight", g.norm(hidden))
        g.add(f"{b}.attn_qkv.weight", ((n_heads + 2 * n_kv) * head_dim, hidden), Q.Q5_K)
        g.add(f"{b}.attn_output.weight", (hidden, n_heads * head_dim), Q.Q4_K)
        g.w.add_tensor(f"{b}.ffn_norm.weight", g.norm(hidden))
        g.add(f"{b}.ffn_up.weight", (2 * inter, hidden), Q.Q4_K)
        g.add(f"{b}.ffn_down.weight", (hidden, inter), Q.Q6_K)
    g.w.add_tensor("output_norm.weight", g.norm(hidden))
    if not tied:
        g.add("output.weight", (vocab, hidden), Q.Q6_K, kscale=0.6)
    g.close()


MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ message['content'] + eos_token }}{% endif %}{% endfor %}")


def write_mistral(path: str) -> None:
    """Mistral 7B v0.1 style: llama layout (permuted q/k), GQA, a sliding window of 16 (every
    layer) named by llama.attention.sliding_window, SentencePiece vocabulary with <s> </s>."""
    hidden, n_heads, n_kv, head_dim, inter, layers, ctx = 256, 4, 1, 64, 512, 2, 256
    tokens, scores, types = phi3_spm_vocabulary()
    tokens = [t if t not in PHI3_SPECIALS else f"<unused{i}>" for i, t in enumerate(tokens)]
    tokens[tokens.index("<unused" + str(len(tokens) - 2) + ">")] = "[INST]"
    tokens[tokens.index("<unused" + str(len(tokens) - 1) + ">")] = "[/INST]"
    g = Writer(path, "llama", 37)
    w = g.w
    w.add_name("tiny-mistral")
    w.add_block_count(layers)
    w.add_context_length(ctx)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(inter)
    w.add_head_count(n_heads)
    w.add_head_count_kv(n_kv)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(head_dim)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_sliding_window(16)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_K_M)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(tokens.index("<s>"))
    w.add_eos_token_id(tokens.index("</s>"))
    w.add_unk_token_id(tokens.index("<unk>"))
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_chat_template(MISTRAL_TEMPLATE)
    vocab = len(tokens)
    g.add("token_embd.weight", (vocab, hidden), Q.Q4_K, kscale=0.6)
    for i in range(layers):
        b = f"blk.{i}"
        g.w.add_tensor(f"{b}.attn_norm.weight", g.norm(hidden))
        g.add(f"{b}.attn_q.weight", permute_rows(g.mat(n_heads * head_dim, hidden, 0.1), n_heads),
              Q.Q4_0)
        g.add(f"{b}.attn_k.weight", permute_rows(g.mat(n_kv * head_dim, hidden, 0.1), n_kv),
              Q.Q4_1)
        g.add(f"{b}.attn_v.weight", (n_kv * head_dim, hidden), Q.Q6_K)
        g.add(f"{b}.attn_output.weight", (hidden, n_heads * head_dim), Q.Q4_K)
        g.w.add_tensor(f"{b}.ffn_norm.weight", g.norm(hidden))
        g.add(f"{b}.ffn_gate.weight", (inter, hidden), Q.Q4_K)
        g.add(f"{b}.ffn_up.weight", (inter, hidden), Q.Q4_K)
        g.add(f"{b}.ffn_down.weight", (hidden, inter), Q.Q6_K)
    g.w.add_tensor("output_norm.weight", g.norm(hidden))
    g.add("output.weight", (vocab, hidden), Q.Q6_K, kscale=0.6)
    g.close()


OLMO2_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{ '<|system|>\n' + message['content'] + '\n' }}{% elif message['role'] == 'user' %}"
    "{{ '<|user|>\n' + message['content'] + '\n' }}{% elif message['role'] == 'assistant' %}"
    "{{ '<|assistant|>\n' + message['content'] + eos_token + '\n' }}{% endif %}"
    "{% if loop.last and add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
    "{% endfor %}")


def write_olmo2(path: str) -> None:
    """OLMo 2 style: no pre-norms, q/k RMSNorm over the whole width, post-attention and post-MLP
    norms, MHA, NEOX rotary, untied lm_head, cl100k-style BPE (pre-tokenizer dbrx)."""
    write_decoder(path, "olmo2", 11, pre="dbrx", specials=["<|endoftext|>", "<|pad|>"],
                  bos="<|endoftext|>", eos="<|endoftext|>", add_bos=False,
                  template=OLMO2_TEMPLATE, base=500000.0, n_kv=4, tied=False, layout="olmo2",
                  types={"q": Q.Q5_1, "k": Q.Q5_1, "v": Q.Q8_0, "o": Q.Q5_K, "down": Q.Q3_K,
                         "head": Q.Q6_K})


def write_layernorm_model(path: str, arch: str, seed: int, *, pre: str, rope_dim: int = 0,
                          hidden: int = 256, n_heads: int = 4, inter: int = 512,
                          layers: int = 2, ctx: int = 256, fused_qkv: bool = False,
                          tied: bool = False, types: dict[str, Q] | None = None) -> None:
    """gpt2 / phi2 as llama.cpp's converter writes them: biased LayerNorms, q/k/v with biases
    (fused attn_qkv or apart), GELU MLP with biases; gpt2 adds learned positions, phi2 a partial
    NEOX rotary and an lm_head bias. No chat template (base models): completion prompts."""
    types = {"embd": Q.Q8_0, "qkv": Q.Q4_K, "o": Q.Q5_0, "up": Q.Q4_K, "down": Q.Q6_K,
             "head": Q.Q6_K, **(types or {})}
    tokens, merges, token_types = bpe_vocabulary(["<|endoftext|>"], 320)
    head_dim = hidden // n_heads
    g = Writer(path, arch, seed)
    w = g.w
    w.add_name(f"tiny-{arch}")
    w.add_block_count(layers)
    w.add_context_length(ctx)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(inter)
    w.add_head_count(n_heads)
    w.add_head_count_kv(n_heads)
    if rope_dim:
        w.add_rope_dimension_count(rope_dim)
        w.add_rope_freq_base(10000.0)
    w.add_layer_norm_eps(1e-5)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_K_M)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(token_types)
    w.add_token_merges(merges)
    eot = tokens.index("<|endoftext|>")
    w.add_bos_token_id(eot)
    w.add_eos_token_id(eot)
    w.add_add_bos_token(False)
    vocab = len(tokens)

    def ln(name: str) -> None:
        g.w.add_tensor(f"{name}.weight", g.norm(hidden))
        g.w.add_tensor(f"{name}.bias", (0.1 * g.rng.standard_normal(hidden)).astype(np.float32))

    def bias(n: int) -> np.ndarray:
        return (0.1 * g.rng.standard_normal(n)).astype(np.float32)

    g.add("token_embd.weight", (vocab, hidden), types["embd"], kscale=0.6)
    if arch == "gpt2":
        g.w.add_tensor("position_embd.weight", g.mat(ctx, hidden, 0.1))
    for i in range(layers):
        b = f"blk.{i}"
        ln(f"{b}.attn_norm")
        if fused_qkv:
            g.add(f"{b}.attn_qkv.weight", (3 * hidden, hidden), types["qkv"])
            g.w.add_tensor(f"{b}.attn_qkv.bias", bias(3 * hidden))
        else:
            for t in "qkv":
                g.add(f"{b}.attn_{t}.weight", (hidden, hidden), types["qkv"])
                g.w.add_tensor(f"{b}.attn_{t}.bias", bias(hidden))
        g.add(f"{b}.attn_output.weight", (hidden, hidden), types["o"])
        g.w.add_tensor(f"{b}.attn_output.bias", bias(hidden))
        if arch == "gpt2":
            ln(f"{b}.ffn_norm")
        g.add(f"{b}.ffn_up.weight", (inter, hidden), types["up"])
        g.w.add_tensor(f"{b}.ffn_up.bias", bias(inter))
        g.add(f"{b}.ffn_down.weight", (hidden, inter), types["down"])
        g.w.add_tensor(f"{b}.ffn_down.bias", bias(hidden))
    ln("output_norm")
    if not tied:
        g.add("output.weight", (vocab, hidden), types["head"], kscale=0.6)
        if arch == "phi2":
            g.w.add_tensor("output.bias", bias(vocab))
    g.close()


def write_gpt2(path: str) -> None:
    """GPT-2 style: learned positions, fused attn_qkv with bias, no rotary, GELU, pre-tokenizer
    gpt-2, untied Q6_K output (the converter writes output.weight)."""
    write_layernorm_model(path, "gpt2", 13, pre="gpt-2", fused_qkv=True)


def write_phi2(path: str) -> None:
    """Phi-2 style: parallel attention + MLP from one LayerNorm, partial NEOX rotary (32 of 64
    dims), q/k/v apart with biases, untied lm_head with a bias, pre-tokenizer phi-2."""
    write_layernorm_model(path, "phi2", 17, pre="phi-2", rope_dim=32,
                          types={"qkv": Q.Q5_K, "o": Q.Q4_K, "up": Q.Q8_0})


def write_gemma3(path: str) -> None:
    """Gemma 3 style (tests/fixtures.py's layout: q/k norms, post norms, head_dim 64 != hidden/8,
    MQA, a SentencePiece vocabulary with user-defined whitespace tokens), 7 layers so that the
    sliding-window pattern llama.cpp hard-codes (5 of every 6 local, rope base 10000 there) has a
    global layer (5) and local ones on both sides; window 4, prompts far past it."""
    from fixtures import write_gemma3_fixture
    write_gemma3_fixture(path, {"embd": Q.Q8_0, "q": Q.Q4_0, "k": Q.Q8_0, "v": Q.Q8_0,
                                "o": Q.Q5_0, "gate": Q.Q4_1, "up": Q.Q5_1, "down": Q.Q8_0},
                         seed=43, embd_scale=0.1)


# name -> (writer, what llama.cpp hard-codes or reads that the goldens exercise)
MODELS = {
    "llama3": (write_llama3, "llama3 rope scaling: rope_freqs.weight divides the inverse "
                             "frequencies"),
    "qwen2": (write_qwen2, "q/k/v biases; NEOX rotary on rows as stored"),
    "qwen3": (write_qwen3, "q/k RMSNorm per head before a NEOX rotary; head_dim != "
                           "hidden/heads"),
    "smollm3": (write_smollm3, "no rotary on every 4th layer (hard-coded in llama.cpp, not in "
                               "the file)"),
    "smollm3-tq1_0": (lambda p: write_smollm3_ternary(p, Q.TQ1_0),
                      "ternary TQ1_0 linear layers (native: MatMulNBits bits=2) and SmolLM3's "
                      "rope-free layers"),
    "smollm3-tq2_0": (lambda p: write_smollm3_ternary(p, Q.TQ2_0),
                      "ternary TQ2_0 linear layers (native: MatMulNBits bits=2) and SmolLM3's "
                      "rope-free layers"),
    "phi3": (lambda p: write_phi3(p, 29, original=64, rope_dim=64, n_kv=4, tied=False,
                                  spm=True, window=48),
             "longrope at a fixed context: the long factors (context 256 > original 64) and "
             "attn_factor; the GGUF's sliding window 48 ignored past it, as llama.cpp does"),
    "phi4-mini": (lambda p: write_phi3(p, 31, original=2048, rope_dim=48, n_kv=2, tied=True,
                                       spm=False),
                  "longrope's short factors (context within the original 2048), partial "
                  "rotary 48 of 64, GQA, tied embeddings, o200k pre-tokenizer"),
    "mistral": (write_mistral, "llama with a sliding window of 16 (the GGUF's "
                               "llama.attention.sliding_window); llama.cpp ignores it: the "
                               "golden shows what it does past the window"),
    "gemma3": (write_gemma3, "gemma3's local layers: rope base 10000 and the 5-of-6 sliding "
                             "pattern, hard-coded in llama.cpp; window 4"),
    "olmo2": (write_olmo2, "no pre-norms; q/k RMSNorm over the whole width; post-norms"),
    "gpt2": (write_gpt2, "learned positions; biased LayerNorms; fused qkv; GELU"),
    "phi2": (write_phi2, "parallel attention and MLP; partial rotary; lm_head bias; GELU"),
}


def write_unsupported(path: str, arch: str) -> None:
    """A tiny GGUF of an architecture the exporter does not support, in that family's real
    tensor layout (random weights, a byte-level vocabulary): for the doctor's table."""
    hidden, layers, n_heads, inter, experts = 64, 2, 4, 128, 4
    g = Writer(path, "llama" if arch == "mixtral" else arch, 41)
    w = g.w
    w.add_name(f"tiny-{arch}")
    w.add_block_count(layers)
    w.add_context_length(256)
    w.add_embedding_length(hidden)
    tokens, merges, types = bpe_vocabulary(CHATML_SPECIALS, 320)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_eos_token_id(tokens.index("<|im_end|>"))
    vocab = len(tokens)
    g.w.add_tensor("token_embd.weight", g.mat(vocab, hidden, 0.1))
    g.w.add_tensor("output_norm.weight", g.norm(hidden))
    for i in range(layers):
        b = f"blk.{i}"
        if arch in ("mamba", "jamba") and (arch == "mamba" or i % 2 == 0):
            d_inner, d_state, d_conv = 2 * hidden, 16, 4
            w.add_ssm_conv_kernel(d_conv) if i == 0 else None
            g.w.add_tensor(f"{b}.attn_norm.weight", g.norm(hidden))
            g.w.add_tensor(f"{b}.ssm_in.weight", g.mat(2 * d_inner, hidden, 0.1))
            g.w.add_tensor(f"{b}.ssm_conv1d.weight", g.mat(d_inner, d_conv, 0.1))
            g.w.add_tensor(f"{b}.ssm_x.weight", g.mat(8 + 2 * d_state, d_inner, 0.1))
            g.w.add_tensor(f"{b}.ssm_dt.weight", g.mat(d_inner, 8, 0.1))
            g.w.add_tensor(f"{b}.ssm_a", g.mat(d_inner, d_state, 0.1))
            g.w.add_tensor(f"{b}.ssm_d", g.norm(d_inner))
            g.w.add_tensor(f"{b}.ssm_out.weight", g.mat(hidden, d_inner, 0.1))
            continue
        g.w.add_tensor(f"{b}.attn_norm.weight", g.norm(hidden))
        if arch == "chatglm":
            g.w.add_tensor(f"{b}.attn_qkv.weight", g.mat(3 * hidden, hidden, 0.1))
            g.w.add_tensor(f"{b}.attn_qkv.bias", g.norm(3 * hidden))
        else:
            for t in "qkv":
                g.w.add_tensor(f"{b}.attn_{t}.weight", g.mat(hidden, hidden, 0.1))
        g.w.add_tensor(f"{b}.attn_output.weight", g.mat(hidden, hidden, 0.1))
        g.w.add_tensor(f"{b}.ffn_norm.weight", g.norm(hidden))
        if arch in ("mixtral", "qwen2moe", "jamba"):
            g.w.add_tensor(f"{b}.ffn_gate_inp.weight", g.mat(experts, hidden, 0.1))
            g.w.add_tensor(f"{b}.ffn_gate_exps.weight",
                           (0.1 * g.rng.standard_normal((experts, inter, hidden))).astype(np.float32))
            g.w.add_tensor(f"{b}.ffn_up_exps.weight",
                           (0.1 * g.rng.standard_normal((experts, inter, hidden))).astype(np.float32))
            g.w.add_tensor(f"{b}.ffn_down_exps.weight",
                           (0.1 * g.rng.standard_normal((experts, hidden, inter))).astype(np.float32))
        else:
            g.w.add_tensor(f"{b}.ffn_up.weight", g.mat(2 * inter if arch == "chatglm" else inter,
                                                      hidden, 0.1))
            g.w.add_tensor(f"{b}.ffn_down.weight", g.mat(hidden, inter, 0.1))
    w.add_feed_forward_length(inter)
    if arch != "mamba":
        w.add_head_count(n_heads)
        w.add_head_count_kv(n_heads)
        w.add_layer_norm_rms_eps(1e-5)
    if arch in ("mixtral", "qwen2moe", "jamba"):
        w.add_expert_count(experts)
        w.add_expert_used_count(2)
    g.close()


UNSUPPORTED_MODELS = ("mixtral", "qwen2moe", "mamba", "jamba", "chatglm")


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    out, names = argv[0], argv[1:] or list(MODELS)
    os.makedirs(out, exist_ok=True)
    if names == ["--unsupported"]:
        names = list(UNSUPPORTED_MODELS)
    for name in names:
        if name in UNSUPPORTED_MODELS:
            write_unsupported(os.path.join(out, f"{name}.gguf"), name)
        else:
            MODELS[name][0](os.path.join(out, f"{name}.gguf"))
        print(os.path.join(out, f"{name}.gguf"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
