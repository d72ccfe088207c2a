"""Build Hugging Face `tokenizer.json` / `tokenizer_config.json` from GGUF tokenizer metadata.

Two GGUF tokenizer models are supported:

- byte-level BPE (`tokenizer.ggml.model == "gpt2"`): the pre-tokenizer is chosen from
  `tokenizer.ggml.pre` to match the original Hugging Face tokenizer of that family (llama.cpp
  names the pre-tokenizer after the model whose regex it reproduces);
- SentencePiece BPE (`"llama"`, e.g. gemma3): vocabulary with scores and `<0xNN>` byte tokens.
  It becomes an HF BPE model with `byte_fallback`, its merges derived from the scores the way
  HF's SentencePieceExtractor does (every split of a token into two vocabulary pieces, ranked by
  the token's score), so that it merges in the order llama.cpp's SPM tokenizer does (the
  highest-scoring adjacent pair first). Spaces become "▁" (a prefix space only where the GGUF's
  `add_space_prefix` asks); CONTROL and USER_DEFINED tokens are added tokens matched on the raw
  text first, as llama.cpp partitions them out before tokenizing; BOS is added by the
  post-processor when `add_bos_token` is set (gemma needs `<bos>`).
"""

from __future__ import annotations

from typing import Any

from .gguf_model import ExportError, GGUFModel

# token types (gguf.TokenType)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


# pre-tokenizers that llama.cpp runs with ignore_merges (llama-vocab.cpp)
IGNORE_MERGES = ("llama-bpe", "llama3", "llama-v3")

# o200k (gpt-4o, Phi-4-mini): the original tokenizer.json regex, as llama-vocab.cpp quotes it
GPT4O_REGEX = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+"
    r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+"
    r"[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _byte_level(add_prefix_space: bool = False, trim_offsets: bool = True, use_regex: bool = True):
    return {"type": "ByteLevel", "add_prefix_space": add_prefix_space,
            "trim_offsets": trim_offsets, "use_regex": use_regex}


def _split(regex: str) -> dict[str, Any]:
    return {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False}


def pre_tokenizer_for(pre: str) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """(normalizer, pre_tokenizer) reproducing the original tokenizer of a llama.cpp pre type."""
    if pre == "qwen2":
        return {"type": "NFC"}, {"type": "Sequence", "pretokenizers": [
            _split(QWEN2_REGEX), _byte_level(False, False, False)]}
    if pre in ("llama-bpe", "llama3", "llama-v3", "dbrx", "smaug-bpe"):
        return None, {"type": "Sequence", "pretokenizers": [
            _split(LLAMA3_REGEX), _byte_level(False, True, False)]}
    if pre in ("gpt-4o", "llama4"):
        return None, {"type": "Sequence", "pretokenizers": [
            _split(GPT4O_REGEX), _byte_level(False, True, False)]}
    if pre in ("smollm", "starcoder", "refact", "codeshell"):
        return None, {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True}, _byte_level(False, True, True)]}
    if pre in ("gpt-2", "default", "gpt2", "phi-2", "olmo", "mpt"):
        return None, _byte_level(False, True, True)
    raise ExportError(
        f"failed to export the tokenizer: pre-tokenizer {pre!r} is not supported "
        "(supported: qwen2, llama-bpe, llama3, dbrx, smaug-bpe, smollm, starcoder, refact, "
        "codeshell, gpt-2, phi-2, olmo, mpt, gpt-4o)"
    )


def spm_merges(tokens: list[str], scores: list[float], types: list[int]) -> list[list[str]]:
    """BPE merges of a SentencePiece BPE vocabulary: for every NORMAL token, each split into two
    pieces that are both in the vocabulary, ordered by the token's score (highest first), then
    by the pieces' ids (as HF's SentencePieceExtractor orders them)."""
    vocab = {tok: i for i, tok in enumerate(tokens) if types[i] != BYTE}
    found = []
    for i, tok in enumerate(tokens):
        if types[i] != NORMAL or len(tok) < 2:
            continue
        local = []
        for cut in range(1, len(tok)):
            left, right = tok[:cut], tok[cut:]
            if left in vocab and right in vocab:
                local.append((vocab[left], vocab[right], left, right))
        local.sort()
        found.extend((-float(scores[i]), i, left, right) for _, _, left, right in local)
    # stable: ties keep the vocabulary order
    found.sort(key=lambda m: (m[0], m[1]))
    return [[left, right] for _, _, left, right in found]


