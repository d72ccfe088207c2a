"""Tiny GGUF models written with the gguf package, for the exporter's tests.

Three architectures (llama with llama.cpp's q/k row permutation, qwen2 with q/k/v biases, gemma3
with q/k norms, post norms, head_dim != hidden/heads and a tiny sliding window) and several tensor
types: F32, F16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 through gguf's own quantizer, and the K-quants
(Q2_K .. Q6_K) built block by block from random bytes with sane float16 scales (gguf can only
dequantize those). gemma3 fixtures carry a small SentencePiece ("llama") vocabulary with scores,
byte tokens and user-defined whitespace tokens.
"""

from __future__ import annotations

import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q

from exporter.gguf_model import permute_rows

# byte-level BPE alphabet (GPT-2's bytes_to_unicode)
def _byte_chars() -> list[str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    table = dict(zip(bs, cs))
    return [chr(table[b]) for b in range(256)]


MERGE_PAIRS = [("Ġ", "t"), ("h", "e"), ("i", "n"), ("Ġt", "he"), ("r", "e"), ("o", "n"),
               ("Ġ", "a"), ("e", "r"), ("a", "t"), ("Ġ", "s"), ("e", "n"), ("o", "r"),
               ("d", "e"), ("Ġ", "f"), ("Ġ", "d"), ("e", "t"), ("r", "et"), ("Ġ", "r"),
               ("Ġr", "et"), ("Ġre", "t"), ("u", "r"), ("Ġ", "(")]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def vocabulary() -> tuple[list[str], list[str], list[int]]:
    tokens = _byte_chars()
    merges = []
    for a, b in MERGE_PAIRS:
        if a in tokens and b in tokens and a + b not in tokens:
            tokens.append(a + b)
            merges.append(f"{a} {b}")
    types = [gguf.TokenType.NORMAL] * len(tokens)
    for s in SPECIALS:
        tokens.append(s)
        types.append(gguf.TokenType.CONTROL)
    while len(tokens) < 300:
        tokens.append(f"[PAD{len(tokens)}]")
        types.append(gguf.TokenType.UNUSED)
    return tokens, merges, [int(t) for t in types]


SPM_PIECES = ["▁", "e", "t", "a", "o", "n", "r", "i", "s", "d", "f", "u", "l", "(", ")", ":",
              "x", "1", "2", "h", "p", "m", "c", "y", "=", "+", ",", "."]
SPM_MERGED = ["▁t", "re", "▁d", "de", "▁de", "▁def", "in", "▁re", "ur", "rn", "urn", "▁return",
              "on", "er", "▁(", "he", "▁the", "en", "or", "at", "▁f", "x)", "(x", "ef", "et",
              "ret", "retu", "return", "▁ret", "▁retu", "rr"]


def spm_vocabulary() -> tuple[list[str], list[float], list[int]]:
    """A small SentencePiece vocabulary laid out like gemma's: control tokens, user-defined
    whitespace runs, the 256 byte tokens, then pieces with decreasing scores."""
    tokens = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
    types = [gguf.TokenType.CONTROL] * len(tokens)
    for ws in ("\n", "\n\n", "  ", "    ", "\t"):
        tokens.append(ws)
        types.append(gguf.TokenType.USER_DEFINED)
    scores = [0.0] * len(tokens)
    for b in range(256):
        tokens.append(f"<0x{b:02X}>")
        types.append(gguf.TokenType.BYTE)
        scores.append(0.0)
    pieces = SPM_PIECES + [m for m in SPM_MERGED if m not in SPM_PIECES]
    for rank, piece in enumerate(pieces):
        tokens.append(piece)
        types.append(gguf.TokenType.NORMAL)
        # single characters score lowest, as SentencePiece's do; merged pieces by their rank
        scores.append(-1000.0 - rank if len(piece) == 1 else -float(rank))
    while len(tokens) < 320:
        tokens.append(f"<unused{len(tokens)}>")
        types.append(gguf.TokenType.CONTROL)
        scores.append(0.0)
    return tokens, scores, [int(t) for t in types]


def _q4_k_blocks(rows: int, cols: int, rng) -> np.ndarray:
    assert cols % 256 == 0
    n = rows * cols // 256
    blocks = rng.integers(0, 256, size=(n, 144), dtype=np.uint8)
    blocks[:, 0:2] = np.frombuffer(np.float16(0.004).tobytes(), np.uint8)  # d
    blocks[:, 2:4] = np.frombuffer(np.float16(0.01).tobytes(), np.uint8)  # dmin
    return blocks.reshape(rows, cols // 256 * 144)


def _q6_k_blocks(rows: int, cols: int, rng) -> np.ndarray:
    assert cols % 256 == 0
    n = rows * cols // 256
    blocks = rng.integers(0, 256, size=(n, 210), dtype=np.uint8)
    blocks[:, 192:208] = rng.integers(-20, 20, size=(n, 16)).astype(np.int8).view(np.uint8)
    blocks[:, 208:210] = np.frombuffer(np.float16(0.0015).tobytes(), np.uint8)  # d
    return blocks.reshape(rows, cols // 256 * 210)


# float16 fields (byte offsets) of each block format; the other bytes are codes or packed scales
_F16_FIELDS = {Q.Q4_0: (18, [0]), Q.Q4_1: (20, [0, 2]), Q.Q5_0: (22, [0]), Q.Q5_1: (24, [0, 2]),
               Q.Q8_0: (34, [0]), Q.Q2_K: (84, [80, 82]), Q.Q3_K: (110, [108]),
               Q.Q4_K: (144, [0, 2]), Q.Q5_K: (176, [0, 2]), Q.Q6_K: (210, [208])}


def random_blocks(qtype: Q, rows: int, cols: int, rng) -> np.ndarray:
    """Random block bytes of `qtype` for a [rows, cols] tensor: every code and packed sub-block
    scale random, float16 scales/mins small and finite (some negative)."""
    size, fields = _F16_FIELDS[qtype]
    per_block = 256 if qtype.name.endswith("_K") else 32
    assert cols % per_block == 0
    n = rows * cols // per_block
    blocks = rng.integers(0, 256, size=(n, size), dtype=np.uint8)
    for off in fields:
        d = (rng.uniform(0.0005, 0.003, size=n) * rng.choice([-1.0, 1.0], size=n))
        blocks[:, off:off + 2] = d.astype(np.float16).view(np.uint8).reshape(n, 2)
    if qtype == Q.Q6_K:
        blocks[:, 192:208] = rng.integers(-20, 20, size=(n, 16)).astype(np.int8).view(np.uint8)
    return blocks.reshape(rows, cols // per_block * size)


def _add(writer, name: str, w: np.ndarray, qtype: Q, rng) -> None:
    """Add a float tensor [rows, cols] (HF orientation) quantized as `qtype`."""
    rows, cols = w.shape if w.ndim == 2 else (1, w.shape[0])
    if qtype == Q.F32:
        writer.add_tensor(name, w.astype(np.float32))
    elif qtype == Q.F16:
        writer.add_tensor(name, w.astype(np.float16))
    elif qtype == Q.Q4_K:
        writer.add_tensor(name, _q4_k_blocks(rows, cols, rng), raw_dtype=qtype)
    elif qtype == Q.Q6_K:
        writer.add_tensor(name, _q6_k_blocks(rows, cols, rng), raw_dtype=qtype)
    elif qtype in (Q.Q2_K, Q.Q3_K, Q.Q5_K):
        writer.add_tensor(name, random_blocks(qtype, rows, cols, rng), raw_dtype=qtype)
    else:
        writer.add_tensor(name, gguf.quants.quantize(w.astype(np.float32), qtype), raw_dtype=qtype)


def write_fixture(path: str, arch: str, types: dict[str, Q] | None = None, seed: int = 0,
                  hidden: int = 256, n_heads: int = 4, n_kv: int = 2, inter: int = 512,
                  layers: int = 2, rope_freqs: np.ndarray | None = None,
                  extra_tensors: dict[str, np.ndarray] | None = None,
                  extra_meta=None) -> dict:
    """Write a tiny model; `types` maps a tensor role (embd, q, k, v, o, gate, up, down, head)
    to its GGUF type (default F32). `rope_freqs`: llama3 rope scaling's `rope_freqs.weight`
    [head_dim/2]; `extra_tensors`: more tensors as they are; `extra_meta(writer)`: more keys."""
    types = types or {}
    rng = np.random.default_rng(seed)
    tokens, merges, token_types = vocabulary()
    vocab = len(tokens)
    head_dim = hidden // n_heads
    writer = gguf.GGUFWriter(path, arch)
    writer.add_name(f"tiny-{arch}")
    writer.add_block_count(layers)
    writer.add_context_length(256)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(inter)
    writer.add_head_count(n_heads)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_freq_base(1e6 if arch == "qwen2" else 1e5)
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_vocab_size(vocab)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2" if arch == "qwen2" else "smollm")
    writer.add_token_list(tokens)
    writer.add_token_types(token_types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokens.index("<|endoftext|>"))
    writer.add_eos_token_id(tokens.index("<|im_end|>"))
    writer.add_pad_token_id(tokens.index("<|endoftext|>"))
    writer.add_add_bos_token(False)
    writer.add_chat_template(
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

    def mat(rows, cols, scale):
        return (rng.standard_normal((rows, cols)) * scale).astype(np.float32)

    _add(writer, "token_embd.weight", mat(vocab, hidden, 0.5), types.get("embd", Q.F32), rng)
    for i in range(layers):
        writer.add_tensor(f"blk.{i}.attn_norm.weight",
                          (1.0 + 0.1 * rng.standard_normal(hidden)).astype(np.float32))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight",
                          (1.0 + 0.1 * rng.standard_normal(hidden)).astype(np.float32))
        wq = mat(n_heads * head_dim, hidden, 0.08)
        wk = mat(n_kv * head_dim, hidden, 0.08)
        if arch == "llama":  # as llama.cpp's converter stores them
            wq = permute_rows(wq, n_heads)
            wk = permute_rows(wk, n_kv)
        _add(writer, f"blk.{i}.attn_q.weight", wq, types.get("q", Q.F32), rng)
        _add(writer, f"blk.{i}.attn_k.weight", wk, types.get("k", Q.F32), rng)
        _add(writer, f"blk.{i}.attn_v.weight", mat(n_kv * head_dim, hidden, 0.08),
             types.get("v", Q.F32), rng)
        if arch == "qwen2":
            writer.add_tensor(f"blk.{i}.attn_q.bias", mat(1, n_heads * head_dim, 0.3)[0])
            writer.add_tensor(f"blk.{i}.attn_k.bias", mat(1, n_kv * head_dim, 0.3)[0])
            writer.add_tensor(f"blk.{i}.attn_v.bias", mat(1, n_kv * head_dim, 0.3)[0])
        _add(writer, f"blk.{i}.attn_output.weight", mat(hidden, n_heads * head_dim, 0.06),
             types.get("o", Q.F32), rng)
        _add(writer, f"blk.{i}.ffn_gate.weight", mat(inter, hidden, 0.06), types.get("gate", Q.F32), rng)
        _add(writer, f"blk.{i}.ffn_up.weight", mat(inter, hidden, 0.06), types.get("up", Q.F32), rng)
        _add(writer, f"blk.{i}.ffn_down.weight", mat(hidden, inter, 0.04), types.get("down", Q.F32), rng)
    writer.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    if "head" in types:  # an untied lm_head; otherwise tied to token_embd
        _add(writer, "output.weight", mat(vocab, hidden, 0.1), types["head"], rng)
    if rope_freqs is not None:
        writer.add_tensor("rope_freqs.weight", np.asarray(rope_freqs, np.float32))
    for name, value in (extra_tensors or {}).items():
        writer.add_tensor(name, value)
    if extra_meta is not None:
        extra_meta(writer)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {"vocab": vocab, "layers": layers, "n_kv": n_kv, "head_dim": head_dim}


def write_gemma3_fixture(path: str, types: dict[str, Q] | None = None, seed: int = 0,
                         hidden: int = 256, n_heads: int = 8, n_kv: int = 1, inter: int = 512,
                         layers: int = 7, head_dim: int = 64, window: int = 4,
                         embd_scale: float = 0.05) -> dict:
    """A tiny gemma3 as llama.cpp's converter writes one: norm weights already (1 + w), no q/k
    permutation, head_dim set apart from hidden/heads, layers 0-4 and 6 sliding, 5 global."""
    types = types or {}
    rng = np.random.default_rng(seed)
    tokens, scores, token_types = spm_vocabulary()
    vocab = len(tokens)
    writer = gguf.GGUFWriter(path, "gemma3")
    writer.add_name("tiny-gemma3")
    writer.add_block_count(layers)
    writer.add_context_length(256)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(inter)
    writer.add_head_count(n_heads)
    writer.add_head_count_kv(n_kv)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_freq_base(1e6)
    writer.add_sliding_window(window)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(token_types)
    writer.add_bos_token_id(tokens.index("<bos>"))
    writer.add_eos_token_id(tokens.index("<eos>"))
    writer.add_unk_token_id(tokens.index("<unk>"))
    writer.add_pad_token_id(tokens.index("<pad>"))
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(False)

    def mat(rows, cols, scale):
        return (rng.standard_normal((rows, cols)) * scale).astype(np.float32)

    def norm(n):
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    _add(writer, "token_embd.weight", mat(vocab, hidden, embd_scale), types.get("embd", Q.F32),
         rng)
    for i in range(layers):
        b = f"blk.{i}"
        for name in ("attn_norm", "post_attention_norm", "ffn_norm", "post_ffw_norm"):
            writer.add_tensor(f"{b}.{name}.weight", norm(hidden))
        writer.add_tensor(f"{b}.attn_q_norm.weight", norm(head_dim))
        writer.add_tensor(f"{b}.attn_k_norm.weight", norm(head_dim))
        _add(writer, f"{b}.attn_q.weight", mat(n_heads * head_dim, hidden, 0.08),
             types.get("q", Q.F32), rng)
        _add(writer, f"{b}.attn_k.weight", mat(n_kv * head_dim, hidden, 0.08),
             types.get("k", Q.F32), rng)
        _add(writer, f"{b}.attn_v.weight", mat(n_kv * head_dim, hidden, 0.08),
             types.get("v", Q.F32), rng)
        _add(writer, f"{b}.attn_output.weight", mat(hidden, n_heads * head_dim, 0.06),
             types.get("o", Q.F32), rng)
        _add(writer, f"{b}.ffn_gate.weight", mat(inter, hidden, 0.06), types.get("gate", Q.F32), rng)
        _add(writer, f"{b}.ffn_up.weight", mat(inter, hidden, 0.06), types.get("up", Q.F32), rng)
        _add(writer, f"{b}.ffn_down.weight", mat(hidden, inter, 0.04), types.get("down", Q.F32), rng)
    writer.add_tensor("output_norm.weight", norm(hidden))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {"vocab": vocab, "layers": layers, "n_kv": n_kv, "head_dim": head_dim}
