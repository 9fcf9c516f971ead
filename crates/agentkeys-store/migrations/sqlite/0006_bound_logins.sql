-- Sign-ins bound to the client that started them. The requester sends the S256 hash of a
-- verifier only it holds; the user sees a one-time code (in the email, or through the
-- provider's redirect to the requester's loopback listener); collecting needs both. Wrong codes
-- are counted so a request dies after a few guesses.
ALTER TABLE login_requests ADD COLUMN client_challenge TEXT;
ALTER TABLE login_requests ADD COLUMN code_hash TEXT;
ALTER TABLE login_requests ADD COLUMN code_attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE login_requests ADD COLUMN redirect_uri TEXT;

-- The email or OIDC identity a session was obtained through: unlinking that identity revokes
-- the sessions it gave.
ALTER TABLE sessions ADD COLUMN via_type TEXT;
ALTER TABLE sessions ADD COLUMN via_value TEXT;
CREATE INDEX sessions_via ON sessions (via_type, via_value) WHERE via_type IS NOT NULL;
