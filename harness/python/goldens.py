"""llama.cpp's numbers for the tiny GGUFs of `tiny_archs.py`, kept as small golden files, and the
check of the exporter against them (what `cargo test --test architectures` runs, no llama.cpp
needed).

    # regenerate (needs llama-cpp-python==0.3.36 built from source, see VALIDATION.md):
    python goldens.py make --work DIR [NAME ...]
    # check an export against a golden (the exporter's venv is enough):
    python goldens.py check NAME [--work DIR] [--precision fp32|native0|native]
                                 [--without-rope-freqs]

A golden (`goldens/NAME.json`) holds, for 3 prompts (a chat prompt rendered by llama.cpp's own
template code path where there is a template, a code completion, and a long prompt past every
sliding window of the model), llama.cpp's token ids of the prompt text, its 32 greedy tokens,
and at every position of prompt + greedy tokens the top-k logits and the logits at a fixed set
of token indices drawn from a seed. llama.cpp runs on a copy of the GGUF dequantized to F32
(F32 KV cache), so it computes with exactly the weights of the fp32 and native exports.

`check` exports the GGUF (written again from its seed; its sha256 must be the golden's), runs
the export in ONNX Runtime and compares:
  * teacher-forced logits (prompt + llama.cpp's greedy tokens in one prefill) at the golden's
    indices: max |ours - llama.cpp| / max |llama.cpp logit| at that position <= TOLERANCE
    (fp32, native0); the same top-1 token at every position;
  * greedy generation through the KV cache (prefill, then one token per step): the 32 tokens
    identical to llama.cpp's (fp32, native0).
  * native (int8 activations inside the CPU kernel, as llama.cpp's quantized matmuls): reported
    only (greedy agreement and logit error), as in VALIDATION.md.
Prints a JSON summary; exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
GOLDENS = os.path.join(HERE, "goldens")

TOP_K = 4
SAMPLED = 4
GREEDY = 32
# max |ours - llama.cpp| relative to the position's largest |logit| (fp32 and native0)
TOLERANCE = 1e-3

CODE = "def add(a, b):\n    return a + b\n\n\ndef "
LONG = ("import os\n\n\ndef read_lines(path):\n    with open(path) as f:\n        return "
        "[line.rstrip() for line in f]\n\n\ndef count(path):\n    total = 0\n    for line in "
        "read_lines(path):\n        total += len(line)\n    return total\n\n\ndef ")
TEXT = "The quick brown fox jumps over the lazy dog, then returns to the den."
# tokenizer edge cases: llama.cpp's ids for each (its default BOS), checked through the exported
# tokenizer.json by tests/architectures.rs (pre-tokenizer regexes, digits, contractions, case,
# unicode, whitespace runs and tabs, special-token text)
SNIPPETS = [
    "def add(a, b):\n    return a + b\n",
    "class Stack:\n\tdef push(self, x):\n\t\tself.items.append(x)  # tab-indented\n",
    "print(f\"{name!r}: {value:>8.2f}\")\nassert s == 'héllo wörld ✓'\n",
    "I'm sure they'll say DON'T: 1234567 HelloWorld CamelCase_x  \n\n\n   end",
    "x = [1, 2, 3]  # 日本語 émoji 🙂\r\n",
]
USER = "Write a function that returns the sum of a list."


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tiny_gguf(name: str, work: str) -> str:
    import tiny_archs
    path = os.path.join(work, f"{name}.gguf")
    if not os.path.exists(path):
        tiny_archs.MODELS[name][0](path)
    return path


# -- make (llama.cpp) ---------------------------------------------------------------------------
def make(name: str, work: str) -> dict:
    import llama_cpp
    import tiny_archs
    from validate import LlamaRef, dequantized_gguf
    path = tiny_gguf(name, work)
    f32 = dequantized_gguf(path, os.path.join(work, f"{name}.f32.gguf"))
    ref = LlamaRef(f32, threads=2, f32_cache=True)
    llm = ref.llm
    vocab = llm.n_vocab()
    template = llm.metadata.get("tokenizer.chat_template")
    prompts = []
    if template:
        # llama.cpp's own rendering (llama_chat_apply_template with the GGUF's template)
        msgs = [llama_cpp.llama_chat_message(role=b"user", content=USER.encode())]
        arr = (llama_cpp.llama_chat_message * 1)(*msgs)
        buf = (llama_cpp.ctypes.c_char * 4096)()
        n = llama_cpp.llama_chat_apply_template(template.encode(), arr, 1, True, buf, 4096)
        text = bytes(buf[:n]).decode() if n > 0 else None
        if text is not None:
            prompts.append({"kind": "chat", "text": text, "special": True, "add_bos": False})
    if not prompts:  # llama.cpp does not know this template: a plain text prompt instead
        prompts.append({"kind": "text", "text": TEXT, "special": False, "add_bos": None})
    prompts.append({"kind": "code", "text": CODE, "special": False, "add_bos": None})
    prompts.append({"kind": "long", "text": LONG, "special": False, "add_bos": None})
    add_bos_default = bool(llm.metadata.get("tokenizer.ggml.add_bos_token", "false") == "true")
    out = []
    for i, p in enumerate(prompts):
        add_bos = add_bos_default if p["add_bos"] is None else p["add_bos"]
        ids = [int(t) for t in ref.tokenize(p["text"], p["special"], add_bos)]
        toks, scores = ref.greedy(ids, GREEDY)
        rng = np.random.default_rng(1000 + i)
        topk = np.argsort(-scores, axis=-1, kind="stable")[:, :TOP_K]
        sampled = rng.integers(0, vocab, size=(scores.shape[0], SAMPLED))
        rows = np.arange(scores.shape[0])[:, None]
        out.append({
            "kind": p["kind"], "text": p["text"], "special": p["special"], "add_bos": add_bos,
            "ids": ids, "greedy": toks,
            "topk": topk.tolist(),
            "topk_logits": np.round(scores[rows, topk], 5).tolist(),
            "sampled": sampled.tolist(),
            "sampled_logits": np.round(scores[rows, sampled], 5).tolist(),
        })
    # llama.cpp's llama graph does not read llama.attention.sliding_window (Mistral): past the
    # window its numbers are full attention's, which the export (windowed) does not follow
    window = int(llm.metadata.get("llama.attention.sliding_window", 0) or 0)
    tokenized = [{"text": t, "add_bos": add_bos_default,
                  "ids": [int(i) for i in ref.tokenize(t, False, add_bos_default)]}
                 for t in SNIPPETS]
    golden = {
        "model": name,
        "tokenized": tokenized,
        "llama_cpp_ignores_window": window,
        "exercises": tiny_archs.MODELS[name][1],
        "gguf_sha256": sha256(path),
        "reference": f"llama.cpp via llama-cpp-python {llama_cpp.__version__} on an F32 copy "
                     "of the GGUF, F32 KV cache, n_ctx 1024",
        "vocab": vocab,
        "prompts": out,
    }
    os.makedirs(GOLDENS, exist_ok=True)
    with open(os.path.join(GOLDENS, f"{name}.json"), "w", encoding="utf-8") as fh:
        json.dump(golden, fh, separators=(",", ":"))
        fh.write("\n")
    return {"model": name, "prompts": [len(p["ids"]) for p in out]}


# -- check (ONNX Runtime) -----------------------------------------------------------------------
class Session:
    def __init__(self, folder: str):
        import onnxruntime as ort
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as fh:
            cfg = json.load(fh)
        self.layers = cfg["num_hidden_layers"]
        self.kv = cfg["num_key_value_heads"]
        self.head_dim = cfg["head_dim"]
        so = ort.SessionOptions()
        so.intra_op_num_threads = 2
        so.log_severity_level = 3
        self.sess = ort.InferenceSession(os.path.join(folder, "model.onnx"), so,
                                         providers=["CPUExecutionProvider"])
        self.reset()

    def reset(self) -> None:
        self.past = [np.zeros((1, self.kv, 0, self.head_dim), np.float32)] * (2 * self.layers)
        self.total = 0

    def step(self, ids: list[int]) -> np.ndarray:
        self.total += len(ids)
        feeds = {"input_ids": np.array([ids], np.int64),
                 "attention_mask": np.ones((1, self.total), np.int64)}
        for i in range(self.layers):
            feeds[f"past_key_values.{i}.key"] = self.past[2 * i]
            feeds[f"past_key_values.{i}.value"] = self.past[2 * i + 1]
        out = self.sess.run(None, feeds)
        self.past = out[1:]
        return out[0][0]


def compare_prompt(sess: Session, p: dict, below: int = 0) -> dict:
    """Compare one prompt; with `below`, only positions < below count (the rest is reported
    as `beyond_*`)."""
    ids, greedy = p["ids"], p["greedy"]
    idx = np.concatenate([np.array(p["topk"]), np.array(p["sampled"])], axis=1)
    want = np.concatenate([np.array(p["topk_logits"]), np.array(p["sampled_logits"])], axis=1)
    # teacher-forced: the whole golden sequence in one prefill
    sess.reset()
    got_all = sess.step(ids + greedy)
    rows = np.arange(got_all.shape[0])[:, None]
    got = got_all[rows, idx]
    scale = np.abs(np.array(p["topk_logits"])).max(axis=1)
    abs_err_all = np.abs(got - want).max(axis=1)
    top1_all = got_all.argmax(-1) == np.array(p["topk"])[:, 0]
    beyond = {}
    n = got_all.shape[0]
    if below and below < n:
        beyond = {"beyond_window_max_rel_diff": float((abs_err_all / scale)[below:].max()),
                  "beyond_window_top1_agreement": float(np.mean(top1_all[below:]))}
        abs_err_all, scale, top1_all = abs_err_all[:below], scale[:below], top1_all[:below]
    abs_err = abs_err_all
    rel = abs_err / scale
    top1 = float(np.mean(top1_all))
    # greedy through the KV cache
    sess.reset()
    logits = sess.step(ids)[-1]
    ours = []
    for _ in range(len(greedy)):
        t = int(np.argmax(logits))
        ours.append(t)
        logits = sess.step([t])[-1]
    first = next((k for k, (a, b) in enumerate(zip(ours, greedy)) if a != b), len(greedy))
    return {"kind": p["kind"], "prompt_tokens": len(ids), "positions": int(got_all.shape[0]),
            "max_abs_diff": float(abs_err.max()), "max_rel_diff": float(rel.max()),
            "logit_scale": float(scale.max()), "top1_agreement": top1,
            "greedy_agree": sum(a == b for a, b in zip(ours, greedy)),
            "greedy_first_divergence": first, **beyond}


def check(name: str, work: str, precision: str, without_rope_freqs: bool = False,
          ablate: str | None = None) -> dict:
    from exporter import gguf_model
    from exporter.export import export
    with open(os.path.join(GOLDENS, f"{name}.json"), encoding="utf-8") as fh:
        golden = json.load(fh)
    path = tiny_gguf(name, work)
    digest = sha256(path)
    if digest != golden["gguf_sha256"]:
        raise SystemExit(f"error: {path} (sha256 {digest}) is not the GGUF the golden was made "
                         f"from ({golden['gguf_sha256']}): tiny_archs.py or its pins changed; "
                         "run `goldens.py make` again")
    if without_rope_freqs:
        ablate = "rope-freqs"
    if ablate:
        # the export without one thing llama.cpp reads or hard-codes: it must then differ
        original = gguf_model.GGUFModel.__init__

        def init(self, *a, **kw):
            original(self, *a, **kw)
            hp = self.hp
            if ablate == "rope-freqs":  # the exporter before llama3 rope scaling
                self.rope_factors = None
            elif ablate == "no-rope-layers":  # smollm3's rope-free layers roped
                hp.no_rope_layers = [False] * hp.n_layers
            elif ablate == "local-rope-base":  # gemma3's local layers at the global base
                hp.rope_local_base = hp.rope_base
            elif ablate == "other-rope-factors":  # phi3: the other longrope factor set
                other = "short" if hp.rope_factor_set == "long" else "long"
                self.rope_factors = self.raw(f"rope_factors_{other}.weight").reshape(-1)
            elif ablate == "window":  # mistral: no sliding window, as llama.cpp runs it
                hp.sliding_window, hp.swa_layers = 0, []
            else:
                raise SystemExit(f"error: unknown ablation {ablate!r}")
        gguf_model.GGUFModel.__init__ = init
    out = os.path.join(work, f"{name}-{precision}{'-' + ablate if ablate else ''}")
    if precision == "native0":
        export(path, out, "cpu", "native", accuracy_level=0)
    else:
        export(path, out, "cpu", precision)
    sess = Session(out)
    window = 0 if ablate == "window" else int(golden.get("llama_cpp_ignores_window", 0))
    results = [compare_prompt(sess, p, window) for p in golden["prompts"]]
    strict = precision in ("fp32", "native0")
    failures = []
    for r in results:
        if not strict:
            continue
        if r["max_rel_diff"] > TOLERANCE:
            failures.append(f"{r['kind']}: logits differ by {r['max_rel_diff']:.2e} of their "
                            f"scale (tolerance {TOLERANCE})")
        if r["top1_agreement"] < 1.0:
            failures.append(f"{r['kind']}: top-1 differs at {1 - r['top1_agreement']:.1%} of "
                            "the positions")
        if window:
            # past the window llama.cpp's numbers are full attention's: greedy tokens (all
            # past the prompt) are not comparable; the export must differ there, showing that
            # the window is applied
            if r.get("beyond_window_max_rel_diff", 1.0) < 10 * TOLERANCE:
                failures.append(f"{r['kind']}: no difference past the window of {window}: "
                                "the export does not apply it")
            continue
        if r["greedy_agree"] != GREEDY or r["greedy_first_divergence"] != GREEDY:
            failures.append(f"{r['kind']}: greedy tokens diverge at step "
                            f"{r['greedy_first_divergence']}")
    return {"model": name, "precision": precision, "ablate": ablate,
            "compared_below_window": window or None,
            "tolerance": TOLERANCE if strict else None, "prompts": results,
            "ok": not failures, "failures": failures}


def table(work: str) -> str:
    """VALIDATION.md's rows: every golden at fp32, native0 and native (one line per model)."""
    names = sorted(f[:-5] for f in os.listdir(GOLDENS) if f.endswith(".json"))
    lines = ["| tiny GGUF | what llama.cpp hard-codes or reads that it exercises | prompts (tokens) "
             "| fp32: max abs / rel logit diff, greedy | native0: max rel diff, greedy "
             "| native (int8 activations): greedy vs llama.cpp F32, max rel diff |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name in names:
        with open(os.path.join(GOLDENS, f"{name}.json"), encoding="utf-8") as fh:
            golden = json.load(fh)
        runs = {prec: check(name, work, prec) for prec in ("fp32", "native0", "native")}

        def greedy(r):
            return ", ".join(f"{p['greedy_agree']}/32" for p in r["prompts"])
        f = runs["fp32"]
        abs_d = max(p["max_abs_diff"] for p in f["prompts"])
        rel_d = max(p["max_rel_diff"] for p in f["prompts"])
        n0 = max(p["max_rel_diff"] for p in runs["native0"]["prompts"])
        nd = max(p["max_rel_diff"] for p in runs["native"]["prompts"])
        window = golden.get("llama_cpp_ignores_window")
        note = f" (positions < {window}; llama.cpp ignores the window)" if window else ""
        ok = "" if f["ok"] and runs["native0"]["ok"] else " **FAIL**"
        lines.append(
            f"| {name} | {golden['exercises']} | "
            + ", ".join(f"{p['kind']} {p['prompt_tokens']}" for p in f["prompts"])
            + f" | {abs_d:.1e} / {rel_d:.1e}, {greedy(f)}{note}{ok} | {n0:.1e}, {greedy(runs['native0'])}"
            f" | {greedy(runs['native'])}, {nd:.1e} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    mk = sub.add_parser("make")
    mk.add_argument("names", nargs="*")
    mk.add_argument("--work", required=True)
    ck = sub.add_parser("check")
    ck.add_argument("name")
    ck.add_argument("--work", default=None)
    ck.add_argument("--precision", choices=("fp32", "native0", "native"), default="fp32")
    ck.add_argument("--without-rope-freqs", action="store_true",
                    help="the same as --ablate rope-freqs")
    ck.add_argument("--ablate", choices=("rope-freqs", "no-rope-layers", "local-rope-base",
                                         "other-rope-factors", "window"),
                    help="export without one thing llama.cpp reads or hard-codes (rope_freqs, "
                         "smollm3's rope-free layers, gemma3's local rope base, phi3's factor "
                         "set, mistral's window) to show that the golden notices")
    tb = sub.add_parser("table", help="VALIDATION.md's rows (every golden, three precisions)")
    tb.add_argument("--work", required=True)
    args = parser.parse_args(argv)
    if args.command == "make":
        import tiny_archs
        os.makedirs(args.work, exist_ok=True)
        for name in args.names or list(tiny_archs.MODELS):
            print(json.dumps(make(name, args.work)), flush=True)
        return 0
    if args.command == "table":
        os.makedirs(args.work, exist_ok=True)
        print(table(args.work))
        return 0
    work = args.work or tempfile.mkdtemp(prefix="goldens-")
    os.makedirs(work, exist_ok=True)
    result = check(args.name, work, args.precision, args.without_rope_freqs, args.ablate)
    print(json.dumps(result, indent=1))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
