-- Agents' requests for a grant, until their master approves or denies them (or they expire).
-- Decided requests stay: they are the history the console and `requests list --all` show.
CREATE TABLE access_requests (
    id          TEXT PRIMARY KEY,
    agent       TEXT NOT NULL REFERENCES agents (omni),
    master      TEXT NOT NULL,
    scope       TEXT NOT NULL,      -- relative to the master's prefix, e.g. 'inbox'
    max_uses    BIGINT,            -- NULL: unlimited
    ttl_seconds BIGINT NOT NULL,   -- the grant's lifetime once approved
    reason      TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,   -- undecided after this, the request is expired
    decision    TEXT CHECK (decision IN ('approved', 'denied')),
    decided_at  BIGINT,
    grant_id    TEXT REFERENCES grants (id)
);
CREATE INDEX access_requests_master ON access_requests (master, created_at);
CREATE INDEX access_requests_agent ON access_requests (agent, created_at);
