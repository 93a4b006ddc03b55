#!/usr/bin/env bash
# A local Kubernetes cluster to try kim on, without Docker (`make cluster`, `make cluster-down`):
# the Go-built control plane of e2e/cluster.sh (`up full`: etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, kwok), the node harness `kim-node` whose pods run as
# local processes (kim-worker and kim-operator images map to target/release binaries), and a
# redis-server on loopback for the MatchingIndexes.
#
#   e2e/local.sh up       # build what is missing, start everything, print how to use it
#   e2e/local.sh down     # stop everything `up` started and remove the cluster dir
#   e2e/local.sh env      # print `export KUBECONFIG=...` and PATH (kubectl, helm)
#   e2e/local.sh status   # what runs, on which ports
#
# Environment knobs (all optional):
#   KIM_CLUSTER_DIR   state, logs and kubeconfig (default $KIM_CACHE/local)
#   KIM_LOCAL_BUILD   0: do not run cargo build (the binaries must exist)
#   KIM_NODE_BIN      the kim-node binary (default target/release/kim-node)
#   KIM_REDIS_PORT    fixed Redis port (default: a free one)
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KIM_CACHE="${KIM_CACHE:-$HOME/.cache/kim}"
export KIM_CACHE
KIM_BIN="${KIM_BIN:-$KIM_CACHE/bin}"
export KIM_CLUSTER_DIR="${KIM_CLUSTER_DIR:-$KIM_CACHE/local}"
DIR="$KIM_CLUSTER_DIR"
RUN="$DIR/run"
LOGS="$DIR/logs"
TARGET="${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release"
NODE_BIN="${KIM_NODE_BIN:-$TARGET/kim-node}"
NODE="kim-harness-0"

log() { printf '[local %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.1fs", b-a}'; }
kctl() { "$KIM_BIN/kubectl" --kubeconfig="$DIR/kubeconfig" "$@"; }
alive() { [[ -f "$RUN/$1.pid" ]] && kill -0 "$(cat "$RUN/$1.pid")" 2>/dev/null; }

start() { # start NAME CMD... ; detached, logs to $LOGS/NAME.log, pid in $RUN/NAME.pid
  local name="$1"; shift
  setsid "$@" >"$LOGS/$name.log" 2>&1 </dev/null &
  echo $! >"$RUN/$name.pid"
}

stop() { # stop NAME ; TERM, up to 20 s, then KILL
  alive "$1" || return 0
  local pid; pid="$(cat "$RUN/$1.pid")"
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
  log "$1 (pid $pid) did not stop on TERM, killing it"
  kill -KILL "$pid" 2>/dev/null || true
}

fail() {
  printf '[local] ERROR: %s\n' "$1" >&2
  [[ -n "${2:-}" && -f "$2" ]] && tail -n 30 "$2" >&2
  if [[ "${UP_IN_PROGRESS:-0}" == 1 ]]; then
    UP_IN_PROGRESS=0
    cmd_down
  fi
  exit 1
}

free_port() {
  local p
  for _ in $(seq 1 100); do
    p=$(( 20000 + RANDOM % 12000 ))
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
  done
  fail "no free port found"
}

cmd_up() {
  local t0; t0=$(now)
  if alive kube-apiserver; then
    log "already up in $DIR"
    usage_hint
    return 0
  fi
  command -v redis-server >/dev/null || fail "redis-server not found: run \`make deps\` (scripts/deps.sh) first"
  bash "$REPO_ROOT/e2e/tools.sh" full
  if [[ "${KIM_LOCAL_BUILD:-1}" != 0 ]]; then
    log "building kim-worker, kim-operator and kim-node (release)"
    (cd "$REPO_ROOT" && cargo build --release -p kim-worker -p kim-operator -p kim-e2e --bin kim-node)
  fi
  local b
  for b in "$NODE_BIN" "$TARGET/kim-worker" "$TARGET/kim-operator"; do
    [[ -x "$b" ]] || fail "$b is missing (build it, or unset KIM_LOCAL_BUILD)"
  done
  UP_IN_PROGRESS=1
  bash "$REPO_ROOT/e2e/cluster.sh" up full || fail "the control plane did not start"
  mkdir -p "$RUN" "$LOGS"
  # kwok's node only fakes pods; every real pod goes to the harness node.
  kctl cordon kim-node-0 >/dev/null
  local port="${KIM_REDIS_PORT:-$(free_port)}"
  start redis redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no
  local i
  for i in $(seq 1 50); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    alive redis || fail "redis-server exited" "$LOGS/redis.log"
    sleep 0.2
  done
  echo "redis://127.0.0.1:$port" >"$DIR/redis.url"
  start kim-node "$NODE_BIN" --kubeconfig "$DIR/kubeconfig" --root "$DIR/harness" --node "$NODE" \
    --image "kim-worker=$TARGET/kim-worker" --image "kim-operator=$TARGET/kim-operator"
  for i in $(seq 1 150); do
    kctl get node "$NODE" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null | grep -qx True && break
    alive kim-node || fail "kim-node exited" "$LOGS/kim-node.log"
    (( i < 150 )) || fail "node $NODE not Ready after 30 s" "$LOGS/kim-node.log"
    sleep 0.2
  done
  UP_IN_PROGRESS=0
  log "up in $(since "$t0")"
  usage_hint
}

usage_hint() {
  local url; url="$(cat "$DIR/redis.url" 2>/dev/null || echo 'redis://127.0.0.1:6379')"
  cat <<EOT

Local cluster ready (no Docker): pods scheduled to node $NODE run as processes on this machine.
Point kubectl and helm at it:

  eval "\$(e2e/local.sh env)"
  kubectl get nodes

Try the operator:

  helm install kim charts/kim -n kim --create-namespace --set redis.url=$url
  kubectl -n kim apply -f deploy/samples/
  kubectl -n kim get mi -w          # Ready with 2000 vectors

Container logs: $DIR/harness/logs/   Stop everything: make cluster-down (e2e/local.sh down)
EOT
}

cmd_down() {
  local t0; t0=$(now)
  # The harness first: it stops its pods' processes and removes its Node while the API is up.
  stop kim-node
  stop redis
  KIM_CLUSTER_DIR="$DIR" bash "$REPO_ROOT/e2e/cluster.sh" down
  log "down in $(since "$t0")"
}

cmd_env() {
  echo "export KUBECONFIG=\"$DIR/kubeconfig\""
  echo "export PATH=\"$KIM_BIN:\$PATH\""
}

cmd_status() {
  bash "$REPO_ROOT/e2e/cluster.sh" status || return 1
  local c rc=0
  for c in kim-node redis; do
    if alive "$c"; then echo "$c: running (pid $(cat "$RUN/$c.pid"))"; else echo "$c: NOT running"; rc=1; fi
  done
  [[ -f "$DIR/redis.url" ]] && echo "redis: $(cat "$DIR/redis.url")"
  return $rc
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  env) cmd_env ;;
  status) cmd_status ;;
  *) echo "usage: $0 up | down | env | status" >&2; exit 2 ;;
esac
