#!/usr/bin/env bash
# Rerun every probe from scratch: private smbd (scripts/test-env-up.sh), test data,
# a second smbd with `server smb encrypt = required`, both probe binaries, teardown.
#
#   COORD_REPO=/work/main probes/run-all.sh  2>&1 | tee results.log
#
# Needs: samba + smbclient, libsmbclient-dev (pavao), python3 with smbprotocol
# (holder.py), cargo. Runs as root (test-env-up.sh creates a unix user).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="${COORD_REPO:-$(cd "$HERE/.." && pwd)}"
STATE=/tmp/probe-smb
ENC=/tmp/probe-smbenc
CTL="$HERE/smbd-ctl.sh"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

silent_pid=""
cleanup() {
    [[ -n "$silent_pid" ]] && kill "$silent_pid" 2>/dev/null || true
    [[ -f "$ENC/smbd.pid" ]] && "$CTL" enc-down "$ENC" || true
    rm -rf "$ENC"
    "$REPO/scripts/test-env-down.sh" "$STATE" >/dev/null 2>&1 || true
}
trap cleanup EXIT

(cd "$HERE/smb2-probe" && cargo build --release --locked)
(cd "$HERE/pavao-probe" && cargo build --release --locked)

# Private smbd; DATABASE_URL set so that no Postgres is started.
envfile=$(cd "$REPO" && DATABASE_URL=postgres://x@127.0.0.1:1/x IT_STATE_DIR=$STATE scripts/test-env-up.sh 2>/dev/null)
# shellcheck disable=SC1090
. "$envfile"
export IT_SMB_PASSWORD IT_SMB_SHARE_PATH
# test-env-up.sh leaves samba/ at 0700: smbd children (running as the share user)
# then can't see other connections' opens as live, and share modes are not enforced.
"$CTL" fix-perms "$STATE"

# Test data: 2,000 small files, 512 MiB + 256 MiB + 4 x 64 MiB random files.
S=$IT_SMB_SHARE_PATH
mkdir -p "$S/list2000" "$S/big"
for i in $(seq -w 1 2000); do printf 'file %s\n' "$i" >"$S/list2000/f$i.txt"; done
head -c 512M /dev/urandom >"$S/big/big512.bin"
head -c 256M /dev/urandom >"$S/big/big256.bin"
for i in 1 2 3 4; do head -c 64M /dev/urandom >"$S/big/m64_$i.bin"; done
chown -R "$(stat -c %U:%G "$S")" "$S"
cat "$S"/big/*.bin >/dev/null # warm page cache

enc_port=$(free_port)
"$CTL" enc-up "$STATE" "$ENC" "$enc_port"

# A port that accepts TCP and never answers.
silent_port=$(free_port)
python3 -c "import socket,time; s=socket.socket(); s.bind(('127.0.0.1',$silent_port)); s.listen(5); c=[]; [c.append(s.accept()) for _ in range(5)]; time.sleep(600)" &
silent_pid=$!
export PROBE_SILENT_PORT=$silent_port
export PROBE_KILL_CHILD_CMD="$CTL kill-child $STATE" PROBE_KILL_ALL_CMD="$CTL kill-all $STATE" PROBE_RESTART_CMD="$CTL start $STATE"

for bin in "$HERE/smb2-probe/target/release/smb2-probe" "$HERE/pavao-probe/target/release/pavao-probe"; do
    echo "######## $(basename "$bin")"
    for p in list read rename denywrite misc kill; do
        echo "== $p"
        timeout 600 "$bin" "$p" || echo "FAIL $p exited $?"
    done
    echo "== encrypt (port $enc_port, server smb encrypt = required)"
    IT_SMB_PORT=$enc_port PROBE_SMBSTATUS_CONF=$ENC/samba/smb.conf timeout 120 "$bin" encrypt || echo "FAIL encrypt exited $?"
done

# Optional: smb2 0.39.0 with a one-line patch (SMB2_GLOBAL_CAP_ENCRYPTION in NEGOTIATE),
# built by experiments/build-encfix.sh; not part of the pinned probe.
fix="$HERE/experiments/target-encfix/release/smb2-encfix-probe"
if [[ -x "$fix" ]]; then
    echo "######## smb2 0.39.0 + capability patch, encrypt"
    IT_SMB_PORT=$enc_port timeout 120 "$fix" encrypt || echo "FAIL encrypt exited $?"
fi

echo "######## smbclient against the encrypted share"
for m in SMB2_10 SMB3; do
    printf '%s: ' "$m"
    smbclient -p "$enc_port" "//127.0.0.1/$IT_SMB_SHARE" -U "$IT_SMB_USERNAME%$IT_SMB_PASSWORD" -m "$m" -c ls 2>&1 | tail -1 || true
done
