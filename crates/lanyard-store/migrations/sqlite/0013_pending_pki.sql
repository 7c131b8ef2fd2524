-- Key material waiting for its certificate: the MDM push key and its CSR made by
-- `lanyard push-cert request` (kept until Apple's push certificate for it is uploaded), and the
-- key a signing service encrypts its reply to. Same shape as pki_material: `pem` is the CSR or
-- certificate (public), `key_sealed` the private key sealed with the deployment's secret key.
-- Completing a request moves the certificate into pki_material and deletes the pending rows
-- in one transaction. Paired with postgres/0013_pending_pki.sql.
CREATE TABLE pki_pending (
    name TEXT PRIMARY KEY,
    pem TEXT NOT NULL,
    key_sealed BLOB NOT NULL,
    created_at TEXT NOT NULL
);
