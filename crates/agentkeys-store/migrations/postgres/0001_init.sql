-- The whole schema of SQLite migrations 0001-0007 in one step (PostgreSQL starts here).
-- Times are unix seconds (UTC), BIGINT. Secrets are never stored: sessions by SHA-256 of the
-- token. Table names are unqualified: the schema is whatever search_path names.

CREATE TABLE wallet_challenges (
    id          TEXT PRIMARY KEY,
    address     TEXT NOT NULL,
    message     TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL
);
CREATE INDEX wallet_challenges_expiry ON wallet_challenges (expires_at);

-- `master`: the master this session acts for (itself for a master, the owner for an agent).
-- via_type/via_value: the email or OIDC identity the session was obtained through; unlinking
-- that identity revokes the sessions it gave.
CREATE TABLE sessions (
    token_hash  TEXT PRIMARY KEY,
    kind        TEXT NOT NULL CHECK (kind IN ('master', 'agent')),
    omni        TEXT NOT NULL,
    wallet      TEXT,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    revoked_at  BIGINT,
    master      TEXT NOT NULL,
    via_type    TEXT,
    via_value   TEXT
);
CREATE INDEX sessions_omni ON sessions (omni);
CREATE INDEX sessions_expiry ON sessions (expires_at);
CREATE INDEX sessions_via ON sessions (via_type, via_value) WHERE via_type IS NOT NULL;

-- Fixed-window counters, one row per (actor, window length).
CREATE TABLE rate_limits (
    actor         TEXT NOT NULL,
    window_secs   BIGINT NOT NULL,
    window_start  BIGINT NOT NULL,
    count         BIGINT NOT NULL,
    PRIMARY KEY (actor, window_secs)
);

-- Public halves and lifecycle of the signing keys, and the private key sealed under the
-- key-encryption key when keys live in the store (the store never opens it).
CREATE TABLE signing_keys (
    kid                 TEXT PRIMARY KEY,
    public_jwk          TEXT NOT NULL,
    certificate         TEXT NOT NULL,
    created_at          BIGINT NOT NULL,
    activates_at        BIGINT NOT NULL,
    retired_at          BIGINT,
    withdrawn_at        BIGINT,
    sealed_private_key  BYTEA
);

-- Append-only, hash-chained: hash = SHA-256(prev_hash ‖ canonical(event)). `details` is the
-- JSON text exactly as written (not jsonb, which would reorder and reformat it).
CREATE TABLE audit_events (
    seq        BIGINT PRIMARY KEY,
    time       BIGINT NOT NULL,
    kind       TEXT NOT NULL,
    actor      TEXT,
    master     TEXT,
    outcome    TEXT NOT NULL,
    details    TEXT NOT NULL,
    prev_hash  TEXT NOT NULL,
    hash       TEXT NOT NULL
);
CREATE INDEX audit_events_master ON audit_events (master, seq);

CREATE TABLE agents (
    omni            TEXT PRIMARY KEY,
    master          TEXT NOT NULL,
    label           TEXT NOT NULL,
    device_address  TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('active', 'suspended', 'removed')),
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    -- A paired agent renews its session with device proofs; their timestamps must increase.
    last_proof_ms   BIGINT NOT NULL DEFAULT 0,
    -- A label names the agent's identity (and so its S3 prefix): never reused, even after removal.
    UNIQUE (master, label)
);

CREATE TABLE pairing_requests (
    id              TEXT PRIMARY KEY,
    code            TEXT NOT NULL UNIQUE,
    device_address  TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    expires_at      BIGINT NOT NULL,
    -- Device proofs must carry strictly increasing timestamps: a replayed proof is refused.
    last_proof_ms   BIGINT NOT NULL,
    agent           TEXT REFERENCES agents (omni),
    claimed_at      BIGINT
);
CREATE INDEX pairing_requests_expiry ON pairing_requests (expires_at);

-- Email and OIDC identities linked to wallet masters.
CREATE TABLE identities (
    identity_type   TEXT NOT NULL,   -- 'email' or 'oauth2_<provider>'
    identity_value  TEXT NOT NULL,   -- canonical: email lowercased and trimmed; OIDC sub verbatim
    master          TEXT NOT NULL,   -- the wallet master's omni
    master_wallet   TEXT NOT NULL,
    linked_at       BIGINT NOT NULL,
    PRIMARY KEY (identity_type, identity_value)
);
CREATE INDEX identities_master ON identities (master);

-- A sign-in (or link) in progress, bound to the client that started it: the requester sends
-- the S256 hash of a verifier only it holds, the user sees a one-time code; collecting needs
-- both. Wrong codes are counted so a request dies after a few guesses.
CREATE TABLE login_requests (
    id_hash           TEXT PRIMARY KEY,
    method            TEXT NOT NULL,          -- 'email' or 'oidc'
    subject           TEXT NOT NULL,          -- the email address, or the OIDC provider name
    link_token_hash   TEXT UNIQUE,            -- email: the magic link's token
    state             TEXT UNIQUE,            -- oidc: the state parameter
    oidc_nonce        TEXT,
    oidc_verifier     TEXT,
    link_to           TEXT,                   -- a wallet master linking this identity, if any
    link_to_wallet    TEXT,
    created_at        BIGINT NOT NULL,
    expires_at        BIGINT NOT NULL,
    verified_type     TEXT,
    verified_value    TEXT,
    verified_at       BIGINT,
    claimed_at        BIGINT,
    client_challenge  TEXT,
    code_hash         TEXT,
    code_attempts     BIGINT NOT NULL DEFAULT 0,
    redirect_uri      TEXT
);
CREATE INDEX login_requests_expiry ON login_requests (expires_at);

-- A master's grant of a slice of its own prefix to one of its agents.
CREATE TABLE grants (
    id          TEXT PRIMARY KEY,
    master      TEXT NOT NULL,
    agent       TEXT NOT NULL REFERENCES agents (omni),
    scope       TEXT NOT NULL,      -- relative to the master's prefix, e.g. 'inbox'
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    max_uses    BIGINT,             -- NULL: unlimited
    uses        BIGINT NOT NULL DEFAULT 0,
    revoked_at  BIGINT
);
CREATE INDEX grants_master ON grants (master);
CREATE INDEX grants_agent ON grants (agent);
