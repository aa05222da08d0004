-- Verifications, one row per call attempt, and lockouts. Times are Unix milliseconds.
CREATE TABLE verifications (
    id            TEXT PRIMARY KEY,
    phone         TEXT NOT NULL,
    user_ref      TEXT NOT NULL,
    code_hash     TEXT NOT NULL,
    code_length   BIGINT NOT NULL,
    status        TEXT NOT NULL,
    attempts_used BIGINT NOT NULL DEFAULT 0,
    max_attempts  BIGINT NOT NULL,
    locale        TEXT NOT NULL,
    is_test       BIGINT NOT NULL DEFAULT 0,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL,
    verified_at   BIGINT
);

CREATE TABLE call_attempts (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    verification_id TEXT NOT NULL REFERENCES verifications (id),
    channel         TEXT NOT NULL,
    uniqueid        TEXT NOT NULL,
    daemon          TEXT NOT NULL,
    started_at      BIGINT NOT NULL,
    ended_at        BIGINT,
    outcome         TEXT
);
CREATE INDEX call_attempts_verification ON call_attempts (verification_id);
CREATE INDEX call_attempts_open ON call_attempts (id) WHERE ended_at IS NULL;

CREATE TABLE lockouts (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind            TEXT NOT NULL CHECK (kind IN ('phone', 'user')),
    subject         TEXT NOT NULL,
    locked_until    BIGINT NOT NULL,
    verification_id TEXT NOT NULL REFERENCES verifications (id),
    created_at      BIGINT NOT NULL
);
CREATE INDEX lockouts_subject ON lockouts (kind, subject, locked_until);
