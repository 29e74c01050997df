#!/usr/bin/env bash
# What the embedded devnet keeps on disk: a mount on the embedded default stores 1 GiB and 20
# small notes, then the 1 GiB file is removed. Prints the devnet's fragments (each byte once,
# however many nodes hold it) against the territory charged for them / 3, and what is left once
# the removed file's FID left the chain.
# Run: scripts/devnet-disk.sh [path to cessfs] (default: target/debug/cessfs; as root or with fusermount3).
set -euo pipefail
BIN=$(realpath "${1:-target/debug/cessfs}")
W=$(mktemp -d /var/tmp/devnet-disk.XXXX)
trap '"$BIN" unmount "$W/mnt" >/dev/null 2>&1 || true; rm -rf "$W"' EXIT
mkdir -p "$W/mnt" "$W/data"
(umask 077; head -c 32 /dev/urandom | xxd -p -c 64 > "$W/key")
"$BIN" mount "$W/mnt" --data-dir "$W/data" --key-file "$W/key" --quiet-delay 0 --snapshots false
kept_mib() { du -sck "$W/data/devnet/fragments" "$W/data/devnet/nodes" | tail -1 | cut -f1 | awk '{print int($1/1024)}'; }

head -c $((1 << 30)) /dev/urandom > "$W/mnt/big.bin"
for i in $(seq 1 20); do head -c $((RANDOM * 10 + 1)) /dev/urandom > "$W/mnt/note$i.txt"; done
"$BIN" status --wait --timeout 600 "$W/mnt" > /dev/null
echo "territory after the uploads:"; "$BIN" account "$W/mnt" | grep -i territory
echo "devnet fragments once active: $(kept_mib) MiB"
rm "$W/mnt/big.bin"
start=$(date +%s)
while [ "$(kept_mib)" -gt 100 ] && [ $(( $(date +%s) - start )) -lt 120 ]; do sleep 1; done
echo "devnet fragments after rm of the 1 GiB file: $(kept_mib) MiB ($(( $(date +%s) - start )) s later)"
