-- Backoff per notification: a row is attempted again only once it is due, so
-- rows IQube keeps rejecting wait (5 s doubling up to an hour) and never hold
-- back newer ones. Existing undelivered rows are due at once.
ALTER TABLE notifications ADD COLUMN next_attempt_at timestamptz NOT NULL DEFAULT now();
CREATE INDEX notifications_due ON notifications (next_attempt_at, id) WHERE delivered_at IS NULL;
