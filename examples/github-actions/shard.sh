#!/bin/sh
# Run shard K of N of the suite: the cases whose stable hash falls in shard K, generated in
# batches as usual. Results, a partial summary and manifest.json land in
# <results>/shard-K-of-N/ (target/codegen/shard-K-of-N/ with the default config). The shard
# gates nothing; it fails only when a trial does (a snapshot mismatch). `merge.sh` gates.
#
#   sh examples/github-actions/shard.sh K N
#
# CODEGEN: the codegen binary (default target/release/codegen); CODEGEN_CONFIG: the config
# (default harness/codegen.toml).
set -eu
if [ "$#" -ne 2 ]; then
    echo "usage: $0 K N" >&2
    exit 2
fi
exec "${CODEGEN:-target/release/codegen}" run --shard "$1/$2"
