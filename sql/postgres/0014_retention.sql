-- History retention (verification.retention_days): ended verifications are found by their
-- creation time and deleted with the rows that name them, which are found by the
-- verification's id.
CREATE INDEX verifications_created ON verifications (created_at);
CREATE INDEX lockouts_verification ON lockouts (verification_id);
CREATE INDEX manual_requests_verification ON manual_requests (verification_id);
CREATE INDEX idempotency_keys_verification ON idempotency_keys (verification_id);
