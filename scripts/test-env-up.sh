#!/usr/bin/env bash
# Start a private, throwaway Postgres + Samba (smbd) for coordinator integration tests.
#
#   envfile=$(scripts/test-env-up.sh) && . "$envfile"
#   ... run tests ...
#   scripts/test-env-down.sh "$IT_STATE_DIR"
#
# Only the env file path is printed on stdout (last line); all logging goes to stderr.
#
# Inputs (all optional):
#   IT_STATE_DIR     state dir to create (must not exist or be empty); default mktemp -d
#   DATABASE_URL     use this database instead of starting Postgres
#                    (ignored if it came from a previously sourced env file, i.e. IT_PG_DATA is set)
#   IT_SMB_USERNAME  unix + samba user owning the share (default coordit)
#   IT_PG_VERSION    Postgres major version (default 15)
#   IT_SMB_ENCRYPT   `server smb encrypt` of the private smbd (off, if_required,
#                    desired, required); unset = Samba's default
#   IT_SMB_SIGNING   `server signing` of the private smbd (disabled, auto,
#                    mandatory); unset = Samba's default
#   IT_KEEP_ARTIFACTS=1  on failure, keep the state dir for inspection
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=lib/env.sh
. "$SCRIPT_DIR/lib/env.sh"
IT_LOG_TAG=test-env-up

# Keep the real stdout on fd 3 for the final result; everything else goes to stderr.
exec 3>&1 1>&2

SMB_SHARE=itshare
SMB_USER="${IT_SMB_USERNAME:-coordit}"
[[ "$SMB_USER" =~ ^[a-z_][a-z0-9_-]{0,30}$ ]] || die "invalid IT_SMB_USERNAME '$SMB_USER'"
SMB_ENCRYPT="${IT_SMB_ENCRYPT:-}"
[[ "$SMB_ENCRYPT" =~ ^(|off|if_required|desired|required)$ ]] ||
    die "invalid IT_SMB_ENCRYPT '$SMB_ENCRYPT' (off, if_required, desired or required)"
SMB_SIGNING="${IT_SMB_SIGNING:-}"
[[ "$SMB_SIGNING" =~ ^(|disabled|auto|mandatory)$ ]] ||
    die "invalid IT_SMB_SIGNING '$SMB_SIGNING' (disabled, auto or mandatory)"

# ---------------------------------------------------------------- what do we need?
start_pg=1
if [[ -n "${DATABASE_URL:-}" ]]; then
    if [[ -n "${IT_PG_DATA:-}" ]]; then
        log "DATABASE_URL comes from an earlier test-env env file (IT_PG_DATA=$IT_PG_DATA); starting a fresh Postgres"
    else
        start_pg=0
        log "DATABASE_URL is set; using it and not starting Postgres"
    fi
fi

if ((start_pg)); then
    ensure_packages samba postgres || die "could not install required packages"
else
    ensure_packages samba || die "could not install required packages"
fi
command -v runuser >/dev/null || die "runuser not found (util-linux)"
id -u postgres >/dev/null 2>&1 || ((start_pg == 0)) || die "system user 'postgres' missing"

# ---------------------------------------------------------------- state dir
if [[ -n "${IT_STATE_DIR:-}" ]]; then
    if [[ -e "$IT_STATE_DIR" ]] && [[ -n "$(ls -A "$IT_STATE_DIR" 2>/dev/null)" ]]; then
        die "IT_STATE_DIR=$IT_STATE_DIR exists and is not empty (left over from an earlier run? unset IT_STATE_DIR or run test-env-down.sh on it)"
    fi
    mkdir -p "$IT_STATE_DIR"
    STATE_DIR="$(cd "$IT_STATE_DIR" && pwd)"
else
    STATE_DIR="$(mktemp -d /tmp/coordinator-it.XXXXXX)"
