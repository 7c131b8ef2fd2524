//! The bodies of Lanyard's fuzz targets, in one place.
//!
//! `fuzz/fuzz_targets/<name>.rs` (cargo-fuzz, libFuzzer, coverage-guided) calls [`TARGETS`]'s
//! function of that name, and `tests/corpus_replay.rs` feeds every file of
//! `fuzz/corpus/<name>/` through the same function on stable Rust, so `cargo test` (and CI)
//! replays the corpus. Each body takes untrusted bytes the way a Lanyard endpoint does and
//! panics only when a property fails: a decoder panicking or overflowing its stack, what Lanyard
//! encodes not decoding back the same, the `Mdm-Signature` fast path disagreeing with the full
//! check. How to run them: `docs/FUZZING.md`.

// A failed property must panic: that is what the fuzzer and the replay detect.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::OnceLock;

use lanyard_pki::X509;
use lanyard_pki::{scep, SignerCache};
use lanyard_pki::{PKey, Private};
use lanyard_proto::{
    decode_checkin, decode_command_report, decode_machine_info, encode_checkin,
    encode_command_report,
};

/// One fuzz target: its name (the `fuzz/fuzz_targets/` file and the `fuzz/corpus/` folder) and
/// its body.
pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]),
}

/// Every fuzz target.
pub const TARGETS: [Target; 5] = [
    Target {
        name: "checkin",
        run: checkin,
    },
    Target {
        name: "command_report",
        run: command_report,
    },
    Target {
        name: "machine_info",
        run: machine_info,
    },
    Target {
        name: "scep_pki_message",
        run: scep_pki_message,
    },
    Target {
        name: "mdm_signature",
        run: mdm_signature,
    },
];

/// A check-in body (`PUT /mdm/checkin`). A message that decodes and can be written back decodes
/// from what was written, and writing it again gives the same bytes.
pub fn checkin(data: &[u8]) {
    let Ok(message) = decode_checkin(data) else {
        return;
    };
    let Ok(encoded) = encode_checkin(&message) else {
        return;
    };
    let again = decode_checkin(&encoded)
        .unwrap_or_else(|e| panic!("an encoded check-in does not decode: {e}"));
    assert_eq!(
        encode_checkin(&again).ok(),
        Some(encoded),
        "a check-in changes when written a second time"
    );
}

/// A command report (`PUT /mdm/command`), with the same round-trip property as [`checkin`].
pub fn command_report(data: &[u8]) {
    let Ok(report) = decode_command_report(data) else {
        return;
    };
    let Ok(encoded) = encode_command_report(&report) else {
        return;
    };
    let again = decode_command_report(&encoded)
        .unwrap_or_else(|e| panic!("an encoded command report does not decode: {e}"));
    assert_eq!(
        encode_command_report(&again).ok(),
        Some(encoded),
        "a command report changes when written a second time"
    );
}

/// What a Mac sends with its enrollment request, read as the enrollment endpoint reads it
/// (`EnrollmentService::device_facts`): a CMS-signed MachineInfo plist when the body starts
/// like DER, else the bare plist; then its OS version.
pub fn machine_info(data: &[u8]) {
    let plist = if data.first() == Some(&0x30) {
        match lanyard_pki::verify_cms_attached_untrusted(data) {
            Ok((content, _signer)) => content,
            Err(_) => return,
        }
    } else {
        data.to_vec()
    };
    if let Ok(info) = decode_machine_info(&plist) {
        let _ = info.os_version();
    }
}

/// A SCEP `PKIOperation` body, decoded with the fixed RA and CA keys as recipients (as the
/// responder does), then its CSR and the signer's chain.
pub fn scep_pki_message(data: &[u8]) {
    let f = fixture();
    let recipients = [(&f.ra, &*f.ra_key), (&f.ca, &*f.ca_key)];
    if let Ok(request) = scep::decode_pki_message(data, &recipients) {
        let _ = request.csr();
        let _ = request.signer_chains_to(&f.ca);
    }
}

