#!/usr/bin/env bash
# What a CSI restore or clone costs (docs/csi.md): a tenant of $FILES files totalling about
# 1 GiB on PostgreSQL, cloned by `tarbox tenant clone` (the rows are copied by the server; no
# file data leaves the database), next to copying the same tree through two mounts with `cp -a`
# (what a driver that moved the data itself would pay). Prints one line per measurement.
#
#   BIN=target/release/tarbox DB=postgres://postgres@127.0.0.1:5432/tarbox_bench scripts/measure-clone.sh
set -euo pipefail
BIN=${BIN:-target/release/tarbox}
DB=${DB:-postgres://postgres@127.0.0.1:5432/tarbox_bench}
FILES=${FILES:-10000}
FILE_KIB=${FILE_KIB:-105} # 10,000 × 105 KiB ≈ 1.0 GiB
run=$(date -u +%Y%m%d-%H%M%S)
src=clone-src-$run
work=$(mktemp -d)
# sqlx warns of every statement over 1 s: the clone is one such statement, on purpose.
tb() { RUST_LOG=${RUST_LOG:-warn,sqlx=error} "$BIN" --database "$DB" "$@"; }
mounted=()
cleanup() {
    for m in "${mounted[@]}"; do "$BIN" umount "$m" >/dev/null 2>&1 || true; done
    for t in "$src" "$src-copy" "$src-live" "$src-snap"; do tb tenant delete "$t" >/dev/null 2>&1 || true; done
    rm -rf "$work"
}
trap cleanup EXIT

mount_tenant() { # tenant dir
    mkdir -p "$2"
    tb mount --tenant "$1" "$2" >"$work/$1.log" 2>&1 &
    for _ in $(seq 100); do grep -q " $2 " /proc/mounts && break; sleep 0.1; done
    grep -q " $2 " /proc/mounts || { cat "$work/$1.log"; exit 1; }
    mounted+=("$2")
}
seconds() { local t0=$1; echo "scale=2; ($(date +%s%N) - $t0) / 1000000000" | bc; }

tb tenant create "$src" >/dev/null
mount_tenant "$src" "$work/src"
python3 - "$work/src" "$FILES" "$FILE_KIB" <<'PY'
import os, sys
root, files, kib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(files):
    d = os.path.join(root, f"shard-{i // 500:03d}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"sample-{i:05d}.bin"), "wb") as f:
        f.write(os.urandom(kib * 1024))
PY
sync "$work/src"
tb layer checkpoint -t "$src" loaded >/dev/null
echo "source: $(tb tenant info "$src" | grep -E '^(bytes|inodes):' | tr -s ' ' | paste -sd' ')"

t0=$(date +%s%N); tb tenant clone "$src" "$src-snap" --at loaded >/dev/null
echo "clone of a checkpoint (restore from snapshot): $(seconds "$t0") s"
t0=$(date +%s%N); tb tenant clone "$src" "$src-live" >/dev/null
echo "clone of the live tree (clone of a volume): $(seconds "$t0") s"

tb tenant create "$src-copy" >/dev/null
mount_tenant "$src-copy" "$work/copy"
t0=$(date +%s%N); cp -a "$work"/src/shard-* "$work/copy/"; sync "$work/copy"
echo "cp -a through two mounts (data through a client): $(seconds "$t0") s"
