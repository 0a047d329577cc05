-- The order of copies within one run (CONTRACT §12, DUPLICATE_CONTENT=hold):
-- candidates of one remitter with one size may be copies of each other;
-- the plan numbers them in copy order, and a member is claimed only once
-- the earlier ones in flight on other instances are done. NULL for every
-- other candidate (and with DUPLICATE_CONTENT=process).
ALTER TABLE run_work ADD COLUMN copy_class text, ADD COLUMN copy_pos integer;
CREATE INDEX run_work_copies_open ON run_work (run_id, copy_class, copy_pos)
    WHERE copy_class IS NOT NULL AND state <> 'done';
