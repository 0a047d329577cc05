-- Older versions a run decided to archive without processing. Remembered so
-- that a failed or interrupted move is retried and the file is never mistaken
-- for a newest version by a later run.
CREATE TABLE superseded_files (
    id               bigserial PRIMARY KEY,
    remitter         text NOT NULL,
    file_name        text NOT NULL,
    size             bigint NOT NULL,
    mtime            timestamptz NOT NULL,
    newer_file_name  text NOT NULL,
    run_id           uuid REFERENCES runs (id),
    created_at       timestamptz NOT NULL DEFAULT now(),
    resolved_at      timestamptz,                -- moved, or no longer in the source
    archive_path     text,                       -- null when it was gone or replaced
    CONSTRAINT superseded_version_key UNIQUE (remitter, file_name, size, mtime)
);
CREATE INDEX superseded_pending ON superseded_files (id) WHERE resolved_at IS NULL;
