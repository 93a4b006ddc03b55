#!/usr/bin/env bash
# Builds (and caches) `weed`, the SeaweedFS server the object-storage tests use as their
# S3-compatible endpoint on loopback. Binary: $KIM_CACHE/bin/weed (stamp: weed.stamp).
#
# SeaweedFS's go.mod carries a replace directive, so `go install ...@version` refuses it; a
# small wrapper module requires it at the pinned version, repeats that replace, and builds
# the `weed` command from its own main package.
set -euo pipefail

WEED_MODULE="github.com/seaweedfs/seaweedfs"
WEED_VERSION="${KIM_WEED_VERSION:-v0.0.0-20261109003541-7506e5f91cd6}"

KIM_CACHE="${KIM_CACHE:-$HOME/.cache/kim}"
KIM_BIN="${KIM_BIN:-$KIM_CACHE/bin}"
dir="$KIM_CACHE/gobuild/weed"
logf="$KIM_CACHE/logs/build-weed.log"
export CGO_ENABLED=0 GOTOOLCHAIN=local
export GOFLAGS="${GOFLAGS:-} -buildvcs=false"

log() { printf '[weed %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
command -v go >/dev/null 2>&1 || { log "ERROR: go not found in PATH"; exit 1; }
mkdir -p "$KIM_BIN" "$dir" "$(dirname "$logf")"

stamp="$WEED_MODULE@$WEED_VERSION $(go env GOVERSION) CGO_ENABLED=0"
out="$KIM_BIN/weed"
exec 9>"$KIM_CACHE/weed.lock"
flock 9
if [[ "${KIM_TOOLS_FORCE:-0}" != 1 && -x "$out" && "$(cat "$out.stamp" 2>/dev/null)" == "$stamp" ]]; then
  log "cached ($WEED_VERSION)"
  exit 0
fi

t0=$SECONDS
log "building $WEED_MODULE@$WEED_VERSION (log: $logf)"
cat >"$dir/go.mod" <<EOF
module kim.local/gobuild/weed

go 1.26

require $WEED_MODULE $WEED_VERSION

replace github.com/tyler-smith/go-bip39 => github.com/cosmos/go-bip39 v1.0.0
EOF
# Keeps the requirement (and its go.sum entries) for `go build` of the weed command below.
cat >"$dir/tools.go" <<'EOF'
//go:build tools

package main

import _ "github.com/seaweedfs/seaweedfs/weed"
EOF
if ! (cd "$dir" && go mod tidy -e >"$logf" 2>&1 && go get "$WEED_MODULE/weed@$WEED_VERSION" >>"$logf" 2>&1 \
      && go build -p 2 -trimpath -ldflags="-s -w" -o "$out.tmp" "$WEED_MODULE/weed" >>"$logf" 2>&1); then
  rm -f "$out.tmp"
  tail -n 40 "$logf" >&2 || true
  log "ERROR: building weed failed (full log: $logf)"
  exit 1
fi
mv -f "$out.tmp" "$out"
echo "$stamp" >"$out.stamp"
log "built in $((SECONDS - t0))s ($(du -h "$out" | cut -f1))"
