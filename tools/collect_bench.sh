#!/bin/sh
# Copy a protocol's result files (not the training runs) from runs/bench into docs/bench, so every number in
# docs/benchmarks.md points to a file in the repository:  sh tools/collect_bench.sh synthetic-v1 [kitti-1k-v1 ...]
# The inverse (a fresh machine resumes from the committed runs): python tools/restore_bench.py synthetic-v1 ...
set -e
for p in "$@"; do
  src=runs/bench/$p; dst=docs/bench/$p
  mkdir -p "$dst"
  cp "$src/recipe.yaml" "$src/results.csv" "$src/summary.csv" "$src/summary.md" "$src/summary.png" "$dst/"
  cp "$src/teacher/result.json" "$dst/teacher.json"
  [ -f "$src/curves.png" ] && cp "$src/curves.png" "$dst/"
  [ -f "$src/epoch_deltas.csv" ] && cp "$src/epoch_deltas.csv" "$dst/"
  [ -f "$src/per_class.csv" ] && cp "$src/per_class.csv" "$dst/"
  [ -f "$src/teacher/results.csv" ] && cp "$src/teacher/results.csv" "$dst/teacher.results.csv"  # its fine-tune curve
  [ -f "$src/student-init/result.json" ] && cp "$src/student-init/result.json" "$dst/student-init.json"
  for r in "$src"/runs/*/; do
    [ -f "$r/result.json" ] || { echo "skipping unfinished run $r"; continue; }
    n=$(basename "$r"); cp "$r/result.json" "$dst/run-$n.json"; cp "$r/job.json" "$dst/run-$n.job.json"
    cp "$r/args.yaml" "$dst/run-$n.args.yaml"  # the full Ultralytics arguments (KD settings are in job.json)
    [ -f "$r/results.csv" ] && cp "$r/results.csv" "$dst/run-$n.results.csv"  # the learning curve (restored old runs: none)
  done
  echo "collected $p -> $dst"
done
