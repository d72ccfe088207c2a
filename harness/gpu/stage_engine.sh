#!/usr/bin/env bash
# Stage the engine benchmark for a GPU machine that reaches no package registry and receives at
# most 64 MiB per command (same scheme as shared/gpu/stage.sh, plus onnxruntime-genai-cuda).
#
#   harness/gpu/stage_engine.sh DEST CODEGEN_BINARY MODEL_DIR
#
# Only for `codegen bench engine` (a suite run travels with `codegen pack`, CONTRIBUTING.md).
# DEST (ignored by git) gets p1..pN, each under 60 MiB, and the script prints the command that
# sends each (the last one unstages with DEST/pN/unstage.sh and sources env.sh), which gives
# /tmp/stage/codegen, /tmp/stage/model, /tmp/stage/py (onnxruntime-gpu + onnxruntime-genai-cuda),
# ORT_DYLIB_PATH, LD_LIBRARY_PATH (the image's CUDA 13 / cuDNN 9 wheels), PYTHONPATH and
# CODEGEN_GENAI_PYTHON / CODEGEN_BENCH_GENAI_SCRIPT for `codegen bench engine --device cuda`.
set -euo pipefail
dest=${1:?usage: stage_engine.sh DEST CODEGEN_BINARY MODEL_DIR}
bin=${2:?binary}
model=${3:?model folder}
here=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
mkdir -p "$work/bundle/wheels"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  -d "$work/bundle/wheels" onnxruntime-gpu==1.31.1 onnxruntime-genai-cuda==0.18.0
cp "$bin" "$work/bundle/codegen" && strip "$work/bundle/codegen" || true
cp "$here/harness/python/bench_genai.py" "$work/bundle/"
mkdir -p "$work/bundle/model" && cp "$model"/* "$work/bundle/model/"
tar -C "$work/bundle" -cf "$work/bundle.tar" .
rm -rf "$dest"; mkdir -p "$dest"
split -b 60M -d -a 2 "$work/bundle.tar" "$work/part."
n=0
for p in "$work"/part.*; do n=$((n+1)); mkdir -p "$dest/p$n"; mv "$p" "$dest/p$n/"; done
cat > "$dest/p$n/unstage.sh" <<'EOS'
#!/usr/bin/env bash
set -euo pipefail
cd /tmp/stage
cat $(ls part.* | sort) > bundle.tar && rm -f part.* && tar -xf bundle.tar && rm -f bundle.tar
python3 -m pip install -q --no-deps --no-index --target /tmp/stage/py wheels/*.whl
lib=$(ls /tmp/stage/py/onnxruntime/capi/libonnxruntime.so.* | head -n 1)
nv=$(python3 -c 'import nvidia, os; print(list(nvidia.__path__)[0])')
cat > env.sh <<EOV
export ORT_DYLIB_PATH=$lib
export LD_LIBRARY_PATH=$nv/cu13/lib:$nv/cudnn/lib:/tmp/stage/py/onnxruntime/capi:\${LD_LIBRARY_PATH:-}
export PYTHONPATH=/tmp/stage/py:\${PYTHONPATH:-}
export CODEGEN_GENAI_PYTHON=python3
export CODEGEN_BENCH_GENAI_SCRIPT=/tmp/stage/bench_genai.py
export CODEGEN_CACHE=/tmp/stage/cache
EOV
echo "staged: $(ls /tmp/stage | tr '\n' ' ')"
EOS
chmod +x "$dest/p$n/unstage.sh"
echo "staged $n part(s) under $dest; send each line below as one command, in order, carrying the folder it names:" >&2
for i in $(seq 1 "$n"); do
  if [ "$i" -lt "$n" ]; then
    echo "mkdir -p /tmp/stage && cp $dest/p$i/part.* /tmp/stage/"
  else
    echo "mkdir -p /tmp/stage && cp $dest/p$i/part.* /tmp/stage/ && bash $dest/p$i/unstage.sh && . /tmp/stage/env.sh && /tmp/stage/codegen bench engine --model /tmp/stage/model --device cuda"
  fi
done
