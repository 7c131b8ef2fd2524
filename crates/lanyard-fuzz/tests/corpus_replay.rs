//! Replays the fuzz corpus: every file of `fuzz/corpus/<target>/` through the same body the fuzz
//! target runs ([`lanyard_fuzz::TARGETS`]), on stable Rust, so `cargo test` (and CI) catch a
//! regression on any input the fuzzers ever kept, including past crashes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_corpus_file_passes_its_target() {
    let mut failures = Vec::new();
    for target in lanyard_fuzz::TARGETS {
        let inputs = files(&fuzz_dir().join("corpus").join(target.name));
        assert!(
            !inputs.is_empty(),
            "fuzz/corpus/{} has no inputs to replay",
            target.name
        );
        for path in inputs {
            let data = std::fs::read(&path).unwrap();
            if std::panic::catch_unwind(|| (target.run)(&data)).is_err() {
                failures.push(path.display().to_string());
            }
        }
    }
    assert!(failures.is_empty(), "failed inputs: {failures:#?}");
}

#[test]
fn every_target_has_a_fuzz_target_file() {
    let mut declared: Vec<String> = files(&fuzz_dir().join("fuzz_targets"))
        .iter()
        .filter_map(|p| p.file_stem()?.to_str().map(str::to_owned))
        .collect();
    declared.sort();
    let mut bodies: Vec<String> = lanyard_fuzz::TARGETS
        .iter()
        .map(|t| t.name.to_owned())
        .collect();
    bodies.sort();
    assert_eq!(declared, bodies);
}

/// The committed captures are valid messages, so the fuzzers start past the signature checks
/// and decryption (a corpus made with other keys would silently stop there).
#[test]
fn the_captures_pass_the_checks_they_are_meant_to_pass() {
    let corpus = |target: &str| -> Vec<Vec<u8>> {
        files(&fuzz_dir().join("corpus").join(target))
            .iter()
            .map(|p| std::fs::read(p).unwrap())
            .collect()
    };
    let f = lanyard_fuzz::fixture();
    let accepted = |target: &str, ok: &dyn Fn(&[u8]) -> bool| {
        let n = corpus(target).iter().filter(|d| ok(d)).count();
        assert!(n >= 2, "only {n} inputs of fuzz/corpus/{target} pass");
    };
    accepted("checkin", &|d| lanyard_proto::decode_checkin(d).is_ok());
    accepted("command_report", &|d| {
        lanyard_proto::decode_command_report(d).is_ok()
    });
    accepted("machine_info", &|d| {
        lanyard_pki::verify_cms_attached_untrusted(d).is_ok()
    });
    accepted("scep_pki_message", &|d| {
        let recipients = [(&f.ra, &*f.ra_key), (&f.ca, &*f.ca_key)];
        lanyard_pki::scep::decode_pki_message(d, &recipients)
            .and_then(|r| r.csr())
            .is_ok()
    });
    accepted("mdm_signature", &|d| {
        lanyard_fuzz::split_signature_input(d)
            .is_some_and(|(header, body)| lanyard_pki::verify_detached(header, body, &f.ca).is_ok())
    });
}
