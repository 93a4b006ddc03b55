#!/usr/bin/env bash
# A real Kubernetes control plane on loopback, built by e2e/tools.sh. No Docker, no kubelet.
#
#   e2e/cluster.sh up [core|full]   # core: etcd + kube-apiserver
#                                   # full: + kube-controller-manager, kube-scheduler,
#                                   #         kwok (one fake Node)
#   e2e/cluster.sh down             # stop what `up` started, remove the cluster dir
#   e2e/cluster.sh env              # print `export KUBECONFIG=...` (and PATH for kubectl)
#   e2e/cluster.sh status           # which components run, on which ports
#
# State, certificates, logs and the admin kubeconfig live in $KIM_CLUSTER_DIR
# (default $KIM_CACHE/cluster, KIM_CACHE default ~/.cache/kim).
#
# Environment knobs (all optional):
#   KIM_ETCD_PORT KIM_ETCD_PEER_PORT KIM_APISERVER_PORT KIM_KCM_PORT KIM_SCHEDULER_PORT
#   KIM_KWOK_PORT          fixed ports instead of free ones picked at random
#   KIM_KWOK_NODE          name of the fake node (default kim-node-0)
#   KIM_KWOK_POD_STAGES    comma list of kwok pod lifecycle stages (default "ready,delete"):
#       ready         pods NOT owned by a Job become Running/Ready once bound to the node
#       delete        pods being deleted are finalised (finalizers dropped, object removed);
#                     without it a deleted pod stays Terminating forever (no kubelet)
#       job-ready     pods owned by a Job also become Running/Ready
#       job-complete  Running pods owned by a Job become Succeeded (exit code 0)
#       none          no pod stages at all: pods stay Pending after scheduling
#     The default leaves Job pods Pending on the fake node so a test harness can run
#     them itself and patch their status. Node stages (initialise + heartbeat) and the
#     node Lease heartbeat are always on.
#   KIM_UP_TIMEOUT         seconds to wait for each component (default 120)
#   KIM_AUDIT_POLICY       audit policy file: kube-apiserver then writes $KIM_CLUSTER_DIR/logs/audit.log
#                          (JSON lines; e2e/tests/full.rs checks the operator's requests against its RBAC)
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KIM_CACHE="${KIM_CACHE:-$HOME/.cache/kim}"
export KIM_CACHE
KIM_BIN="${KIM_BIN:-$KIM_CACHE/bin}"
export KIM_BIN
DIR="${KIM_CLUSTER_DIR:-$KIM_CACHE/cluster}"
PKI="$DIR/pki"
LOGS="$DIR/logs"
RUN="$DIR/run"
KUBECONFIG_FILE="$DIR/kubeconfig"
UP_TIMEOUT="${KIM_UP_TIMEOUT:-120}"
NODE_NAME="${KIM_KWOK_NODE:-kim-node-0}"
POD_STAGES="${KIM_KWOK_POD_STAGES:-ready,delete}"
# Virtual ranges (no kube-proxy, no real pods). Service IPs are on loopback so that
# anything dialling a ClusterIP (webhooks, aggregated APIs) stays on this machine.
SERVICE_CIDR="${KIM_SERVICE_CIDR:-127.96.0.0/16}"
POD_CIDR="${KIM_POD_CIDR:-10.244.0.0/16}"

log() { printf '[cluster %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.1fs", b-a}'; }
fail() {
  trap - ERR
  printf '[cluster] ERROR: %s\n' "$1" >&2
  local f
  for f in "${@:2}"; do
    if [[ -f "$f" ]]; then
      printf '[cluster] ---- last 40 lines of %s ----\n' "$f" >&2
      tail -n 40 "$f" >&2
      printf '[cluster] ---- end of %s ----\n' "$f" >&2
    fi
  done
  if [[ "${UP_IN_PROGRESS:-0}" == 1 ]]; then
    UP_IN_PROGRESS=0
    stop_all
    # shellcheck disable=SC2016 # the backticks are literal text for the reader
    printf '[cluster] stopped what was started; logs are kept in %s until `%s down`\n' "$LOGS" "$0" >&2
  fi
  exit 1
}

# ---------------------------------------------------------------------------------------
ensure_openssl() {
  command -v openssl >/dev/null 2>&1 && return 0
  log "openssl not found, installing it with apt-get"
  local sudo=""
  [[ "$(id -u)" == 0 ]] || sudo="sudo"
  $sudo apt-get install -y openssl >/dev/null 2>&1 \
    || { $sudo apt-get update >/dev/null && $sudo apt-get install -y openssl >/dev/null; } \
    || fail "openssl is missing and apt-get install -y openssl failed"
}

