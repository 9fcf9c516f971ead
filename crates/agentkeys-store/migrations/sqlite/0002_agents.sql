-- Agents paired to masters, the pairing requests that create them, and the master of each
-- session (an agent session's master is the agent's master; a master's is itself).

ALTER TABLE sessions ADD COLUMN master TEXT;
UPDATE sessions SET master = omni WHERE master IS NULL;

CREATE TABLE agents (
    omni            TEXT PRIMARY KEY,
    master          TEXT NOT NULL,
    label           TEXT NOT NULL,
    device_address  TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('active', 'suspended', 'removed')),
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    -- A label names the agent's identity (and so its S3 prefix): never reused, even after removal.
    UNIQUE (master, label)
);

CREATE TABLE pairing_requests (
    id              TEXT PRIMARY KEY,
    code            TEXT NOT NULL UNIQUE,
    device_address  TEXT NOT NULL,
    created_at      INTEGER NOT NULL,
    expires_at      INTEGER NOT NULL,
    -- Device proofs must carry strictly increasing timestamps: a replayed proof is refused.
    last_proof_ms   INTEGER NOT NULL,
    agent           TEXT REFERENCES agents (omni),
    claimed_at      INTEGER
);
CREATE INDEX pairing_requests_expiry ON pairing_requests (expires_at);
