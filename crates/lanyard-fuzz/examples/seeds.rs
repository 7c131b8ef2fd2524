//! Writes starting inputs for the fuzz targets (see `docs/FUZZING.md`).
//!
//! ```text
//! cargo run -p lanyard-fuzz --example seeds -- captures fuzz/corpus
//! cargo run -p lanyard-fuzz --example seeds -- shared ../shared/fixtures fuzz/seeds
//! cargo run -p lanyard-fuzz --example seeds -- fold ../shared/fixtures MERGED fuzz/corpus/T BYTES
//! ```
//!
//! `captures` writes Lanyard's own captures, what the simulated Mac sends (check-ins, command
//! reports, MachineInfo, SCEP requests, `Mdm-Signature`s with the fixed keys of `keys/`), plus
//! the hostile shapes that once crashed the server, into `<dir>/<target>/`: the committed
//! corpus. `shared` derives inputs from the device captures in `../shared/fixtures` (read, never
//! copied into the repository) into a directory kept out of git. `fold` adds to a committed
//! corpus folder, smallest first and up to BYTES, the inputs of a minimised fuzzer corpus
//! (libFuzzer `-merge=1`) it lacks, leaving out any that carries a piece (six bytes) of a value
//! of the shared captures, however mutated around it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use base64::Engine as _;
use lanyard_fuzz::{fixture, signature_input};
use lanyard_pki::scep::{encode_pki_message, MessageType};
use lanyard_testkit::commands::{builtin_reply, parse_command, Channel, ResponderContext};
use lanyard_testkit::device::{self, DeviceFacts, UserChannel};
use openssl::symm::Cipher;
use openssl::x509::X509NameBuilder;
use plist::{Dictionary, Value};
use sha2::{Digest, Sha256};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["captures", out] => captures(Path::new(out)),
        ["shared", fixtures, out] => shared(Path::new(fixtures), Path::new(out)),
        ["fold", fixtures, from, into, budget] => fold(
            Path::new(fixtures),
            Path::new(from),
            Path::new(into),
            budget.parse().expect("a byte budget"),
        ),
        _ => {
            eprintln!(
                "usage: seeds captures <dir> | seeds shared <fixtures-dir> <dir> \
                 | seeds fold <fixtures-dir> <merged-dir> <corpus-dir> <bytes>"
            );
            std::process::exit(2);
        }
    }
}

