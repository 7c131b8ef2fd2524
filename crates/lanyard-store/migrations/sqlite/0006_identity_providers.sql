-- OpenID Connect identity providers for enrollment sign-in, and the single-use state of each
-- sign-in through one. Paired with postgres/0006_identity_providers.sql.
CREATE TABLE identity_providers (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    display_name TEXT NOT NULL,
    issuer TEXT NOT NULL,
    client_id TEXT NOT NULL,
    client_secret_sealed BLOB,
    scopes TEXT NOT NULL,
    email_claim TEXT NOT NULL,
    allow_create_users BOOLEAN NOT NULL,
    enabled BOOLEAN NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);

CREATE TABLE oidc_sign_ins (
    state_hash TEXT PRIMARY KEY,
    provider_id INTEGER NOT NULL REFERENCES identity_providers(id) ON DELETE CASCADE,
    nonce TEXT NOT NULL,
    pkce_verifier_sealed BLOB NOT NULL,
    user_identifier TEXT,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    used_at TEXT
);
CREATE INDEX oidc_sign_ins_expiry ON oidc_sign_ins (expires_at);
