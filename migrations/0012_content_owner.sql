-- The same content under another name (CONTRACT §12): one owner per
-- (remitter, md5), the file whose claim first brought that content within
-- DUPLICATE_WINDOW_DAYS. A claim inserts its content here in the same
-- statement; a second claim of the same content (another name) waits on the
-- primary key for the first one's commit and finds it taken, so two copies
-- claimed at once on two instances are told apart without a lock. Kept in
-- both modes, so switching to `hold` knows the history.
CREATE TABLE content_owner (
    remitter   text NOT NULL,
    md5        text NOT NULL,
    file_id    bigint NOT NULL REFERENCES files (id),
    claimed_at timestamptz NOT NULL,
    PRIMARY KEY (remitter, md5)
);

-- Existing history: the latest claim of each content owns it.
INSERT INTO content_owner (remitter, md5, file_id, claimed_at)
SELECT DISTINCT ON (remitter, md5) remitter, md5, id, claimed_at
FROM files ORDER BY remitter, md5, claimed_at DESC, id DESC;

-- `duplicate_content` is a failure status: the `status=failed` indexes
-- name every failure status, as the query spells them.
DROP INDEX files_failed;
DROP INDEX files_failed_by_remitter;
CREATE INDEX files_failed ON files (id)
    WHERE status IN ('extraction_file_password_failed', 'extraction_file_failed',
                     'extraction_service_failed', 'itm_failed', 'duplicate_content');
CREATE INDEX files_failed_by_remitter ON files (remitter, id)
    WHERE status IN ('extraction_file_password_failed', 'extraction_file_failed',
                     'extraction_service_failed', 'itm_failed', 'duplicate_content');
