-- Passwords of pool databases are stored sealed (ChaCha20-Poly1305 under a key kept
-- outside the database, --secrets-key-file): database_url keeps every other option
-- and no password; database_password holds version, key id, nonce and ciphertext.
-- Rows written before this migration are sealed by the server's first start after it.
ALTER TABLE pool_definitions ADD COLUMN database_password bytea;
COMMENT ON COLUMN pool_definitions.database_password IS
    'the sealed password of database_url (NULL: none, or a row not sealed yet)';
