#!/usr/bin/env bash
# A file up and back over the devnet's link model: a mount on the embedded default with
# --devnet-link LINK stores a 40 MiB file (cp to active), evicts it and reads it back cold.
# Prints both times and what the nodes counted (fragments sent, bytes moved), to set against the
# link time of those bytes at its rates.
# Run: scripts/link-baseline.sh [LINK] [path to cessfs]
# (default LINK up=20M,down=100M,rtt=60ms; default binary target/debug/cessfs; as root or with fusermount3).
set -euo pipefail
LINK=${1:-up=20M,down=100M,rtt=60ms}
BIN=$(realpath "${2:-target/debug/cessfs}")
W=$(mktemp -d /var/tmp/link-baseline.XXXX)
trap '"$BIN" unmount "$W/mnt" >/dev/null 2>&1 || true; rm -rf "$W"' EXIT
mkdir -p "$W/mnt" "$W/data"
(umask 077; head -c 32 /dev/urandom | xxd -p -c 64 > "$W/key")
"$BIN" mount "$W/mnt" --data-dir "$W/data" --key-file "$W/key" --quiet-delay 0 --snapshots false --devnet-link "$LINK"
head -c $((40 << 20)) /dev/urandom > "$W/src.bin"
t0=$(date +%s.%N)
cp "$W/src.bin" "$W/mnt/file.bin"
"$BIN" status --wait --timeout 900 "$W/mnt" > /dev/null
t1=$(date +%s.%N)
"$BIN" evict "$W/mnt" > /dev/null
cmp "$W/src.bin" "$W/mnt/file.bin"
t2=$(date +%s.%N)
echo "link $LINK: cp to active $(echo "$t1 - $t0" | bc) s; cold read $(echo "$t2 - $t1" | bc) s"
rpc=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['rpc'])" "$W/data/devnet/devnet.json")
curl -s "$rpc/nodes" | python3 -c "
import json, sys
nodes = json.load(sys.stdin)
total = lambda k: sum(n['counters'][k] for n in nodes)
print(f\"nodes: {total('puts')} PUTs, {total('bytes_in') / 2**20:.0f} MiB in, {total('gets')} GETs, {total('bytes_out') / 2**20:.0f} MiB out, {total('refusals')} refusals\")"
