-- Declarative device management: declarations (Apple's Type, Identifier, ServerToken and
-- Payload), sets of them, the sets' assignments, and what each enrollment reported: the latest
-- value of each subscribed status item and each declaration's state. Paired with
-- postgres/0014_declarations.sql.
--
-- The raw DeclarativeManagement check-ins kept before (`declarative_messages`, a few per
-- enrollment, never read by the server) go: a Mac sends its full status again with its next
-- declarative synchronisation and its daily full report (`FullReport`, Apple's
-- declarative/protocol/statusreport.yaml), which now fill the tables below.
DROP TABLE declarative_messages;

CREATE TABLE declarations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    identifier TEXT NOT NULL UNIQUE,
    declaration_type TEXT NOT NULL,
    kind TEXT NOT NULL,
    -- The declaration's Payload as JSON text.
    payload TEXT NOT NULL,
    server_token TEXT NOT NULL,
    -- An asset's data (sealed with the server's secret key) and its media type.
    asset_data_sealed BLOB,
    asset_content_type TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);

CREATE TABLE declaration_sets (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);

CREATE TABLE declaration_set_members (
    set_id INTEGER NOT NULL REFERENCES declaration_sets(id) ON DELETE CASCADE,
    declaration_id INTEGER NOT NULL REFERENCES declarations(id) ON DELETE CASCADE,
    PRIMARY KEY (set_id, declaration_id)
);
CREATE INDEX declaration_set_members_declaration ON declaration_set_members (declaration_id);

-- target_kind: user (user_id), all_user_enrollments, or enrollment (enrollment_id);
-- target_key names the target once ('user:<id>', 'all_user_enrollments', 'enrollment:<id>').
CREATE TABLE declaration_assignments (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    set_id INTEGER NOT NULL REFERENCES declaration_sets(id) ON DELETE CASCADE,
    target_kind TEXT NOT NULL,
    target_key TEXT NOT NULL,
    user_id INTEGER REFERENCES users(id) ON DELETE CASCADE,
    enrollment_id TEXT REFERENCES enrollments(id) ON DELETE CASCADE,
    created_at TEXT NOT NULL,
    UNIQUE (set_id, target_key)
);
CREATE INDEX declaration_assignments_user ON declaration_assignments (user_id);
CREATE INDEX declaration_assignments_enrollment ON declaration_assignments (enrollment_id);

CREATE TABLE declaration_status (
    enrollment_id TEXT NOT NULL REFERENCES enrollments(id) ON DELETE CASCADE,
    identifier TEXT NOT NULL,
    server_token TEXT NOT NULL,
    active BOOLEAN NOT NULL,
    valid TEXT NOT NULL,
    -- The reasons the Mac gave (JSON array), bounded by the device service.
    reasons TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (enrollment_id, identifier)
);
CREATE INDEX declaration_status_identifier ON declaration_status (identifier);

CREATE TABLE status_items (
    enrollment_id TEXT NOT NULL REFERENCES enrollments(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    -- The latest value (JSON), bounded by the device service.
    value TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (enrollment_id, name)
);
