#!/usr/bin/env python3
"""onnxruntime-genai side of `codegen bench engine`: the same model folder, the same prompt token
ids, greedy decoding. Prints one JSON object on stdout.

    bench_genai.py --model DIR --prompts FILE.json --max-new N [--batch1 K] [--device cpu|cuda]

FILE.json: {"prompts": [[id, ...], ...]}. Pinned: onnxruntime-genai==0.18.0 (onnxruntime==1.31.1).
"""
import argparse
import json
import sys
import time

import numpy as np
import onnxruntime_genai as og


def generate(model, ids, max_new):
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + max_new, do_sample=False, batch_size=1)
    gen = og.Generator(model, params)
    t0 = time.perf_counter()
    gen.append_tokens(np.array([ids], dtype=np.int32))
    out = []
    first = last = None
    while not gen.is_done():
        gen.generate_next_token()
        tok = int(gen.get_next_tokens()[0])
        now = time.perf_counter()
        if first is None:
            first = now
        last = now
        out.append(tok)
        if len(out) >= max_new:
            break
    del gen
    return out, (first or t0) - t0, (last or t0) - (first or t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompts", required=True)
    ap.add_argument("--max-new", type=int, required=True)
    ap.add_argument("--batch1", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--skip-suite", action="store_true")
    a = ap.parse_args()
    prompts = json.load(open(a.prompts))["prompts"]
    t = time.perf_counter()
    if a.device == "cuda":
        config = og.Config(a.model)
        config.clear_providers()
        config.append_provider("cuda")
        model = og.Model(config)
    else:
        model = og.Model(a.model)
    load_s = time.perf_counter() - t
    # warm-up
    generate(model, prompts[0], 4)
    n_tok = 0
    dec_s = 0.0
    ttft = []
    for ids in prompts[: a.batch1]:
        out, tf, d = generate(model, ids, a.max_new)
        ttft.append(tf)
        n_tok += max(len(out) - 1, 0)
        dec_s += d
    t = time.perf_counter()
    outputs = []
    tokens = 0
    for ids in ([] if a.skip_suite else prompts):
        out, _, _ = generate(model, ids, a.max_new)
        outputs.append(out)
        tokens += len(out)
    suite_s = time.perf_counter() - t
    json.dump({
        "version": og.__version__ if hasattr(og, "__version__") else "0.18.0",
        "load_s": load_s,
        "batch1_decode_tok_s": n_tok / dec_s if dec_s > 0 else 0.0,
        "batch1_ttft_ms": 1000 * sum(ttft) / max(len(ttft), 1),
        "suite_seconds": suite_s,
        "suite_tokens": tokens,
        "suite_batch": 1,
        "outputs": outputs,
    }, sys.stdout)
    print()


if __name__ == "__main__":
    main()
