-- Email and OIDC identities linked to wallet masters, and the sign-in requests that prove them.

CREATE TABLE identities (
    identity_type   TEXT NOT NULL,   -- 'email' or 'oauth2_<provider>'
    identity_value  TEXT NOT NULL,   -- canonical: email lowercased and trimmed; OIDC sub verbatim
    master          TEXT NOT NULL,   -- the wallet master's omni
    master_wallet   TEXT NOT NULL,
    linked_at       INTEGER NOT NULL,
    PRIMARY KEY (identity_type, identity_value)
);
CREATE INDEX identities_master ON identities (master);

-- A sign-in (or link) in progress. The requester collects the result with its request id,
-- stored only as a hash; the emailed link token is stored only as a hash too. The session
-- itself is created when it is collected, so no session token is ever stored.
CREATE TABLE login_requests (
    id_hash          TEXT PRIMARY KEY,
    method           TEXT NOT NULL,          -- 'email' or 'oidc'
    subject          TEXT NOT NULL,          -- the email address, or the OIDC provider name
    link_token_hash  TEXT UNIQUE,            -- email: the magic link's token
    state            TEXT UNIQUE,            -- oidc: the state parameter
    oidc_nonce       TEXT,
    oidc_verifier    TEXT,
    link_to          TEXT,                   -- a wallet master linking this identity, if any
    link_to_wallet   TEXT,
    created_at       INTEGER NOT NULL,
    expires_at       INTEGER NOT NULL,
    verified_type    TEXT,
    verified_value   TEXT,
    verified_at      INTEGER,
    claimed_at       INTEGER
);
CREATE INDEX login_requests_expiry ON login_requests (expires_at);