class TokenizerData:
    def __init__(self, model: GGUFModel):
        kind = model.meta("tokenizer.ggml.model")
        if kind not in ("gpt2", "llama"):
            raise ExportError(
                f"failed to export the tokenizer: tokenizer model {kind!r} is not supported "
                "(supported: byte-level BPE 'gpt2', SentencePiece BPE 'llama')"
            )
        self.kind = str(kind)
        self.tokens: list[str] = list(model.meta("tokenizer.ggml.tokens"))
        scores = model.meta("tokenizer.ggml.scores")
        self.scores: list[float] = list(scores) if scores is not None else []
        if self.kind == "llama" and len(self.scores) != len(self.tokens):
            raise ExportError(
                "failed to export the tokenizer: a SentencePiece ('llama') vocabulary needs "
                f"tokenizer.ggml.scores for each of its {len(self.tokens)} tokens")
        types = model.meta("tokenizer.ggml.token_type")
        self.types: list[int] = list(types) if types is not None else [NORMAL] * len(self.tokens)
        self.merges: list[str] = list(model.meta("tokenizer.ggml.merges") or [])
        self.pre: str = str(model.meta("tokenizer.ggml.pre", "default"))
        self.bos = model.meta("tokenizer.ggml.bos_token_id")
        self.eos = model.meta("tokenizer.ggml.eos_token_id")
        self.eot = model.meta("tokenizer.ggml.eot_token_id")
        self.pad = model.meta("tokenizer.ggml.padding_token_id")
        self.unk = model.meta("tokenizer.ggml.unknown_token_id")
        self.add_bos = bool(model.meta("tokenizer.ggml.add_bos_token", False))
        self.add_eos = bool(model.meta("tokenizer.ggml.add_eos_token", False))
        self.add_space_prefix = bool(model.meta("tokenizer.ggml.add_space_prefix",
                                                self.kind == "llama"))
        self.chat_template = model.meta("tokenizer.chat_template")
        self.context_length = model.hp.context_length
        name = str(model.hp.name).lower()
        self.phi3_names = "phi-3" in name or "phi3" in name
        self.arch = model.hp.arch

    def token(self, idx) -> str | None:
        if idx is None or not (0 <= int(idx) < len(self.tokens)):
            return None
        return self.tokens[int(idx)]

    def added(self) -> list[tuple[int, str, bool]]:
        """(id, content, special) for CONTROL and USER_DEFINED tokens."""
        out = []
        for i, (tok, ty) in enumerate(zip(self.tokens, self.types)):
            if ty in (CONTROL, USER_DEFINED):
                out.append((i, tok, ty == CONTROL))
        return out

    def eos_ids(self) -> list[int]:
        ids: list[int] = []
        for cand in (self.eos, self.eot):
            if cand is not None and int(cand) not in ids:
                ids.append(int(cand))
        # chat models end a turn with <|im_end|>, base text with <|endoftext|>
        lookup = {tok: i for i, tok, _ in self.added()}
        # gemma ends a turn with <end_of_turn> (Hugging Face's generation_config stops on both)
        for name in ("<|im_end|>", "<|endoftext|>", "<end_of_turn>"):
            if name in lookup and lookup[name] not in ids:
                if name == "<|im_end|>" and not (self.chat_template and name in self.chat_template):
                    continue
                ids.append(lookup[name])
        return ids

    def tokenizer_json(self) -> dict[str, Any]:
        if self.kind == "llama":
            return self.spm_tokenizer_json()
        normalizer, pre = pre_tokenizer_for(self.pre)
        vocab = {tok: i for i, tok in enumerate(self.tokens)}
        added = self.added_tokens()
        return {
            "version": "1.0",
            "truncation": None,
            "padding": None,
            "added_tokens": added,
            "normalizer": normalizer,
            "pre_tokenizer": pre,
            "post_processor": _byte_level(False, False, False) if self.bos_processor() is None
            else {"type": "Sequence", "processors": [_byte_level(False, False, False),
                                                     self.bos_processor()]},
            "decoder": _byte_level(False, False, False),
            "model": {
                "type": "BPE",
                "dropout": None,
                "unk_token": None,
                "continuing_subword_prefix": "",
                "end_of_word_suffix": "",
                "fuse_unk": False,
                "byte_fallback": False,
                # llama.cpp's llama3 pre-type takes a word that is a vocabulary token whole
                # (tiktoken), as HF's Llama 3 tokenizer.json does with ignore_merges
                "ignore_merges": self.pre in IGNORE_MERGES,
                "vocab": vocab,
                "merges": self.merges,
            },
        }

    def rstrip(self, tok: str, special: bool) -> bool:
        """Whether an added token swallows the whitespace after it. llama.cpp (llama-vocab.cpp,
        by general.name) gives Phi-3's special tokens RSTRIP, as Phi-3's own tokenizer.json
        does, except <unk>, <s> and <|endoftext|>."""
        if not self.phi3_names:
            return False
        if tok == "</s>":
            return True
        return special and tok not in ("<unk>", "<s>", "<|endoftext|>")

    def added_tokens(self) -> list[dict[str, Any]]:
        return [
            {"id": i, "content": tok, "single_word": False, "lstrip": False,
             "rstrip": self.rstrip(tok, special), "normalized": False, "special": special}
            for i, tok, special in self.added()
        ]

    def bos_processor(self) -> dict[str, Any] | None:
        """A post-processor that puts BOS first when the GGUF's add_bos_token asks (gemma's
        <bos>, Llama 3's <|begin_of_text|>); applied only where special tokens are added."""
        bos = self.token(self.bos)
        if not (self.add_bos and bos is not None):
            return None
        spec = {"id": bos, "ids": [int(self.bos)], "tokens": [bos]}
        return {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos, "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": bos, "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": bos, "type_id": 1}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {bos: spec},
        }

    def spm_tokenizer_json(self) -> dict[str, Any]:
        """SentencePiece BPE as llama.cpp's SPM tokenizer runs it (see the module doc)."""
        normalizers: list[dict[str, Any]] = []
        if self.add_space_prefix:
            normalizers.append({"type": "Prepend", "prepend": "▁"})
        normalizers.append({"type": "Replace", "pattern": {"String": " "}, "content": "▁"})
        decoders: list[dict[str, Any]] = [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
        ]
        if self.add_space_prefix:
            decoders.append({"type": "Strip", "content": " ", "start": 1, "stop": 0})
        post = self.bos_processor()
        return {
            "version": "1.0",
            "truncation": None,
            "padding": None,
            "added_tokens": self.added_tokens(),
            "normalizer": {"type": "Sequence", "normalizers": normalizers},
            "pre_tokenizer": None,
            "post_processor": post,
            "decoder": {"type": "Sequence", "decoders": decoders},
            "model": {
                "type": "BPE",
                "dropout": None,
                "unk_token": self.token(self.unk),
                "continuing_subword_prefix": None,
                "end_of_word_suffix": None,
                "fuse_unk": True,
                "byte_fallback": True,
                "ignore_merges": False,
                "vocab": {tok: i for i, tok in enumerate(self.tokens)},
                "merges": spm_merges(self.tokens, self.scores, self.types),
            },
        }

    def tokenizer_config(self) -> dict[str, Any]:
        decoder = {
            str(i): {"content": tok, "lstrip": False, "normalized": False,
                     "rstrip": self.rstrip(tok, special),
                     "single_word": False, "special": special}
            for i, tok, special in self.added()
        }
        cfg: dict[str, Any] = {
            "add_bos_token": self.add_bos,
            "add_eos_token": self.add_eos,
            "add_prefix_space": False,
            "added_tokens_decoder": decoder,
            "bos_token": self.token(self.bos),
            "eos_token": self.token(self.eos),
            "pad_token": self.token(self.pad),
            "unk_token": self.token(self.unk),
            "clean_up_tokenization_spaces": False,
            "errors": "replace",
            "model_max_length": self.context_length,
            "split_special_tokens": False,
            "tokenizer_class": self.tokenizer_class(),
        }
        if self.chat_template:
            cfg["chat_template"] = self.chat_template
        return cfg

    def tokenizer_class(self) -> str:
        if self.kind == "llama":
            return "GemmaTokenizer" if self.arch == "gemma3" else "LlamaTokenizer"
        return "Qwen2Tokenizer" if self.pre == "qwen2" else "GPT2Tokenizer"
