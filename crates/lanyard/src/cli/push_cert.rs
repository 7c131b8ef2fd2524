//! `lanyard push-cert`: the APNs MDM push certificate.

use anyhow::{bail, Context, Result};
use clap::Subcommand;

use lanyard_core::Actor;

use super::{print_json, read_password, OutputArgs};
use crate::setup::Opened;

/// Writes a file that must not exist yet (a request file is not overwritten by mistake),
/// readable by the owner only.
fn write_new_file(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("cannot create {} (it must not exist yet)", path.display()))?;
    f.write_all(bytes)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// A vendor certificate to sign the push certificate request with.
#[derive(Debug, clap::Args)]
pub struct VendorArgs {
    /// The MDM CSR signing (vendor) certificate and key, PKCS#12; its password is read from
    /// standard input.
    #[arg(long)]
    vendor_p12: Option<std::path::PathBuf>,
    /// Apple's certificates above the vendor certificate (PEM or DER), given twice: the WWDR
    /// intermediate and the Apple root.
    #[arg(long, requires = "vendor_p12")]
    apple_cert: Vec<std::path::PathBuf>,
}

impl VendorArgs {
    fn signer(&self) -> Result<Option<lanyard_core::pushcert::VendorSigner>> {
        let Some(p12) = &self.vendor_p12 else {
            return Ok(None);
        };
        let read = |p: &std::path::Path| {
            std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))
        };
        let der = read(p12)?;
        let apple = self
            .apple_cert
            .iter()
            .map(|p| read(p))
            .collect::<Result<Vec<_>>>()?;
        if apple.is_empty() {
            bail!("give Apple's WWDR intermediate and root with --apple-cert FILE (twice)");
        }
        let password = read_password(None, "vendor PKCS#12 password")?;
        let refs: Vec<&[u8]> = apple.iter().map(Vec::as_slice).collect();
        Ok(Some(lanyard_core::pushcert::vendor_signer(
            &der, &password, &refs,
        )?))
    }
}

/// A CSR signing service instead of an own vendor certificate.
#[derive(Debug, clap::Args)]
pub struct SigningServiceArgs {
    /// Send the CSR to the signing service (the setting --signing-service-url); it emails the
    /// signed request, encrypted, to --email; `lanyard push-cert decrypt` reads it.
    #[arg(long, conflicts_with = "vendor_p12", requires = "email")]
    signing_service: bool,
    /// The address the signing service emails its reply to.
    #[arg(long, requires = "signing_service")]
    email: Option<String>,
    /// A file holding the signing service's API key (private to its owner); without it the
    /// key is read from standard input. Never give the key on the command line.
    #[arg(long, requires = "signing_service")]
    api_key_file: Option<std::path::PathBuf>,
}

impl SigningServiceArgs {
    fn api_key(&self) -> Result<String> {
        let key = match &self.api_key_file {
            Some(path) => crate::setup::read_private(path, "the signing service API key file")?,
            None => read_password(None, "signing service API key")?,
        };
        let key = key.trim().to_string();
        if key.is_empty() {
            bail!("the signing service API key is empty");
        }
        Ok(key)
    }
}

