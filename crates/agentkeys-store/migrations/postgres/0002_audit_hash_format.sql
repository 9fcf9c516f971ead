-- How each event's canonical form was made (agentkeys_store::audit::HashFormat): 1 for the
-- events written before RFC 8785 was adopted, 2 (JCS) for every event written since.
ALTER TABLE audit_events ADD COLUMN hash_format SMALLINT NOT NULL DEFAULT 1;
