#!/usr/bin/env sh
# Reruns of HumanEval on one GPU with the generation cache off: is a rerun the same run?
#
# Runs in the unpacked bundle (/tmp/codegen-bundle/bundle, after `sh unpack.sh --run`, whose
# results are the first run). That first run's results folder becomes the reference; then
# ROUNDS rounds alternate the reproducibility mechanism on (following the reference's outputs
# through near ties, `[suite] accepted_outputs`) and off (CODEGEN_FOLLOW_ACCEPTED=0), so that a
# session cut short still gives a table. Before them, PROBES names extra off-runs that look for
# the cause of rerun variance: `graph-off` (no CUDA graphs), `head-off` (greedy choice on the
# host), `batch-32` (fixed batches of 32 instead of as many as free memory holds).
#
#   ROUNDS=5 PROBES="graph-off head-off" OUT=/tmp/out sh harness/gpu/reruns.sh
#
# Each run's results folder and console output go to $RUNS/<name>/ and the table comparing
# them with the reference (harness/gpu/compare_reruns.py) to $OUT/reruns.md.
set -eu
ROUNDS=${ROUNDS:-5}
PROBES=${PROBES:-}
OUT=${OUT:?set OUT}
RUNS=${RUNS:-/tmp/runs}
CACHE=${CODEGEN_CACHE:-$HOME/.cache/codegen-harness}
CONFIG=harness/humaneval-cuda.toml
PROFILE=qwen2.5-coder-0.5b-instruct-cuda
RESULTS=target/codegen-humaneval-cuda
COMPARE=${COMPARE:-$(dirname "$0")/compare_reruns.py}
mkdir -p "$RUNS" "$OUT"

# The first run (unpack's) is the reference: the outputs the mechanism follows.
if [ ! -d "$RUNS/reference" ]; then
  cp -r "$RESULTS" "$RUNS/reference"
fi

# The same config, following the reference's outputs.
# (The config's own accepted_outputs, if any, is replaced: a table of reruns compares with the
# first run of this session.)
grep -v '^accepted_outputs' "$CONFIG" | sed "s#^results = .*#&\naccepted_outputs = \"$RUNS/reference\"#" >harness/reruns-follow.toml
sed 's#^batch_size = .*#batch_size = 32#' harness/reruns-follow.toml >harness/reruns-batch32.toml

# run NAME CONFIG [VAR=VALUE ...]: one run with the generation cache off.
run() {
  name=$1
  config=$2
  shift 2
  rm -rf "$RESULTS" "$RUNS/$name"
  start=$(date +%s%N)
  env "$@" CODEGEN_NO_CACHE=1 CODEGEN_CACHE="$CACHE" CODEGEN_WHEELHOUSE="$CACHE/wheelhouse" \
    ./codegen run --config "$config" >"$RUNS/$name.log" 2>&1 || true
  end=$(date +%s%N)
  cp -r "$RESULTS" "$RUNS/$name"
  mv "$RUNS/$name.log" "$RUNS/$name/log.txt"
  echo "$name: $(grep -m1 -o 'overall .*' "$RUNS/$name/log.txt" | tr -s ' ') (process $(( (end - start) / 1000000 )) ms)"
  table
}

table() {
  python3 "$COMPARE" "$PROFILE" "$RUNS/reference" $(ls -d "$RUNS"/*/ | grep -v '/reference/$' | sort -t/ -k4) \
    >"$OUT/reruns.md" 2>&1 || true
}

for probe in $PROBES; do
  case $probe in
    graph-off) run probe-graph-off harness/reruns-follow.toml CODEGEN_FOLLOW_ACCEPTED=0 CODEGEN_CUDA_GRAPH=0 ;;
    head-off) run probe-head-off harness/reruns-follow.toml CODEGEN_FOLLOW_ACCEPTED=0 CODEGEN_DEVICE_HEAD=0 ;;
    batch-32) run probe-batch-32 harness/reruns-batch32.toml CODEGEN_FOLLOW_ACCEPTED=0 ;;
    *) echo "unknown probe $probe" >&2; exit 2 ;;
  esac
done

i=1
while [ "$i" -le "$ROUNDS" ]; do
  run "round$i-on" harness/reruns-follow.toml CODEGEN_FOLLOW_ACCEPTED=1
  run "round$i-off" harness/reruns-follow.toml CODEGEN_FOLLOW_ACCEPTED=0
  i=$((i + 1))
done
cat "$OUT/reruns.md"
