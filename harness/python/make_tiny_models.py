#!/usr/bin/env python3
"""Tiny decoder-only test models for the engine's tests (no download, a few hundred KiB each).

    make_tiny_models.py build OUT_DIR
        writes OUT_DIR/optimum (Optimum layout: position_ids, plain attention, growing cache),
        OUT_DIR/genai (onnxruntime-genai layout: com.microsoft GroupQueryAttention with fused
        rotary, seqlens_k / total_sequence_length computed from attention_mask in the graph) and
        OUT_DIR/genai-fp16 (the genai layout with fp16 KV cache and logits).
        All three share the same weights, a byte-level BPE tokenizer and a ChatML template.
    make_tiny_models.py reference MODEL_DIR --ids 1,2,3 --max-new N [--eos 5,6]
        prints the greedy continuation of the prompt ids as JSON, computed with numpy by full
        recomputation (no KV cache), independently of ONNX Runtime.

Pinned: numpy==2.3.5 onnx==1.19.1.
"""
import argparse
import json
import os
import sys

import numpy as np

VOCAB_BYTES = 256
D, H, KVH, HD, LAYERS, FF, MAX_POS = 64, 4, 2, 16, 2, 128, 1024
ROPE_BASE = 10000.0
EPS = 1e-6
MERGES = [("d", "e"), ("de", "f"), ("r", "e"), ("re", "t"), ("ret", "u"), ("retu", "r"),
          ("retur", "n"), ("Ġ", "Ġ"), ("ĠĠ", "ĠĠ"), ("i", "n"), ("Ġ", "x"), ("o", "r")]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
          "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def vocab():
    b2u = bytes_to_unicode()
    v = {b2u[b]: b for b in range(256)}
    for a, b in MERGES:
        v[a + b] = len(v)
    specials = {s: len(v) + i for i, s in enumerate(SPECIALS)}
    return v, specials


def weights():
    v, specials = vocab()
    n_vocab = len(v) + len(specials)
    rng = np.random.default_rng(1234)
    f = np.float32
    w = {"embed": rng.normal(0, 1, (n_vocab, D)).astype(f)}
    for i in range(LAYERS):
        w[f"l{i}.ln1"] = (1 + 0.1 * rng.normal(size=D)).astype(f)
        w[f"l{i}.ln2"] = (1 + 0.1 * rng.normal(size=D)).astype(f)
        w[f"l{i}.q"] = rng.normal(0, D ** -0.5, (D, H * HD)).astype(f)
        w[f"l{i}.k"] = rng.normal(0, D ** -0.5, (D, KVH * HD)).astype(f)
        w[f"l{i}.v"] = rng.normal(0, D ** -0.5, (D, KVH * HD)).astype(f)
        w[f"l{i}.o"] = rng.normal(0, (H * HD) ** -0.5, (H * HD, D)).astype(f)
        w[f"l{i}.gate"] = rng.normal(0, D ** -0.5, (D, FF)).astype(f)
        w[f"l{i}.up"] = rng.normal(0, D ** -0.5, (D, FF)).astype(f)
        w[f"l{i}.down"] = rng.normal(0, FF ** -0.5, (FF, D)).astype(f)
    w["norm"] = np.ones(D, f)
    w["lm_head"] = (3.0 * rng.normal(0, D ** -0.5, (D, n_vocab))).astype(f)
    # Make the model prefer printable ASCII so that its text is readable in test failures.
    bias = np.full(n_vocab, -3.0, f)
    for tok, i in v.items():
        if i < 256 and 32 <= i < 127:
            bias[i] = 0.0
        elif i >= 256:
            bias[i] = 0.0
    bias[[specials[s] for s in SPECIALS]] = -6.0
    w["lm_bias"] = bias
    return w, n_vocab


# ---------------------------------------------------------------- numpy reference (no KV cache)

def rms(x, g):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + EPS) * g


def rope(x, pos):  # x [heads, S, HD]
    inv = (1.0 / ROPE_BASE ** (np.arange(0, HD, 2, dtype=np.float64) / HD)).astype(np.float32)
    ang = pos[:, None].astype(np.float32) * inv[None, :]
    c, s = np.cos(ang), np.sin(ang)
    x1, x2 = x[..., : HD // 2], x[..., HD // 2:]
    return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1)


