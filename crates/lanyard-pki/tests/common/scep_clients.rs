//! The three independent SCEP clients, run as processes against a SCEP URL: micromdm's
//! `scepclient` (Go, Debian `scep`), strongSwan's `pki --scepca`/`pki --scep` (C,
//! `strongswan-pki` + `libstrongswan-standard-plugins` + `libstrongswan-extra-plugins`) and
//! the certmonger daemon (C, OpenSSL, Debian `certmonger`), which makes its PKCSReq with
//! OpenSSL and checks the CertRep with `PKCS7_verify`.
//!
//! The one place that knows their command lines, shared by `lanyard-pki`'s codec interop
//! tests and the `lanyard` crate's tests against a running `lanyard serve` (which include
//! this file by path). Callers check [`tools`] first (a missing tool is a loud skip).

use std::path::{Path, PathBuf};
use std::process::Command;

/// A SCEP client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    /// micromdm `scepclient`.
    Scepclient,
    /// strongSwan `pki --scep`.
    StrongSwan,
    /// The certmonger daemon on a private D-Bus session.
    Certmonger,
}

/// The programs a client needs.
pub fn tools(client: Client) -> &'static [&'static str] {
    match client {
        Client::Scepclient => &["scepclient"],
        Client::StrongSwan => &["pki"],
        Client::Certmonger => &["certmonger", "getcert", "dbus-run-session", "dbus-send"],
    }
}

/// What a client run left behind.
#[derive(Debug)]
pub struct ClientRun {
    /// Did every step exit 0?
    pub ok: bool,
    /// Every step's command, stdout and stderr, for messages.
    pub output: String,
    /// The issued certificate (PEM), when the client wrote one.
    pub certificate: Option<PathBuf>,
    /// Its private key (PEM).
    pub key: PathBuf,
}

fn run(label: &str, cmd: &mut Command, output: &mut String) -> (bool, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {label}: {e}"));
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    output.push_str(&format!(
        "---- {label} (exit {:?}) ----\n{stdout}\n---- {label} stderr ----\n{stderr}\n",
        out.status.code()
    ));
    (out.status.success(), stdout)
}

fn finish(ok: bool, output: String, cert: PathBuf, key: PathBuf) -> ClientRun {
    let certificate = (ok && cert.exists()).then_some(cert);
    ClientRun {
        ok: ok && certificate.is_some(),
        output,
        certificate,
        key,
    }
}

/// Run `client` against `url` with `challenge`, asking for `cn`, in `dir` (which must be
/// the run's own: scepclient keeps `csr.pem`/`self.pem` next to its key and reuses them).
pub fn enroll(client: Client, url: &str, challenge: &str, cn: &str, dir: &Path) -> ClientRun {
    match client {
        Client::Scepclient => scepclient(url, challenge, cn, dir),
        Client::StrongSwan => strongswan(url, challenge, cn, dir),
        Client::Certmonger => certmonger(url, challenge, cn, dir),
    }
}

/// micromdm `scepclient` 2.1: GetCACaps, GetCACert, PKCSReq. It envelopes its request with
/// single DES whatever GetCACaps says, so the server must accept DES requests.
fn scepclient(url: &str, challenge: &str, cn: &str, dir: &Path) -> ClientRun {
    let (key, cert) = (dir.join("k.pem"), dir.join("c.pem"));
    let mut output = String::new();
    let (ok, _) = run(
        "scepclient",
        Command::new("scepclient")
            .current_dir(dir)
            .args(["-server-url", url, "-challenge", challenge, "-cn", cn])
            .arg("-private-key")
            .arg(&key)
            .arg("-certificate")
            .arg(&cert),
        &mut output,
    );
    finish(ok, output, cert, key)
}

