#!/usr/bin/env bash
# Fetches KEDA's published ScaledObject CRD (from its Go module, through the module proxy) into
# $KIM_CACHE/keda/, so the operator's autoscaling test can show that the API server accepts the
# ScaledObject kim renders for `matcher.autoscaling.keda`.
set -euo pipefail

KEDA_MODULE="github.com/kedacore/keda/v2"
KEDA_VERSION="${KIM_KEDA_VERSION:-v2.21.0}"
KIM_CACHE="${KIM_CACHE:-$HOME/.cache/kim}"
out="$KIM_CACHE/keda/keda.sh_scaledobjects.yaml"

log() { printf '[keda %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
if [[ -s "$out" && "$(cat "$out.stamp" 2>/dev/null)" == "$KEDA_MODULE@$KEDA_VERSION" ]]; then
  log "cached ($KEDA_VERSION)"
  exit 0
fi
command -v go >/dev/null 2>&1 || { log "ERROR: go not found in PATH"; exit 1; }
mkdir -p "$(dirname "$out")"
dir=$(GOFLAGS=-mod=mod GOTOOLCHAIN=local go mod download -json "$KEDA_MODULE@$KEDA_VERSION" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
cp "$dir/config/crd/bases/keda.sh_scaledobjects.yaml" "$out"
chmod 644 "$out"
echo "$KEDA_MODULE@$KEDA_VERSION" >"$out.stamp"
log "ScaledObject CRD of $KEDA_VERSION in $out"
