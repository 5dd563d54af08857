#!/usr/bin/env bash
# POSIX conformance on real FUSE mounts backed by PostgreSQL, with file data in the database, in
# a block store in a directory, in S3 (when TARBOX_TEST_S3_URL is set), and in a `rw` native
# mount (a host directory inside the tree, docs/native-mounts.md): pjdfstest (crates.io) and fsx.
# Known failures are listed with their reasons in docs/posix.md and in conformance/pjdfstest.toml
# (expected_failures); any other failure fails this script.
#
# Needs: root (pjdfstest switches users), TARBOX_TEST_DATABASE_URL, pjdfstest and fsx on PATH.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT_DIR="$PWD"
URL="${TARBOX_TEST_DATABASE_URL:?set TARBOX_TEST_DATABASE_URL (scripts/test.sh does)}"
[[ $(id -u) -eq 0 ]] || { echo "conformance.sh: pjdfstest needs root" >&2; exit 1; }

psql "${URL%/*}/postgres" -qAtc "select 1 from pg_database where datname='${URL##*/}'" | grep -q 1 \
  || psql "${URL%/*}/postgres" -qc "create database \"${URL##*/}\""

cargo build -q -p tarbox-cli
BIN="$PWD/target/debug/tarbox"
# Each data location in turn: the database (default), a block store in a directory, and the S3
# store of TARBOX_TEST_S3_URL when scripts/test.sh provides one.
STORES=("postgres" "file://$ROOT_DIR/target/tarbox-conformance-blocks")
[[ -n "${TARBOX_TEST_S3_URL:-}" ]] && STORES+=("$TARBOX_TEST_S3_URL")
# Last, the tests run inside a rw native mount of a PostgreSQL tenant.
STORES+=("native")
MNT="" PID="" TENANT="" SRC=""
cleanup() {
  if [[ -n "$MNT" ]] && mountpoint -q "$MNT"; then fusermount3 -u "$MNT" 2>/dev/null || umount -l "$MNT" 2>/dev/null || true; fi
  [[ -n "$PID" ]] && { kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; }
  [[ -n "$TENANT" ]] && "$BIN" --database "$URL" tenant delete "$TENANT" >/dev/null 2>&1 || true
  [[ -n "$MNT" ]] && rmdir "$MNT" 2>/dev/null || true
  [[ -n "$SRC" ]] && rm -rf "$SRC"
  MNT="" PID="" TENANT="" SRC=""
}
trap cleanup EXIT

for DATA in "${STORES[@]}"; do
  MNT=$(mktemp -d /tmp/tarbox-conformance.XXXXXX)
  LOG=$(mktemp /tmp/tarbox-conformance-log.XXXXXX)
  TENANT="conformance-$$-$(date +%s)"
  FLAGS=() TARGET="$MNT" PJD_CONFIG=conformance/pjdfstest.toml
  if [[ "$DATA" == native ]]; then
    # Device nodes are never made in a native mount: their tests are expected to fail there.
    PJD_CONFIG=conformance/pjdfstest-native.toml
    SRC=$(mktemp -d /tmp/tarbox-native-src.XXXXXX)
    chmod 755 "$SRC"
    FLAGS=(--native "/native=$SRC:rw") TARGET="$MNT/native"
    "$BIN" --database "$URL" tenant create "$TENANT" >/dev/null
  else
    "$BIN" --database "$URL" tenant create "$TENANT" --data "$DATA" >/dev/null
  fi
  "$BIN" --database "$URL" mount --tenant "$TENANT" --allow-other "${FLAGS[@]}" "$MNT" >"$LOG" 2>&1 &
  PID=$!
  for _ in $(seq 100); do mountpoint -q "$MNT" && break; sleep 0.1; done
  mountpoint -q "$MNT" || { cat "$LOG" >&2; echo "conformance.sh: mount did not come up" >&2; exit 1; }

  echo "pjdfstest on $TARGET (tenant $TENANT, data ${DATA%%\?*})"
  set +e
  (cd /tmp && pjdfstest -c "$OLDPWD/$PJD_CONFIG" -p "$TARGET") >"$LOG.pjdfstest" 2>&1
  PJD=$?
  set -e
  tail -n 30 "$LOG.pjdfstest"
  [[ $PJD -eq 0 ]] || { echo "conformance.sh: pjdfstest failed (full log: $LOG.pjdfstest)" >&2; exit 1; }

  # fsx prints its seed only at -v; pick it here so a failure can be replayed with -S.
  SEED=${FSX_SEED:-$(( (RANDOM << 15) | RANDOM ))}
  echo "fsx on $TARGET (seed $SEED)"
  fsx -S "$SEED" -f conformance/fsx.toml -N "${FSX_OPS:-10000}" "$TARGET/fsx.file" >"$LOG.fsx" 2>&1 \
    || { tail -n 40 "$LOG.fsx" >&2; grep -E 'WARN|ERROR' "$LOG" | tail -n 20 >&2
         echo "conformance.sh: fsx failed on ${DATA%%\?*} (full log: $LOG.fsx, mount log: $LOG)" >&2; exit 1; }
  tail -n 3 "$LOG.fsx"
  # Logs are kept only for a store that failed.
  rm -f "$LOG" "$LOG.pjdfstest" "$LOG.fsx"
  cleanup
done
echo "conformance: pjdfstest and fsx passed on every data store and in a native mount"
