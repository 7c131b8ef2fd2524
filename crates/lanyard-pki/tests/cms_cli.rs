//! CMS output checked by an independent implementation: the `openssl` command line.
//! Each test prints a loud SKIPPED line when `openssl` is missing (and fails when CI=true).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use lanyard_pki::{build_csr, sign_cms, sign_detached, verify_cms_attached, verify_detached, Ca};
use openssl::nid::Nid;
use openssl::pkey::PKey;
use openssl::rsa::Rsa;
use openssl::x509::{X509NameBuilder, X509};

const PROFILE: &[u8] = b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<plist version=\"1.0\"><dict><key>PayloadType</key><string>Configuration</string></dict></plist>\n";

#[test]
fn openssl_cms_verifies_signed_profile() {
    if !common::require_tool("openssl", "openssl_cms_verifies_signed_profile") {
        return;
    }
    let ca = Ca::generate("Lanyard CMS CLI CA", "Lanyard").unwrap();
    let signer = ca.issue_cms_signer("Lanyard Profile Signer", 365).unwrap();
    let cert = X509::from_der(&signer.cert_der).unwrap();
    let key = PKey::private_key_from_pem(signer.key_pem.as_bytes()).unwrap();
    let dir = common::tempdir();
    let ca_pem = common::write(dir.path(), "ca.pem", ca.cert_pem().unwrap().as_bytes());

    for (name, der) in [
        (
            "ca-signed",
            sign_cms(ca.certificate(), ca.private_key(), &[], PROFILE).unwrap(),
        ),
        (
            "leaf-signed",
            sign_cms(&cert, &key, &[ca.certificate().clone()], PROFILE).unwrap(),
        ),
    ] {
        let input = common::write(dir.path(), &format!("{name}.mobileconfig"), &der);
        let out = dir.path().join(format!("{name}.out"));
        let (ok, stdout, stderr) = common::run(
            Command::new("openssl")
                .args(["cms", "-verify", "-inform", "DER", "-CAfile"])
                .arg(&ca_pem)
                .arg("-in")
                .arg(&input)
                .arg("-out")
                .arg(&out),
        );
        assert!(ok, "{name}: openssl cms -verify failed: {stdout} {stderr}");
        assert!(stderr.contains("Verification successful"), "{stderr}");
        eprintln!("{name}: openssl cms -verify: {}", stderr.trim());
        assert_eq!(
            std::fs::read(&out).unwrap(),
            PROFILE,
            "{name}: content differs"
        );

        // structure: one OCTET STRING of the plist bytes, rsaEncryption signer
        let (ok, print, err) = common::run(
            Command::new("openssl")
                .args(["cms", "-cmsout", "-print", "-inform", "DER", "-in"])
                .arg(&input),
        );
        assert!(ok, "{err}");
        assert!(print.contains("eContentType: pkcs7-data"), "{print}");
        assert!(print.contains("algorithm: rsaEncryption"), "{print}");
        assert!(print.contains("algorithm: sha256"), "{print}");
    }
}

