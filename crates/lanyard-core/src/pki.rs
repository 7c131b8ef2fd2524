//! The server's own PKI material kept in the database, so every server process on one database
//! uses the same CA. Private keys are sealed with the server's secret key before they are stored.

use lanyard_pki::{Ca, SecretBox};
use lanyard_pki::{PKey, Private, X509};
use lanyard_store::{AuditEntry, AuditFilter, PkiMaterial};

use crate::{CoreError, Lanyard, Result};

/// The name of the CA row in the PKI table.
pub const CA_NAME: &str = "ca";
/// The profile-signing certificate's row.
pub const PROFILE_SIGNER_NAME: &str = "profile-signer";
/// The SCEP registration authority's row: it signs CertReps and receives request envelopes
/// (certmonger refuses CertReps signed by the CA alone).
pub const SCEP_RA_NAME: &str = "scep-ra";

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
        let ca = Ca::generate(&format!("{organization} Enrollment CA"), organization)?;
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

    /// The CA plus the certificate that signs enrollment profiles (issued by the CA once, kept
    /// sealed in the database like the CA).
    pub async fn load_device_pki(
        &self,
        secrets: &SecretBox,
        organization: &str,
    ) -> Result<crate::enrollment::DevicePki> {
        let ca = self.load_or_create_ca(secrets, organization).await?;
        let (profile_signer_cert, profile_signer_key) = self
            .load_or_issue(secrets, PROFILE_SIGNER_NAME, || {
                ca.issue_cms_signer(
                    &format!("{organization} Profile Signing"),
                    lanyard_pki::CA_VALIDITY_DAYS / 2,
                )
            })
            .await?;
        let (scep_ra_cert, scep_ra_key) = self
            .load_or_issue(secrets, SCEP_RA_NAME, || {
                ca.issue_scep_ra(
                    &format!("{organization} SCEP RA"),
                    lanyard_pki::CA_VALIDITY_DAYS / 2,
                )
            })
            .await?;
        Ok(crate::enrollment::DevicePki {
            profile_signer_cert,
            profile_signer_key,
            scep_ra_cert,
            scep_ra_key,
            ca,
            secrets: secrets.clone(),
        })
    }

    /// A certificate issued by the CA for one of the server's own jobs, issued once and kept
    /// sealed in the database; racing processes converge on the first one stored.
    async fn load_or_issue(
        &self,
        secrets: &SecretBox,
        name: &str,
        issue: impl FnOnce() -> lanyard_pki::Result<lanyard_pki::IssuedCert>,
    ) -> Result<(X509, PKey<Private>)> {
        if self.store.get_pki(name).await?.is_none() {
            let issued = issue()?;
            let sealed = secrets.seal(issued.key_pem.as_bytes(), &seal_context(name))?;
            self.store
                .insert_pki_if_absent(&PkiMaterial {
                    name: name.into(),
                    cert_pem: issued.cert_pem,
                    key_sealed: sealed,
                    created_at: lanyard_store::now(),
                })
                .await?;
        }
        let m = self
            .store
            .get_pki(name)
            .await?
            .ok_or_else(|| CoreError::Internal(format!("{name} vanished from the database")))?;
        let key = secrets
            .open(&m.key_sealed, &seal_context(name))
            .map_err(|e| CoreError::failed(format!("opening the {name} key"), e))?;
        Ok((
            X509::from_pem(m.cert_pem.as_bytes())?,
            PKey::private_key_from_pem(&key)?,
        ))
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
                 process on one database must use the same --secret-key-file"
                    .into(),
            )
        })?;
    Ok(Ca::from_pem(m.cert_pem.as_bytes(), &key)?)
}
