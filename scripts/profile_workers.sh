#!/usr/bin/env bash
# Profile both Ray Train workers of a 2-worker CPU run with py-spy (sampling, no code changes).
# Usage: bash scripts/profile_workers.sh [OUT_DIR] [-- extra --set overrides]   (inside the venv)
# Needs py-spy (pip install py-spy). Writes OUT_DIR/rank-N.txt (collapsed stacks) and prints the
# share of samples per training stage (scripts/profile_summary.py). Same settings as `sparse-ray
# bench`'s w2_zero2 scenario: MiniLM SPLADE, batch 8, sequence 64, workers pinned to one core each.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-/tmp/sparse-ray-profile}; shift || true
[[ ${1:-} == -- ]] && shift
rm -rf "$OUT" && mkdir -p "$OUT"
RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 sparse-ray train --data sample --base-model minilm --workers 2 --zero 2 \
  --output "$OUT/run" --set cluster.pin_workers=true --set data.max_samples=400 --set train.batch_size=8 \
  --set model.max_seq_length=64 --set train.save_steps=0 --set data.eval_queries=0 --set train.logging_steps=5 \
  "$@" >"$OUT/train.log" 2>&1 &
TRAIN=$!
# wait until both workers have logged their first step (start-up is profiled separately)
until grep -q "step 5/" "$OUT/train.log" 2>/dev/null; do
  kill -0 $TRAIN 2>/dev/null || { tail -5 "$OUT/train.log"; exit 1; }; sleep 1
done
PIDS=$(pgrep -f "ray::RayTrainWorker" || true)
n=0
for pid in $PIDS; do
  py-spy record --pid "$pid" --duration 40 --rate 40 --format raw --idle --nonblocking -o "$OUT/rank-$n.txt" >/dev/null 2>&1 &
  n=$((n + 1))
done
wait $TRAIN || true
wait
python scripts/profile_summary.py "$OUT"/rank-*.txt
