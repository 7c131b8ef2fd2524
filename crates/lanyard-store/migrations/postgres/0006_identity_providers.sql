-- OpenID Connect identity providers for enrollment sign-in, and the single-use state of each
-- sign-in through one. Paired with sqlite/0006_identity_providers.sql.
CREATE TABLE identity_providers (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    display_name TEXT NOT NULL,
    issuer TEXT NOT NULL,
    client_id TEXT NOT NULL,
    client_secret_sealed BYTEA,
    scopes TEXT NOT NULL,
    email_claim TEXT NOT NULL,
    allow_create_users BOOLEAN NOT NULL,
    enabled BOOLEAN NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);

CREATE TABLE oidc_sign_ins (
    state_hash TEXT PRIMARY KEY,
    provider_id BIGINT NOT NULL REFERENCES identity_providers(id) ON DELETE CASCADE,
    nonce TEXT NOT NULL,
    pkce_verifier_sealed BYTEA NOT NULL,
    user_identifier TEXT,
    created_at TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    used_at TIMESTAMPTZ
);
CREATE INDEX oidc_sign_ins_expiry ON oidc_sign_ins (expires_at);
