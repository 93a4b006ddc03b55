#!/usr/bin/env bash
# `make test`: every tier that runs here, against real processes (see docs/testing.md).
. "$(dirname "$0")/lib.sh"
cd "$KIM_ROOT"
out="$KIM_CACHE/test-logs"; mkdir -p "$out"; rm -f "$out"/*.log

# A cold build of the workspace with its tests takes about 6 GiB under target/; a disk that
# fills during the link fails with a linker crash (SIGBUS) that names no cause, so say it first.
free_gib=$(df -Pk "$KIM_ROOT" | awk 'NR == 2 {print int($4 / 1048576)}')
if [ "${free_gib:-0}" -lt 8 ]; then
  log "only ${free_gib} GiB free on the disk of $KIM_ROOT; the build needs about 6 GiB more than target/ holds now (cargo clean elsewhere, or free space)"
fi

timed "dependencies" bash scripts/deps.sh
# The Kubernetes tiers need etcd, kube-apiserver and kubectl (operator tests) plus
# kube-controller-manager, kube-scheduler, kwok and helm (e2e/tests/full.rs) built from their
# Go modules (cached under $KIM_CACHE/bin; about 8 minutes on a fresh 2-core machine, instant after).
timed "kubernetes binaries" bash e2e/tools.sh full
# SeaweedFS, the S3-compatible server of worker/tests/object_storage.rs (about 4 minutes once).
timed "seaweedfs" bash scripts/seaweedfs.sh
# KEDA's ScaledObject CRD, from its Go module (operator/tests/autoscaling.rs).
timed "keda crd" bash scripts/keda-crd.sh
timed "rust build" cargo build --release --workspace --bins --tests

status=0; failed_tiers=()
# Runs one tier, keeps its output, and goes on to the next tier even if it fails.
tier() {
  local name=$1; shift
  log "$name"
  local t0=$SECONDS
  if ! "$@" 2>&1 | tee "$out/$name.log"; then status=1; failed_tiers+=("$name"); log "$name FAILED"; fi
  log "$name took $((SECONDS - t0))s"
}

tier style bash scripts/style.sh
tier rust cargo test --release --workspace --no-fail-fast -- --test-threads=2
tier python "$KIM_CACHE/venv/bin/pytest" -q clients/python/tests
tier python-online "$KIM_CACHE/venv/bin/pytest" -q -p no:cacheprovider clients/python/tests_online
# The benchmark report's rules (bench/targets.py); pure Python, no peer library imported.
tier python-bench "$KIM_CACHE/venv/bin/pytest" -q -p no:cacheprovider bench/tests
# Coverage-guided fuzzing, FUZZ_SECONDS (default 20) per target; one "test result" line.
tier fuzz bash fuzz/run.sh

# One closing line over all runners.
passed=0; failed=0
while read -r p f; do passed=$((passed + p)); failed=$((failed + f)); done < <(
  grep -shE '^test result:' "$out/rust.log" "$out/fuzz.log" | sed -E 's/.* ([0-9]+) passed; ([0-9]+) failed.*/\1 \2/'
  for f in "$out"/python*.log; do
    line=$(grep -E '^=*.*[0-9]+ (passed|failed)' "$f" | tail -n1 || true)
    p=$( (grep -oE '[0-9]+ passed' <<<"$line" || true) | awk '{s+=$1} END{print s+0}')
    x=$( (grep -oE '[0-9]+ (failed|errors?)' <<<"$line" || true) | awk '{s+=$1} END{print s+0}')
    echo "${p:-0} ${x:-0}"
  done
)
echo "make test: $passed passed, $failed failed${failed_tiers[*]:+ (tiers that failed: ${failed_tiers[*]})}"
[ "$failed" -eq 0 ] && [ "$status" -eq 0 ]