# A port is taken if any TCP socket (listening or connected, IPv4 or IPv6) uses it
# as its local port, or something answers on it.
port_in_use() {
  local hex; hex=$(printf '%04X' "$1")
  awk -v h=":$hex" 'NR > 1 && substr($2, length($2) - 4) == h { found = 1 } END { exit !found }' \
    /proc/net/tcp /proc/net/tcp6 2>/dev/null && return 0
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}
declare -A TAKEN=()
pick_port() { # pick_port VAR [FIXED_PORT] -> sets VAR to a free port (not a subshell:
  local var="$1" p="${2:-}"   # TAKEN must remember the ports already handed out)
  if [[ -n "$p" ]]; then
    port_in_use "$p" && fail "port $p (from environment) is already in use"
    TAKEN[$p]=1; printf -v "$var" '%s' "$p"; return
  fi
  # Stay below the kernel's ephemeral range, where outgoing connections take their
  # local ports (a port picked there can be grabbed between the check and the bind).
  local lo=10000 hi=32767 eph i
  eph=$(awk '{print $1}' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
  if (( eph > lo + 1000 )); then hi=$(( eph - 1 )); fi
  for i in $(seq 1 200); do
    p=$(( lo + (RANDOM * 32768 + RANDOM) % (hi - lo + 1) ))
    [[ -z "${TAKEN[$p]:-}" ]] || continue
    port_in_use "$p" && continue
    TAKEN[$p]=1; printf -v "$var" '%s' "$p"; return
  done
  fail "could not find a free port on 127.0.0.1"
}

alive() { [[ -f "$RUN/$1.pid" ]] && kill -0 "$(cat "$RUN/$1.pid")" 2>/dev/null; }

start() { # start NAME CMD... ; detached, logs to $LOGS/NAME.log, pid in $RUN/NAME.pid
  local name="$1"; shift
  printf '%q ' "$@" >"$RUN/$name.cmd"; echo >>"$RUN/$name.cmd"
  setsid "$@" >"$LOGS/$name.log" 2>&1 </dev/null &
  echo $! >"$RUN/$name.pid"
}

wait_for() { # wait_for NAME DESCRIPTION CMD... ; polls CMD until success, component must stay alive
  local name="$1" what="$2"; shift 2
  local t0; t0=$(now)
  local deadline=$(( $(date +%s) + UP_TIMEOUT ))
  until "$@" >/dev/null 2>&1; do
    alive "$name" || fail "$name exited while waiting for $what" "$LOGS/$name.log"
    (( $(date +%s) < deadline )) || fail "timed out after ${UP_TIMEOUT}s waiting for $what" "$LOGS/$name.log"
    sleep 0.2
  done
  log "$what after $(since "$t0")"
}

# ---------------------------------------------------------------------------------------
gen_pki() {
  mkdir -p "$PKI"
  local t0; t0=$(now)
  (
    cd "$PKI"
    umask 077
    # ca NAME CN
    ca() {
      openssl ecparam -name prime256v1 -genkey -noout -out "$1.key" 2>/dev/null
      printf '%s\n' "[req]" "distinguished_name = dn" "prompt = no" "x509_extensions = ext" \
        "[dn]" "CN = $2" "[ext]" "basicConstraints = critical,CA:TRUE" \
        "keyUsage = critical,digitalSignature,keyEncipherment,keyCertSign" \
        "subjectKeyIdentifier = hash" >"$1.cnf"
      openssl req -x509 -new -key "$1.key" -days 3650 -config "$1.cnf" -out "$1.crt" 2>/dev/null
    }
    ca ca kim-e2e-ca
    ca front-proxy-ca kim-e2e-front-proxy-ca
    # leaf NAME CN O EXTKEYUSAGE [SAN] [CA]
    leaf() {
      local n="$1" cn="$2" o="$3" eku="$4" san="${5:-}" signer="${6:-ca}"
      openssl ecparam -name prime256v1 -genkey -noout -out "$n.key" 2>/dev/null
      {
        echo "[req]"; echo "distinguished_name = dn"; echo "prompt = no"
        echo "[dn]"; [[ -z "$o" ]] || echo "O = $o"; echo "CN = $cn"
        echo "[ext]"
        echo "basicConstraints = critical,CA:FALSE"
        echo "keyUsage = critical,digitalSignature,keyEncipherment"
        echo "extendedKeyUsage = $eku"
        [[ -z "$san" ]] || echo "subjectAltName = $san"
      } >"$n.cnf"
      openssl req -new -key "$n.key" -config "$n.cnf" -out "$n.csr" 2>/dev/null
      openssl x509 -req -in "$n.csr" -CA "$signer.crt" -CAkey "$signer.key" -CAcreateserial -days 3650 \
        -extfile "$n.cnf" -extensions ext -out "$n.crt" 2>/dev/null
      rm -f "$n.csr"
    }
    local svc_ip; svc_ip="$(first_service_ip)"
    leaf apiserver kube-apiserver "" serverAuth \
      "DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:127.0.0.1,IP:$svc_ip"
    leaf admin kim-admin system:masters clientAuth
    leaf kube-controller-manager system:kube-controller-manager "" clientAuth
    leaf kube-scheduler system:kube-scheduler "" clientAuth
    # the apiserver's identity towards aggregated API servers (requestheader authn)
    leaf front-proxy-client front-proxy-client "" clientAuth "" front-proxy-ca
    # service-account token signing key (ES256)
    openssl ecparam -name prime256v1 -genkey -noout -out sa.key 2>/dev/null
    openssl ec -in sa.key -pubout -out sa.pub 2>/dev/null
  ) || fail "generating certificates with openssl failed"
  log "certificates generated in $(since "$t0")"
}

first_service_ip() { # 127.96.0.0/16 -> 127.96.0.1
  local net="${SERVICE_CIDR%/*}"
  local a b c d; IFS=. read -r a b c d <<<"$net"
  echo "$a.$b.$c.$((d + 1))"
}

write_kubeconfig() { # write_kubeconfig FILE CERTNAME USER
  local f="$1" cert="$2" user="$3" k="$KIM_BIN/kubectl"
  rm -f "$f"
  "$k" config --kubeconfig="$f" set-cluster kim --server="https://127.0.0.1:$APISERVER_PORT" \
    --certificate-authority="$PKI/ca.crt" --embed-certs=true >/dev/null
  "$k" config --kubeconfig="$f" set-credentials "$user" --client-certificate="$PKI/$cert.crt" \
    --client-key="$PKI/$cert.key" --embed-certs=true >/dev/null
  "$k" config --kubeconfig="$f" set-context kim --cluster=kim --user="$user" >/dev/null
  "$k" config --kubeconfig="$f" use-context kim >/dev/null
  chmod 600 "$f"
}

kwok_config() {
  local stages=() s
  IFS=, read -r -a stages <<<"$POD_STAGES"
  for s in "${stages[@]}"; do
    case "$s" in ready|delete|job-ready|job-complete|none|"") ;;
      *) fail "unknown kwok pod stage '$s' in KIM_KWOK_POD_STAGES (ready,delete,job-ready,job-complete,none)" ;;
    esac
  done
  has() { local x; for x in "${stages[@]}"; do [[ "$x" == "$1" ]] && return 0; done; return 1; }
  local k="$REPO_ROOT/e2e/kwok"
  cat "$k/node.yaml"
  running() { printf -- '---\n'; sed -e "s/__NAME__/$1/" -e "s/__OWNER_OPERATOR__/$2/" "$k/pod-running.yaml"; }
  if has ready; then running kim-pod-ready NotIn; fi
  if has job-ready; then running kim-job-pod-ready In; fi
  if has job-complete; then printf -- '---\n'; cat "$k/job-pod-complete.yaml"; fi
  if has delete; then printf -- '---\n'; cat "$k/pod-delete.yaml"; fi
}

