#!/usr/bin/env bash
# `make demo`: on a fresh machine, install what is missing, build, generate ~50k face-like u8
# descriptors, build an index, start Redis and a matcher, match with the CLI and the Python
# client, print results and latencies; then start agents, a vectorizer and the Vald Filter
# gateway and insert/search through it with vald-client-python; stop everything it started.
. "$(dirname "$0")/lib.sh"
cd "$KIM_ROOT" || exit 1

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

log "online path: 3 agents (replicas 2), the kim vectorizer and a Vald Filter gateway"
agents=()
for i in 1 2 3; do
  gp=$(free_port); hp=$(free_port)
  "$W" agent --data "$work/agent-$i" --listen "127.0.0.1:$gp" --http "127.0.0.1:$hp" --dimensions 256 >"$work/agent-$i.log" 2>&1 &
  pids+=($!); agents+=("127.0.0.1:$gp")
done
vp=$(free_port); "$W" vectorize --listen "127.0.0.1:$vp" --http "127.0.0.1:$(free_port)" --dimensions 256 >"$work/vectorizer.log" 2>&1 &
pids+=($!)
gp=$(free_port); gh=$(free_port)
"$W" filter --listen "127.0.0.1:$gp" --http "127.0.0.1:$gh" --agents "$(IFS=,; echo "${agents[*]}")" --replicas 2 \
  --vectorizer "127.0.0.1:$vp" >"$work/gateway.log" 2>&1 &
pids+=($!)
wait_for 30 curl -fs "127.0.0.1:$gh/readyz" || { cat "$work/gateway.log"; exit 1; }
"$KIM_CACHE/venv/bin/python" clients/python/examples/vald_example.py "127.0.0.1:$gp"

log "matcher metrics"
curl -fs "127.0.0.1:$http/metrics" | grep -E '^kim_matcher_(requests_total|index_vectors)' || true
log "demo finished; stopping everything it started"
