#!/usr/bin/env python3
"""onnxruntime-genai side of `codegen bench engine`: the same model folder, the same prompt token
ids, greedy decoding. Prints one JSON object on stdout.

    bench_genai.py --model DIR --prompts FILE.json --max-new N [--batch1 K] [--device cpu|cuda]
                   [--batch-sizes 1,16,64,all] [--skip-suite]

FILE.json: {"prompts": [[id, ...], ...]}. Pinned: onnxruntime-genai==0.18.0 (onnxruntime==1.31.1).

Batch-1 figures (decode tok/s, time to first token) come from `og.Generator`, one prompt at a time.
The suite runs once per `--batch-sizes` entry (`all`: every prompt in one batch) through genai's own
batching API, `og.Engine` (new in 0.18): every prompt submitted as a Request (sorted by length, as
a fair peer would), then `Engine.run` until none is pending. The Engine is tried first with
`engine.dynamic_batching` (continuous batching over a paged KV cache); a folder or device where that
fails (it needs a paged-KV model: a plain past/present export fails at the first step) falls back to
`engine.static_batching` (fixed batches of up to N requests, padded by genai). Each setting reports
seconds, generated tokens, which mode ran, and on CUDA the process's peak GPU memory (nvidia-smi,
sampled every 50 ms); a setting that fails (out of memory) is reported with its error, not fatal.
`suite_*` and `outputs` (generated ids only, up to and including EOS) are those of the best setting
(highest generated tokens/s).
"""
import argparse
import json
import os
import subprocess
import sys
import threading
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


class GpuPeak:
    """Peak GPU memory of this process per nvidia-smi, sampled every 50 ms by a thread."""

    def __init__(self, enabled):
        self.enabled = enabled
        self.peak = None
        self._stop = threading.Event()
        self._thread = None

    def _sample(self):
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                capture_output=True, text=True, timeout=5).stdout
        except (OSError, subprocess.SubprocessError):
            return
        for line in out.splitlines():
            parts = [p.strip() for p in line.split(",")]
            if len(parts) == 2 and parts[0] == str(os.getpid()) and parts[1].isdigit():
                mib = int(parts[1])
                self.peak = max(self.peak or 0, mib * 1024 * 1024)

    def _loop(self):
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(0.05)

    def __enter__(self):
        if self.enabled:
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self._thread:
            self._stop.set()
            self._thread.join()
            self._sample()


def open_model(path, device, overlay=None):
    config = og.Config(path)
    if overlay:
        config.overlay(json.dumps(overlay))
    if device == "cuda":
        config.clear_providers()
        config.append_provider("cuda")
    return og.Model(config)


