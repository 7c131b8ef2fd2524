-- Apple Business Manager server tokens and the devices ABM assigned to them.
-- Paired with postgres/0005_server_tokens.sql.
CREATE TABLE server_tokens (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    cert_pem TEXT NOT NULL,
    key_sealed BLOB NOT NULL,
    secrets_sealed BLOB,
    token_expires_at TEXT,
    uploaded_at TEXT,
    org_name TEXT,
    org_id TEXT,
    server_name TEXT,
    server_uuid TEXT,
    is_default_account_driven BOOLEAN NOT NULL DEFAULT FALSE,
    discovery_url TEXT,
    discovery_registered_at TEXT,
    sync_cursor TEXT,
    last_sync_at TEXT,
    last_sync_status TEXT,
    lease_owner TEXT,
    lease_until TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
-- At most one default token for account-driven enrollment.
CREATE UNIQUE INDEX server_tokens_one_default ON server_tokens (is_default_account_driven)
    WHERE is_default_account_driven;

CREATE TABLE abm_devices (
    token_id INTEGER NOT NULL REFERENCES server_tokens(id) ON DELETE CASCADE,
    serial_number TEXT NOT NULL,
    model TEXT NOT NULL,
    description TEXT NOT NULL,
    os TEXT NOT NULL,
    color TEXT NOT NULL,
    profile_status TEXT NOT NULL,
    profile_uuid TEXT,
    assigned_by TEXT,
    assigned_date TEXT,
    op_type TEXT,
    first_seen_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (token_id, serial_number)
);
