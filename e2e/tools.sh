#!/usr/bin/env bash
# Build (and cache) the binaries of the Kubernetes test tier from their Go modules.
#
#   e2e/tools.sh            # core tier: etcd, kube-apiserver, kubectl
#   e2e/tools.sh full       # + kube-controller-manager, kube-scheduler, kwok, helm
#   e2e/tools.sh NAME...    # only these binaries (any of the names above)
#   e2e/tools.sh --print-bin  # print the bin dir and exit
#
# Binaries land in $KIM_BIN (default $KIM_CACHE/bin, KIM_CACHE default ~/.cache/kim).
# A binary is rebuilt only when its version stamp ($KIM_BIN/NAME.stamp) differs from
# the pinned version below (or KIM_TOOLS_FORCE=1).
#
# Go's own caches (module cache, build cache) stay at Go's defaults (GOMODCACHE,
# GOCACHE): they live outside the work tree, so a fresh clone of the repo on the same
# machine (CI) still gets warm compiles even when .cache/ is empty. Set GOMODCACHE /
# GOCACHE yourself to move them (e.g. GOCACHE=$KIM_CACHE/go/build for CI caching).
set -euo pipefail

# ---- pinned versions -------------------------------------------------------------
K8S_VERSION="${KIM_K8S_VERSION:-v1.36.3}"     # k8s.io/kubernetes (staging modules at v0.36.3)
ETCD_VERSION="${KIM_ETCD_VERSION:-v3.6.16}"   # go.etcd.io/etcd/server/v3
KWOK_VERSION="${KIM_KWOK_VERSION:-v0.8.0}"    # sigs.k8s.io/kwok
HELM_VERSION="${KIM_HELM_VERSION:-v3.22.0}"   # helm.sh/helm/v3
# -----------------------------------------------------------------------------------

KIM_CACHE="${KIM_CACHE:-$HOME/.cache/kim}"
KIM_BIN="${KIM_BIN:-$KIM_CACHE/bin}"
GOBUILD_DIR="$KIM_CACHE/gobuild"
LOG_DIR="$KIM_CACHE/logs"
# 2-core machines: two compile jobs at a time (go's default is GOMAXPROCS anyway).
GO_JOBS="${KIM_GO_JOBS:-2}"

CORE_TOOLS=(etcd kube-apiserver kubectl)
FULL_TOOLS=(etcd kube-apiserver kubectl kube-controller-manager kube-scheduler kwok helm)

export CGO_ENABLED=0        # static binaries, no C toolchain needed
export GOTOOLCHAIN=local    # never try to download another Go toolchain
export GOFLAGS="${GOFLAGS:-} -buildvcs=false"

log() { printf '[tools %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf '[tools] ERROR: %s\n' "$*" >&2; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.1fs", b-a}'; }

if [[ "${1:-}" == "--print-bin" ]]; then echo "$KIM_BIN"; exit 0; fi

command -v go >/dev/null 2>&1 || die "go not found in PATH (need Go >= 1.26 to build Kubernetes ${K8S_VERSION})"
GO_VERSION="$(go env GOVERSION)"
case "$GO_VERSION" in
  go1.2[6-9]*|go1.[3-9][0-9]*|go[2-9]*) ;;
  *) die "Go $GO_VERSION is too old: Kubernetes ${K8S_VERSION} needs go >= 1.26" ;;
esac

mkdir -p "$KIM_BIN" "$GOBUILD_DIR" "$LOG_DIR"

# ---- what to build ------------------------------------------------------------------
want=()
if [[ $# -eq 0 ]]; then set -- core; fi
for a in "$@"; do
  case "$a" in
    core) want+=("${CORE_TOOLS[@]}") ;;
    full) want+=("${FULL_TOOLS[@]}") ;;
    etcd|kube-apiserver|kubectl|kube-controller-manager|kube-scheduler|kwok|helm) want+=("$a") ;;
    *) die "unknown argument '$a' (use: core | full | one of: ${FULL_TOOLS[*]})" ;;
  esac
done
# de-duplicate, keep order
declare -A seen=(); tools=()
for t in "${want[@]}"; do [[ -n "${seen[$t]:-}" ]] || { seen[$t]=1; tools+=("$t"); }; done

# One build at a time per cache dir (parallel test jobs may call this script).
exec 9>"$KIM_CACHE/tools.lock"
if ! flock -n 9; then log "another tools.sh holds $KIM_CACHE/tools.lock, waiting..."; flock 9; fi

# ---- per-tool recipe ------------------------------------------------------------------
# Prints: <gobuild-subdir> <module> <version> <package> <ldflags>
k8s_ldflags() {
  local v="$K8S_VERSION" maj min
  maj="${v#v}"; maj="${maj%%.*}"; min="${v#v*.}"; min="${min%%.*}"
  local f="" p
  for p in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
    f+=" -X $p.gitVersion=$v -X $p.gitMajor=$maj -X $p.gitMinor=$min"
    f+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
  done
  echo "$f"
}
recipe() {
  case "$1" in
    etcd)           echo "etcd go.etcd.io/etcd/server/v3 $ETCD_VERSION go.etcd.io/etcd/server/v3" ;;
    kube-apiserver|kube-controller-manager|kube-scheduler|kubectl)
                    echo "k8s k8s.io/kubernetes $K8S_VERSION k8s.io/kubernetes/cmd/$1 $(k8s_ldflags)" ;;
    kwok)           echo "kwok sigs.k8s.io/kwok $KWOK_VERSION sigs.k8s.io/kwok/cmd/kwok" ;;
    helm)           echo "helm helm.sh/helm/v3 $HELM_VERSION helm.sh/helm/v3/cmd/helm -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" ;;
  esac
}
# All binaries taken from one module are resolved once, so that e.g. `tools.sh core`
# and `tools.sh full` share the same k8s module state.
module_pkgs() {
  case "$1" in
    k8s)  echo k8s.io/kubernetes/cmd/{kube-apiserver,kube-controller-manager,kube-scheduler,kubectl} ;;
    etcd) echo go.etcd.io/etcd/server/v3 ;;
    kwok) echo sigs.k8s.io/kwok/cmd/kwok ;;
    helm) echo helm.sh/helm/v3/cmd/helm ;;
  esac
}

