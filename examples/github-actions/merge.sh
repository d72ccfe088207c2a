#!/bin/sh
# Merge the shards found under SHARDS (folders shard-K-of-N, as downloaded from the shard
# jobs' artifacts) into OUT: results, summaries, Markdown, JUnit and report.html, exactly as
# one unsharded run writes them; print the tables and apply the gate once. Then write
# OUT/comment.md, the Markdown summary of every model for the pull request, even when the
# gate failed. Exits with `codegen merge`'s status: 0 passed, 101 gate failed or a trial
# failed in a shard, 1 shards refused.
#
#   sh examples/github-actions/merge.sh SHARDS OUT
set -u
if [ "$#" -ne 2 ]; then
    echo "usage: $0 SHARDS OUT" >&2
    exit 2
fi
shards="$1"
out="$2"
status=0
"${CODEGEN:-target/release/codegen}" merge "$shards" --out "$out" || status=$?
mkdir -p "$out"
{
    echo "<!-- codegen-harness summary -->"
    found=0
    for md in "$out"/summary-*.md; do
        [ -f "$md" ] || continue
        found=1
        cat "$md"
        echo
    done
    if [ "$found" -eq 0 ]; then
        echo "### codegen: the shards could not be merged"
        echo
        echo "\`codegen merge\` exited with status $status; see the merge job's log."
    fi
} > "$out/comment.md"
exit "$status"
