#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! `docs/ARCHITECTURE.md` says which Lanyard crate depends on which ("An arrow is …" under the
//! diagram, and the test kit's paragraph). This test reads those sentences and every crate's
//! `[dependencies]`, and fails when the two disagree, so the document cannot drift from the
//! Cargo.toml files. It also checks the shape of the release layout list that `build.rs` hands
//! the linker.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// The Lanyard crates a Cargo.toml names under `[dependencies]` (short names: `proto`, `pki`…).
fn lanyard_dependencies(manifest: &str) -> BTreeSet<String> {
    let mut in_deps = false;
    let mut out = BTreeSet::new();
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_deps = line == "[dependencies]";
            continue;
        }
        if !in_deps {
            continue;
        }
        let key = line.split(['=', '.', ' ']).next().unwrap_or_default();
        if let Some(short) = key.strip_prefix("lanyard-") {
            out.insert(short.to_string());
        }
    }
    out
}

/// Every workspace crate's Lanyard dependencies, by short name (`lanyard` for the binary).
fn actual() -> BTreeMap<String, BTreeSet<String>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(workspace().join("crates")).unwrap() {
        let dir = entry.unwrap().path();
        let Ok(manifest) = std::fs::read_to_string(dir.join("Cargo.toml")) else {
            continue;
        };
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let short = name.strip_prefix("lanyard-").unwrap_or(&name).to_string();
        out.insert(short, lanyard_dependencies(&manifest));
    }
    out
}

/// "proto, pki and oidc" → {proto, pki, oidc}.
fn names(list: &str) -> BTreeSet<String> {
    list.replace(" and ", ", ")
        .split(',')
        .map(|s| s.trim().trim_matches('`').to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// The paragraph of the document that starts with `start`, as one line.
fn paragraph(doc: &str, start: &str) -> String {
    let at = doc
        .find(start)
        .unwrap_or_else(|| panic!("docs/ARCHITECTURE.md no longer has {start:?}"));
    let rest = &doc[at..];
    let end = rest.find("\n\n").unwrap_or(rest.len());
    rest[..end].split_whitespace().collect::<Vec<_>>().join(" ")
}

#[test]
fn the_documented_dependencies_are_the_cargo_ones() {
    let doc = std::fs::read_to_string(workspace().join("docs/ARCHITECTURE.md")).unwrap();
    let actual = actual();
    let production: BTreeSet<String> = ["proto", "pki", "oidc", "store", "apple", "core", "http"]
        .into_iter()
        .map(String::from)
        .collect();

    let arrows = paragraph(&doc, "An arrow is");
    let clauses = arrows
        .split_once(':')
        .map(|(_, rest)| rest)
        .expect("the arrow sentence lists the crates after a colon");
    let mut documented: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for clause in clauses.split(';') {
        let clause = clause.trim();
        if let Some(crates) = clause.strip_suffix(" depend on no Lanyard crate") {
            for c in names(crates) {
                documented.insert(c, BTreeSet::new());
            }
        } else if let Some(rest) = clause.strip_prefix("the `lanyard` binary on ") {
            assert!(rest.starts_with("all of them"), "{clause}");
            documented.insert("lanyard".into(), production.clone());
        } else {
            let (krate, deps) = clause
                .split_once(" on ")
                .unwrap_or_else(|| panic!("cannot read the clause {clause:?}"));
            documented.insert(krate.trim().to_string(), names(deps));
        }
    }
    assert_eq!(
        documented.keys().cloned().collect::<BTreeSet<_>>(),
        production
            .iter()
            .cloned()
            .chain(["lanyard".to_string()])
            .collect(),
        "the arrow sentence names every production crate and the binary"
    );
    for (krate, deps) in &documented {
        assert_eq!(
            Some(deps),
            actual.get(krate),
            "docs/ARCHITECTURE.md says lanyard-{krate} depends on {deps:?}"
        );
    }

    // The test kit: "it depends on proto, pki and apple, never on store or core".
    let testkit = paragraph(&doc, "Beside the chain");
    let said = testkit
        .split_once("it depends on ")
        .and_then(|(_, r)| r.split_once(", never on "))
        .expect("the test kit's dependencies are stated");
    assert_eq!(
        Some(&names(said.0)),
        actual.get("testkit"),
        "the test kit's documented dependencies"
    );
    let never = said
        .1
        .split([' ', ','])
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    for forbidden in names(&never.replace(" or ", " and ")) {
        assert!(
            !actual["testkit"].contains(&forbidden),
            "the test kit must not depend on {forbidden}"
        );
    }
    // No production crate depends on the development ones.
    for krate in production.iter().chain(["lanyard".to_string()].iter()) {
        for dev in ["testkit", "bench"] {
            assert!(
                !actual[krate].contains(dev),
                "lanyard-{krate} depends on lanyard-{dev}"
            );
        }
    }
}

/// `symbol-order.txt` (read by `build.rs`, written by `scripts/symbol-order`) is what the
/// linker's `--symbol-ordering-file` takes: one symbol name per line, none twice, start-up's
/// `main` first, and Lanyard's own start-up and request code in it. A regeneration that failed
/// half-way, or wrote something else into the file, shows here.
#[test]
fn the_release_layout_list_is_one_symbol_per_line() {
    let path = workspace().join("crates/lanyard/symbol-order.txt");
    let list = std::fs::read_to_string(&path).unwrap();
    let names: Vec<&str> = list.lines().collect();
    assert!(
        names.len() > 1000,
        "{} names only: run scripts/symbol-order",
        names.len()
    );
    assert_eq!(names[0], "main");
    let mut seen = BTreeSet::new();
    for name in &names {
        assert!(
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.$".contains(&b)),
            "not a symbol name: {name:?}"
        );
        assert!(seen.insert(*name), "listed twice: {name}");
    }
    // Legacy-mangled paths: each segment is its length and its name.
    for ours in [
        "7lanyard5serve",
        "13lanyard_store",
        "11lanyard_pki12signer_cache",
    ] {
        assert!(
            names.iter().any(|n| n.contains(ours)),
            "no function under {ours} listed"
        );
    }
}
