#!/usr/bin/env bash
# Helpers for the probes: kill/restart the smbd of a scripts/test-env-up.sh state dir,
# and start/stop a second smbd that requires SMB3 encryption.
#   smbd-ctl.sh kill-child STATE_DIR   SIGKILL the per-connection smbd children only
#   smbd-ctl.sh kill-all STATE_DIR     SIGKILL the whole smbd process group
#   smbd-ctl.sh start STATE_DIR        start smbd again with the same smb.conf and port
#   smbd-ctl.sh enc-up SRC_STATE_DIR ENC_DIR PORT   copy the config, add encryption, start
#   smbd-ctl.sh enc-down ENC_DIR
#   smbd-ctl.sh fix-perms STATE_DIR    chmod 0755 STATE_DIR/samba (see enc-up)
set -euo pipefail
cmd=$1; dir=$2
main_pid() { tr -dc '0-9' <"$1/smbd.pid"; }
case $cmd in
kill-child)
    pid=$(main_pid "$dir")
    for c in $(pgrep -P "$pid" -x smbd); do kill -KILL "$c"; done ;;
kill-all)
    kill -KILL -- "-$(main_pid "$dir")" ;;
start)
    conf=$dir/samba/smb.conf
    port=$(sed -n 's/^ *smb ports = //p' "$conf")
    # Plain background child (no job control): smbd calls setsid() itself and
    # becomes its own process-group leader, as in scripts/test-env-up.sh.
    (smbd --foreground --debug-stdout -s "$conf" </dev/null >>"$dir/samba/smbd.log" 2>&1 &
     echo $! >"$dir/smbd.pid")
    for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null && exit 0; sleep 0.05; done
    echo "smbd did not come back on $port" >&2; exit 1 ;;
enc-up)
    enc=$3; port=$4
    mkdir -p "$enc/share"; chmod 0711 "$enc"; : >"$enc/.coordinator-it"
    cp -a "$dir/samba" "$enc/samba"
    rm -rf "$enc/samba/lock/"* "$enc/samba/state/"* "$enc/samba/pid/"* "$enc/samba/cache/"* "$enc/samba/smbd.log"
    sed -i -e "s#$dir/#$enc/#g" -e "s/^\( *smb ports = \).*/\1$port/" \
        -e 's/^\( *server role = .*\)/\1\n    server smb encrypt = required/' "$enc/samba/smb.conf"
    chown "$(stat -c %U:%G "$dir/share")" "$enc/share"
    # smbd children run as the share user and must read lock/msg.lock/<pid> to see
    # that another connection's open is live; with the 0700 that test-env-up.sh
    # sets they can't, and share modes are not enforced across connections.
    chmod 0755 "$enc/samba"
    "$0" start "$enc" ;;
fix-perms)
    chmod 0755 "$dir/samba" ;;
enc-down)
    pg=$(main_pid "$dir"); kill -TERM -- "-$pg" 2>/dev/null || true; sleep 1; kill -KILL -- "-$pg" 2>/dev/null || true ;;
esac
