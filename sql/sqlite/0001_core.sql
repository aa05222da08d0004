-- Verifications, one row per call attempt, and lockouts. Times are Unix milliseconds.
CREATE TABLE verifications (
    id            TEXT PRIMARY KEY,
    phone         TEXT NOT NULL,
    user_ref      TEXT NOT NULL,
    code_hash     TEXT NOT NULL,
    code_length   INTEGER NOT NULL,
    status        TEXT NOT NULL,
    attempts_used INTEGER NOT NULL DEFAULT 0,
    max_attempts  INTEGER NOT NULL,
    locale        TEXT NOT NULL,
    is_test       INTEGER NOT NULL DEFAULT 0,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL,
    verified_at   INTEGER
);

CREATE TABLE call_attempts (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    verification_id TEXT NOT NULL REFERENCES verifications (id),
    channel         TEXT NOT NULL,
    uniqueid        TEXT NOT NULL,
    daemon          TEXT NOT NULL,
    started_at      INTEGER NOT NULL,
    ended_at        INTEGER,
    outcome         TEXT
);
CREATE INDEX call_attempts_verification ON call_attempts (verification_id);
CREATE INDEX call_attempts_open ON call_attempts (id) WHERE ended_at IS NULL;

CREATE TABLE lockouts (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    kind            TEXT NOT NULL CHECK (kind IN ('phone', 'user')),
    subject         TEXT NOT NULL,
    locked_until    INTEGER NOT NULL,
    verification_id TEXT NOT NULL REFERENCES verifications (id),
    created_at      INTEGER NOT NULL
);
CREATE INDEX lockouts_subject ON lockouts (kind, subject, locked_until);
