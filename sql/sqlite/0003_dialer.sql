-- The dialer's queue: when each verification is due a call, how many calls it has had, and
-- which daemon's Originate (ChannelId, which Asterisk uses as the channel's Uniqueid and so
-- as agi_uniqueid) it is in.
ALTER TABLE verifications ADD COLUMN next_call_at INTEGER;
ALTER TABLE verifications ADD COLUMN dial_attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE verifications ADD COLUMN channel_id TEXT;
ALTER TABLE verifications ADD COLUMN claimed_by TEXT;
ALTER TABLE verifications ADD COLUMN claimed_at INTEGER;
CREATE INDEX verifications_due ON verifications (status, next_call_at);
