-- Scoped API keys, their secrets, usage counters and the audit outbox.
-- Times are integer milliseconds since the Unix epoch (UTC). The PostgreSQL
-- migration of the same number must describe the same schema.

-- One row. `keys_generation` is bumped by every transaction that changes
-- what authentication sees; it also serialises those transactions.
CREATE TABLE store_meta (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    keys_generation BIGINT NOT NULL
);
INSERT INTO store_meta (id, keys_generation) VALUES (1, 0);

CREATE TABLE keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    owner TEXT NOT NULL,
    team TEXT,
    description TEXT NOT NULL,
    labels_json TEXT NOT NULL,
    scope_json TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    created_by_json TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    expires_at BIGINT,
    revoked_at BIGINT,
    revoked_by_json TEXT,
    revoke_reason TEXT,
    last_used_at BIGINT,
    version BIGINT NOT NULL
);
CREATE INDEX keys_owner ON keys (owner);
CREATE INDEX keys_team ON keys (team);

-- Only HMAC-SHA-256(pepper, secret) is stored, never the secret. A NULL
-- `not_after` marks the key's current secret; a rotated-out secret keeps its
-- row so that it authenticates as "rotated out" rather than "unknown".
CREATE TABLE key_secrets (
    hash TEXT PRIMARY KEY,
    key_id TEXT NOT NULL REFERENCES keys (id),
    masked TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    not_after BIGINT,
    rotation_ref TEXT,
    UNIQUE (key_id, rotation_ref)
);
CREATE INDEX key_secrets_key ON key_secrets (key_id);
CREATE UNIQUE INDEX key_secrets_one_current ON key_secrets (key_id) WHERE not_after IS NULL;

-- Tokens used per key per UTC day; `period_start` is the day's first millisecond.
CREATE TABLE usage_counters (
    key_id TEXT NOT NULL REFERENCES keys (id),
    period_start BIGINT NOT NULL,
    tokens BIGINT NOT NULL,
    PRIMARY KEY (key_id, period_start)
);

-- Lifecycle events, written in the same transaction as the change they
-- describe and drained into the audit ledger by its single writer.
CREATE TABLE outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at BIGINT NOT NULL,
    kind TEXT NOT NULL,
    payload_json TEXT NOT NULL,
    drained_at BIGINT
);
CREATE INDEX outbox_pending ON outbox (id) WHERE drained_at IS NULL;
