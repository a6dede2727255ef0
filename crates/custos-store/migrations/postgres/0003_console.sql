-- The admin console: users, invitations, recovery codes, sessions and admin
-- API tokens. Times are integer milliseconds since the Unix epoch (UTC).
-- The SQLite migration of the same number must describe the same schema.
--
-- No column holds a password, a recovery code, a session ID or a token:
-- only their hashes (Argon2id for passwords, SHA-256 for the random,
-- high-entropy codes, IDs and tokens). The TOTP seed must be recoverable to
-- check codes, so it is stored sealed with a key derived from the pepper,
-- which lives outside the database.

CREATE TABLE console_users (
    id TEXT PRIMARY KEY,
    username TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL,
    state TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    totp_sealed TEXT,
    totp_pending_sealed TEXT,
    totp_enrolled_at BIGINT,
    totp_last_step BIGINT,
    failed_attempts BIGINT NOT NULL,
    locked_until BIGINT,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    password_changed_at BIGINT NOT NULL,
    last_login_at BIGINT
);

-- One-time links that let someone choose a password: invitations, the
-- first admin's setup link, and password resets of an existing user.
CREATE TABLE console_invites (
    id TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    username TEXT,
    role TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT
);

CREATE TABLE console_recovery_codes (
    user_id TEXT NOT NULL REFERENCES console_users (id),
    code_hash TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    used_at BIGINT,
    PRIMARY KEY (user_id, code_hash)
);

-- `stage` is `mfa` (password accepted, second factor pending), `enrol`
-- (password accepted, TOTP enrolment pending) or `full`.
CREATE TABLE console_sessions (
    id_hash TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES console_users (id),
    stage TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    last_seen_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    ip TEXT
);
CREATE INDEX console_sessions_user ON console_sessions (user_id);

CREATE TABLE console_tokens (
    id TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    user_id TEXT NOT NULL REFERENCES console_users (id),
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT,
    last_used_at BIGINT
);
