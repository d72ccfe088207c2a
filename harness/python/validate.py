"""Validate exported model folders against llama.cpp (an independent implementation).

For each model (a GGUF file):
  * export it (cpu target) at fp32, native (the default; also with accuracy_level 0, i.e. float
    activations, to show its weights are exact) and int4 with the exporter in this folder;
  * on code prompts (chat-formatted; for a model without a chat template, e.g. the gemma-3-270m
    base model, completion prompts: a function signature and docstring after <bos>), run 32
    greedy tokens with llama.cpp (llama-cpp-python) and
    with the ONNX export in ONNX Runtime; fp32 tokens must be identical; report the maximum
    absolute logit difference on llama.cpp's token path (prompt positions and every step);
  * native with float activations: tokens must be identical to llama.cpp on the F32 copy, as for
    fp32; native (int8 activations on CPU) and int4: report how many of the 32 greedy tokens agree;
  * tokenization: >= 200 code snippets through the exported tokenizer.json (the `tokenizers`
    package) and through onnxruntime-genai must give exactly llama.cpp's token ids;
  * onnxruntime-genai: load each exported folder and generate 32 greedy tokens; they must equal
    the ONNX Runtime greedy tokens of the same folder.

Not part of requirements.txt: needs llama-cpp-python==0.3.36 (built from source by pip),
onnxruntime-genai==0.18.0 and tokenizers in the interpreter that runs it, e.g.

    python -m venv /tmp/val && /tmp/val/bin/pip install -r requirements.txt \
        llama-cpp-python==0.3.36 onnxruntime-genai==0.18.0 tokenizers==0.23.3
    /tmp/val/bin/python validate.py --model qwen=/path/qwen.gguf --model smollm=/path/smol.gguf \
        --work /tmp/val-work --markdown VALIDATION.md

Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import sysconfig
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from exporter.export import export  # noqa: E402

PROMPTS = [
    "Write a Python function `is_prime(n: int) -> bool` that returns True when n is prime.",
    "Write a Python function `fizzbuzz(n)` that returns a list of strings for 1..n.",
    "Write a Python function that reverses the words of a sentence.",
    "Write a Python function `flatten(xs)` that flattens a nested list of lists.",
    "Write a Python function `merge_sorted(a, b)` that merges two sorted lists.",
    "Write a Python class `Stack` with push, pop and peek methods.",
]
# for base models (no chat template): what a completion-mode case gives the model
COMPLETIONS = [
    'def is_prime(n: int) -> bool:\n    """Return True when n is a prime number."""\n',
    'def fizzbuzz(n):\n    """Return a list of strings for 1..n: Fizz, Buzz, FizzBuzz or the number."""\n',
    'def reverse_words(sentence: str) -> str:\n    """Reverse the order of the words of a sentence."""\n',
    'def flatten(xs):\n    """Flatten a nested list of lists into one list."""\n',
    'def merge_sorted(a, b):\n    """Merge two sorted lists into one sorted list."""\n',
    'class Stack:\n    """A stack with push, pop and peek methods."""\n\n    def __init__(self):\n',
]
SYSTEM = "You are a helpful coding assistant."
# (key, precision, accuracy_level) of the exports compared with llama.cpp
EXPORTS = (("fp32", "fp32", None), ("native0", "native", 0), ("native", "native", None),
           ("int4", "int4", None))
EXACT = ("fp32", "native0")  # same weights as reference A: greedy tokens must be identical
N_NEW = 32


def chat(prompt: str) -> str:
    return (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{prompt}<|im_end|>\n"
            "<|im_start|>assistant\n")


class OrtRunner:
    def __init__(self, folder: str, threads: int):
        import onnxruntime as ort
        cfg = json.load(open(os.path.join(folder, "config.json"), encoding="utf-8"))
        self.layers = cfg["num_hidden_layers"]
        self.kv = cfg["num_key_value_heads"]
        self.hd = cfg["head_dim"]
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        self.sess = ort.InferenceSession(os.path.join(folder, "model.onnx"), so,
                                         providers=["CPUExecutionProvider"])
        self.reset()

    def reset(self):
        self.past = [np.zeros((1, self.kv, 0, self.hd), np.float32)] * (2 * self.layers)
        self.total = 0

    def step(self, ids):
        self.total += len(ids)
        feeds = {"input_ids": np.array([ids], np.int64),
                 "attention_mask": np.ones((1, self.total), np.int64)}
        for i in range(self.layers):
            feeds[f"past_key_values.{i}.key"] = self.past[2 * i]
            feeds[f"past_key_values.{i}.value"] = self.past[2 * i + 1]
        out = self.sess.run(None, feeds)
        self.past = out[1:]
        return out[0][0]

    def greedy(self, ids, n):
        self.reset()
        logits = self.step(ids)[-1]
        toks = []
        for _ in range(n):
            t = int(np.argmax(logits))
            toks.append(t)
            logits = self.step([t])[-1]
        return toks

    def forced(self, ids, cont):
        """Logits for every position of ids + cont (teacher forcing)."""
        self.reset()
        rows = [self.step(ids)]
        for t in cont:
            rows.append(self.step([t]))
        return np.concatenate(rows)


def dequantized_gguf(src: str, dst: str) -> str:
    """Write a copy of `src` with every tensor dequantized (gguf's routines) to F32, so that
    llama.cpp computes with exactly the weights the fp32 export holds (its quantized matmuls
    would otherwise also round the activations to 8 bits)."""
    import gguf
    if os.path.exists(dst):
        return dst
    reader = gguf.GGUFReader(src)
    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(dst + ".partial", arch)
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key in ("general.architecture", "general.file_type"):
            continue
        vtype = field.types[0]
        if vtype == gguf.GGUFValueType.ARRAY:
            writer.add_key_value(key, field.contents(), vtype, sub_type=field.types[-1])
        else:
            writer.add_key_value(key, field.contents(), vtype)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    for t in reader.tensors:
        data = gguf.quants.dequantize(t.data, t.tensor_type)
        writer.add_tensor(t.name, np.ascontiguousarray(
            data.reshape([int(d) for d in reversed(t.shape)]), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.rename(dst + ".partial", dst)
    return dst


class LlamaRef:
    def __init__(self, gguf_path: str, threads: int, f32_cache: bool = False):
        from llama_cpp import Llama
        kw = {"type_k": 0, "type_v": 0} if f32_cache else {}  # GGML_TYPE_F32
        self.llm = Llama(model_path=gguf_path, n_ctx=1024, n_threads=threads, n_batch=512,
                         logits_all=True, verbose=False, flash_attn=False, **kw)

    def tokenize(self, text: str, special: bool, add_bos: bool = False):
        return self.llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special)

    def greedy(self, ids, n):
        """Greedy tokens and the logits of every position (prompt and steps)."""
        self.llm.reset()
        self.llm.eval(ids)
        toks = []
        for _ in range(n):
            logits = self.llm.scores[self.llm.n_tokens - 1]
            t = int(np.argmax(logits))
            toks.append(t)
            self.llm.eval([t])
        return toks, np.array(self.llm.scores[: self.llm.n_tokens], dtype=np.float32)


def code_snippets(min_count: int = 220) -> list[str]:
    """Deterministic code snippets: chunks of the Python standard library, plus edge cases."""
    lib = sysconfig.get_paths()["stdlib"]
    files = sorted(glob.glob(os.path.join(lib, "*.py")))
    snippets = [
        "def f(x):\n\treturn x  # tab\n", "x = [1, 2, 3]\r\nprint(x)\r\n", "    \n\n   \n",
        "s = 'héllo wörld ünïcode — “quotes” 你好 😀'\n", "n = 1234567890 + 0x1F + 3.14e-10\n",
        "class A:\n    '''Doc.'''\n    def __init__(self): pass\n", "if a!=b and c>=d: a//=2\n",
        "   leading spaces and trailing   ", "emoji 🚀🚀 and CJK 漢字かな\n", "'''\n''' \"\"\"",
    ]
    for path in files:
        try:
            text = open(path, encoding="utf-8").read()
        except (UnicodeDecodeError, OSError):
            continue
        lines = text.splitlines(keepends=True)
        if len(lines) < 60:
            continue
        for k in (1, 2):
            start = (len(path) * 7919 * k) % max(1, len(lines) - 30)
            snippets.append("".join(lines[start:start + 25]))
        if len(snippets) >= min_count:
            break
    return snippets


def validate_model(label: str, gguf_path: str, work: str, threads: int, n_prompts: int,
                   snippets: list[str]) -> tuple[dict, bool]:
    import onnxruntime_genai as og
    from tokenizers import Tokenizer

    res: dict = {"model": label, "gguf": os.path.basename(gguf_path)}
    ok = True
    ref = LlamaRef(gguf_path, threads)
    f32_path = dequantized_gguf(gguf_path, os.path.join(work, f"{label}.f32.gguf"))
    ref32 = LlamaRef(f32_path, threads, f32_cache=True)
    folders = {}
    for precision, kind, level in EXPORTS:
        out = os.path.join(work, f"{label}-cpu-{precision}")
        t0 = time.time()
        info = export(gguf_path, out, "cpu", kind, accuracy_level=level)
        res[f"export_{precision}_s"] = round(time.time() - t0, 1)
        res[f"export_{precision}_bytes"] = info["bytes"]
        folders[precision] = out

    # tokenization
    tok = Tokenizer.from_file(os.path.join(folders["fp32"], "tokenizer.json"))
    og_model = og.Model(folders["int4"])
    og_tok = og.Tokenizer(og_model)
    hf_match = og_match = 0
    mismatches, og_mismatches = [], []
    for s in snippets:
        want = list(ref.tokenize(s, special=False))
        got = tok.encode(s, add_special_tokens=False).ids
        got_og = list(og_tok.encode(s))
        hf_match += got == want
        og_match += got_og == want
        if got != want and len(mismatches) < 3:
            mismatches.append(s[:60])
        if got_og != want and len(og_mismatches) < 5:
            og_mismatches.append(s[:40])
    res["tokenizer_snippets"] = len(snippets)
    res["tokenizer_json_matches"] = hf_match
    res["genai_tokenizer_matches"] = og_match
    res["tokenizer_mismatch_examples"] = mismatches
    res["genai_tokenizer_mismatch_examples"] = og_mismatches
    ok &= hf_match == len(snippets)
    # a model without a chat template (a base model) is prompted in completion mode
    cfg = json.load(open(os.path.join(folders["fp32"], "tokenizer_config.json"), encoding="utf-8"))
    complete = not cfg.get("chat_template")
    res["prompt_mode"] = "complete" if complete else "chat"
    if complete:
        # the engine encodes completion prompts with add_special_tokens=True: <bos> must come
        # from the tokenizer's post-processor exactly where llama.cpp adds it
        prompts = COMPLETIONS
        ids_ref = list(ref.tokenize(prompts[0], special=False, add_bos=True))
        res["chat_prompt_tokens_match"] = (
            tok.encode(prompts[0], add_special_tokens=True).ids == ids_ref)
    else:
        prompts = [chat(p) for p in PROMPTS]
        # special tokens in the chat prompt
        chat_ids_ref = list(ref.tokenize(prompts[0], special=True))
        res["chat_prompt_tokens_match"] = (
            tok.encode(prompts[0], add_special_tokens=False).ids == chat_ids_ref)
    ok &= res["chat_prompt_tokens_match"]

    def agreement(got, want):
        agree = sum(a == b for a, b in zip(got, want))
        first = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), N_NEW)
        return agree, first

    # greedy decoding
    runs = []
    for p_idx, prompt in enumerate(prompts[:n_prompts]):
        ids = list(ref.tokenize(prompt, special=not complete, add_bos=complete))
        r32, l32 = ref32.greedy(ids, N_NEW)
        rq, lq = ref.greedy(ids, N_NEW)
        runs.append({"prompt": p_idx, "ids": ids, "ref_f32": r32, "ref_f32_logits": l32,
                     "ref_gguf": rq, "ref_gguf_logits": lq})
    for precision, _, _ in EXPORTS:
        runner = OrtRunner(folders[precision], threads)
        for run in runs:
            ids = run["ids"]
            got = runner.greedy(ids, N_NEW)
            run[f"{precision}_tokens"] = got
            run[f"{precision}_vs_f32"] = agreement(got, run["ref_f32"])
            run[f"{precision}_vs_gguf"] = agreement(got, run["ref_gguf"])
            if precision == "fp32":
                for key in ("f32", "gguf"):
                    forced = runner.forced(ids, run[f"ref_{key}"][:-1])
                    want = run[f"ref_{key}_logits"]
                    n = min(len(forced), len(want))
                    run[f"fp32_maxdiff_vs_{key}"] = float(np.abs(forced[:n] - want[:n]).max())
                run["logit_scale"] = float(np.abs(run["ref_f32_logits"]).max())
            if precision in EXACT:
                ok &= run[f"{precision}_vs_f32"][0] == N_NEW
        del runner

    # onnxruntime-genai: greedy generation from each folder equals ONNX Runtime's
    genai = {}
    for precision in ("fp32", "int4"):
        model = og_model if precision == "int4" else og.Model(folders[precision])
        same = 0
        for run in runs:
            params = og.GeneratorParams(model)
            params.set_search_options(do_sample=False, max_length=len(run["ids"]) + N_NEW,
                                      batch_size=1)
            gen = og.Generator(model, params)
            gen.append_tokens(np.array([run["ids"]], dtype=np.int32))
            out = []
            while not gen.is_done() and len(out) < N_NEW:
                gen.generate_next_token()
                out.append(int(gen.get_next_tokens()[0]))
            exp = run[f"{precision}_tokens"][: len(out)]
            same += out == exp
        genai[precision] = f"{same}/{len(runs)}"
        ok &= same == len(runs)
    res["genai_greedy_equal_to_ort"] = genai
    for run in runs:
        del run["ref_f32_logits"], run["ref_gguf_logits"], run["ids"]
    res["prompts"] = runs
    return res, ok


def to_markdown(results: list[dict], snippets: int, elapsed: float) -> str:
    """The report; `elapsed` is the validation's run time in seconds."""
    import llama_cpp
    import onnxruntime
    import onnxruntime_genai
    lines = [
        "# Exporter validation (generated by `validate.py`)",
        "",
        f"Reference: llama.cpp via llama-cpp-python {llama_cpp.__version__} (built from source), "
        f"onnxruntime {onnxruntime.__version__}, onnxruntime-genai {onnxruntime_genai.__version__}, "
        f"CPU, {N_NEW} greedy tokens per code prompt (chat-formatted, or a completion prompt for "
        f"a model without a chat template). Run time {elapsed:.0f} s.",
        "",
    ]
    for r in results:
        lines += [f"## {r['model']} (`{r['gguf']}`)", ""]
        if r.get("prompt_mode") == "complete":
            lines += ["No chat template: completion prompts (a function signature and docstring "
                      "after `<bos>`).", ""]
        lines += [
            "- export time: " + ", ".join(
                f"{k} {r[f'export_{k}_s']} s ({r[f'export_{k}_bytes'] / 2**20:.0f} MiB)"
                for k, _, _ in EXPORTS if f"export_{k}_s" in r),
            f"- tokenization: tokenizer.json (tokenizers) {r['tokenizer_json_matches']}/"
            f"{r['tokenizer_snippets']} code snippets identical to llama.cpp; onnxruntime-genai's "
            f"tokenizer {r['genai_tokenizer_matches']}/{r['tokenizer_snippets']}; "
            + ("completion prompt with <bos> (add_special_tokens) identical: "
               if r.get("prompt_mode") == "complete" else "chat prompt with special tokens identical: ")
            + f"{r['chat_prompt_tokens_match']}",
            f"- onnxruntime-genai 0.18.0 greedy generation equal to ONNX Runtime on the same folder: "
            f"fp32 {r['genai_greedy_equal_to_ort']['fp32']}, "
            f"int4 {r['genai_greedy_equal_to_ort']['int4']} prompts",
        ]
        if r["tokenizer_mismatch_examples"]:
            lines.append(f"- tokenizer mismatches (first): {r['tokenizer_mismatch_examples']}")
        if r.get("genai_tokenizer_mismatch_examples"):
            lines.append("- onnxruntime-genai tokenizer mismatches (first): "
                         f"{r['genai_tokenizer_mismatch_examples']}")
        lines += ["", "Reference A = llama.cpp on a copy of the GGUF dequantized to F32 (same weights "
                  "as the fp32 and native exports; F32 KV cache). Reference B = llama.cpp on the "
                  "original quantized GGUF (its matmuls also quantize activations to 8 bits; F16 KV "
                  "cache). native0 = the native export with accuracy_level 0 (float activations); "
                  "native = the default (accuracy_level 4: the CPU kernel quantizes activations to "
                  "int8). `a/32 (k)`: tokens agreeing, first divergence at step k.", "",
                  "| prompt | fp32 vs A | fp32 max abs logit diff vs A | fp32 vs B | "
                  "fp32 max abs logit diff vs B | native0 vs A | native vs A | native vs B | "
                  "int4 vs A | int4 vs B | logit scale |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for p in r["prompts"]:
            def fmt(pair):
                return f"{pair[0]}/{N_NEW} ({pair[1]})"
            lines.append(
                f"| {p['prompt']} | {fmt(p['fp32_vs_f32'])} | {p['fp32_maxdiff_vs_f32']:.2e} | "
                f"{fmt(p['fp32_vs_gguf'])} | {p['fp32_maxdiff_vs_gguf']:.3f} | "
                + " | ".join(fmt(p[k]) if k in p else "-" for k in (
                    "native0_vs_f32", "native_vs_f32", "native_vs_gguf", "int4_vs_f32",
                    "int4_vs_gguf"))
                + f" | {p['logit_scale']:.1f} |")
        lines.append("")
    lines.append(f"{snippets} snippets: the Python standard library's modules, 25 lines each, "
                 "plus whitespace/unicode edge cases.")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", action="append", default=[], help="LABEL=PATH.gguf")
    ap.add_argument("--work", help="folder for the exports")
    ap.add_argument("--from-json", help="only re-render the report from a --json file")
    ap.add_argument("--prompts", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--markdown", help="write the report here")
    ap.add_argument("--json", help="write raw results here")
    args = ap.parse_args()
    started = time.time()
    snippets = code_snippets()
    if args.from_json:
        with open(args.from_json, encoding="utf-8") as fh:
            results = json.load(fh)
        md = to_markdown(results, results[0]["tokenizer_snippets"], results[0].get("elapsed_s", 0))
        print(md)
        if args.markdown:
            with open(args.markdown, "w", encoding="utf-8") as fh:
                fh.write(md)
        return 0
    if not args.model or not args.work:
        ap.error("--model and --work are required")
    results = []
    all_ok = True
    for spec in args.model:
        label, path = spec.split("=", 1)
        print(f"validating {label} ...", file=sys.stderr, flush=True)
        res, ok = validate_model(label, path, args.work, args.threads, args.prompts, snippets)
        res["ok"] = ok
        all_ok &= ok
        results.append(res)
        print(json.dumps({k: v for k, v in res.items() if k != "prompts"}), file=sys.stderr,
              flush=True)
    for res in results:
        res["elapsed_s"] = round(time.time() - started)
    md = to_markdown(results, len(snippets), time.time() - started)
    print(md)
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as fh:
            fh.write(md)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=1)
    print("PASS" if all_ok else "FAIL", file=sys.stderr)
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
