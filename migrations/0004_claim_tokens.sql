-- A claim carries a token: only the holder of the current claim may renew it
-- or write its outcome, so a process whose claim was taken over cannot
-- overwrite the outcome of the run that took it over (or an operator's verdict).
ALTER TABLE files ADD COLUMN claim_token uuid;

-- The backend holding a run's advisory lock: a run refused with 409 names the
-- run of that backend, and a claim checks that its run still holds the lock
-- (a Postgres restart drops it silently).
ALTER TABLE runs ADD COLUMN lock_pid integer;

-- The group of a version (remitter and base name, lower-cased by the
-- coordinator, `remitter/base_name`): a late-arriving older version is found
-- superseded by any claimed version of its group (CONTRACT §1.2). Rows from
-- before this migration get Postgres' lower(), the same for ASCII names.
ALTER TABLE files ADD COLUMN group_key text;
UPDATE files SET group_key = lower(remitter) || '/' || lower(base_name);
ALTER TABLE files ALTER COLUMN group_key SET NOT NULL;
CREATE INDEX files_by_group ON files (group_key);
