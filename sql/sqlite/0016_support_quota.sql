-- The support line's quota counts a caller's messages of the last 24 hours and all
-- messages of the last hour.
CREATE INDEX manual_requests_caller ON manual_requests (caller, created_at);
CREATE INDEX manual_requests_created ON manual_requests (created_at);
