//! The MDM push certificate request file that Apple's Push Certificates Portal takes.
//!
//! Source: Apple, "Setting up push notifications for your MDM customers", section "Sign the
//! CSR": the customer's CSR in DER form is signed with the private key of the MDM (CSR)
//! signing certificate using SHA256WithRSA; the signature and the DER CSR are each encoded as
//! Base64; a "Push Certificate Request" plist is made and encoded as Base64. Its
//! `PushCertCertificateChain` holds the complete chain up to and including the root: the
//! MDM signing (vendor) certificate, the WWDR intermediate and the Apple Inc. root, each in
//! PEM with lines of at most 64 characters. (Apple's older "MDM Vendor CSR Signing Overview"
//! said SHA1WithRSA; the current page says SHA-256.)
//!
//! The key names `PushCertRequestCSR`, `PushCertCertificateChain` and `PushCertSignature`
//! are Apple's (the same page's plist). That the plist is an XML property list with three
//! string values is how every published request file is made; Apple's page does not show
//! the serialisation, so the exact form is UNCONFIRMED beyond that.

use std::fmt;

use base64::Engine as _;
use lanyard_pki::CertInfo;
use lanyard_pki::{NameAttribute, PKey, Private, X509};
use thiserror::Error;

use super::cert::now_unix;

/// Plist key of the DER CSR, Base64 (Apple's name).
pub const KEY_CSR: &str = "PushCertRequestCSR";
/// Plist key of the PEM chain: vendor, WWDR intermediate, Apple root (Apple's name).
pub const KEY_CHAIN: &str = "PushCertCertificateChain";
/// Plist key of the Base64 SHA256WithRSA signature over the DER CSR (Apple's name).
pub const KEY_SIGNATURE: &str = "PushCertSignature";

/// How an MDM CSR signing (vendor) certificate is recognised: the common name Apple gives
/// it, `MDM Vendor: <organisation>`, issued by the WWDR intermediate. UNCONFIRMED: Apple's
/// pages name the certificate type ("MDM CSR" in the developer portal) but not an extension
/// OID Lanyard could check, so Lanyard checks the common name Apple's vendor certificates
/// carry (seen on published vendor chains and operators' notes: `MDM Vendor: <name>`) and the
/// chain to the operator's Apple root. Looked up again: Apple's WWDR Certification Practice
/// Statement has a section on "Push CSR Signing Certificates" but no source at hand names a
/// marker extension for them, so the check stays on the name.
pub const VENDOR_CN_PREFIX: &str = "MDM Vendor:";

/// Why a vendor certificate cannot sign, or a request file cannot be read. Messages never
/// contain key material.
#[derive(Debug, Error)]
pub enum VendorError {
    #[error("cannot open the vendor PKCS#12 file: wrong password or damaged file")]
    Pkcs12(String),
    #[error("the vendor PKCS#12 file holds no {0}")]
    Missing(&'static str),
    #[error(
        "the vendor certificate ({subject}) is not an MDM CSR signing certificate: its common \
         name must start with \"MDM Vendor:\" (create an \"MDM CSR\" certificate in the Apple \
         Developer Enterprise account)"
    )]
    NotVendor { subject: String },
    #[error("the vendor certificate expired at {not_after} (unix seconds); renew it with Apple")]
    Expired { not_after: i64 },
    #[error("the vendor certificate is not valid before {not_before} (unix seconds)")]
    NotYetValid { not_before: i64 },
    #[error(
        "the Apple certificate files are not the expected chain (the WWDR intermediate that \
         issued the vendor certificate, and the Apple root): {0}"
    )]
    Chain(String),
    #[error("cannot sign the request with the vendor key: {0}")]
    Sign(String),
    #[error("the certificate request is unusable: {0}")]
    Csr(String),
    #[error("not a push certificate request file: {0}")]
    RequestFile(String),
}

/// An MDM vendor identity: the MDM CSR signing certificate with its key, and the Apple chain
/// above it (WWDR intermediate, Apple root), checked on load.
pub struct VendorSigner {
    cert: X509,
    key: PKey<Private>,
    /// Intermediate first, root last.
    chain: Vec<X509>,
    info: CertInfo,
}

impl fmt::Debug for VendorSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VendorSigner")
            .field("subject", &self.info.subject)
            .field("not_after", &self.info.not_after)
            .field("key", &"<redacted>")
            .finish()
    }
}

fn read_certs(bytes: &[u8]) -> Result<Vec<X509>, VendorError> {
    lanyard_pki::read_certificates(bytes).map_err(|e| VendorError::Chain(e.to_string()))
}

fn pem_text(cert: &X509) -> Result<String, VendorError> {
    lanyard_pki::certificate_pem(cert).map_err(|e| VendorError::Chain(e.to_string()))
}

