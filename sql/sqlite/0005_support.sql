-- The support line: messages left for manual verification, the staff who work them,
-- their console sessions, and an audit trail of every staff and API action.
CREATE TABLE manual_requests (
    id              TEXT PRIMARY KEY,
    created_at      INTEGER NOT NULL,
    -- E.164 as the API normalises it; NULL when withheld or not a usable number.
    caller          TEXT,
    caller_match    TEXT NOT NULL CHECK (caller_match IN ('matched', 'unmatched', 'withheld')),
    verification_id TEXT REFERENCES verifications (id),
    status          TEXT NOT NULL CHECK (status IN ('open', 'approved', 'rejected')),
    -- How the message ended: key (#), silence, cap (length limit), hangup.
    ended_by        TEXT NOT NULL,
    duration_ms     INTEGER NOT NULL,
    recording       BLOB,
    transcript      TEXT,
    language        TEXT NOT NULL,
    decided_at      INTEGER,
    decided_by      TEXT,
    reason          TEXT,
    -- Recording and transcript deleted after the retention period.
    purged_at       INTEGER
);
CREATE INDEX manual_requests_status_created ON manual_requests (status, created_at);
CREATE INDEX manual_requests_purge ON manual_requests (created_at) WHERE purged_at IS NULL;

CREATE TABLE staff (
    id            TEXT PRIMARY KEY,
    username      TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    disabled_at   INTEGER
);

CREATE TABLE staff_sessions (
    token_hash TEXT PRIMARY KEY,
    staff_id   TEXT NOT NULL REFERENCES staff (id),
    csrf_token TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);

CREATE TABLE audit_log (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    at      INTEGER NOT NULL,
    actor   TEXT NOT NULL,
    action  TEXT NOT NULL,
    subject TEXT NOT NULL,
    detail  TEXT NOT NULL DEFAULT ''
);
CREATE INDEX audit_log_subject ON audit_log (subject, at);