/// Writes `data` as `<out>/<target>/<sha256 prefix>` (names by content, as libFuzzer's).
fn put(out: &Path, target: &str, data: &[u8]) {
    assert!(
        lanyard_fuzz::TARGETS.iter().any(|t| t.name == target),
        "unknown target {target}"
    );
    let dir = out.join(target);
    std::fs::create_dir_all(&dir).unwrap();
    let name = hex(&Sha256::digest(data)[..20]);
    std::fs::write(dir.join(name), data).unwrap();
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn xml(d: Dictionary) -> Vec<u8> {
    device::to_xml(d).unwrap()
}

fn s(v: &str) -> Value {
    Value::String(v.into())
}

const TOPIC: &str = "com.apple.mgmt.External.2f1a6b4e-0c8d-4c55-9d8e-3b2b1f1a2c3d";
const ENROLLMENT_ID: &str = "6B1C2D3E-4F50-4A1B-8C2D-3E4F5A6B7C8D";

fn user() -> UserChannel {
    UserChannel {
        enrollment_user_id: "7C2D3E4F-5061-4B2C-9D3E-4F5A6B7C8D9E".into(),
        short_name: "ann".into(),
        long_name: "Ann Example".into(),
    }
}

fn checkins() -> Vec<Vec<u8>> {
    let facts = DeviceFacts::new("Mac14,2", "15.2");
    let mut out = vec![
        xml(device::authenticate(&facts, TOPIC, ENROLLMENT_ID)),
        xml(device::token_update(
            TOPIC,
            ENROLLMENT_ID,
            None,
            &[0xAB; 32],
            "3F2A1B0C-PUSH-MAGIC",
        )),
        xml(device::token_update(
            TOPIC,
            ENROLLMENT_ID,
            Some(&user()),
            &[0xCD; 32],
            "4E3B2C1D-PUSH-MAGIC",
        )),
        xml(device::check_out(TOPIC, ENROLLMENT_ID)),
    ];
    for (message, extra) in [
        (
            "DeclarativeManagement",
            vec![
                ("Endpoint", s("status")),
                (
                    "Data",
                    Value::Data(
                        br#"{"StatusItems":{"device":{"model":{"family":"Mac"}}}}"#.to_vec(),
                    ),
                ),
            ],
        ),
        ("DeclarativeManagement", vec![("Endpoint", s("tokens"))]),
        (
            "GetBootstrapToken",
            vec![("AwaitingConfiguration", Value::Boolean(false))],
        ),
        (
            "SetBootstrapToken",
            vec![("BootstrapToken", Value::Data(vec![1, 2, 3, 4]))],
        ),
        (
            "GetToken",
            vec![
                ("TokenServiceType", s("com.apple.maid")),
                ("TokenParameters", Value::Dictionary(Dictionary::new())),
            ],
        ),
        (
            "UserAuthenticate",
            vec![
                ("UDID", s("00008103-000A1B2C3D4E5F60")),
                ("UserID", s("1A2B3C4D-0000-1111-2222-333344445555")),
                ("DigestResponse", s("response")),
            ],
        ),
    ] {
        let mut d = Dictionary::new();
        d.insert("MessageType".into(), s(message));
        d.insert("Topic".into(), s(TOPIC));
        d.insert("EnrollmentID".into(), s(ENROLLMENT_ID));
        for (k, v) in extra {
            d.insert(k.into(), v);
        }
        out.push(xml(d));
    }
    out
}

fn command_reports() -> Vec<Vec<u8>> {
    let facts = DeviceFacts::new("Mac15,3", "15.4");
    let idle = Dictionary::new();
    let mut out = vec![
        xml(device::command_report(
            ENROLLMENT_ID,
            None,
            "Idle",
            None,
            &idle,
        )),
        xml(device::command_report(
            ENROLLMENT_ID,
            Some(&user()),
            "Idle",
            None,
            &idle,
        )),
        xml(device::command_report(
            ENROLLMENT_ID,
            None,
            "NotNow",
            Some("5C1F0A9E-3B2D-4C6E-8F10-2A3B4C5D6E7F"),
            &idle,
        )),
    ];
    let ctx = ResponderContext {
        facts: &facts,
        channel: Channel::Device,
        managed_apple_id: "ann@example.com",
        enrollment_id: ENROLLMENT_ID,
        push_token: &[0xAB; 32],
        certificates: &[],
    };
    for (i, request_type) in [
        "DeviceInformation",
        "SecurityInfo",
        "ProfileList",
        "CertificateList",
        "InstallProfile",
        "EraseDevice",
    ]
    .into_iter()
    .enumerate()
    {
        let uuid = format!("00000000-0000-4000-8000-{i:012}");
        let mut command = Dictionary::new();
        command.insert("RequestType".into(), s(request_type));
        let mut outer = Dictionary::new();
        outer.insert("CommandUUID".into(), s(&uuid));
        outer.insert("Command".into(), Value::Dictionary(command));
        let cmd = parse_command(&xml(outer)).unwrap();
        let reply = builtin_reply(&cmd, &ctx, &mut Vec::new());
        out.push(xml(device::command_report(
            ENROLLMENT_ID,
            None,
            reply.status.as_str(),
            Some(&uuid),
            &reply.result,
        )));
    }
    out
}

/// Bodies shaped like the requests that once took the server down, kept small here: the decoder
/// must refuse them at any depth.
fn hostile() -> Vec<Vec<u8>> {
    let wrap = |inner: String| {
        format!(
            "<?xml version=\"1.0\"?><plist version=\"1.0\"><dict><key>MessageType</key>\
             <string>Authenticate</string><key>Status</key><string>Idle</string>\
             <key>EnrollmentID</key><string>{ENROLLMENT_ID}</string><key>K</key>{inner}</dict></plist>"
        )
        .into_bytes()
    };
    vec![
        wrap("<x:array>".repeat(200) + &"</x:array>".repeat(200)),
        wrap("<array>".repeat(200) + &"</array>".repeat(200)),
        wrap("<dict><key>a</key>".repeat(100) + &"</dict>".repeat(100)),
        wrap("<string>&#1;&unknown;</string>".into()),
        binary_nested(50),
    ]
}

/// A binary property list of `depth` nested arrays (binary bodies are refused whatever their
/// shape).
fn binary_nested(depth: usize) -> Vec<u8> {
    let mut v = Value::Array(Vec::new());
    for _ in 1..depth {
        v = Value::Array(vec![v]);
    }
    let mut out = Vec::new();
    v.to_writer_binary(&mut out).unwrap();
    out
}

fn machine_infos() -> Vec<Vec<u8>> {
    let f = fixture();
    let facts = DeviceFacts::new("Mac16,12", "15.2");
    let plain = xml(device::machine_info(&facts));
    let mut with_ids = device::machine_info(&facts);
    with_ids.insert("UDID".into(), s("00008103-000A1B2C3D4E5F60"));
    with_ids.insert("SERIAL".into(), s("C02ABCDEFG"));
    let with_ids = xml(with_ids);
    let key = device::rsa_key(2048).unwrap();
    let signer = device::self_signed(&key, "Apple iPhone Device CA stand-in", 30).unwrap();
    vec![
        lanyard_pki::sign_cms(&signer, &key, &[], &plain).unwrap(),
        lanyard_pki::sign_cms(
            &f.device,
            &f.device_key,
            std::slice::from_ref(&f.ca),
            &with_ids,
        )
        .unwrap(),
        plain,
        with_ids,
    ]
}

fn scep_requests() -> Vec<Vec<u8>> {
    let f = fixture();
    let key = device::rsa_key(2048).unwrap();
    let throwaway = device::self_signed(&key, "SCEP requester", 30).unwrap();
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", "Lanyard device identity")
        .unwrap();
    let name = name.build();
    let mut out = Vec::new();
    for (challenge, recipient, cipher) in [
        (Some("one-time challenge"), &f.ra, Cipher::aes_256_cbc()),
        (None, &f.ca, Cipher::aes_128_cbc()),
        (Some("one-time challenge"), &f.ca, Cipher::des_ede3_cbc()),
    ] {
        let csr = lanyard_pki::build_csr(&key, &name, challenge).unwrap();
        let (der, _nonce) = encode_pki_message(
            MessageType::PkcsReq,
            &csr,
            &throwaway,
            &key,
            recipient,
            "0123456789ABCDEF",
            cipher,
        )
        .unwrap();
        out.push(der);
    }
    // Renewal, signed by the current identity (which chains to the CA).
    let csr = lanyard_pki::build_csr(&f.device_key, &name, None).unwrap();
    let (der, _) = encode_pki_message(
        MessageType::RenewalReq,
        &csr,
        &f.device,
        &f.device_key,
        &f.ra,
        "FEDCBA9876543210",
        Cipher::aes_256_cbc(),
    )
    .unwrap();
    out.push(der);
    out
}

fn signatures(bodies: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let f = fixture();
    let key = device::rsa_key(2048).unwrap();
    let stranger = device::self_signed(&key, "not from the CA", 30).unwrap();
    let b64 = |der: &[u8]| {
        base64::engine::general_purpose::STANDARD
            .encode(der)
            .into_bytes()
    };
    let mut out = Vec::new();
    for body in bodies {
        let sig = lanyard_pki::sign_detached(&f.device, &f.device_key, body).unwrap();
        out.push(signature_input(&b64(&sig), body));
        out.push(signature_input(&sig, body));
    }
    let body = bodies.first().cloned().unwrap_or_default();
    let sig = lanyard_pki::sign_detached(&stranger, &key, &body).unwrap();
    out.push(signature_input(&b64(&sig), &body));
    let attached = lanyard_pki::sign_cms(&f.device, &f.device_key, &[], &body).unwrap();
    out.push(signature_input(&b64(&attached), &body));
    out
}

fn captures(out: &Path) {
    let checkins = checkins();
    let reports = command_reports();
    for c in checkins.iter().chain(&hostile()) {
        put(out, "checkin", c);
    }
    for r in reports.iter().chain(&hostile()) {
        put(out, "command_report", r);
    }
    for m in machine_infos() {
        put(out, "machine_info", &m);
    }
    for r in scep_requests() {
        put(out, "scep_pki_message", &r);
    }
    let signed = [checkins[0].clone(), reports[0].clone(), Vec::new()];
    for s in signatures(&signed) {
        put(out, "mdm_signature", &s);
    }
    println!("captures written under {}", out.display());
}

fn shared(fixtures: &Path, out: &Path) {
    let dir: PathBuf = fixtures.join("nanomdm");
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| {
        panic!(
            "the shared device captures are missing at {} ({e}): nothing to seed from",
            dir.display()
        )
    });
    let mut bodies = Vec::new();
    for entry in entries {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("plist") {
            continue;
        }
        let body = std::fs::read(&path).unwrap();
        let text = String::from_utf8_lossy(&body);
        if text.contains("<key>MessageType</key>") {
            put(out, "checkin", &body);
        }
        if text.contains("<key>Status</key>") {
            put(out, "command_report", &body);
        }
        put(out, "machine_info", &body);
        bodies.push(body);
    }
    for s in signatures(&bodies) {
        put(out, "mdm_signature", &s);
    }
    println!(
        "{} shared captures turned into seeds under {}",
        bodies.len(),
        out.display()
    );
}