fi
# 0711: other users (postgres, the samba user smbd switches to) may traverse but not list.
chmod 0711 "$STATE_DIR"
: >"$STATE_DIR/.coordinator-it"
# Unix sockets (postgres, samba ncalrpc) are limited to ~107 bytes of path.
((${#STATE_DIR} <= 60)) || die "state dir path too long for unix sockets: $STATE_DIR (keep it <= 60 chars)"
log "state dir: $STATE_DIR"

PG_ROOT="$STATE_DIR/pg"
PG_DATA="$PG_ROOT/data"
PG_LOG="$PG_ROOT/postgres.log"
SMB_ROOT="$STATE_DIR/samba"
SMB_CONF="$SMB_ROOT/smb.conf"
SMB_LOG="$SMB_ROOT/smbd.log"
SHARE_PATH="$STATE_DIR/share"

ok=0
on_exit() {
    local rc=$?
    ((ok)) && return 0
    log "FAILED (exit $rc); cleaning up what was started"
    [[ -f "$PG_ROOT/initdb.log" ]] && tail_log "$PG_ROOT/initdb.log" 20
    [[ -d "$PG_ROOT" ]] && tail_log "$PG_LOG" 40
    [[ -d "$SMB_ROOT" ]] && tail_log "$SMB_LOG" 60
    "$SCRIPT_DIR/test-env-down.sh" "$STATE_DIR" || true
    exit "$((rc == 0 ? 1 : rc))"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- postgres
PG_BIN="$(pg_bin_dir 2>/dev/null || true)"
if ((start_pg)); then
    [[ -n "$PG_BIN" ]] || die "postgres ${IT_PG_VERSION} binaries not found"
    mkdir -p "$PG_DATA" "$PG_ROOT/sock"
    chown -R postgres:postgres "$PG_ROOT"
    chmod 0700 "$PG_ROOT" "$PG_DATA"

    log "initdb $PG_DATA"
    (cd / && runuser -u postgres -- "$PG_BIN/initdb" -D "$PG_DATA" -U postgres \
        --auth=trust --encoding=UTF8 --locale=C --no-sync) >"$PG_ROOT/initdb.log" 2>&1 ||
        die "initdb failed"

    cat >>"$PG_DATA/postgresql.conf" <<EOF

# ---- coordinator test env (scripts/test-env-up.sh)
listen_addresses = '127.0.0.1'
unix_socket_directories = '$PG_ROOT/sock'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 300
logging_collector = off
EOF

    pg_port=""
    for attempt in 1 2 3; do
        port="$(free_port)" || die "no free port for postgres"
        log "starting postgres on 127.0.0.1:$port (attempt $attempt)"
        # exec_detached: the postmaster must not inherit our fd 3 (the caller's stdout pipe).
        if (cd / && exec_detached runuser -u postgres -- "$PG_BIN/pg_ctl" start -D "$PG_DATA" \
            -w -t 60 -l "$PG_LOG" -o "-p $port" </dev/null); then
            pg_port="$port"
            break
        fi
        if grep -qiE 'could not (bind|create listen)|address already in use' "$PG_LOG" 2>/dev/null; then
            log "port $port was taken meanwhile; retrying with another port"
            (cd / && runuser -u postgres -- "$PG_BIN/pg_ctl" stop -D "$PG_DATA" -m immediate) >/dev/null 2>&1 || true
            continue
        fi
        die "pg_ctl start failed"
    done
    [[ -n "$pg_port" ]] || die "postgres could not bind a port after 3 attempts"

    deadline=$((SECONDS + 30))
    until "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$pg_port" -U postgres -d postgres -t 2; do
        ((SECONDS < deadline)) || die "postgres on port $pg_port not ready after 30s"
        sleep 0.2
    done
    # Trust auth ignores the password; it is there so the suite can check that
    # the coordinator never logs the database password.
    pg_password=$(random_password)
    DATABASE_URL="postgres://postgres:${pg_password}@127.0.0.1:${pg_port}/postgres"
    log "postgres ready: postgres://postgres:***@127.0.0.1:${pg_port}/postgres"
fi

# ---------------------------------------------------------------- samba user
# useradd takes /etc/passwd locks; serialise between concurrent runs.
(
    flock -w 60 9 || die "timed out waiting for useradd lock"
    if ! id -u "$SMB_USER" >/dev/null 2>&1; then
        log "creating unix user $SMB_USER"
        useradd -M -s /usr/sbin/nologin "$SMB_USER"
    fi
) 9>/tmp/coordinator-it-useradd.lock
SMB_GROUP="$(id -gn "$SMB_USER")"
SMB_PASSWORD="$(random_password 24)"

mkdir -p "$SMB_ROOT"/{private,lock,state,cache,pid,ncalrpc} "$SHARE_PATH"
# smbd's per-connection processes run as the share user and must reach the
# lock directory: with $SMB_ROOT at 0700 share modes are silently not
# enforced ("Could not get share mode lock"), and a deny-write open succeeds
# while another client writes. 0711: traverse, not list.
chmod 0711 "$SMB_ROOT"
chmod 0700 "$SMB_ROOT/private"
chown "$SMB_USER:$SMB_GROUP" "$SHARE_PATH"
chmod 0775 "$SHARE_PATH"

write_smb_conf() { # PORT
    cat >"$SMB_CONF" <<EOF
# Generated by scripts/test-env-up.sh -- private throwaway smbd for coordinator tests.
[global]
    server role = standalone server
    workgroup = WORKGROUP
    netbios name = COORDIT
    interfaces = 127.0.0.1
    bind interfaces only = yes
    smb ports = $1
    disable netbios = yes
    server min protocol = SMB2_10
    map to guest = never
    passdb backend = tdbsam:$SMB_ROOT/private/passdb.tdb
    private dir = $SMB_ROOT/private
    lock directory = $SMB_ROOT/lock
    state directory = $SMB_ROOT/state
    cache directory = $SMB_ROOT/cache
    pid directory = $SMB_ROOT/pid
    ncalrpc dir = $SMB_ROOT/ncalrpc
    log file = $SMB_ROOT/log.%m
    max log size = 0
    log level = 1
    load printers = no
    printing = bsd
    printcap name = /dev/null
    disable spoolss = yes
    usershare max shares = 0
${SMB_ENCRYPT:+    server smb encrypt = $SMB_ENCRYPT}
${SMB_SIGNING:+    server signing = $SMB_SIGNING}

[$SMB_SHARE]
    path = $SHARE_PATH
    read only = no
    browseable = yes
    valid users = $SMB_USER
    create mask = 0664
    directory mask = 0775
    store dos attributes = no
EOF
}

# the passdb does not depend on the port, so register the user once
write_smb_conf 445 # placeholder; the real port is written below
log "adding samba user $SMB_USER"
printf '%s\n%s\n' "$SMB_PASSWORD" "$SMB_PASSWORD" |
    smbpasswd -c "$SMB_CONF" -s -a "$SMB_USER" >&2 ||
    die "smbpasswd -a $SMB_USER failed"

# ---------------------------------------------------------------- smbd
smb_port=""
smbd_pid=""
for attempt in 1 2 3; do
    port="$(free_port)" || die "no free port for smbd"
    write_smb_conf "$port"
    log "starting smbd on 127.0.0.1:$port (attempt $attempt)"
    # No setsid(1) wrapper: without --no-process-group smbd calls setsid() itself, which
    # fails ("Failed to create session") if it is already a group/session leader. Started
    # as a plain background child (no job control in this script) it becomes its own
    # session + process-group leader, so $! == its pid == the pgid test-env-down.sh kills.
    (exec_detached smbd --foreground --debug-stdout -s "$SMB_CONF") </dev/null >>"$SMB_LOG" 2>&1 &
    smbd_pid=$!
    printf '%s\n' "$smbd_pid" >"$STATE_DIR/smbd.pid"
    if wait_port 127.0.0.1 "$port" 20 "$smbd_pid"; then
        smb_port="$port"
        break
    fi
    if ! kill -0 "$smbd_pid" 2>/dev/null && grep -qiE 'address already in use|no sockets available' "$SMB_LOG"; then
        log "port $port was taken meanwhile; retrying with another port"
        continue
    fi
    die "smbd did not start listening on port $port within 20s"
done
[[ -n "$smb_port" ]] || die "smbd could not bind a port after 3 attempts"
pgid="$(ps -o pgid= -p "$smbd_pid" | tr -dc '0-9')"
[[ "$pgid" == "$smbd_pid" ]] || die "smbd (pid $smbd_pid) is not its own process group leader (pgid '$pgid')"

# Log in for real, as the tests will.
deadline=$((SECONDS + 15))
until out="$(smbclient -s "$SMB_CONF" -p "$smb_port" -m SMB3 "//127.0.0.1/$SMB_SHARE" \
    -U "$SMB_USER%$SMB_PASSWORD" -c 'ls' 2>&1)"; do
    if ((SECONDS >= deadline)) || ! kill -0 "$smbd_pid" 2>/dev/null; then
        printf '%s\n' "$out" >&2
        die "smbclient could not log in to //127.0.0.1:$smb_port/$SMB_SHARE as $SMB_USER"
    fi
    sleep 0.3
done
log "smbd ready: //127.0.0.1:$smb_port/$SMB_SHARE (user $SMB_USER, pid $smbd_pid)"

# ---------------------------------------------------------------- env file
ENV_FILE="$STATE_DIR/env"
{
    echo "# coordinator integration-test environment (scripts/test-env-up.sh)"
    env_export IT_STATE_DIR "$STATE_DIR"
    env_export DATABASE_URL "$DATABASE_URL"
    env_export IT_SMB_HOST 127.0.0.1
    env_export IT_SMB_PORT "$smb_port"
    env_export IT_SMB_SHARE "$SMB_SHARE"
    env_export IT_SMB_USERNAME "$SMB_USER"
    env_export IT_SMB_PASSWORD "$SMB_PASSWORD"
    env_export IT_SMB_SHARE_PATH "$SHARE_PATH"
    env_export IT_SMB_CONF "$SMB_CONF"
    env_export IT_SMBD_PID "$smbd_pid"
    if ((start_pg)); then
        env_export IT_PG_DATA "$PG_DATA"
    fi
    if [[ -n "$PG_BIN" ]]; then
        env_export IT_PG_BIN "$PG_BIN"
    fi
} >"$ENV_FILE.tmp"
chmod 0600 "$ENV_FILE.tmp"
mv "$ENV_FILE.tmp" "$ENV_FILE"

ok=1
log "environment ready; source $ENV_FILE and stop with: scripts/test-env-down.sh $STATE_DIR"
printf '%s\n' "$ENV_FILE" >&3