# ---------------------------------------------------------------------------------------
kctl() { "$KIM_BIN/kubectl" --kubeconfig="$KUBECONFIG_FILE" "$@"; }
readyz() { curl -sf --max-time 2 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
             "https://127.0.0.1:$APISERVER_PORT/readyz" | grep -qx ok; }
healthz() { curl -skf --max-time 2 "https://127.0.0.1:$1/healthz" | grep -qx ok; }

cmd_up() {
  local tier="${1:-core}"
  case "$tier" in core|full) ;; *) fail "usage: cluster.sh up [core|full]" ;; esac
  local T0; T0=$(now)
  local c
  for c in kwok kube-scheduler kube-controller-manager kube-apiserver etcd; do
    alive "$c" && fail "a cluster is already running in $DIR ($c pid $(cat "$RUN/$c.pid")); run: $0 down"
  done
  rm -rf "$DIR"
  mkdir -p "$DIR" "$LOGS" "$RUN"
  UP_IN_PROGRESS=1
  set -o errtrace
  trap 'fail "interrupted"' INT TERM
  trap 'fail "command failed: $BASH_COMMAND"' ERR

  bash "$REPO_ROOT/e2e/tools.sh" "$tier" || fail "building the tools failed (see above)"
  local t; for t in etcd kube-apiserver kubectl; do
    [[ -x "$KIM_BIN/$t" ]] || fail "$KIM_BIN/$t is missing after e2e/tools.sh"
  done
  command -v curl >/dev/null 2>&1 || fail "curl is needed to probe component health"
  ensure_openssl

  pick_port ETCD_PORT "${KIM_ETCD_PORT:-}"
  pick_port ETCD_PEER_PORT "${KIM_ETCD_PEER_PORT:-}"
  pick_port APISERVER_PORT "${KIM_APISERVER_PORT:-}"
  {
    echo "TIER=$tier"; echo "ETCD_PORT=$ETCD_PORT"; echo "ETCD_PEER_PORT=$ETCD_PEER_PORT"
    echo "APISERVER_PORT=$APISERVER_PORT"
  } >"$DIR/ports.env"
  if [[ "$tier" == full ]]; then
    pick_port KCM_PORT "${KIM_KCM_PORT:-}"
    pick_port SCHEDULER_PORT "${KIM_SCHEDULER_PORT:-}"
    pick_port KWOK_PORT "${KIM_KWOK_PORT:-}"
    { echo "KCM_PORT=$KCM_PORT"; echo "SCHEDULER_PORT=$SCHEDULER_PORT"; echo "KWOK_PORT=$KWOK_PORT"; } >>"$DIR/ports.env"
  fi

  gen_pki

  log "starting etcd on 127.0.0.1:$ETCD_PORT"
  start etcd "$KIM_BIN/etcd" \
    --name=kim --data-dir="$DIR/etcd" \
    --listen-client-urls="http://127.0.0.1:$ETCD_PORT" --advertise-client-urls="http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster="kim=http://127.0.0.1:$ETCD_PEER_PORT" \
    --unsafe-no-fsync=true --quota-backend-bytes=2147483648 --log-level=warn
  wait_for etcd "etcd healthy" curl -sf --max-time 2 "http://127.0.0.1:$ETCD_PORT/health"

  log "starting kube-apiserver on https://127.0.0.1:$APISERVER_PORT"
  local audit=()
  if [[ -n "${KIM_AUDIT_POLICY:-}" ]]; then
    audit=(--audit-policy-file="$KIM_AUDIT_POLICY" --audit-log-path="$LOGS/audit.log")
  fi
  start kube-apiserver "$KIM_BIN/kube-apiserver" "${audit[@]}" \
    --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
    --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$APISERVER_PORT" \
    --cert-dir="$DIR/apiserver" \
    --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
    --client-ca-file="$PKI/ca.crt" \
    --requestheader-client-ca-file="$PKI/front-proxy-ca.crt" --requestheader-allowed-names=front-proxy-client \
    --requestheader-username-headers=X-Remote-User --requestheader-group-headers=X-Remote-Group \
    --requestheader-extra-headers-prefix=X-Remote-Extra- \
    --proxy-client-cert-file="$PKI/front-proxy-client.crt" --proxy-client-key-file="$PKI/front-proxy-client.key" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --authorization-mode=RBAC \
    --allow-privileged=true \
    --endpoint-reconciler-type=none \
    --profiling=false
  wait_for kube-apiserver "kube-apiserver /readyz ok" readyz

  write_kubeconfig "$KUBECONFIG_FILE" admin kim-admin
  wait_for kube-apiserver "kubectl get ns works" kctl get ns

  if [[ "$tier" == full ]]; then
    write_kubeconfig "$DIR/kube-controller-manager.kubeconfig" kube-controller-manager system:kube-controller-manager
    write_kubeconfig "$DIR/kube-scheduler.kubeconfig" kube-scheduler system:kube-scheduler
    local kc="$DIR/kube-controller-manager.kubeconfig" ks="$DIR/kube-scheduler.kubeconfig"

    log "starting kube-controller-manager (healthz on 127.0.0.1:$KCM_PORT)"
    start kube-controller-manager "$KIM_BIN/kube-controller-manager" \
      --kubeconfig="$kc" --authentication-kubeconfig="$kc" --authorization-kubeconfig="$kc" \
      --bind-address=127.0.0.1 --secure-port="$KCM_PORT" --cert-dir="$DIR/kcm" \
      --leader-elect=false \
      --use-service-account-credentials=true \
      --service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/ca.crt" \
      --cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
      --service-cluster-ip-range="$SERVICE_CIDR" --allocate-node-cidrs=false \
      --controllers='*,-nodeipam,-cloud-node-lifecycle,-service-lb-controller,-node-route-controller' \
      --profiling=false

    log "starting kube-scheduler (healthz on 127.0.0.1:$SCHEDULER_PORT)"
    start kube-scheduler "$KIM_BIN/kube-scheduler" \
      --kubeconfig="$ks" --authentication-kubeconfig="$ks" --authorization-kubeconfig="$ks" \
      --bind-address=127.0.0.1 --secure-port="$SCHEDULER_PORT" \
      --leader-elect=false --profiling=false

    kwok_config >"$DIR/kwok.yaml"
    mkdir -p "$DIR/kwok-home"
    log "starting kwok (fake node $NODE_NAME, pod stages: $POD_STAGES)"
    # HOME is moved so that a ~/.kwok/kwok.yaml of the user is not merged in.
    start kwok env HOME="$DIR/kwok-home" "$KIM_BIN/kwok" \
      --kubeconfig="$KUBECONFIG_FILE" --config="$DIR/kwok.yaml" \
      --manage-all-nodes=false --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
      --node-ip=127.0.0.1 --cidr="$POD_CIDR" --node-lease-duration-seconds=40 \
      --server-address="127.0.0.1:$KWOK_PORT"

    wait_for kube-controller-manager "kube-controller-manager healthy" healthz "$KCM_PORT"
    wait_for kube-scheduler "kube-scheduler healthy" healthz "$SCHEDULER_PORT"
    wait_for kwok "kwok healthy" curl -sf --max-time 2 "http://127.0.0.1:$KWOK_PORT/healthz"

    sed "s/__NODE_NAME__/$NODE_NAME/g" "$REPO_ROOT/e2e/kwok/node-object.yaml" | kctl apply -f - >"$LOGS/node-apply.log" 2>&1 \
      || fail "creating node $NODE_NAME failed" "$LOGS/node-apply.log"
    wait_for kwok "node $NODE_NAME Ready" \
      kctl wait --for=condition=Ready "node/$NODE_NAME" --timeout=2s
    wait_for kube-controller-manager "service account default/default exists" \
      kctl -n default get serviceaccount default
  fi
  UP_IN_PROGRESS=0
  trap - ERR INT TERM
  log "cluster ($tier) up in $(since "$T0"): KUBECONFIG=$KUBECONFIG_FILE"
}

