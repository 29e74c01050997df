#!/usr/bin/env bash
# bench-fs.sh — write throughput of a cessfs mount against rclone mount (--vfs-cache-mode writes,
# local remote) and against the raw disk holding the data dir, measured in one run, plus the
# daemon's peak RSS while writing a 4 GiB file.
#
#   scripts/bench-fs.sh            (RUNS=5 by default; BENCH_DIR to choose the disk, default /var/tmp)
#
# Workloads: a 1 GiB sequential write with 1 MiB blocks made durable (dd conv=fsync), and
# 10,000 files of 4 KiB copied with cp -r from tmpfs. Each figure is the median of RUNS runs.
# Needs rclone (apt install rclone) and root or fusermount3.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUNS=${RUNS:-5}
BASE=${BENCH_DIR:-/var/tmp}
WORK=$(mktemp -d "$BASE/cessfs-bench.XXXXXX")
SRC=$(mktemp -d /dev/shm/cessfs-bench-src.XXXXXX)
command -v rclone >/dev/null || { echo "bench-fs: rclone is needed (apt install rclone)" >&2; exit 2; }
(cd "$ROOT" && cargo build --release --quiet)
BIN=$ROOT/target/release/cessfs

cleanup() {
  set +e
  for m in "$WORK/cessfs-mnt" "$WORK/rclone-mnt"; do
    mountpoint -q "$m" && { fusermount3 -u "$m" 2>/dev/null || umount -l "$m"; }
  done
  sleep 1
  rm -rf "$WORK" "$SRC"
}
trap cleanup EXIT

python3 - "$SRC" <<'EOF'
import os, sys
for i in range(10000):
    with open(os.path.join(sys.argv[1], f"f{i:05}"), "wb") as f:
        f.write(os.urandom(4096))
EOF

now() { date +%s.%N; }
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
elapsed() { echo "$2 - $1" | bc -l; }
rclone_idle() { # true once rclone's upload queue is empty, or rclone is gone
  local stats
  stats=$(rclone rc --url "http://$RC_ADDR" vfs/stats 2>/dev/null) || return 0
  python3 -c '
import json, sys
q = json.loads(sys.argv[1]).get("diskCache", {})
sys.exit(0 if q.get("uploadsInProgress", 0) == 0 and q.get("uploadsQueued", 0) == 0 else 1)' "$stats"
}
settle() {
  for _ in $(seq 1 600); do rclone_idle && break; sleep 0.5; done
  sync; sleep 8; sync
  dd if=/dev/zero of="$WORK/warm-up" bs=1M count=1536 status=none; rm -f "$WORK/warm-up"; sync
}

mkdir -p "$WORK/raw" "$WORK/rclone-remote" "$WORK/rclone-mnt" "$WORK/rclone-cache" "$WORK/cessfs-mnt"
RC_ADDR=127.0.0.1:${RCLONE_RC_PORT:-5599}
rclone mount "$WORK/rclone-remote" "$WORK/rclone-mnt" --vfs-cache-mode writes --cache-dir "$WORK/rclone-cache" \
  --config /dev/null --rc --rc-addr "$RC_ADDR" --rc-no-auth >"$WORK/rclone.log" 2>&1 &
for _ in $(seq 1 100); do mountpoint -q "$WORK/rclone-mnt" && break; sleep 0.1; done
"$BIN" mount "$WORK/cessfs-mnt" --data-dir "$WORK/cessfs-data"
declare -A DIR=([raw]=$WORK/raw [rclone]=$WORK/rclone-mnt [cessfs]=$WORK/cessfs-mnt)
read -r -a TARGETS <<<"${BENCH_TARGETS:-raw rclone cessfs}"
declare -A LARGE SMALL
# Targets take turns in every run, in a rotating order, so that the virtual disk's bursts and
# stalls spread over all of them.
for i in $(seq 1 "$RUNS"); do
  ORDER=("${TARGETS[@]:$((i % 3))}" "${TARGETS[@]:0:$((i % 3))}")
  for t in "${ORDER[@]}"; do
    settle
    t0=$(now); dd if=/dev/zero of="${DIR[$t]}/big$i" bs=1M count=1024 conv=fsync status=none; t1=$(now)
    LARGE[$t]+="$(elapsed "$t0" "$t1") "
    rm -f "${DIR[$t]}/big$i"
  done
  for t in "${ORDER[@]}"; do
    settle
    t0=$(now); cp -r "$SRC" "${DIR[$t]}/small$i"; t1=$(now)
    SMALL[$t]+="$(elapsed "$t0" "$t1") "
    rm -rf "${DIR[$t]}/small$i"
  done
done
fusermount3 -u "$WORK/rclone-mnt" 2>/dev/null || umount "$WORK/rclone-mnt"
"$BIN" unmount "$WORK/cessfs-mnt"

# Peak RSS of a fresh daemon while it takes a 4 GiB file.
settle
"$BIN" mount "$WORK/cessfs-mnt" --data-dir "$WORK/cessfs-rss"
PID=$(cat "$WORK/cessfs-rss/cessfs.pid")
dd if=/dev/zero of="$WORK/cessfs-mnt/4g" bs=1M count=4096 conv=fsync status=none
RSS_KB=$(awk '/VmHWM/ {print $2}' "/proc/$PID/status")
"$BIN" unmount "$WORK/cessfs-mnt"

echo
echo "bench-fs: $(nproc) cores, disk $(df --output=source "$WORK" | tail -1), median of $RUNS runs"
printf '%-8s %22s %26s\n' target "1 GiB write, 1 MiB (MB/s)" "10,000 x 4 KiB (files/s)"
declare -A L S
for t in "${TARGETS[@]}"; do
  L[$t]=$(echo "1073.741824 / $(tr ' ' '\n' <<<"${LARGE[$t]}" | grep . | median)" | bc -l)
  S[$t]=$(echo "10000 / $(tr ' ' '\n' <<<"${SMALL[$t]}" | grep . | median)" | bc -l)
  printf '%-8s %22.0f %26.0f\n' "$t" "${L[$t]}" "${S[$t]}"
done
printf 'cessfs vs rclone: large write %.2fx, small files %.2fx\n' \
  "$(echo "${L[cessfs]} / ${L[rclone]}" | bc -l)" "$(echo "${S[cessfs]} / ${S[rclone]}" | bc -l)"
printf 'cessfs vs raw disk: large write %.0f%%\n' "$(echo "100 * ${L[cessfs]} / ${L[raw]}" | bc -l)"
echo "cessfs daemon peak RSS while writing a 4 GiB file: $((RSS_KB / 1024)) MiB"
