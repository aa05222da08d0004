-- code_checks's CHECK on method, written as comparisons: SQLite (3.40) evaluates
-- `method IN ('keypad', 'speech', 'web')` by building a temporary index of the list for
-- every row inserted, about 15,000 instructions of each verified call (callgrind); three
-- comparisons allow exactly the same values. SQLite cannot change a CHECK in place, so the
-- table is rebuilt with its rows, ids, index and id sequence (no id is given out twice).
CREATE TABLE code_checks_rebuilt (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    verification_id TEXT NOT NULL REFERENCES verifications (id),
    attempt_id      INTEGER,
    at              INTEGER NOT NULL,
    method          TEXT NOT NULL
                    CHECK (method = 'keypad' OR method = 'speech' OR method = 'web'),
    right_code      INTEGER NOT NULL
);
INSERT INTO sqlite_sequence (name, seq)
    SELECT 'code_checks_rebuilt', seq FROM sqlite_sequence WHERE name = 'code_checks';
INSERT INTO code_checks_rebuilt (id, verification_id, attempt_id, at, method, right_code)
    SELECT id, verification_id, attempt_id, at, method, right_code FROM code_checks;
DROP TABLE code_checks;
ALTER TABLE code_checks_rebuilt RENAME TO code_checks;
CREATE INDEX code_checks_verification ON code_checks (verification_id, id);
