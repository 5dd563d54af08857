#!/usr/bin/env bash
# Every test of the project, on a fresh Debian machine as on a developer's:
#   formatting and lints, the engine suites on memory and PostgreSQL (file data in the database,
#   a local directory and an S3 server), FUSE end-to-end tests, the
#   CSI driver over its socket, the Helm chart (lint, render, schema validation), and the
#   pjdfstest POSIX suite on a mount backed by PostgreSQL.
#
# Provisions what it needs: uses the PostgreSQL named by TARBOX_TEST_DATABASE_URL, else one
# answering on 127.0.0.1:5432 (starting the local Debian cluster if it is down), else a throwaway
# cluster of its own (initdb into target/tarbox-pg, installing the postgresql package if root and
# missing); installs fuse3 if fusermount3 is missing (root only), and pjdfstest/fsx and the
# s3s-fs S3 server with cargo.
# Never skips the PostgreSQL suites: they fail if PostgreSQL cannot be provided.
#
# Usage: scripts/test.sh [--quick]   (--quick: no pjdfstest/fsx)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$PWD"
QUICK=0
[[ "${1:-}" == "--quick" ]] && QUICK=1

say() { printf '\n==> %s\n' "$*" >&2; }
die() { printf 'test.sh: %s\n' "$*" >&2; exit 1; }
as_root() { if [[ $(id -u) -eq 0 ]]; then "$@"; else die "need root to run: $*"; fi; }

apt_install() {
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null \
    || { as_root apt-get update -q >/dev/null && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null; }
}

