-- Signing keys' private halves, sealed under the key-encryption key, when keys live in the store
-- (several broker replicas share them). NULL: the private key lives in a 0600 file.
ALTER TABLE signing_keys ADD COLUMN sealed_private_key BLOB;
