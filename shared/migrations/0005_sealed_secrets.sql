-- Secrets at rest are sealed (envelope encryption under ANIKA_SECRET_KEYS, see
-- shared/src/secrets.rs). Webhook secrets keep their text columns and hold the
-- sealed text form (`anika-sealed:v1:<main key id>:…`); signing private keys
-- move to a text column of their own, since the plain DER was bytea.
--
-- Rows written before this version are sealed by the start-up step in Rust
-- (shared/src/secret_rows.rs), which clears `private_key` as it fills
-- `private_key_sealed`; `private_key` stays only for that step.
ALTER TABLE signing_keys ALTER COLUMN private_key DROP NOT NULL;
ALTER TABLE signing_keys ADD COLUMN private_key_sealed text;
ALTER TABLE signing_keys ADD CONSTRAINT signing_keys_one_private_key
    CHECK (private_key IS NOT NULL OR private_key_sealed IS NOT NULL);
