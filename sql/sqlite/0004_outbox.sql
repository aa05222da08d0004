-- Webhook outbox: every status change of a verification that has a receiver (its own
-- callback_url, or webhooks.url, which the daemon notes in settings), written by a trigger
-- in the transaction that makes the change, sent by the daemon at least once, in order per
-- verification.
CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    verification_id TEXT NOT NULL,
    status          TEXT NOT NULL,
    created_at      INTEGER NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    delivered_at    INTEGER,
    last_error      TEXT
);
CREATE INDEX outbox_undelivered ON outbox (next_attempt_at) WHERE delivered_at IS NULL;
CREATE INDEX outbox_verification ON outbox (verification_id, id);

CREATE TRIGGER verifications_status_outbox AFTER UPDATE OF status ON verifications
WHEN OLD.status <> NEW.status AND (NEW.callback_url IS NOT NULL OR EXISTS
    (SELECT 1 FROM settings WHERE key = 'webhooks_default' AND value = '1'))
BEGIN
    INSERT INTO outbox (verification_id, status, created_at, next_attempt_at)
    VALUES (NEW.id, NEW.status, NEW.updated_at, NEW.updated_at);
END;
