"""Build Hugging Face `tokenizer.json` / `tokenizer_config.json` from GGUF tokenizer metadata.

Only byte-level BPE vocabularies (`tokenizer.ggml.model == "gpt2"`) are supported. The
pre-tokenizer is chosen from `tokenizer.ggml.pre` to match the original Hugging Face tokenizer of
that family (llama.cpp names the pre-tokenizer after the model whose regex it reproduces).
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
    if pre in ("llama-bpe", "llama3"):
        return None, {"type": "Sequence", "pretokenizers": [
            _split(LLAMA3_REGEX), _byte_level(False, True, False)]}
    if pre in ("smollm", "starcoder", "refact", "codeshell"):
        return None, {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True}, _byte_level(False, True, True)]}
    if pre in ("gpt-2", "default", "gpt2"):
        return None, _byte_level(False, True, True)
    raise ExportError(
        f"failed to export the tokenizer: pre-tokenizer {pre!r} is not supported "
        "(supported: qwen2, llama-bpe, smollm, starcoder, refact, codeshell, gpt-2)"
    )


class TokenizerData:
    def __init__(self, model: GGUFModel):
        kind = model.meta("tokenizer.ggml.model")
        if kind != "gpt2":
            raise ExportError(
                f"failed to export the tokenizer: tokenizer model {kind!r} is not supported "
                "(only byte-level BPE, 'gpt2')"
            )
        self.tokens: list[str] = list(model.meta("tokenizer.ggml.tokens"))
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
        self.chat_template = model.meta("tokenizer.chat_template")
        self.context_length = model.hp.context_length
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
        for name in ("<|im_end|>", "<|endoftext|>"):
            if name in lookup and lookup[name] not in ids:
                if name == "<|im_end|>" and not (self.chat_template and name in self.chat_template):
                    continue
                ids.append(lookup[name])
        return ids

    def tokenizer_json(self) -> dict[str, Any]:
        normalizer, pre = pre_tokenizer_for(self.pre)
        vocab = {tok: i for i, tok in enumerate(self.tokens)}
        added = [
            {"id": i, "content": tok, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": special}
            for i, tok, special in self.added()
        ]
        return {
            "version": "1.0",
            "truncation": None,
            "padding": None,
            "added_tokens": added,
            "normalizer": normalizer,
            "pre_tokenizer": pre,
            "post_processor": _byte_level(False, False, False),
            "decoder": _byte_level(False, False, False),
            "model": {
                "type": "BPE",
                "dropout": None,
                "unk_token": None,
                "continuing_subword_prefix": "",
                "end_of_word_suffix": "",
                "fuse_unk": False,
                "byte_fallback": False,
                "ignore_merges": False,
                "vocab": vocab,
                "merges": self.merges,
            },
        }

    def tokenizer_config(self) -> dict[str, Any]:
        decoder = {
            str(i): {"content": tok, "lstrip": False, "normalized": False, "rstrip": False,
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
            "tokenizer_class": "Qwen2Tokenizer" if self.pre == "qwen2" else "GPT2Tokenizer",
        }
        if self.chat_template:
            cfg["chat_template"] = self.chat_template
        return cfg
