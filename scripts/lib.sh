# Shared helpers for kim's scripts. Source it: `. "$(dirname "$0")/lib.sh"`.
# shellcheck shell=bash
set -euo pipefail
KIM_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export KIM_CACHE="${KIM_CACHE:-$HOME/.cache/kim}"
export KIM_BIN_DIR="${KIM_BIN_DIR:-$KIM_ROOT/target/release}"
mkdir -p "$KIM_CACHE"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# Runs a step and prints how long it took.
timed() {
  local name=$1; shift
  local t0=$SECONDS
  "$@"
  log "$name took $((SECONDS - t0))s"
}

# Installs Debian packages that are missing (needs root, as on CI).
apt_install() {
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing ${missing[*]}"
  local sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Waits until a command succeeds, at most $1 seconds.
wait_for() {
  local limit=$1; shift
  local t0=$SECONDS
  until "$@" >/dev/null 2>&1; do
    (( SECONDS - t0 >= limit )) && return 1
    sleep 0.2
  done
}