stop_all() {
  local c pid i pids=()
  STOPPED=()
  # Two waves: everything that talks to etcd first (TERM at once, the state is thrown away
  # anyway), then etcd (an apiserver whose etcd is gone hangs in shutdown). Each process
  # gets up to 10s to exit before KILL.
  local wave
  for wave in "kwok kube-scheduler kube-controller-manager kube-apiserver" etcd; do
    pids=(); local names=()
    for c in $wave; do
      [[ -f "$RUN/$c.pid" ]] || continue
      pid="$(cat "$RUN/$c.pid")"
      if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        STOPPED+=("$c"); names+=("$c"); pids+=("$pid")
      fi
    done
    for i in "${!pids[@]}"; do
      pid="${pids[$i]}"
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
      if kill -0 "$pid" 2>/dev/null; then
        log "${names[$i]} (pid $pid) did not stop on TERM, killing it"
        kill -KILL "$pid" 2>/dev/null || true
      fi
    done
  done
}

cmd_down() {
  local t0; t0=$(now)
  stop_all
  if [[ -d "$DIR" ]]; then
    rm -rf "$DIR"
  fi
  log "down in $(since "$t0"): stopped ${STOPPED[*]:-nothing}; removed $DIR"
}

cmd_env() {
  echo "export KUBECONFIG=\"$KUBECONFIG_FILE\""
  echo "export PATH=\"$KIM_BIN:\$PATH\""
}

cmd_status() {
  [[ -f "$DIR/ports.env" ]] || { echo "no cluster in $DIR"; return 1; }
  cat "$DIR/ports.env"
  local c rc=0
  for c in etcd kube-apiserver kube-controller-manager kube-scheduler kwok; do
    [[ -f "$RUN/$c.pid" ]] || continue
    if alive "$c"; then echo "$c: running (pid $(cat "$RUN/$c.pid"))"; else echo "$c: NOT running"; rc=1; fi
  done
  return $rc
}

case "${1:-}" in
  up) shift; cmd_up "$@" ;;
  down) cmd_down ;;
  env) cmd_env ;;
  status) cmd_status ;;
  *) echo "usage: $0 up [core|full] | down | env | status" >&2; exit 2 ;;
esac
