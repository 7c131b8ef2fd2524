-- Account-driven User Enrollment: the web sign-in flow, access tokens, enrollments and their
-- check-in state. Paired with postgres/0002_enrollment.sql.
CREATE TABLE enrollment_flows (
    id_hash TEXT PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    user_identifier TEXT,
    step TEXT NOT NULL,
    ownership TEXT,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL
);
CREATE INDEX enrollment_flows_expiry ON enrollment_flows (expires_at);

CREATE TABLE access_tokens (
    token_hash TEXT PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    ownership TEXT NOT NULL,
    attributes TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    used_at TEXT
);
CREATE INDEX access_tokens_expiry ON access_tokens (expires_at);

CREATE TABLE enrollments (
    id TEXT PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users(id),
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
    challenge_expires_at TEXT,
    challenge_used_at TEXT,
    identity_serial TEXT,
    identity_sha256 TEXT UNIQUE,
    identity_not_after TEXT,
    device_channel_id TEXT,
    user_channel_id TEXT,
    push_topic TEXT,
    device_push_token BLOB,
    device_push_magic TEXT,
    user_push_token BLOB,
    user_push_magic TEXT,
    unlock_token_sealed BLOB,
    bootstrap_token_sealed BLOB,
    created_at TEXT NOT NULL,
    authenticated_at TEXT,
    enrolled_at TEXT,
    last_seen_at TEXT,
    checked_out_at TEXT
);
CREATE INDEX enrollments_status ON enrollments (status, created_at);
CREATE INDEX enrollments_user ON enrollments (user_id);
-- An EnrollmentID belongs to at most one live enrollment; checked-out ones keep theirs as history.
CREATE UNIQUE INDEX enrollments_device_channel ON enrollments (device_channel_id)
    WHERE status <> 'checked_out';

CREATE TABLE declarative_messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    enrollment_id TEXT NOT NULL REFERENCES enrollments(id) ON DELETE CASCADE,
    endpoint TEXT NOT NULL,
    data BLOB NOT NULL,
    received_at TEXT NOT NULL
);
CREATE INDEX declarative_messages_enrollment ON declarative_messages (enrollment_id, id);
