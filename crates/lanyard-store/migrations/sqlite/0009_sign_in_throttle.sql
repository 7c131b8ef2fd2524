-- Sign-in throttling, shared by every server process on the database: one row per (kind of
-- sign-in, normalised account name, client address) that has attempts counted against it.
-- Times are whole milliseconds since the Unix epoch, so the one reserve statement can do its
-- arithmetic the same way on both databases. Replaces the per-administrator `failed_logins` and
-- `locked_until` columns of 0001, which are no longer read or written.
-- Paired with postgres/0009_sign_in_throttle.sql.
CREATE TABLE sign_in_throttle (
    kind TEXT NOT NULL,
    account TEXT NOT NULL,
    address TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    last_attempt_ms BIGINT NOT NULL,
    wait_until_ms BIGINT NOT NULL,
    PRIMARY KEY (kind, account, address)
);
CREATE INDEX sign_in_throttle_wait ON sign_in_throttle (wait_until_ms);
