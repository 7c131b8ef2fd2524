-- Push requests kept in the database, so that a push asked for by a server process that dies
-- before sending it is sent by another (the push sweep). Paired with postgres/0012_push_requests.sql.
-- `push_requested_at`: a command was queued for this enrollment with a push and that push has not
-- been sent yet. `push_claimed_until`: a sweep of some server process is sending it until then.
ALTER TABLE enrollments ADD COLUMN push_requested_at TEXT;
ALTER TABLE enrollments ADD COLUMN push_claimed_until TEXT;
CREATE INDEX enrollments_push_requested ON enrollments (push_requested_at)
    WHERE push_requested_at IS NOT NULL;