/// The `Mdm-Signature` check: the input is [`signature_input`] (a header value, base64 or
/// DER, and a body). The signer cache must reach the same verdict, for the same certificate, as
/// the full check it stands in for, twice: warmed with the fixed device identity (the cached
/// path: the message's signature alone) and empty (the first contact: the certificate's
/// signature, validity and extensions too).
pub fn mdm_signature(data: &[u8]) {
    let Some((header, body)) = split_signature_input(data) else {
        return;
    };
    let f = fixture();
    let full = lanyard_pki::verify_detached(header, body, &f.ca);
    let cold_cache = SignerCache::new(f.ca.clone(), 2);
    for (which, cache) in [("warm", &f.warm_cache), ("empty", &cold_cache)] {
        let cached = cache.verify(header, body);
        match (&full, &cached) {
            (Ok(signer), Ok(v)) => assert_eq!(
                signer
                    .to_der()
                    .ok()
                    .map(|der| lanyard_pki::sha256_fingerprint(&der)),
                Some(v.sha256.clone()),
                "the {which} signer cache names another signer than the full check"
            ),
            (Err(_), Err(_)) => {}
            (Ok(_), Err(e)) => {
                panic!("the {which} signer cache refuses what the full check accepts: {e}")
            }
            (Err(e), Ok(_)) => {
                panic!("the {which} signer cache accepts what the full check refuses: {e}")
            }
        }
    }
}

/// The input of [`mdm_signature`]: the header value's length (two bytes, big-endian), the
/// header value, then the body.
pub fn signature_input(header: &[u8], body: &[u8]) -> Vec<u8> {
    let len = u16::try_from(header.len()).expect("a header value under 64 KiB");
    let mut out = len.to_be_bytes().to_vec();
    out.extend_from_slice(header);
    out.extend_from_slice(body);
    out
}

/// The header value and body of a [`mdm_signature`] input, if it is one.
pub fn split_signature_input(data: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, rest) = data.split_first_chunk::<2>()?;
    let len = usize::from(u16::from_be_bytes(*len));
    (len <= rest.len()).then(|| rest.split_at(len))
}

/// The fixed certificates and keys of `keys/` (see its README), and a signer cache that already
/// holds the device identity.
pub struct Fixture {
    pub ca: X509,
    pub ca_key: PKey<Private>,
    pub ra: X509,
    pub ra_key: PKey<Private>,
    pub device: X509,
    pub device_key: PKey<Private>,
    warm_cache: SignerCache,
}

/// The fixture, made once per process.
pub fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let cert = |pem: &str| X509::from_pem(pem.as_bytes()).expect("a fixture certificate");
        let key = |pem: &str| PKey::private_key_from_pem(pem.as_bytes()).expect("a fixture key");
        let ca = cert(include_str!("../keys/ca.pem"));
        let device = cert(include_str!("../keys/device.pem"));
        let device_key = key(include_str!("../keys/device-key.pem"));
        let warm_cache = SignerCache::new(ca.clone(), 1024);
        let body = b"warm-up";
        let sig = lanyard_pki::sign_detached(&device, &device_key, body).expect("signing");
        warm_cache
            .verify(&sig, body)
            .expect("the fixture device identity chains to the fixture CA");
        Fixture {
            ca,
            ca_key: key(include_str!("../keys/ca-key.pem")),
            ra: cert(include_str!("../keys/ra.pem")),
            ra_key: key(include_str!("../keys/ra-key.pem")),
            device,
            device_key,
            warm_cache,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_input_splits_back() {
        let input = signature_input(b"sig", b"body");
        assert_eq!(
            split_signature_input(&input),
            Some((&b"sig"[..], &b"body"[..]))
        );
        assert_eq!(split_signature_input(&[0, 5, 1]), None);
        assert_eq!(split_signature_input(&[0]), None);
    }

    #[test]
    fn the_fixture_warms_the_fast_path() {
        let f = fixture();
        let body = b"<plist/>";
        let sig = lanyard_pki::sign_detached(&f.device, &f.device_key, body).unwrap();
        let hits = f.warm_cache.hits();
        mdm_signature(&signature_input(&sig, body));
        assert_eq!(f.warm_cache.hits(), hits + 1, "the cached path ran");
    }
}
