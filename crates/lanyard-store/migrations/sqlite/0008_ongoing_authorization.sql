-- Ongoing authorization of a User Enrollment: the hash of the bearer token the Mac sends on its
-- user channel (the access token it enrolled with, or the one from a later re-authentication).
-- NULL = revoked: the next user-channel request is challenged. Paired with postgres/0008.
ALTER TABLE enrollments ADD COLUMN bearer_token_hash TEXT;
