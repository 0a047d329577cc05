#!/usr/bin/env bash
# The one test command (README, .ci/run): installs what is missing (Samba,
# libsmbclient-dev, Postgres 15 from Debian's packages), starts a private
# Samba and Postgres on free loopback ports, runs the lints and every test,
# and stops and removes both. IT_KEEP_ARTIFACTS=1 keeps the share and databases.
# Extra arguments go to the test runner (e.g. a test name filter).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
IT_LOG_TAG=test . scripts/lib/env.sh

command -v cargo >/dev/null || die "cargo is not installed: install the Rust toolchain (rustup) first"

envfile=$(scripts/test-env-up.sh) || die "the test environment did not come up (see above)"
state_dir=$(dirname "$envfile")
cleanup() { scripts/test-env-down.sh "$state_dir" || true; }
trap cleanup EXIT
# shellcheck disable=SC1090
. "$envfile"

log "checking formatting and lints"
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings

log "running every test (unit + integration against Samba :$IT_SMB_PORT and Postgres)"
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --locked --no-fail-fast "$@"
else
    cargo test --locked --no-fail-fast "$@"
fi
