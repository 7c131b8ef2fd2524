//! The server's own PKI material kept in the database, so every server process on one database
//! uses the same CA. Private keys are sealed with the server's secret key before they are stored.

use lanyard_pki::{Ca, SecretBox};
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

/// A certificate and its private key as the PKI table keeps them, the key opened: both PEM.
/// Nothing here has been parsed (OpenSSL is not needed to hold them).
pub struct OpenedPem {
    pub cert_pem: String,
    pub key_pem: Vec<u8>,
}

impl Lanyard {
    /// Loads the CA, creating it on first start. When two processes start at once, the first
    /// insert wins and both use it.
    pub async fn load_or_create_ca(&self, secrets: &SecretBox, organization: &str) -> Result<Ca> {
        let pem = self.load_or_create_ca_pem(secrets, organization).await?;
        Ok(Ca::from_pem(pem.cert_pem.as_bytes(), &pem.key_pem)?)
    }

    /// [`Lanyard::load_or_create_ca`], the CA left as PEM (opened, not parsed).
    async fn load_or_create_ca_pem(
        &self,
        secrets: &SecretBox,
        organization: &str,
    ) -> Result<OpenedPem> {
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
            return Ok(OpenedPem {
                cert_pem: material.cert_pem,
                key_pem: key_pem.into_bytes(),
            });
        }
        let m = self
            .store
            .get_pki(CA_NAME)
            .await?
            .ok_or_else(|| CoreError::Internal("CA vanished after a racing insert".into()))?;
        open_ca(secrets, &m)
    }

    /// The CA plus the certificate that signs enrollment profiles (issued by the CA once, kept
    /// sealed in the database like the CA), opened. Their certificates and keys are parsed on
    /// first use ([`DevicePki::keys`](crate::enrollment::DevicePki::keys)): a wrong secret key
    /// is refused here, at start-up.
    pub async fn load_device_pki(
        &self,
        secrets: &SecretBox,
        organization: &str,
    ) -> Result<crate::enrollment::DevicePki> {
        let ca = self.load_or_create_ca_pem(secrets, organization).await?;
        // Parsed only to issue a certificate missing from the database (a first start).
        let ca_keys = || Ca::from_pem(ca.cert_pem.as_bytes(), &ca.key_pem);
        let profile_signer = self
            .load_or_issue(secrets, PROFILE_SIGNER_NAME, || {
                ca_keys()?.issue_cms_signer(
                    &format!("{organization} Profile Signing"),
                    lanyard_pki::CA_VALIDITY_DAYS / 2,
                )
            })
            .await?;
        let scep_ra = self
            .load_or_issue(secrets, SCEP_RA_NAME, || {
                ca_keys()?.issue_scep_ra(
                    &format!("{organization} SCEP RA"),
                    lanyard_pki::CA_VALIDITY_DAYS / 2,
                )
            })
            .await?;
        Ok(crate::enrollment::DevicePki::new(
            ca,
            profile_signer,
            scep_ra,
            secrets.clone(),
        ))
    }

    /// A certificate issued by the CA for one of the server's own jobs, issued once and kept
    /// sealed in the database; racing processes converge on the first one stored.
    async fn load_or_issue(
        &self,
        secrets: &SecretBox,
        name: &str,
        issue: impl FnOnce() -> lanyard_pki::Result<lanyard_pki::IssuedCert>,
    ) -> Result<OpenedPem> {
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
        let key_pem = secrets
            .open(&m.key_sealed, &seal_context(name))
            .map_err(|e| CoreError::failed(format!("opening the {name} key"), e))?;
        Ok(OpenedPem {
            cert_pem: m.cert_pem,
            key_pem,
        })
    }

    /// The audit log, newest first.
    pub async fn audit_log(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>> {
        Ok(self.store.list_audit(filter).await?)
    }
}

fn open_ca(secrets: &SecretBox, m: &PkiMaterial) -> Result<OpenedPem> {
    let key_pem = secrets
        .open(&m.key_sealed, &seal_context(&m.name))
        .map_err(|_| {
            CoreError::Internal(
                "the stored CA key cannot be opened with this server's secret key; every server \
                 process on one database must use the same --secret-key-file"
                    .into(),
            )
        })?;
    Ok(OpenedPem {
        cert_pem: m.cert_pem.clone(),
        key_pem,
    })
}
