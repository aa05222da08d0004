-- Webhook outbox: every status change of a verification that has a receiver (its own
-- callback_url, or webhooks.url, which the daemon notes in settings), written by a trigger
-- in the transaction that makes the change, sent by the daemon at least once, in order per
-- verification.
CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE outbox (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    verification_id TEXT NOT NULL,
    status          TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    delivered_at    BIGINT,
    last_error      TEXT
);
CREATE INDEX outbox_undelivered ON outbox (next_attempt_at) WHERE delivered_at IS NULL;
CREATE INDEX outbox_verification ON outbox (verification_id, id);

CREATE FUNCTION callverify_status_outbox() RETURNS trigger AS $$
BEGIN
    IF NEW.status IS DISTINCT FROM OLD.status AND (NEW.callback_url IS NOT NULL OR EXISTS
        (SELECT 1 FROM settings WHERE key = 'webhooks_default' AND value = '1')) THEN
        INSERT INTO outbox (verification_id, status, created_at, next_attempt_at)
        VALUES (NEW.id, NEW.status, NEW.updated_at, NEW.updated_at);
    END IF;
    RETURN NEW;
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER verifications_status_outbox AFTER UPDATE OF status ON verifications
FOR EACH ROW EXECUTE FUNCTION callverify_status_outbox();
