#!/usr/bin/env bash
# The main job on a fresh machine: starts a private Samba share and Postgres
# (installing them where missing), fake FOI/ITM/IQube services, drops sample
# remittance files into the share, runs `coordinator run` once and shows the
# summary, the database rows and the archive; then cleans everything up.
# Against real servers, run `coordinator serve` with the variables of the
# README instead.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
IT_LOG_TAG=demo . scripts/lib/env.sh

envfile=$(scripts/test-env-up.sh) || die "the demo environment did not come up"
state_dir=$(dirname "$envfile")
fakes_pid=""
cleanup() {
    [[ -n "$fakes_pid" ]] && kill "$fakes_pid" 2>/dev/null || true
    scripts/test-env-down.sh "$state_dir" || true
}
trap cleanup EXIT
# shellcheck disable=SC1090
. "$envfile"

log "building"
cargo build --quiet --bin coordinator --example fake_downstream
# Where cargo put them: CARGO_TARGET_DIR or build.target-dir may move it.
bin_dir="$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')/debug"
[[ -x "$bin_dir/coordinator" ]] || die "cargo built no coordinator in $bin_dir"

log "starting the fake downstream services"
urls="$state_dir/fake-urls"
"$bin_dir/examples/fake_downstream" >"$urls" 2>"$state_dir/fakes.log" &
fakes_pid=$!
for _ in $(seq 1 100); do [[ $(wc -l <"$urls") -ge 3 ]] && break; sleep 0.1; done
[[ $(wc -l <"$urls") -ge 3 ]] || die "the fake services did not start"

log "writing sample files over SMB, as remitters would"
sample="$state_dir/sample.csv"
printf 'invoice,amount\nINV-1,100.00\n' >"$sample"
smb() { smbclient -p "$IT_SMB_PORT" "//127.0.0.1/$IT_SMB_SHARE" -U "$IT_SMB_USERNAME%$IT_SMB_PASSWORD" -c "$1" >/dev/null; }
smb "mkdir incoming; mkdir incoming/invest@det.com; mkdir incoming/acme"
smb "cd incoming/invest@det.com; put $sample remit_20240101.csv; put $sample remit_20240102.csv; put $sample ~\$remit.xlsx"
smb "cd incoming/acme; put $sample statement.csv"

log "running the coordinator once"
set -a
# shellcheck disable=SC1090
. "$urls"
set +a
export ENV=local SMB_HOST="$IT_SMB_HOST" SMB_PORT="$IT_SMB_PORT" SMB_SHARE="$IT_SMB_SHARE" \
    SMB_USERNAME="$IT_SMB_USERNAME" SMB_PASSWORD="$IT_SMB_PASSWORD" SMB_SOURCE_DIR=incoming \
    SMB_ARCHIVE_DIR=archive STABLE_MIN_AGE_SECS=0 STABLE_CHECK_INTERVAL_SECS=1
"$bin_dir/coordinator" run

log "files in Postgres"
psql "$DATABASE_URL" -c "SELECT remitter, file_name, status, archived_at IS NOT NULL AS archived FROM files ORDER BY id"
log "the share now"
(cd "$IT_SMB_SHARE_PATH" && find . -type f | sort)
