-- The MDM command channel: commands, the live per-enrollment queue, finished results (history),
-- and inventory reported by devices. Paired with postgres/0003_commands.sql.
CREATE TABLE commands (
    uuid TEXT PRIMARY KEY,
    request_type TEXT NOT NULL,
    payload BLOB NOT NULL,
    created_by TEXT NOT NULL,
    created_at TEXT NOT NULL
);

CREATE TABLE command_queue (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    enrollment_id TEXT NOT NULL REFERENCES enrollments(id) ON DELETE CASCADE,
    channel TEXT NOT NULL,
    command_uuid TEXT NOT NULL REFERENCES commands(uuid) ON DELETE CASCADE,
    status TEXT NOT NULL,
    not_now_until TEXT,
    not_now_count INTEGER NOT NULL DEFAULT 0,
    queued_at TEXT NOT NULL,
    sent_at TEXT,
    UNIQUE (enrollment_id, channel, command_uuid)
);
CREATE INDEX command_queue_next ON command_queue (enrollment_id, channel, id);
CREATE INDEX command_queue_command ON command_queue (command_uuid);

CREATE TABLE command_results (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    enrollment_id TEXT NOT NULL REFERENCES enrollments(id) ON DELETE CASCADE,
    channel TEXT NOT NULL,
    command_uuid TEXT NOT NULL,
    request_type TEXT NOT NULL,
    status TEXT NOT NULL,
    result BLOB,
    error_chain TEXT,
    queued_at TEXT NOT NULL,
    sent_at TEXT,
    finished_at TEXT NOT NULL
);
CREATE INDEX command_results_enrollment ON command_results (enrollment_id, id);
CREATE INDEX command_results_command ON command_results (command_uuid);
CREATE INDEX command_results_finished ON command_results (finished_at);

ALTER TABLE enrollments ADD COLUMN inventory TEXT;
