//! Issued TLS server certificates validate with independent verifiers:
//! the `openssl verify` CLI and rustls' webpki.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use lanyard_pki::Ca;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

fn issue() -> (Ca, lanyard_pki::IssuedCert) {
    let ca = Ca::generate("Lanyard Chain Test CA", "Lanyard").unwrap();
    let leaf = ca
        .issue_tls_server(
            &["mdm.example.test".to_string()],
            &["127.0.0.1".parse().unwrap()],
        )
        .unwrap();
    (ca, leaf)
}

#[test]
fn openssl_cli_verifies_tls_server_cert() {
    if !common::require_tool("openssl", "openssl_cli_verifies_tls_server_cert") {
        return;
    }
    let (ca, leaf) = issue();
    let dir = common::tempdir();
    let ca_pem = common::write(dir.path(), "ca.pem", ca.cert_pem().unwrap().as_bytes());
    let leaf_pem = common::write(dir.path(), "leaf.pem", leaf.cert_pem.as_bytes());
    let (ok, out, err) = common::run(
        Command::new("openssl")
            .arg("verify")
            .arg("-CAfile")
            .arg(&ca_pem)
            .arg("-purpose")
            .arg("sslserver")
            .arg("-verify_hostname")
            .arg("mdm.example.test")
            .arg(&leaf_pem),
    );
    assert!(ok, "openssl verify failed: {out} {err}");
    assert!(out.contains(": OK"), "{out}");
    let (ok, out, err) = common::run(
        Command::new("openssl")
            .arg("verify")
            .arg("-CAfile")
            .arg(&ca_pem)
            .arg("-verify_ip")
            .arg("127.0.0.1")
            .arg(&leaf_pem),
    );
    assert!(ok, "openssl verify -verify_ip failed: {out} {err}");
}

#[test]
fn webpki_verifies_tls_server_cert() {
    let (ca, leaf) = issue();
    let ca_der = CertificateDer::from(ca.cert_der().unwrap());
    let anchor = webpki::anchor_from_trusted_cert(&ca_der).unwrap();
    let leaf_der = CertificateDer::from(leaf.cert_der.clone());
    let ee = webpki::EndEntityCert::try_from(&leaf_der).unwrap();
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &[anchor],
        &[],
        UnixTime::now(),
        webpki::KeyUsage::server_auth(),
        None,
        None,
    )
    .unwrap();
    ee.verify_is_valid_for_subject_name(&ServerName::try_from("mdm.example.test").unwrap())
        .unwrap();
    ee.verify_is_valid_for_subject_name(&ServerName::try_from("127.0.0.1").unwrap())
        .unwrap();
    assert!(ee
        .verify_is_valid_for_subject_name(&ServerName::try_from("other.example.test").unwrap())
        .is_err());

    // the wrong root does not validate it
    let other = Ca::generate("Other", "").unwrap();
    let other_der = CertificateDer::from(other.cert_der().unwrap());
    let other_anchor = webpki::anchor_from_trusted_cert(&other_der).unwrap();
    assert!(ee
        .verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &[other_anchor],
            &[],
            UnixTime::now(),
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .is_err());
}
