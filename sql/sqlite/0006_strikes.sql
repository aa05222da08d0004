-- Wrong codes per number and per user, across all their verifications: the rule is three
-- tries per number and per user, not per verification. A subject's strikes since `since`
-- count; they are forgotten once the lockout window has passed, cleared by a verified code,
-- and the strike that reaches the limit locks the number and the user out.
CREATE TABLE strikes (
    kind    TEXT NOT NULL CHECK (kind IN ('phone', 'user')),
    subject TEXT NOT NULL,
    wrong   INTEGER NOT NULL,
    since   INTEGER NOT NULL,
    PRIMARY KEY (kind, subject)
);
