#!/usr/bin/env bash
# The one test command (README, .ci/run): installs what is missing (Samba,
# libsmbclient-dev, Postgres 15, Chromium and its WebDriver from Debian's
# packages), starts a private
# Samba and Postgres on free loopback ports, runs the lints and every test,
# and stops and removes both. IT_KEEP_ARTIFACTS=1 keeps the share and databases.
# Extra arguments go to the test runner (e.g. a test name filter).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
IT_LOG_TAG=test . scripts/lib/env.sh

command -v cargo >/dev/null || die "cargo is not installed: install the Rust toolchain (rustup) first"

ensure_packages browser || die "could not install chromium and chromedriver for the status page test"
envfile=$(scripts/test-env-up.sh) || die "the test environment did not come up (see above)"
state_dir=$(dirname "$envfile")
cleanup() { scripts/test-env-down.sh "$state_dir" || true; }
trap cleanup EXIT
# shellcheck disable=SC1090
. "$envfile"

log "checking formatting"
cargo fmt --all -- --check
# Build the tests first: clippy then reuses the dependencies' metadata and
# checks only the coordinator's own crates (on a cold machine, clippy first
# would check every dependency separately, minutes more).
log "building the tests"
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --locked --no-run
else
    cargo test --locked --no-run
fi
log "checking lints"
cargo clippy --all-targets --locked -- -D warnings

# The coordinators under test log into IT_LOG_DIR; every API token carries
# IT_SECRET_MARK. After the run, no secret may appear in any of those logs.
export IT_LOG_DIR="$state_dir/logs" IT_SECRET_MARK="secretmark$(random_password 12)"
mkdir -p "$IT_LOG_DIR"

log "running every test (unit + integration against Samba :$IT_SMB_PORT and Postgres)"
out="$state_dir/test-output.txt"
status=0
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --locked --no-fail-fast "$@" 2>&1 | tee "$out" || status=$?
else
    cargo test --locked --no-fail-fast "$@" 2>&1 | tee "$out" || status=$?
fi

log "checking the coordinators' logs for secrets"
db_password=$(sed -nE 's#^postgres://[^:/@]+:([^@]+)@.*#\1#p' <<<"$DATABASE_URL")
files=$(find "$IT_LOG_DIR" -type f | wc -l)
lines=$(cat "$IT_LOG_DIR"/* 2>/dev/null | wc -l)
leaks=0
for secret in "$IT_SMB_PASSWORD" "$IT_SECRET_MARK" ${db_password:+"$db_password"}; do
    if grep -rqF -- "$secret" "$IT_LOG_DIR"; then
        log "FAILED: a secret appears in the logs: $(grep -rlF -- "$secret" "$IT_LOG_DIR" | head -3)"
        leaks=1
    fi
done
if ((files == 0 || lines == 0)); then
    log "FAILED: no coordinator log was written to $IT_LOG_DIR (the check would prove nothing)"
    leaks=1
fi
((leaks == 0)) && log "no secret in $files log files ($lines lines)"
((leaks == 0)) || status=1

if ((status != 0)); then
    log "tests failed; the private smbd's logs (for infrastructure trouble):"
    for f in "$state_dir"/samba/smbd.log "$state_dir"/samba/log.*; do
        [[ -f "$f" ]] && tail_log "$f" 30
    done
fi

# Stop the servers now, so the test runner's own closing line is the last one.
closing=$(grep -E '^ +Summary \[|^test result:' "$out" | tail -n 1 || true)
cleanup
trap - EXIT
printf '%s\n' "$closing"
exit "$status"
