-- Account-driven User Enrollment: the web sign-in flow, access tokens, enrollments and their
-- check-in state. Paired with sqlite/0002_enrollment.sql.
CREATE TABLE enrollment_flows (
    id_hash TEXT PRIMARY KEY,
    user_id BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    user_identifier TEXT,
    step TEXT NOT NULL,
    ownership TEXT,
    created_at TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX enrollment_flows_expiry ON enrollment_flows (expires_at);

CREATE TABLE access_tokens (
    token_hash TEXT PRIMARY KEY,
    user_id BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    ownership TEXT NOT NULL,
    attributes TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    used_at TIMESTAMPTZ
);
CREATE INDEX access_tokens_expiry ON access_tokens (expires_at);

CREATE TABLE enrollments (
    id TEXT PRIMARY KEY,
    user_id BIGINT NOT NULL REFERENCES users(id),
    managed_apple_id TEXT NOT NULL,
    ownership TEXT NOT NULL,
    attributes TEXT NOT NULL,
    mode TEXT NOT NULL,
    status TEXT NOT NULL,
    os_version TEXT,
    build_version TEXT,
    product TEXT,
    model_family TEXT,
    scep_challenge_hash TEXT UNIQUE,
    challenge_expires_at TIMESTAMPTZ,
    challenge_used_at TIMESTAMPTZ,
    identity_serial TEXT,
    identity_sha256 TEXT UNIQUE,
    identity_not_after TIMESTAMPTZ,
    device_channel_id TEXT,
    user_channel_id TEXT,
    push_topic TEXT,
    device_push_token BYTEA,
    device_push_magic TEXT,
    user_push_token BYTEA,
    user_push_magic TEXT,
    unlock_token_sealed BYTEA,
    bootstrap_token_sealed BYTEA,
    created_at TIMESTAMPTZ NOT NULL,
    authenticated_at TIMESTAMPTZ,
    enrolled_at TIMESTAMPTZ,
    last_seen_at TIMESTAMPTZ,
    checked_out_at TIMESTAMPTZ
);
CREATE INDEX enrollments_status ON enrollments (status, created_at);
CREATE INDEX enrollments_user ON enrollments (user_id);
-- An EnrollmentID belongs to at most one live enrollment; checked-out ones keep theirs as history.
CREATE UNIQUE INDEX enrollments_device_channel ON enrollments (device_channel_id)
    WHERE status <> 'checked_out';

CREATE TABLE declarative_messages (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    enrollment_id TEXT NOT NULL REFERENCES enrollments(id) ON DELETE CASCADE,
    endpoint TEXT NOT NULL,
    data BYTEA NOT NULL,
    received_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX declarative_messages_enrollment ON declarative_messages (enrollment_id, id);