pg_answers() { # host port
  if command -v pg_isready >/dev/null; then pg_isready -q -h "$1" -p "$2"; else (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; fi
}

provision_postgres() {
  if [[ -n "${TARBOX_TEST_DATABASE_URL:-}" ]]; then
    say "PostgreSQL: using TARBOX_TEST_DATABASE_URL"; return
  fi
  if ! pg_answers 127.0.0.1 5432 && command -v pg_ctlcluster >/dev/null && [[ -d /etc/postgresql ]]; then
    local v; v=$(ls /etc/postgresql | sort -V | tail -1)
    say "PostgreSQL: starting the local cluster $v/main"
    as_root pg_ctlcluster --skip-systemctl-redirect "$v" main start || true
    for _ in $(seq 30); do pg_answers 127.0.0.1 5432 && break; sleep 0.5; done
  fi
  if pg_answers 127.0.0.1 5432 && psql -h 127.0.0.1 -U postgres -d postgres -Atc 'select 1' >/dev/null 2>&1; then
    export TARBOX_TEST_DATABASE_URL="postgres://postgres@127.0.0.1:5432/tarbox_test"
    # The outage test restarts the server it was given ({mode}: fast or immediate).
    if [[ $(id -u) -eq 0 && -z "${TARBOX_TEST_PG_RESTART:-}" ]] && command -v pg_ctlcluster >/dev/null \
       && [[ -d /etc/postgresql ]]; then
      local v; v=$(ls /etc/postgresql | sort -V | tail -1)
      export TARBOX_TEST_PG_RESTART="pg_ctlcluster --skip-systemctl-redirect $v main restart -m {mode}"
    fi
    say "PostgreSQL: using 127.0.0.1:5432"; return
  fi
  # A throwaway cluster of our own.
  local bin; bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
  if [[ -z "$bin" ]]; then
    say "PostgreSQL: installing the postgresql package"
    apt_install postgresql
    bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  fi
  local data="$ROOT/target/tarbox-pg" port=54329 run=()
  [[ $(id -u) -eq 0 ]] && run=(runuser -u postgres --)
  mkdir -p "$ROOT/target"
  if [[ ! -f "$data/PG_VERSION" ]]; then
    say "PostgreSQL: initdb $data"
    mkdir -p "$data"; [[ $(id -u) -eq 0 ]] && chown postgres "$data"
    "${run[@]}" "$bin/initdb" -D "$data" -U postgres --auth=trust >/dev/null
  fi
  if ! pg_answers 127.0.0.1 "$port"; then
    "${run[@]}" "$bin/pg_ctl" -D "$data" -l "$data/log" -w start \
      -o "-p $port -k /tmp -c listen_addresses=127.0.0.1 -c fsync=on" >/dev/null
  fi
  export TARBOX_TEST_DATABASE_URL="postgres://postgres@127.0.0.1:$port/tarbox_test"
  export TARBOX_TEST_PG_RESTART="${TARBOX_TEST_PG_RESTART:-${run[*]} $bin/pg_ctl -D $data -l $data/log -w -m {mode} restart}"
  say "PostgreSQL: throwaway cluster on port $port"
}

provision_fuse() {
  [[ -e /dev/fuse ]] || die "/dev/fuse is missing: the FUSE tests cannot run here"
  if ! command -v fusermount3 >/dev/null; then
    say "installing fuse3"; apt_install fuse3
  fi
}

# Python with venv for the native-mount test (a virtual environment made in a `rw` /.venv).
provision_python() {
  command -v python3 >/dev/null && python3 -c 'import venv, ensurepip' 2>/dev/null && return
  say "installing python3-venv"; apt_install python3 python3-venv
}

# An S3-compatible server for the S3 block store suites: TARBOX_TEST_S3_URL if given (with
# AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY), else s3s-fs (cargo install) on a loopback port,
# storing in target/tarbox-s3 and stopped when the script exits. The outage tests start their
# own servers from TARBOX_TEST_S3_SERVER.
provision_s3() {
  if ! command -v s3s-fs >/dev/null; then
    say "cargo install s3s-fs"
    cargo install -q --locked s3s-fs@0.14.1 --features binary
  fi
  export TARBOX_TEST_S3_SERVER; TARBOX_TEST_S3_SERVER=$(command -v s3s-fs)
  if [[ -n "${TARBOX_TEST_S3_URL:-}" ]]; then
    say "S3: using TARBOX_TEST_S3_URL"; return
  fi
  local port root="$ROOT/target/tarbox-s3"
  for port in $(seq 19014 19040); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || break; done
  mkdir -p "$root/tarbox"
  export AWS_ACCESS_KEY_ID=tarbox-test AWS_SECRET_ACCESS_KEY=tarbox-test-secret
  "$TARBOX_TEST_S3_SERVER" --host 127.0.0.1 --port "$port" --access-key "$AWS_ACCESS_KEY_ID" \
    --secret-key "$AWS_SECRET_ACCESS_KEY" "$root" >"$root.log" 2>&1 &
  S3_PID=$!
  trap 'kill $S3_PID 2>/dev/null || true' EXIT
  for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
  export TARBOX_TEST_S3_URL="s3://tarbox/test?endpoint=http://127.0.0.1:$port"
  say "S3: s3s-fs on 127.0.0.1:$port"
}

provision_chart_tools() {
  python3 -c 'import helm_python, kubernetes_validate, yaml' 2>/dev/null && return
  say "pip install helm-python-sdk kubernetes-validate pyyaml"
  python3 -m pip install -q --disable-pip-version-check helm-python-sdk kubernetes-validate pyyaml
}

provision_conformance_tools() {
  command -v pjdfstest >/dev/null || { say "cargo install pjdfstest"; cargo install -q --locked pjdfstest; }
  command -v fsx >/dev/null || { say "cargo install fsx"; cargo install -q --locked fsx; }
}

provision_postgres
provision_fuse
provision_s3
provision_python
export TARBOX_REQUIRE_POSTGRES=1

say "cargo fmt --check"
cargo fmt --all -- --check
say "cargo clippy -D warnings"
cargo clippy --workspace --all-targets -q -- -D warnings
say "cargo test (memory and PostgreSQL)"
cargo test --workspace -q
say "Helm chart: lint, render and validate (default values and charts/tarbox-csi/ci/*)"
provision_chart_tools
python3 scripts/chart-test.py
if [[ $QUICK -eq 0 ]]; then
  provision_conformance_tools
  say "POSIX conformance on a PostgreSQL-backed mount"
  scripts/conformance.sh
fi
say "all tests passed"
