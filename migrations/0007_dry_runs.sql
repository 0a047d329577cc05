-- Dry runs (CONTRACT §9) record their own row and nothing else. The column
-- may already exist (the operator routes' migration adds the same one), so
-- this one only adds it where it is missing.
ALTER TABLE runs ADD COLUMN IF NOT EXISTS dry_run boolean NOT NULL DEFAULT false;
