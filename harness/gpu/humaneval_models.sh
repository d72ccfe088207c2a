#!/usr/bin/env bash
# HumanEval pass@1 of the default models on one GPU, each exported on the GPU machine from its
# GGUF: the measurement behind README's model table (greedy, max 512 new tokens, 164 problems).
#
# Runs from a checkout on a machine with CUDA (ORT_DYLIB_PATH / LD_LIBRARY_PATH set up, e.g. by
# ../shared/gpu/stage.sh's env.sh) and with, in $FILES: the release binary `codegen`, the GGUFs
# named below, the exporter's wheels (`*.whl`: gguf, PyYAML, tqdm; numpy and onnx come from the
# machine's python3) and `cases.tar` (cases/humaneval from `codegen import humaneval --mode
# chat`, cases/humaneval-complete from `--mode complete`).
#
#   FILES=/tmp/stage/files OUT=/tmp/out harness/gpu/humaneval_models.sh LABEL=GGUF:PRECISION:MODE ...
#
# e.g. qwen05=qwen05.gguf:native:chat gemma=gemma.gguf:native:complete. For each: export (all in
# parallel), an engine benchmark (load time, tokens/s, GPU memory) and the suite; summaries and
# logs go to $OUT.
set -euo pipefail
FILES=${FILES:?set FILES}
OUT=${OUT:?set OUT}
BATCH=${BATCH:-32}
mkdir -p "$OUT" /tmp/models
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$FILES"/*.whl
export PYTHONPATH=/tmp/site:$PWD/harness/python
tar -xf "$FILES/cases.tar"
codegen="$FILES/codegen"

for spec in "$@"; do
  IFS=: read -r gguf precision mode <<<"${spec#*=}"
  label=${spec%%=*}
  (
    start=$(date +%s%N)
    python3 -m exporter export "$FILES/$gguf" --out "/tmp/models/$label" --target cuda \
      --precision "$precision" >"$OUT/export-$label.log" 2>&1
    echo "export $label: $(( ($(date +%s%N) - start) / 1000000 )) ms, $(du -sb "/tmp/models/$label" | cut -f1) bytes"
  ) &
done
wait

for spec in "$@"; do
  IFS=: read -r gguf precision mode <<<"${spec#*=}"
  label=${spec%%=*}
  cases=cases/humaneval; [ "$mode" = complete ] && cases=cases/humaneval-complete
  cat >"harness/gpu-$label.toml" <<EOF
[suite]
cases = "$cases"
snapshot = false
results = "target/gpu-$label"

[generation]
max_new_tokens = 512
batch_size = $BATCH

[sandbox]
level = "basic"

[[models]]
name = "$label"
source = "onnx"
model = "/tmp/models/$label"
device = "cuda"

[models.gate]
min_pass_rate = 0.0
EOF
  "$codegen" bench engine --model "/tmp/models/$label" --device cuda --skip-genai \
    --cases-dir "$cases" --cases 32 --max-new-tokens 256 --batch-size 32 --batch1-prompts 2 \
    --rounds 1 2>&1 | grep -v '^    ' | head -12 >"$OUT/bench-$label.txt" || true
  start=$(date +%s%N)
  "$codegen" run --config "harness/gpu-$label.toml" >"$OUT/run-$label.log" 2>&1 || true
  echo "suite $label: $(( ($(date +%s%N) - start) / 1000000 )) ms"
  cp "target/gpu-$label/summary-$label.json" "$OUT/" 2>/dev/null || echo "no summary for $label"
  grep -h "tok/s\|load\|memory" "$OUT/bench-$label.txt" | sed "s/^/  $label: /" || true
done
