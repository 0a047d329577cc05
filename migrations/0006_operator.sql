-- Operating the coordinator (CONTRACT §9): dry runs are marked, and the
-- history lists page newest first by keyset, so every list page is an index
-- range scan however many rows there are (measured with 1,000,000 files:
-- examples/history_bench.rs, figures in the README).
ALTER TABLE runs ADD COLUMN dry_run boolean NOT NULL DEFAULT false;

-- Runs, newest first, ties broken by id (the `before` cursor is a run id).
CREATE INDEX runs_by_start_id ON runs (started_at DESC, id DESC);
DROP INDEX IF EXISTS runs_started_at;

-- Files, newest first (the primary key), by remitter, by status, and every
-- failure (the `status=failed` filter, spelled exactly as the query spells it).
CREATE INDEX files_by_remitter_id ON files (remitter, id);
CREATE INDEX files_by_status_id ON files (status, id);
CREATE INDEX files_failed ON files (id)
    WHERE status IN ('extraction_file_password_failed', 'extraction_file_failed',
                     'extraction_service_failed', 'itm_failed');
-- Both filters at once: a remitter's files of one status, or its failures.
CREATE INDEX files_by_remitter_status_id ON files (remitter, status, id);
CREATE INDEX files_failed_by_remitter ON files (remitter, id)
    WHERE status IN ('extraction_file_password_failed', 'extraction_file_failed',
                     'extraction_service_failed', 'itm_failed');

-- `q` (a substring of the file name, any case): trigrams, so a rare name is
-- found without reading every row. pg_trgm ships with Postgres (contrib) and
-- is a trusted extension: the database owner may create it.
CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE INDEX files_name_trgm ON files USING gin (file_name gin_trgm_ops);

-- A file's notifications, for its detail page.
CREATE INDEX notifications_by_file ON notifications (file_id) WHERE file_id IS NOT NULL;
