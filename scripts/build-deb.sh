#!/usr/bin/env bash
# Builds the .deb: the release binary, its man pages and shell completions, the mount helper
# links, the systemd units and the docs (see [package.metadata.deb] in Cargo.toml).
#   scripts/build-deb.sh [--binary PATH] [--out FILE]
# --binary packages an already built binary instead of building one (the tests use this).
# Needs cargo-deb (cargo install cargo-deb --locked).
set -euo pipefail
cd "$(dirname "$0")/.."
binary="" out=""
while [ $# -gt 0 ]; do
    case "$1" in
        --binary) binary="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
# cargo-deb reads assets under target/release/ from $CARGO_TARGET_DIR/release/.
if [ -n "$binary" ]; then
    export CARGO_TARGET_DIR="$(mktemp -d)"
    trap 'rm -rf "$CARGO_TARGET_DIR"' EXIT
    mkdir -p "$CARGO_TARGET_DIR/release"
    cp "$binary" "$CARGO_TARGET_DIR/release/cessfs"
else
    cargo build --release
fi
release="${CARGO_TARGET_DIR:-target}/release"
rm -rf "$release/packaging"
"$release/cessfs" generate-assets "$release/packaging"
gzip -9n "$release"/packaging/man/*.1
cargo deb --no-build ${out:+--output "$out"}
