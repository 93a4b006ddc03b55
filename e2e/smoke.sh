#!/usr/bin/env bash
# Smoke test of the Kubernetes test tier: build the tools, start a cluster, exercise it,
# tear it down. Exits non-zero on any failure.
#
#   e2e/smoke.sh          # core tier: etcd + kube-apiserver
#   e2e/smoke.sh full     # core checks + controller-manager, scheduler, kwok
#
# The cluster lives in $KIM_CLUSTER_DIR (default $KIM_CACHE/smoke-<tier>), so a cluster
# started by hand with e2e/cluster.sh up (in $KIM_CACHE/cluster) is not disturbed.
set -euo pipefail

TIER="${1:-core}"
case "$TIER" in core|full) ;; *) echo "usage: $0 [core|full]" >&2; exit 2 ;; esac

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export KIM_CACHE="${KIM_CACHE:-$HOME/.cache/kim}"
export KIM_BIN="${KIM_BIN:-$KIM_CACHE/bin}"
export KIM_CLUSTER_DIR="${KIM_CLUSTER_DIR:-$KIM_CACHE/smoke-$TIER}"
CLUSTER="$REPO_ROOT/e2e/cluster.sh"
NODE="${KIM_KWOK_NODE:-kim-node-0}"
NS=smoke
WORK="$(mktemp -d)"

