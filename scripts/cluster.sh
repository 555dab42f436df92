#!/usr/bin/env bash
# The main job: a local DynoStore cluster on loopback, end to end.
#
# Starts six real nodes (distinct sites, directory and memory containers of
# different sizes) in a temporary directory, stores a file as 4+2 shards,
# shows where the shards went, kills a node, reads the file back through
# another node and checks it byte for byte, then stops everything.
#
#   bash scripts/cluster.sh            # defaults: 6 nodes, a 24 MiB file
#   NODES=8 FILE_MB=64 bash scripts/cluster.sh
#   KEEP=1 bash scripts/cluster.sh     # leave the nodes running and say how to use them
set -euo pipefail
cd "$(dirname "$0")/.."

NODES="${NODES:-6}"
FILE_MB="${FILE_MB:-24}"
BASE_PORT="${BASE_PORT:-$((20000 + RANDOM % 20000))}"

echo "== building the node (release)"
cargo build --release -q -p dynostore-node
B="$PWD/target/release/dynostore"

WORK="$(mktemp -d -t dynostore-cluster-XXXXXX)"
PIDS=()
cleanup() {
    if [ "${KEEP:-0}" = 1 ]; then
        echo "nodes left running (pids ${PIDS[*]}); data in $WORK"
        return
    fi
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

"$B" network-key "$WORK/network.key" >/dev/null
export DYNOSTORE_NETWORK_KEY="$WORK/network.key"
SITES=(hospital-a observatory hpc-centre hospital-b)

start_node() {
    local i=$1
    "$B" node --dir "$WORK/n$i" >"$WORK/n$i.log" 2>&1 &
    PIDS[i]=$!
    for _ in $(seq 1 100); do
        [ -s "$WORK/n$i/node.addr" ] && return 0
        sleep 0.1
    done
    echo "node $i did not start; its log:" >&2
    cat "$WORK/n$i.log" >&2
    return 1
}

echo "== starting $NODES nodes in $WORK"
FIRST=""
for i in $(seq 0 $((NODES - 1))); do
    if [ $((i % 2)) = 0 ]; then
        C="dir:$WORK/n$i/shards:$((256 * (i + 1)))MiB"
    else
        C="mem:$((128 * (i + 1)))MiB"
    fi
    ARGS=(init --dir "$WORK/n$i" --listen "/ip4/127.0.0.1/tcp/$((BASE_PORT + i))"
          --site "${SITES[$((i % ${#SITES[@]}))]}" --container "$C"
          --announce-interval-ms 1000 --suspect-after-ms 4000 --down-after-ms 15000)
    [ -n "$FIRST" ] && ARGS+=(--bootstrap "$FIRST")
    "$B" "${ARGS[@]}" >/dev/null
    start_node "$i"
    [ -z "$FIRST" ] && FIRST="$(head -n1 "$WORK/n0/node.addr")"
done

alive_count() {
    "$B" status --json --peer "$1" 2>/dev/null | grep -c '"state": "alive"' || true
}
echo "== waiting for every node to see all $NODES as alive"
for _ in $(seq 1 120); do
    ok=1
    for i in $(seq 0 $((NODES - 1))); do
        [ "$(alive_count "$(head -n1 "$WORK/n$i/node.addr")")" = "$NODES" ] || ok=0
    done
    [ "$ok" = 1 ] && break
    sleep 0.5
done
"$B" status --peer "$FIRST"

echo "== storing a ${FILE_MB} MiB file through node 0"
head -c "$((FILE_MB * 1024 * 1024))" /dev/urandom >"$WORK/scan.raw"
ID="$("$B" put --peer "$FIRST" "$WORK/scan.raw")"
echo "object ID $ID"
"$B" stat --peer "$FIRST" "$ID" | head -n 14

LAST=$((NODES - 1))
echo "== killing node $LAST (pid ${PIDS[$LAST]})"
kill -9 "${PIDS[$LAST]}"
wait "${PIDS[$LAST]}" 2>/dev/null || true
ENTRY="$(head -n1 "$WORK/n1/node.addr")"
echo "== reading it back through node 1 with node $LAST dead"
"$B" get --peer "$ENTRY" "$ID" -o "$WORK/scan.back"
if cmp -s "$WORK/scan.raw" "$WORK/scan.back"; then
    echo "OK: the object read back byte-identical with one node dead"
else
    echo "FAIL: the object read back differs" >&2
    exit 1
fi
"$B" stat --peer "$ENTRY" "$ID" | sed -n '1,7p'
"$B" ls --peer "$ENTRY"
if [ "${KEEP:-0}" = 1 ]; then
    echo "try: DYNOSTORE_NETWORK_KEY=$WORK/network.key $B status --peer $FIRST"
fi
