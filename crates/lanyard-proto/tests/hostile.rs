//! Hostile bodies a signed device can send: each is refused with a clear error, none takes the
//! process down. The first case is the request that once aborted the server with a stack
//! overflow: `<x:array>` nested 35,000 deep (about 700 KB, under the 2 MiB body cap), which a
//! nesting check counting only elements literally named `array` let through to a parser that
//! matches local names.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use lanyard_proto::{
    decode_checkin, decode_command_report, decode_machine_info, read_plist, ProtoError,
};

/// A check-in-shaped body whose `K` holds `open` nested `n` times, closed by `close`.
fn nested(n: usize, open: &str, close: &str) -> Vec<u8> {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<plist version=\"1.0\"><dict>\
         <key>MessageType</key><string>Authenticate</string>\
         <key>Status</key><string>Idle</string>\
         <key>K</key>{}{}</dict></plist>",
        open.repeat(n),
        close.repeat(n)
    )
    .into_bytes()
}

type Decoder = fn(&[u8]) -> Option<ProtoError>;

const DECODERS: [(&str, Decoder); 4] = [
    ("check-in", |b| decode_checkin(b).err()),
    ("command report", |b| decode_command_report(b).err()),
    ("MachineInfo", |b| decode_machine_info(b).err()),
    // The reader under them, public for other property lists Lanyard receives.
    ("read_plist", |b| read_plist(b).err()),
];

/// Runs every decoder on a thread with a small (256 KiB) stack: a decoder that recursed per
/// level of the input would overflow it long before the limit below is reached.
fn refused_by_all(body: Vec<u8>) -> Vec<String> {
    std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(move || {
            DECODERS
                .iter()
                .map(|(what, decode)| match decode(&body) {
                    Some(ProtoError::MalformedPlist(m)) => m,
                    other => panic!("{what}: expected a malformed-plist refusal, got {other:?}"),
                })
                .collect()
        })
        .unwrap()
        .join()
        .expect("a decoder crashed")
}

#[test]
fn prefixed_deep_nesting_is_refused() {
    let body = nested(35_000, "<x:array>", "</x:array>");
    assert!(body.len() > 600_000 && body.len() < 2 * 1024 * 1024);
    for m in refused_by_all(body) {
        assert!(m.contains("x:array"), "{m}");
        assert!(m.contains("namespace prefix"), "{m}");
    }
}

#[test]
fn deep_nesting_is_refused_whatever_the_element() {
    let too_deep = "arrays and dictionaries nest deeper than 64 levels";
    for (open, close) in [
        ("<array>", "</array>"),
        ("<dict><key>a</key>", "</dict>"),
        ("<array >", "</array >"),
    ] {
        for m in refused_by_all(nested(35_000, open, close)) {
            assert!(m.contains(too_deep), "{open}: {m}");
        }
    }
    // Elements that are not property-list elements stop the decode where they start, however
    // deep they would go.
    for (open, close) in [("<x>", "</x>"), ("<arrayx>", "</arrayx>")] {
        for m in refused_by_all(nested(35_000, open, close)) {
            assert!(m.contains("is not a property-list element"), "{open}: {m}");
        }
    }
    // A namespace declaration does not turn a plain name into another element either.
    for m in refused_by_all(nested(3, "<array xmlns=\"urn:x\">", "</array>")) {
        assert!(m.contains("attribute"), "{m}");
    }
}

/// A binary property list of `n` arrays, each holding the next: about 3 bytes per level.
fn binary_nested(n: usize) -> Vec<u8> {
    let mut out = b"bplist00".to_vec();
    let mut offsets = Vec::with_capacity(n);
    for i in 0..n {
        offsets.push(out.len());
        if i + 1 < n {
            out.push(0xA1); // array of one reference
            out.extend_from_slice(&u32::try_from(i + 1).unwrap().to_be_bytes());
        } else {
            out.push(0xA0); // empty array
        }
    }
    let table = out.len();
    for o in &offsets {
        out.extend_from_slice(&u32::try_from(*o).unwrap().to_be_bytes());
    }
    out.extend_from_slice(&[0; 6]);
    out.push(4); // offset size
    out.push(4); // reference size
    out.extend_from_slice(&u64::try_from(n).unwrap().to_be_bytes());
    out.extend_from_slice(&0u64.to_be_bytes());
    out.extend_from_slice(&u64::try_from(table).unwrap().to_be_bytes());
    out
}

#[test]
fn binary_nesting_is_refused() {
    // The shape is a real binary property list (read here at a harmless depth).
    let small = plist::Value::from_reader(std::io::Cursor::new(binary_nested(3))).unwrap();
    let inner = plist::Value::Array(vec![plist::Value::Array(vec![])]);
    assert_eq!(small, plist::Value::Array(vec![inner]));
    let body = binary_nested(200_000);
    assert!(body.len() < 2 * 1024 * 1024);
    for m in refused_by_all(body) {
        assert!(m.contains("binary property lists are not accepted"), "{m}");
    }
}
