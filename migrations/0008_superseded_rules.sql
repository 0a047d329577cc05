-- Superseded versions (issue 12).
--
-- Only a version still waiting for its move is unique: an old version that
-- was archived once and is copied back into the source (same name, size and
-- time) is a new superseded row and is archived again, under a suffixed name.
ALTER TABLE superseded_files DROP CONSTRAINT superseded_version_key;
CREATE UNIQUE INDEX superseded_pending_version
    ON superseded_files (remitter, file_name, size, mtime) WHERE resolved_at IS NULL;

-- The `files` row of a superseded version that was claimed before (an
-- operator's retry of an older version, say): its move records the row's
-- `archived_at` and its `archive_succeeded` event.
ALTER TABLE superseded_files ADD COLUMN file_id bigint REFERENCES files (id);

-- The change time seen with the size and last-write time, so a file whose
-- change time moved (same size and last-write time, new content) is not
-- taken for the version that was processed or found superseded. Null for
-- rows from before this migration: then only size and last-write time count.
ALTER TABLE superseded_files ADD COLUMN ctime timestamptz;
ALTER TABLE files ADD COLUMN ctime timestamptz;
