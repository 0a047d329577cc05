#!/usr/bin/env bash
# Stop the services started by scripts/test-env-up.sh and remove its state dir.
#
#   scripts/test-env-down.sh [STATE_DIR]      (default: $IT_STATE_DIR)
#
# IT_KEEP_ARTIFACTS=1 keeps the state dir (logs, share contents) and prints its path.
# Idempotent: never fails because something is already gone.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=lib/env.sh
. "$SCRIPT_DIR/lib/env.sh"
IT_LOG_TAG=test-env-down

dir="${1:-${IT_STATE_DIR:-}}"
if [[ -z "$dir" ]]; then
    log "no state dir given (argument or IT_STATE_DIR); nothing to do"
    exit 0
fi
if [[ ! -d "$dir" ]]; then
    log "state dir $dir does not exist; nothing to do"
    exit 0
fi
dir="$(cd "$dir" && pwd)"
marker="$dir/.coordinator-it"

# --- smbd: kill its whole process group (smbd forks per connection, plus samba-dcerpcd etc.)
group_alive() { pgrep -g "$1" >/dev/null 2>&1; }

# True if some process of group $1 was started by us for this state dir.
group_is_ours() {
    local p
    for p in $(pgrep -g "$1" 2>/dev/null); do
        if tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -qF -- "$dir/"; then
            return 0
        fi
    done
    return 1
}

stop_smbd() {
    local pidfile="$dir/smbd.pid" pgid
    [[ -s "$pidfile" ]] || return 0
    pgid="$(tr -dc '0-9' <"$pidfile")"
    [[ -n "$pgid" && "$pgid" -gt 1 ]] || return 0
    if ! group_alive "$pgid"; then
        rm -f "$pidfile"
        return 0
    fi
    if ! group_is_ours "$pgid"; then
        if group_alive "$pgid"; then
            log "process group $pgid no longer belongs to $dir (pid reused?); not killing it"
        fi
        rm -f "$pidfile"
        return 0
    fi
    log "stopping smbd (process group $pgid)"
    kill -TERM -- "-$pgid" 2>/dev/null || true
    local deadline=$((SECONDS + 10))
    while group_alive "$pgid" && ((SECONDS < deadline)); do
        sleep 0.1
    done
    if group_alive "$pgid"; then
        log "smbd group $pgid still alive after 10s; sending SIGKILL"
        kill -KILL -- "-$pgid" 2>/dev/null || true
        deadline=$((SECONDS + 5))
        while group_alive "$pgid" && ((SECONDS < deadline)); do
            sleep 0.1
        done
    fi
    if group_alive "$pgid"; then
        log "WARNING: smbd process group $pgid survived SIGKILL"
    else
        rm -f "$pidfile"
    fi
}

# --- other samba daemons using our smb.conf. smbd spawns samba-dcerpcd (+ rpcd_* workers)
# on demand, e.g. for `smbclient -L`; they run in their own session/process group, so the
# group kill above misses them. Match on the full path of our private smb.conf only.
our_samba_pids() {
    local conf="$dir/samba/smb.conf" f pid
    for f in /proc/[0-9]*/cmdline; do
        pid="${f#/proc/}"
        pid="${pid%/cmdline}"
        [[ "$pid" != "$$" ]] || continue
        if tr '\0' ' ' <"$f" 2>/dev/null | grep -qF -- "$conf"; then
            printf '%s\n' "$pid"
        fi
    done
}

stop_samba_helpers() {
    local pids
    pids="$(our_samba_pids)"
    [[ -n "$pids" ]] || return 0
    log "stopping remaining samba processes: ${pids//$'\n'/ }"
    # shellcheck disable=SC2086
    kill -TERM $pids 2>/dev/null || true
    local deadline=$((SECONDS + 10))
    while [[ -n "$(our_samba_pids)" ]] && ((SECONDS < deadline)); do
        sleep 0.1
    done
    pids="$(our_samba_pids)"
    if [[ -n "$pids" ]]; then
        log "still alive after 10s, sending SIGKILL: ${pids//$'\n'/ }"
        # shellcheck disable=SC2086
        kill -KILL $pids 2>/dev/null || true
    fi
}

# --- postgres
stop_postgres() {
    local data="$dir/pg/data" pidfile bin version pid
    pidfile="$data/postmaster.pid"
    [[ -f "$pidfile" ]] || return 0
    pid="$(head -n1 "$pidfile" | tr -dc '0-9')"
    version="$(cat "$data/PG_VERSION" 2>/dev/null || echo "$IT_PG_VERSION")"
    log "stopping postgres (data $data, pid ${pid:-?})"
    if bin="$(pg_bin_dir "$version")"; then
        (cd / && runuser -u postgres -- "$bin/pg_ctl" stop -D "$data" -m fast -w -t 30) >&2 || true
    fi
    if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null &&
        tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q postgres; then
        log "postgres $pid still running; sending SIGQUIT/SIGKILL"
        kill -QUIT "$pid" 2>/dev/null || true
        local deadline=$((SECONDS + 5))
        while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    fi
}

stop_smbd || true
stop_samba_helpers || true
stop_postgres || true

if [[ "${IT_KEEP_ARTIFACTS:-0}" == 1 ]]; then
    log "IT_KEEP_ARTIFACTS=1: keeping state dir $dir"
    printf 'kept: %s\n' "$dir" >&2
    exit 0
fi

if [[ -f "$marker" ]]; then
    rm -rf -- "$dir" || log "WARNING: could not fully remove $dir"
    log "removed $dir"
elif rmdir -- "$dir" 2>/dev/null; then
    log "removed empty $dir"
else
    log "WARNING: $dir has no $(basename "$marker") marker; not deleting it"
fi
exit 0
