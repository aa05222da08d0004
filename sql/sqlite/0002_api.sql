-- The web app's API: keys (stored hashed), idempotent creation, rate-limit lookups.
CREATE TABLE api_keys (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    key_hash   TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);

CREATE TABLE idempotency_keys (
    api_key_id      TEXT NOT NULL REFERENCES api_keys (id),
    idem_key        TEXT NOT NULL,
    request_hash    TEXT NOT NULL,
    verification_id TEXT NOT NULL REFERENCES verifications (id),
    created_at      INTEGER NOT NULL,
    PRIMARY KEY (api_key_id, idem_key)
);

ALTER TABLE verifications ADD COLUMN api_key_id TEXT;
ALTER TABLE verifications ADD COLUMN callback_url TEXT;
CREATE INDEX verifications_phone_created ON verifications (phone, created_at);
CREATE INDEX verifications_user_created ON verifications (user_ref, created_at);
CREATE INDEX verifications_key_created ON verifications (api_key_id, created_at);
