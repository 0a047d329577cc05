-- Named tokens (CONTRACT §11): only the SHA-256 of each secret is stored
-- (a 32-byte random secret needs no slow hash). A revoked token keeps its
-- row, so the audit trail's actor names stay explained; its name is not
-- reused.
CREATE TABLE tokens (
    name          text PRIMARY KEY,
    role          text NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    secret_sha256 bytea NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    created_by    text NOT NULL,
    expires_at    timestamptz,
    last_used_at  timestamptz,
    revoked_at    timestamptz,
    revoked_by    text
);

-- Every operator action, and every one refused to a known actor (CONTRACT §11).
CREATE TABLE audit_events (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    actor       text NOT NULL,
    role        text,
    action      text NOT NULL,
    target      text,
    outcome     text NOT NULL CHECK (outcome IN ('ok', 'refused', 'failed')),
    reason      text,
    remote_addr text,
    request_id  text
);
CREATE INDEX audit_events_by_actor ON audit_events (actor, id);
CREATE INDEX audit_events_by_target ON audit_events (target, id);
CREATE INDEX audit_events_by_at ON audit_events (at);
