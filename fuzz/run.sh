#!/usr/bin/env bash
# Builds the libFuzzer targets on stable Rust (sanitizer-coverage passes, no ASan: the code
# is safe Rust, so a panic, an overflow, a timeout or an OOM is the failure) and runs each
# for FUZZ_SECONDS (default 20) from the seed corpus in fuzz/corpus/<target>. New inputs go to
# target/fuzz/corpus, crashes to target/fuzz/artifacts; the repo's seeds stay as they are.
# Ends with a cargo-style "test result:" line so scripts/test.sh counts one test per target.
set -uo pipefail
cd "$(dirname "$0")" || exit 1
root=$(cd .. && pwd)
seconds=${FUZZ_SECONDS:-20}
targets=${FUZZ_TARGETS:-"descriptor stream_entry partial snapshot wal grpc_request"}
triple=$(rustc -vV | sed -n 's/^host: //p')
export CARGO_TARGET_DIR="$root/target/fuzz"
# The flags cargo-fuzz passes, all stable. --target keeps them off build scripts and proc macros.
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table -Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
cargo build --release --target "$triple" --bins || { echo "test result: FAILED. 0 passed; 1 failed; fuzz build"; exit 1; }
passed=0; failed=0
for t in $targets; do
  work="$CARGO_TARGET_DIR/corpus/$t"; art="$CARGO_TARGET_DIR/artifacts/$t/"
  mkdir -p "$work" "$art" "corpus/$t"
  log="$CARGO_TARGET_DIR/$t.log"
  if "$CARGO_TARGET_DIR/$triple/release/$t" "$work" "corpus/$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=1024 \
      -max_len=65536 -artifact_prefix="$art" -print_final_stats=1 >"$log" 2>&1; then
    runs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$')
    cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -n1)
    echo "fuzz $t ... ok ($runs runs in ${seconds}s, $cov)"
    passed=$((passed + 1))
  else
    echo "fuzz $t ... FAILED; crash input and log:"; ls "$art"; tail -n 40 "$log"
    failed=$((failed + 1))
  fi
done
result=ok; [ "$failed" -eq 0 ] || result=FAILED
echo "test result: $result. $passed passed; $failed failed; fuzz targets ran ${seconds}s each"
[ "$failed" -eq 0 ]
