-- `callverify doctor`'s self-test calls: the doctor writes what to check under a random
-- token and originates a call into `callverify-selftest`; the daemon that Asterisk reaches
-- over FastAGI takes the row once (`reached_at`), runs the checks on the call and writes
-- its report, which the doctor reads and deletes. Rows a doctor left are dropped after a day.
CREATE TABLE selftests (
    token      TEXT PRIMARY KEY,
    plan       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    reached_at INTEGER,
    report     TEXT
);
