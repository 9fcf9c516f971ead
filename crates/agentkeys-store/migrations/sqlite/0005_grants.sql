-- A master's grant of a slice of its own prefix to one of its agents.
CREATE TABLE grants (
    id          TEXT PRIMARY KEY,
    master      TEXT NOT NULL,
    agent       TEXT NOT NULL REFERENCES agents (omni),
    scope       TEXT NOT NULL,      -- relative to the master's prefix, e.g. 'inbox'
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    max_uses    INTEGER,            -- NULL: unlimited
    uses        INTEGER NOT NULL DEFAULT 0,
    revoked_at  INTEGER
);
CREATE INDEX grants_master ON grants (master);
CREATE INDEX grants_agent ON grants (agent);