impl VendorSigner {
    /// The vendor certificate and key from a PKCS#12 file with its password, and the Apple
    /// certificates the operator downloaded (each file PEM or DER: the WWDR intermediate and
    /// the Apple root, in any order). Refuses a wrong password, a certificate that is not a
    /// vendor certificate or is outside its validity, and Apple files that are not exactly
    /// the intermediate and root that chain the vendor certificate.
    pub fn from_pkcs12(
        der: &[u8],
        password: &str,
        apple_files: &[&[u8]],
    ) -> Result<VendorSigner, VendorError> {
        let parsed = lanyard_pki::read_pkcs12(der, password)
            .map_err(|e| VendorError::Pkcs12(e.to_string()))?;
        let cert = parsed.cert.ok_or(VendorError::Missing("certificate"))?;
        let key = parsed.key.ok_or(VendorError::Missing("private key"))?;
        if !lanyard_pki::key_matches(&cert, &key) {
            return Err(VendorError::Pkcs12(
                "the private key does not belong to the certificate".into(),
            ));
        }
        let info = CertInfo::from_x509(&cert).map_err(|e| VendorError::Chain(e.to_string()))?;
        let is_vendor = lanyard_pki::subject_values(&cert, NameAttribute::CommonName)
            .iter()
            .any(|cn| cn.trim_start().starts_with(VENDOR_CN_PREFIX));
        if !is_vendor {
            return Err(VendorError::NotVendor {
                subject: info.subject.clone(),
            });
        }
        let now = now_unix();
        if info.not_after <= now {
            return Err(VendorError::Expired {
                not_after: info.not_after,
            });
        }
        if info.not_before > now {
            return Err(VendorError::NotYetValid {
                not_before: info.not_before,
            });
        }
        let mut apple = Vec::new();
        for f in apple_files {
            apple.extend(read_certs(f)?);
        }
        let (roots, intermediates): (Vec<X509>, Vec<X509>) =
            apple.into_iter().partition(lanyard_pki::is_self_signed);
        let (n_roots, n_other) = (roots.len(), intermediates.len());
        let (Ok([root]), Ok([wwdr])) = (
            <[X509; 1]>::try_from(roots),
            <[X509; 1]>::try_from(intermediates),
        ) else {
            return Err(VendorError::Chain(format!(
                "expected one self-signed root and one intermediate, found {n_roots} root(s) \
                 and {n_other} other certificate(s)"
            )));
        };
        match lanyard_pki::verify_chain(
            &cert,
            std::slice::from_ref(&wwdr),
            std::slice::from_ref(&root),
        ) {
            Ok(3) => {}
            Ok(n) => {
                return Err(VendorError::Chain(format!(
                    "the vendor certificate chains in {n} step(s), not through the intermediate"
                )))
            }
            Err(e) => {
                return Err(VendorError::Chain(match e {
                    lanyard_pki::PkiError::Verify(why) => why,
                    other => other.to_string(),
                }))
            }
        }
        Ok(VendorSigner {
            cert,
            key,
            chain: vec![wwdr, root],
            info,
        })
    }

    /// The vendor certificate's subject.
    pub fn subject(&self) -> &str {
        &self.info.subject
    }

    /// Signs a customer's CSR (DER) and returns the request file for Apple's Push
    /// Certificates Portal: Base64 of the plist (see the module documentation).
    pub fn sign_request(&self, csr_der: &[u8]) -> Result<String, VendorError> {
        lanyard_pki::check_csr(csr_der).map_err(|e| {
            VendorError::Csr(match e {
                lanyard_pki::PkiError::Verify(why) => why,
                other => other.to_string(),
            })
        })?;
        let signature = lanyard_pki::sign_rsa_sha256(&self.key, csr_der)
            .map_err(|e| VendorError::Sign(e.to_string()))?;
        let mut chain_pem = pem_text(&self.cert)?;
        for c in &self.chain {
            chain_pem.push_str(&pem_text(c)?);
        }
        Ok(PushCertRequestFile {
            csr_der: csr_der.to_vec(),
            chain_pem,
            signature,
        }
        .encode())
    }
}

/// The decoded request file: what Apple's portal reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushCertRequestFile {
    /// The customer's CSR, DER.
    pub csr_der: Vec<u8>,
    /// Vendor, WWDR intermediate and Apple root certificates, PEM.
    pub chain_pem: String,
    /// SHA256WithRSA over `csr_der` with the vendor key.
    pub signature: Vec<u8>,
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

impl PushCertRequestFile {
    /// Base64 of the XML plist.
    pub fn encode(&self) -> String {
        let b64 = base64::engine::general_purpose::STANDARD;
        let xml = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
             <!DOCTYPE plist PUBLIC \"-//Apple//DTD PLIST 1.0//EN\" \
             \"http://www.apple.com/DTDs/PropertyList-1.0.dtd\">\n\
             <plist version=\"1.0\">\n<dict>\n\
             \t<key>{KEY_CHAIN}</key>\n\t<string>{}</string>\n\
             \t<key>{KEY_CSR}</key>\n\t<string>{}</string>\n\
             \t<key>{KEY_SIGNATURE}</key>\n\t<string>{}</string>\n\
             </dict>\n</plist>\n",
            xml_escape(&self.chain_pem),
            b64.encode(&self.csr_der),
            b64.encode(&self.signature),
        );
        b64.encode(xml.as_bytes())
    }

    /// Reads a request file (Base64 of the plist; line breaks allowed).
    pub fn decode(text: &[u8]) -> Result<PushCertRequestFile, VendorError> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let bad = |m: String| VendorError::RequestFile(m);
        let compact: Vec<u8> = text
            .iter()
            .copied()
            .filter(|b| !b.is_ascii_whitespace())
            .collect();
        let xml = b64
            .decode(&compact)
            .map_err(|e| bad(format!("not Base64: {e}")))?;
        let value = lanyard_proto::read_plist(&xml).map_err(|e| bad(format!("{e}")))?;
        let dict = value
            .as_dictionary()
            .ok_or_else(|| bad("the plist is not a dictionary".into()))?;
        let get = |k: &str| {
            dict.get(k)
                .and_then(|v| v.as_string())
                .ok_or_else(|| bad(format!("no {k} string")))
        };
        let field = |k: &str| -> Result<Vec<u8>, VendorError> {
            let s: String = get(k)?.split_ascii_whitespace().collect();
            b64.decode(s)
                .map_err(|e| bad(format!("{k} is not Base64: {e}")))
        };
        Ok(PushCertRequestFile {
            csr_der: field(KEY_CSR)?,
            chain_pem: get(KEY_CHAIN)?.to_string(),
            signature: field(KEY_SIGNATURE)?,
        })
    }
}
