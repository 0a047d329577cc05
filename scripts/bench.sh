#!/usr/bin/env bash
# The coordinator against the floor (issue 8): each scenario, and in the same
# run the bare tools on the same files (smbclient ls / mget / get / rename,
# a plain POST loop to a sink of the same kind as the fakes). Starts a private
# Samba + Postgres (scripts/test-env-up.sh) and stops them at the end, also on
# failure. Prints a table of medians and ratios; writes it as JSON.
#
#   scripts/bench.sh                      # all scenarios, defaults below
#   BENCH_SCENARIOS="small big" BENCH_REPS=1 scripts/bench.sh
#
# Not a test: no test or CI step runs it, nothing fails on a timing.
#
# Sizes (env; defaults in brackets):
#   BENCH_REPS [3]  runs per scenario (medians are reported)
#   BENCH_RESCAN_FILES [20000] BENCH_RESCAN_DIRS [200]   rescan, nothing new
#   BENCH_SMALL_FILES [2000]   BENCH_SMALL_DIRS [20]     first run, 2 KiB files
#   BENCH_MIB_FILES [100]                                first run, 1 MiB files
#   BENCH_BIG_MIB [2048]  one big file, in MiB (needs about 3× that on local disk: share, download, spool)
#   BENCH_DELAY_FILES [200] BENCH_LOOK_SECS [1]          FOI 50 ms + ITM 10 ms, 16 at once
#   BENCH_ARCHIVE_FILES [10000] BENCH_ARCHIVE_DIRS [100] archive pass
#   BENCH_TWO_FILES [2000]                               2 instances vs 1
#   BENCH_SHARED_FILES [600]                             one run shared by 1, 2 and 4
#                             `serve` instances, FOI 200 ms + ITM 10 ms, 4 at once each
#   BENCH_VERIFY_EVENTS [1000000]  `coordinator audit verify` over that many file_events
#                             (MACed and sealed as the coordinator does, by examples/audit_fill),
#                             against the 60 s budget of CONTRACT §11
#   BENCH_OUT [target/bench]  where samples.tsv, bench.json and logs go
#   BENCH_COORDINATOR [target/release/coordinator]  the binary measured
#   BENCH_PROFILE [unset]     1: run the coordinator under `perf record` (cpu-clock,
#                             DWARF call graphs) and write logs/<n>-<tag>.perf.txt (self
#                             time by symbol) and .perf-children.txt (inclusive)
#
# Timing: a run's time is its row in `runs` (started_at → finished_at:
# listing, looks, downloads, claims, FOI, ITM; not process start-up and
# migrations, not the background pass). The archive pass is the time from
# the run's finished_at to the last files.archived_at. "2 instances" is wall
# time of the processes. CPU (user+sys) and peak RSS of the coordinator
# process come from /usr/bin/time; "run CPU" is the process's CPU during the
# run alone (the engine's `run's CPU` log line), the figure reported per GiB
# and per 1,000 files, beside the floor tools' own CPU (smbclient and the
# POST loop under /usr/bin/time). The FOI sink reads and hashes every byte
# it is sent before it answers (tests/it/fakes.rs), as a real FOI does.
# The byte rows (small, mib, big) also run each repetition end to end: a
# `coordinator serve` timed from its POST /api/v1/coordinator/runs to the
# answer as a client sees it, with a BENCH_LOOK_SECS stability look that is
# subtracted (rows small_e2e, mib_e2e, big_e2e).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. scripts/lib/env.sh
IT_LOG_TAG=bench

REPS=${BENCH_REPS:-3}
RESCAN_FILES=${BENCH_RESCAN_FILES:-20000}
RESCAN_DIRS=${BENCH_RESCAN_DIRS:-200}
SMALL_FILES=${BENCH_SMALL_FILES:-2000}
SMALL_DIRS=${BENCH_SMALL_DIRS:-20}
MIB_FILES=${BENCH_MIB_FILES:-100}
BIG_MIB=${BENCH_BIG_MIB:-2048}
DELAY_FILES=${BENCH_DELAY_FILES:-200}
LOOK_SECS=${BENCH_LOOK_SECS:-1}
ARCHIVE_FILES=${BENCH_ARCHIVE_FILES:-10000}
ARCHIVE_DIRS=${BENCH_ARCHIVE_DIRS:-100}
TWO_FILES=${BENCH_TWO_FILES:-2000}
SHARED_FILES=${BENCH_SHARED_FILES:-600}
VERIFY_EVENTS=${BENCH_VERIFY_EVENTS:-1000000}
SCENARIOS=${BENCH_SCENARIOS:-rescan small mib big delay archive two shared verify}
OUT=${BENCH_OUT:-target/bench}
TARGET=${CARGO_TARGET_DIR:-target}

