-- The daemon sending an event (claimed_by, until delivered or failed): when it dies, the
-- daemon that takes it over (or its next run) makes its events due again at once, instead
-- of after the claim's lease.
ALTER TABLE outbox ADD COLUMN claimed_by TEXT;
