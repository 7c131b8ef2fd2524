//! The push certificate request file as an operator (or Apple) can check it without
//! Lanyard: Python's `plistlib` and `openssl`, shared by the CLI, API and portal tests.

use std::path::Path;
use std::process::Command;

pub fn require_tool(bin: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {bin}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !found {
        eprintln!(
            "\n!!!!! SKIPPED: {bin} not installed; this push certificate test did NOT run !!!!!\n"
        );
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("`{bin}` is required under CI=true but not installed");
        }
    }
    found
}

pub fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The checks an operator (or Apple) could make of the request file without Lanyard:
/// plistlib reads it and the three keys; the signature verifies over the DER CSR with the
/// vendor's public key; the chain verifies to the root it carries. Returns the DER CSR path.
pub fn independent_checks(dir: &Path, upload_file: &Path, tag: &str) -> std::path::PathBuf {
    let out = dir.join(format!("check-{tag}"));
    std::fs::create_dir_all(&out).unwrap();
    let script = r#"
import base64, plistlib, sys, re
raw = open(sys.argv[1], 'rb').read()
p = plistlib.loads(base64.b64decode(raw))
assert sorted(p.keys()) == ['PushCertCertificateChain', 'PushCertRequestCSR', 'PushCertSignature'], p.keys()
out = sys.argv[2]
open(out + '/csr.der', 'wb').write(base64.b64decode(p['PushCertRequestCSR']))
open(out + '/sig.bin', 'wb').write(base64.b64decode(p['PushCertSignature']))
certs = re.findall(r'-----BEGIN CERTIFICATE-----\n.*?-----END CERTIFICATE-----\n', p['PushCertCertificateChain'], re.S)
assert len(certs) == 3, len(certs)
for i, c in enumerate(certs):
    assert all(len(l) <= 64 for l in c.splitlines()), 'PEM line over 64 characters'
    open(out + '/c%d.pem' % i, 'w').write(c)
print('plist ok')
"#;
    let (ok, stdout, err) = run(Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(upload_file)
        .arg(&out));
    assert!(
        ok && stdout.contains("plist ok"),
        "plistlib: {stdout} {err}"
    );
    let p = |n: &str| out.join(n).display().to_string();
    let (ok, pubkey, err) =
        run(Command::new("openssl").args(["x509", "-in", &p("c0.pem"), "-pubkey", "-noout"]));
    assert!(ok, "{err}");
    std::fs::write(out.join("vendor-pub.pem"), pubkey).unwrap();
    let (ok, stdout, err) = run(Command::new("openssl").args([
        "dgst",
        "-sha256",
        "-verify",
        &p("vendor-pub.pem"),
        "-signature",
        &p("sig.bin"),
        &p("csr.der"),
    ]));
    assert!(ok && stdout.contains("Verified OK"), "dgst: {stdout} {err}");
    let (ok, stdout, err) = run(Command::new("openssl").args([
        "verify",
        "-CAfile",
        &p("c2.pem"),
        "-untrusted",
        &p("c1.pem"),
        &p("c0.pem"),
    ]));
    assert!(ok && stdout.contains(": OK"), "verify: {stdout} {err}");
    let (ok, _, err) = run(Command::new("openssl").args([
        "req",
        "-inform",
        "DER",
        "-in",
        &p("csr.der"),
        "-verify",
        "-noout",
    ]));
    assert!(ok, "the CSR in the file: {err}");
    out.join("csr.der")
}
