-- A paired agent renews its session with device proofs; their timestamps must increase.
ALTER TABLE agents ADD COLUMN last_proof_ms INTEGER NOT NULL DEFAULT 0;
