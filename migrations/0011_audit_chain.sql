-- Tamper evidence (CONTRACT §11, docs/design-audit.md §4).
--
-- Every row of file_events and audit_events carries `mac`: a random nonce
-- and an HMAC-SHA256, keyed by AUDIT_KEY, over what its writer knew (the
-- coordinator computes it; the key never reaches the database). `xid` is
-- the writing transaction: a sealer seals, in order, the rows of
-- transactions that have all finished into `audit_seals`, a chain of HMAC
-- links whose newest link is published outside the database.
--
-- pg_current_xact_id() is STABLE, so the new column is a "fast default":
-- the rows already there all get this migration's transaction id (no
-- rewrite), and a NULL mac. The first seal of each table, flagged `legacy`,
-- covers exactly them (up to the xid recorded in audit_chain_origin).

ALTER TABLE file_events ADD COLUMN xid xid8 NOT NULL DEFAULT pg_current_xact_id();
ALTER TABLE file_events ADD COLUMN mac bytea;
CREATE INDEX file_events_by_xid ON file_events (xid);

ALTER TABLE audit_events ADD COLUMN xid xid8 NOT NULL DEFAULT pg_current_xact_id();
ALTER TABLE audit_events ADD COLUMN mac bytea;
CREATE INDEX audit_events_by_xid ON audit_events (xid);

-- The transaction of this migration: rows up to it are the legacy rows.
CREATE TABLE audit_chain_origin (
    xid  xid8 NOT NULL DEFAULT pg_current_xact_id(),
    at   timestamptz NOT NULL DEFAULT now()
);
INSERT INTO audit_chain_origin DEFAULT VALUES;

-- One seal: the rows of `table_name` written by the transactions
-- xid_from <= xid < xid_to (all finished when it was written), in id order,
-- as `digests` = (id: 8 bytes big-endian, digest: first 8 bytes of the
-- SHA-256 of the whole row) per row. link = HMAC(AUDIT_KEY, prev_link ||
-- everything above); prev_link is the previous seal's link (32 zero bytes
-- for the first), unique so that two sealers can never fork the chain.
CREATE TABLE audit_seals (
    id          bigserial PRIMARY KEY,
    sealed_at   timestamptz NOT NULL DEFAULT now(),
    table_name  text NOT NULL CHECK (table_name IN ('file_events', 'audit_events')),
    legacy      boolean NOT NULL,
    xid_from    bigint NOT NULL,
    xid_to      bigint NOT NULL CHECK (xid_to >= xid_from),
    first_id    bigint,
    last_id     bigint,
    row_count   bigint NOT NULL,
    digests     bytea NOT NULL,
    prev_link   bytea NOT NULL UNIQUE,
    link        bytea NOT NULL
);
CREATE INDEX audit_seals_by_table ON audit_seals (table_name, id);

-- Append-only: the history and its seals refuse UPDATE, DELETE and TRUNCATE
-- (a superuser can drop the triggers; `coordinator audit verify` then finds
-- what was changed).
CREATE FUNCTION coordinator_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % refused (CONTRACT §11)', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER file_events_append_only BEFORE UPDATE OR DELETE ON file_events
    FOR EACH ROW EXECUTE FUNCTION coordinator_append_only();
CREATE TRIGGER file_events_no_truncate BEFORE TRUNCATE ON file_events
    FOR EACH STATEMENT EXECUTE FUNCTION coordinator_append_only();
CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION coordinator_append_only();
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION coordinator_append_only();
CREATE TRIGGER audit_seals_append_only BEFORE UPDATE OR DELETE ON audit_seals
    FOR EACH ROW EXECUTE FUNCTION coordinator_append_only();
CREATE TRIGGER audit_seals_no_truncate BEFORE TRUNCATE ON audit_seals
    FOR EACH STATEMENT EXECUTE FUNCTION coordinator_append_only();
CREATE TRIGGER audit_chain_origin_append_only BEFORE UPDATE OR DELETE ON audit_chain_origin
    FOR EACH ROW EXECUTE FUNCTION coordinator_append_only();
CREATE TRIGGER audit_chain_origin_no_truncate BEFORE TRUNCATE ON audit_chain_origin
    FOR EACH STATEMENT EXECUTE FUNCTION coordinator_append_only();