/// Length of the byte sequences by which an input is recognised as derived from the shared
/// captures.
const GRAM: usize = 6;

/// Every `GRAM`-byte sequence of the `<string>` and `<data>` values of the shared captures,
/// less those that also occur in `own` (the committed corpus: Apple's vocabulary, Lanyard's own
/// values). An input carrying one, even mutated around it, derives from the shared captures and
/// stays out of the repository.
fn shared_grams(fixtures: &Path, own: &Path) -> std::collections::HashSet<Vec<u8>> {
    let mut grams = std::collections::HashSet::new();
    for entry in std::fs::read_dir(fixtures.join("nanomdm")).expect("the shared captures") {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap_or_default();
        for tag in ["string", "data"] {
            let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
            for piece in text.split(open.as_str()).skip(1) {
                let value = piece.split(close.as_str()).next().unwrap_or_default();
                for line in value.lines().map(str::trim) {
                    grams.extend(line.as_bytes().windows(GRAM).map(<[u8]>::to_vec));
                }
            }
        }
    }
    for entry in std::fs::read_dir(own).unwrap() {
        let data = std::fs::read(entry.unwrap().path()).unwrap();
        for w in data.windows(GRAM) {
            grams.remove(w);
        }
    }
    grams
}

fn fold(fixtures: &Path, from: &Path, into: &Path, budget: usize) {
    let shared = shared_grams(fixtures, into);
    let carries_shared = |data: &[u8]| data.windows(GRAM).any(|w| shared.contains(w));
    let mut candidates: Vec<(usize, PathBuf)> = std::fs::read_dir(from)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !into.join(p.file_name().unwrap()).exists())
        .map(|p| (std::fs::metadata(&p).unwrap().len() as usize, p))
        .collect();
    candidates.sort();
    let (mut used, mut added, mut left_out) = (0, 0, 0);
    for (size, path) in candidates {
        let data = std::fs::read(&path).unwrap();
        if carries_shared(&data) {
            left_out += 1;
            continue;
        }
        if used + size > budget {
            break;
        }
        std::fs::write(into.join(path.file_name().unwrap()), &data).unwrap();
        used += size;
        added += 1;
    }
    println!(
        "{added} inputs ({used} bytes) added to {}; {left_out} derived from the shared captures left out",
        into.display()
    );
}
