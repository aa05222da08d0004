-- The read-code mode (the call reads the code, the web app checks it). `sealed_code` is the
-- code encrypted with a key derived from the server secret (XChaCha20-Poly1305, the
-- verification id as associated data), so that any daemon on the store can say it; it is
-- wiped when the verification ends. `code_delivered_at`: when a call first began to say it.
-- `last_wrong_check`: the keyed hash of the last wrong code the web app checked, so that a
-- retried identical check is answered again, not counted twice.
ALTER TABLE verifications ADD COLUMN mode TEXT NOT NULL DEFAULT 'enter_code'
    CHECK (mode IN ('enter_code', 'read_code'));
ALTER TABLE verifications ADD COLUMN sealed_code TEXT;
ALTER TABLE verifications ADD COLUMN code_delivered_at BIGINT;
ALTER TABLE verifications ADD COLUMN last_wrong_check TEXT;

CREATE FUNCTION callverify_wipe_sealed_code() RETURNS trigger AS $$
BEGIN
    IF NEW.status NOT IN ('pending', 'calling') THEN
        NEW.sealed_code := NULL;
    END IF;
    RETURN NEW;
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER verifications_wipe_sealed_code BEFORE UPDATE OF status ON verifications
FOR EACH ROW EXECUTE FUNCTION callverify_wipe_sealed_code();
