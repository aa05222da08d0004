-- Every code checked for a verification and counted (never the digits): how it came (keyed
-- or said in a call, or typed into the web page) and whether it was right, for the support
-- desk's history of a verification. Written in the transaction that counts it.
CREATE TABLE code_checks (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    verification_id TEXT NOT NULL REFERENCES verifications (id),
    attempt_id      BIGINT,
    at              BIGINT NOT NULL,
    method          TEXT NOT NULL CHECK (method IN ('keypad', 'speech', 'web')),
    right_code      BIGINT NOT NULL
);
CREATE INDEX code_checks_verification ON code_checks (verification_id, id);
