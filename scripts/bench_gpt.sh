#!/usr/bin/env bash
# The GPT training step, ringtrain against PyTorch on the same shapes, interleaved:
# each round runs every (implementation, threads, shape) once, so drift in the machine's
# speed touches both sides alike. Writes JSON lines (one per run) to $OUT, then the
# table and plot of docs/BENCHMARKS.md with scripts/gpt_report.py.
#
#     PYTHON=/path/to/venv/bin/python scripts/bench_gpt.sh            # ~5 minutes on 2 cores
#     ROUNDS=5 OUT=docs/bench/gpt.jsonl scripts/bench_gpt.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
ROUNDS=${ROUNDS:-3}
OUT=${OUT:-docs/bench/gpt.jsonl}
cargo build --release --example step_bench
BIN=target/release/examples/step_bench
small=(--vocab 94 --d-model 64 --layers 2 --heads 4 --block 64 --batch 16 --steps 30)
large=(--vocab 94 --d-model 384 --layers 6 --heads 6 --block 256 --batch 4 --steps 5 --warmup 2)
: > "$OUT"
for round in $(seq "$ROUNDS"); do
  for threads in 1 2; do
    for shape in small large; do
      declare -n args=$shape
      "$BIN" --model gpt --threads "$threads" "${args[@]}" >> "$OUT"
      "$PYTHON" scripts/step_peer.py --model gpt --threads "$threads" "${args[@]}" >> "$OUT"
    done
  done
  echo "round $round of $ROUNDS done" >&2
done
if [[ "${GPU:-0}" == 1 ]]; then
  "$BIN" --model gpt --device gpu "${small[@]}" --steps 10 >> "$OUT"
  "$BIN" --model gpt --device gpu "${large[@]}" --steps 2 --warmup 1 >> "$OUT"
fi
"$PYTHON" scripts/gpt_report.py "$OUT"
