#!/usr/bin/env bash
# Code health, run by `make test` (and on its own: `make style`). Fails on any finding:
# rustfmt (rustfmt.toml), clippy with warnings denied on every target, shellcheck on every
# script, ruff lint and format on the Python (ruff.toml).
. "$(dirname "$0")/lib.sh"
cd "$KIM_ROOT" || exit 1
fail=0
step() {
  log "style: $1"; shift
  if ! "$@"; then fail=1; log "style: FAILED: $*"; fi
}
step "rustfmt" cargo fmt --all --check
step "rustfmt (fuzz)" bash -c 'cd fuzz && cargo fmt --all --check'
step "clippy" cargo clippy --release --workspace --all-targets --quiet -- -D warnings
mapfile -t scripts < <(git ls-files '*.sh')
step "shellcheck" shellcheck -x "${scripts[@]}"
ruff="$KIM_CACHE/venv/bin/ruff"
step "ruff check" "$ruff" check --quiet .
step "ruff format" "$ruff" format --check --quiet .
[ "$fail" -eq 0 ] && log "style: clean"
exit "$fail"
