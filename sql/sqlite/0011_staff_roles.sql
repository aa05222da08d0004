-- Staff roles and time zones: an `admin` also sees the audit view and exports decisions;
-- each account's times are shown in its own zone (NULL: support.timezone).
ALTER TABLE staff ADD COLUMN role TEXT NOT NULL DEFAULT 'agent'
    CHECK (role IN ('agent', 'admin'));
ALTER TABLE staff ADD COLUMN time_zone TEXT;
CREATE INDEX audit_log_at ON audit_log (at);
