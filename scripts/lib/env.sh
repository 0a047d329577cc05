# shellcheck shell=bash
# Shared helpers for the coordinator integration-test / demo scripts.
#
# Source it:   . "$(dirname "${BASH_SOURCE[0]}")/lib/env.sh"
#
# Every helper logs to stderr only, so scripts can keep stdout for results.
# Nothing here changes shell options of the caller.

# smbd, useradd, runuser, ... live in sbin; a CI environment may not have it in PATH.
case ":${PATH}:" in
    *:/usr/sbin:*) ;;
    *) PATH="${PATH}:/usr/local/sbin:/usr/sbin:/sbin" ;;
esac
export PATH

IT_PG_VERSION="${IT_PG_VERSION:-15}"

# log MESSAGE...  -- timestamped line on stderr.
log() {
    printf '[%s %s] %s\n' "$(date +%H:%M:%S)" "${IT_LOG_TAG:-it-env}" "$*" >&2
}

# die MESSAGE...  -- log and exit 1 (EXIT traps still run).
die() {
    log "ERROR: $*"
    exit 1
}

# tail_log FILE [LINES]  -- dump the tail of a log file to stderr, if it exists.
tail_log() {
    local file="$1" lines="${2:-40}"
    if [[ -s "$file" ]]; then
        printf -- '----- last %s lines of %s -----\n' "$lines" "$file" >&2
        tail -n "$lines" "$file" >&2 || true
        printf -- '----- end of %s -----\n' "$file" >&2
    else
        printf -- '----- %s: missing or empty -----\n' "$file" >&2
    fi
}

# _python  -- print the path of a working python3, or fail.
_python() {
    local p
    for p in /usr/bin/python3 "$(command -v python3 2>/dev/null || true)"; do
        if [[ -n "$p" && -x "$p" ]] && "$p" -c 'pass' >/dev/null 2>&1; then
            printf '%s\n' "$p"
            return 0
        fi
    done
    return 1
}

# port_in_use PORT [HOST]  -- true if something accepts TCP connections there.
port_in_use() {
    local port="$1" host="${2:-127.0.0.1}"
    timeout 2 bash -c ": <>/dev/tcp/${host}/${port}" >/dev/null 2>&1
}

# free_port  -- print a currently free TCP port on 127.0.0.1 (asks the kernel via bind(0)).
# There is an unavoidable window between this and the real bind; callers that can,
# retry with a new port if the service fails to bind.
free_port() {
    local py port
    if py="$(_python)"; then
        port="$("$py" -c 'import socket
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()')" && [[ "$port" =~ ^[0-9]+$ ]] && { printf '%s\n' "$port"; return 0; }
    fi
    # Fallback without python: random high port that nobody listens on.
    local i
    for ((i = 0; i < 200; i++)); do
        port=$((20000 + (RANDOM * 32768 + RANDOM) % 40000))
        if ! port_in_use "$port" && ! { command -v ss >/dev/null && ss -Htan "sport = :$port" 2>/dev/null | grep -q .; }; then
            printf '%s\n' "$port"
            return 0
        fi
    done
    log "free_port: could not find a free port"
    return 1
}

# wait_port HOST PORT [TIMEOUT_SECONDS=20] [PID]
# Poll until HOST:PORT accepts a TCP connection. If PID is given and that process
# dies meanwhile, give up at once. Returns 1 on timeout / death.
wait_port() {
    local host="$1" port="$2" timeout_s="${3:-20}" pid="${4:-}"
    local deadline=$((SECONDS + timeout_s))
    while ((SECONDS < deadline)); do
        if port_in_use "$port" "$host"; then
            return 0
        fi
        if [[ -n "$pid" ]] && ! kill -0 "$pid" 2>/dev/null; then
            log "wait_port: process $pid exited before ${host}:${port} opened"
            return 1
        fi
        sleep 0.1
    done
    log "wait_port: ${host}:${port} not accepting connections after ${timeout_s}s"
    return 1
}

