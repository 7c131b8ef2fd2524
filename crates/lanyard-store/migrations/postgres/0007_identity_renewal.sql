-- Identity renewal: the enrollment profile's PayloadUUIDs (a renewal reinstalls the same profile
-- with a fresh SCEP payload), the renewed identity that is accepted beside the current one until
-- its first use, and the pending renewal (its one-time SCEP challenge and InstallProfile command).
-- Paired with sqlite/0007_identity_renewal.sql.
ALTER TABLE enrollments ADD COLUMN profile_uuid TEXT;
ALTER TABLE enrollments ADD COLUMN mdm_payload_uuid TEXT;
ALTER TABLE enrollments ADD COLUMN trust_payload_uuid TEXT;
ALTER TABLE enrollments ADD COLUMN next_identity_serial TEXT;
ALTER TABLE enrollments ADD COLUMN next_identity_sha256 TEXT;
ALTER TABLE enrollments ADD COLUMN next_identity_not_after TIMESTAMPTZ;
ALTER TABLE enrollments ADD COLUMN identity_renewed_at TIMESTAMPTZ;
ALTER TABLE enrollments ADD COLUMN renewal_challenge_hash TEXT;
ALTER TABLE enrollments ADD COLUMN renewal_challenge_expires_at TIMESTAMPTZ;
ALTER TABLE enrollments ADD COLUMN renewal_command_uuid TEXT;
ALTER TABLE enrollments ADD COLUMN renewal_queued_at TIMESTAMPTZ;
CREATE UNIQUE INDEX enrollments_next_identity ON enrollments (next_identity_sha256);
CREATE UNIQUE INDEX enrollments_renewal_challenge ON enrollments (renewal_challenge_hash);
-- The renewal job's scan: enrolled identities by expiry.
CREATE INDEX enrollments_identity_expiry ON enrollments (status, identity_not_after);