def forward(w, ids):
    x = w["embed"][np.array(ids)]
    S = len(ids)
    pos = np.arange(S)
    for i in range(LAYERS):
        h = rms(x, w[f"l{i}.ln1"])
        q = (h @ w[f"l{i}.q"]).reshape(S, H, HD).transpose(1, 0, 2)
        k = (h @ w[f"l{i}.k"]).reshape(S, KVH, HD).transpose(1, 0, 2)
        v = (h @ w[f"l{i}.v"]).reshape(S, KVH, HD).transpose(1, 0, 2)
        q, k = rope(q, pos), rope(k, pos)
        k = np.repeat(k, H // KVH, axis=0)
        v = np.repeat(v, H // KVH, axis=0)
        sc = q @ k.transpose(0, 2, 1) / np.sqrt(HD)
        sc = np.where(np.tril(np.ones((S, S), bool)), sc, -1e9)
        sc = np.exp(sc - sc.max(-1, keepdims=True))
        sc /= sc.sum(-1, keepdims=True)
        a = (sc @ v).transpose(1, 0, 2).reshape(S, H * HD)
        x = x + a @ w[f"l{i}.o"]
        h = rms(x, w[f"l{i}.ln2"])
        g = h @ w[f"l{i}.gate"]
        x = x + ((g / (1 + np.exp(-g))) * (h @ w[f"l{i}.up"])) @ w[f"l{i}.down"]
    return rms(x, w["norm"]) @ w["lm_head"] + w["lm_bias"]


def reference(ids, max_new, eos):
    w, _ = weights()
    ids = list(ids)
    out = []
    for _ in range(max_new):
        logits = forward(w, ids)[-1]
        t = int(np.argmax(logits))
        out.append(t)
        if t in eos:
            break
        ids.append(t)
    return out


# ---------------------------------------------------------------- ONNX graphs

def build(out_dir):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w, n_vocab = weights()
    v, specials = vocab()

    def graph(layout, kv_type):
        nodes, inits = [], []
        counter = [0]

        def name(p):
            counter[0] += 1
            return f"{p}_{counter[0]}"

        def const(arr, p="c"):
            n = name(p)
            inits.append(numpy_helper.from_array(np.asarray(arr), n))
            return n

        def op(t, ins, n_out=1, domain=None, **attrs):
            outs = [name(t) for _ in range(n_out)]
            kw = {"domain": domain} if domain else {}
            nodes.append(helper.make_node(t, ins, outs, name=name(t + "_node"), **kw, **attrs))
            return outs if n_out > 1 else outs[0]

        def rmsnorm(x, g):
            ms = op("ReduceMean", [op("Mul", [x, x])], axes=[-1], keepdims=1)
            return op("Mul", [op("Div", [x, op("Sqrt", [op("Add", [ms, const(np.float32(EPS))])])]),
                              const(g, "ln")])

        kv_elem = TensorProto.FLOAT16 if kv_type == "fp16" else TensorProto.FLOAT
        inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
                  helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "total"])]
        if layout == "optimum":
            inputs.append(helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch", "seq"]))
        outputs = [helper.make_tensor_value_info("logits", kv_elem, ["batch", "seq", n_vocab])]
        for i in range(LAYERS):
            for kind in ("key", "value"):
                inputs.append(helper.make_tensor_value_info(
                    f"past_key_values.{i}.{kind}", kv_elem, ["batch", KVH, "past", HD]))
                outputs.append(helper.make_tensor_value_info(
                    f"present.{i}.{kind}", kv_elem, ["batch", KVH, "present", HD]))

        x = op("Gather", [const(w["embed"], "embed"), "input_ids"], axis=0)
        if layout == "optimum":
            inv = (1.0 / ROPE_BASE ** (np.arange(0, HD, 2, dtype=np.float64) / HD)).astype(np.float32)
            ang = op("Mul", [op("Unsqueeze", [op("Cast", ["position_ids"], to=TensorProto.FLOAT),
                                              const(np.array([-1], np.int64))]), const(inv)])
            cos = op("Unsqueeze", [op("Cos", [ang]), const(np.array([1], np.int64))])
            sin = op("Unsqueeze", [op("Sin", [ang]), const(np.array([1], np.int64))])
            total = op("Gather", [op("Shape", ["attention_mask"]), const(np.int64(1))], axis=0)
            seq = op("Gather", [op("Shape", ["input_ids"]), const(np.int64(1))], axis=0)
            past = op("Sub", [total, seq])
            q_idx = op("Unsqueeze", [op("Range", [past, total, const(np.int64(1))]),
                                     const(np.array([1], np.int64))])
            k_idx = op("Unsqueeze", [op("Range", [const(np.int64(0)), total, const(np.int64(1))]),
                                     const(np.array([0], np.int64))])
            causal = op("LessOrEqual", [k_idx, q_idx])
            pad = op("Unsqueeze", [op("Cast", ["attention_mask"], to=TensorProto.BOOL),
                                   const(np.array([1, 2], np.int64))])
            allowed = op("And", [causal, pad])

            def rot(t):
                a, b = op("Split", [t, const(np.array([HD // 2, HD // 2], np.int64))], n_out=2, axis=-1)
                return op("Concat", [op("Sub", [op("Mul", [a, cos]), op("Mul", [b, sin])]),
                                     op("Add", [op("Mul", [b, cos]), op("Mul", [a, sin])])], axis=-1)
        else:
            mask_sum = op("ReduceSum", ["attention_mask", const(np.array([1], np.int64))], keepdims=0)
            seqlens_k = op("Cast", [op("Sub", [mask_sum, const(np.int64(1))])], to=TensorProto.INT32)
            total_len = op("Cast", [op("Gather", [op("Shape", ["attention_mask"]), const(np.int64(1))], axis=0)],
                           to=TensorProto.INT32)
            inv = (1.0 / ROPE_BASE ** (np.arange(0, HD, 2, dtype=np.float64) / HD)).astype(np.float32)
            ang = np.arange(MAX_POS, dtype=np.float32)[:, None] * inv[None, :]
            cos_cache, sin_cache = const(np.cos(ang).astype(np.float32)), const(np.sin(ang).astype(np.float32))

        for i in range(LAYERS):
            pk, pv = f"past_key_values.{i}.key", f"past_key_values.{i}.value"
            if kv_type == "fp16":
                pk = op("Cast", [pk], to=TensorProto.FLOAT)
                pv = op("Cast", [pv], to=TensorProto.FLOAT)
            h = rmsnorm(x, w[f"l{i}.ln1"])
            q = op("MatMul", [h, const(w[f"l{i}.q"], "wq")])
            k = op("MatMul", [h, const(w[f"l{i}.k"], "wk")])
            vv = op("MatMul", [h, const(w[f"l{i}.v"], "wv")])
            if layout == "optimum":
                def heads(t, n):
                    return op("Transpose", [op("Reshape", [t, const(np.array([0, 0, n, HD], np.int64))])],
                              perm=[0, 2, 1, 3])
                qh, kh, vh = rot(heads(q, H)), rot(heads(k, KVH)), heads(vv, KVH)
                kc = op("Concat", [pk, kh], axis=2)
                vc = op("Concat", [pv, vh], axis=2)
                pres_k, pres_v = kc, vc

                def rep(t):
                    e = op("Expand", [op("Unsqueeze", [t, const(np.array([2], np.int64))]),
                                      const(np.array([1, 1, H // KVH, 1, 1], np.int64))])
                    return op("Reshape", [e, const(np.array([0, H, -1, HD], np.int64))])
                kr, vr = rep(kc), rep(vc)
                sc = op("Div", [op("MatMul", [qh, op("Transpose", [kr], perm=[0, 1, 3, 2])]),
                                const(np.float32(np.sqrt(HD)))])
                sc = op("Where", [allowed, sc, const(np.float32(-1e9))])
                a = op("MatMul", [op("Softmax", [sc], axis=-1), vr])
                a = op("Reshape", [op("Transpose", [a], perm=[0, 2, 1, 3]),
                                   const(np.array([0, 0, H * HD], np.int64))])
            else:
                a, pres_k, pres_v = op(
                    "GroupQueryAttention",
                    [q, k, vv, pk, pv, seqlens_k, total_len, cos_cache, sin_cache],
                    n_out=3, domain="com.microsoft", num_heads=H, kv_num_heads=KVH,
                    do_rotary=1, rotary_interleaved=0, scale=float(1.0 / np.sqrt(HD)))
            for kind, t in (("key", pres_k), ("value", pres_v)):
                if kv_type == "fp16":
                    t = op("Cast", [t], to=TensorProto.FLOAT16)
                nodes.append(helper.make_node("Identity", [t], [f"present.{i}.{kind}"]))
            x = op("Add", [x, op("MatMul", [a, const(w[f"l{i}.o"], "wo")])])
            h = rmsnorm(x, w[f"l{i}.ln2"])
            g = op("MatMul", [h, const(w[f"l{i}.gate"], "wg")])
            u = op("MatMul", [h, const(w[f"l{i}.up"], "wu")])
            m = op("Mul", [op("Mul", [g, op("Sigmoid", [g])]), u])
            x = op("Add", [x, op("MatMul", [m, const(w[f"l{i}.down"], "wd")])])
        logits = op("Add", [op("MatMul", [rmsnorm(x, w["norm"]), const(w["lm_head"], "lm")]),
                            const(w["lm_bias"], "bias")])
        if kv_type == "fp16":
            logits = op("Cast", [logits], to=TensorProto.FLOAT16)
        nodes.append(helper.make_node("Identity", [logits], ["logits"]))
        g = helper.make_graph(nodes, f"tiny_{layout}", inputs, outputs, inits)
        opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
        model = helper.make_model(g, opset_imports=opsets, producer_name="codegen-harness-tiny")
        model.ir_version = 8
        if layout == "optimum":
            onnx.checker.check_model(model)
        return model

    b2u = bytes_to_unicode()
    tok = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True} for s, i in specials.items()],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": v, "merges": [f"{a} {b}" for a, b in MERGES]},
    }
    assert len(b2u) == 256
    tok_cfg = {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
               "chat_template": CHATML, "model_max_length": MAX_POS,
               "added_tokens_decoder": {str(i): {"content": s, "special": True} for s, i in specials.items()}}
    gen_cfg = {"bos_token_id": specials["<|endoftext|>"],
               "eos_token_id": [specials["<|im_end|>"], specials["<|endoftext|>"]],
               "pad_token_id": specials["<|endoftext|>"]}
    cfg = {"architectures": ["TinyForCausalLM"], "model_type": "tiny", "hidden_size": D,
           "num_attention_heads": H, "num_key_value_heads": KVH, "num_hidden_layers": LAYERS,
           "head_dim": HD, "vocab_size": n_vocab, "max_position_embeddings": MAX_POS,
           "rope_theta": ROPE_BASE, "eos_token_id": specials["<|im_end|>"]}
    for folder, layout, kv in (("optimum", "optimum", "fp32"), ("genai", "genai", "fp32"),
                               ("genai-fp16", "genai", "fp16")):
        d = os.path.join(out_dir, folder)
        os.makedirs(d, exist_ok=True)
        onnx.save(graph(layout, kv), os.path.join(d, "model.onnx"))
        files = [("tokenizer.json", tok), ("tokenizer_config.json", tok_cfg),
                 ("generation_config.json", gen_cfg), ("config.json", cfg)]
        if layout == "genai":
            files.append(("genai_config.json", genai_config(n_vocab, specials)))
        for fname, obj in files:
            with open(os.path.join(d, fname), "w", encoding="utf-8") as fh:
                json.dump(obj, fh, ensure_ascii=False, indent=1)


def genai_config(n_vocab, specials):
    """What onnxruntime-genai needs to run the genai-layout folders (for the benchmark's check)."""
    return {
        "model": {
            "bos_token_id": specials["<|endoftext|>"], "context_length": MAX_POS,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": "model.onnx", "head_size": HD, "hidden_size": D,
                "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask",
                           "past_key_names": "past_key_values.%d.key",
                           "past_value_names": "past_key_values.%d.value"},
                "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                            "present_value_names": "present.%d.value"},
                "num_attention_heads": H, "num_hidden_layers": LAYERS, "num_key_value_heads": KVH,
            },
            "eos_token_id": [specials["<|im_end|>"], specials["<|endoftext|>"]],
            "pad_token_id": specials["<|endoftext|>"], "type": "qwen2", "vocab_size": n_vocab,
        },
        "search": {"do_sample": False, "early_stopping": True, "max_length": MAX_POS, "min_length": 0,
                   "num_beams": 1, "num_return_sequences": 1, "past_present_share_buffer": True,
                   "repetition_penalty": 1.0, "temperature": 1.0, "top_k": 1, "top_p": 1.0},
    }


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("out")
    r = sub.add_parser("reference")
    r.add_argument("model")
    r.add_argument("--ids", required=True)
    r.add_argument("--max-new", type=int, required=True)
    r.add_argument("--eos", default="")
    a = ap.parse_args()
    if a.cmd == "build":
        build(a.out)
    else:
        ids = [int(t) for t in a.ids.split(",") if t]
        eos = {int(t) for t in a.eos.split(",") if t}
        json.dump({"ids": reference(ids, a.max_new, eos)}, sys.stdout)
        print()


if __name__ == "__main__":
    main()
