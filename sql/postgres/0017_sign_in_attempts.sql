-- Console sign-in attempts, one row each, in the store: every daemon on it counts them
-- together, and a restart forgets none. A name's `attempt` rows of the last window are its
-- tries (counted before the password is checked); a `refused` row notes that its sign-ins
-- were refused in that window (audited once). Rows go once their window has passed.
-- Names not of a staff name's shape share one name.
CREATE TABLE sign_in_attempts (
    name TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('attempt', 'refused')),
    at   BIGINT NOT NULL
);
CREATE INDEX sign_in_attempts_name ON sign_in_attempts (name, kind, at);
CREATE INDEX sign_in_attempts_at ON sign_in_attempts (at);
-- Failed and refused sign-ins leave the audit log after support.retention_days: they are
-- found by their action and time.
CREATE INDEX audit_log_action ON audit_log (action, at);