# Prepare a throwaway main module $GOBUILD_DIR/<sub> that requires <module>@<version>.
# k8s.io/kubernetes replaces its staging modules (k8s.io/api, ...) with ./staging paths,
# which are not part of the published module zip and are ignored for dependencies; the
# go.mod there also requires them at v0.0.0. We therefore replace every staging module
# by its published twin k8s.io/<name> v0.<minor>.<patch>.
prepare_module() {
  local sub="$1" mod="$2" ver="$3" dir="$GOBUILD_DIR/$1"
  local stamp; stamp="$mod@$ver $GO_VERSION $(module_pkgs "$sub")"
  if [[ -f "$dir/.stamp" && "$(cat "$dir/.stamp")" == "$stamp" && -f "$dir/go.sum" ]]; then
    return 0
  fi
  local t0; t0=$(now)
  log "resolving $mod@$ver in $dir (log: $LOG_DIR/mod-$sub.log)"
  rm -rf "$dir"; mkdir -p "$dir"; : >"$LOG_DIR/mod-$sub.log"
  {
    printf 'module kim.local/gobuild/%s\n\ngo 1.26\n\nrequire %s %s\n' "$sub" "$mod" "$ver"
  } >"$dir/go.mod"
  if [[ "$mod" == "k8s.io/kubernetes" ]]; then
    local gomod staging s
    (cd "$dir" && go mod download -json "$mod@$ver") >>"$LOG_DIR/mod-$sub.log" 2>&1 || true
    gomod="$(sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p' "$LOG_DIR/mod-$sub.log")"
    if [[ -z "$gomod" || ! -f "$gomod" ]]; then
      tail -n 30 "$LOG_DIR/mod-$sub.log" >&2 || true
      die "cannot download $mod@$ver from the Go module proxy (GOPROXY=$(go env GOPROXY))"
    fi
    staging="$(sed -n '/^replace (/,/^)/p' "$gomod" | grep -oE '^[[:space:]]*k8s\.io/[A-Za-z0-9._-]+ => \./staging/' | awk '{print $1}')"
    [[ -n "$staging" ]] || die "found no staging replace directives in $gomod (layout of k8s.io/kubernetes changed?)"
    local sv="v0.${ver#v1.}"
    {
      echo; echo "replace ("
      for s in $staging; do printf '\t%s => %s %s\n' "$s" "$s" "$sv"; done
      echo ")"
    } >>"$dir/go.mod"
  fi
  local pkgs=() p
  for p in $(module_pkgs "$sub"); do pkgs+=("$p@$ver"); done
  # `go get PKG@VERSION` records go.sum entries for exactly what the build needs.
  if ! (cd "$dir" && go get "${pkgs[@]}" >>"$LOG_DIR/mod-$sub.log" 2>&1); then
    tail -n 40 "$LOG_DIR/mod-$sub.log" >&2 || true
    die "resolving modules for $mod@$ver failed (full log: $LOG_DIR/mod-$sub.log)"
  fi
  # go get must not have moved the pinned module.
  local got; got="$(cd "$dir" && go list -m -f '{{.Version}}' "$mod")"
  [[ "$got" == "$ver" ]] || die "$mod resolved to $got instead of pinned $ver"
  echo "$stamp" >"$dir/.stamp"
  log "resolved $mod@$ver in $(since "$t0")"
}

build_tool() {
  local name="$1" sub mod ver pkg ldx
  read -r sub mod ver pkg ldx <<<"$(recipe "$name")"
  local out="$KIM_BIN/$name" stampf="$KIM_BIN/$name.stamp"
  local stamp
  stamp="$mod@$ver $pkg $GO_VERSION CGO_ENABLED=0 -trimpath -s -w ldx:$(printf '%s' "$ldx" | md5sum | cut -c1-8)"
  if [[ "${KIM_TOOLS_FORCE:-0}" != 1 && -x "$out" && -f "$stampf" && "$(cat "$stampf")" == "$stamp" ]]; then
    log "$name: cached ($mod@$ver)"
    return 0
  fi
  prepare_module "$sub" "$mod" "$ver"
  local t0; t0=$(now)
  log "$name: building $pkg@$ver (log: $LOG_DIR/build-$name.log)"
  rm -f "$stampf"
  if ! (cd "$GOBUILD_DIR/$sub" && go build -p "$GO_JOBS" -trimpath -ldflags="-s -w $ldx" \
          -o "$out.tmp" "$pkg") >"$LOG_DIR/build-$name.log" 2>&1; then
    rm -f "$out.tmp"
    tail -n 40 "$LOG_DIR/build-$name.log" >&2 || true
    die "building $name ($pkg@$ver) failed (full log: $LOG_DIR/build-$name.log)"
  fi
  mv -f "$out.tmp" "$out"
  echo "$stamp" >"$stampf"
  log "$name: built in $(since "$t0") ($(du -h "$out" | cut -f1))"
}

T0=$(now)
for t in "${tools[@]}"; do build_tool "$t"; done
log "done in $(since "$T0"): ${tools[*]} -> $KIM_BIN"