#[test]
fn detached_signatures_interoperate_with_openssl_cli() {
    if !common::require_tool(
        "openssl",
        "detached_signatures_interoperate_with_openssl_cli",
    ) {
        return;
    }
    let ca = Ca::generate("Lanyard MDM CA", "Lanyard").unwrap();
    let dev_key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
    let mut nb = X509NameBuilder::new().unwrap();
    nb.append_entry_by_nid(Nid::COMMONNAME, "device-identity")
        .unwrap();
    let csr = build_csr(&dev_key, &nb.build(), Some("chal")).unwrap();
    let dev_cert = {
        use lanyard_pki::CertificateIssuer;
        ca.issue_identity(&csr, 365, None).unwrap()
    };
    let dir = common::tempdir();
    let ca_pem = common::write(dir.path(), "ca.pem", ca.cert_pem().unwrap().as_bytes());
    let dev_pem = common::write(dir.path(), "dev.pem", &dev_cert.to_pem().unwrap());
    let key_pem = common::write(
        dir.path(),
        "dev.key",
        &dev_key.private_key_to_pem_pkcs8().unwrap(),
    );
    let body = b"<plist><dict><key>Status</key><string>Idle</string></dict></plist>";
    let body_path = common::write(dir.path(), "body.plist", body);

    // ours -> openssl
    let sig = sign_detached(&dev_cert, &dev_key, body).unwrap();
    let sig_path = common::write(dir.path(), "sig.der", &sig);
    let (ok, out, err) = common::run(
        Command::new("openssl")
            .args([
                "cms", "-verify", "-binary", "-inform", "DER", "-purpose", "any", "-CAfile",
            ])
            .arg(&ca_pem)
            .arg("-in")
            .arg(&sig_path)
            .arg("-content")
            .arg(&body_path)
            .arg("-out")
            .arg(dir.path().join("verified")),
    );
    assert!(
        ok,
        "openssl cms -verify of our detached signature: {out} {err}"
    );

    // openssl smime (PKCS#7, what devices send) -> ours
    let p7 = dir.path().join("p7.der");
    let (ok, out, err) = common::run(
        Command::new("openssl")
            .args(["smime", "-sign", "-binary", "-outform", "DER", "-signer"])
            .arg(&dev_pem)
            .arg("-inkey")
            .arg(&key_pem)
            .arg("-in")
            .arg(&body_path)
            .arg("-out")
            .arg(&p7),
    );
    assert!(ok, "openssl smime -sign: {out} {err}");
    let p7 = std::fs::read(&p7).unwrap();
    let signer = verify_detached(&p7, body, ca.certificate()).unwrap();
    assert_eq!(signer.to_der().unwrap(), dev_cert.to_der().unwrap());
    assert!(verify_detached(&p7, b"other body", ca.certificate()).is_err());

    // openssl cms -sign -nodetach -> verify_cms_attached
    let att = dir.path().join("att.der");
    let (ok, out, err) = common::run(
        Command::new("openssl")
            .args([
                "cms",
                "-sign",
                "-nodetach",
                "-binary",
                "-outform",
                "DER",
                "-signer",
            ])
            .arg(&dev_pem)
            .arg("-inkey")
            .arg(&key_pem)
            .arg("-in")
            .arg(&body_path)
            .arg("-out")
            .arg(&att),
    );
    assert!(ok, "openssl cms -sign: {out} {err}");
    let (content, _) =
        verify_cms_attached(&std::fs::read(&att).unwrap(), &[ca.certificate().clone()]).unwrap();
    assert_eq!(content, body);

    // openssl reads the challengePassword we put into the CSR
    let csr_path = common::write(dir.path(), "req.der", &csr);
    let (ok, text, err) = common::run(
        Command::new("openssl")
            .args(["req", "-inform", "DER", "-noout", "-text", "-verify", "-in"])
            .arg(&csr_path),
    );
    assert!(ok, "{err}");
    assert!(text.contains("challengePassword"), "{text}");
    assert!(text.contains("chal"), "{text}");
}

/// An ABM-style server token: S/MIME made by `openssl smime -encrypt` (and `openssl cms
/// -encrypt`) to our self-signed recipient certificate, opened by `decrypt_smime`.
#[test]
fn decrypts_smime_token_from_openssl_cli() {
    if !common::require_tool("openssl", "decrypts_smime_token_from_openssl_cli") {
        return;
    }
    let recipient = lanyard_pki::self_signed_rsa("Lanyard ABM token", 365).unwrap();
    let cert = X509::from_der(&recipient.cert_der).unwrap();
    let key = PKey::private_key_from_pem(recipient.key_pem.as_bytes()).unwrap();
    let dir = common::tempdir();
    let cert_pem = common::write(dir.path(), "token-cert.pem", recipient.cert_pem.as_bytes());
    let message = "Content-Type: text/plain;charset=UTF-8\r\nContent-Transfer-Encoding: 7bit\r\n\r\n-----BEGIN MESSAGE-----\n{\"consumer_key\":\"CK_test\",\"consumer_secret\":\"CS_test\",\"access_token\":\"AT_test\",\"access_secret\":\"AS_test\",\"access_token_expiry\":\"2030-01-01T00:00:00Z\"}\n-----END MESSAGE-----\n";
    let input = common::write(dir.path(), "token.txt", message.as_bytes());

    for (tool, cipher) in [("smime", "-aes256"), ("cms", "-aes128")] {
        let out = dir.path().join(format!("token-{tool}.p7m"));
        let (ok, stdout, stderr) = common::run(
            Command::new("openssl")
                .args([tool, "-encrypt", "-binary", cipher, "-in"])
                .arg(&input)
                .arg("-out")
                .arg(&out)
                .arg(&cert_pem),
        );
        assert!(ok, "openssl {tool} -encrypt: {stdout} {stderr}");
        let p7m = std::fs::read(&out).unwrap();
        assert!(
            String::from_utf8_lossy(&p7m).contains("application/"),
            "expected S/MIME text from openssl {tool}"
        );
        let plain = lanyard_pki::decrypt_smime(&p7m, &cert, &key).unwrap();
        assert_eq!(plain, message.as_bytes(), "openssl {tool}");
        let json = lanyard_pki::smime_message_text(&plain).unwrap();
        assert!(json.contains("\"consumer_key\":\"CK_test\""), "{json}");
        eprintln!(
            "openssl {tool} -encrypt {cipher}: decrypted {} bytes, JSON {} bytes",
            plain.len(),
            json.len()
        );

        // another key cannot open it
        let other = lanyard_pki::self_signed_rsa("Other", 1).unwrap();
        let other_cert = X509::from_der(&other.cert_der).unwrap();
        let other_key = PKey::private_key_from_pem(other.key_pem.as_bytes()).unwrap();
        assert!(lanyard_pki::decrypt_smime(&p7m, &other_cert, &other_key).is_err());
    }
}
