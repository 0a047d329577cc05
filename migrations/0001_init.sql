-- Runs: one row per run, with its outcome and counts.
CREATE TABLE runs (
    id            uuid PRIMARY KEY,
    status        text NOT NULL,              -- running | completed | failed | abandoned
    trigger       text NOT NULL,              -- api | cli
    instance      text NOT NULL,
    started_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz,
    summary       jsonb,
    error         text,
    message       text
);
CREATE INDEX runs_started_at ON runs (started_at DESC);

-- Files: one row per claimed file version. The unique key is the idempotency guard.
CREATE TABLE files (
    id            bigserial PRIMARY KEY,
    remitter      text NOT NULL,
    file_name     text NOT NULL,
    base_name     text NOT NULL,
    md5           text NOT NULL,
    size          bigint NOT NULL,
    mtime         timestamptz NOT NULL,       -- last-write time on the share when last seen
    status        text NOT NULL,
    run_id        uuid REFERENCES runs (id),
    claimed_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    archived_at   timestamptz,
    archive_path  text,
    CONSTRAINT files_version_key UNIQUE (remitter, file_name, md5)
);
CREATE INDEX files_by_name ON files (remitter, file_name);
CREATE INDEX files_to_archive ON files (id)
    WHERE archived_at IS NULL AND (status = 'success' OR status LIKE 'ops\_%');

-- File events: append-only history of every status a file passes through.
CREATE TABLE file_events (
    id            bigserial PRIMARY KEY,
    file_id       bigint NOT NULL REFERENCES files (id),
    status        text NOT NULL,
    detail        jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX file_events_by_file ON file_events (file_id, id);

-- Notification outbox: every IQube notification is written here in the same
-- transaction as the status it reports, then delivered; undelivered ones are
-- retried by later passes. dedupe_key makes a second notification impossible.
CREATE TABLE notifications (
    id            bigserial PRIMARY KEY,
    dedupe_key    text NOT NULL UNIQUE,
    file_id       bigint REFERENCES files (id),
    run_id        uuid,
    payload       jsonb NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    attempts      integer NOT NULL DEFAULT 0,
    last_error    text,
    delivered_at  timestamptz
);
CREATE INDEX notifications_pending ON notifications (id) WHERE delivered_at IS NULL;