# smbd and smbclient (for the floors), on a fresh machine.
ensure_packages samba || die "could not install samba and smbclient"
[[ -x /usr/bin/time ]] || _apt_install time || die "/usr/bin/time is needed (apt-get install time)"
command -v curl >/dev/null || _apt_install curl || die "curl is needed (apt-get install curl)"
if [[ -n "${BENCH_PROFILE:-}" ]]; then
    command -v perf >/dev/null || _apt_install linux-perf || die "perf is needed for BENCH_PROFILE (apt-get install linux-perf)"
fi
log "building (release)"
cargo build --quiet --release --bin coordinator --examples
# BENCH_COORDINATOR: another build of the coordinator to measure (a before/after pair).
COORD="${BENCH_COORDINATOR:-$TARGET/release/coordinator}"
BENCH="$TARGET/release/examples/bench"
FAKES="$TARGET/release/examples/fake_downstream"
AUDIT_FILL="$TARGET/release/examples/audit_fill"

mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
SAMPLES="$OUT/samples.tsv"
LOGS="$OUT/logs"
rm -rf "$LOGS" && mkdir -p "$LOGS"
: >"$SAMPLES"

envfile=""
fakes_pid=""
cleanup() {
    [[ -n "$fakes_pid" ]] && kill "$fakes_pid" 2>/dev/null || true
    [[ -n "$envfile" ]] && scripts/test-env-down.sh "$(dirname "$envfile")" || true
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
envfile=$(scripts/test-env-up.sh) || die "the private Samba + Postgres did not come up"
# shellcheck disable=SC1090
. "$envfile"
SHARE="$IT_SMB_SHARE_PATH"
WORK="$IT_STATE_DIR/bench"
mkdir -p "$WORK"

sample() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$SAMPLES"; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }'; }
calc() { awk "BEGIN { printf \"%.3f\", $1 }"; }
smb() {
    smbclient -s "$IT_SMB_CONF" -p "$IT_SMB_PORT" -m SMB3 "//127.0.0.1/$IT_SMB_SHARE" \
        -U "$IT_SMB_USERNAME%$IT_SMB_PASSWORD" "$@"
}

sample bench date "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
sample bench machine "$(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr)"

# A fresh database per coordinator run (no row of an earlier run counts).
db_n=0
new_db() {
    db_n=$((db_n + 1))
    psql -q "$DATABASE_URL" -c "CREATE DATABASE bench_$db_n" >/dev/null
    DB="${DATABASE_URL%/*}/bench_$db_n"
}
q() { psql -Atq "$DB" -c "$1"; }

# The share holds incoming/<remitter>/<file> only; files are written on the
# share's local folder (faster than over SMB) and given to the share's user.
fill_share() { # FILES DIRS BYTES
    rm -rf "${SHARE:?}/incoming" "$SHARE/archive"
    "$BENCH" mkfiles "$SHARE/incoming" "$2" "$1" "$3"
    chown -R "$IT_SMB_USERNAME:" "$SHARE/incoming"
}

start_fakes() { # VAR=VALUE... for the fakes
    if [[ -n "$fakes_pid" ]]; then
        kill "$fakes_pid" 2>/dev/null || true
        wait "$fakes_pid" 2>/dev/null || true
    fi
    local urls="$WORK/fake-urls"
    : >"$urls"
    env "$@" "$FAKES" >"$urls" 2>>"$LOGS/fakes.log" &
    fakes_pid=$!
    for _ in $(seq 1 100); do [[ $(wc -l <"$urls") -ge 3 ]] && break; sleep 0.1; done
    [[ $(wc -l <"$urls") -ge 3 ]] || die "the fake services did not start"
    # shellcheck disable=SC1090
    . "$urls"
    export FOI_API_URL ITM_API_URL IQUBE_API_URL
    SINK_URL="${FOI_API_URL/\{remitter\}/sink}"
}

export ENV=local SMB_HOST="$IT_SMB_HOST" SMB_PORT="$IT_SMB_PORT" SMB_SHARE="$IT_SMB_SHARE" \
    SMB_USERNAME="$IT_SMB_USERNAME" SMB_PASSWORD="$IT_SMB_PASSWORD" SMB_SOURCE_DIR=incoming \
    SMB_ARCHIVE_DIR=archive STABLE_MIN_AGE_SECS=0 STABLE_CHECK_INTERVAL_SECS=0 \
    SPOOL_DIR="$WORK/spool" RUST_LOG="${BENCH_RUST_LOG:-info}"
mkdir -p "$WORK/spool"

# One `coordinator run` under /usr/bin/time; TAG names its logs. Sets
# RUN_S (the run's own time, from `runs`), CPU_S, RSS_KIB, WALL_S, RC.
run_n=0
coord_run() { # TAG [VAR=VALUE...]
    local tag=$1
    shift
    run_n=$((run_n + 1))
    local base="$LOGS/$run_n-$tag"
    RC=0
    local prof=()
    # BENCH_PROFILE=1: every coordinator run under perf (its times then
    # include perf's own cost: for where the time goes, not for the table).
    [[ -n "${BENCH_PROFILE:-}" ]] &&
        prof=(perf record -q -o "$base.perf.data" -e cpu-clock -F 999 --call-graph dwarf,32768 --)
    env DATABASE_URL="$DB" "$@" /usr/bin/time -f '%e %U %S %M' -o "$base.time" \
        "${prof[@]}" "$COORD" run >"$base.out" 2>"$base.log" || RC=$?
    if [[ -n "${BENCH_PROFILE:-}" ]]; then
        perf report -q -i "$base.perf.data" --no-children --sort dso,symbol --percent-limit 0.5 \
            --stdio -g none >"$base.perf.txt" 2>/dev/null || true
        perf report -q -i "$base.perf.data" --children --sort symbol --percent-limit 2 \
            --stdio -g none >"$base.perf-children.txt" 2>/dev/null || true
    fi
    # GNU time writes "Command exited with non-zero status N" first then.
    read -r WALL_S u s RSS_KIB < <(tail -n1 "$base.time")
    CPU_S=$(calc "$u + $s")
    # Only a run that completed has a row of its own to read; a refused one
    # (exit 3) must not query meanwhile: in the two-instance case that query
    # would run beside the instance being timed.
    RUN_S=""
    ((RC == 0)) && RUN_S=$(q "SELECT round(extract(epoch FROM finished_at - started_at)::numeric, 3) FROM runs ORDER BY started_at DESC LIMIT 1")
    log "$tag: exit $RC, run ${RUN_S}s, wall ${WALL_S}s, cpu ${CPU_S}s, peak RSS $((RSS_KIB / 1024)) MiB"
}

expect_status() { # STATUS COUNT
    local n
    n=$(q "SELECT count(*) FROM files WHERE status = '$1'")
    [[ "$n" == "$2" ]] || log "WARNING: $n files $1, expected $2 (see $LOGS)"
}

# The mget (or get) + POST floor of the files now in incoming/. Sets FLOOR_S
# and FLOOR_CPU_S (user + sys of smbclient and of the POST loop).
mget_post_floor() { # SCENARIO
    local dl="$WORK/dl" t mget_s post_s w u s m mget_cpu post_cpu
    rm -rf "$dl" && mkdir -p "$dl"
    t=$(now)
    /usr/bin/time -f '%e %U %S %M' -o "$WORK/mget.time" \
        smbclient -s "$IT_SMB_CONF" -p "$IT_SMB_PORT" -m SMB3 "//127.0.0.1/$IT_SMB_SHARE" \
        -U "$IT_SMB_USERNAME%$IT_SMB_PASSWORD" \
        -c "lcd $dl; cd incoming; recurse ON; prompt OFF; mget *" >/dev/null 2>&1
    mget_s=$(since "$t")
    read -r w u s m < <(tail -n1 "$WORK/mget.time")
    mget_cpu=$(calc "$u + $s")
    post_s=$(/usr/bin/time -f '%e %U %S %M' -o "$WORK/post.time" "$BENCH" post "$SINK_URL" "$dl")
    read -r w u s m < <(tail -n1 "$WORK/post.time")
    post_cpu=$(calc "$u + $s")
    rm -rf "$dl"
    sample "$1" mget_s "$mget_s"
    sample "$1" post_s "$post_s"
    sample "$1" mget_cpu_s "$mget_cpu"
    sample "$1" post_cpu_s "$post_cpu"
    FLOOR_S=$(calc "$mget_s + $post_s")
    FLOOR_CPU_S=$(calc "$mget_cpu + $post_cpu")
    sample "$1" floor_cpu_s "$FLOOR_CPU_S"
    log "$1 floor: smbclient ${mget_s}s (cpu ${mget_cpu}s) + POSTs ${post_s}s (cpu ${post_cpu}s)"
}

# The CPU of the process during its run alone (no start-up, no migrations),
# from the `run's CPU` line the engine logs after each run.
run_cpu() { # LOG
    sed 's/\x1b\[[0-9;]*m//g' "$1" | grep "run's CPU" | tail -n1 |
        grep -o 'cpu_s=[0-9.]*' | cut -d= -f2
}

# The same run as a client sees it: a `coordinator serve` on the scenario's
# files, timed from its `POST /api/v1/coordinator/runs` to the answer, with a
# stability look of LOOK_SECS (subtracted). Sets E2E_S, and CPU_S, RSS_KIB
# of the serve process (its CPU from /proc just before and after the POST).
serve_e2e() { # TAG
    local tag=$1 port pid t total ticks0 ticks1 hz
    run_n=$((run_n + 1))
    local base="$LOGS/$run_n-$tag"
    port=$(free_port)
    env DATABASE_URL="$DB" BIND_ADDR="127.0.0.1:$port" STABLE_CHECK_INTERVAL_SECS="$LOOK_SECS" \
        "$COORD" serve >"$base.out" 2>"$base.log" &
    pid=$!
    for _ in $(seq 1 200); do curl -fs "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
    hz=$(getconf CLK_TCK)
    ticks0=$(awk '{ print $14 + $15 }' "/proc/$pid/stat")
    t=$(now)
    curl -fs -X POST "http://127.0.0.1:$port/api/v1/coordinator/runs" >"$base.run.json" ||
        log "WARNING: $tag: the run did not answer 200"
    total=$(since "$t")
    ticks1=$(awk '{ print $14 + $15 }' "/proc/$pid/stat")
    RSS_KIB=$(awk '/VmHWM/ { print $2 }' "/proc/$pid/status")
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    E2E_S=$(calc "$total - $LOOK_SECS")
    CPU_S=$(calc "($ticks1 - $ticks0) / $hz")
    WALL_S=$total
    log "$tag: POST to answer ${total}s (${E2E_S}s without the ${LOOK_SECS}s look), cpu ${CPU_S}s, peak RSS $((RSS_KIB / 1024)) MiB"
}

record() { # SCENARIO COORD_S FLOOR_S
    sample "$1" coord_s "$2"
    sample "$1" floor_s "$3"
    sample "$1" cpu_s "$CPU_S"
    sample "$1" rss_kib "$RSS_KIB"
    sample "$1" wall_s "$WALL_S"
}

# Each repetition: the floor, a `coordinator run` (timed by its `runs` row),
# then the same files again through `serve`, end to end (SCENARIO_e2e).
first_run_scenario() { # SCENARIO FILES DIRS BYTES DESC
    local scen=$1 files=$2 dirs=$3 bytes=$4
    sample "$scen" desc "$5"
    sample "${scen}_e2e" desc "$5, look ${LOOK_SECS}s subtracted"
    sample "$scen" files "$files"
    sample "$scen" bytes "$((files * bytes))"
    start_fakes
    for rep in $(seq 1 "$REPS"); do
        new_db
        fill_share "$files" "$dirs" "$bytes"
        mget_post_floor "$scen"
        coord_run "$scen-$rep"
        expect_status success "$files"
        record "$scen" "$RUN_S" "$FLOOR_S"
        sample "$scen" run_cpu_s "$(run_cpu "$LOGS/$run_n-$scen-$rep.log")"
        new_db
        fill_share "$files" "$dirs" "$bytes"
        serve_e2e "$scen-e2e-$rep"
        expect_status success "$files"
        record "${scen}_e2e" "$E2E_S" "$FLOOR_S"
        sample "${scen}_e2e" run_cpu_s "$CPU_S"
        sample "${scen}_e2e" floor_cpu_s "$FLOOR_CPU_S"
    done
}

bench_rescan() {
    sample rescan desc "$RESCAN_FILES in $RESCAN_DIRS folders"
    # ITM rejects everything, so the files stay in the source (itm_failed)
    # and the next run finds them all already processed.
    start_fakes FAKE_ITM_FAIL=1
    new_db
    fill_share "$RESCAN_FILES" "$RESCAN_DIRS" 2048
    coord_run rescan-setup
    expect_status itm_failed "$RESCAN_FILES"
    sample rescan setup_first_run_s "$RUN_S"
    for rep in $(seq 1 "$REPS"); do
        local t list_s
        t=$(now)
        smb -c "cd incoming; recurse ON; ls" >/dev/null 2>&1
        list_s=$(since "$t")
        coord_run "rescan-$rep"
        log "rescan floor: smbclient ls ${list_s}s"
        record rescan "$RUN_S" "$list_s"
    done
}

bench_small() { first_run_scenario small "$SMALL_FILES" "$SMALL_DIRS" 2048 "$SMALL_FILES x 2 KiB in $SMALL_DIRS folders"; }
bench_mib() { first_run_scenario mib "$MIB_FILES" 10 1048576 "$MIB_FILES x 1 MiB in 10 folders"; }
bench_big() { first_run_scenario big 1 1 $((BIG_MIB * 1048576)) "1 x $BIG_MIB MiB"; }

bench_delay() {
    sample delay desc "$DELAY_FILES x 2 KiB, look ${LOOK_SECS}s"
    start_fakes FAKE_FOI_DELAY_MS=50 FAKE_ITM_DELAY_MS=10
    local floor
    floor=$(calc "$DELAY_FILES * 0.060 / 16 + $LOOK_SECS")
    for rep in $(seq 1 "$REPS"); do
        new_db
        fill_share "$DELAY_FILES" 10 2048
        coord_run "delay-$rep" MAX_CONCURRENT_FILES=16 STABLE_CHECK_INTERVAL_SECS="$LOOK_SECS"
        expect_status success "$DELAY_FILES"
        record delay "$RUN_S" "$floor"
    done
}

bench_archive() {
    sample archive desc "$ARCHIVE_FILES in $ARCHIVE_DIRS folders"
    start_fakes
    for rep in $(seq 1 "$REPS"); do
        # The floor: the same moves, one smbclient session, commands on stdin.
        fill_share "$ARCHIVE_FILES" "$ARCHIVE_DIRS" 2048
        local cmds="$WORK/renames" t rename_s archive_s
        {
            echo "mkdir archive"
            (cd "$SHARE/incoming" && for d in */; do echo "mkdir \"archive/${d%/}\""; done)
            (cd "$SHARE/incoming" && find . -type f | sed 's|^\./||' |
                awk '{ printf "rename \"incoming/%s\" \"archive/%s\"\n", $0, $0 }')
        } >"$cmds"
        t=$(now)
        smb <"$cmds" >"$LOGS/renames-$rep.log" 2>&1
        rename_s=$(since "$t")
        local moved
        moved=$(find "$SHARE/archive" -type f | wc -l)
        [[ "$moved" == "$ARCHIVE_FILES" ]] || log "WARNING: the rename floor moved $moved files"
        log "archive floor: smbclient renames ${rename_s}s"

        new_db
        fill_share "$ARCHIVE_FILES" "$ARCHIVE_DIRS" 2048
        coord_run "archive-$rep"
        expect_status success "$ARCHIVE_FILES"
        local archived
        archived=$(q "SELECT count(*) FROM files WHERE archived_at IS NOT NULL")
        [[ "$archived" == "$ARCHIVE_FILES" ]] || log "WARNING: $archived files archived, expected $ARCHIVE_FILES"
        archive_s=$(q "SELECT round(extract(epoch FROM max(archived_at) - (SELECT max(finished_at) FROM runs))::numeric, 3) FROM files")
        sample archive first_run_s "$RUN_S"
        record archive "$archive_s" "$rename_s"
    done
}

bench_two() {
    sample two desc "$TWO_FILES x 2 KiB in 20 folders"
    start_fakes
    local rep one_s one_cpu two_s pair_cpu pair_rss
    for rep in $(seq 1 "$REPS"); do
        # Both cases start on a migrated database, as instances in
        # production do, and are timed the same way: wall time until every
        # process has exited (background pass included). Which goes first
        # alternates, so drift over a repetition favours neither.
        if ((rep % 2)); then
            two_single "$rep"
            two_pair "$rep"
        else
            two_pair "$rep"
            two_single "$rep"
        fi
        CPU_S=$pair_cpu RSS_KIB=$pair_rss WALL_S=$two_s
        log "two: 2 instances ${two_s}s (cpu ${CPU_S}s), 1 instance ${one_s}s (cpu ${one_cpu}s)"
        sample two one_instance_cpu_s "$one_cpu"
        record two "$two_s" "$one_s"
    done
}

two_fresh() { # TAG: a new migrated database and the scenario's files
    new_db
    fill_share "$TWO_FILES" 20 2048
    DATABASE_URL="$DB" "$COORD" migrate >"$LOGS/two-migrate-$1.log" 2>&1
}

two_single() { # REP; sets one_s and one_cpu
    local t p w u s m
    two_fresh "single-$1"
    # Started and awaited exactly as the pair's processes are.
    t=$(now)
    coord_run "two-single-$1" &
    p=$!
    wait "$p" || true
    one_s=$(since "$t")
    expect_status success "$TWO_FILES"
    read -r w u s m < <(tail -n1 "$LOGS/"*"-two-single-$1.time")
    one_cpu=$(calc "$u + $s")
}

two_pair() { # REP; sets two_s, pair_cpu (both processes) and pair_rss (the larger)
    local t a b
    two_fresh "pair-$1"
    t=$(now)
    coord_run "two-a-$1" &
    a=$!
    coord_run "two-b-$1" &
    b=$!
    wait "$a" || true
    wait "$b" || true
    two_s=$(since "$t")
    expect_status success "$TWO_FILES"
    # coord_run ran in subshells: read their numbers back from the logs.
    local cpu=0 rss=0 f w u s m
    for f in "$LOGS"/*-two-[ab]-"$1".time; do
        read -r w u s m < <(tail -n1 "$f")
        cpu=$(calc "$cpu + $u + $s")
        ((m > rss)) && rss=$m
    done
    pair_cpu=$cpu pair_rss=$rss
}

# One run of SHARED_FILES shared by N `serve` instances (CONTRACT §10): each
# its own INSTANCE_ID, port and SPOOL_DIR, 4 files at once; the run is
# posted to the first. Its time is its `runs` row, as for the other
# scenarios. Each file must be claimed once (one `processing` event) and
# reach `success`. Sets SHARED_S (and CPU_S, RSS_KIB of the instances).
shared_run() { # N TAG
    local n=$1 tag=$2 i port m pids=() urls=()
    new_db
    fill_share "$SHARED_FILES" 20 2048
    DATABASE_URL="$DB" "$COORD" migrate >"$LOGS/$tag-migrate.log" 2>&1
    for i in $(seq 1 "$n"); do
        port=$(free_port)
        mkdir -p "$WORK/spool-$i"
        # Not under /usr/bin/time: SIGTERM must reach the coordinator itself
        # (env execs it, so $! is its pid); CPU and RSS come from /proc.
        env DATABASE_URL="$DB" INSTANCE_ID="bench-$i" BIND_ADDR="127.0.0.1:$port" \
            SPOOL_DIR="$WORK/spool-$i" MAX_CONCURRENT_FILES=4 \
            "$COORD" serve >"$LOGS/$tag-$i.log" 2>&1 &
        pids+=($!)
        urls+=("http://127.0.0.1:$port")
    done
    for u in "${urls[@]}"; do
        for _ in $(seq 1 100); do curl -fs "$u/healthz" >/dev/null && break; sleep 0.1; done
    done
    curl -fs -X POST "${urls[0]}/api/v1/coordinator/runs" >"$LOGS/$tag.out" || log "WARNING: $tag: the run did not answer 200"
    SHARED_S=$(q "SELECT round(extract(epoch FROM finished_at - started_at)::numeric, 3) FROM runs WHERE NOT dry_run")
    local pid ticks=0 rss=0 hz
    hz=$(getconf CLK_TCK)
    for pid in "${pids[@]}"; do
        ticks=$((ticks + $(awk '{ print $14 + $15 }' "/proc/$pid/stat")))
        m=$(awk '/VmHWM/ { print $2 }' "/proc/$pid/status")
        ((m > rss)) && rss=$m
    done
    kill -TERM "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
    expect_status success "$SHARED_FILES"
    local claims by
    claims=$(q "SELECT count(*) FROM file_events WHERE status = 'processing'")
    [[ "$claims" == "$SHARED_FILES" ]] || log "WARNING: $tag: $claims claims for $SHARED_FILES files (a file sent twice?)"
    by=$(q "SELECT string_agg(instance || '=' || n, ' ' ORDER BY instance) FROM (SELECT f->>'instance' AS instance, count(*) AS n FROM runs, jsonb_array_elements(summary->'files') f WHERE NOT dry_run GROUP BY 1) x")
    CPU_S=$(calc "$ticks / $hz") RSS_KIB=$rss WALL_S=$SHARED_S
    log "$tag: $n instance(s), run ${SHARED_S}s, $claims claims, files by instance: $by"
}

bench_shared() {
    sample shared2 desc "$SHARED_FILES x 2 KiB in 20 folders, 2 instances"
    sample shared4 desc "$SHARED_FILES x 2 KiB in 20 folders, 4 instances"
    start_fakes FAKE_FOI_DELAY_MS=200 FAKE_ITM_DELAY_MS=10
    local rep one
    for rep in $(seq 1 "$REPS"); do
        shared_run 1 "shared1-$rep"
        one=$SHARED_S
        shared_run 2 "shared2-$rep"
        record shared2 "$SHARED_S" "$one"
        shared_run 4 "shared4-$rep"
        record shared4 "$SHARED_S" "$one"
    done
}

# `coordinator audit verify` over VERIFY_EVENTS sealed file_events (the
# fill and the sealing are not timed, only verify, as an auditor runs it).
bench_verify() {
    sample verify desc "$VERIFY_EVENTS file_events, sealed"
    local key="bench-audit-key-$RANDOM$RANDOM$RANDOM" filled rep out
    new_db
    DATABASE_URL="$DB" "$COORD" migrate >"$LOGS/verify-migrate.log" 2>&1
    filled=$(AUDIT_KEY="$key" "$AUDIT_FILL" "$DB" "$VERIFY_EVENTS")
    log "verify: filled $VERIFY_EVENTS events: $filled"
    sample verify fill "$filled"
    for rep in $(seq 1 "$REPS"); do
        RC=0
        env DATABASE_URL="$DB" AUDIT_KEY="$key" /usr/bin/time -f '%e %U %S %M' -o "$LOGS/verify-$rep.time" \
            "$COORD" audit verify >"$LOGS/verify-$rep.out" 2>&1 || RC=$?
        read -r WALL_S u s RSS_KIB < <(tail -n1 "$LOGS/verify-$rep.time")
        CPU_S=$(calc "$u + $s")
        out=$(head -n1 "$LOGS/verify-$rep.out")
        log "verify-$rep: exit $RC, ${WALL_S}s, cpu ${CPU_S}s, peak RSS $((RSS_KIB / 1024)) MiB: $out"
        ((RC == 0)) || log "WARNING: verify did not pass (see $LOGS/verify-$rep.out)"
        record verify "$WALL_S" 60
    done
}

# A scenario's databases are dropped when it ends, so the next one does not
# share the server with their autovacuum (the rescan and archive scenarios
# write tens of thousands of rows).
dropped=0
drop_dbs() {
    while ((dropped < db_n)); do
        dropped=$((dropped + 1))
        psql -q "$DATABASE_URL" -c "DROP DATABASE IF EXISTS bench_$dropped WITH (FORCE)" >/dev/null
    done
}

for s in $SCENARIOS; do
    declare -F "bench_$s" >/dev/null || die "unknown scenario '$s' (rescan small mib big delay archive two shared verify)"
    log "== $s"
    "bench_$s"
    drop_dbs
done

"$BENCH" report "$SAMPLES" "$OUT/bench.json"
