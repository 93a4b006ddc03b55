#!/usr/bin/env bash
# kim on a local kind cluster, for users with Docker:
#
#   e2e/kind.sh [up] [--down]   build both images, create (or reuse) the kind cluster, load the
#                               images, helm install charts/kim with the demo Redis, apply
#                               deploy/samples/, wait until the MatchingIndex is Ready, match
#                               through Redis with the Python client and print the result;
#                               --down deletes the cluster afterwards (also when a step fails)
#   e2e/kind.sh down            delete the cluster
#
# Needs docker, kind, kubectl, helm and python3 (>= 3.9) on PATH. Knobs:
#   KIM_KIND_CLUSTER (default kim), KIM_NAMESPACE (default kim-system),
#   KIM_IMAGE_TAG (default 0.1.0), KIM_REDIS_LOCAL_PORT (default 16379),
#   KIM_CACHE (default ~/.cache/kim; holds the Python venv of the client)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CLUSTER="${KIM_KIND_CLUSTER:-kim}"
NS="${KIM_NAMESPACE:-kim-system}"
TAG="${KIM_IMAGE_TAG:-0.1.0}"
REDIS_PORT="${KIM_REDIS_LOCAL_PORT:-16379}"
KIM_CACHE="${KIM_CACHE:-$HOME/.cache/kim}"

log() { printf '[kind %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf '[kind] ERROR: %s\n' "$*" >&2; exit 1; }

need() {
  local t
  for t in "$@"; do command -v "$t" >/dev/null 2>&1 || die "$t is not on PATH"; done
}

down() {
  log "deleting kind cluster $CLUSTER"
  kind delete cluster --name "$CLUSTER"
}

# On exit: stop the port-forward, remove the probe files, delete the cluster if asked to.
PF="" DATA="" TEARDOWN=0
cleanup() {
  [[ -z "$PF" ]] || kill "$PF" 2>/dev/null || true
  [[ -z "$DATA" ]] || rm -rf "$DATA"
  if [[ $TEARDOWN == 1 ]]; then down; fi
}

# Shows what is going on when a wait times out.
diagnose() {
  kubectl -n "$NS" get pods,jobs,deployments,pvc,matchingindexes,indexers -o wide || true
  kubectl -n "$NS" get events --sort-by=.lastTimestamp | tail -n 30 || true
  kubectl -n "$NS" logs deployment/kim-operator --tail=50 || true
}

up() {
  need docker kind kubectl helm python3
  cd "$ROOT"

  log "building images kim-operator:$TAG and kim-worker:$TAG"
  docker build --target operator -t "kim-operator:$TAG" .
  docker build --target worker -t "kim-worker:$TAG" .

  if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
    log "reusing kind cluster $CLUSTER"
  else
    log "creating kind cluster $CLUSTER"
    kind create cluster --name "$CLUSTER" --wait 180s
  fi
  kubectl config use-context "kind-$CLUSTER" >/dev/null
  kind load docker-image --name "$CLUSTER" "kim-operator:$TAG" "kim-worker:$TAG"

  log "helm install (namespace $NS, demo Redis)"
  helm upgrade --install kim charts/kim --namespace "$NS" --create-namespace \
    --set image.tag="$TAG" --set workerImage.tag="$TAG" --set redis.deploy=true \
    --wait --timeout 5m

  log "applying deploy/samples/"
  kubectl -n "$NS" apply -f deploy/samples/
  kubectl -n "$NS" wait --for=condition=complete job/kim-sample-gen --timeout=300s || { diagnose; die "sample generator Job did not complete"; }
  kubectl -n "$NS" wait --for=jsonpath='{.status.phase}'=Ready matchingindex/faces --timeout=600s || { diagnose; die "MatchingIndex faces is not Ready"; }
  kubectl -n "$NS" rollout status deployment/faces-matcher --timeout=300s || { diagnose; die "matchers not ready"; }
  kubectl -n "$NS" get matchingindexes,indexers

  # The probes: the sample Job's own `kim-worker gen` arguments, run again locally into a
  # temporary directory (same seed, same files).
  local args=() a prev=""
  DATA="$(mktemp -d)"
  while IFS= read -r a; do
    if [[ $prev == --out ]]; then args+=(/out); else args+=("$a"); fi
    prev=$a
  done < <(
    kubectl -n "$NS" get job kim-sample-gen -o jsonpath='{range .spec.template.spec.containers[0].args[*]}{@}{"\n"}{end}')
  docker run --rm --user "$(id -u):$(id -g)" -v "$DATA:/out" "kim-worker:$TAG" "${args[@]}" >/dev/null

  log "Python client (venv in $KIM_CACHE/kind-venv)"
  local venv="$KIM_CACHE/kind-venv"
  [[ -x "$venv/bin/python" ]] || python3 -m venv "$venv"
  "$venv/bin/pip" install -q "$ROOT/clients/python" numpy

  kubectl -n "$NS" port-forward svc/kim-redis "$REDIS_PORT:6379" >/dev/null 2>&1 &
  PF=$!
  local i
  for i in $(seq 1 50); do
    (exec 3<>"/dev/tcp/127.0.0.1/$REDIS_PORT") 2>/dev/null && break
    [[ $i -lt 50 ]] || die "port-forward to the demo Redis did not come up"
    sleep 0.2
  done
  log "matching through Redis"
  "$venv/bin/python" clients/python/examples/luna_example.py "redis://127.0.0.1:$REDIS_PORT" "$DATA"
  log "done: kim runs on kind cluster $CLUSTER (tear down: e2e/kind.sh down)"
}

cmd="up"
for a in "$@"; do
  case "$a" in
    up) cmd=up ;;
    down) cmd=down ;;
    --down) TEARDOWN=1 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) die "unknown argument '$a' (usage: e2e/kind.sh [up] [--down] | down)" ;;
  esac
done

case "$cmd" in
  down) need kind; down ;;
  up) trap cleanup EXIT; up ;;
esac
