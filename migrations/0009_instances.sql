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
