-- Wrong spoken codes read back to the caller ("I heard 4 8 2 ..."), one row for the number and
-- one for the user each. A read-back costs no attempt unless the caller confirms it, but it
-- tells the caller the code heard was wrong: a number and a user may have only a few within
-- the lockout window (a sliding window, as wrong_codes), whatever the calls and verifications.
-- The history purge deletes them once they no longer count.
CREATE TABLE spoken_read_backs (
    kind    TEXT NOT NULL CHECK (kind IN ('phone', 'user')),
    subject TEXT NOT NULL,
    at      BIGINT NOT NULL
);
CREATE INDEX spoken_read_backs_subject ON spoken_read_backs (kind, subject, at);
