#!/usr/bin/env bash
# `make demo`: on a fresh machine, install what is missing, build, generate ~50k face-like u8
# descriptors, build an index, start Redis and a matcher, match with the CLI and the Python
# client, print results and latencies, and stop everything it started.
. "$(dirname "$0")/lib.sh"
cd "$KIM_ROOT"

timed "dependencies" bash scripts/deps.sh
timed "build" cargo build --release --workspace --bins
W="$KIM_BIN_DIR/kim-worker"; K="$KIM_BIN_DIR/kim"
work=$(mktemp -d "${TMPDIR:-/tmp}/kim-demo.XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

port=$(free_port); http=$(free_port)
redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no >"$work/redis.log" 2>&1 &
pids+=($!)
wait_for 10 redis-cli -p "$port" ping
export KIM_REDIS_URL="redis://127.0.0.1:$port"

log "generating 50,000 face-like descriptors (12,500 identities x 4, u8, 512-d)"
timed "gen" "$W" gen --out "$work/data" --identities 12500 --samples 4 --mated-probes 200 --nonmated-probes 200

log "building the index for label 'faces'"
timed "index" "$W" index --label faces --storage "$work/storage" --source "$work/data/base.npy" \
  --ids "$work/data/ids.txt" --version 59 --encoding u8 --metric cosine

log "starting a matcher"
"$W" match --storage "$work/storage" --http "127.0.0.1:$http" >"$work/matcher.log" 2>&1 &
pids+=($!)
wait_for 30 curl -fs "127.0.0.1:$http/readyz" || { cat "$work/matcher.log"; exit 1; }

log "labels served: $("$K" labels | paste -sd, -)"
log "one match with the CLI (top 3 of mated probe 0; its identity is $(head -n1 "$work/data/mated_identity.txt"))"
"$K" match --label faces --version 59 --npy "$work/data/mated.npy" --rows 0 --limit 3
log "200 matches one at a time, then 200 with 32 in flight"
"$K" match --label faces --version 59 --npy "$work/data/nonmated.npy" --rows 0..200 --limit 10 --quiet
"$K" match --label faces --version 59 --npy "$work/data/mated.npy" --rows 0..200 --limit 10 --quiet --concurrency 32

log "the same through the Python client (LUNA-style API)"
"$KIM_CACHE/venv/bin/python" clients/python/examples/luna_example.py "$KIM_REDIS_URL" "$work/data"

log "matcher metrics"
curl -fs "127.0.0.1:$http/metrics" | grep -E '^kim_matcher_(requests_total|index_vectors)' || true
log "demo finished; stopping redis and the matcher"
