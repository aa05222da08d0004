-- Wrong codes one row each, so that a number's or a user's count is the wrong codes of the
-- last lockout window, whenever that window starts (a sliding window). The strikes table
-- counted from its subject's first wrong code and began again once that one was older than
-- the window, which let as many as twice the allowed wrong codes fall within minutes around
-- its end. A subject's count carries over as that many wrong codes at its window's start.
CREATE TABLE wrong_codes (
    kind    TEXT NOT NULL CHECK (kind IN ('phone', 'user')),
    subject TEXT NOT NULL,
    at      BIGINT NOT NULL
);
CREATE INDEX wrong_codes_subject ON wrong_codes (kind, subject, at);
INSERT INTO wrong_codes (kind, subject, at)
    SELECT s.kind, s.subject, s.since FROM strikes s, generate_series(1, s.wrong::int) AS n;
DROP TABLE strikes;
