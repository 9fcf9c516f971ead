-- Times are unix seconds (UTC). Secrets are never stored: sessions by SHA-256 of the token.

CREATE TABLE wallet_challenges (
    id          TEXT PRIMARY KEY,
    address     TEXT NOT NULL,
    message     TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL
);
CREATE INDEX wallet_challenges_expiry ON wallet_challenges (expires_at);

CREATE TABLE sessions (
    token_hash  TEXT PRIMARY KEY,
    kind        TEXT NOT NULL CHECK (kind IN ('master', 'agent')),
    omni        TEXT NOT NULL,
    wallet      TEXT,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);
CREATE INDEX sessions_omni ON sessions (omni);
CREATE INDEX sessions_expiry ON sessions (expires_at);

-- Fixed-window counters, one row per (actor, window length).
CREATE TABLE rate_limits (
    actor         TEXT NOT NULL,
    window_secs   INTEGER NOT NULL,
    window_start  INTEGER NOT NULL,
    count         INTEGER NOT NULL,
    PRIMARY KEY (actor, window_secs)
) WITHOUT ROWID;

-- Public halves and lifecycle of the signing keys; private keys live in 0600 files.
CREATE TABLE signing_keys (
    kid           TEXT PRIMARY KEY,
    public_jwk    TEXT NOT NULL,
    certificate   TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    activates_at  INTEGER NOT NULL,
    retired_at    INTEGER,
    withdrawn_at  INTEGER
);

-- Append-only, hash-chained: hash = SHA-256(prev_hash ‖ canonical(event)).
CREATE TABLE audit_events (
    seq        INTEGER PRIMARY KEY,
    time       INTEGER NOT NULL,
    kind       TEXT NOT NULL,
    actor      TEXT,
    master     TEXT,
    outcome    TEXT NOT NULL,
    details    TEXT NOT NULL,
    prev_hash  TEXT NOT NULL,
    hash       TEXT NOT NULL
);
CREATE INDEX audit_events_master ON audit_events (master, seq);