/// strongSwan 5.9: `pki --scepca` writes the CA and RA certificates it got from GetCACert,
/// `pki --gen` makes a key, `pki --scep` enrolls it, encrypting to and expecting replies
/// signed by the RA, chaining to the CA.
fn strongswan(url: &str, challenge: &str, cn: &str, dir: &Path) -> ClientRun {
    let mut output = String::new();
    let key = dir.join("k.pem");
    let cert = dir.join("c.pem");
    let (ok, _) = run(
        "pki --scepca",
        Command::new("pki")
            .args(["--scepca", "--url", url])
            .arg("--caout")
            .arg(dir.join("ca"))
            .arg("--raout")
            .arg(dir.join("ra"))
            .arg("--force"),
        &mut output,
    );
    if !ok {
        return finish(false, output, cert, key);
    }
    // pki names the files after --caout/--raout (some versions append ".der" or "-N.der")
    let files: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    let pick = |prefix: &str| {
        files
            .iter()
            .find(|f| f.starts_with(prefix))
            .map(|f| dir.join(f))
    };
    let (Some(ca), Some(ra)) = (pick("ca"), pick("ra")) else {
        output.push_str(&format!("pki --scepca wrote no CA and RA: {files:?}\n"));
        return finish(false, output, cert, key);
    };
    let (ok, key_pem) = run(
        "pki --gen",
        Command::new("pki").args([
            "--gen",
            "--type",
            "rsa",
            "--size",
            "2048",
            "--outform",
            "pem",
        ]),
        &mut output,
    );
    if !ok || std::fs::write(&key, key_pem).is_err() {
        return finish(false, output, cert, key);
    }
    let dn = format!("CN={cn}");
    let (ok, cert_pem) = run(
        "pki --scep",
        Command::new("pki")
            .args(["--scep", "--url", url])
            .arg("--in")
            .arg(&key)
            .args(["--dn", &dn, "--password", challenge])
            .arg("--cacert-enc")
            .arg(&ra)
            .arg("--cacert-sig")
            .arg(&ra)
            .arg("--cacert")
            .arg(&ca)
            .args(["--outform", "pem"]),
        &mut output,
    );
    let ok =
        ok && cert_pem.contains("BEGIN CERTIFICATE") && std::fs::write(&cert, cert_pem).is_ok();
    finish(ok, output, cert, key)
}

/// The certmonger daemon (session mode on a private D-Bus, state under `dir`) enrolls
/// through `getcert add-scep-ca` and `getcert request -w`; success is the MONITORING state.
fn certmonger(url: &str, challenge: &str, cn: &str, dir: &Path) -> ClientRun {
    let key = dir.join("cm.key");
    let cert = dir.join("cm.crt");
    for sub in ["cas", "requests", "local", "config"] {
        if let Err(e) = std::fs::create_dir_all(dir.join(sub)) {
            panic!("certmonger state directory: {e}");
        }
    }
    // Wait for the name with dbus-send rather than getcert: a getcert call before the
    // daemon owns its name would D-Bus-activate a second certmonger.
    let script = format!(
        r#"set -u
certmonger -s -n -d 1 > "{d}/certmonger.log" 2>&1 &
CM=$!
for i in $(seq 1 100); do
  dbus-send --session --print-reply --dest=org.freedesktop.DBus /org/freedesktop/DBus \
    org.freedesktop.DBus.NameHasOwner string:org.fedorahosted.certmonger 2>/dev/null | grep -q true && break
  sleep 0.1
done
getcert add-scep-ca -s -c lanyard-test -u "{url}"
# let the daemon fetch the CA's capabilities and certificates before the request, or the
# request can go out without an RA certificate and get stuck in CA_UNCONFIGURED
for i in $(seq 1 100); do
  getcert list-cas -s -c lanyard-test | grep -q "BEGIN CERTIFICATE" && break
  sleep 0.1
done
getcert list-cas -s -c lanyard-test
timeout 60 getcert request -s -c lanyard-test -k "{key}" -f "{crt}" -L "{chal}" -N "CN={cn}" -w -v
rc=$?
getcert list -s
kill $CM
wait $CM 2>/dev/null
exit $rc
"#,
        d = dir.display(),
        key = key.display(),
        crt = cert.display(),
        chal = challenge,
    );
    let mut output = String::new();
    let (ok, stdout) = run(
        "certmonger (getcert request)",
        Command::new("dbus-run-session")
            .args(["--", "bash", "-c", &script])
            .env("HOME", dir)
            .env("XDG_CONFIG_HOME", dir.join("config"))
            .env("XDG_DATA_HOME", dir.join("data"))
            .env("XDG_RUNTIME_DIR", dir)
            // keep certmonger's state out of /var/lib/certmonger
            .env("CERTMONGER_CAS_DIR", dir.join("cas"))
            .env("CERTMONGER_REQUESTS_DIR", dir.join("requests"))
            .env("CERTMONGER_LOCAL_CA_DIR", dir.join("local"))
            .env("CERTMONGER_CONFIG_DIR", dir.join("config"))
            .env("CERTMONGER_SYSTEM_LOCK_FILE", dir.join("lock")),
        &mut output,
    );
    let monitoring = stdout.contains("status: MONITORING");
    if !(ok && monitoring) {
        output.push_str(&format!(
            "---- certmonger.log ----\n{}\n",
            std::fs::read_to_string(dir.join("certmonger.log")).unwrap_or_default()
        ));
        if let Ok(entries) = std::fs::read_dir(dir.join("cas")) {
            for e in entries.filter_map(|e| e.ok()) {
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                if text.contains("lanyard-test") {
                    output.push_str(&format!(
                        "---- certmonger CA entry {:?} ----\n{text}\n",
                        e.file_name()
                    ));
                }
            }
        }
    }
    finish(ok && monitoring, output, cert, key)
}
