"""Write a model folder from a GGUF file."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from typing import Callable

import onnx

from . import __version__, contract
from .gguf_model import ExportError, GGUFModel
from .decoders import BUILDERS
from .gemma3 import Gemma3Builder
from .graph import PRECISIONS, TARGETS, GraphBuilder, WeightFile
from .tokenizer import TokenizerData

MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
# Hugging Face's (and onnxruntime-genai's) model_type where it is not the GGUF architecture:
# a text-only gemma3 (Gemma3ForCausalLM) is "gemma3_text"; "gemma3" is the multimodal wrapper.
MODEL_TYPES = {"gemma3": "gemma3_text"}


def _write_json(folder: str, name: str, value) -> None:
    with open(os.path.join(folder, name), "w", encoding="utf-8") as fh:
        json.dump(value, fh, indent=2, ensure_ascii=False)
        fh.write("\n")


def hf_config(model: GGUFModel, tok: TokenizerData, target: str, precision: str,
              tensor_forms: dict[str, str] | None = None) -> dict:
    hp = model.hp
    arch_names = {"qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM",
                  "qwen3": "Qwen3ForCausalLM", "smollm3": "SmolLM3ForCausalLM",
                  "olmo2": "Olmo2ForCausalLM", "gpt2": "GPT2LMHeadModel",
                  "phi2": "PhiForCausalLM", "phi3": "Phi3ForCausalLM",
                  "gemma3": "Gemma3ForCausalLM"}
    eos = tok.eos_ids()
    config = {
        "architectures": [arch_names[hp.arch]],
        "model_type": MODEL_TYPES.get(hp.arch, hp.arch),
        "hidden_size": hp.hidden,
        "intermediate_size": hp.intermediate,
        "num_hidden_layers": hp.n_layers,
        "num_attention_heads": hp.n_heads,
        "num_key_value_heads": hp.n_kv_heads,
        "head_dim": hp.head_dim,
        "hidden_act": "gelu_pytorch_tanh" if hp.arch in ("gemma3", "gpt2", "phi2") else "silu",
        "rms_norm_eps": hp.rms_eps,
        "rope_theta": hp.rope_base,
        "max_position_embeddings": hp.context_length,
        "vocab_size": hp.vocab_size,
        "tie_word_embeddings": hp.tied_embeddings,
        "attention_bias": hp.qkv_bias,
        "bos_token_id": None if tok.bos is None else int(tok.bos),
        "eos_token_id": eos[0] if len(eos) == 1 else eos,
        "pad_token_id": None if tok.pad is None else int(tok.pad),
        "torch_dtype": "float32" if target == "cpu" else "float16",
        "codegen_export": {
            "exporter_version": __version__,
            "source": os.path.basename(model.path),
            "name": hp.name,
            "target": target,
            "precision": precision,
            "activation_dtype": "float32" if target == "cpu" else "float16",
            "logits_dtype": "float32",
            # the optional input that names the positions whose logits the graph computes
            # (ONNX Runtime lists an input with a default among the initializers, not the inputs)
            "logits_positions": "logits_positions",
            "gguf_tensor_types": model.tensor_types(),
            # native: what each GGUF weight became (exact block form or a wider float)
            "tensors": tensor_forms or {},
        },
    }
    if hp.arch == "llama" and hp.sliding_window:
        config["sliding_window"] = hp.sliding_window
    if hp.arch == "gemma3":
        config.update({
            "sliding_window": hp.sliding_window,
            "layer_types": ["sliding_attention" if s else "full_attention"
                            for s in hp.swa_layers],
            "rope_local_base_freq": hp.rope_local_base,
            "query_pre_attn_scalar": float(1.0 / hp.attn_scale**2),
            "final_logit_softcapping": None,
            "attn_logit_softcapping": None,
        })
    return config


def generation_config(tok: TokenizerData) -> dict:
    eos = tok.eos_ids()
    return {
        "bos_token_id": None if tok.bos is None else int(tok.bos),
        "eos_token_id": eos[0] if len(eos) == 1 else eos,
        "pad_token_id": None if tok.pad is None else int(tok.pad),
        "do_sample": False,
        "max_length": tok.context_length,
    }


def genai_config(model: GGUFModel, tok: TokenizerData, target: str) -> dict:
    hp = model.hp
    eos = tok.eos_ids()
    provider_options = [] if target == "cpu" else [{"cuda": {"enable_cuda_graph": "0"}}]
    pad = tok.pad if tok.pad is not None else eos[0]
    return {
        "model": {
            "bos_token_id": None if tok.bos is None else int(tok.bos),
            "context_length": hp.context_length,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai",
                                    "provider_options": provider_options},
                "filename": MODEL_FILE,
                "head_size": hp.head_dim,
                "hidden_size": hp.hidden,
                "inputs": {
                    "input_ids": "input_ids",
                    "attention_mask": "attention_mask",
                    "past_key_names": "past_key_values.%d.key",
                    "past_value_names": "past_key_values.%d.value",
                },
                "outputs": {
                    "logits": "logits",
                    "present_key_names": "present.%d.key",
                    "present_value_names": "present.%d.value",
                },
                "num_attention_heads": hp.n_heads,
                "num_hidden_layers": hp.n_layers,
                "num_key_value_heads": hp.n_kv_heads,
            },
            "eos_token_id": eos[0] if len(eos) == 1 else eos,
            "pad_token_id": int(pad),
            "type": MODEL_TYPES.get(hp.arch, hp.arch),
            "vocab_size": hp.vocab_size,
        },
        "search": {
            "diversity_penalty": 0.0,
            "do_sample": False,
            "early_stopping": True,
            "length_penalty": 1.0,
            "max_length": hp.context_length,
            "min_length": 0,
            "no_repeat_ngram_size": 0,
            "num_beams": 1,
            "num_return_sequences": 1,
            "past_present_share_buffer": True,
            "repetition_penalty": 1.0,
            "temperature": 1.0,
            "top_k": 1,
            "top_p": 1.0,
        },
    }


def check(gguf_path: str) -> dict:
    """What the export checks before building anything, without building: the architecture,
    every tensor name known to its graph, every metadata key read or allow-listed, and the
    tokenizer. Raises ExportError naming the first problem."""
    model = GGUFModel(gguf_path)
    TokenizerData(model)
    contract.check_metadata(model)
    hp = model.hp
    return {"ok": True, "architecture": hp.arch, "layers": hp.n_layers, "hidden": hp.hidden,
            "tensors": len(model.tensors), "metadata_keys": len(model.reader.fields),
            "rope_freq_factors": hp.rope_freq_factors}


def export(gguf_path: str, out_dir: str, target: str = "cpu", precision: str = "native",
           progress: Callable[[str], None] | None = None,
           accuracy_level: int | None = None, head_precision: str | None = None) -> dict:
    """Export `gguf_path` into `out_dir` (written to a sibling temp folder, then renamed)."""
    if target not in TARGETS:
        raise ExportError(f"failed to export: unknown target {target!r} (expected one of {TARGETS})")
    if precision not in PRECISIONS:
        raise ExportError(
            f"failed to export: unknown precision {precision!r} (expected one of {PRECISIONS})")
    progress = progress or (lambda _msg: None)
    started = time.time()
    model = GGUFModel(gguf_path)
    tok = TokenizerData(model)
    contract.check_metadata(model)
    out_dir = os.path.abspath(out_dir)
    tmp = out_dir + ".partial"
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    os.makedirs(tmp)
    try:
        weights = WeightFile(tmp, DATA_FILE)
        try:
            builder_class = {"gemma3": Gemma3Builder, **BUILDERS}.get(model.hp.arch, GraphBuilder)
            builder = builder_class(model, target, precision, weights, progress, accuracy_level,
                                    head_precision)
            onnx_model = builder.build()
            contract.check_all_read(model)
        finally:
            weights.close()
        progress("writing model.onnx")
        onnx.save_model(onnx_model, os.path.join(tmp, MODEL_FILE))
        del onnx_model
        progress("writing tokenizer and configs")
        _write_json(tmp, "tokenizer.json", tok.tokenizer_json())
        _write_json(tmp, "tokenizer_config.json", tok.tokenizer_config())
        _write_json(tmp, "config.json", hf_config(model, tok, target, precision,
                                                     builder.tensor_forms))
        _write_json(tmp, "generation_config.json", generation_config(tok))
        _write_json(tmp, "genai_config.json", genai_config(model, tok, target))
        if os.path.exists(out_dir):
            shutil.rmtree(out_dir)
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    size = sum(os.path.getsize(os.path.join(out_dir, f)) for f in os.listdir(out_dir))
    return {"out_dir": out_dir, "seconds": round(time.time() - started, 1), "bytes": size,
            "hparams": model.hp.to_dict()}


def main_progress(msg: str) -> None:
    print(f"progress: {msg}", file=sys.stderr, flush=True)
