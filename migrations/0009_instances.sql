-- Instances (CONTRACT §10): one row per INSTANCE_ID, naming the process that
-- holds it now (`incarnation`, new at each start), with its heartbeat.
CREATE TABLE instances (
    instance_id          text PRIMARY KEY,
    incarnation          uuid NOT NULL UNIQUE,
    version              text NOT NULL,
    started_at           timestamptz NOT NULL DEFAULT now(),
    last_seen_at         timestamptz NOT NULL DEFAULT now(),
    heartbeat_secs       double precision NOT NULL CHECK (heartbeat_secs > 0),
    max_concurrent_files integer NOT NULL,
    files_in_flight      integer NOT NULL DEFAULT 0,
    draining             boolean NOT NULL DEFAULT false,
    stopped_at           timestamptz
);

-- Liveness is decided here, by the database's clock, so clocks of the hosts
-- never matter: alive = not stopped and heard from within three of its own
-- heartbeats. The database's own start counts as a heartbeat of everyone,
-- so a Postgres restart is not read as the death of every instance.
CREATE FUNCTION coordinator_alive(inc uuid) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (
        SELECT 1 FROM instances i
        WHERE i.incarnation = inc AND i.stopped_at IS NULL
          AND greatest(i.last_seen_at, pg_postmaster_start_time())
              > now() - make_interval(secs => 3 * i.heartbeat_secs))
$$;

-- Claims by liveness: a `processing` claim is taken over only once the
-- process holding it (`claimed_by`, an incarnation) is dead. Claims from
-- before this migration (NULL) keep the old rule: 15 minutes without an update.
ALTER TABLE files ADD COLUMN claimed_by uuid;

-- One run shared by every live instance. The run lock is a row now: at most
-- one real run `running`. Runs left `running` by processes of the old
-- version (advisory-lock holders, gone) are closed first; old processes
-- fail loudly on the dropped column rather than run beside new ones.
UPDATE runs SET status = 'abandoned', finished_at = now(),
    message = 'the process running it stopped before it finished'
    WHERE status = 'running' AND NOT dry_run;
ALTER TABLE runs DROP COLUMN lock_pid;
ALTER TABLE runs ADD COLUMN owner uuid;          -- the incarnation that finishes it; NULL: handed over
ALTER TABLE runs ADD COLUMN finished_by text;    -- INSTANCE_ID of the one that finished it
ALTER TABLE runs ADD COLUMN plan jsonb;          -- the scan's decisions (NULL until planned)
CREATE UNIQUE INDEX runs_one_running ON runs ((true)) WHERE status = 'running' AND NOT dry_run;

-- A run's candidates to process, one row per group, taken by any live
-- instance: by rank (its place among its remitter's groups, oldest first),
-- then remitter: round-robin across remitters.
CREATE TABLE run_work (
    run_id     uuid NOT NULL REFERENCES runs (id),
    seq        integer NOT NULL,
    remitter   text NOT NULL,
    rank       integer NOT NULL,
    item       jsonb NOT NULL,
    state      text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'taken', 'done')),
    taken_by   uuid,                 -- incarnation holding it
    taken_at   timestamptz,
    instance   text,                 -- INSTANCE_ID that reported it
    takeovers  integer NOT NULL DEFAULT 0,
    report     jsonb,
    PRIMARY KEY (run_id, seq)
);
CREATE INDEX run_work_open ON run_work (run_id, rank, remitter, seq) WHERE state <> 'done';
