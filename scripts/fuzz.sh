#!/usr/bin/env bash
# Coverage-guided fuzzing of ringtrain's parsers with libFuzzer, on stable Rust.
#
#   scripts/fuzz.sh                  # every target, 1,000,000 executions each
#   scripts/fuzz.sh -runs=100000     # libFuzzer's flags go to every target
#   TARGETS="idx csv_rows" scripts/fuzz.sh -max_total_time=20
#
# Builds fuzz/ with SanitizerCoverage (the flags cargo-fuzz passes with `--sanitizer
# none`: no nightly needed), seeds each corpus from fuzz/seeds/TARGET, and runs. A
# panic, a hang (-timeout) or memory past -rss_limit_mb stops with the input saved
# under fuzz/artifacts/TARGET/. The execution counts go to fuzz/stats.txt.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
TARGETS=${TARGETS:-"checkpoint idx csv_rows jsonl_rows text_corpus model_spec"}
ARGS=("$@")
[ ${#ARGS[@]} -eq 0 ] && ARGS=(-runs=1000000)

export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module \
 -Cllvm-args=-sanitizer-coverage-level=4 \
 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
 -Cllvm-args=-sanitizer-coverage-pc-table \
 -Cllvm-args=-sanitizer-coverage-trace-compares"
# An explicit --target keeps RUSTFLAGS off the build scripts and proc macros, which run
# on the host without libFuzzer's runtime.
HOST=$(rustc -vV | sed -n 's/^host: //p')
cargo build --release --bins --target "$HOST" --target-dir target

: > stats.txt
for t in $TARGETS; do
  mkdir -p "corpus/$t" "artifacts/$t"
  log="target/$t.log"
  echo "fuzzing $t ${ARGS[*]}"
  "target/$HOST/release/$t" "corpus/$t" "seeds/$t" -artifact_prefix="artifacts/$t/" \
      -timeout=10 -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 "${ARGS[@]}" \
      > "$log" 2>&1 || { tail -40 "$log"; echo "fuzz target $t failed"; exit 1; }
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$')
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*$')
  echo "$t: $runs executions, coverage $cov, no crash" | tee -a stats.txt
done