# random_password [LEN=24]  -- alphanumeric only (safe inside -U user%pw, URLs, smb.conf).
random_password() {
    local len="${1:-24}" pw=""
    while ((${#pw} < len)); do
        pw+="$(head -c 64 /dev/urandom | LC_ALL=C tr -dc 'A-Za-z0-9')"
    done
    printf '%s\n' "${pw:0:len}"
}

# pg_bin_dir [VERSION]  -- print the Postgres server bin dir, or fail.
pg_bin_dir() {
    local v="${1:-$IT_PG_VERSION}" d
    for d in "${IT_PG_BIN:-}" "/usr/lib/postgresql/${v}/bin"; do
        if [[ -n "$d" && -x "$d/initdb" && -x "$d/pg_ctl" && -x "$d/postgres" ]]; then
            printf '%s\n' "$d"
            return 0
        fi
    done
    return 1
}

# samba_present  -- true if smbd, smbclient, smbpasswd and the libsmbclient dev files exist.
samba_present() {
    command -v smbd >/dev/null 2>&1 &&
        command -v smbclient >/dev/null 2>&1 &&
        command -v smbpasswd >/dev/null 2>&1 &&
        command -v pkg-config >/dev/null 2>&1 &&
        [[ -f /usr/include/samba-4.0/libsmbclient.h ]] &&
        pkg-config --exists smbclient 2>/dev/null
}

_IT_APT_UPDATED=0
# _apt_install PKG...  -- apt-get update (once per shell) + install, serialised
# between concurrent callers and waiting for any running dpkg.
_apt_install() {
    command -v apt-get >/dev/null 2>&1 || { log "apt-get not available; cannot install: $*"; return 1; }
    local lock=/tmp/coordinator-it-apt.lock
    (
        flock -w 1800 9 || { log "timed out waiting for $lock"; exit 1; }
        export DEBIAN_FRONTEND=noninteractive
        if [[ "$_IT_APT_UPDATED" != 1 ]]; then
            log "apt-get update"
            apt-get -o DPkg::Lock::Timeout=900 update -q >&2 || exit 1
        fi
        log "apt-get install -y $*"
        apt-get -o DPkg::Lock::Timeout=900 install -y -q "$@" >&2 || exit 1
    ) 9>"$lock"
    local rc=$?
    _IT_APT_UPDATED=1
    return $rc
}

# ensure_packages [samba] [postgres] [browser]   (no argument = samba and postgres)
# Installs what is missing: samba smbclient libsmbclient-dev pkg-config strace,
# libssl-dev (the coordinator's MD5 is OpenSSL's),
# postgresql-$IT_PG_VERSION, and/or chromium chromium-driver (the status page's
# browser test). Idempotent and quick when everything is present.
ensure_packages() {
    local want=("$@")
    ((${#want[@]})) || want=(samba postgres)
    local w
    for w in "${want[@]}"; do
        case "$w" in
            samba)
                if ! samba_present; then
                    log "samba / libsmbclient dev files missing; installing"
                    _apt_install samba smbclient libsmbclient-dev pkg-config || return 1
                    samba_present || { log "samba still missing after install"; return 1; }
                fi
                # The coordinator links OpenSSL (its MD5); every script builds it.
                if ! pkg-config --exists openssl 2>/dev/null; then
                    log "OpenSSL dev files missing (the coordinator's MD5); installing"
                    _apt_install libssl-dev pkg-config || return 1
                fi
                # The read-integrity test slows smbd's reads with strace.
                if ! command -v strace >/dev/null; then
                    log "strace missing (read-integrity test); installing"
                    _apt_install strace || return 1
                fi
                ;;
            postgres)
                if ! pg_bin_dir >/dev/null; then
                    log "postgres ${IT_PG_VERSION} binaries missing; installing"
                    _apt_install "postgresql-${IT_PG_VERSION}" || return 1
                    pg_bin_dir >/dev/null || { log "postgres still missing after install"; return 1; }
                fi
                ;;
            browser)
                if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
                    log "chromium / chromedriver missing (status page test); installing"
                    _apt_install chromium chromium-driver || return 1
                    command -v chromedriver >/dev/null || { log "chromedriver still missing after install"; return 1; }
                fi
                ;;
            *)
                log "ensure_packages: unknown component '$w'"
                return 1
                ;;
        esac
    done
}

# env_export NAME VALUE  -- print a shell-safe `export NAME=VALUE` line.
env_export() {
    printf 'export %s=%q\n' "$1" "$2"
}

# exec_detached CMD [ARGS...]
# Close every inherited file descriptor above 2, then exec CMD. Use it for anything
# that outlives the calling script (daemons), typically as
#   ( exec_detached smbd ... ) </dev/null >>log 2>&1 &
# Otherwise the daemon keeps e.g. the pipe of a caller's `$(scripts/test-env-up.sh)`
# open and the command substitution never returns.
exec_detached() {
    local fd n
    for fd in /proc/self/fd/*; do
        n="${fd##*/}"
        [[ "$n" =~ ^[0-9]+$ ]] || continue
        ((n > 2)) || continue
        eval "exec ${n}>&-" 2>/dev/null || true
    done
    exec "$@"
}
