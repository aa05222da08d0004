-- Wrong codes one row each, so that a number's or a user's count is the wrong codes of the
-- last lockout window, whenever that window starts (a sliding window). The strikes table
-- counted from its subject's first wrong code and began again once that one was older than
-- the window, which let as many as twice the allowed wrong codes fall within minutes around
-- its end. A subject's count carries over as that many wrong codes at its window's start.
-- The CHECK is written as comparisons: SQLite evaluates an IN list by building a temporary
-- index for every row inserted (see 0013).
CREATE TABLE wrong_codes (
    kind    TEXT NOT NULL CHECK (kind = 'phone' OR kind = 'user'),
    subject TEXT NOT NULL,
    at      INTEGER NOT NULL
);
CREATE INDEX wrong_codes_subject ON wrong_codes (kind, subject, at);
WITH RECURSIVE n (i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000)
INSERT INTO wrong_codes (kind, subject, at)
    SELECT s.kind, s.subject, s.since FROM strikes s JOIN n ON n.i <= s.wrong;
DROP TABLE strikes;