#[derive(Debug, Subcommand)]
pub enum PushCertCmd {
    /// Start getting (or renewing) the MDM push certificate: makes the push key and its CSR,
    /// kept pending in the database. With --vendor-p12 the CSR is signed and --out receives
    /// the request file to upload to Apple's Push Certificates Portal; without, --out
    /// receives the CSR (PEM) for an MDM vendor to sign.
    ///
    /// With --signing-service the CSR goes to a signing service instead, which emails the
    /// signed request file, encrypted; `lanyard push-cert decrypt` turns that reply into the
    /// request file for Apple.
    Request {
        #[command(flatten)]
        vendor: VendorArgs,
        #[command(flatten)]
        service: SigningServiceArgs,
        /// Where to write the request file (or the CSR).
        #[arg(long, required_unless_present = "signing_service")]
        out: Option<std::path::PathBuf>,
    },
    /// Decrypt the signing service's emailed reply (`*.plist.b64.p7`) to the pending request
    /// and write the request file for Apple's Push Certificates Portal.
    Decrypt {
        /// The reply file from the email.
        reply: std::path::PathBuf,
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// Sign the pending request with a vendor certificate and write the request file for
    /// Apple's Push Certificates Portal.
    Sign {
        #[command(flatten)]
        vendor: VendorArgs,
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// Upload (or renew) the MDM push certificate: --cert FILE alone (the certificate Apple
    /// issued for the pending request), --p12 FILE (password on stdin, or --password), or
    /// --cert FILE --key FILE (PEM).
    Upload {
        #[arg(long, conflicts_with_all = ["cert", "key"])]
        p12: Option<std::path::PathBuf>,
        /// The PKCS#12 password (`-` or absent reads it from standard input).
        #[arg(long, requires = "p12")]
        password: Option<String>,
        #[arg(long)]
        cert: Option<std::path::PathBuf>,
        #[arg(long, requires = "cert")]
        key: Option<std::path::PathBuf>,
        /// Accept a topic that differs from the live enrollments' (they must all re-enroll).
        #[arg(long)]
        force: bool,
    },
    /// Show the push certificate: topic, expiry, warnings.
    Show {
        #[command(flatten)]
        out: OutputArgs,
    },
}

pub async fn push_cert(
    o: &Opened,
    secrets: &lanyard_pki::SecretBox,
    settings: &crate::settings::GlobalSettings,
    cmd: PushCertCmd,
) -> Result<()> {
    use lanyard_core::push::PushCertificateUpload;
    let show = |i: &lanyard_core::push::PushCertificateInfo| {
        println!("topic:      {}", i.topic);
        println!("subject:    {}", i.subject);
        println!("expires:    {} ({} days left)", i.not_after, i.days_left);
        println!("sha256:     {}", i.sha256);
        if let Some(w) = &i.warning {
            println!("WARNING:    {w}");
        }
    };
    match cmd {
        PushCertCmd::Request {
            service, out: None, ..
        } if service.signing_service => {
            let email = service.email.clone().unwrap_or_default();
            let client = lanyard_core::pushcert::signing_service(&settings.signing_service_url)?;
            let api_key = service.api_key()?;
            o.lanyard
                .request_push_signing(&Actor::cli(), secrets, &client, &email, &api_key)
                .await?;
            println!(
                "push certificate request sent to {}; it emails the signed request to {email}. \
                 Run `lanyard push-cert decrypt REPLY.plist.b64.p7 --out FILE` with the \
                 attachment, upload FILE to Apple's Push Certificates Portal \
                 (https://identity.apple.com), then `lanyard push-cert upload --cert` with the \
                 certificate Apple returns",
                client.url()
            );
        }
        PushCertCmd::Request { service, .. } if service.signing_service => {
            bail!("--out is not used with --signing-service (the reply comes by email)");
        }
        PushCertCmd::Request { vendor, out, .. } => {
            let Some(out) = out else {
                bail!("give --out FILE");
            };
            if out.exists() {
                bail!("{} exists already; give a new --out file", out.display());
            }
            let signer = vendor.signer()?;
            let r = o
                .lanyard
                .create_push_request(&Actor::cli(), secrets, signer.as_ref())
                .await?;
            match &r.upload_file {
                Some(file) => {
                    write_new_file(&out, file.as_bytes())?;
                    println!(
                        "push certificate request made and signed; upload {} to Apple's Push \
                         Certificates Portal (https://identity.apple.com), then run `lanyard \
                         push-cert upload --cert` with the certificate Apple returns",
                        out.display()
                    );
                }
                None => {
                    write_new_file(&out, r.csr_pem.as_bytes())?;
                    println!(
                        "push certificate request made; {} holds its CSR for an MDM vendor to \
                         sign (or run `lanyard push-cert sign --vendor-p12 …`)",
                        out.display()
                    );
                }
            }
        }
        PushCertCmd::Decrypt { reply, out } => {
            if out.exists() {
                bail!("{} exists already; give a new --out file", out.display());
            }
            let meta = std::fs::metadata(&reply)
                .with_context(|| format!("cannot read {}", reply.display()))?;
            if meta.len() > lanyard_core::pushcert::REPLY_LIMIT as u64 {
                bail!(
                    "{} is too large to be a signing service reply",
                    reply.display()
                );
            }
            let bytes = std::fs::read(&reply)
                .with_context(|| format!("cannot read {}", reply.display()))?;
            let file = o
                .lanyard
                .decrypt_push_reply(&Actor::cli(), secrets, &bytes)
                .await?;
            write_new_file(&out, file.as_bytes())?;
            println!(
                "request file written to {}; upload it to Apple's Push Certificates Portal, then \
                 run `lanyard push-cert upload --cert` with the certificate Apple returns",
                out.display()
            );
        }
        PushCertCmd::Sign { vendor, out } => {
            let Some(signer) = vendor.signer()? else {
                bail!("give --vendor-p12 FILE and --apple-cert FILE (twice)");
            };
            let file = o.lanyard.sign_push_request(&Actor::cli(), &signer).await?;
            write_new_file(&out, file.as_bytes())?;
            println!(
                "request file written to {}; upload it to Apple's Push Certificates Portal",
                out.display()
            );
        }
        PushCertCmd::Upload {
            p12,
            password,
            cert,
            key,
            force,
        } => {
            let read = |p: &std::path::Path| {
                std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))
            };
            let info = match (p12, cert, key) {
                (Some(p), _, _) => {
                    let der = read(&p)?;
                    let password = read_password(password, "PKCS#12 password")?;
                    o.lanyard
                        .set_push_certificate(
                            &Actor::cli(),
                            secrets,
                            &PushCertificateUpload::Pkcs12 {
                                der: &der,
                                password: &password,
                            },
                            force,
                        )
                        .await?
                }
                (None, Some(c), Some(k)) => {
                    let (cert, key) = (read(&c)?, read(&k)?);
                    o.lanyard
                        .set_push_certificate(
                            &Actor::cli(),
                            secrets,
                            &PushCertificateUpload::Pem {
                                cert: &cert,
                                key: &key,
                            },
                            force,
                        )
                        .await?
                }
                (None, Some(c), None) => {
                    let cert = read(&c)?;
                    o.lanyard
                        .complete_push_request(&Actor::cli(), secrets, &cert, force)
                        .await?
                }
                _ => bail!("give --cert FILE, --p12 FILE, or --cert FILE --key FILE"),
            };
            println!("push certificate stored");
            show(&info);
        }
        PushCertCmd::Show { out } => {
            let Some(info) = o.lanyard.push_certificate_info().await? else {
                bail!("no push certificate; upload one with `lanyard push-cert upload`");
            };
            if out.json {
                return print_json(&info);
            }
            show(&info);
        }
    }
    Ok(())
}