PASSED=0; FAILED=0; CURRENT=""
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.1fs", b-a}'; }
log() { printf '[smoke %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

dump_logs() {
  local f
  for f in "$KIM_CLUSTER_DIR"/logs/*.log; do
    [[ -f "$f" ]] || continue
    printf '[smoke] ---- last 25 lines of %s ----\n' "$f" >&2
    tail -n 25 "$f" >&2
  done
}
finish() {
  local rc=$?
  set +e
  if [[ $rc -ne 0 ]]; then
    [[ -z "$CURRENT" ]] || { log "FAIL: $CURRENT"; FAILED=$((FAILED + 1)); }
    dump_logs
  fi
  bash "$CLUSTER" down
  rm -rf "$WORK"
  echo "smoke-$TIER: $PASSED passed, $FAILED failed"
  exit $rc
}
trap finish EXIT

k() { "$KIM_BIN/kubectl" --kubeconfig="$KIM_CLUSTER_DIR/kubeconfig" "$@"; }
step() { CURRENT="$1"; STEP_T0=$(now); log "-- $1"; }
ok() { log "ok: $CURRENT ($(since "$STEP_T0"))"; PASSED=$((PASSED + 1)); CURRENT=""; }
die() { log "$*"; exit 1; }
# retry SECONDS CMD... : run CMD until it succeeds, or fail after SECONDS
retry() {
  local deadline=$(( $(date +%s) + $1 )); shift
  until "$@"; do
    (( $(date +%s) < deadline )) || { log "gave up after retrying: $*"; return 1; }
    sleep 0.5
  done
}

T0=$(now)
step "build tools ($TIER)"
bash "$REPO_ROOT/e2e/tools.sh" "$TIER"
ok

# A leftover cluster of an earlier, killed run would make `up` refuse to start.
bash "$CLUSTER" down >/dev/null 2>&1 || true

step "cluster up ($TIER)"
bash "$CLUSTER" up "$TIER"
ok

step "create namespace"
k create namespace "$NS"
k get namespace "$NS" -o jsonpath='{.status.phase}' | grep -qx Active
ok

step "CRD and custom resource"
cat >"$WORK/crd.yaml" <<'EOF'
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.smoke.kim.dev
spec:
  group: smoke.kim.dev
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [size]
            properties:
              size: {type: integer, minimum: 1}
          status:
            type: object
            properties:
              ready: {type: boolean}
EOF
k apply -f "$WORK/crd.yaml"
k wait --for=condition=Established crd/widgets.smoke.kim.dev --timeout=60s
# Discovery of the new group can lag a moment behind Established.
retry 30 k -n "$NS" apply -f - <<'EOF'
apiVersion: smoke.kim.dev/v1
kind: Widget
metadata: {name: w1}
spec: {size: 3}
EOF
[[ "$(k -n "$NS" get widget w1 -o jsonpath='{.spec.size}')" == 3 ]] || die "widget w1 has the wrong size"
# schema validation is enforced
if k -n "$NS" apply -f - >"$WORK/invalid.out" 2>&1 <<'EOF'
apiVersion: smoke.kim.dev/v1
kind: Widget
metadata: {name: w2}
spec: {size: 0}
EOF
then die "a Widget with size 0 was accepted despite minimum: 1"; fi
grep -q 'spec.size' "$WORK/invalid.out" || die "unexpected rejection: $(cat "$WORK/invalid.out")"
# status subresource
k -n "$NS" patch widget w1 --subresource=status --type=merge -p '{"status":{"ready":true}}' >/dev/null
[[ "$(k -n "$NS" get widget w1 -o jsonpath='{.status.ready}')" == true ]] || die "status subresource patch lost"
ok

step "server-side apply"
cat >"$WORK/cm.yaml" <<'EOF'
apiVersion: v1
kind: ConfigMap
metadata: {name: ssa}
data: {a: "1"}
EOF
k -n "$NS" apply --server-side --field-manager=smoke-a -f "$WORK/cm.yaml"
# a second manager that sets the same field conflicts ...
sed 's/"1"/"2"/' "$WORK/cm.yaml" >"$WORK/cm2.yaml"
if k -n "$NS" apply --server-side --field-manager=smoke-b -f "$WORK/cm2.yaml" >"$WORK/conflict.out" 2>&1; then
  die "server-side apply by a second manager did not conflict"
fi
grep -qi conflict "$WORK/conflict.out" || die "unexpected error: $(cat "$WORK/conflict.out")"
# ... unless it forces the change
k -n "$NS" apply --server-side --force-conflicts --field-manager=smoke-b -f "$WORK/cm2.yaml"
[[ "$(k -n "$NS" get cm ssa -o jsonpath='{.data.a}')" == 2 ]] || die "forced apply did not win"
k -n "$NS" get cm ssa -o jsonpath='{range .metadata.managedFields[*]}{.manager}/{.operation}{"\n"}{end}' \
  | grep -qx 'smoke-b/Apply' || die "managedFields has no smoke-b/Apply entry"
ok

step "Lease"
k -n "$NS" apply --server-side --field-manager=smoke -f - <<'EOF'
apiVersion: coordination.k8s.io/v1
kind: Lease
metadata: {name: smoke-leader}
spec: {holderIdentity: smoke-1, leaseDurationSeconds: 15}
EOF
[[ "$(k -n "$NS" get lease smoke-leader -o jsonpath='{.spec.holderIdentity}')" == smoke-1 ]] || die "lease not stored"
ok

step "ServiceAccount token and RBAC"
k -n "$NS" create serviceaccount robot
TOKEN="$(k -n "$NS" create token robot --duration=10m)"
[[ -n "$TOKEN" ]] || die "empty token"
SERVER="$(k config view --raw -o jsonpath='{.clusters[0].cluster.server}')"
k config view --raw -o jsonpath='{.clusters[0].cluster.certificate-authority-data}' | base64 -d >"$WORK/ca.crt"
kt() { "$KIM_BIN/kubectl" --kubeconfig=/dev/null --server="$SERVER" --certificate-authority="$WORK/ca.crt" --token="$TOKEN" "$@"; }
# the token authenticates as the service account ...
kt auth whoami -o jsonpath='{.status.userInfo.username}' | grep -qx "system:serviceaccount:$NS:robot" \
  || die "token does not authenticate as system:serviceaccount:$NS:robot"
# ... which RBAC does not allow to read secrets or configmaps
if kt -n "$NS" get secrets >"$WORK/forbidden.out" 2>&1; then die "listing secrets with the robot token was allowed"; fi
grep -q 'Forbidden\|forbidden' "$WORK/forbidden.out" || die "expected Forbidden, got: $(cat "$WORK/forbidden.out")"
if kt -n "$NS" get configmap ssa >/dev/null 2>&1; then die "reading a configmap was allowed before any Role"; fi
# grant exactly "get configmaps" and see it work, and only that
k -n "$NS" create role cm-reader --verb=get --resource=configmaps
k -n "$NS" create rolebinding robot-cm-reader --role=cm-reader --serviceaccount="$NS:robot"
retry 20 kt -n "$NS" get configmap ssa -o name >/dev/null
if kt -n "$NS" delete configmap ssa >/dev/null 2>&1; then die "robot could delete a configmap"; fi
[[ "$(k -n "$NS" auth can-i list secrets --as="system:serviceaccount:$NS:robot" || true)" == no ]] \
  || die "impersonated can-i says the robot may list secrets"
ok

if [[ "$TIER" == full ]]; then
  step "Deployment -> ReplicaSet -> Pod scheduled on the kwok node"
  k -n "$NS" create deployment web --image=registry.invalid/kim/none:0 --replicas=2
  has_rs() { [[ -n "$(k -n "$NS" get rs -l app=web -o name)" ]]; }
  retry 60 has_rs
  RS_OWNER="$(k -n "$NS" get rs -l app=web -o jsonpath='{.items[0].metadata.ownerReferences[0].kind}/{.items[0].metadata.ownerReferences[0].name}')"
  [[ "$RS_OWNER" == Deployment/web ]] || die "ReplicaSet owner is '$RS_OWNER'"
  k -n "$NS" rollout status deployment/web --timeout=90s
  NODES="$(k -n "$NS" get pods -l app=web -o jsonpath='{range .items[*]}{.spec.nodeName}{"\n"}{end}' | sort -u)"
  [[ "$NODES" == "$NODE" ]] || die "web pods run on '$NODES', expected $NODE"
  k -n "$NS" get pods -l app=web -o wide
  ok

  step "pods get service account tokens; deleted pods go away"
  POD="$(k -n "$NS" get pods -l app=web -o jsonpath='{.items[0].metadata.name}')"
  k -n "$NS" get pod "$POD" -o jsonpath='{.spec.volumes[*].projected.sources[*].serviceAccountToken.path}' | grep -q token \
    || die "pod $POD has no projected service account token"
  k -n "$NS" get configmap kube-root-ca.crt >/dev/null || die "kube-root-ca.crt was not published"
  k -n "$NS" delete pod "$POD" --wait=true --timeout=60s
  k -n "$NS" rollout status deployment/web --timeout=60s
  ok

  step "Job pod is scheduled and left Pending for a harness"
  k -n "$NS" create job work --image=registry.invalid/kim/none:0 -- /bin/true
  job_pod_bound() { [[ -n "$(k -n "$NS" get pods -l job-name=work -o jsonpath='{.items[*].spec.nodeName}')" ]]; }
  retry 60 job_pod_bound
  JPOD="$(k -n "$NS" get pods -l job-name=work -o jsonpath='{.items[0].metadata.name}')"
  sleep 3
  PHASE="$(k -n "$NS" get pod "$JPOD" -o jsonpath='{.status.phase}')"
  [[ "$PHASE" == Pending ]] || die "job pod $JPOD is $PHASE; kwok should leave job pods alone by default"
  # play the harness: report the pod as succeeded and watch the Job complete
  NOWTS="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  k -n "$NS" patch pod "$JPOD" --subresource=status --type=merge -p "{\"status\":{\"phase\":\"Succeeded\",\"containerStatuses\":[{\"name\":\"work\",\"image\":\"registry.invalid/kim/none:0\",\"imageID\":\"\",\"ready\":false,\"restartCount\":0,\"state\":{\"terminated\":{\"exitCode\":0,\"reason\":\"Completed\",\"startedAt\":\"$NOWTS\",\"finishedAt\":\"$NOWTS\"}}}]}}"
  k -n "$NS" wait --for=condition=Complete job/work --timeout=60s
  ok

  step "helm install/uninstall a chart"
  export HELM_CACHE_HOME="$WORK/helm/cache" HELM_CONFIG_HOME="$WORK/helm/config" HELM_DATA_HOME="$WORK/helm/data"
  H() { "$KIM_BIN/helm" --kubeconfig="$KIM_CLUSTER_DIR/kubeconfig" "$@"; }
  H create "$WORK/demo" >/dev/null
  H install demo "$WORK/demo" -n "$NS" --set image.repository=registry.invalid/kim/none --set image.tag=0 \
    --wait --timeout=90s >/dev/null
  [[ "$(H status demo -n "$NS" -o json | grep -o '"status":"[a-z]*"' | head -1)" == '"status":"deployed"' ]] \
    || die "helm release demo is not deployed"
  k -n "$NS" get deployment demo -o jsonpath='{.status.readyReplicas}' | grep -qx 1 || die "demo deployment not ready"
  H uninstall demo -n "$NS" --wait --timeout=60s
  ok
fi

log "smoke-$TIER passed in $(since "$T0")"
