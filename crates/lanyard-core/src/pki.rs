//! The server's own PKI material kept in the database, so every server process on one database
//! uses the same CA. Private keys are sealed with the server's secret key before they are stored.

use lanyard_pki::{Ca, SecretBox};
use lanyard_store::{AuditEntry, AuditFilter, PkiMaterial};

use crate::{CoreError, Lanyard, Result};

/// The name of the CA row in the PKI table.
pub const CA_NAME: &str = "ca";

fn seal_context(name: &str) -> Vec<u8> {
    format!("lanyard:pki:{name}").into_bytes()
}

impl Lanyard {
    /// Loads the CA, creating it on first start. When two processes start at once, the first
    /// insert wins and both use it.
    pub async fn load_or_create_ca(&self, secrets: &SecretBox, organization: &str) -> Result<Ca> {
        if let Some(m) = self.store.get_pki(CA_NAME).await? {
            return open_ca(secrets, &m);
        }
        let ca = Ca::generate(&format!("{organization} Lanyard CA"), organization)?;
        let key_pem = ca.key_pem_pkcs8()?;
        let sealed = secrets.seal(key_pem.as_bytes(), &seal_context(CA_NAME))?;
        let material = PkiMaterial {
            name: CA_NAME.into(),
            cert_pem: ca.cert_pem()?,
            key_sealed: sealed,
            created_at: lanyard_store::now(),
        };
        if self.store.insert_pki_if_absent(&material).await? {
            tracing::info!("created the Lanyard certificate authority");
            return Ok(ca);
        }
        let m = self
            .store
            .get_pki(CA_NAME)
            .await?
            .ok_or_else(|| CoreError::Internal("CA vanished after a racing insert".into()))?;
        open_ca(secrets, &m)
    }

    /// The audit log, newest first.
    pub async fn audit_log(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>> {
        Ok(self.store.list_audit(filter).await?)
    }
}

fn open_ca(secrets: &SecretBox, m: &PkiMaterial) -> Result<Ca> {
    let key = secrets
        .open(&m.key_sealed, &seal_context(&m.name))
        .map_err(|_| {
            CoreError::Internal(
                "the stored CA key cannot be opened with this server's secret key; every server \
                 process on one database must use the same --secret-key"
                    .into(),
            )
        })?;
    Ok(Ca::from_pem(m.cert_pem.as_bytes(), &key)?)
}
