-- Several daemons on one store. Each running daemon has a row it heartbeats (last_seen);
-- one not seen for cluster.dead_after_secs is taken over by a live one, once
-- (taken_over_by): its open call attempts are closed as interrupted and their
-- verifications go back to the queue. incarnation tells one run of a name from the next;
-- boot_id and pid tell an earlier run on this machine from another daemon using the name.
CREATE TABLE daemons (
    name          TEXT PRIMARY KEY,
    incarnation   TEXT NOT NULL,
    boot_id       TEXT NOT NULL,
    pid           BIGINT NOT NULL,
    started_at    BIGINT NOT NULL,
    last_seen     BIGINT NOT NULL,
    taken_over_by TEXT,
    taken_over_at BIGINT
);

-- The trunk's calls in progress, whichever daemon placed them: a row from the claim of a
-- dialer call until its end (failed, or its FastAGI attempt over, or its Hangup), so that
-- dialer.max_concurrent holds for all daemons together. trunks.next_dial_at paces the
-- Originates of all daemons to dialer.max_per_second.
CREATE TABLE trunk_calls (
    channel_id      TEXT PRIMARY KEY,
    verification_id TEXT NOT NULL,
    trunk           TEXT NOT NULL,
    daemon          TEXT NOT NULL,
    since           BIGINT NOT NULL
);
CREATE INDEX trunk_calls_trunk ON trunk_calls (trunk, since);

CREATE TABLE trunks (
    trunk        TEXT PRIMARY KEY,
    next_dial_at BIGINT NOT NULL
);