def engine_overlay(mode, batch, max_len=0):
    """engine.<mode> with up to `batch` requests at once; dynamic batching gets a paged KV cache
    of 16-token blocks, enough for `batch` sequences of `max_len` tokens."""
    conf = {"max_batch_size": batch}
    if mode == "dynamic_batching":
        conf.update(block_size=16, num_blocks=batch * (max_len // 16 + 2))
    return {"engine": {mode: conf}}


def eos_id(path):
    """The first EOS id of genai_config.json (the Engine reports EOS as a finish reason, not as a
    token; the Generator path returns it, so the Engine's rows get it back)."""
    eos = json.load(open(os.path.join(path, "genai_config.json")))["model"].get("eos_token_id")
    return eos[0] if isinstance(eos, list) else eos


def run_engine(model, prompts, max_new, eos=None):
    """Every prompt as an Engine Request, shortest first; outputs in the caller's order, each
    row only its generated ids, up to and including EOS."""
    engine = og.Engine(model)
    buf = engine.create_event_buffer(max(64, 2 * len(prompts)))
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    rows = {}
    outputs = [[] for _ in prompts]
    requests = []
    for i in order:
        req = engine.create_request()
        opts = og.TurnOptions(req)
        opts.set_max_generated_tokens(max_new)
        opts.set_do_sample(False)
        req.begin_turn(np.asarray(prompts[i], dtype=np.int32), opts)
        requests.append(req)
        rows[id(req)] = i
    # Python wrappers of the same Request may differ: match events by identity, else equality.
    def row_of(req):
        if id(req) in rows:
            return rows[id(req)]
        for r in requests:
            if r == req:
                return rows[id(r)]
        raise RuntimeError("event for an unknown request")
    while engine.has_pending_requests():
        for ev in engine.run(buf):
            if ev.flags & og.EngineEventFlags.FAILED:
                raise RuntimeError(f"engine failed: {ev.error_code}")
            if ev.flags & og.EngineEventFlags.TOKEN:
                outputs[row_of(ev.request)].append(int(ev.token))
            if (ev.flags & og.EngineEventFlags.TURN_FINISHED and eos is not None
                    and ev.finish_reason == og.FinishReason.EOS):
                outputs[row_of(ev.request)].append(int(eos))
    for r in requests:
        r.close()
    del engine
    return outputs


def continuous_available(path, device, probe):
    """None when engine.dynamic_batching runs this folder on this device, else why not."""
    try:
        model = open_model(path, device, engine_overlay("dynamic_batching", 2, len(probe) + 2))
        run_engine(model, [probe], 2)
        return None
    except Exception as e:  # noqa: BLE001 - reported, not fatal
        return str(e) or type(e).__name__


def parse_sizes(text, n):
    sizes = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        b = n if part == "all" else int(part)
        if b < 1:
            raise SystemExit(f"--batch-sizes: {part} is not a positive size")
        b = min(b, n)
        if b not in sizes:
            sizes.append(b)
    return sizes or [1]


def suite(a, prompts, mode, batch):
    """One suite run at `batch` through the Engine in `mode`; a dict for the JSON."""
    row = {"batch": batch, "mode": mode}
    with GpuPeak(a.device == "cuda") as peak:
        try:
            max_len = max(len(p) for p in prompts) + a.max_new
            model = open_model(a.model, a.device, engine_overlay(mode, batch, max_len))
            t = time.perf_counter()
            outputs = run_engine(model, prompts, a.max_new, eos_id(a.model))
            row["seconds"] = time.perf_counter() - t
            row["tokens"] = sum(len(o) for o in outputs)
            row["outputs"] = outputs
            del model
        except Exception as e:  # noqa: BLE001 - out of memory and the like: reported, not fatal
            row["error"] = str(e) or type(e).__name__
    row["peak_gpu_bytes"] = peak.peak
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompts", required=True)
    ap.add_argument("--max-new", type=int, required=True)
    ap.add_argument("--batch1", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-sizes", default="1,16,64,all")
    ap.add_argument("--skip-suite", action="store_true")
    a = ap.parse_args()
    prompts = json.load(open(a.prompts))["prompts"]
    t = time.perf_counter()
    model = open_model(a.model, a.device)
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
    del model
    result = {
        "version": og.__version__ if hasattr(og, "__version__") else "0.18.0",
        "load_s": load_s,
        "batch1_decode_tok_s": n_tok / dec_s if dec_s > 0 else 0.0,
        "batch1_ttft_ms": 1000 * sum(ttft) / max(len(ttft), 1),
        "suite_seconds": 0.0,
        "suite_tokens": 0,
        "suite_batch": 1,
        "outputs": [],
        "settings": [],
    }
    if not a.skip_suite:
        why = continuous_available(a.model, a.device, prompts[0])
        mode = "dynamic_batching" if why is None else "static_batching"
        result["continuous_batching"] = "used" if why is None else f"unavailable: {why}"
        rows = [suite(a, prompts, mode, b) for b in parse_sizes(a.batch_sizes, len(prompts))]
        ok = [r for r in rows if "error" not in r]
        if ok:
            best = max(ok, key=lambda r: r["tokens"] / max(r["seconds"], 1e-9))
            result.update(suite_seconds=best["seconds"], suite_tokens=best["tokens"],
                          suite_batch=best["batch"], outputs=best["outputs"],
                          suite_mode=best["mode"])
        for r in rows:
            r.pop("outputs", None)
        result["settings"] = rows
    json.dump(result, sys.stdout)
    print()


if __name__ == "__main__":
    main()
